//! WASI preview 2: command components run like modules, and wasi-http components serve the
//! pod's ports on the node's IP, with outbound HTTP only where the pod allows it.

use e2e::{Cluster, container_state, free_ports, has_phase, http_get, http_pod, node_ip, wasm_pod};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, PostParams};

#[tokio::test]
async fn a_component_command_runs_with_args_env_and_logs() -> anyhow::Result<()> {
    let cluster = Cluster::new("p2-command").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_component("wasi-probe").await?;
    let mut pod = wasm_pod(
        "command",
        &image,
        &agent.name,
        &["print", "hello from a component", "env"],
        "Never",
    );
    pod.spec.as_mut().expect("spec").containers[0].env = Some(vec![serde_json::from_value(
        serde_json::json!({"name": "GREETING", "value": "hi"}),
    )?]);
    cluster.create_pod(pod).await?;
    let done = cluster
        .wait_pod("command", "Succeeded", has_phase("Succeeded"))
        .await?;
    let terminated = container_state(&done)
        .and_then(|s| s.terminated)
        .expect("terminated");
    assert_eq!(terminated.exit_code, 0);
    assert_eq!(terminated.reason.as_deref(), Some("Completed"));
    let logs = cluster.kubectl(&["logs", "command"])?;
    assert!(logs.contains("hello from a component"), "{logs}");
    assert!(logs.contains("GREETING=hi"), "{logs}");

    // A component that fails reports an error (preview 2 carries no exit code beyond failure).
    cluster
        .create_pod(wasm_pod(
            "failing",
            &image,
            &agent.name,
            &["exit", "3"],
            "Never",
        ))
        .await?;
    let failed = cluster
        .wait_pod("failing", "Failed", has_phase("Failed"))
        .await?;
    let terminated = container_state(&failed)
        .and_then(|s| s.terminated)
        .expect("terminated");
    assert_ne!(terminated.exit_code, 0);
    assert_eq!(terminated.reason.as_deref(), Some("Error"));
    Ok(())
}

#[tokio::test]
async fn a_wasi_http_component_serves_its_port_and_frees_it_on_deletion() -> anyhow::Result<()> {
    let cluster = Cluster::new("p2-http").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_component("http_probe").await?;
    let [port] = free_ports()?;
    cluster
        .create_pod(http_pod(
            "web",
            &image,
            &agent.name,
            port,
            serde_json::json!({}),
        ))
        .await?;
    let ready = cluster
        .wait_pod("web", "Ready", e2e::is_pod_ready())
        .await?;
    let status = ready.status.clone().unwrap_or_default();
    assert_eq!(status.pod_ip, Some(node_ip()), "the pod's IP is the node's");

    let (code, body) = http_get(port, "/").await?;
    assert_eq!((code, body.as_str()), (200, "hello from wasi-http\n"));

    // A Service selecting the pod gets it as a ready endpoint, at the node's IP and the named
    // port (the cluster's EndpointSlice controller derives that from the pod's status).
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}
            }))?,
        )
        .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let listed = cluster
        .eventually("an EndpointSlice listing the pod", async || {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await?;
            Ok(list.items.into_iter().find(|slice| {
                slice.endpoints.iter().any(|e| {
                    e.addresses == [node_ip()]
                        && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
                })
            }))
        })
        .await?;
    let ports: Vec<Option<i32>> = listed.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, [Some(i32::from(port))]);
    // A request that traps answers 500 with a generic body; the trap, in full, is in the
    // container's log and, in one line, in the pod's events; the pod serves on.
    let (code, body) = http_get(port, "/trap").await?;
    assert_eq!((code, body.as_str()), (500, "internal server error\n"));
    let (code, _) = http_get(port, "/again").await?;
    assert_eq!(code, 200);
    let logs = cluster.kubectl(&["logs", "web"])?;
    assert!(logs.contains("/again"), "each request is logged: {logs}");
    assert!(
        logs.contains("a request failed in the guest: ") && logs.contains("unreachable"),
        "the trap is in the container's log: {logs}"
    );
    let trap_event = cluster
        .eventually("the failed request in the pod's events", async || {
            let events = cluster.pod_events("web").await?;
            Ok(events
                .into_iter()
                .find(|e| e.starts_with("RequestFailed: ")))
        })
        .await?;
    assert!(
        trap_event.contains("it trapped: wasm trap") && !trap_event.contains('\n'),
        "{trap_event}"
    );

    // A second pod wanting the same port on this node gets a clear status.
    cluster
        .create_pod(http_pod(
            "clash",
            &image,
            &agent.name,
            port,
            serde_json::json!({}),
        ))
        .await?;
    let clash = cluster
        .wait_pod("clash", "refused its port", |p: Option<&Pod>| {
            p.and_then(container_state)
                .and_then(|s| s.waiting)
                .is_some_and(|w| w.reason.as_deref() == Some("CreateContainerError"))
        })
        .await?;
    let message = e2e::waiting_message(&clash);
    assert!(
        message.contains(&format!("port {port} is already in use")),
        "{message}"
    );
    cluster.kubectl(&["delete", "pod", "clash", "--wait=true"])?;

    // Deleting the pod frees the port at once.
    cluster.kubectl(&["delete", "pod", "web", "--wait=true"])?;
    assert!(
        std::net::TcpListener::bind((node_ip().as_str(), port)).is_ok(),
        "port {port} is still held after the pod was deleted"
    );
    Ok(())
}

