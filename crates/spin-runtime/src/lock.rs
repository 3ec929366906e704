//! Locking a Spin app's directory for a push, as `spin registry push` does: the app read from
//! its `spin.toml`, its components and files read from the directory (only what the manifest
//! names), and a locked app (lock version 0) whose components and files are content named by
//! digest, files of 128 bytes or less inlined.

use crate::app::{App, Content, Executor, Files, Route};
use crate::bundle::Bundle;
use base64::Engine;
use kubelet::images::bundle::{MAX_FILES, ROOTFS_PREFIX, SPIN_MANIFEST};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Files this size or smaller are inlined in the locked app (Spin's threshold).
const INLINE_MAX: usize = 128;
/// The most bytes an app's files may come to.
const MAX_APP_BYTES: u64 = 1 << 30;

/// A locked app and its content.
#[derive(Debug)]
pub struct Locked {
    /// The app, as the node will read it.
    pub app: App,
    /// The locked app's JSON.
    pub json: Vec<u8>,
    /// The components' wasm, once per digest.
    pub components: Vec<Vec<u8>>,
    /// The files larger than [`INLINE_MAX`] bytes, once per digest.
    pub files: Vec<Vec<u8>>,
}

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Reading the directory failed.
    #[error("reading {path}: {source}")]
    Read {
        /// What was being read.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The app is not one this node runs.
    #[error(transparent)]
    App(#[from] crate::AppError),
    /// Too much to push.
    #[error("the app's files are more than {0}")]
    TooLarge(String),
}

/// Locks the app whose `spin.toml` is in `dir`.
pub fn lock_dir(dir: &Path) -> Result<Locked, LockError> {
    let manifest_path = dir.join(SPIN_MANIFEST);
    let manifest = read(&manifest_path)?;
    let text = String::from_utf8(manifest.clone()).map_err(|_| {
        crate::AppError::Invalid(format!("{} is not UTF-8 text", manifest_path.display()))
    })?;
    let app = crate::manifest::parse(&text)?;
    // The files the manifest names, gathered as a filesystem image's bundle holds them, so that
    // the node's own reading of the app decides which file each component sees.
    let mut gathered: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    gathered.insert(SPIN_MANIFEST.to_owned(), manifest);
    for component in &app.components {
        if let Content::Path(path) = &component.source {
            gathered.insert(path.clone(), read(&dir.join(path))?);
        }
        for files in &component.files {
            match files {
                Files::Pattern(pattern) => {
                    let full = dir.join(pattern);
                    let matches = glob::glob(&full.to_string_lossy()).map_err(|e| {
                        crate::AppError::Invalid(format!("files pattern {pattern:?}: {e}"))
                    })?;
                    for found in matches.flatten() {
                        gather(dir, &found, &mut gathered)?;
                    }
                }
                Files::Directory { source, .. } => gather(dir, &dir.join(source), &mut gathered)?,
                Files::File { .. } => {}
            }
        }
    }
    let bundle = Bundle::open(filesystem_bundle(&gathered))?;
    let mut components = BTreeMap::new();
    let mut files = BTreeMap::new();
    let mut locked_components = Vec::new();
    for component in &bundle.app.components {
        let source = bundle.source(component)?;
        let digest = kubelet::images::digest_of(source);
        components.insert(digest.clone(), source.to_vec());
        let mut locked_files = Vec::new();
        for file in bundle.files(component)? {
            if file.content.len() <= INLINE_MAX {
                locked_files.push(json!({
                    "inline": base64::engine::general_purpose::STANDARD.encode(file.content),
                    "path": file.path,
                }));
            } else {
                let digest = kubelet::images::digest_of(file.content);
                files.insert(digest.clone(), file.content.to_vec());
                locked_files.push(json!({"digest": digest, "path": file.path}));
            }
        }
        locked_components.push(json!({
            "id": component.id,
            "metadata": {
                "allowed_outbound_hosts": component.allowed_outbound_hosts,
                "key_value_stores": component.key_value_stores,
                "databases": component.sqlite_databases,
                "ai_models": component.ai_models,
            },
            "source": {"content_type": "application/wasm", "digest": digest},
            "env": component.environment,
            "files": locked_files,
            "config": component.variables,
        }));
    }
    let triggers: Vec<Value> = bundle
        .app
        .http_triggers
        .iter()
        .map(|trigger| {
            let route = match &trigger.route {
                Route::Path(path) => json!(path),
                Route::Private => json!({"private": true}),
            };
            let mut config = json!({"component": trigger.component, "route": route});
            if let Executor::Wagi { argv } = &trigger.executor {
                config["executor"] = json!({"type": "wagi", "argv": argv});
            }
            json!({"id": trigger.id, "trigger_type": "http", "trigger_config": config})
        })
        .collect();
    let variables: BTreeMap<&String, Value> = bundle
        .app
        .variables
        .iter()
        .map(|(name, v)| {
            let mut variable = json!({});
            if let Some(default) = &v.default {
                variable["default"] = json!(default);
            }
            if v.secret {
                variable["secret"] = json!(true);
            }
            (name, variable)
        })
        .collect();
    let locked = json!({
        "spin_lock_version": 0,
        "metadata": {
            "name": bundle.app.name,
            "version": bundle.app.version,
            "triggers": {"http": {}},
        },
        "variables": variables,
        "triggers": triggers,
        "components": locked_components,
    });
    let json = serde_json::to_vec_pretty(&locked).expect("a JSON value encodes");
    // What was written must read back as the same app.
    let app = crate::locked::parse(&json)?;
    Ok(Locked {
        app,
        json,
        components: components.into_values().collect(),
        files: files.into_values().collect(),
    })
}

/// Adds `path` (a file, or every file beneath a directory) to `gathered` under its path
/// relative to `dir`; links are not followed.
fn gather(
    dir: &Path,
    path: &Path,
    gathered: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), LockError> {
    let metadata = std::fs::symlink_metadata(path).map_err(|source| LockError::Read {
        path: path.to_owned(),
        source,
    })?;
    if metadata.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|source| LockError::Read {
            path: path.to_owned(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| LockError::Read {
                path: path.to_owned(),
                source,
            })?;
            gather(dir, &entry.path(), gathered)?;
        }
    } else if metadata.is_file() {
        let Ok(relative) = path.strip_prefix(dir) else {
            return Ok(());
        };
        if gathered.len() >= MAX_FILES {
            return Err(LockError::TooLarge(format!("{MAX_FILES} files")));
        }
        let total: u64 = gathered.values().map(|v| v.len() as u64).sum();
        if total.saturating_add(metadata.len()) > MAX_APP_BYTES {
            return Err(LockError::TooLarge(format!("{MAX_APP_BYTES} bytes")));
        }
        gathered.insert(relative.to_string_lossy().into_owned(), read(path)?);
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, LockError> {
    std::fs::read(path).map_err(|source| LockError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The bundle a filesystem image of `files` (paths beneath its root) makes.
fn filesystem_bundle(files: &BTreeMap<String, Vec<u8>>) -> Arc<[u8]> {
    let mut archive = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive
            .append_data(
                &mut header,
                format!("{ROOTFS_PREFIX}{path}"),
                content.as_slice(),
            )
            .expect("writing to memory cannot fail");
    }
    archive
        .into_inner()
        .expect("writing to memory cannot fail")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_locks_into_content_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(
            root.join("spin.toml"),
            r#"
spin_manifest_version = 2
[application]
name = "site"
version = "1.2.3"
[variables]
who = { default = "world" }
[[trigger.http]]
route = "/..."
component = "web"
[component.web]
source = "web.wasm"
files = [{ source = "static", destination = "/" }]
[component.web.variables]
greeting = "hello {{ who }}"
"#,
        )
        .unwrap();
        std::fs::write(root.join("web.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::create_dir_all(root.join("static/css")).unwrap();
        std::fs::write(root.join("static/index.html"), b"<p>hi</p>").unwrap();
        std::fs::write(root.join("static/css/big.css"), vec![b'x'; 500]).unwrap();
        std::fs::create_dir_all(root.join("target/junk")).unwrap();
        std::fs::write(root.join("target/junk/never-read"), b"x").unwrap();
        let locked = lock_dir(root).unwrap();
        assert_eq!(locked.components, [b"\0asm\x01\0\0\0".to_vec()]);
        assert_eq!(locked.files, [vec![b'x'; 500]]);
        let web = locked.app.component("web").unwrap();
        assert_eq!(
            web.files,
            [
                Files::File {
                    content: Content::Digest(kubelet::images::digest_of(&[b'x'; 500])),
                    path: "css/big.css".into()
                },
                Files::File {
                    content: Content::Inline(b"<p>hi</p>".to_vec()),
                    path: "index.html".into()
                },
            ]
        );
        assert_eq!(web.variables["greeting"], "hello {{ who }}");
        assert_eq!(locked.app.version, "1.2.3");
    }
}
