//! A Spin app as its image's bundle brings it (`kubelet::images::bundle`): the app read from
//! its locked app or `spin.toml`, and each component's wasm and files found in the bundle's
//! bytes without copying them.

use crate::app::{App, AppError, Component, Content, Files};
use kubelet::images::bundle::{CONTENT_PREFIX, LOCKED_APP, ROOTFS_PREFIX, SPIN_MANIFEST};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

/// The most bytes a locked app or `spin.toml` may have.
const MAX_APP_FILE: usize = 4 << 20;

/// A Spin app and the bundle it came in.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The app.
    pub app: App,
    bytes: Arc<[u8]>,
    /// Each entry's bytes within `bytes`.
    entries: BTreeMap<String, Range<usize>>,
}

/// One file a component sees: its path beneath `/` and its bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct ComponentFile<'a> {
    /// The path relative to the component's `/`.
    pub path: String,
    /// The file's content.
    pub content: &'a [u8],
}

impl Bundle {
    /// Reads the app in `bytes` (a bundle: see [`kubelet::images::bundle`]).
    pub fn open(bytes: Arc<[u8]>) -> Result<Self, AppError> {
        let entries = index(&bytes)
            .map_err(|e| AppError::Invalid(format!("the app's bundle cannot be read: {e}")))?;
        let app_file = |name: &str| -> Result<Option<&str>, AppError> {
            let Some(range) = entries.get(name) else {
                return Ok(None);
            };
            if range.len() > MAX_APP_FILE {
                return Err(AppError::Invalid(format!(
                    "the app's {name} is {} bytes, more than the {MAX_APP_FILE} this node reads",
                    range.len()
                )));
            }
            std::str::from_utf8(&bytes[range.clone()])
                .map(Some)
                .map_err(|_| AppError::Invalid(format!("the app's {name} is not UTF-8 text")))
        };
        let app = if let Some(locked) = app_file(LOCKED_APP)? {
            crate::locked::parse(locked.as_bytes())?
        } else if let Some(manifest) = app_file(&format!("{ROOTFS_PREFIX}{SPIN_MANIFEST}"))? {
            crate::manifest::parse(manifest)?
        } else {
            return Err(AppError::Invalid(
                "the image holds neither a locked app nor a spin.toml".to_owned(),
            ));
        };
        let bundle = Self {
            app,
            bytes,
            entries,
        };
        for component in &bundle.app.components {
            bundle.source(component)?;
            bundle.files(component)?;
        }
        Ok(bundle)
    }

    /// The wasm of `component`.
    pub fn source<'a>(&'a self, component: &'a Component) -> Result<&'a [u8], AppError> {
        self.content(&component.source).ok_or_else(|| {
            AppError::Invalid(format!(
                "the source of component {:?} ({}) is not in the image",
                component.id,
                describe(&component.source)
            ))
        })
    }

