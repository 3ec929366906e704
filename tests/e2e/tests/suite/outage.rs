//! Losing the API server while pods run: the node agent's connection to it is cut (open
//! connections reset, new ones refused), or every request is answered 503 and every watch
//! closed. Running pods keep running; the agent backs off; what changed meanwhile (a pod
//! deleted, a pod created) is done once the server is back.
//!
//! The faults happen in proxies between the agent and the API server (`testkit::proxy`), so the
//! tests run the same against the stand-in and a real cluster.

use e2e::{Cluster, Credentials, NodeAgent, has_phase, is_node_ready, node_credentials, wasm_pod};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use std::time::Duration;
use testkit::proxy::{FaultyApiServer, TcpProxy};

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

/// Starts a node agent whose kubeconfig sends it to `server` instead of the API server;
/// `server` is built from the API server's address and the node's kubeconfig.
async fn start_node_via<F, Fut>(cluster: &Cluster, server: F) -> anyhow::Result<NodeAgent>
where
    F: FnOnce(kube::config::Cluster, std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<kube::config::Cluster>>,
{
    let name = format!("node-{}", cluster.id);
    let data_dir = tempfile::Builder::new().prefix("krustlet-node").tempdir()?;
    let kubeconfig_path = node_credentials(cluster, &name, data_dir.path()).await?;
    let entry = server(e2e::admin_cluster()?, kubeconfig_path.clone()).await?;
    let mut kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig_path)?;
    for named in &mut kubeconfig.clusters {
        named.cluster = Some(entry.clone());
    }
    std::fs::write(&kubeconfig_path, serde_yaml::to_string(&kubeconfig)?)?;
    NodeAgent::start_with(
        cluster,
        &name,
        data_dir,
        Credentials::Kubeconfig(kubeconfig_path),
    )
    .await
}

/// Two pods running `forever` on `agent`, `steady` and `doomed`; returns when both run, with
/// `steady`'s restart count and start time.
async fn start_two_pods(
    cluster: &Cluster,
    agent: &NodeAgent,
    image: &str,
) -> anyhow::Result<
    Option<(
        i32,
        Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    )>,
> {
    for pod in ["steady", "doomed"] {
        cluster
            .create_pod(wasm_pod(pod, image, &agent.name, &["forever"], "Always"))
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
    Ok(before)
}

/// Deletes `doomed` and creates `newcomer` while the agent cannot hear of it.
async fn change_pods_meanwhile(
    cluster: &Cluster,
    agent: &NodeAgent,
    image: &str,
) -> anyhow::Result<()> {
    cluster.pods().delete("doomed", &Default::default()).await?;
    cluster
        .create_pod(wasm_pod(
            "newcomer",
            image,
            &agent.name,
            &["forever"],
            "Always",
        ))
        .await?;
    Ok(())
}

/// After the outage: the new pod runs, the deleted one is gone, the node is Ready, and the pod
/// that ran all along was never restarted.
async fn assert_converged(
    cluster: &Cluster,
    agent: &NodeAgent,
    before: Option<(
        i32,
        Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    )>,
) -> anyhow::Result<()> {
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

/// Nothing reached the agent during the outage: the new pod has no status from it.
async fn assert_unseen(cluster: &Cluster) -> anyhow::Result<()> {
    let newcomer = cluster.pods().get("newcomer").await?;
    assert!(
        newcomer.status.and_then(|s| s.container_statuses).is_none(),
        "nothing reached the agent during the outage"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_pods_survive_losing_the_api_server_and_changes_converge() -> anyhow::Result<()> {
    let cluster = Cluster::new("outage").await?;
    let mut proxy = None;
    let agent = start_node_via(&cluster, async |mut server, _| {
        let url: http::Uri = server.server.clone().unwrap_or_default().parse()?;
        let host = url.host().unwrap_or("127.0.0.1").to_string();
        let upstream = format!("{host}:{}", url.port_u16().unwrap_or(443));
        let started = TcpProxy::start(&upstream).await?;
        server.server = Some(format!("https://{}", started.addr()));
        server.tls_server_name = Some(host);
        proxy = Some(started);
        Ok(server)
    })
    .await?;
    let proxy = proxy.expect("the proxy started");
    let image = cluster.push_guest("wasi-probe").await?;
    let before = start_two_pods(&cluster, &agent, &image).await?;

    proxy.cut();
    change_pods_meanwhile(&cluster, &agent, &image).await?;
    // The outage itself: the agent cannot see what changed.
    tokio::time::sleep(OUTAGE).await;
    assert_unseen(&cluster).await?;
    proxy.restore().await?;
    assert_converged(&cluster, &agent, before).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_pods_survive_an_api_server_answering_503_and_the_agent_backs_off()
-> anyhow::Result<()> {
    use base64::Engine;
    let cluster = Cluster::new("faults").await?;
    let mut proxy = None;
    let agent = start_node_via(&cluster, async |mut server, kubeconfig| {
        let started = FaultyApiServer::start(&kubeconfig).await?;
        server.server = Some(started.url());
        server.certificate_authority_data =
            Some(base64::engine::general_purpose::STANDARD.encode(started.ca_pem()));
        server.certificate_authority = None;
        server.tls_server_name = None;
        proxy = Some(started);
        Ok(server)
    })
    .await?;
    let proxy = proxy.expect("the proxy started");
    let image = cluster.push_guest("wasi-probe").await?;
    let before = start_two_pods(&cluster, &agent, &image).await?;

    proxy.fail();
    change_pods_meanwhile(&cluster, &agent, &image).await?;
    cluster
        .eventually("the agent to meet the failing server", async || {
            Ok((proxy.refused() > 0).then_some(()))
        })
        .await?;
    // The fault itself: every request fails, every watch was closed.
    tokio::time::sleep(OUTAGE).await;
    assert_unseen(&cluster).await?;
    let refused = proxy.refused();
    assert!(
        refused < 15 * OUTAGE.as_secs() as usize,
        "the agent backs off: {refused} requests refused in {OUTAGE:?}"
    );
    proxy.recover();
    assert_converged(&cluster, &agent, before).await
}
