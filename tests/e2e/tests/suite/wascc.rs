//! krustlet-wascc: signed waSCC actors served on the pod's ports, calling the capability
//! providers their claims grant (logging, key-value, blob store) and refused the others.

use e2e::{Cluster, actor_pod, container_state, free_ports, http_get, is_waiting, node_ip};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;

const ALL: &[&str] = &[
    "wascc:http_server",
    "wascc:logging",
    "wascc:keyvalue",
    "wascc:blobstore",
];

/// Creates a pod running actor `image` on `port` with nothing else configured.
async fn create_actor(
    cluster: &Cluster,
    name: &str,
    image: &str,
    node: &str,
    port: u16,
) -> anyhow::Result<Pod> {
    let pod = actor_pod(
        name,
        image,
        node,
        port,
        serde_json::json!({}),
        serde_json::json!([]),
    );
    cluster.create_pod(pod).await
}

#[tokio::test]
async fn an_http_actor_serves_logs_keeps_state_and_frees_its_port() -> anyhow::Result<()> {
    let cluster = Cluster::new("wascc-http").await?;
    let agent = cluster.start_wascc_node().await?;
    let node: Node = Api::all(cluster.client.clone()).get(&agent.name).await?;
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints.iter().any(|t| t.key == "krustlet/arch"
            && t.value.as_deref() == Some("wasm32-wascc")
            && t.effect == "NoExecute"),
        "{taints:?}"
    );
    let labels = node.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/arch").map(String::as_str),
        Some("wasm32-wascc")
    );

    let image = cluster.push_actor("http_actor", "all", Some(ALL)).await?;
    let [port] = free_ports()?;
    create_actor(&cluster, "web", &image, &agent.name, port).await?;
    let ready = cluster
        .wait_pod("web", "Ready", e2e::is_pod_ready())
        .await?;
    assert_eq!(
        ready.status.and_then(|s| s.pod_ip),
        Some(node_ip()),
        "the pod's IP is the node's"
    );

    let (code, body) = http_get(port, "/").await?;
    assert_eq!((code, body.as_str()), (200, "hello from a waSCC actor"));
    // The key-value store keeps state across requests.
    for expected in ["1", "2", "3"] {
        let (code, body) = http_get(port, "/count").await?;
        assert_eq!((code, body.as_str()), (200, expected));
    }
    // Logging (wascc:logging and the console) reaches `kubectl logs`.
    let (code, _) = http_get(port, "/log/hello-from-the-actor").await?;
    assert_eq!(code, 200);
    let logs = cluster
        .eventually("the actor's log lines", async || {
            let logs = cluster.kubectl(&["logs", "web"])?;
            Ok((logs.contains("INFO hello-from-the-actor")
                && logs.contains("console: hello-from-the-actor"))
            .then_some(logs))
        })
        .await?;
    assert!(!logs.contains("not authorized"), "{logs}");

    // Deleting the pod frees the port at once.
    cluster.kubectl(&["delete", "pod", "web", "--wait=true"])?;
    assert!(
        std::net::TcpListener::bind((node_ip().as_str(), port)).is_ok(),
        "port {port} is still held after the pod was deleted"
    );
    Ok(())
}

#[tokio::test]
async fn two_actors_serve_two_ports_and_a_third_on_a_taken_port_is_refused() -> anyhow::Result<()> {
    let cluster = Cluster::new("wascc-ports").await?;
    let agent = cluster.start_wascc_node().await?;
    let image = cluster.push_actor("http_actor", "all", Some(ALL)).await?;
    let [first, second] = free_ports()?;
    for (name, port) in [("one", first), ("two", second)] {
        create_actor(&cluster, name, &image, &agent.name, port).await?;
    }
    for name in ["one", "two"] {
        cluster.wait_pod(name, "Ready", e2e::is_pod_ready()).await?;
    }
    // Each actor has its own instance and its own store.
    assert_eq!(http_get(first, "/count").await?, (200, "1".to_string()));
    assert_eq!(http_get(first, "/count").await?, (200, "2".to_string()));
    assert_eq!(http_get(second, "/count").await?, (200, "1".to_string()));

    create_actor(&cluster, "clash", &image, &agent.name, first).await?;
    let clash = cluster
        .wait_pod(
            "clash",
            "refused its port",
            is_waiting("CreateContainerError"),
        )
        .await?;
    let message = e2e::waiting_message(&clash);
    assert!(
        message.contains(&format!("port {first} is already in use")),
        "{message}"
    );
    // The others serve on.
    assert_eq!(http_get(first, "/count").await?, (200, "3".to_string()));
    Ok(())
}