#[tokio::test]
async fn outbound_http_is_denied_unless_the_pod_allows_the_host() -> anyhow::Result<()> {
    let cluster = Cluster::new("p2-outbound").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_component("http_probe").await?;
    let [target, closed, open] = free_ports()?;
    let target_host = format!("{}:{target}", node_ip());
    cluster
        .create_pod(http_pod(
            "target",
            &image,
            &agent.name,
            target,
            serde_json::json!({}),
        ))
        .await?;
    cluster
        .create_pod(http_pod(
            "closed",
            &image,
            &agent.name,
            closed,
            serde_json::json!({}),
        ))
        .await?;
    cluster
        .create_pod(http_pod(
            "open",
            &image,
            &agent.name,
            open,
            serde_json::json!({"krustlet.dev/allowed-outbound-hosts": target_host}),
        ))
        .await?;
    for name in ["target", "closed", "open"] {
        cluster.wait_pod(name, "Ready", e2e::is_pod_ready()).await?;
    }
    let (code, body) = http_get(closed, &format!("/fetch/{target_host}/")).await?;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    let (code, body) = http_get(open, &format!("/fetch/{target_host}/")).await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "fetched 200: hello from wasi-http\n");
    // Only the listed destination: another port on the same host stays closed.
    let (code, body) = http_get(open, &format!("/fetch/{}:{closed}/", node_ip())).await?;
    assert_eq!(code, 502, "{body}");
    Ok(())
}

#[tokio::test]
async fn sockets_are_denied_unless_the_pod_allows_the_destination() -> anyhow::Result<()> {
    let cluster = Cluster::new("p2-sockets").await?;
    let agent = cluster.start_node().await?;
    let server = cluster.push_component("http_probe").await?;
    let client = cluster.push_component("wasi-probe").await?;
    let [port] = free_ports()?;
    let target = format!("{}:{port}", node_ip());
    cluster
        .serve(http_pod(
            "server",
            &server,
            &agent.name,
            port,
            serde_json::json!({}),
        ))
        .await?;
    cluster
        .create_pod(wasm_pod(
            "closed",
            &client,
            &agent.name,
            &["connect", &target],
            "Never",
        ))
        .await?;
    let mut open = wasm_pod("open", &client, &agent.name, &["connect", &target], "Never");
    open.metadata.annotations = Some(
        [(
            "krustlet.dev/allowed-outbound-hosts".to_string(),
            target.clone(),
        )]
        .into(),
    );
    cluster.create_pod(open).await?;
    cluster
        .wait_pod("closed", "Failed", has_phase("Failed"))
        .await?;
    let logs = cluster.kubectl(&["logs", "closed"])?;
    assert!(logs.contains(&format!("connect {target}:")), "{logs}");
    cluster
        .wait_pod("open", "Succeeded", has_phase("Succeeded"))
        .await?;
    let logs = cluster.kubectl(&["logs", "open"])?;
    assert_eq!(logs, "HTTP/1.0 200 OK\n");
    Ok(())
}

