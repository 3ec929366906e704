//! Resource limits: a guest that grows past `resources.limits.memory` is OOMKilled while its
//! neighbours run on; busy guests do not starve the node's heartbeat.

use e2e::metrics_server::{self, Usage};
use e2e::{Cluster, container_state, wasm_pod};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

fn with_limits(mut pod: Pod, memory: &str, cpu: &str) -> Pod {
    pod.spec.as_mut().expect("spec").containers[0].resources = Some(
        serde_json::from_value(serde_json::json!({"limits": {"memory": memory, "cpu": cpu}}))
            .expect("valid resources"),
    );
    pod
}

fn is_running(pod: Option<&Pod>) -> bool {
    pod.and_then(container_state)
        .is_some_and(|s| s.running.is_some())
}

#[tokio::test]
async fn a_memory_bomb_is_oom_killed_while_its_neighbour_runs_on() -> anyhow::Result<()> {
    let cluster = Cluster::new("oom").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    cluster
        .create_pod(wasm_pod(
            "neighbour",
            &image,
            &agent.name,
            &["print", "up", "forever"],
            "Always",
        ))
        .await?;
    cluster.wait_pod("neighbour", "running", is_running).await?;
    cluster
        .create_pod(with_limits(
            wasm_pod(
                "bomb",
                &image,
                &agent.name,
                &["alloc", "8", "alloc", "64"],
                "Never",
            ),
            "32Mi",
            "500m",
        ))
        .await?;
    let bombed = cluster
        .wait_pod("bomb", "Failed", e2e::has_phase("Failed"))
        .await?;
    let terminated = container_state(&bombed)
        .and_then(|s| s.terminated)
        .expect("terminated");
    assert_eq!(terminated.exit_code, 137, "{terminated:?}");
    assert_eq!(
        terminated.reason.as_deref(),
        Some("OOMKilled"),
        "{terminated:?}"
    );
    let logs = cluster.kubectl(&["logs", "bomb"])?;
    assert!(
        logs.contains("allocated 8 MiB"),
        "it ran up to its limit: {logs}"
    );
    let describe = cluster.kubectl(&["describe", "pod", "bomb"])?;
    assert!(describe.contains("OOMKilled"), "{describe}");

    let neighbour = cluster.pods().get("neighbour").await?;
    assert!(is_running(Some(&neighbour)), "{:?}", neighbour.status);
    let restarts = neighbour
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()[0]
        .restart_count;
    assert_eq!(restarts, 0);
    Ok(())
}

#[tokio::test]
async fn busy_guests_do_not_delay_the_node_lease() -> anyhow::Result<()> {
    let cluster = Cluster::new("busy").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    // More busy loops than this machine has cores; one of them capped at a tenth of a core.
    let spinners = ["spin-a", "spin-b", "spin-c", "spin-d"];
    for (i, name) in spinners.iter().enumerate() {
        let pod = wasm_pod(name, &image, &agent.name, &["spin"], "Always");
        let pod = if i == 0 {
            with_limits(pod, "16Mi", "100m")
        } else {
            pod
        };
        cluster.create_pod(pod).await?;
    }
    for name in spinners {
        cluster.wait_pod(name, "running", is_running).await?;
    }
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let renew_time = async || -> anyhow::Result<jiff::Timestamp> {
        let lease = leases.get(&agent.name).await?;
        Ok(lease
            .spec
            .and_then(|s| s.renew_time)
            .map(|t| t.0)
            .unwrap_or_default())
    };
    let mut last = renew_time().await?;
    // Two renewals in a row, each on the kubelet's 10 s schedule (with slack, far from the 40 s
    // after which the node would be declared lost).
    for _ in 0..2 {
        let previous = last;
        last = cluster
            .eventually("the lease to be renewed", async || {
                let now = renew_time().await?;
                Ok((now != previous).then_some(now))
            })
            .await?;
        let gap = last.duration_since(previous);
        assert!(
            gap <= jiff::SignedDuration::from_secs(15),
            "the lease was renewed {gap} after the previous renewal while guests spun"
        );
    }
    let (code, _) = e2e::kubelet_get(&agent, e2e::admin_auth()?, "/healthz").await?;
    assert_eq!(code, 200);
    Ok(())
}

