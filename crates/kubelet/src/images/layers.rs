//! Ordinary OCI images built for the platform wasi/wasm (as runwasi runs them, e.g. made with
//! `docker buildx --platform wasi/wasm`): the module is a file in the filesystem layers, named
//! by the config's entrypoint.

use oci_client::manifest::{
    IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE, IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE,
    IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE,
};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Whether a config is for the wasi/wasm platform.
pub fn is_wasi_platform(config: &serde_json::Value) -> bool {
    config["os"] == "wasi" || matches!(config["architecture"].as_str(), Some("wasm" | "wasm32"))
}

/// The module's path in the image: the config's `Entrypoint[0]`, else `Cmd[0]`.
pub fn entrypoint(config: &serde_json::Value) -> Option<String> {
    ["Entrypoint", "Cmd"].iter().find_map(|key| {
        config["config"][key]
            .as_array()?
            .first()?
            .as_str()
            .map(str::to_string)
    })
}

/// A layer unpacked into a tar stream reader (gzip when its media type says so), which fails
/// once more than `limit` bytes came out of it: a small layer may not inflate without bound.
fn archive<'a>(
    media_type: &str,
    blob: impl Read + 'a,
    limit: u64,
) -> Result<Box<dyn Read + 'a>, String> {
    let unpacked: Box<dyn Read + 'a> = match media_type {
        IMAGE_LAYER_GZIP_MEDIA_TYPE | IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE => {
            Box::new(flate2::read::GzDecoder::new(blob))
        }
        IMAGE_LAYER_MEDIA_TYPE | IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE => Box::new(blob),
        other => {
            return Err(format!(
                "a filesystem layer of type {other} cannot be read (tar and tar+gzip layers can)"
            ));
        }
    };
    Ok(Box::new(Capped::new(unpacked, limit)))
}

/// A reader that fails past a number of bytes.
pub(super) struct Capped<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R> Capped<R> {
    /// `inner`, failing once it has given more than `limit` bytes.
    pub(super) fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            left: limit,
            limit,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // One byte more than allowed tells an exact fit from an overflow.
        let room = usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX);
        let len = buf.len().min(room);
        let n = self.inner.read(&mut buf[..len])?;
        match self.left.checked_sub(n as u64) {
            Some(left) => {
                self.left = left;
                Ok(n)
            }
            None => Err(std::io::Error::other(format!(
                "it unpacks to more than {} bytes (--max-image-size)",
                self.limit
            ))),
        }
    }
}

