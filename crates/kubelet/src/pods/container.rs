//! What a container's spec means to a WASI guest: argv, environment (with `$(VAR)` expansion
//! as Kubernetes defines it) and the directories it sees.

use super::resources;
use crate::runtime::Mount;
use k8s_openapi::api::core::v1::{Container, Pod};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

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

/// The ConfigMaps and Secrets a container's environment refers to, read beforehand: by name,
/// their data, or `None` when they do not exist.
#[derive(Debug, Clone, Default)]
pub struct EnvSources {
    /// ConfigMaps by name.
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    /// Secrets by name (values decoded).
    pub secrets: HashMap<String, Option<BTreeMap<String, String>>>,
    /// The variables of the Services the container may use (see [`super::service_env`]),
    /// by name.
    pub services: Vec<(String, String)>,
}

/// The names of the ConfigMaps and Secrets `container`'s environment refers to.
pub fn env_references(container: &Container) -> (Vec<String>, Vec<String>) {
    let (mut config_maps, mut secrets) = (Vec::new(), Vec::new());
    for from in container.env_from.iter().flatten() {
        config_maps.extend(from.config_map_ref.as_ref().map(|r| r.name.clone()));
        secrets.extend(from.secret_ref.as_ref().map(|r| r.name.clone()));
    }
    for var in container.env.iter().flatten() {
        let from = var.value_from.as_ref();
        config_maps.extend(
            from.and_then(|f| f.config_map_key_ref.as_ref())
                .map(|r| r.name.clone()),
        );
        secrets.extend(
            from.and_then(|f| f.secret_key_ref.as_ref())
                .map(|r| r.name.clone()),
        );
    }
    config_maps.dedup();
    secrets.dedup();
    (config_maps, secrets)
}

fn lookup(
    sources: &HashMap<String, Option<BTreeMap<String, String>>>,
    kind: &str,
    ns: &str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, ConfigError> {
    match sources.get(name).cloned().flatten() {
        None if optional => Ok(None),
        None => Err(ConfigError(format!(
            "{} \"{name}\" not found",
            kind.to_lowercase()
        ))),
        Some(data) => match data.get(key) {
            Some(value) => Ok(Some(value.clone())),
            None if optional => Ok(None),
            None => Err(ConfigError(format!(
                "couldn't find key {key} in {kind} {ns}/{name}"
            ))),
        },
    }
}

/// What env resolution needs to know of the node.
#[derive(Debug, Clone, Copy)]
pub struct NodeContext<'a> {
    /// The node's IP.
    pub ip: &'a str,
    /// The pod's IPs, the primary first; none while it has none of its own (then the node's
    /// IP is its IP).
    pub pod_ips: &'a [String],
    /// Allocatable CPU and memory, the value of limits a container does not set.
    pub allocatable: resources::Requests,
}

/// Resolves argv and env for `container` of `pod`: `envFrom` first, then `env` (which wins), as
/// Kubernetes orders them.
pub fn process(
    pod: &Pod,
    container: &Container,
    node: &NodeContext<'_>,
    sources: &EnvSources,
) -> Result<Process, ConfigError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    // The Services' variables come first, so that `$(VAR)` may refer to them and a declared
    // variable of the same name replaces one; they end up after the declared ones.
    let mut env: Vec<(String, String)> = sources.services.clone();
    let mut declared: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(k, _)| *k != name);
        declared.insert(name.clone());
        env.push((name, value));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, kind, name, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => (
                sources.config_maps.get(&r.name).cloned().flatten(),
                "ConfigMap",
                r.name.clone(),
                r.optional.unwrap_or(false),
            ),
            (None, Some(r)) => (
                sources.secrets.get(&r.name).cloned().flatten(),
                "Secret",
                r.name.clone(),
                r.optional.unwrap_or(false),
            ),
            (None, None) => continue,
        };
        match data {
            Some(data) => data
                .into_iter()
                .for_each(|(k, v)| set(&mut env, format!("{prefix}{k}"), v)),
            None if optional => {}
            None => {
                return Err(ConfigError(format!(
                    "{} \"{name}\" not found",
                    kind.to_lowercase()
                )));
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                let resolved = if let Some(r) = &from.config_map_key_ref {
                    lookup(
                        &sources.config_maps,
                        "ConfigMap",
                        &ns,
                        &r.name,
                        &r.key,
                        r.optional.unwrap_or(false),
                    )?
                } else if let Some(r) = &from.secret_key_ref {
                    lookup(
                        &sources.secrets,
                        "Secret",
                        &ns,
                        &r.name,
                        &r.key,
                        r.optional.unwrap_or(false),
                    )?
                } else if let Some(field) = &from.field_ref {
                    Some(field_value(pod, &field.field_path, node).ok_or_else(|| {
                        ConfigError(format!(
                            "environment variable {}: unsupported fieldRef fieldPath {:?}",
                            var.name, field.field_path
                        ))
                    })?)
                } else if let Some(selector) = &from.resource_field_ref {
                    let target = match selector.container_name.as_deref() {
                        None | Some("") => Some(container),
                        Some(name) => pod
                            .spec
                            .iter()
                            .flat_map(|s| &s.containers)
                            .find(|c| c.name == name),
                    };
                    let value = target
                        .ok_or_else(|| format!("no container named {:?}", selector.container_name))
                        .and_then(|c| resources::field_value(c, selector, node.allocatable));
                    Some(value.map_err(|e| {
                        ConfigError(format!(
                            "environment variable {}: resourceFieldRef: {e}",
                            var.name
                        ))
                    })?)
                } else {
                    return Err(ConfigError(format!(
                        "environment variable {}: valueFrom names no source",
                        var.name
                    )));
                };
                match resolved {
                    Some(value) => value,
                    None => continue,
                }
            }
            (Some(value), None) => expand(value, &env),
            (None, None) => String::new(),
        };
        set(&mut env, var.name.clone(), value);
    }
    let services_left = env.len() - declared.len();
    env.rotate_left(services_left);
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
    // WASI has no working directory of its own: the guest learns it from PWD (and relative
    // paths resolve there when it lies in a mount, see `mounts`).
    if let Some(dir) = container.working_dir.as_ref().filter(|d| !d.is_empty())
        && !env.iter().any(|(k, _)| k == "PWD")
    {
        env.push(("PWD".into(), dir.clone()));
    }
    refuse_nul_bytes(&args, &env)?;
    Ok(Process { args, env })
}

