//! Joining with a bootstrap token, as operators do: the agent sends a CSR for its node identity,
//! the cluster approves and signs it, and the agent runs as `system:node:<name>` from then on.

use e2e::{Cluster, Credentials, NodeAgent, bootstrap_kubeconfig};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, DeleteParams};
use std::os::unix::fs::PermissionsExt;

async fn bootstrap_csrs(cluster: &Cluster) -> anyhow::Result<Vec<CertificateSigningRequest>> {
    e2e::csrs(
        cluster,
        "kubernetes.io/kube-apiserver-client-kubelet",
        |user| user.starts_with("system:bootstrap:"),
    )
    .await
}

#[tokio::test]
async fn a_node_joins_with_a_bootstrap_token_and_keeps_its_certificate() -> anyhow::Result<()> {
    let cluster = Cluster::new("bootstrap").await?;
    let before: Vec<String> = bootstrap_csrs(&cluster)
        .await?
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let data_dir = tempfile::Builder::new().prefix("krustlet-node").tempdir()?;
    let boot = bootstrap_kubeconfig(&cluster, data_dir.path()).await?;
    let name = format!("node-{}", cluster.id);
    let mut agent =
        NodeAgent::start_with(&cluster, &name, data_dir, Credentials::Bootstrap(boot)).await?;

    let ours: Vec<CertificateSigningRequest> = bootstrap_csrs(&cluster)
        .await?
        .into_iter()
        .filter(|c| !before.contains(c.metadata.name.as_ref().expect("named")))
        .collect();
    assert_eq!(ours.len(), 1, "one CSR for the node");
    let status = ours[0].status.clone().unwrap_or_default();
    assert!(
        status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Approved" && c.status == "True")
    );
    assert!(status.certificate.is_some());
    assert_eq!(
        ours[0].spec.usages.clone().unwrap_or_default(),
        ["digital signature", "client auth"]
    );

    for file in ["kubeconfig", "pki/kubelet-client-current.pem"] {
        let mode = std::fs::metadata(agent.data_dir.path().join(file))?
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file} must be private");
    }
    let pem =
        std::fs::read_to_string(agent.data_dir.path().join("pki/kubelet-client-current.pem"))?;
    assert!(pem.contains("BEGIN CERTIFICATE") && pem.contains("PRIVATE KEY"));

    // A restart uses the issued certificate: no second CSR.
    agent.restart().await?;
    let after = bootstrap_csrs(&cluster)
        .await?
        .into_iter()
        .filter(|c| !before.contains(c.metadata.name.as_ref().expect("named")))
        .count();
    assert_eq!(after, 1, "the restarted agent reuses its kubeconfig");
    let csrs: Api<CertificateSigningRequest> = Api::all(cluster.client.clone());
    for csr in ours {
        csrs.delete(
            csr.metadata.name.as_deref().unwrap_or_default(),
            &DeleteParams::default(),
        )
        .await?;
    }
    Ok(())
}
