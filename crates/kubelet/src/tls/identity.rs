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
    /// The start of its validity, or when it was received if that is later: signers backdate
    /// certificates (kube-controller-manager by 5 minutes, also for short signing durations),
    /// and a lifetime counted from a backdated start would make a fresh short-lived
    /// certificate due for renewal at once, over and over.
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
        let mut current = parse(&issued.cert_pem, &issued.key_pem)?;
        current.not_before = current
            .not_before
            .max(SystemTime::now())
            .min(current.not_after);
        if let Some(file) = &self.file {
            write_private(file, issued.combined_pem().as_bytes())?;
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(current);
        Ok(())
    }

    /// When the current certificate is valid: `(not before, not after)`, where a certificate
    /// installed by [`install`](Self::install) counts as valid from then at the earliest.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::rotation::renewal_time;

    /// A certificate backdated to 2000 and valid until two days from now.
    fn backdated() -> Issued {
        let tomorrow = jiff::Zoned::now().date().tomorrow().unwrap();
        let after = tomorrow.tomorrow().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["node".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(
            i32::from(after.year()),
            u8::try_from(after.month()).unwrap(),
            u8::try_from(after.day()).unwrap(),
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    #[test]
    fn a_backdated_certificate_is_not_due_for_renewal_when_it_arrives() {
        let certificate = NodeCertificate {
            file: None,
            current: RwLock::new(None),
        };
        let before = SystemTime::now() - Duration::from_secs(1);
        certificate.install(&backdated()).unwrap();
        let (not_before, not_after) = certificate.validity().unwrap();
        assert!(not_before >= before, "counted from when it arrived");
        assert!(
            renewal_time(not_before, not_after, 0.7)
                > SystemTime::now() + Duration::from_secs(3600)
        );
    }
}