#[tokio::test]
async fn unsigned_and_tampered_actors_are_refused() -> anyhow::Result<()> {
    let cluster = Cluster::new("wascc-claims").await?;
    let agent = cluster.start_wascc_node().await?;
    let unsigned = cluster.push_actor("http_actor", "unsigned", None).await?;
    let [port] = free_ports()?;
    create_actor(&cluster, "unsigned", &unsigned, &agent.name, port).await?;
    let pod = cluster
        .wait_pod("unsigned", "refused", is_waiting("CreateContainerError"))
        .await?;
    let message = e2e::waiting_message(&pod);
    assert!(message.contains("the actor is not signed"), "{message}");

    // An actor changed after signing (a section added) fails its hash.
    let module = std::fs::read(testkit::fixtures::wascc_actor("http_actor")?)?;
    let mut tampered = testkit::fixtures::sign_actor(&module, "http_actor", ALL)?;
    tampered.extend_from_slice(&[0, 6, 5, b'e', b'x', b't', b'r', b'a']);
    let image = format!("{}/{}/actor-tampered:v1", cluster.registry(), cluster.id);
    testkit::fixtures::push_wasm(&image, &tampered).await?;
    create_actor(&cluster, "tampered", &image, &agent.name, port).await?;
    let pod = cluster
        .wait_pod("tampered", "refused", is_waiting("CreateContainerError"))
        .await?;
    let message = e2e::waiting_message(&pod);
    assert!(
        message.contains("modified after it was signed"),
        "{message}"
    );
    assert!(
        std::net::TcpListener::bind((node_ip().as_str(), port)).is_ok(),
        "a refused actor holds no port"
    );
    Ok(())
}