#[tokio::test]
async fn deleting_a_serving_pod_finishes_its_requests_in_flight() -> anyhow::Result<()> {
    let cluster = Cluster::new("p2-graceful").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_component("http_probe").await?;
    let [port] = free_ports()?;
    cluster
        .serve(http_pod(
            "web",
            &image,
            &agent.name,
            port,
            serde_json::json!({}),
        ))
        .await?;
    // A slow request is in flight when the pod is deleted...
    let slow = tokio::spawn(http_get(port, "/sleep/3000"));
    cluster
        .eventually("the slow request in the log", async || {
            let logs = cluster.kubectl(&["logs", "web"])?;
            Ok(logs.contains("/sleep/3000").then_some(()))
        })
        .await?;
    cluster.kubectl(&["delete", "pod", "web", "--wait=false"])?;
    // ...the port stops taking new connections...
    cluster.wait_port_closed(port).await?;
    // ...and the request still gets its answer: the container was asked to stop, not killed.
    let (code, body) = slow.await??;
    assert_eq!((code, body.as_str()), (200, "slept 3000 ms\n"));
    let gone = e2e::wait_for(cluster.pods(), "web", |p: Option<&Pod>| p.is_none()).await;
    assert!(
        matches!(gone, Ok(None)),
        "the pod is deleted once it stopped"
    );
    Ok(())
}

