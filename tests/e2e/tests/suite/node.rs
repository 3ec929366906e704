//! A krustlet-wasi node as the cluster sees it: registration, labels, taint, capacity, nodeInfo,
//! conditions, the Lease heartbeat, a silence the node lifecycle controller notices, and a clean
//! shutdown.

use e2e::Cluster;
use e2e::fake_node::{FakeNode, ZONE_LABEL};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

#[tokio::test]
async fn node_registers_with_taint_labels_capacity_and_conditions() -> anyhow::Result<()> {
    let cluster = Cluster::new("register").await?;
    let agent = cluster.start_node().await?;
    let node = Api::<Node>::all(cluster.client.clone())
        .get(&agent.name)
        .await?;
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/arch").map(String::as_str),
        Some("wasm32-wasi")
    );
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    assert_eq!(labels.get("type").map(String::as_str), Some("krustlet"));
    assert!(labels.contains_key("kubernetes.io/hostname"));
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    assert!(
        taints.iter().any(|t| t.key == "krustlet/arch"
            && t.value.as_deref() == Some("wasm32-wasi")
            && t.effect == "NoExecute"),
        "taints: {taints:?}"
    );
    let status = node.status.clone().unwrap_or_default();
    let capacity = status.capacity.clone().unwrap_or_default();
    for resource in ["cpu", "memory", "ephemeral-storage", "pods"] {
        assert!(
            capacity.contains_key(resource),
            "capacity lacks {resource}: {capacity:?}"
        );
    }
    assert_eq!(capacity["pods"].0, "110");
    assert_eq!(
        capacity["cpu"].0,
        std::thread::available_parallelism()?.get().to_string()
    );
    let info = status.node_info.clone().unwrap_or_default();
    assert!(
        info.container_runtime_version.starts_with("wasmtime://"),
        "{info:?}"
    );
    assert_eq!(
        info.kubelet_version,
        format!("v{}", env!("CARGO_PKG_VERSION"))
    );
    assert!(!info.kernel_version.is_empty() && !info.os_image.is_empty());
    let endpoint = status
        .daemon_endpoints
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port);
    assert_eq!(endpoint, Some(i32::from(agent.port)));
    let addresses = status.addresses.unwrap_or_default();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == e2e::node_ip()),
        "{addresses:?}"
    );
    let conditions = status.conditions.unwrap_or_default();
    let ready_message = e2e::ready_message(&node);
    assert!(
        ready_message.contains("pods use the node's network (no CNI configuration in"),
        "the node says where its pods are on the network: {ready_message}"
    );
    let conditions: Vec<(String, String)> = conditions
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    // DiskPressure follows the kubelet's default threshold (nodefs.available < 10%) on the
    // filesystem of the data dir: tell the truth for this machine.
    let stats = rustix::fs::statvfs(agent.data_dir.path())?;
    let disk_pressure = if stats.f_bavail * 10 < stats.f_blocks {
        "True"
    } else {
        "False"
    };
    for (kind, expected) in [
        ("Ready", "True"),
        ("MemoryPressure", "False"),
        ("DiskPressure", disk_pressure),
        ("PIDPressure", "False"),
    ] {
        assert!(
            conditions.contains(&(kind.to_string(), expected.to_string())),
            "{kind} should be {expected}: {conditions:?}"
        );
    }
    let wide = cluster.kubectl(&[
        "get",
        "node",
        &agent.name,
        "-o",
        "jsonpath={.status.nodeInfo.architecture}",
    ])?;
    assert_eq!(wide, "wasm32-wasi");
    Ok(())
}

