//! The node's current certificate and key, handed to rustls at every handshake (as a client of
//! the API server, or as the kubelet API's server), so that a renewed certificate is used from
//! the next connection on without a restart.

use super::CertificateError;
use super::csr::Issued;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// A certificate, its key, and when it is valid.
#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// The node's certificate for one purpose (client or serving), replaceable while in use.
#[derive(Debug)]
pub struct NodeCertificate {
    file: Option<PathBuf>,
    current: RwLock<Option<Current>>,
}

impl NodeCertificate {
    /// The certificate kept in `file` (certificate and key in one PEM, mode 0600), loaded when
    /// the file holds one that has not expired; none yet otherwise.
    pub fn stored(file: PathBuf) -> Self {
        let current = std::fs::read_to_string(&file)
            .ok()
            .and_then(|pem| parse(&pem, &pem).ok())
            .filter(|c| c.not_after > SystemTime::now());
        Self {
            file: Some(file),
            current: RwLock::new(current),
        }
    }

    /// A certificate that is never renewed (`--cert-file`, or a self-signed one).
    pub fn fixed(cert_pem: &str, key_pem: &str) -> Result<Self, CertificateError> {
        Ok(Self {
            file: None,
            current: RwLock::new(Some(parse(cert_pem, key_pem)?)),
        })
    }

    /// Makes `issued` the current certificate, writing it to the file first.
    pub fn install(&self, issued: &Issued) -> Result<(), CertificateError> {
        let current = parse(&issued.cert_pem, &issued.key_pem)?;
        if let Some(file) = &self.file {
            write_private(file, issued.combined_pem().as_bytes())?;
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(current);
        Ok(())
    }

    /// When the current certificate is valid: `(not before, not after)`.
    pub fn validity(&self) -> Option<(SystemTime, SystemTime)> {
        self.read(|c| (c.not_before, c.not_after))
    }

    /// Whether there is a certificate that has not expired.
    pub fn is_valid(&self) -> bool {
        self.validity()
            .is_some_and(|(_, not_after)| not_after > SystemTime::now())
    }

    fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.read(|c| c.key.clone())
    }

    fn read<T>(&self, f: impl FnOnce(&Current) -> T) -> Option<T> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(f)
    }
}

impl ResolvesClientCert for NodeCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.key()
    }

    fn has_certs(&self) -> bool {
        self.key().is_some()
    }
}

impl ResolvesServerCert for NodeCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key()
    }
}

fn parse(cert_pem: &str, key_pem: &str) -> Result<Current, CertificateError> {
    let invalid = |e: &dyn std::fmt::Display| {
        CertificateError::Key(format!("the certificate or key is unusable: {e}"))
    };
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&e))?;
    let first = certs
        .first()
        .ok_or_else(|| invalid(&"no certificate in the PEM"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(first).map_err(|e| invalid(&e))?;
    let time = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    let (not_before, not_after) = (
        time(parsed.validity().not_before),
        time(parsed.validity().not_after),
    );
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| invalid(&e))?
        .ok_or_else(|| invalid(&"no private key in the PEM"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| invalid(&e))?;
    Ok(Current {
        key: Arc::new(CertifiedKey::new(certs, signing)),
        not_before,
        not_after,
    })
}

/// Writes `bytes` to `path` with mode 0600, atomically (a temporary file renamed into place).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CertificateError> {
    let err = |source| CertificateError::Write {
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