    /// The files `component` sees, each once (the last mount of a path wins), sorted by path.
    pub fn files<'a>(
        &'a self,
        component: &'a Component,
    ) -> Result<Vec<ComponentFile<'a>>, AppError> {
        let excluded = patterns(&component.exclude_files, &component.id)?;
        let is_excluded = |source: &str| excluded.iter().any(|p| matches(p, source));
        let mut files = BTreeMap::new();
        for mount in &component.files {
            match mount {
                Files::File { content, path } => {
                    let bytes = self.content(content).ok_or_else(|| {
                        AppError::Invalid(format!(
                            "file {path:?} of component {:?} ({}) is not in the image",
                            component.id,
                            describe(content)
                        ))
                    })?;
                    files.insert(relative(path, &component.id)?, bytes);
                }
                Files::Pattern(pattern) => {
                    let glob = patterns(std::slice::from_ref(pattern), &component.id)?;
                    for (source, bytes) in self.rootfs() {
                        if matches(&glob[0], source) && !is_excluded(source) {
                            files.insert(source.to_owned(), bytes);
                        }
                    }
                }
                Files::Directory {
                    source,
                    destination,
                } => {
                    let prefix = if source.is_empty() {
                        String::new()
                    } else {
                        format!("{source}/")
                    };
                    for (path, bytes) in self.rootfs() {
                        if let Some(rest) = path.strip_prefix(&prefix)
                            && !is_excluded(path)
                        {
                            let target = format!("{}/{rest}", destination.trim_end_matches('/'));
                            files.insert(relative(&target, &component.id)?, bytes);
                        }
                    }
                }
            }
        }
        Ok(files
            .into_iter()
            .map(|(path, content)| ComponentFile { path, content })
            .collect())
    }

    /// The bytes `content` names, if the bundle has them.
    fn content<'a>(&'a self, content: &'a Content) -> Option<&'a [u8]> {
        let name = match content {
            Content::Inline(bytes) => return Some(bytes),
            Content::Path(path) => format!("{ROOTFS_PREFIX}{path}"),
            Content::Digest(digest) => {
                format!("{CONTENT_PREFIX}{}", digest.strip_prefix("sha256:")?)
            }
        };
        self.entries
            .get(&name)
            .map(|range| &self.bytes[range.clone()])
    }

    /// The files of a filesystem image, by their paths beneath its root.
    fn rootfs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().filter_map(|(name, range)| {
            Some((
                name.strip_prefix(ROOTFS_PREFIX)?,
                &self.bytes[range.clone()],
            ))
        })
    }
}

/// Each entry's name and where its bytes are.
fn index(bytes: &[u8]) -> std::io::Result<BTreeMap<String, Range<usize>>> {
    let mut archive = tar::Archive::new(bytes);
    let mut entries = BTreeMap::new();
    for entry in archive.entries()? {
        let entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path()?.to_string_lossy().into_owned();
        let start = usize::try_from(entry.raw_file_position()).map_err(std::io::Error::other)?;
        let len = usize::try_from(entry.size()).map_err(std::io::Error::other)?;
        let end = start
            .checked_add(len)
            .filter(|end| *end <= bytes.len())
            .ok_or_else(|| std::io::Error::other(format!("{name} runs past the bundle's end")))?;
        entries.insert(name, start..end);
    }
    Ok(entries)
}

/// Globs as Spin matches them against paths beneath the app's root (`*` stays within a
/// directory, `**` crosses them).
fn patterns(globs: &[String], component: &str) -> Result<Vec<glob::Pattern>, AppError> {
    globs
        .iter()
        .map(|g| {
            glob::Pattern::new(g).map_err(|e| {
                AppError::Invalid(format!(
                    "files pattern {g:?} of component {component:?}: {e}"
                ))
            })
        })
        .collect()
}

fn matches(pattern: &glob::Pattern, path: &str) -> bool {
    pattern.matches_with(
        path,
        glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        },
    )
}

/// A guest path as a path relative to `/`; one that climbs out with `..` is refused (the
/// files are written beneath a directory of the node's).
fn relative(path: &str, component: &str) -> Result<String, AppError> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    if parts
        .iter()
        .any(|part| *part == ".." || part.contains('\\') || part.contains('\0'))
    {
        return Err(AppError::Invalid(format!(
            "file path {path:?} of component {component:?} holds `..`, a backslash or a NUL"
        )));
    }
    if parts.is_empty() {
        return Err(AppError::Invalid(format!(
            "file path {path:?} of component {component:?} names no file"
        )));
    }
    Ok(parts.join("/"))
}