/// A NUL byte cannot be passed to a program (WASI strings end at one, as C strings do), so an
/// argument or variable holding one is refused rather than cut short without a word.
fn refuse_nul_bytes(args: &[String], env: &[(String, String)]) -> Result<(), ConfigError> {
    if let Some(index) = args.iter().position(|a| a.contains('\0')) {
        return Err(ConfigError(format!(
            "argument {index} of the command line contains a NUL byte, which cannot be passed to a program"
        )));
    }
    if let Some((name, _)) = env
        .iter()
        .find(|(name, value)| name.contains('\0') || value.contains('\0'))
    {
        return Err(ConfigError(format!(
            "environment variable {:?} contains a NUL byte, which cannot be passed to a program",
            name.replace('\0', "\\0")
        )));
    }
    Ok(())
}

/// The value of a downward API field path for `pod` on `node`.
pub fn field_value(pod: &Pod, path: &str, node: &NodeContext<'_>) -> Option<String> {
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
        "status.hostIP" | "status.hostIPs" => node.ip.to_string(),
        "status.podIP" => node
            .pod_ips
            .first()
            .map_or(node.ip, String::as_str)
            .to_string(),
        "status.podIPs" if node.pod_ips.is_empty() => node.ip.to_string(),
        // As the kubelet joins them.
        "status.podIPs" => node.pod_ips.join(","),
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

/// The container's mounts: each volumeMount at its mountPath (a `subPath`, or a `subPathExpr`
/// expanded with the container's env, selects a directory of the volume), and, when
/// `workingDir` lies in a mount, that directory again as `.`, where a WASI guest resolves
/// relative paths.
pub fn mounts(
    pod: &Pod,
    container: &Container,
    prepared: &HashMap<String, PathBuf>,
    process: &Process,
) -> Result<Vec<Mount>, ConfigError> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let err =
            |message: String| ConfigError(format!("volume mount {:?}: {message}", mount.name));
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| err("names no volume of the pod".into()))?;
        let base = prepared.get(&volume.name).cloned().ok_or_else(|| {
            err(format!(
                "volume {:?} cannot be mounted: this node serves {} volumes",
                volume.name,
                super::volumes::SERVED
            ))
        })?;
        let read_only =
            mount.read_only.unwrap_or(false) || super::volumes::always_read_only(volume);
        let sub_path = match (&mount.sub_path, &mount.sub_path_expr) {
            (Some(path), _) if !path.is_empty() => Some(path.clone()),
            (_, Some(expr)) if !expr.is_empty() => Some(expand(expr, &process.env)),
            _ => None,
        };
        let host_path = match sub_path {
            Some(sub_path) => resolve_sub_path(&base, &sub_path, !read_only)
                .map_err(|m| err(format!("subPath {sub_path:?}: {m}")))?,
            None => base,
        };
        out.push(Mount {
            host_path,
            guest_path: mount.mount_path.clone(),
            read_only,
        });
    }
    if let Some(dir) = container.working_dir.as_deref().filter(|d| !d.is_empty())
        && let Some(cwd) = working_directory(&out, dir)?
    {
        out.push(cwd);
    }
    Ok(out)
}

