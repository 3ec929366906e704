//! TLS bootstrap, as the kubelet does it: with a bootstrap kubeconfig (a bootstrap token) and no
//! usable kubeconfig, make a key, send a certificates.k8s.io/v1 CSR to the
//! `kubernetes.io/kube-apiserver-client-kubelet` signer for `system:node:<name>` in
//! `system:nodes`, wait until it is issued, and write the key, certificate and a kubeconfig
//! that uses them (0600).

use super::CertificateError;
use super::csr::{CertificateRequest, request_certificate};
use super::identity::{NodeCertificate, write_private};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::Path;

/// The file in the cert dir holding the client certificate and key, as the kubelet names it.
pub const CLIENT_CERT_FILE: &str = "kubelet-client-current.pem";

/// Writes a kubeconfig at `kubeconfig` for `system:node:<node_name>`, bootstrapping through
/// `bootstrap_file`; the key and certificate go to `cert_dir`. Does nothing when `kubeconfig`
/// already exists and its certificate has not expired (as the kubelet, a node whose
/// certificate expired while it was down bootstraps again).
pub async fn bootstrap(
    bootstrap_file: &Path,
    kubeconfig: &Path,
    node_name: &str,
    cert_dir: &Path,
) -> Result<(), CertificateError> {
    let certificate = NodeCertificate::stored(cert_dir.join(CLIENT_CERT_FILE));
    if kubeconfig.exists() && certificate.is_valid() {
        return Ok(());
    }
    let file_err = |message: String| CertificateError::BootstrapFile {
        path: bootstrap_file.to_path_buf(),
        message,
    };
    let boot = Kubeconfig::read_from(bootstrap_file).map_err(|e| file_err(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(boot.clone(), &KubeConfigOptions::default())
        .await
        .map_err(|e| file_err(e.to_string()))?;
    let client = kube::Client::try_from(config).map_err(|e| file_err(e.to_string()))?;
    let issued = request_certificate(client, &CertificateRequest::client(node_name)).await?;
    certificate.install(&issued)?;
    write_kubeconfig(&boot, kubeconfig, &cert_dir.join(CLIENT_CERT_FILE))?;
    tracing::info!(kubeconfig = %kubeconfig.display(), "TLS bootstrap done: running as system:node:{node_name}");
    Ok(())
}

/// Writes a kubeconfig for the cluster of `boot` that authenticates with `credentials`.
fn write_kubeconfig(
    boot: &Kubeconfig,
    kubeconfig: &Path,
    credentials: &Path,
) -> Result<(), CertificateError> {
    let context = boot
        .current_context
        .clone()
        .or_else(|| boot.contexts.first().map(|c| c.name.clone()))
        .unwrap_or_default();
    let cluster_name = boot
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = boot
        .clusters
        .iter()
        .find(|c| Some(&c.name) == cluster_name.as_ref())
        .or_else(|| boot.clusters.first())
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| CertificateError::BootstrapFile {
            path: kubeconfig.to_path_buf(),
            message: "names no cluster".into(),
        })?;
    let path = credentials.display().to_string();
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "default-cluster", "cluster": cluster}],
        "users": [{"name": "default-auth", "user": {"client-certificate": path, "client-key": path}}],
        "contexts": [{"name": "default-context", "context": {"cluster": "default-cluster", "user": "default-auth", "namespace": "default"}}],
        "current-context": "default-context",
    });
    let yaml = serde_yaml::to_string(&config).map_err(|e| CertificateError::Write {
        path: kubeconfig.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    write_private(kubeconfig, yaml.as_bytes())
}
