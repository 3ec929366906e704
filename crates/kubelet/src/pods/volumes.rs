//! Pod volumes as directories a WASI guest can be given: emptyDir, hostPath, and the
//! API-backed ones (configMap, secret, downwardAPI, projected with service account tokens),
//! written with the kubelet's atomic layout: the files live in a timestamped `..<time>`
//! directory, `..data` points at it, and each top-level name is a link through `..data`, so an
//! update switches every file at once.

use super::container::{NodeContext, field_value};
use super::host::PodHost;
use super::resources;
use k8s_openapi::api::core::v1::{
    ConfigMapProjection, DownwardAPIVolumeFile, KeyToPath, Pod, SecretProjection, Volume,
};
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

/// A volume could not be set up; reported as a FailedMount event and retried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume \"{volume}\" : {message}")]
pub struct MountError {
    /// The volume.
    pub volume: String,
    /// Why.
    pub message: String,
}

/// Default expiry of projected service account tokens when the volume names none.
const TOKEN_EXPIRATION: i64 = 3600;

/// One file of a volume: path relative to the volume, content, mode.
type File = (String, Vec<u8>, u32);

/// Whether the kubelet always mounts this volume read-only.
pub fn always_read_only(volume: &Volume) -> bool {
    volume.config_map.is_some()
        || volume.secret.is_some()
        || volume.downward_api.is_some()
        || volume.projected.is_some()
}

/// Sets up every volume of the pod this node supports under `dir`; returns their directories.
pub async fn prepare<H: PodHost>(
    host: &H,
    pod: &Pod,
    dir: &Path,
    node: NodeContext<'_>,
) -> Result<HashMap<String, PathBuf>, MountError> {
    let mut out = HashMap::new();
    for volume in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
    {
        let err = |message: String| MountError {
            volume: volume.name.clone(),
            message,
        };
        let path = dir.join(&volume.name);
        let files = if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&path)
                .map_err(|e| err(format!("creating {}: {e}", path.display())))?;
            None
        } else if let Some(host_path) = &volume.host_path {
            out.insert(
                volume.name.clone(),
                check_host_path(
                    &host_path.path,
                    host_path.type_.as_deref().unwrap_or_default(),
                )
                .map_err(err)?,
            );
            continue;
        } else if let Some(cm) = &volume.config_map {
            let projection = ConfigMapProjection {
                name: cm.name.clone(),
                items: cm.items.clone(),
                optional: cm.optional,
            };
            Some(
                config_map_files(host, pod, &projection, cm.default_mode)
                    .await
                    .map_err(err)?,
            )
        } else if let Some(secret) = &volume.secret {
            let projection = SecretProjection {
                name: secret.secret_name.clone().unwrap_or_default(),
                items: secret.items.clone(),
                optional: secret.optional,
            };
            Some(
                secret_files(host, pod, &projection, secret.default_mode)
                    .await
                    .map_err(err)?,
            )
        } else if let Some(downward) = &volume.downward_api {
            Some(
                downward_files(
                    pod,
                    downward.items.as_deref().unwrap_or_default(),
                    downward.default_mode,
                    node,
                )
                .map_err(err)?,
            )
        } else if let Some(projected) = &volume.projected {
            let mode = projected.default_mode;
            let mut files = Vec::new();
            for source in projected.sources.iter().flatten() {
                if let Some(token) = &source.service_account_token {
                    let expiration = token.expiration_seconds.unwrap_or(TOKEN_EXPIRATION);
                    let issued = host
                        .service_account_token(pod, token.audience.clone(), expiration)
                        .await
                        .map_err(err)?;
                    files.push((token.path.clone(), issued.into_bytes(), mode_of(None, mode)));
                }
                if let Some(cm) = &source.config_map {
                    files.extend(config_map_files(host, pod, cm, mode).await.map_err(err)?);
                }
                if let Some(secret) = &source.secret {
                    files.extend(secret_files(host, pod, secret, mode).await.map_err(err)?);
                }
                if let Some(downward) = &source.downward_api {
                    files.extend(
                        downward_files(
                            pod,
                            downward.items.as_deref().unwrap_or_default(),
                            mode,
                            node,
                        )
                        .map_err(err)?,
                    );
                }
            }
            Some(files)
        } else {
            continue;
        };
        if let Some(files) = files {
            write_atomically(&path, &files).map_err(err)?;
        }
        out.insert(volume.name.clone(), path);
    }
    Ok(out)
}

fn mode_of(item: Option<i32>, default: Option<i32>) -> u32 {
    item.or(default)
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(0o644)
}

fn select(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    what: &str,
    optional: bool,
) -> Result<Vec<File>, String> {
    match items {
        None => Ok(data
            .into_iter()
            .map(|(k, v)| (k, v, mode_of(None, default_mode)))
            .collect()),
        Some(items) => {
            let mut files = Vec::new();
            for item in items {
                match data.get(&item.key) {
                    Some(value) => files.push((
                        item.path.clone(),
                        value.clone(),
                        mode_of(item.mode, default_mode),
                    )),
                    None if optional => {}
                    None => return Err(format!("{what} has no key \"{}\"", item.key)),
                }
            }
            Ok(files)
        }
    }
}

