//! A Spin app container's key-value stores: `default` in the container's state directory,
//! unless the runtime configuration (the file spin-operator mounts at `/runtime-config.toml`)
//! says otherwise, and the stores it defines, their files placed beneath the container's
//! volumes as containerd-shim-spin places them in the container's filesystem.

use kubelet::runtime::{Mount, StartError};
use spin_runtime::key_value::{KeyValueStores, Location};
use spin_runtime::runtime_config::{self, RuntimeConfig, StoreLocation};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// The key-value stores of a container with `mounts`, `default` kept in `state_dir` unless
/// configured, each holding at most `limit` bytes.
pub fn key_value_stores(
    mounts: &[Mount],
    state_dir: &Path,
    limit: u64,
) -> Result<KeyValueStores, StartError> {
    let config = match mounts.iter().find(|m| m.guest_path == runtime_config::PATH) {
        Some(mount) => read_config(&mount.host_path)?,
        None => RuntimeConfig::default(),
    };
    let configured = config
        .key_value_stores
        .into_iter()
        .map(|(name, location)| {
            let location = match location {
                StoreLocation::Memory => Location::Memory,
                StoreLocation::File(path) => {
                    Location::File(beneath_a_volume(mounts, &name, &path)?)
                }
            };
            Ok((name, location))
        })
        .collect::<Result<_, StartError>>()?;
    Ok(KeyValueStores::new(
        state_dir.to_path_buf(),
        limit,
        configured,
    ))
}

/// The runtime configuration in the file at `path` (at most [`runtime_config::MAX_BYTES`]).
fn read_config(path: &Path) -> Result<RuntimeConfig, StartError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| {
            file.take(runtime_config::MAX_BYTES + 1)
                .read_to_string(&mut text)
        })
        .map_err(|e| StartError::node(format!("reading {}", runtime_config::PATH), e))?;
    if text.len() as u64 > runtime_config::MAX_BYTES {
        return Err(StartError::Invalid(format!(
            "the runtime configuration ({}) is larger than {} bytes",
            runtime_config::PATH,
            runtime_config::MAX_BYTES
        )));
    }
    RuntimeConfig::parse(&text).map_err(|e| StartError::Invalid(e.to_string()))
}

/// Where the file `path` of the container's filesystem is on the node: beneath the writable
/// volume mounted deepest above it. A path beneath no volume (the container has no filesystem
/// of its own here), beneath a read-only one, or with `..` is refused; the directories are made
/// now and must stay beneath the volume (a guest may have put a symbolic link there).
fn beneath_a_volume(mounts: &[Mount], store: &str, path: &str) -> Result<PathBuf, StartError> {
    let refused = |why: &str| {
        StartError::Invalid(format!(
            "key-value store {store:?} is to be kept at {path} ({}), which {why}",
            runtime_config::PATH
        ))
    };
    let path = Path::new(path);
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(refused("is not a plain absolute path"));
    }
    let (mount, rest) = mounts
        .iter()
        .filter(|m| m.host_path.is_dir())
        .filter_map(|m| Some((m, path.strip_prefix(&m.guest_path).ok()?)))
        .max_by_key(|(m, _)| m.guest_path.len())
        .ok_or_else(|| {
            refused("is beneath no volume of the container: mount one there (an emptyDir, a PersistentVolumeClaim)")
        })?;
    if mount.read_only {
        return Err(refused("is beneath a read-only volume"));
    }
    if rest.as_os_str().is_empty() {
        return Err(refused("is a volume, not a file in one"));
    }
    let file = mount.host_path.join(rest);
    let dir = file.parent().unwrap_or(&mount.host_path);
    std::fs::create_dir_all(dir)
        .map_err(|e| StartError::node(format!("making {}", dir.display()), e))?;
    let root = mount.host_path.canonicalize();
    let resolved = dir.canonicalize();
    match (root, resolved) {
        (Ok(root), Ok(resolved)) if resolved.starts_with(&root) => {}
        _ => return Err(refused("leads out of its volume")),
    }
    if file
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return Err(refused("is a symbolic link"));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(host: &Path, guest: &str, read_only: bool) -> Mount {
        Mount {
            host_path: host.to_path_buf(),
            guest_path: guest.to_owned(),
            read_only,
        }
    }

    #[test]
    fn configured_stores_are_placed_beneath_the_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let (data, config) = (
            dir.path().join("data"),
            dir.path().join("runtime-config.toml"),
        );
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(
            &config,
            "[key_value_store.default]\ntype = \"spin\"\npath = \"/data/db/kv.db\"\n\
             [key_value_store.cache]\ntype = \"spin\"\n",
        )
        .unwrap();
        let mounts = [
            mount(&data, "/data", false),
            mount(&config, "/runtime-config.toml", true),
        ];
        let stores = key_value_stores(&mounts, &dir.path().join("state"), 1 << 10).unwrap();
        stores
            .database("default")
            .unwrap()
            .set("default", "k", b"v")
            .unwrap();
        assert!(data.join("db/kv.db").is_file());
        assert!(stores.database("cache").is_ok());
    }

    #[test]
    fn a_path_outside_the_volumes_or_out_of_them_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink("/etc", data.join("escape")).unwrap();
        let read_only = dir.path().join("ro");
        std::fs::create_dir_all(&read_only).unwrap();
        let mounts = [mount(&data, "/data", false), mount(&read_only, "/ro", true)];
        for (path, why) in [
            ("/elsewhere/kv.db", "beneath no volume"),
            ("/data/../kv.db", "plain absolute path"),
            ("/ro/kv.db", "read-only"),
            ("/data/escape/kv.db", "out of its volume"),
        ] {
            let error = beneath_a_volume(&mounts, "default", path).unwrap_err();
            assert!(error.to_string().contains(why), "{path}: {error}");
        }
    }
}