/// The directory or file `sub_path` of the volume at `base`: relative, without `..`, and
/// (through any symbolic link) inside the volume; a directory is created when missing and the
/// volume is writable. A file is mounted as it is (spin-operator mounts Spin's runtime
/// configuration so, for the host to read); a runtime that can give its guest only directories
/// refuses it at start.
fn resolve_sub_path(base: &Path, sub_path: &str, create: bool) -> Result<PathBuf, String> {
    let relative = Path::new(sub_path);
    if !relative.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        return Err("must be a relative path without '..'".into());
    }
    let root = base
        .canonicalize()
        .map_err(|e| format!("resolving the volume: {e}"))?;
    let path = base.join(relative);
    // The deepest part that exists must resolve inside the volume (a symbolic link in the
    // volume cannot lead the mount out of it); the rest is created inside.
    let mut existing = path.as_path();
    while !existing.exists() {
        existing = existing.parent().unwrap_or(base);
    }
    let resolved = existing
        .canonicalize()
        .map_err(|e| format!("resolving it: {e}"))?;
    if !resolved.starts_with(&root) {
        return Err("resolves outside the volume (through a symbolic link); it is refused".into());
    }
    if existing == path {
        return Ok(resolved);
    }
    if !create {
        return Err("does not exist in the read-only volume".into());
    }
    let rest = path.strip_prefix(existing).unwrap_or(relative);
    let created = resolved.join(rest);
    std::fs::create_dir_all(&created).map_err(|e| format!("creating it: {e}"))?;
    Ok(created)
}

