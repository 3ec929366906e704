//! The node's kubeconfig is only its own: as on the kubelet, the KUBECONFIG environment variable
//! is not read, and the TLS bootstrap never writes over a file it did not write. (A file of its
//! own: the bootstrap test counts the cluster's bootstrap CSRs, and this one makes another.)

use e2e::{Cluster, bootstrap_kubeconfig};
use kube::api::{Api, DeleteParams};

#[tokio::test]
async fn an_exported_kubeconfig_is_neither_read_nor_written_by_a_bootstrapping_node()
-> anyhow::Result<()> {
    use e2e::{Provider, agent_binary, is_node_ready, node_ip, wait_for};
    use k8s_openapi::api::core::v1::Node;
    let cluster = Cluster::new("kubeconfig-env").await?;
    let data_dir = tempfile::Builder::new().prefix("krustlet-node").tempdir()?;
    let boot = bootstrap_kubeconfig(&cluster, data_dir.path()).await?;
    // An operator's shell: KUBECONFIG names the cluster admin's kubeconfig.
    let admin = data_dir.path().join("admin.conf");
    std::fs::copy(cluster.admin_kubeconfig(), &admin)?;
    let admin_before = std::fs::read(&admin)?;
    let name = format!("node-{}", cluster.id);
    let port = testkit::registry::free_port()?;
    let log = std::fs::File::create(data_dir.path().join("agent.log"))?;
    let mut command = std::process::Command::new(agent_binary(Provider::Wasi)?);
    command
        .arg("--bootstrap-file")
        .arg(&boot)
        .args(["--node-name", &name, "--node-ip", &node_ip()])
        .args(["--port", &port.to_string()])
        .arg("--data-dir")
        .arg(data_dir.path())
        .arg("--cni-conf-dir")
        .arg(data_dir.path().join("no-cni"))
        // No runtime workers: killing the agent ends everything it started.
        .args(["--runtime-workers", "0"])
        .env("KUBECONFIG", &admin)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let _agent = e2e::KilledOnDrop(testkit::process::spawn_owned(command)?);
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let joined = wait_for(nodes.clone(), &name, is_node_ready()).await;
    let log = std::fs::read_to_string(data_dir.path().join("agent.log"))?;
    joined.map_err(|e| anyhow::anyhow!("{e}: agent log:\n{log}"))?;
    // It joined as itself, with a kubeconfig of its own; the admin's file is as it was.
    assert_eq!(
        std::fs::read(&admin)?,
        admin_before,
        "the admin kubeconfig was changed"
    );
    let own = std::fs::read_to_string(data_dir.path().join("kubeconfig"))?;
    assert!(own.contains("kubelet-client-current.pem"), "{own}");
    let _ = nodes.delete(&name, &DeleteParams::default()).await;
    Ok(())
}
