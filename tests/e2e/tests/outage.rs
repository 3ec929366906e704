//! Losing the API server: the node agent's connection to it is cut (open connections reset,
//! new ones refused) while pods run. Running pods keep running; what changed meanwhile (a pod
//! deleted, a pod created) is done once the server is back.
//!
//! The cut happens in a TCP proxy between the agent and the API server, so the test runs the
//! same against the stand-in and a real cluster.

use e2e::{Cluster, Credentials, NodeAgent, has_phase, is_node_ready, node_credentials, wasm_pod};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use std::time::Duration;
use testkit::proxy::TcpProxy;

/// How long the API server stays out of reach: longer than a Lease renewal (10 s), shorter
/// than the node monitor's grace period (40 s).
const OUTAGE: Duration = Duration::from_secs(15);

fn started(
    pod: &Pod,
) -> Option<(
    i32,
    Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
)> {
    let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
    Some((
        status.restart_count,
        status.state.as_ref()?.running.as_ref()?.started_at.clone(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_pods_survive_losing_the_api_server_and_changes_converge() -> anyhow::Result<()> {
    let cluster = Cluster::new("outage").await?;
    let name = format!("node-{}", cluster.id);
    let data_dir = tempfile::Builder::new().prefix("krustlet-node").tempdir()?;

    // The node reaches the API server only through the proxy.
    let mut server = e2e::admin_cluster()?;
    let url: http::Uri = server.server.clone().unwrap_or_default().parse()?;
    let host = url.host().unwrap_or("127.0.0.1").to_string();
    let upstream = format!("{host}:{}", url.port_u16().unwrap_or(443));
    let proxy = TcpProxy::start(&upstream).await?;
    let kubeconfig_path = node_credentials(&cluster, &name, data_dir.path()).await?;
    let mut kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig_path)?;
    server.server = Some(format!("https://{}", proxy.addr()));
    server.tls_server_name = Some(host);
    for entry in &mut kubeconfig.clusters {
        entry.cluster = Some(server.clone());
    }
    std::fs::write(&kubeconfig_path, serde_yaml::to_string(&kubeconfig)?)?;
    let agent = NodeAgent::start_with(
        &cluster,
        &name,
        data_dir,
        Credentials::Kubeconfig(kubeconfig_path),
    )
    .await?;

    let image = cluster.push_guest("wasi-probe").await?;
    for pod in ["steady", "doomed"] {
        cluster
            .create_pod(wasm_pod(pod, &image, &agent.name, &["forever"], "Always"))
            .await?;
    }
    let mut before = None;
    for pod in ["steady", "doomed"] {
        let running = cluster
            .wait_pod(pod, "Running", has_phase("Running"))
            .await?;
        if pod == "steady" {
            before = started(&running);
        }
    }

    proxy.cut();
    cluster.pods().delete("doomed", &Default::default()).await?;
    cluster
        .create_pod(wasm_pod(
            "newcomer",
            &image,
            &agent.name,
            &["forever"],
            "Always",
        ))
        .await?;
    // The outage itself: the agent cannot see what changed.
    tokio::time::sleep(OUTAGE).await;
    let newcomer = cluster.pods().get("newcomer").await?;
    assert!(
        newcomer.status.and_then(|s| s.container_statuses).is_none(),
        "nothing reached the agent during the outage"
    );
    proxy.restore().await?;

    // Back: the new pod runs, the deleted one is gone, the node is Ready, and the pod that
    // ran all along was never restarted.
    cluster
        .wait_pod("newcomer", "Running", has_phase("Running"))
        .await?;
    let gone = e2e::wait_for(cluster.pods(), "doomed", |p: Option<&Pod>| p.is_none()).await;
    assert!(matches!(gone, Ok(None)), "the deletion finished");
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    e2e::wait_for(nodes, &agent.name, is_node_ready()).await?;
    let steady = cluster.pods().get("steady").await?;
    assert_eq!(started(&steady), before, "the running pod was left alone");
    assert!(started(&steady).is_some_and(|(restarts, _)| restarts == 0));
    Ok(())
}
