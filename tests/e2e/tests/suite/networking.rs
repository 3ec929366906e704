//! Pod networking through the node's CNI plugins (Debian's containernetworking-plugins: bridge,
//! host-local, loopback, portmap), configured by each test in its own directories with a bridge
//! and subnet of its own: replicas serving the same port side by side on their own IPs, through
//! a Service's EndpointSlice and a hostPort, and nothing left behind by deletion or by an
//! agent's crash.

use e2e::cni::TestNetwork;
use e2e::{Cluster, NodeAgent, Provider, actor_pod, free_ports, http_get_at, http_pod};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, PostParams};
use std::path::Path;

/// The pod namespaces an agent has pinned in its data dir (mounts of network namespaces).
fn pinned_namespaces(agent: &NodeAgent) -> Vec<String> {
    let dir = agent.data_dir.path().join("netns");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(&dir))
        .map(str::to_string)
        .collect()
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

/// `pod` labelled `app: <app>` and, when given, serving its port on the node as `host_port`.
fn replica(mut pod: Pod, app: &str, host_port: Option<u16>) -> Pod {
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("app".into(), app.into());
    if let Some(host_port) = host_port {
        let ports = pod
            .spec
            .as_mut()
            .and_then(|s| s.containers[0].ports.as_mut());
        if let Some(port) = ports.and_then(|p| p.first_mut()) {
            port.host_port = Some(i32::from(host_port));
        }
    }
    pod
}

/// `pod` with an HTTP readiness probe, a TCP liveness probe and an HTTP postStart hook, which
/// the node must all send to the pod's own IP (at the node's, nothing listens on `port`).
fn probed(mut pod: Pod, port: u16) -> Pod {
    if let Some(spec) = pod.spec.as_mut() {
        let container = &mut spec.containers[0];
        container.readiness_probe = serde_json::from_value(serde_json::json!({
            "httpGet": {"path": "/ready", "port": port},
            "periodSeconds": 1
        }))
        .ok();
        container.liveness_probe = serde_json::from_value(serde_json::json!({
            "tcpSocket": {"port": port},
            "periodSeconds": 1
        }))
        .ok();
        container.lifecycle = serde_json::from_value(serde_json::json!({
            "postStart": {"httpGet": {"path": "/post-start", "port": port}}
        }))
        .ok();
    }
    pod
}

/// Waits until the Service `app`'s EndpointSlices list exactly `ips` as ready endpoints.
async fn wait_endpoints(cluster: &Cluster, app: &str, ips: &[String]) -> anyhow::Result<()> {
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut want = ips.to_vec();
    want.sort();
    cluster
        .eventually("an EndpointSlice listing both replicas", async || {
            let list = slices
                .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={app}")))
                .await?;
            let mut ready: Vec<String> = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .flat_map(|e| e.addresses.clone())
                .collect();
            ready.sort();
            Ok((ready == want).then_some(()))
        })
        .await
}