/// `path` without its root or `.` parts, as tar entries name files.
fn normalized(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// One change a layer makes to the filesystem below it.
pub enum Change<'a> {
    /// A regular file at a path (normalized, relative), with its content.
    File(PathBuf, &'a mut dyn Read),
    /// Whatever lower layers have at or beneath a path is gone (a whiteout).
    Delete(PathBuf),
    /// An entry that is neither a regular file nor a directory (a link, a device...): it
    /// replaces what lower layers have there, and is not followed or kept.
    Other(PathBuf),
    /// What lower layers have beneath a directory is gone (an opaque directory).
    Opaque(PathBuf),
}

/// Calls `change` for each change `blob` (a layer of `media_type`, unpacking to at most
/// `limit` bytes) makes, in the layer's order; directories make none.
pub fn for_each_entry(
    media_type: &str,
    blob: impl Read,
    limit: u64,
    mut change: impl FnMut(Change<'_>) -> Result<(), String>,
) -> Result<(), String> {
    let mut entries = tar::Archive::new(archive(media_type, blob, limit)?);
    for entry in entries
        .entries()
        .map_err(|e| format!("reading a layer: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("reading a layer: {e}"))?;
        let path = normalized(&entry.path().map_err(|e| format!("reading a layer: {e}"))?);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let kind = entry.header().entry_type();
        if name == ".wh..wh..opq" {
            change(Change::Opaque(dir))?;
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            change(Change::Delete(dir.join(hidden)))?;
        } else if kind.is_file() {
            change(Change::File(path, &mut entry))?;
        } else if !kind.is_dir() {
            change(Change::Other(path))?;
        }
    }
    Ok(())
}

/// What a layer says about `target`: its content (unpacked into a file in the scratch
/// directory), that it was deleted (a whiteout), or nothing.
enum Found {
    File(tempfile::NamedTempFile),
    Deleted,
    Absent,
}

fn search_layer(
    media_type: &str,
    blob: impl Read,
    target: &Path,
    limit: u64,
    scratch: &Path,
) -> Result<Found, String> {
    let mut found = Found::Absent;
    for_each_entry(media_type, blob, limit, |change| {
        match change {
            // A whiteout of the file or of a directory above it, or an opaque directory above
            // it, hides what lower layers have there.
            Change::Opaque(dir) if target.starts_with(&dir) && target != dir => {
                found = Found::Deleted;
            }
            Change::Other(path) if path == target => {
                return Err(format!(
                    "{} in the image is not a regular file",
                    target.display()
                ));
            }
            Change::Delete(path) | Change::Other(path) if target.starts_with(&path) => {
                found = Found::Deleted;
            }
            Change::File(path, content) if path == target => {
                // To disk as it unpacks, never whole in memory: the cap counts every byte.
                let mut file = tempfile::NamedTempFile::new_in(scratch)
                    .map_err(|e| format!("making a file in {}: {e}", scratch.display()))?;
                std::io::copy(content, &mut file)
                    .map_err(|e| format!("reading {}: {e}", target.display()))?;
                found = Found::File(file);
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(found)
}

/// The file at `path` in the image whose layers (bottom first) are `layers` (a media type and
/// a reader of the blob), unpacked into a file in `scratch`: the topmost layer that has or
/// deletes it decides. No layer may unpack to more than `limit` bytes; what is unpacked goes
/// to disk as it comes, so a pull holds a constant amount of memory whatever its layers hold.
pub fn find_file<R: Read>(
    layers: impl DoubleEndedIterator<Item = (String, R)>,
    path: &str,
    limit: u64,
    scratch: &Path,
) -> Result<Option<tempfile::NamedTempFile>, String> {
    let target = normalized(Path::new(path));
    for (media_type, blob) in layers.rev() {
        match search_layer(&media_type, blob, &target, limit, scratch)? {
            Found::File(bytes) => return Ok(Some(bytes)),
            Found::Deleted => return Ok(None),
            Found::Absent => {}
        }
    }
    Ok(None)
}

/// A tar layer of `files` (path and content), with its media type, for tests.
#[cfg(test)]
pub(super) fn test_layer(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let mut archive = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, path, *content).unwrap();
    }
    (
        IMAGE_LAYER_MEDIA_TYPE.to_string(),
        archive.into_inner().unwrap(),
    )
}

#[cfg(test)]
mod tests {
    use super::test_layer as layer;
    use super::*;

    fn find(layers: &[(String, Vec<u8>)], path: &str) -> Result<Option<Vec<u8>>, String> {
        let readers = layers.iter().map(|(t, b)| (t.clone(), b.as_slice()));
        let scratch = tempfile::tempdir().unwrap();
        Ok(find_file(readers, path, 1 << 20, scratch.path())?
            .map(|file| std::fs::read(file.path()).unwrap()))
    }

    #[test]
    fn the_top_layer_decides() {
        let base = layer(&[("app/m.wasm", b"old"), ("other", b"x")]);
        let update = layer(&[("./app/m.wasm", b"new")]);
        assert_eq!(
            find(&[base.clone(), update], "/app/m.wasm").unwrap(),
            Some(b"new".to_vec())
        );
        let deleted = layer(&[("app/.wh.m.wasm", b"")]);
        assert_eq!(find(&[base.clone(), deleted], "/app/m.wasm").unwrap(), None);
        let opaque = layer(&[("app/.wh..wh..opq", b"")]);
        assert_eq!(find(&[base.clone(), opaque], "/app/m.wasm").unwrap(), None);
        assert_eq!(find(&[base], "/missing.wasm").unwrap(), None);
    }

    #[test]
    fn the_entrypoint_comes_from_the_config() {
        let config = serde_json::json!({"os": "wasi", "architecture": "wasm", "config": {"Cmd": ["/c.wasm"]}});
        assert!(is_wasi_platform(&config));
        assert_eq!(entrypoint(&config).as_deref(), Some("/c.wasm"));
        let linux = serde_json::json!({"os": "linux", "architecture": "amd64"});
        assert!(!is_wasi_platform(&linux));
    }
}

#[cfg(test)]
mod bomb_tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_layer_that_inflates_past_the_limit_is_refused() {
        let mut archive = tar::Builder::new(Vec::new());
        let content = vec![0u8; 4 << 20];
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive
            .append_data(&mut header, "app/m.wasm", content.as_slice())
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&archive.into_inner().unwrap()).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(
            bomb.len() < 64 << 10,
            "4 MiB of zeros compress to {}",
            bomb.len()
        );
        let layers = || [(IMAGE_LAYER_GZIP_MEDIA_TYPE.to_string(), bomb.as_slice())].into_iter();
        let scratch = tempfile::tempdir().unwrap();
        let error = find_file(layers(), "/app/m.wasm", 1 << 20, scratch.path()).unwrap_err();
        assert!(error.contains("more than 1048576 bytes"), "{error}");
        // What was unpacked before the refusal is gone with it.
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
        let found = find_file(layers(), "/app/m.wasm", 8 << 20, scratch.path()).unwrap();
        let found = found.expect("the file");
        assert_eq!(found.as_file().metadata().unwrap().len(), 4 << 20);
    }

    proptest::proptest! {
        #[test]
        fn the_capped_reader_never_gives_more_than_its_limit(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..5000),
            limit in 0u64..6000,
            chunk in 1usize..700,
        ) {
            let mut reader = Capped { inner: data.as_slice(), left: limit, limit };
            let mut out = Vec::new();
            let mut buf = vec![0; chunk];
            let outcome = loop {
                match reader.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) => break Err(e),
                }
            };
            proptest::prop_assert!(out.len() as u64 <= limit);
            proptest::prop_assert_eq!(outcome.is_err(), data.len() as u64 > limit);
            proptest::prop_assert_eq!(&out[..], &data[..out.len()]);
        }
    }
}
