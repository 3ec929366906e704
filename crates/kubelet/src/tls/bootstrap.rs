//! TLS bootstrap, as the kubelet does it: with a bootstrap kubeconfig (a bootstrap token) and no
//! usable kubeconfig, make a key, send a certificates.k8s.io/v1 CSR to the
//! `kubernetes.io/kube-apiserver-client-kubelet` signer for `system:node:<name>` in
//! `system:nodes`, wait until it is issued, and write the key, certificate and a kubeconfig
//! that uses them (0600).

use futures::TryStreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{Api, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Signer of kubelet client certificates.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// How often the operator is reminded of a CSR waiting for approval.
const REMIND_EVERY: Duration = Duration::from_secs(30);

/// TLS bootstrap failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The bootstrap kubeconfig cannot be used.
    #[error("bootstrap kubeconfig {path}: {message}")]
    BootstrapFile {
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The API server refused or failed.
    #[error("TLS bootstrap: {0}")]
    Api(String),
    /// The CSR was denied or failed.
    #[error("the certificate signing request {name} was {outcome}: {message}")]
    Refused {
        /// The CSR.
        name: String,
        /// `denied` or `failed`.
        outcome: String,
        /// The condition's reason and message.
        message: String,
    },
    /// Writing the credentials failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Making the key or CSR failed.
    #[error("making the node key and CSR: {0}")]
    Key(String),
}

/// Writes a kubeconfig at `kubeconfig` for `system:node:<node_name>`, bootstrapping through
/// `bootstrap_file`; the key and certificate go to `cert_dir`. Does nothing when `kubeconfig`
/// already exists.
pub async fn bootstrap(
    bootstrap_file: &Path,
    kubeconfig: &Path,
    node_name: &str,
    cert_dir: &Path,
) -> Result<(), BootstrapError> {
    if kubeconfig.exists() {
        return Ok(());
    }
    let file_err = |message: String| BootstrapError::BootstrapFile {
        path: bootstrap_file.to_path_buf(),
        message,
    };
    let boot = Kubeconfig::read_from(bootstrap_file).map_err(|e| file_err(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(boot.clone(), &KubeConfigOptions::default())
        .await
        .map_err(|e| file_err(e.to_string()))?;
    let client = kube::Client::try_from(config).map_err(|e| file_err(e.to_string()))?;
    let key = rcgen::KeyPair::generate().map_err(|e| BootstrapError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| BootstrapError::Key(e.to_string()))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("system:node:{node_name}"),
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let request = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| BootstrapError::Key(e.to_string()))?;
    let csrs: Api<CertificateSigningRequest> = Api::all(client);
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("node-csr-".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: CLIENT_SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    let created = csrs
        .create(&PostParams::default(), &csr)
        .await
        .map_err(|e| BootstrapError::Api(format!("creating the CSR: {e}")))?;
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::info!(csr = %name, "sent a certificate signing request for system:node:{node_name}; waiting for it to be approved and issued");
    let certificate = wait_for_certificate(&csrs, &name, created).await?;
    write_credentials(
        &boot,
        kubeconfig,
        cert_dir,
        &certificate,
        &key.serialize_pem(),
    )?;
    tracing::info!(kubeconfig = %kubeconfig.display(), "TLS bootstrap done: running as system:node:{node_name}");
    Ok(())
}

fn outcome(csr: &CertificateSigningRequest) -> Result<Option<Vec<u8>>, BootstrapError> {
    let status = csr.status.clone().unwrap_or_default();
    for condition in status.conditions.iter().flatten() {
        if (condition.type_ == "Denied" || condition.type_ == "Failed")
            && condition.status != "False"
        {
            return Err(BootstrapError::Refused {
                name: csr.metadata.name.clone().unwrap_or_default(),
                outcome: condition.type_.to_lowercase(),
                message: format!(
                    "{}: {}",
                    condition.reason.clone().unwrap_or_default(),
                    condition.message.clone().unwrap_or_default()
                ),
            });
        }
    }
    Ok(status.certificate.map(|c| c.0).filter(|c| !c.is_empty()))
}

async fn wait_for_certificate(
    csrs: &Api<CertificateSigningRequest>,
    name: &str,
    created: CertificateSigningRequest,
) -> Result<Vec<u8>, BootstrapError> {
    if let Some(cert) = outcome(&created)? {
        return Ok(cert);
    }
    let mut remind = tokio::time::interval(REMIND_EVERY);
    remind.tick().await;
    loop {
        let rv = csrs
            .get(name)
            .await
            .map_err(|e| BootstrapError::Api(format!("reading CSR {name}: {e}")))?;
        if let Some(cert) = outcome(&rv)? {
            return Ok(cert);
        }
        let from = rv.metadata.resource_version.clone().unwrap_or_default();
        let params = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(60);
        let mut events = Box::pin(
            csrs.watch(&params, &from)
                .await
                .map_err(|e| BootstrapError::Api(format!("watching CSR {name}: {e}")))?,
        );
        loop {
            let next = tokio::select! {
                next = events.try_next() => next,
                _ = remind.tick() => {
                    tracing::warn!(csr = %name, "the certificate signing request is not approved yet; approve it with `kubectl certificate approve {name}`");
                    continue;
                }
            };
            match next {
                Ok(Some(WatchEvent::Added(csr) | WatchEvent::Modified(csr))) => {
                    if let Some(cert) = outcome(&csr)? {
                        return Ok(cert);
                    }
                }
                Ok(Some(WatchEvent::Deleted(_))) => {
                    return Err(BootstrapError::Api(format!(
                        "CSR {name} was deleted before it was issued"
                    )));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BootstrapError> {
    let err = |source| BootstrapError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn write_credentials(
    boot: &Kubeconfig,
    kubeconfig: &Path,
    cert_dir: &Path,
    certificate: &[u8],
    key_pem: &str,
) -> Result<(), BootstrapError> {
    let credentials = cert_dir.join("kubelet-client-current.pem");
    let mut combined = certificate.to_vec();
    if !combined.ends_with(b"\n") {
        combined.push(b'\n');
    }
    combined.extend_from_slice(key_pem.as_bytes());
    write_private(&credentials, &combined)?;
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
        .ok_or_else(|| BootstrapError::BootstrapFile {
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
    let yaml = serde_yaml::to_string(&config).map_err(|e| BootstrapError::Write {
        path: kubeconfig.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    write_private(kubeconfig, yaml.as_bytes())
}
