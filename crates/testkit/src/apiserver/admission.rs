//! The ServiceAccount admission plugin: every pod runs as a service account that must exist,
//! and unless it opts out, gets the `kube-api-access-*` projected volume (token, cluster CA,
//! namespace) mounted read-only in each container, as on every real cluster.

use super::response::{self, ApiError};
use super::store::State;
use http::StatusCode;
use serde_json::{Value, json};

/// Where the token volume is mounted.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The annotation of a mirror pod (a kubelet's copy of one of its static pods).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Whether `pod` is a mirror pod.
pub fn is_mirror(pod: &Value) -> bool {
    !pod["metadata"]["annotations"][MIRROR_ANNOTATION].is_null()
}

/// Checks the pod's service account (`default` unless it names one) and injects the token
/// volume. A mirror pod is left as the kubelet wrote it, and may not reference a service
/// account or secrets.
pub fn service_account(
    state: &State,
    ns: &str,
    pod_name: &str,
    pod: &mut Value,
) -> Result<(), ApiError> {
    if is_mirror(pod) {
        let forbidden = |what: &str| {
            response::status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("pods \"{pod_name}\" is forbidden: a mirror pod may not reference {what}"),
                Some(response::details(pod_name, "", "pods")),
            )
        };
        if pod["spec"]["serviceAccountName"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
        {
            return Err(forbidden("service accounts"));
        }
        if super::auth::pod_references(&pod["spec"], "secret") {
            return Err(forbidden("secrets"));
        }
        return Ok(());
    }
    let account = pod["spec"]["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    pod["spec"]["serviceAccountName"] = json!(account);
    pod["spec"]["serviceAccount"] = json!(account);
    let Some(sa) = state.get("serviceaccounts", ns, &account) else {
        return Err(response::status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "pods \"{pod_name}\" is forbidden: error looking up service account {ns}/{account}: serviceaccount \"{account}\" not found"
            ),
            Some(response::details(pod_name, "", "pods")),
        ));
    };
    let opted_out = match pod["spec"]["automountServiceAccountToken"].as_bool() {
        Some(automount) => !automount,
        None => sa["automountServiceAccountToken"] == false,
    };
    let already_mounted = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| pod["spec"][*l].as_array().into_iter().flatten())
        .flat_map(|c| c["volumeMounts"].as_array().into_iter().flatten())
        .any(|m| m["mountPath"] == MOUNT_PATH);
    if opted_out || already_mounted {
        return Ok(());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    let volume_name = format!("kube-api-access-{suffix}");
    let volume = json!({"name": volume_name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}});
    match pod["spec"]["volumes"].as_array_mut() {
        Some(volumes) => volumes.push(volume),
        None => pod["spec"]["volumes"] = json!([volume]),
    }
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": MOUNT_PATH});
    for list in ["containers", "initContainers"] {
        for container in pod["spec"][list].as_array_mut().into_iter().flatten() {
            match container["volumeMounts"].as_array_mut() {
                Some(mounts) => mounts.push(mount.clone()),
                None => container["volumeMounts"] = json!([mount.clone()]),
            }
        }
    }
    Ok(())
}
