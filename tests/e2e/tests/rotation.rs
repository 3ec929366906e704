//! Certificates that expire while the node runs: the client certificate from the TLS bootstrap
//! and the kubelet API's serving certificate (`--rotate-server-certificates`, approved by the
//! operator) are renewed before they expire, without a restart and without touching pods.
//!
//! The stand-in signs for 40 seconds (as `--cluster-signing-duration=40s` would); on a real
//! cluster the test runs when its signing duration is as short, and says so otherwise.

use e2e::{Cluster, Credentials, NodeAgent, bootstrap_kubeconfig, has_phase, node_ip, wasm_pod};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const SIGNING: Duration = Duration::from_secs(40);

/// Pending kubelet-serving CSRs of `node`.
async fn pending_serving_csrs(
    cluster: &Cluster,
    node: &str,
) -> anyhow::Result<Vec<CertificateSigningRequest>> {
    let user = format!("system:node:{node}");
    let all = e2e::csrs(cluster, "kubernetes.io/kubelet-serving", |u| u == user).await?;
    Ok(all
        .into_iter()
        .filter(|c| {
            c.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_none_or(|c| c.is_empty())
        })
        .collect())
}

/// Approves the node's serving CSRs as they come, until dropped.
async fn approve_serving_csrs(cluster: &Cluster, node: &str) -> anyhow::Result<()> {
    loop {
        for csr in pending_serving_csrs(cluster, node).await? {
            e2e::approve_csr(cluster, csr.metadata.name.as_deref().unwrap_or_default()).await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The certificate (DER) in a `kubelet-*-current.pem` file, and when it expires.
fn certificate_in(file: &Path) -> anyhow::Result<(Vec<u8>, SystemTime)> {
    let pem = std::fs::read(file)?;
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .ok_or_else(|| anyhow::anyhow!("no certificate in {}", file.display()))??
        .to_vec();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)?;
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(parsed.validity().not_after.timestamp())?);
    Ok((der, not_after))
}

/// The certificate the kubelet API presents, verified against the cluster's CA for the node's
/// IP address.
async fn served_certificate(port: u16) -> anyhow::Result<Vec<u8>> {
    let ca = e2e::cluster_ca()?;
    tokio::task::spawn_blocking(move || {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let ip: std::net::IpAddr = node_ip().parse()?;
        let mut connection = rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::IpAddress(ip.into()),
        )?;
        let mut tcp = std::net::TcpStream::connect((ip, port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        while connection.is_handshaking() {
            connection.complete_io(&mut tcp)?;
        }
        let served = connection
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or_else(|| anyhow::anyhow!("no certificate presented"))?;
        anyhow::Ok(served)
    })
    .await?
}

#[tokio::test]
async fn certificates_are_renewed_while_a_pod_keeps_running() -> anyhow::Result<()> {
    e2e::use_cluster_signing_duration(SIGNING);
    let cluster = Cluster::new("rotation").await?;
    let data_dir = tempfile::Builder::new().prefix("krustlet-node").tempdir()?;
    let boot = bootstrap_kubeconfig(&cluster, data_dir.path()).await?;
    let name = format!("node-{}", cluster.id);
    let pki = data_dir.path().join("pki");
    let log = data_dir.path().join("agent.log");

    // The kubelet API waits for its serving certificate until the operator approves the CSR;
    // the agent names the CSR in its log.
    let start = NodeAgent::start_with_args(
        &cluster,
        &name,
        data_dir,
        Credentials::Bootstrap(boot),
        &["--rotate-server-certificates"],
    );
    let operator = async {
        let pending = cluster
            .eventually("a serving CSR of the node", async || {
                Ok(pending_serving_csrs(&cluster, &name)
                    .await?
                    .into_iter()
                    .next())
            })
            .await?;
        let csr_name = pending.metadata.name.clone().unwrap_or_default();
        // The agent logs the name once the API server has answered its create, which may be
        // just after the CSR is visible here.
        cluster
            .eventually("the agent's log to name the CSR to approve", async || {
                let logged = std::fs::read_to_string(&log).unwrap_or_default();
                Ok(logged.contains(&csr_name).then_some(()))
            })
            .await?;
        e2e::approve_csr(&cluster, &csr_name).await
    };
    let (agent, ()) = tokio::try_join!(start, operator)?;

    let (client_cert, client_expiry) = certificate_in(&pki.join("kubelet-client-current.pem"))?;
    let (serving_cert, _) = certificate_in(&pki.join("kubelet-server-current.pem"))?;
    let lifetime = client_expiry
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    if lifetime > 2 * SIGNING {
        eprintln!(
            "skipped: the cluster signs for {lifetime:?}; run it with --cluster-signing-duration=40s"
        );
        return Ok(());
    }
    assert_eq!(served_certificate(agent.port).await?, serving_cert);

    let image = cluster.push_guest("wasi-probe").await?;
    cluster
        .create_pod(wasm_pod("steady", &image, &name, &["forever"], "Never"))
        .await?;
    let running = cluster
        .wait_pod("steady", "Running", has_phase("Running"))
        .await?;

    // Renewals come at 70-90 % of the lifetime: new serving CSRs are approved as they come.
    let approver = approve_serving_csrs(&cluster, &name);
    let renewed = async {
        let deadline = tokio::time::Instant::now() + 2 * SIGNING;
        loop {
            let client = certificate_in(&pki.join("kubelet-client-current.pem"))?.0;
            let serving = certificate_in(&pki.join("kubelet-server-current.pem"))?.0;
            if client != client_cert && serving != serving_cert {
                return anyhow::Ok(serving);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the certificates were not renewed within {:?}",
                2 * SIGNING
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let new_serving = tokio::select! {
        renewed = renewed => renewed?,
        failed = approver => return failed,
    };
    assert_eq!(
        served_certificate(agent.port).await?,
        new_serving,
        "the kubelet API serves the renewed certificate without a restart"
    );

    // Past the first client certificate's expiry the node still renews its Lease (with the
    // new certificate), and the pod ran on untouched.
    let expired = client_expiry + Duration::from_secs(2);
    if let Ok(wait) = expired.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    cluster
        .eventually(
            "a Lease renewal after the old certificate expired",
            async || {
                let lease = leases.get(&name).await?;
                let renewed = lease
                    .spec
                    .and_then(|s| s.renew_time)
                    .map(|t| SystemTime::from(t.0));
                Ok(renewed.filter(|t| *t > expired))
            },
        )
        .await?;
    let pod = cluster
        .wait_pod("steady", "Running", has_phase("Running"))
        .await?;
    let started = |p: &k8s_openapi::api::core::v1::Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .map(|c| (c.restart_count, c.state.clone()))
    };
    assert_eq!(started(&pod), started(&running), "the pod was not touched");
    // `kubectl logs` goes through the API server to the renewed kubelet API.
    cluster.kubectl(&["logs", "steady"])?;
    drop(agent);
    Ok(())
}