#[tokio::test]
async fn a_pod_whose_requests_do_not_fit_is_rejected_by_the_node() -> anyhow::Result<()> {
    let cluster = Cluster::new("outofcpu").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let mut pod = wasm_pod("greedy", &image, &agent.name, &["print", "never"], "Never");
    pod.spec.as_mut().expect("spec").containers[0].resources = Some(serde_json::from_value(
        serde_json::json!({"requests": {"cpu": "100000", "memory": "1Mi"}}),
    )?);
    cluster.create_pod(pod).await?;
    let rejected = cluster
        .wait_pod("greedy", "Failed", e2e::has_phase("Failed"))
        .await?;
    let status = rejected.status.unwrap_or_default();
    assert_eq!(status.reason.as_deref(), Some("OutOfcpu"));
    let message = status.message.unwrap_or_default();
    assert!(
        message.starts_with(
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 100000000, used: 0, capacity: "
        ),
        "{message}"
    );
    assert!(
        status.container_statuses.unwrap_or_default().is_empty(),
        "nothing ran"
    );
    Ok(())
}

/// The pod's containers as metrics-server decodes the node's Summary
/// (`kubectl get --raw .../proxy/stats/summary`), or `None` while the pod is not in it.
fn pod_metrics(
    cluster: &Cluster,
    node: &str,
    pod: &str,
) -> anyhow::Result<Option<Vec<(String, Usage)>>> {
    let raw = cluster.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/stats/summary"),
    ])?;
    let scrape = metrics_server::scrape(&raw)?;
    anyhow::ensure!(
        scrape.node.working_set_bytes > 0,
        "the node's working set is 0: {raw}"
    );
    Ok(scrape
        .pods
        .into_iter()
        .find(|p| p.name == pod && p.namespace == cluster.namespace)
        .map(|p| p.containers))
}

#[tokio::test]
async fn usage_is_reported_in_the_summary_api_and_resource_metrics() -> anyhow::Result<()> {
    let cluster = Cluster::new("stats").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    cluster
        .create_pod(wasm_pod(
            "holder",
            &image,
            &agent.name,
            &["alloc", "8", "forever"],
            "Always",
        ))
        .await?;
    cluster
        .create_pod(with_limits(
            wasm_pod("spinner", &image, &agent.name, &["spin"], "Always"),
            "16Mi",
            "200m",
        ))
        .await?;
    let holder = cluster
        .eventually("the holder's memory in the summary", async || {
            Ok(
                pod_metrics(&cluster, &agent.name, "holder")?.filter(|containers| {
                    containers
                        .iter()
                        .any(|(name, usage)| name == "main" && usage.working_set_bytes >= 8 << 20)
                }),
            )
        })
        .await?;
    assert_eq!(holder.len(), 1, "{holder:?}");
    // The spinner's rate is measured between samples a second apart; its CPU limit holds. One
    // sample may run over on a loaded machine (the limit is enforced per 100 ms period), so the
    // rate is watched until a sample shows it near its limit; an unlimited spinner shows a whole
    // core in every sample and never passes.
    let mut seen = Vec::new();
    let spinner = cluster
        .eventually(
            "the spinner's CPU rate in the summary, within its limit",
            async || {
                let sample = pod_metrics(&cluster, &agent.name, "spinner")?
                    .and_then(|containers| containers.into_iter().next())
                    .filter(|(_, usage)| usage.nano_cores > 0);
                if let Some((_, usage)) = &sample {
                    seen.push(usage.nano_cores);
                }
                Ok(sample.filter(|(_, usage)| usage.nano_cores <= 300_000_000))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}: a guest limited to 200m used {seen:?} nanocores"))?;
    assert!(spinner.1.nano_cores > 0);

    let metrics = cluster.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{}/proxy/metrics/resource", agent.name),
    ])?;
    let line = format!(
        "container_cpu_usage_seconds_total{{container=\"main\",namespace=\"{}\",pod=\"spinner\"}} ",
        cluster.namespace
    );
    assert!(metrics.contains(&line), "{metrics}");
    assert!(
        metrics.contains("node_memory_working_set_bytes "),
        "{metrics}"
    );
    Ok(())
}