#[tokio::test]
async fn a_capability_the_claims_do_not_grant_is_refused_at_call_time() -> anyhow::Result<()> {
    let cluster = Cluster::new("wascc-caps").await?;
    let agent = cluster.start_wascc_node().await?;
    let image = cluster
        .push_actor(
            "http_actor",
            "no-kv",
            Some(&["wascc:http_server", "wascc:logging"]),
        )
        .await?;
    let [port] = free_ports()?;
    create_actor(&cluster, "limited", &image, &agent.name, port).await?;
    cluster
        .wait_pod("limited", "Ready", e2e::is_pod_ready())
        .await?;
    // The actor sees the host's refusal as the error of its call, and fails the request:
    // the client gets a generic 500, the user sees why in the container's log and events.
    let (code, body) = http_get(port, "/count").await?;
    assert_eq!((code, body.as_str()), (500, "internal server error\n"));
    cluster
        .eventually("the refusal in the log", async || {
            let logs = cluster.kubectl(&["logs", "limited"])?;
            Ok(logs
                .contains("not authorized to use capability wascc:keyvalue")
                .then_some(()))
        })
        .await?;
    cluster
        .eventually("the refusal in the pod's events", async || {
            let events = cluster.pod_events("limited").await?;
            Ok(events
                .iter()
                .any(|e| {
                    e.starts_with("CapabilityDenied: ")
                        && e.contains("not authorized to use capability wascc:keyvalue")
                })
                .then_some(()))
        })
        .await?;
    // What it is granted still works.
    assert_eq!(http_get(port, "/log/still-here").await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn the_blob_store_keeps_blobs_on_a_pod_volume() -> anyhow::Result<()> {
    let cluster = Cluster::new("wascc-blobs").await?;
    let agent = cluster.start_wascc_node().await?;
    let image = cluster.push_actor("http_actor", "all", Some(ALL)).await?;
    let [port] = free_ports()?;
    cluster
        .create_pod(actor_pod(
            "blobs",
            &image,
            &agent.name,
            port,
            serde_json::json!({
                "env": [{"name": "BLOBSTORE_ROOT", "value": "/data"}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }),
            serde_json::json!([{"name": "data", "emptyDir": {}}]),
        ))
        .await?;
    cluster
        .wait_pod("blobs", "Ready", e2e::is_pod_ready())
        .await?;
    let put = e2e::http_request(port, "POST", "/blob/put/docs/greeting", "hello, blobs").await?;
    assert_eq!(put, (200, "stored 12 bytes".to_string()));
    assert_eq!(
        http_get(port, "/blob/list/docs").await?,
        (200, "greeting 12".to_string())
    );
    // A download arrives as chunks (calls of the actor) after the request that started it.
    assert_eq!(
        http_get(port, "/blob/get/docs/greeting").await?,
        (202, "downloading".to_string())
    );
    cluster
        .eventually("the downloaded blob", async || {
            let (code, body) = http_get(port, "/kv/download:greeting").await?;
            Ok((code == 200 && body == "hello, blobs").then_some(()))
        })
        .await?;
    // Ids cannot reach outside the volume.
    let (code, body) = http_get(port, "/blob/list/..").await?;
    assert_eq!((code, body.as_str()), (500, "internal server error\n"));
    cluster
        .eventually("the refused id in the log", async || {
            let logs = cluster.kubectl(&["logs", "blobs"])?;
            Ok(logs.contains("not a plain name").then_some(()))
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_trapping_actor_restarts_and_serves_again() -> anyhow::Result<()> {
    let cluster = Cluster::new("wascc-trap").await?;
    let agent = cluster.start_wascc_node().await?;
    let image = cluster.push_actor("http_actor", "all", Some(ALL)).await?;
    let [port] = free_ports()?;
    create_actor(&cluster, "crashy", &image, &agent.name, port).await?;
    cluster
        .wait_pod("crashy", "Ready", e2e::is_pod_ready())
        .await?;
    assert_eq!(http_get(port, "/count").await?, (200, "1".to_string()));
    let (code, body) = http_get(port, "/trap").await?;
    assert_eq!(code, 500, "{body}");
    let restarted = cluster
        .wait_pod("crashy", "restarted", |p: Option<&Pod>| {
            let restarted = p
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .is_some_and(|c| c.restart_count == 1);
            restarted
                && p.and_then(container_state)
                    .is_some_and(|s| s.running.is_some())
        })
        .await?;
    let last = e2e::last_terminated(&restarted).expect("the trap is the last termination");
    assert_eq!(last.exit_code, 134);
    assert!(
        last.message.unwrap_or_default().contains("unreachable"),
        "the trap's message is kept"
    );
    // A new instance: the counter starts again.
    cluster
        .eventually("the restarted actor to serve", async || {
            Ok(http_get(port, "/count").await.ok().filter(|r| r.0 == 200))
        })
        .await
        .map(|(_, body)| assert_eq!(body, "1"))?;
    Ok(())
}

#[tokio::test]
async fn deleting_an_actor_pod_finishes_the_request_in_flight() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::new("wascc-graceful").await?;
    let agent = cluster.start_wascc_node().await?;
    let image = cluster.push_actor("http_actor", "all", Some(ALL)).await?;
    let [port] = free_ports()?;
    let mut pod = actor_pod(
        "web",
        &image,
        &agent.name,
        port,
        serde_json::json!({}),
        serde_json::json!([]),
    );
    // Longer than the test's deadline: the pod must go because the actor stopped, not because
    // the grace period ran out.
    pod.spec
        .as_mut()
        .expect("spec")
        .termination_grace_period_seconds = Some(600);
    cluster.create_pod(pod).await?;
    cluster
        .wait_pod("web", "Ready", e2e::is_pod_ready())
        .await?;

    // A request is in flight, its body half sent, when the pod is deleted...
    let mut request = tokio::net::TcpStream::connect((node_ip().as_str(), port)).await?;
    request
        .write_all(b"POST /count HTTP/1.1\r\nHost: actor\r\nContent-Length: 10\r\nConnection: close\r\n\r\n12345")
        .await?;
    cluster.kubectl(&["delete", "pod", "web", "--wait=false"])?;
    // ...the port stops taking new connections...
    cluster.wait_port_closed(port).await?;
    // ...and the request, completed now, is still handled by the actor.
    request.write_all(b"67890").await?;
    let mut response = String::new();
    tokio::time::timeout(e2e::DEADLINE, request.read_to_string(&mut response)).await??;
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("\r\n\r\n1"),
        "{response}"
    );
    let gone = e2e::wait_for(cluster.pods(), "web", |p: Option<&Pod>| p.is_none()).await;
    assert!(
        matches!(gone, Ok(None)),
        "the pod is deleted once the actor stopped"
    );
    Ok(())
}
