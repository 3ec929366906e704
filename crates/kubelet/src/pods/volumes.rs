//! Pod volumes as directories a WASI guest can be given: emptyDir, hostPath, and the
//! API-backed ones (configMap, secret, downwardAPI, projected with service account tokens),
//! written with the kubelet's atomic layout: the files live in a timestamped `..<time>`
//! directory, `..data` points at it, and each top-level name is a link through `..data`, so an
//! update switches every file at once.

use super::container::{NodeContext, field_value};
use super::host::PodHost;
use super::resources;
use k8s_openapi::api::core::v1::{
    ConfigMapProjection, DownwardAPIVolumeFile, HostPathVolumeSource, KeyToPath, Pod,
    SecretProjection, Volume,
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

/// The volume types this node serves, for the message about any other.
pub const SERVED: &str = "emptyDir, hostPath, configMap, secret, downwardAPI and projected";

/// What a volume is to this node. Adding a volume type touches this module only: a variant
/// here and its case in [`Kind::of`], its name in [`SERVED`], and its setup in
/// [`PodVolumes::prepare`] (a directory) or its files in `PodVolumes::files` (content from
/// the API server, kept current).
enum Kind<'a> {
    /// A directory of the pod's own (`emptyDir`).
    EmptyDir,
    /// A directory of the node (`hostPath`).
    HostPath(&'a HostPathVolumeSource),
    /// Files written from API objects, read-only and kept current (`configMap`, `secret`,
    /// `downwardAPI`, `projected`).
    Api,
}

impl<'a> Kind<'a> {
    /// The volume's kind, or `None` for a type this node does not serve.
    fn of(volume: &'a Volume) -> Option<Self> {
        if volume.empty_dir.is_some() {
            Some(Self::EmptyDir)
        } else if let Some(host_path) = &volume.host_path {
            Some(Self::HostPath(host_path))
        } else if volume.config_map.is_some()
            || volume.secret.is_some()
            || volume.downward_api.is_some()
            || volume.projected.is_some()
        {
            Some(Self::Api)
        } else {
            None
        }
    }
}

/// Whether the kubelet always mounts this volume read-only.
pub fn always_read_only(volume: &Volume) -> bool {
    matches!(Kind::of(volume), Some(Kind::Api))
}

/// The pod's volumes on this node: their directories, and what keeps the API-backed ones
/// current (what was last written, service account tokens until they are due).
#[derive(Debug, Default)]
pub struct PodVolumes {
    dirs: HashMap<String, PathBuf>,
    /// hostPath directories, held open for as long as the pod has them.
    host_dirs: Vec<super::host_path::HostDir>,
    written: HashMap<String, Written>,
    tokens: HashMap<String, Token>,
}

/// What an API-backed volume was last written from.
#[derive(Debug)]
struct Written {
    /// A digest of its files.
    digest: u64,
    /// The versions of the objects it was rendered from, when it is made of ConfigMaps and
    /// Secrets alone (see [`object_versions`]).
    versions: Option<Vec<Option<String>>>,
}

/// A service account token written into a projected volume, and when to request a new one.
#[derive(Debug, Clone)]
struct Token {
    value: String,
    renew_at: std::time::Instant,
}

impl PodVolumes {
    /// Sets up every volume of the pod this node supports under `dir`.
    pub async fn prepare<H: PodHost>(
        host: &H,
        pod: &Pod,
        dir: &Path,
        node: NodeContext<'_>,
        allowed_host_paths: &[PathBuf],
    ) -> Result<Self, MountError> {
        let mut volumes = Self::default();
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
            match Kind::of(&volume) {
                Some(Kind::EmptyDir) => std::fs::create_dir_all(&path)
                    .map_err(|e| err(format!("creating {}: {e}", path.display())))?,
                Some(Kind::HostPath(host_path)) => {
                    let opened = super::host_path::open(
                        &host_path.path,
                        host_path.type_.as_deref().unwrap_or_default(),
                        allowed_host_paths,
                    )
                    .map_err(err)?;
                    volumes
                        .dirs
                        .insert(volume.name.clone(), opened.path().to_path_buf());
                    volumes.host_dirs.push(opened);
                    continue;
                }
                // Written by `refresh` below.
                Some(Kind::Api) => {}
                // Mounting it fails the container with a message naming what is served.
                None => continue,
            }
            volumes.dirs.insert(volume.name.clone(), path);
        }
        volumes.refresh(host, pod, node).await?;
        Ok(volumes)
    }

    /// The directory of each volume, by name.
    pub fn dirs(&self) -> &HashMap<String, PathBuf> {
        &self.dirs
    }

    /// Writes the API-backed volumes (configMap, secret, downwardAPI, projected) again from the
    /// current objects, as the kubelet's periodic sync does: a volume whose content changed is
    /// switched atomically; tokens are requested again at 80 % of their lifetime.
    pub async fn refresh<H: PodHost>(
        &mut self,
        host: &H,
        pod: &Pod,
        node: NodeContext<'_>,
    ) -> Result<(), MountError> {
        for volume in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default()
            .iter()
            .filter(|v| matches!(Kind::of(v), Some(Kind::Api)))
        {
            let err = |message: String| MountError {
                volume: volume.name.clone(),
                message,
            };
            let Some(path) = self.dirs.get(&volume.name).cloned() else {
                continue;
            };
            // Rendering a large object at every sync costs CPU for nothing (up to 1 MiB per
            // object, for each pod that mounts it): the same versions make the same files.
            let versions = object_versions(host, pod, volume).await;
            let last = self.written.get(&volume.name);
            if versions.is_some() && last.is_some_and(|w| w.versions == versions) {
                continue;
            }
            let last_digest = last.map(|w| w.digest);
            let files = self.files(host, pod, volume, node).await.map_err(err)?;
            let digest = digest(&files);
            if last_digest != Some(digest) {
                write_atomically(&path, &files).map_err(err)?;
            }
            self.written
                .insert(volume.name.clone(), Written { digest, versions });
        }
        Ok(())
    }

    /// The eviction message when an emptyDir holds more than its `sizeLimit`, as the kubelet's
    /// eviction manager words it.
    pub fn over_size_limit(&self, pod: &Pod) -> Option<String> {
        pod.spec
            .as_ref()?
            .volumes
            .iter()
            .flatten()
            .find_map(|volume| {
                let limit = volume.empty_dir.as_ref()?.size_limit.as_ref()?;
                let bytes = resources::bytes(limit)?;
                let used = disk_usage(self.dirs.get(&volume.name)?);
                (used > bytes).then(|| {
                    format!(
                        "Usage of EmptyDir volume \"{}\" exceeds the limit \"{}\". ",
                        volume.name, limit.0
                    )
                })
            })
    }

    async fn files<H: PodHost>(
        &mut self,
        host: &H,
        pod: &Pod,
        volume: &Volume,
        node: NodeContext<'_>,
    ) -> Result<Vec<File>, String> {
        if let Some(cm) = &volume.config_map {
            let projection = ConfigMapProjection {
                name: cm.name.clone(),
                items: cm.items.clone(),
                optional: cm.optional,
            };
            return config_map_files(host, pod, &projection, cm.default_mode).await;
        }
        if let Some(secret) = &volume.secret {
            let projection = SecretProjection {
                name: secret.secret_name.clone().unwrap_or_default(),
                items: secret.items.clone(),
                optional: secret.optional,
            };
            return secret_files(host, pod, &projection, secret.default_mode).await;
        }
        if let Some(downward) = &volume.downward_api {
            return downward_files(
                pod,
                downward.items.as_deref().unwrap_or_default(),
                downward.default_mode,
                node,
            );
        }
        let mut files = Vec::new();
        let Some(projected) = &volume.projected else {
            return Ok(files);
        };
        let mode = projected.default_mode;
        for source in projected.sources.iter().flatten() {
            if let Some(token) = &source.service_account_token {
                let key = format!("{}/{}", volume.name, token.path);
                let value = match self.tokens.get(&key) {
                    Some(current) if current.renew_at > std::time::Instant::now() => {
                        current.value.clone()
                    }
                    _ => {
                        let expiration = token.expiration_seconds.unwrap_or(TOKEN_EXPIRATION);
                        let value = host
                            .service_account_token(pod, token.audience.clone(), expiration)
                            .await?;
                        let lifetime = crate::time::seconds(expiration);
                        self.tokens.insert(
                            key,
                            Token {
                                value: value.clone(),
                                renew_at: crate::time::std_deadline_in(lifetime.mul_f64(0.8)),
                            },
                        );
                        value
                    }
                };
                files.push((token.path.clone(), value.into_bytes(), mode_of(None, mode)));
            }
            if let Some(cm) = &source.config_map {
                files.extend(config_map_files(host, pod, cm, mode).await?);
            }
            if let Some(secret) = &source.secret {
                files.extend(secret_files(host, pod, secret, mode).await?);
            }
            if let Some(downward) = &source.downward_api {
                files.extend(downward_files(
                    pod,
                    downward.items.as_deref().unwrap_or_default(),
                    mode,
                    node,
                )?);
            }
        }
        Ok(files)
    }
}

