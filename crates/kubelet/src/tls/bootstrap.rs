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

/// How the node authenticates after [`bootstrap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// With the certificate in the cert dir (bootstrapped now or before), kept renewed; the
    /// kubeconfig is the one the bootstrap wrote.
    NodeCertificate,
    /// With a kubeconfig the bootstrap did not write, whose client certificate is valid: used
    /// as it is, as the kubelet uses one, and never written over.
    AsItIs,
}

/// Makes sure `kubeconfig` lets the node in as `system:node:<node_name>`, bootstrapping
/// through `bootstrap_file` when needed; the key and certificate go to `cert_dir`.
///
/// A kubeconfig the bootstrap wrote (its user is the cert dir's certificate) is used while that
/// certificate is valid, and written again by a new bootstrap when it has expired (as the
/// kubelet, a node whose certificate expired while it was down bootstraps again). Any other
/// file there is used as it is when its client certificate is valid, and otherwise stops the
/// start ([`CertificateError::NotOurs`]): the bootstrap never writes over a file it did not
/// write (an administrator's kubeconfig, say).
pub async fn bootstrap(
    bootstrap_file: &Path,
    kubeconfig: &Path,
    node_name: &str,
    cert_dir: &Path,
) -> Result<Joined, CertificateError> {
    let credentials = cert_dir.join(CLIENT_CERT_FILE);
    let certificate = NodeCertificate::stored(credentials.clone());
    if kubeconfig.exists() {
        match foreign_kubeconfig(kubeconfig, &credentials) {
            None if certificate.is_valid() => return Ok(Joined::NodeCertificate),
            None => {}
            Some(Ok(())) => return Ok(Joined::AsItIs),
            Some(Err(why)) => {
                return Err(CertificateError::NotOurs {
                    path: kubeconfig.to_path_buf(),
                    why,
                });
            }
        }
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
    write_kubeconfig(&boot, kubeconfig, &credentials)?;
    tracing::info!(kubeconfig = %kubeconfig.display(), "TLS bootstrap done: running as system:node:{node_name}");
    Ok(Joined::NodeCertificate)
}

/// `None` when the kubeconfig at `path` is the bootstrap's own (its users authenticate with
/// `credentials`); otherwise whether its current user's client certificate is valid now
/// (`Err` says why not).
fn foreign_kubeconfig(path: &Path, credentials: &Path) -> Option<Result<(), String>> {
    let config = match Kubeconfig::read_from(path) {
        Ok(config) => config,
        Err(e) => return Some(Err(format!("it cannot be read as a kubeconfig: {e}"))),
    };
    let ours = credentials.display().to_string();
    let users: Vec<_> = config
        .auth_infos
        .iter()
        .filter_map(|named| named.auth_info.as_ref())
        .collect();
    if !users.is_empty()
        && users
            .iter()
            .all(|user| user.client_certificate.as_deref() == Some(ours.as_str()))
    {
        return None;
    }
    let current_user = config
        .current_context
        .as_ref()
        .and_then(|name| config.contexts.iter().find(|c| &c.name == name))
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone());
    let user = config
        .auth_infos
        .iter()
        .find(|named| Some(&named.name) == current_user.as_ref())
        .or_else(|| config.auth_infos.first())
        .and_then(|named| named.auth_info.as_ref());
    let pem = match user {
        Some(user) => match (&user.client_certificate_data, &user.client_certificate) {
            (Some(data), _) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|e| format!("its client-certificate-data is not base64: {e}"))
            }
            (None, Some(file)) => std::fs::read(file)
                .map_err(|e| format!("reading its client-certificate {file}: {e}")),
            (None, None) => Err("its user has no client certificate".to_string()),
        },
        None => Err("it names no user".to_string()),
    };
    Some(pem.and_then(|pem| certificate_valid_now(&pem)))
}

/// Whether the first certificate of `pem` is valid at this moment.
fn certificate_valid_now(pem: &[u8]) -> Result<(), String> {
    let der = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .ok_or("its client certificate holds no PEM certificate")?
        .map_err(|e| format!("its client certificate cannot be read: {e}"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("its client certificate cannot be parsed: {e}"))?;
    if parsed.validity().is_valid() {
        Ok(())
    } else {
        Err("its client certificate has expired or is not valid yet".to_string())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubeconfig whose user is `user` (YAML of the `user:` map).
    fn kubeconfig(dir: &Path, user: serde_json::Value) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
            "users": [{"name": "admin", "user": user}],
            "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "admin"}}],
            "current-context": "ctx",
        });
        std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
        path
    }

    /// A PEM certificate valid from `not_before` to `not_after` (years from now).
    fn certificate(not_before: i32, not_after: i32) -> String {
        let mut params = rcgen::CertificateParams::new(vec!["admin".to_string()]).unwrap();
        let year = |offset: i32| rcgen::date_time_ymd(2026 + offset, 1, 1);
        let now = jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .year() as i32
            - 2026;
        params.not_before = year(now + not_before);
        params.not_after = year(now + not_after);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_kubeconfig_the_bootstrap_did_not_write_is_used_only_with_a_valid_certificate() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("pki").join(CLIENT_CERT_FILE);
        let ours = kubeconfig(
            dir.path(),
            serde_json::json!({"client-certificate": credentials, "client-key": credentials}),
        );
        assert!(foreign_kubeconfig(&ours, &credentials).is_none());
        let encode = |pem: String| base64::engine::general_purpose::STANDARD.encode(pem);
        let valid = kubeconfig(
            dir.path(),
            serde_json::json!({"client-certificate-data": encode(certificate(-1, 1))}),
        );
        assert_eq!(foreign_kubeconfig(&valid, &credentials), Some(Ok(())));
        let expired = kubeconfig(
            dir.path(),
            serde_json::json!({"client-certificate-data": encode(certificate(-2, -1))}),
        );
        let why = foreign_kubeconfig(&expired, &credentials)
            .unwrap()
            .unwrap_err();
        assert!(why.contains("expired"), "{why}");
        let token = kubeconfig(dir.path(), serde_json::json!({"token": "admin-token"}));
        let why = foreign_kubeconfig(&token, &credentials)
            .unwrap()
            .unwrap_err();
        assert!(why.contains("no client certificate"), "{why}");
    }

    #[tokio::test]
    async fn the_bootstrap_never_writes_over_a_file_it_did_not_write() {
        let dir = tempfile::tempdir().unwrap();
        let admin = kubeconfig(dir.path(), serde_json::json!({"token": "admin-token"}));
        let before = std::fs::read(&admin).unwrap();
        let error = bootstrap(
            &dir.path().join("no-bootstrap-file"),
            &admin,
            "node-1",
            &dir.path().join("pki"),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, CertificateError::NotOurs { .. }), "{error}");
        assert!(error.to_string().contains("--kubeconfig"), "{error}");
        assert_eq!(std::fs::read(&admin).unwrap(), before);
        assert!(!dir.path().join("pki").exists());
    }
}