#[tokio::test]
async fn lease_is_renewed_and_restart_takes_over_the_node() -> anyhow::Result<()> {
    let cluster = Cluster::new("lease").await?;
    let mut agent = cluster.start_node().await?;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let first = cluster
        .eventually("the node's lease to appear", async || {
            Ok(leases.get_opt(&agent.name).await?)
        })
        .await?;
    let spec = first.spec.clone().unwrap_or_default();
    assert_eq!(spec.lease_duration_seconds, Some(40));
    assert_eq!(spec.holder_identity.as_deref(), Some(agent.name.as_str()));
    let renewed_at = spec.renew_time.clone();
    // The kubelet renews every 10 s.
    cluster
        .eventually("the lease to be renewed", async || {
            let lease = leases.get(&agent.name).await?;
            Ok(lease
                .spec
                .and_then(|s| s.renew_time)
                .filter(|t| Some(t) != renewed_at.as_ref())
                .map(|_| ()))
        })
        .await?;
    let status = agent.terminate()?;
    assert!(
        status.success(),
        "krustlet-wasi should exit cleanly on SIGTERM: {status:?}\n{}",
        agent.log()
    );
    // A second agent with the same name takes over the existing Node.
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let uid = nodes.get(&agent.name).await?.metadata.uid;
    let again = e2e::NodeAgent::start(&cluster, &agent.name).await?;
    assert_eq!(
        nodes.get(&again.name).await?.metadata.uid,
        uid,
        "the restarted agent should reuse its Node"
    );
    Ok(())
}

/// The node's Ready condition status and whether it carries an unreachable taint.
fn readiness(node: Option<&Node>) -> (Option<String>, bool) {
    (ready_status(node), has_unreachable_taint(node, "NoExecute"))
}

fn ready_status(node: Option<&Node>) -> Option<String> {
    node.and_then(|n| n.status.as_ref()?.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone())
}

fn has_unreachable_taint(node: Option<&Node>, effect: &str) -> bool {
    node.and_then(|n| n.spec.as_ref()?.taints.as_ref())
        .is_some_and(|ts| {
            ts.iter()
                .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == effect)
        })
}

/// A node agent in a zone of its own (named after the test), with `fake_ready` Ready and
/// `fake_not_ready` not-Ready nodes beside it: the node lifecycle controller taints a silent node
/// according to its zone's state, and a real cluster's zones hold other nodes.
async fn node_in_a_zone<'a>(
    cluster: &'a Cluster,
    fake_ready: usize,
    fake_not_ready: usize,
) -> anyhow::Result<(e2e::NodeAgent, Vec<FakeNode<'a>>)> {
    let zone = format!("e2e-{}", cluster.id);
    let mut fakes = Vec::new();
    for i in 0..fake_ready + fake_not_ready {
        let name = format!("fake-{i}-{}", cluster.id);
        fakes.push(FakeNode::register(cluster, &name, &zone, i < fake_ready).await?);
    }
    let label = format!("{ZONE_LABEL}={zone}");
    let agent = cluster.start_node_with(&["--node-labels", &label]).await?;
    Ok((agent, fakes))
}

#[tokio::test]
async fn a_node_silent_past_the_grace_period_is_unreachable_and_ready_again_once_it_is_back()
-> anyhow::Result<()> {
    use e2e::wait_for_within;
    use std::time::{Duration, Instant};
    let cluster = Cluster::new("silent").await?;
    // One other Ready node in the zone: its state stays normal, and a silent node is tainted.
    let (agent, _fakes) = node_in_a_zone(&cluster, 1, 0).await?;
    let image = cluster.push_guest("wasi-probe").await?;
    cluster.run_forever("steady", &image, &agent.name).await?;
    let nodes = Api::<Node>::all(cluster.client.clone());
    // The node lifecycle controller's grace period is 50 s (40 s before Kubernetes 1.32).
    agent.pause()?;
    let marked = wait_for_within(
        nodes.clone(),
        &agent.name,
        Duration::from_secs(150),
        |n: Option<&Node>| readiness(n) == (Some("Unknown".into()), true),
    )
    .await;
    agent.resume()?;
    marked?;
    let back = Instant::now();
    wait_for_within(
        nodes,
        &agent.name,
        Duration::from_secs(60),
        |n: Option<&Node>| readiness(n) == (Some("True".into()), false),
    )
    .await?;
    // The agent posts its status as soon as it is back, not at its next periodic report.
    assert!(
        back.elapsed() < Duration::from_secs(30),
        "Ready again only after {:?}",
        back.elapsed()
    );
    // Its pods tolerate an unreachable node for 300 s (DefaultTolerationSeconds): still there,
    // still running, not restarted.
    let pod = cluster.pods().get("steady").await?;
    assert!(pod.metadata.deletion_timestamp.is_none(), "{pod:?}");
    let status = pod.status.unwrap_or_default();
    let container = &status.container_statuses.unwrap_or_default()[0];
    assert_eq!(container.restart_count, 0);
    assert!(
        container
            .state
            .as_ref()
            .is_some_and(|s| s.running.is_some())
    );
    Ok(())
}

