//! CertificateSigningRequests as the controller manager handles them: the requester recorded on
//! create, automatic approval of kubelet client certificates, and signing once approved.

use super::auth::Identity;
use super::objects::now;
use super::pki::{self, Ca, Usage};
use super::semantics::Invalid;
use base64::Engine;
use serde_json::{Value, json};
use std::time::Duration;

/// Signer of kubelet client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Signer of kubelet serving certificates.
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
const MIN_VALIDITY: Duration = Duration::from_secs(600);

/// Records the requester and checks that the request is a PEM CSR, as on create.
pub fn prepare_create(csr: &mut Value, who: &Identity) -> Result<(), Invalid> {
    request_pem(csr)
        .and_then(|pem| pki::parse_csr(&pem).map_err(|e| e.to_string()))
        .map_err(|e| {
            Invalid(vec![(
                "spec.request".into(),
                format!("Invalid value: []byte{{...}}: {e}"),
            )])
        })?;
    let groups: Vec<&str> = who.groups.iter().map(String::as_str).collect();
    csr["spec"]["username"] = json!(who.user);
    csr["spec"]["groups"] = json!(groups);
    Ok(())
}

fn request_pem(csr: &Value) -> Result<String, String> {
    let encoded = csr["spec"]["request"].as_str().unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| e.to_string())?;
    let pem = String::from_utf8(bytes).map_err(|e| e.to_string())?;
    if !pem.contains("BEGIN CERTIFICATE REQUEST") {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    Ok(pem)
}

fn condition(csr: &Value, kind: &str) -> bool {
    csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] != "False")
}

/// What the controllers do next for a CSR, if anything: the new status. Certificates are
/// valid for the requested `expirationSeconds` (at least 10 minutes) up to
/// `cluster_signing_duration`.
pub fn reconcile(ca: &Ca, csr: &Value, cluster_signing_duration: Duration) -> Option<Value> {
    if condition(csr, "Denied")
        || condition(csr, "Failed")
        || !csr["status"]["certificate"].is_null()
    {
        return None;
    }
    let spec = &csr["spec"];
    let signer = spec["signerName"].as_str().unwrap_or_default();
    if ![KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER].contains(&signer) {
        return None;
    }
    let pem = request_pem(csr).ok()?;
    let mut status = csr["status"].clone();
    let checked = check_kubelet_request(csr, &pem, signer);
    if let Err(why) = checked {
        push_condition(&mut status, "Failed", "SignerValidationFailure", &why);
        return Some(status);
    }
    if !condition(csr, "Approved") {
        if signer == KUBELET_CLIENT_SIGNER && auto_approvable(csr, &pem) {
            push_condition(
                &mut status,
                "Approved",
                "AutoApproved",
                "Auto approving kubelet client certificate after SubjectAccessReview.",
            );
            return Some(status);
        }
        return None;
    }
    let usage = if signer == KUBELET_CLIENT_SIGNER {
        Usage::Client
    } else {
        Usage::Server
    };
    let validity = spec["expirationSeconds"]
        .as_u64()
        .map(|seconds| Duration::from_secs(seconds).max(MIN_VALIDITY))
        .map_or(cluster_signing_duration, |requested| {
            requested.min(cluster_signing_duration)
        });
    match ca.sign_csr(&pem, usage, validity) {
        Ok(cert) => {
            status["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode(cert))
        }
        Err(e) => push_condition(&mut status, "Failed", "SigningFailed", &e.to_string()),
    }
    Some(status)
}

fn check_kubelet_request(csr: &Value, pem: &str, signer: &str) -> Result<(), String> {
    let subject = pki::parse_csr(pem).map_err(|e| e.to_string())?;
    if !subject.common_name.starts_with("system:node:") || subject.organizations != ["system:nodes"]
    {
        return Err("subject must be CN=system:node:<name>, O=system:nodes".into());
    }
    let usages: Vec<&str> = csr["spec"]["usages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let allowed: &[&str] = if signer == KUBELET_CLIENT_SIGNER {
        if !subject.dns_names.is_empty() || !subject.ip_addresses.is_empty() || subject.other_sans {
            return Err("client certificates must not have subject alternative names".into());
        }
        &["digital signature", "key encipherment", "client auth"]
    } else {
        if subject.other_sans || (subject.dns_names.is_empty() && subject.ip_addresses.is_empty()) {
            return Err(
                "serving certificates need DNS or IP subject alternative names and nothing else"
                    .into(),
            );
        }
        &["digital signature", "key encipherment", "server auth"]
    };
    if let Some(bad) = usages.iter().find(|u| !allowed.contains(u)) {
        return Err(format!("usage {bad:?} is not allowed for signer {signer}"));
    }
    Ok(())
}

fn auto_approvable(csr: &Value, pem: &str) -> bool {
    let Ok(subject) = pki::parse_csr(pem) else {
        return false;
    };
    let user = csr["spec"]["username"].as_str().unwrap_or_default();
    let groups: Vec<&str> = csr["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let bootstrap = groups.contains(&"system:bootstrappers");
    let self_renewal = user == subject.common_name && groups.contains(&"system:nodes");
    bootstrap || self_renewal
}

fn push_condition(status: &mut Value, kind: &str, reason: &str, message: &str) {
    let now = now();
    let entry = json!({"type": kind, "status": "True", "reason": reason, "message": message, "lastUpdateTime": now, "lastTransitionTime": now});
    match status["conditions"].as_array_mut() {
        Some(list) => list.push(entry),
        None => status["conditions"] = json!([entry]),
    }
}