#[tokio::test]
async fn the_scheduler_keeps_a_second_pod_off_a_taken_host_port() -> anyhow::Result<()> {
    let cluster = Cluster::new("p2-hostport").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_component("http_probe").await?;
    let [port] = free_ports()?;
    // Left to the scheduler (no nodeName), pinned to this node by affinity.
    let pod = |name: &str| -> anyhow::Result<Pod> {
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "containers": [{"name": "web", "image": image, "ports": [{"containerPort": port, "hostPort": port}]}],
                "tolerations": [{"key": "krustlet/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoExecute"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [agent.name]}]}
                ]}}},
            }
        }))?)
    };
    cluster.create_pod(pod("first")?).await?;
    cluster
        .wait_pod("first", "Ready", e2e::is_pod_ready())
        .await?;
    assert_eq!(http_get(port, "/").await?.0, 200);
    cluster.create_pod(pod("second")?).await?;
    let pending = cluster
        .wait_pod("second", "unschedulable", |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter().any(|c| {
                        c.type_ == "PodScheduled"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("Unschedulable")
                    })
                })
        })
        .await?;
    let message = pending
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .and_then(|c| c.message)
        .unwrap_or_default();
    assert!(
        message.contains("didn't have free ports for the requested pod ports"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn one_pods_slow_clients_hold_only_its_share_of_instances() -> anyhow::Result<()> {
    let cluster = Cluster::new("http-share").await?;
    let agent = cluster
        .start_node_with(&["--max-http-requests-per-container", "2"])
        .await?;
    let image = cluster.push_component("http_probe").await?;
    let [busy_port, other_port] = free_ports()?;
    for (name, port) in [("busy", busy_port), ("other", other_port)] {
        let pod = http_pod(name, &image, &agent.name, port, serde_json::json!({}));
        cluster.serve(pod).await?;
    }
    // Two slow requests take everything one container may hold...
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(http_get(busy_port, "/sleep/4000")))
        .collect();
    cluster
        .eventually("both slow requests in the log", async || {
            let logs = cluster.kubectl(&["logs", "busy"])?;
            Ok((logs.matches("/sleep/4000").count() == 2).then_some(()))
        })
        .await?;
    // ...so a third is answered 503 at once, saying why, while another pod serves as usual.
    let (code, body) = http_get(busy_port, "/").await?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("--max-http-requests-per-container"), "{body}");
    assert_eq!(http_get(other_port, "/").await?.0, 200);
    for request in slow {
        assert_eq!(request.await??.0, 200);
    }
    // Once they are answered, the container serves again.
    assert_eq!(http_get(busy_port, "/").await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn concurrent_requests_each_log_whole_lines_and_all_succeed() -> anyhow::Result<()> {
    let cluster = Cluster::new("http-logging").await?;
    let agent = cluster
        .start_node_with(&["--max-http-requests-per-container", "300"])
        .await?;
    let image = cluster.push_component("http_probe").await?;
    let [port] = free_ports()?;
    cluster
        .serve(http_pod(
            "chatty",
            &image,
            &agent.name,
            port,
            serde_json::json!({}),
        ))
        .await?;
    // 300 requests at once, each of which writes a line to stdout and one to stderr from its
    // own instance.
    const REQUESTS: usize = 300;
    let requests: Vec<_> = (0..REQUESTS)
        .map(|i| tokio::spawn(async move { http_get(port, &format!("/both?request={i}")).await }))
        .collect();
    for (i, request) in requests.into_iter().enumerate() {
        let (code, body) = request.await??;
        assert_eq!(
            (code, body.as_str()),
            (200, "hello from wasi-http\n"),
            "request {i}"
        );
    }
    let logs = cluster
        .eventually("every request's line in the log", async || {
            let logs = cluster.kubectl(&["logs", "chatty"])?;
            Ok((logs.lines().count() >= 2 * REQUESTS).then_some(logs))
        })
        .await?;
    for i in 0..REQUESTS {
        for line in [
            format!("http-probe: Method::Get /both?request={i}"),
            format!("http-probe stderr: /both?request={i}"),
        ] {
            assert_eq!(
                logs.lines().filter(|l| *l == line).count(),
                1,
                "{line} once, whole"
            );
        }
    }
    assert_eq!(
        logs.lines().count(),
        2 * REQUESTS,
        "no line cut or interleaved:\n{logs}"
    );
    Ok(())
}

#[tokio::test]
async fn idle_and_slow_connections_to_one_pod_leave_its_neighbour_serving() -> anyhow::Result<()> {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::new("http-conns").await?;
    let agent = cluster
        .start_node_with(&[
            "--http-max-connections-per-container",
            "300",
            // Long enough for the checks below to run while the held connections are open.
            "--http-idle-timeout",
            "10s",
            "--http-header-read-timeout",
            "10s",
        ])
        .await?;
    let image = cluster.push_component("http_probe").await?;
    let [noisy_port, quiet_port] = free_ports()?;
    for (name, port) in [("noisy", noisy_port), ("quiet", quiet_port)] {
        cluster
            .serve(http_pod(
                name,
                &image,
                &agent.name,
                port,
                serde_json::json!({}),
            ))
            .await?;
    }
    let host = e2e::node_ip();
    let usual = e2e::usual_latency(&host, quiet_port).await?;
    // 1,000 connections that send nothing, and 50 that send headers and never finish them.
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push(tokio::net::TcpStream::connect((host.as_str(), noisy_port)).await?);
    }
    for _ in 0..50 {
        let mut slow = tokio::net::TcpStream::connect((host.as_str(), noisy_port)).await?;
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await?;
        held.push(slow);
    }
    // The neighbour answers as it did.
    e2e::answers_as_usual(&host, quiet_port, usual).await?;
    e2e::answers_as_usual(&host, quiet_port, usual).await?;
    // A new client of the noisy pod is told which limit it met (the held connections past the
    // cap are being told so, at most 64 at a time, each within a second; the rest were closed).
    let answer = cluster.refusal(&host, noisy_port).await?;
    assert!(
        answer.contains("--http-max-connections-per-container"),
        "{answer}"
    );
    // The held connections are closed by the idle and header timeouts...
    let closed = futures::future::join_all(held.iter_mut().map(|stream| async move {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(40), stream.read_to_end(&mut rest))
            .await
            .is_ok()
    }))
    .await;
    assert!(
        closed.iter().all(|c| *c),
        "{} held connections still open after 40 s",
        closed.iter().filter(|c| !**c).count()
    );
    // ...and the pod serves again.
    assert_eq!(e2e::http_get_at(&host, noisy_port, "/").await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn a_guest_that_answers_and_never_returns_gives_its_place_back() -> anyhow::Result<()> {
    let cluster = Cluster::new("http-linger").await?;
    let agent = cluster
        .start_node_with(&[
            "--max-http-requests-per-container",
            "2",
            "--http-return-grace",
            "2s",
        ])
        .await?;
    let image = cluster.push_component("http_probe").await?;
    let [port] = free_ports()?;
    cluster
        .serve(http_pod(
            "linger",
            &image,
            &agent.name,
            port,
            serde_json::json!({}),
        ))
        .await?;
    // Rounds of as many lingering requests as the container may have in flight: each is
    // answered, and each instance is stopped after its grace, so none keeps a place for good.
    for _ in 0..3 {
        for _ in 0..2 {
            let (code, body) = http_get(port, "/linger").await?;
            assert_eq!((code, body.as_str()), (200, "answered, lingering\n"));
        }
        cluster
            .eventually("the container serves again", async || {
                let (code, _) = http_get(port, "/").await?;
                Ok((code == 200).then_some(()))
            })
            .await?;
    }
    let logs = cluster
        .eventually("the stopped instances in the log", async || {
            let logs = cluster.kubectl(&["logs", "linger"])?;
            Ok(logs.contains("--http-return-grace").then_some(logs))
        })
        .await?;
    assert!(
        logs.contains("did not return within 2s"),
        "the log says what happened: {logs}"
    );
    Ok(())
}

#[tokio::test]
async fn a_containers_memory_limit_bounds_all_its_requests_together() -> anyhow::Result<()> {
    let cluster = Cluster::new("http-memory").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_component("http_probe").await?;
    let [port] = free_ports()?;
    let mut pod = http_pod("bounded", &image, &agent.name, port, serde_json::json!({}));
    pod.spec.as_mut().expect("spec").containers[0].resources = Some(serde_json::from_value(
        serde_json::json!({"limits": {"memory": "24Mi"}}),
    )?);
    cluster.serve(pod).await?;
    // One request holding 8 MiB fits...
    assert_eq!(http_get(port, "/alloc/8").await?.0, 200);
    // ...four at once (each an instance of its own) do not: the limit is the container's.
    let requests: Vec<_> = (0..4)
        .map(|_| tokio::spawn(http_get(port, "/alloc/8")))
        .collect();
    let mut codes = Vec::new();
    for request in requests {
        codes.push(request.await??.0);
    }
    codes.sort();
    assert!(
        codes.contains(&200) && codes.contains(&500),
        "some requests fit within 24Mi and the others fail: {codes:?}"
    );
    let logs = cluster
        .eventually("the refused growth in the log", async || {
            let logs = cluster.kubectl(&["logs", "bounded"])?;
            Ok(logs.contains("all its instances together").then_some(logs))
        })
        .await?;
    assert!(logs.contains("25165824"), "the log names the limit: {logs}");
    // Their memory is given back: one request fits again, and the container serves on.
    assert_eq!(http_get(port, "/alloc/8").await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn large_bodies_stream_both_ways_under_a_small_memory_limit() -> anyhow::Result<()> {
    const MIB: usize = 32;
    let cluster = Cluster::new("http-bodies").await?;
    let agent = cluster.start_node_with(&["--runtime-workers", "1"]).await?;
    let image = cluster.push_component("http_probe").await?;
    let [port] = free_ports()?;
    let mut pod = http_pod("streamer", &image, &agent.name, port, serde_json::json!({}));
    pod.spec.as_mut().expect("spec").containers[0].resources = Some(serde_json::from_value(
        serde_json::json!({"limits": {"memory": "16Mi"}}),
    )?);
    cluster.serve(pod).await?;
    // The guest is compiled and its first instance made before the worker's peak is read.
    assert_eq!(http_get(port, "/").await?.0, 200);
    let [(_, worker)] = agent.worker_pids()[..] else {
        anyhow::bail!("one runtime worker: {:?}", agent.worker_pids());
    };
    let peak_before = e2e::peak_rss_kib(worker);
    // Two 32 MiB request bodies the guest reads, and two 32 MiB answers it writes, at once:
    // four times the container's memory limit passes through, 64 KiB at a time.
    let body = "y".repeat(MIB << 20);
    let uploads: Vec<_> = (0..2)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move { e2e::http_request(port, "POST", "/count", &body).await })
        })
        .collect();
    let downloads: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { http_get(port, &format!("/bytes/{MIB}")).await }))
        .collect();
    for upload in uploads {
        let (status, answer) = upload.await??;
        assert_eq!(
            (status, answer.trim()),
            (200, format!("read {} bytes", MIB << 20).as_str())
        );
    }
    for download in downloads {
        let (status, answer) = download.await??;
        assert_eq!((status, answer.len()), (200, MIB << 20));
    }
    let growth_mib = e2e::peak_rss_kib(worker).saturating_sub(peak_before) >> 10;
    assert!(
        growth_mib < 40,
        "{} MiB passed through, and the worker's peak grew by {growth_mib} MiB",
        4 * MIB
    );
    Ok(())
}