async fn create_service(cluster: &Cluster, app: &str, port: u16) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": app},
                "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": port}]}
            }))?,
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn replicas_serve_one_port_on_their_own_ips_and_leave_nothing_behind() -> anyhow::Result<()> {
    let network = TestNetwork::new("e2e-wasi")?;
    let cluster = Cluster::new("cni").await?;
    let flags = network.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut agent = cluster.start_node_with(&flags).await?;
    let node = kube::Api::<k8s_openapi::api::core::v1::Node>::all(cluster.client.clone())
        .get(&agent.name)
        .await?;
    let ready_message = e2e::ready_message(&node);
    assert!(
        ready_message.contains("own IP from CNI network e2e-wasi"),
        "the node says its pods get their own IPs: {ready_message}"
    );
    let image = cluster.push_component("http_probe").await?;
    // The same containerPort for every replica, and one of them also on a hostPort.
    let port = 8080;
    let [host_port] = free_ports()?;
    // web-a may reach a server on the node, at its bridge's address.
    let (echo_port, echo) = e2e::peer_echo_server().await?;
    let echo_host = format!("{}:{echo_port}", network.gateway());
    let web = |name: &str, host_port, annotations| {
        let pod = http_pod(name, &image, &agent.name, port, annotations);
        probed(replica(pod, "web", host_port), port)
    };
    let allowed = serde_json::json!({"krustlet.dev/allowed-outbound-hosts": echo_host});
    cluster
        .create_pod(web("web-a", Some(host_port), allowed))
        .await?;
    cluster
        .create_pod(web("web-b", None, serde_json::json!({})))
        .await?;
    let mut ips = Vec::new();
    for name in ["web-a", "web-b"] {
        let ready = cluster.wait_pod(name, "Ready", e2e::is_pod_ready()).await?;
        let ip = pod_ip(&ready);
        assert!(
            ip.starts_with(&format!("{}.", network.prefix)),
            "{name} has an IP of the pod network, not {ip:?}"
        );
        let status = ready.status.clone().unwrap_or_default();
        assert_eq!(
            status
                .pod_ips
                .unwrap_or_default()
                .first()
                .map(|p| p.ip.clone()),
            Some(ip.clone())
        );
        assert_eq!(status.host_ip, Some(e2e::node_ip()));
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1], "each replica has an IP of its own");
    assert_eq!(network.allocated(), {
        let mut sorted = ips.clone();
        sorted.sort();
        sorted
    });
    // Each answers on its own IP at the same port.
    for ip in &ips {
        let (code, body) = http_get_at(ip, port, "/").await?;
        assert_eq!(
            (code, body.as_str()),
            (200, "hello from wasi-http\n"),
            "{ip}"
        );
    }
    // The hostPort reaches web-a through portmap, on an address of the node.
    let (code, _) = http_get_at(&network.gateway(), host_port, "/via-host-port").await?;
    assert_eq!(code, 200);
    let logs = cluster.kubectl(&["logs", "web-a"])?;
    assert!(logs.contains("/via-host-port"), "{logs}");
    assert!(
        logs.contains("/ready") && logs.contains("/post-start"),
        "the readiness probe and the postStart hook reached the pod: {logs}"
    );
    // An allowed destination is reached from the pod's own IP; the allow list still applies.
    let (code, body) = http_get_at(&ips[0], port, &format!("/fetch/{echo_host}/")).await?;
    assert_eq!(
        (code, body.as_str()),
        (200, format!("fetched 200: {}", ips[0]).as_str())
    );
    let (code, body) = http_get_at(&ips[1], port, &format!("/fetch/{echo_host}/")).await?;
    assert!(
        code == 502 && body.contains("HttpRequestDenied"),
        "{code} {body}"
    );
    // A hostNetwork pod stays on the node's network, with the node's IP.
    let [node_port] = free_ports()?;
    let mut on_node = http_pod(
        "on-node",
        &image,
        &agent.name,
        node_port,
        serde_json::json!({}),
    );
    if let Some(spec) = on_node.spec.as_mut() {
        spec.host_network = Some(true);
    }
    cluster.create_pod(on_node).await?;
    let on_node = cluster
        .wait_pod("on-node", "Ready", e2e::is_pod_ready())
        .await?;
    assert_eq!(pod_ip(&on_node), e2e::node_ip());
    let (code, _) = e2e::http_get(node_port, "/").await?;
    assert_eq!(code, 200);
    cluster.kubectl(&["delete", "pod", "on-node", "--wait=true"])?;

    // A WASI command's own socket (wasi:sockets) also leaves from its pod's IP: a pod that may
    // reach a destination gets a network of its own even without a port.
    let client = cluster.push_component("wasi-probe").await?;
    let mut connect = e2e::wasm_pod(
        "client",
        &client,
        &agent.name,
        &["connect", &echo_host],
        "Never",
    );
    connect.metadata.annotations = Some(
        [(
            "krustlet.dev/allowed-outbound-hosts".to_string(),
            echo_host.clone(),
        )]
        .into(),
    );
    cluster.create_pod(connect).await?;
    let connected = cluster
        .wait_pod("client", "Succeeded", e2e::has_phase("Succeeded"))
        .await?;
    let client_ip = pod_ip(&connected);
    assert!(
        client_ip.starts_with(&format!("{}.", network.prefix)),
        "{client_ip:?}"
    );
    let logs = cluster.kubectl(&["logs", "client"])?;
    assert_eq!(logs.trim(), format!("HTTP/1.1 200 {client_ip}"));
    cluster.kubectl(&["delete", "pod", "client", "--wait=true"])?;
    echo.abort();
    // A Service selecting both gets both pod IPs as endpoints.
    create_service(&cluster, "web", port).await?;
    wait_endpoints(&cluster, "web", &ips).await?;

    // Deleting a replica frees its IP and its namespace.
    cluster.kubectl(&["delete", "pod", "web-b", "--wait=true"])?;
    assert_eq!(
        network.allocated(),
        vec![ips[0].clone()],
        "web-b's IP is released"
    );
    assert_eq!(
        pinned_namespaces(&agent).len(),
        1,
        "only web-a's namespace is left"
    );

    // A pod that finishes gives its IP back at once, as the kubelet stops a finished pod's
    // sandbox; its status keeps the IP it had.
    let probe = cluster.push_guest("wasi-probe").await?;
    let mut job = e2e::wasm_pod("job", &probe, &agent.name, &["exit", "0"], "Never");
    if let Some(spec) = job.spec.as_mut() {
        spec.containers[0].ports =
            serde_json::from_value(serde_json::json!([{"containerPort": 9000}]))?;
    }
    cluster.create_pod(job).await?;
    let done = cluster
        .wait_pod("job", "Succeeded", e2e::has_phase("Succeeded"))
        .await?;
    let job_ip = pod_ip(&done);
    assert!(
        job_ip.starts_with(&format!("{}.", network.prefix)),
        "{job_ip:?}"
    );
    cluster
        .eventually("the finished pod's IP released", async || {
            let released = !network.allocated().contains(&job_ip);
            Ok((released && pinned_namespaces(&agent).len() == 1).then_some(()))
        })
        .await?;
    assert_eq!(
        pinned_namespaces(&agent).len(),
        1,
        "only web-a's namespace is left"
    );
    cluster.kubectl(&["delete", "pod", "job", "--wait=true"])?;

    // A pod removed while the agent is down is detached when it is back; web-a serves on its
    // IP throughout (its runtime worker holds its socket) and keeps it.
    cluster
        .create_pod(web("web-c", None, serde_json::json!({})))
        .await?;
    let web_c = cluster
        .wait_pod("web-c", "Ready", e2e::is_pod_ready())
        .await?;
    let web_c_ip = pod_ip(&web_c);
    agent.crash()?;
    let (code, _) = http_get_at(&ips[0], port, "/while-the-agent-is-down").await?;
    assert_eq!(code, 200);
    cluster.kubectl(&[
        "delete",
        "pod",
        "web-c",
        "--grace-period=0",
        "--force",
        "--wait=true",
    ])?;
    agent.start_again().await?;
    cluster
        .eventually("web-c's network detached", async || {
            let released = !network.allocated().contains(&web_c_ip);
            Ok((released && pinned_namespaces(&agent).len() == 1).then_some(()))
        })
        .await?;
    let web_a = cluster
        .wait_pod("web-a", "Ready", e2e::is_pod_ready())
        .await?;
    assert_eq!(pod_ip(&web_a), ips[0], "web-a keeps its IP");
    // CHECK finds web-a's network as ADD made it. Two exceptions are the reference plugins'
    // own: Debian's portmap 1.1.1 looks for IPv6 rules an IPv4-only pod never had
    // (containernetworking/plugins#819, fixed upstream since); and the bridge plugin does not
    // always pin the bridge's MAC, which Linux then takes from the lowest of its ports, so
    // deleting another pod (web-c's veth) can change the MAC ADD recorded for web-a
    // (containernetworking/plugins#1265): nothing of web-a's own changed.
    let log = agent.log();
    let mismatches: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("not as it was set up"))
        .filter(|l| !l.contains("could not check ipv6 dnat"))
        .filter(|l| !(l.contains("Bridge interface") && l.contains("Mac doesn't match")))
        .collect();
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    let restarts = web_a
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map(|c| c.restart_count);
    assert_eq!(
        restarts,
        Some(0),
        "the liveness probe reached the pod all along"
    );
    let (code, _) = http_get_at(&ips[0], port, "/after-the-restart").await?;
    assert_eq!(code, 200);
    assert_eq!(pinned_namespaces(&agent).len(), 1);

    assert_eq!(
        network.attached_interfaces().len(),
        1,
        "only web-a's veth is left"
    );
    cluster.kubectl(&["delete", "pod", "web-a", "--wait=true"])?;
    assert!(network.allocated().is_empty(), "every IP is released");
    let veths = network.attached_interfaces();
    assert!(veths.is_empty(), "no veth is left: {veths:?}");
    assert!(pinned_namespaces(&agent).is_empty(), "no namespace is left");
    let left: Vec<_> = std::fs::read_dir(agent.data_dir.path().join("netns"))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "nothing is left in the netns dir: {left:?}"
    );
    Ok(())
}