#[tokio::test]
async fn a_silent_node_in_a_mostly_down_zone_is_unknown_but_not_tainted_for_eviction()
-> anyhow::Result<()> {
    use e2e::wait_for_within;
    use std::time::Duration;
    let cluster = Cluster::new("disrupted").await?;
    // With the agent silent, 3 of the zone's 4 nodes are not Ready: a partial disruption of a
    // zone under 50 nodes, where the controller adds no NoExecute taint (it would evict pods
    // for what is more likely a network partition).
    let (agent, _fakes) = node_in_a_zone(&cluster, 1, 2).await?;
    let nodes = Api::<Node>::all(cluster.client.clone());
    agent.pause()?;
    let marked = wait_for_within(
        nodes.clone(),
        &agent.name,
        Duration::from_secs(150),
        |n: Option<&Node>| {
            ready_status(n).as_deref() == Some("Unknown") && has_unreachable_taint(n, "NoSchedule")
        },
    )
    .await;
    // In a normal zone the NoExecute taint follows within about 5 s (the next monitor pass);
    // here none comes.
    let tainted = if marked.is_ok() {
        wait_for_within(
            nodes.clone(),
            &agent.name,
            Duration::from_secs(20),
            |n: Option<&Node>| has_unreachable_taint(n, "NoExecute"),
        )
        .await
        .is_ok()
    } else {
        false
    };
    agent.resume()?;
    marked?;
    assert!(
        !tainted,
        "a NoExecute taint was added in a partially disrupted zone"
    );
    wait_for_within(
        nodes,
        &agent.name,
        Duration::from_secs(60),
        |n: Option<&Node>| ready_status(n).as_deref() == Some("True"),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn kubeadms_flags_register_the_nodes_taints_beside_its_own() -> anyhow::Result<()> {
    let cluster = Cluster::new("kubeadm-flags").await?;
    // As kubeadm's drop-in and kubeadm-flags.env pass them.
    let agent = cluster
        .start_node_with(&[
            "--register-with-taints",
            "e2e.example/dedicated=wasm:NoSchedule,krustlet/arch=other:NoExecute",
            "--container-runtime-endpoint",
            "unix:///var/run/containerd/containerd.sock",
        ])
        .await?;
    let node = Api::<Node>::all(cluster.client.clone())
        .get(&agent.name)
        .await?;
    let taints: Vec<(String, Option<String>, String)> = node
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.value, t.effect))
        .collect();
    // The arch taint stays whatever else is registered.
    assert!(
        taints.contains(&(
            "krustlet/arch".into(),
            Some("wasm32-wasi".into()),
            "NoExecute".into()
        )),
        "{taints:?}"
    );
    assert!(
        taints.contains(&(
            "e2e.example/dedicated".into(),
            Some("wasm".into()),
            "NoSchedule".into()
        )),
        "{taints:?}"
    );
    assert!(
        !taints.iter().any(|t| t.1.as_deref() == Some("other")),
        "{taints:?}"
    );
    Ok(())
}