/// The resource versions of the ConfigMaps and Secrets a volume is made of, in order (`None`
/// for one that does not exist); `None` when the volume holds anything else (downward API
/// files, tokens), when an object cannot be read, or has no version: it is rendered then.
async fn object_versions<H: PodHost>(
    host: &H,
    pod: &Pod,
    volume: &Volume,
) -> Option<Vec<Option<String>>> {
    enum Source<'a> {
        ConfigMap(&'a str),
        Secret(&'a str),
    }
    let mut sources = Vec::new();
    if let Some(cm) = &volume.config_map {
        sources.push(Source::ConfigMap(&cm.name));
    } else if let Some(secret) = &volume.secret {
        sources.push(Source::Secret(secret.secret_name.as_deref()?));
    } else {
        for source in volume.projected.as_ref()?.sources.iter().flatten() {
            match (&source.config_map, &source.secret) {
                (Some(cm), None) => sources.push(Source::ConfigMap(&cm.name)),
                (None, Some(secret)) => sources.push(Source::Secret(&secret.name)),
                _ => return None,
            }
        }
    }
    let ns = pod.namespace().unwrap_or_default();
    let mut versions = Vec::with_capacity(sources.len());
    for source in sources {
        let version = match source {
            Source::ConfigMap(name) => host
                .config_map(&ns, name)
                .await
                .ok()?
                .map(|o| o.metadata.resource_version.clone()),
            Source::Secret(name) => host
                .secret(&ns, name)
                .await
                .ok()?
                .map(|o| o.metadata.resource_version.clone()),
        };
        versions.push(match version {
            Some(version) => Some(version?),
            None => None,
        });
    }
    Some(versions)
}

/// A digest of a volume's files, to tell whether it changed.
fn digest(files: &[File]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut hasher);
    hasher.finish()
}

/// Bytes of the regular files under `dir` (not following symbolic links).
fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let metadata = std::fs::symlink_metadata(entry.path()).ok()?;
            Some(if metadata.is_dir() {
                disk_usage(&entry.path())
            } else if metadata.is_file() {
                metadata.len()
            } else {
                0
            })
        })
        .sum()
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
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone())),
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
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
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
            path => field_value(pod, path, &node).ok_or_else(|| {
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
    for name in &top_level {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link).map_err(|e| io("linking a file", e))?;
        }
    }
    // Names the update dropped: their links would dangle.
    for entry in std::fs::read_dir(dir)
        .map_err(|e| io("listing the volume", e))?
        .flatten()
    {
        let name = entry.file_name();
        let through_data =
            std::fs::read_link(entry.path()).is_ok_and(|target| target.starts_with("..data"));
        if through_data && !top_level.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
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
        assert!(
            std::fs::symlink_metadata(volume.join("sub")).is_err(),
            "a name the update dropped is gone"
        );
        let payloads = std::fs::read_dir(&volume)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..2"))
            .count();
        assert_eq!(payloads, 1, "old payloads are removed");
    }
}