async fn config_map_files<H: PodHost>(
    host: &H,
    pod: &Pod,
    source: &ConfigMapProjection,
    default_mode: Option<i32>,
) -> Result<Vec<File>, String> {
    let ns = pod.namespace().unwrap_or_default();
    let optional = source.optional.unwrap_or(false);
    let Some(cm) = host.config_map(&ns, &source.name).await? else {
        return if optional {
            Ok(Vec::new())
        } else {
            Err(format!("configmap \"{}\" not found", source.name))
        };
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    select(
        data,
        source.items.as_deref(),
        default_mode,
        &format!("configmap \"{}\"", source.name),
        optional,
    )
}

async fn secret_files<H: PodHost>(
    host: &H,
    pod: &Pod,
    source: &SecretProjection,
    default_mode: Option<i32>,
) -> Result<Vec<File>, String> {
    let ns = pod.namespace().unwrap_or_default();
    let optional = source.optional.unwrap_or(false);
    let Some(secret) = host.secret(&ns, &source.name).await? else {
        return if optional {
            Ok(Vec::new())
        } else {
            Err(format!("secret \"{}\" not found", source.name))
        };
    };
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    select(
        data,
        source.items.as_deref(),
        default_mode,
        &format!("secret \"{}\"", source.name),
        optional,
    )
}

fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    node: NodeContext<'_>,
) -> Result<Vec<File>, String> {
    let mut files = Vec::new();
    for item in items {
        if let Some(selector) = &item.resource_field_ref {
            let name = selector.container_name.as_deref().unwrap_or_default();
            let value = pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .find(|c| c.name == name)
                .ok_or_else(|| format!("no container named {name:?}"))
                .and_then(|c| resources::field_value(c, selector, node.allocatable))
                .map_err(|e| format!("downwardAPI item {:?}: {e}", item.path))?;
            files.push((
                item.path.clone(),
                value.into_bytes(),
                mode_of(item.mode, default_mode),
            ));
            continue;
        }
        let Some(field) = &item.field_ref else {
            return Err(format!(
                "downwardAPI item {:?}: neither fieldRef nor resourceFieldRef",
                item.path
            ));
        };
        let value = match field.field_path.as_str() {
            "metadata.labels" => render_map(pod.metadata.labels.as_ref()),
            "metadata.annotations" => render_map(pod.metadata.annotations.as_ref()),
            path => field_value(pod, path, node.ip).ok_or_else(|| {
                format!(
                    "downwardAPI item {:?}: unsupported fieldPath {path:?}",
                    item.path
                )
            })?,
        };
        files.push((
            item.path.clone(),
            value.into_bytes(),
            mode_of(item.mode, default_mode),
        ));
    }
    Ok(files)
}

fn render_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}\n"))
        .collect()
}

fn check_host_path(path: &str, kind: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    match kind {
        "" => {}
        "DirectoryOrCreate" => {
            std::fs::create_dir_all(p).map_err(|e| format!("creating {path}: {e}"))?
        }
        "Directory" if p.is_dir() => {}
        "Directory" => {
            return Err(format!(
                "hostPath type check failed: {path} is not a directory"
            ));
        }
        other => {
            return Err(format!(
                "hostPath type {other} is not supported on this node (use Directory or DirectoryOrCreate)"
            ));
        }
    }
    if !p.is_dir() {
        return Err(format!(
            "{path} is not a directory; a WASI guest can only be given directories"
        ));
    }
    Ok(p.to_path_buf())
}

/// A relative path that stays inside the volume: no absolute paths, no `..`.
fn checked(path: &str) -> Result<&Path, String> {
    let p = Path::new(path);
    let inside = !path.is_empty()
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && !path.starts_with("..");
    if inside {
        Ok(p)
    } else {
        Err(format!(
            "item path {path:?} must be relative and may not contain '..'"
        ))
    }
}

/// Writes `files` into `dir` with the kubelet's atomic layout.
fn write_atomically(dir: &Path, files: &[File]) -> Result<(), String> {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    std::fs::create_dir_all(dir).map_err(|e| io("creating the volume", e))?;
    let stamp = format!(
        "..{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f")
    );
    let payload = dir.join(&stamp);
    std::fs::create_dir_all(&payload).map_err(|e| io("creating the payload", e))?;
    let mut top_level = Vec::new();
    for (path, content, mode) in files {
        let relative = checked(path)?;
        let target = payload.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(path, e))?;
        }
        std::fs::write(&target, content).map_err(|e| io(path, e))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode & 0o777))
            .map_err(|e| io(path, e))?;
        if let Some(Component::Normal(first)) = relative.components().next() {
            top_level.push(first.to_os_string());
        }
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp).map_err(|e| io("linking ..data", e))?;
    std::fs::rename(&tmp, dir.join("..data")).map_err(|e| io("switching ..data", e))?;
    for name in top_level {
        let link = dir.join(&name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(&name), &link).map_err(|e| io("linking a file", e))?;
        }
    }
    for entry in std::fs::read_dir(dir)
        .map_err(|e| io("listing the volume", e))?
        .flatten()
    {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("..")
            && name != "..data"
            && *name != stamp
            && entry.path().is_dir()
            && !entry.path().is_symlink()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_paths_stay_inside_the_volume() {
        assert!(checked("a/b.txt").is_ok());
        for bad in ["/etc/passwd", "../x", "a/../../x", "..data/x", ""] {
            assert!(checked(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_are_switched_atomically_through_data() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("v");
        write_atomically(
            &volume,
            &[
                ("a".into(), b"1".to_vec(), 0o644),
                ("sub/b".into(), b"2".to_vec(), 0o600),
            ],
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(volume.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(volume.join("sub/b")).unwrap(), "2");
        write_atomically(&volume, &[("a".into(), b"new".to_vec(), 0o644)]).unwrap();
        assert_eq!(std::fs::read_to_string(volume.join("a")).unwrap(), "new");
        let payloads = std::fs::read_dir(&volume)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..2"))
            .count();
        assert_eq!(payloads, 1, "old payloads are removed");
    }
}