#[tokio::test]
async fn actor_replicas_serve_one_port_on_their_own_ips() -> anyhow::Result<()> {
    let network = TestNetwork::new("e2e-wascc")?;
    let cluster = Cluster::new("cni-actors").await?;
    let flags = network.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let agent = NodeAgent::start_provider_with(
        Provider::Wascc,
        &cluster,
        &format!("wascc-{}", cluster.id),
        &flags,
    )
    .await?;
    let image = cluster
        .push_actor(
            "http_actor",
            "net",
            Some(&[
                "wascc:http_server",
                "wascc:logging",
                "wascc:keyvalue",
                "wascc:blobstore",
            ]),
        )
        .await?;
    let port = 8080;
    let mut ips = Vec::new();
    let [host_port] = free_ports()?;
    for name in ["actor-a", "actor-b"] {
        let pod = actor_pod(
            name,
            &image,
            &agent.name,
            port,
            serde_json::json!({}),
            serde_json::json!([]),
        );
        // actor-a is also served on a hostPort.
        let host_port = (name == "actor-a").then_some(host_port);
        cluster
            .create_pod(replica(pod, "actors", host_port))
            .await?;
    }
    for name in ["actor-a", "actor-b"] {
        let ready = cluster.wait_pod(name, "Ready", e2e::is_pod_ready()).await?;
        ips.push(pod_ip(&ready));
    }
    assert_ne!(ips[0], ips[1]);
    // Each replica is its own actor, with its own state, on its own IP.
    for ip in &ips {
        let (code, body) = http_get_at(ip, port, "/count").await?;
        assert_eq!((code, body.as_str()), (200, "1"), "{ip}");
    }
    // The hostPort reaches actor-a (whose count is now 1) through portmap.
    let (code, body) = http_get_at(&network.gateway(), host_port, "/count").await?;
    assert_eq!((code, body.as_str()), (200, "2"));
    create_service(&cluster, "actors", port).await?;
    wait_endpoints(&cluster, "actors", &ips).await?;
    for name in ["actor-a", "actor-b"] {
        cluster.kubectl(&["delete", "pod", name, "--wait=true"])?;
    }
    assert!(network.allocated().is_empty(), "every IP is released");
    assert!(pinned_namespaces(&agent).is_empty());
    assert!(network.attached_interfaces().is_empty(), "no veth is left");
    Ok(())
}