fn describe(content: &Content) -> String {
    match content {
        Content::Path(path) => format!("file {path}"),
        Content::Digest(digest) => format!("layer {digest}"),
        Content::Inline(_) => "inline".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(entries: &[(&str, &[u8])]) -> Arc<[u8]> {
        let mut archive = tar::Builder::new(Vec::new());
        for (name, content) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            archive.append_data(&mut header, name, *content).unwrap();
        }
        archive.into_inner().unwrap().into()
    }

    const MANIFEST: &[u8] = br#"
spin_manifest_version = 2
[application]
name = "files"
[[trigger.http]]
route = "/..."
component = "web"
[component.web]
source = "web.wasm"
files = ["top.txt", "docs/*.md", { source = "assets", destination = "/static" }]
exclude_files = ["assets/**/*.bak"]
"#;

    #[test]
    fn a_filesystem_app_sees_the_files_its_manifest_grants() {
        let bytes = bundle(&[
            ("rootfs/spin.toml", MANIFEST),
            ("rootfs/web.wasm", b"\0asm"),
            ("rootfs/top.txt", b"top"),
            ("rootfs/docs/a.md", b"a"),
            ("rootfs/docs/deep/b.md", b"b"),
            ("rootfs/assets/css/site.css", b"css"),
            ("rootfs/assets/css/old.bak", b"bak"),
            ("rootfs/secret.key", b"no"),
        ]);
        let bundle = Bundle::open(bytes).unwrap();
        let web = bundle.app.component("web").unwrap();
        assert_eq!(bundle.source(web).unwrap(), b"\0asm");
        let files: Vec<(String, &[u8])> = bundle
            .files(web)
            .unwrap()
            .into_iter()
            .map(|f| (f.path, f.content))
            .collect();
        assert_eq!(
            files,
            [
                ("docs/a.md".to_owned(), &b"a"[..]),
                ("static/css/site.css".to_owned(), &b"css"[..]),
                ("top.txt".to_owned(), &b"top"[..]),
            ]
        );
    }

    #[test]
    fn a_pushed_app_finds_its_content_by_digest() {
        let digest = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let locked = format!(
            r#"{{"spin_lock_version": 1, "metadata": {{"name": "pushed"}},
               "triggers": [{{"id": "t", "trigger_type": "http", "trigger_config": {{"component": "c", "route": "/"}}}}],
               "components": [{{"id": "c", "source": {{"content_type": "application/wasm", "digest": "sha256:{digest}"}},
                               "files": [{{"digest": "sha256:{digest}", "path": "copy.wasm"}}, {{"inline": "aGk=", "path": "/hi.txt"}}]}}]}}"#
        );
        let bytes = bundle(&[
            ("spin.lock", locked.as_bytes()),
            (&format!("sha256/{digest}"), b"\0asm"),
        ]);
        let bundle = Bundle::open(bytes).unwrap();
        let c = bundle.app.component("c").unwrap();
        assert_eq!(bundle.source(c).unwrap(), b"\0asm");
        let files = bundle.files(c).unwrap();
        assert_eq!(
            files[0],
            ComponentFile {
                path: "copy.wasm".into(),
                content: b"\0asm"
            }
        );
        assert_eq!(
            files[1],
            ComponentFile {
                path: "hi.txt".into(),
                content: b"hi"
            }
        );
    }

    #[test]
    fn file_paths_stay_beneath_the_component_root() {
        let locked = r#"{"spin_lock_version": 1,
               "triggers": [{"id": "t", "trigger_type": "http", "trigger_config": {"component": "c", "route": "/"}}],
               "components": [{"id": "c", "source": {"content_type": "application/wasm", "inline": "AGFzbQ=="},
                               "files": [{"inline": "aGk=", "path": "../../etc/cron.d/x"}]}]}"#;
        let error = Bundle::open(bundle(&[("spin.lock", locked.as_bytes())])).unwrap_err();
        assert!(error.to_string().contains("holds `..`"), "{error}");
    }

    #[test]
    fn a_missing_component_or_app_is_named() {
        let missing = Bundle::open(bundle(&[("rootfs/spin.toml", MANIFEST)])).unwrap_err();
        assert!(missing.to_string().contains("file web.wasm"), "{missing}");
        let empty = Bundle::open(bundle(&[("rootfs/other", b"")])).unwrap_err();
        assert!(
            empty
                .to_string()
                .contains("neither a locked app nor a spin.toml"),
            "{empty}"
        );
    }
}
