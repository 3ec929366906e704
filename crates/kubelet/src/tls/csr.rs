//! Certificates from the cluster's signers, as the kubelet gets them: a new key, a
//! certificates.k8s.io/v1 CSR for `system:node:<name>` in `system:nodes`, and a wait (with
//! reminders naming the CSR to approve) until it is issued, denied or fails.

use super::CertificateError;
use futures::TryStreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{Api, ObjectMeta, PostParams, WatchEvent, WatchParams};
use std::net::IpAddr;
use std::time::Duration;

/// Signer of kubelet client certificates.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Signer of kubelet serving certificates.
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// How often the operator is reminded of a CSR waiting for approval.
const REMIND_EVERY: Duration = Duration::from_secs(30);

/// What a node asks a signer for.
#[derive(Debug, Clone)]
pub struct CertificateRequest {
    /// The signer.
    pub signer: &'static str,
    /// The node's name (the subject is `system:node:<name>` in `system:nodes`).
    pub node_name: String,
    /// DNS names (serving certificates).
    pub dns_names: Vec<String>,
    /// IP addresses (serving certificates).
    pub ip_addresses: Vec<IpAddr>,
    /// The key usages.
    pub usages: &'static [&'static str],
}

/// A certificate issued for a new key.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate chain (PEM).
    pub cert_pem: String,
    /// The private key (PEM).
    pub key_pem: String,
}

impl Issued {
    /// Certificate and key in one PEM file, as the kubelet keeps `kubelet-*-current.pem`.
    pub fn combined_pem(&self) -> String {
        let mut combined = self.cert_pem.clone();
        if !combined.ends_with('\n') {
            combined.push('\n');
        }
        combined.push_str(&self.key_pem);
        combined
    }
}

impl CertificateRequest {
    /// A client certificate for the node identity.
    pub fn client(node_name: &str) -> Self {
        Self {
            signer: CLIENT_SIGNER,
            node_name: node_name.to_string(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usages: &["digital signature", "client auth"],
        }
    }

    /// A serving certificate for the node's hostname and addresses.
    pub fn serving(node_name: &str, hostname: &str, ip_addresses: Vec<IpAddr>) -> Self {
        Self {
            signer: SERVING_SIGNER,
            node_name: node_name.to_string(),
            dns_names: vec![hostname.to_string()],
            ip_addresses,
            usages: &["digital signature", "server auth"],
        }
    }

    fn csr_pem(&self, key: &rcgen::KeyPair) -> Result<String, CertificateError> {
        let key_err = |e: rcgen::Error| CertificateError::Key(e.to_string());
        let mut params = rcgen::CertificateParams::new(self.dns_names.clone()).map_err(key_err)?;
        params.subject_alt_names.extend(
            self.ip_addresses
                .iter()
                .map(|ip| rcgen::SanType::IpAddress(*ip)),
        );
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("system:node:{}", self.node_name),
        );
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        params
            .serialize_request(key)
            .and_then(|r| r.pem())
            .map_err(key_err)
    }
}

/// Sends `request` as a CSR through `client` and waits until it is issued.
pub async fn request_certificate(
    client: kube::Client,
    request: &CertificateRequest,
) -> Result<Issued, CertificateError> {
    let key = rcgen::KeyPair::generate().map_err(|e| CertificateError::Key(e.to_string()))?;
    let csrs: Api<CertificateSigningRequest> = Api::all(client);
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some(if request.signer == CLIENT_SIGNER {
                "node-csr-".into()
            } else {
                "csr-".into()
            }),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.csr_pem(&key)?.into_bytes()),
            signer_name: request.signer.into(),
            usages: Some(request.usages.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    };
    let created = csrs
        .create(&PostParams::default(), &csr)
        .await
        .map_err(|e| CertificateError::Api(format!("creating the CSR: {e}")))?;
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::info!(csr = %name, signer = request.signer, "sent a certificate signing request for system:node:{}; waiting for it to be approved and issued", request.node_name);
    let certificate = wait_for_certificate(&csrs, &name, created).await?;
    Ok(Issued {
        cert_pem: String::from_utf8(certificate).map_err(|_| {
            CertificateError::Api(format!("CSR {name}: the certificate is not PEM"))
        })?,
        key_pem: key.serialize_pem(),
    })
}

fn outcome(csr: &CertificateSigningRequest) -> Result<Option<Vec<u8>>, CertificateError> {
    let status = csr.status.clone().unwrap_or_default();
    for condition in status.conditions.iter().flatten() {
        if (condition.type_ == "Denied" || condition.type_ == "Failed")
            && condition.status != "False"
        {
            return Err(CertificateError::Refused {
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
) -> Result<Vec<u8>, CertificateError> {
    if let Some(cert) = outcome(&created)? {
        return Ok(cert);
    }
    let mut remind = tokio::time::interval(REMIND_EVERY);
    remind.tick().await;
    loop {
        let rv = csrs
            .get(name)
            .await
            .map_err(|e| CertificateError::Api(format!("reading CSR {name}: {e}")))?;
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
                .map_err(|e| CertificateError::Api(format!("watching CSR {name}: {e}")))?,
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
                    return Err(CertificateError::Api(format!(
                        "CSR {name} was deleted before it was issued"
                    )));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}
