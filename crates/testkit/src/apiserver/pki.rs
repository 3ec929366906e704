//! The stand-in's certificate authority: its serving certificate, client certificates for the
//! identities tests need, and signing of CertificateSigningRequests.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::time::Duration;
use time::OffsetDateTime;

/// Errors from certificate work.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the CSR is not valid: {0}")]
    InvalidCsr(String),
}

/// What a signed certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS client authentication.
    Client,
    /// TLS server authentication.
    Server,
}

/// The subject of a parsed CSR.
#[derive(Debug, Clone)]
pub struct CsrSubject {
    /// Common name (the user name for client certificates).
    pub common_name: String,
    /// Organizations (the groups for client certificates).
    pub organizations: Vec<String>,
    /// DNS names in the subject alternative names.
    pub dns_names: Vec<String>,
    /// IP addresses in the subject alternative names.
    pub ip_addresses: Vec<String>,
    /// Whether the SANs hold anything but DNS names and IP addresses.
    pub other_sans: bool,
}

/// A certificate authority held in memory.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl Ca {
    /// Creates a self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate and key (both PEM) for `common_name` in `organizations`.
    pub fn issue(
        &self,
        common_name: &str,
        organizations: &[&str],
        sans: &[String],
        usage: Usage,
        validity: Duration,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for org in organizations {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *org);
        }
        set_leaf(&mut params, usage, validity);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs a PEM CSR for `usage`, valid for `validity`; returns the certificate in PEM.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        usage: Usage,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
        set_leaf(&mut csr.params, usage, validity);
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
}

/// Parses a PEM CSR and returns its subject; fails on anything that is not a valid, self-signed CSR.
pub fn parse_csr(csr_pem: &str) -> Result<CsrSubject, PkiError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
    let dn = &csr.params.distinguished_name;
    let text = |v: &rcgen::DnValue| match v {
        rcgen::DnValue::PrintableString(s) => s.to_string(),
        rcgen::DnValue::Utf8String(s) => s.clone(),
        other => format!("{other:?}"),
    };
    let common_name = dn.get(&DnType::CommonName).map(text).unwrap_or_default();
    let organizations = dn
        .iter()
        .filter(|(t, _)| **t == DnType::OrganizationName)
        .map(|(_, v)| text(v))
        .collect();
    let mut subject = CsrSubject {
        common_name,
        organizations,
        dns_names: vec![],
        ip_addresses: vec![],
        other_sans: false,
    };
    for san in &csr.params.subject_alt_names {
        match san {
            SanType::DnsName(name) => subject.dns_names.push(name.to_string()),
            SanType::IpAddress(ip) => subject.ip_addresses.push(ip.to_string()),
            _ => subject.other_sans = true,
        }
    }
    Ok(subject)
}

fn san(name: &str) -> Result<SanType, PkiError> {
    Ok(match name.parse() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    })
}

fn set_leaf(params: &mut CertificateParams, usage: Usage, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.is_ca = IsCa::ExplicitNoCa;
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + validity;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![match usage {
        Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
    }];
}