/// A CNI network of one plugin, `name`, whose program is the shell `script`, under `dir`: its
/// configuration directory and its plugins' directory.
fn one_plugin_network(
    dir: &std::path::Path,
    name: &str,
    script: &str,
) -> anyhow::Result<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let (bin, conf) = (dir.join("bin"), dir.join("net.d"));
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&conf)?;
    let plugin = bin.join(name);
    std::fs::write(&plugin, format!("#!/bin/sh\n{script}\n"))?;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(
        conf.join(format!("10-{name}.conflist")),
        serde_json::to_vec(&serde_json::json!({
            "cniVersion": "1.0.0", "name": name, "plugins": [{"type": name}]
        }))?,
    )?;
    Ok((conf.display().to_string(), bin.display().to_string()))
}

#[tokio::test]
async fn a_pod_whose_cni_plugin_talks_without_end_fails_at_once_and_alone() -> anyhow::Result<()> {
    let dir = testkit::scratch::tempdir("krustlet-cni-talk")?;
    let (conf, bin) = one_plugin_network(dir.path(), "talk", "exec yes 0123456789abcdef")?;
    let cluster = Cluster::new("cni-talk").await?;
    let agent = cluster
        .start_node_with(&["--cni-conf-dir", &conf, "--cni-bin-dir", &bin])
        .await?;
    // A pod on the node's network needs no plugin, and runs beside.
    let image = cluster.push_guest("wasi-probe").await?;
    cluster
        .run_forever("bystander", &image, &agent.name)
        .await?;
    // A pod that serves a port gets a network of its own: its plugin's endless answer fails
    // the attempt once past 1 MiB, long before the plugin's 60 s deadline.
    let server = cluster.push_component("http_probe").await?;
    let [port] = free_ports()?;
    let started = std::time::Instant::now();
    cluster
        .create_pod(http_pod(
            "talked-over",
            &server,
            &agent.name,
            port,
            serde_json::json!({}),
        ))
        .await?;
    let events = cluster
        .wait_events("talked-over", &["FailedCreatePodSandBox"])
        .await?;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the answer was cut after {:?}",
        started.elapsed()
    );
    assert!(
        events.iter().any(|e| e.contains("longer than")),
        "the event says why: {events:?}"
    );
    let bystander = cluster.pods().get("bystander").await?;
    assert!(
        kube::runtime::wait::Condition::matches_object(
            &e2e::is_running_after_restarts(0),
            Some(&bystander)
        ),
        "the bystander runs on, never restarted"
    );
    Ok(())
}