/// The mount of `.` for `working_dir`: the directory it names in the mount that holds it
/// (created when missing in a writable mount); `None` when no mount holds it.
fn working_directory(mounts: &[Mount], working_dir: &str) -> Result<Option<Mount>, ConfigError> {
    let err = |message: &str| ConfigError(format!("workingDir {working_dir:?} {message}"));
    let dir = Path::new(working_dir);
    if !dir.is_absolute()
        || dir
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(err("must be an absolute path without '..'"));
    }
    let holder = mounts
        .iter()
        .filter(|m| dir.starts_with(&m.guest_path))
        .max_by_key(|m| Path::new(&m.guest_path).components().count());
    let Some(holder) = holder else {
        return Ok(None);
    };
    let relative = dir
        .strip_prefix(&holder.guest_path)
        .unwrap_or(Path::new(""));
    let host_path = if relative.as_os_str().is_empty() {
        holder.host_path.clone()
    } else {
        let dir = resolve_sub_path(
            &holder.host_path,
            &relative.to_string_lossy(),
            !holder.read_only,
        )
        .map_err(|m| err(&m))?;
        if !dir.is_dir() {
            return Err(err("is a file, not a directory"));
        }
        dir
    };
    Ok(Some(Mount {
        host_path,
        guest_path: ".".into(),
        read_only: holder.read_only,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ip: &str) -> NodeContext<'_> {
        NodeContext {
            ip,
            pod_ips: &[],
            allocatable: resources::Requests::default(),
        }
    }

    #[test]
    fn sub_paths_stay_inside_their_volume() {
        let volume = tempfile::tempdir().unwrap();
        let made = resolve_sub_path(volume.path(), "a/b", true).unwrap();
        assert!(made.is_dir() && made.ends_with("a/b"));
        assert!(resolve_sub_path(volume.path(), "../x", true).is_err());
        assert!(resolve_sub_path(volume.path(), "/etc", true).is_err());
        std::os::unix::fs::symlink("/etc", volume.path().join("out")).unwrap();
        let escape = resolve_sub_path(volume.path(), "out/new", true).unwrap_err();
        assert!(escape.contains("outside the volume"), "{escape}");
        std::fs::write(volume.path().join("file"), "x").unwrap();
        let file = resolve_sub_path(volume.path(), "file", true).unwrap();
        assert!(file.is_file() && file.ends_with("file"));
        assert!(resolve_sub_path(volume.path(), "missing", false).is_err());
    }

    #[test]
    fn the_working_directory_is_preopened_as_dot_from_its_mount() {
        let volume = tempfile::tempdir().unwrap();
        let mounts = [Mount {
            host_path: volume.path().to_path_buf(),
            guest_path: "/data".into(),
            read_only: false,
        }];
        let cwd = working_directory(&mounts, "/data/work").unwrap().unwrap();
        assert_eq!(cwd.guest_path, ".");
        assert!(cwd.host_path.ends_with("work") && cwd.host_path.is_dir());
        assert!(working_directory(&mounts, "/elsewhere").unwrap().is_none());
        assert!(working_directory(&mounts, "relative").is_err());
    }

    #[test]
    fn nul_bytes_are_refused_not_cut() {
        let pod: Pod = serde_yaml::from_str(
            "metadata: {name: p, namespace: ns}\nspec: {containers: [{name: c, image: i}]}",
        )
        .unwrap();
        let mut container = pod.spec.as_ref().unwrap().containers[0].clone();
        container.args = Some(vec!["ok".into(), "cut\0here".into()]);
        let sources = EnvSources::default();
        let error = process(&pod, &container, &node("10.0.0.1"), &sources).unwrap_err();
        assert!(
            error.0.contains("argument 2") && error.0.contains("NUL"),
            "{}",
            error.0
        );
        container.args = None;
        let mut secrets = HashMap::new();
        secrets.insert(
            "s".to_string(),
            Some(BTreeMap::from([("k".to_string(), "a\0b".to_string())])),
        );
        container.env_from = Some(vec![k8s_openapi::api::core::v1::EnvFromSource {
            secret_ref: Some(k8s_openapi::api::core::v1::SecretEnvSource {
                name: "s".into(),
                optional: None,
            }),
            ..Default::default()
        }]);
        let sources = EnvSources {
            secrets,
            ..Default::default()
        };
        let error = process(&pod, &container, &node("10.0.0.1"), &sources).unwrap_err();
        assert!(
            error.0.contains("\"k\"") && error.0.contains("NUL"),
            "{}",
            error.0
        );
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$A", &env), "x-$(B)-$(A)-$A");
    }

    #[test]
    fn config_maps_and_secrets_feed_the_environment() {
        let pod: Pod = serde_yaml::from_str("metadata: {name: p, namespace: ns}\nspec: {containers: [{name: c, image: i, envFrom: [{prefix: CFG_, configMapRef: {name: cm}}], env: [{name: CFG_A, value: overridden}, {name: PASS, valueFrom: {secretKeyRef: {name: s, key: pw}}}, {name: OPT, valueFrom: {configMapKeyRef: {name: nope, key: k, optional: true}}}]}]}").unwrap();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let mut sources = EnvSources::default();
        sources.config_maps.insert(
            "cm".into(),
            Some(BTreeMap::from([
                ("A".into(), "1".into()),
                ("B".into(), "2".into()),
            ])),
        );
        sources.config_maps.insert("nope".into(), None);
        sources.secrets.insert(
            "s".into(),
            Some(BTreeMap::from([("pw".into(), "s3cret".into())])),
        );
        let p = process(&pod, container, &node("10.0.0.1"), &sources).unwrap();
        assert_eq!(
            p.env,
            [
                ("CFG_B".into(), "2".into()),
                ("CFG_A".into(), "overridden".into()),
                ("PASS".into(), "s3cret".into())
            ]
        );
        sources.secrets.insert("s".into(), Some(BTreeMap::new()));
        assert_eq!(
            process(&pod, container, &node(""), &sources).unwrap_err().0,
            "couldn't find key pw in Secret ns/s"
        );
        sources.secrets.insert("s".into(), None);
        assert_eq!(
            process(&pod, container, &node(""), &sources).unwrap_err().0,
            "secret \"s\" not found"
        );
    }

    #[test]
    fn argv_and_env_from_the_spec() {
        let pod: Pod = serde_yaml::from_str("metadata: {name: p, namespace: ns}\nspec: {containers: [{name: c, image: i, args: [\"$(GREETING) there\"], env: [{name: GREETING, value: hi}, {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]}]}").unwrap();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let p = process(&pod, container, &node("10.0.0.1"), &EnvSources::default()).unwrap();
        assert_eq!(p.args, ["c", "hi there"]);
        assert_eq!(
            p.env,
            [("GREETING".into(), "hi".into()), ("POD".into(), "p".into())]
        );
    }

    #[test]
    fn service_variables_follow_the_declared_ones_which_may_use_or_replace_them() {
        let pod: Pod = serde_yaml::from_str("metadata: {name: p, namespace: ns}\nspec: {containers: [{name: c, image: i, args: [\"$(DB_SERVICE_PORT)\"], env: [{name: URL, value: \"http://$(DB_SERVICE_HOST)\"}, {name: DB_SERVICE_PORT, value: \"1\"}]}]}").unwrap();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let sources = EnvSources {
            services: vec![
                ("DB_SERVICE_HOST".into(), "10.96.0.9".into()),
                ("DB_SERVICE_PORT".into(), "5432".into()),
            ],
            ..Default::default()
        };
        let p = process(&pod, container, &node("10.0.0.1"), &sources).unwrap();
        assert_eq!(
            p.env,
            [
                ("URL".into(), "http://10.96.0.9".into()),
                ("DB_SERVICE_PORT".into(), "1".into()),
                ("DB_SERVICE_HOST".into(), "10.96.0.9".into()),
            ]
        );
        assert_eq!(p.args, ["c", "1"]);
    }
}
