//! What a container's spec means to a WASI guest: argv, environment (with `$(VAR)` expansion
//! as Kubernetes defines it) and the directories it sees.

use crate::runtime::Mount;
use k8s_openapi::api::core::v1::{Container, Pod};
use std::collections::HashMap;
use std::path::PathBuf;

/// The container's spec asks for something this node cannot give it (CreateContainerConfigError).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// argv and environment of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// argv; argv[0] is `command[0]` when set, else the container name.
    pub args: Vec<String>,
    /// Environment, in declaration order.
    pub env: Vec<(String, String)>,
}

/// Resolves argv and env for `container` of `pod`.
pub fn process(pod: &Pod, container: &Container, node_ip: &str) -> Result<Process, ConfigError> {
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                let Some(field) = from.field_ref.as_ref() else {
                    return Err(ConfigError(format!(
                        "environment variable {}: only value and valueFrom.fieldRef are supported on this node",
                        var.name
                    )));
                };
                field_value(pod, &field.field_path, node_ip).ok_or_else(|| {
                    ConfigError(format!(
                        "environment variable {}: unsupported fieldRef fieldPath {:?}",
                        var.name, field.field_path
                    ))
                })?
            }
            (Some(value), None) => expand(value, &env),
            (None, None) => String::new(),
        };
        env.retain(|(k, _)| *k != var.name);
        env.push((var.name.clone(), value));
    }
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(ConfigError("envFrom is not supported on this node".into()));
    }
    let command: Vec<String> = container
        .command
        .iter()
        .flatten()
        .map(|c| expand(c, &env))
        .collect();
    let mut args = match command.split_first() {
        Some((program, rest)) => std::iter::once(program.clone())
            .chain(rest.iter().cloned())
            .collect(),
        None => vec![container.name.clone()],
    };
    args.extend(container.args.iter().flatten().map(|a| expand(a, &env)));
    Ok(Process { args, env })
}

/// The value of a downward API field path for `pod`.
pub fn field_value(pod: &Pod, path: &str, node_ip: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    if let Some(key) = path
        .strip_prefix("metadata.labels['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return Some(meta.labels.as_ref()?.get(key).cloned().unwrap_or_default());
    }
    if let Some(key) = path
        .strip_prefix("metadata.annotations['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return Some(
            meta.annotations
                .as_ref()?
                .get(key)
                .cloned()
                .unwrap_or_default(),
        );
    }
    Some(match path {
        "metadata.name" => meta.name.clone()?,
        "metadata.namespace" => meta.namespace.clone()?,
        "metadata.uid" => meta.uid.clone()?,
        "spec.nodeName" => spec?.node_name.clone()?,
        "spec.serviceAccountName" => spec?.service_account_name.clone().unwrap_or_default(),
        "status.hostIP" | "status.podIP" | "status.hostIPs" | "status.podIPs" => {
            node_ip.to_string()
        }
        _ => return None,
    })
}

/// Expands `$(VAR)` from earlier variables; `$$` escapes; unknown references stay as written.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The directories the container sees: its volume mounts, from the pod's prepared volumes.
pub fn mounts(
    pod: &Pod,
    container: &Container,
    prepared: &HashMap<String, PathBuf>,
) -> Result<Vec<Mount>, ConfigError> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| {
                ConfigError(format!(
                    "volume mount {:?} names no volume of the pod",
                    mount.name
                ))
            })?;
        if mount.sub_path.as_ref().is_some_and(|s| !s.is_empty())
            || mount.sub_path_expr.as_ref().is_some_and(|s| !s.is_empty())
        {
            return Err(ConfigError(format!(
                "volume mount {:?}: subPath is not supported on this node",
                mount.name
            )));
        }
        let host_path = prepared.get(&volume.name).cloned().ok_or_else(|| {
            ConfigError(format!(
                "volume {:?} cannot be mounted: this node serves emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes",
                volume.name
            ))
        })?;
        let read_only =
            mount.read_only.unwrap_or(false) || super::volumes::always_read_only(volume);
        out.push(Mount {
            host_path,
            guest_path: mount.mount_path.clone(),
            read_only,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$A", &env), "x-$(B)-$(A)-$A");
    }

    #[test]
    fn argv_and_env_from_the_spec() {
        let pod: Pod = serde_yaml::from_str("metadata: {name: p, namespace: ns}\nspec: {containers: [{name: c, image: i, args: [\"$(GREETING) there\"], env: [{name: GREETING, value: hi}, {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]}]}").unwrap();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let p = process(&pod, container, "10.0.0.1").unwrap();
        assert_eq!(p.args, ["c", "hi there"]);
        assert_eq!(
            p.env,
            [("GREETING".into(), "hi".into()), ("POD".into(), "p".into())]
        );
    }
}