#[tokio::test]
async fn a_pod_whose_cni_plugin_hangs_shows_container_creating_and_can_be_deleted()
-> anyhow::Result<()> {
    let dir = testkit::scratch::tempdir("krustlet-cni-hang")?;
    // A plugin that starts a child and never answers.
    let pids = dir.path().join("pids");
    let (conf, bin) = one_plugin_network(
        dir.path(),
        "hang",
        &format!(
            "sleep 3600 &\necho $! >> {pids}\necho $$ >> {pids}\nsleep 3600",
            pids = pids.display()
        ),
    )?;
    let cluster = Cluster::new("cni-hang").await?;
    let agent = cluster
        .start_node_with(&[
            "--cni-conf-dir",
            &conf,
            "--cni-bin-dir",
            &bin,
            "--cni-plugin-timeout",
            "5s",
        ])
        .await?;
    // A pod that serves a port: it gets a network of its own.
    let image = cluster.push_component("http_probe").await?;
    let [port] = free_ports()?;
    cluster
        .create_pod(http_pod(
            "stuck",
            &image,
            &agent.name,
            port,
            serde_json::json!({}),
        ))
        .await?;
    // While the plugin hangs (up to its deadline, then again after a back-off), the pod says
    // what it waits for.
    let pod = cluster
        .wait_pod(
            "stuck",
            "ContainerCreating",
            e2e::is_waiting("ContainerCreating"),
        )
        .await?;
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    // A deletion stops waiting for the ADD; its DEL hangs too and is given up after the
    // plugin deadline (5 s here, 60 s by default); every process the plugin started goes with
    // it.
    let deleting = std::time::Instant::now();
    cluster
        .pods()
        .delete("stuck", &kube::api::DeleteParams::default())
        .await?;
    e2e::wait_for_within(
        cluster.pods(),
        "stuck",
        std::time::Duration::from_secs(150),
        |pod: Option<&Pod>| pod.is_none(),
    )
    .await?;
    assert!(
        deleting.elapsed() < std::time::Duration::from_secs(45),
        "the deletion waited {:?}, longer than --cni-plugin-timeout allows",
        deleting.elapsed()
    );
    let started = std::fs::read_to_string(&pids)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let alive = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z')))
    };
    while started.lines().any(alive) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let left: Vec<&str> = started.lines().filter(|p| alive(p)).collect();
    assert!(
        left.is_empty(),
        "the plugin's processes outlived it: {left:?}"
    );
    Ok(())
}
