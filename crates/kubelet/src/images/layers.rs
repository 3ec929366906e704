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

/// A layer blob unpacked into a tar stream reader (gzip when its media type says so).
fn archive<'a>(media_type: &str, blob: &'a [u8]) -> Result<Box<dyn Read + 'a>, String> {
    match media_type {
        IMAGE_LAYER_GZIP_MEDIA_TYPE | IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE => {
            Ok(Box::new(flate2::read::GzDecoder::new(blob)))
        }
        IMAGE_LAYER_MEDIA_TYPE | IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE => Ok(Box::new(blob)),
        other => Err(format!(
            "a filesystem layer of type {other} cannot be read (tar and tar+gzip layers can)"
        )),
    }
}

/// `path` without its root or `.` parts, as tar entries name files.
fn normalized(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// What a layer says about `target`: its content, that it was deleted (a whiteout), or nothing.
enum Found {
    File(Vec<u8>),
    Deleted,
    Absent,
}

fn search_layer(media_type: &str, blob: &[u8], target: &Path) -> Result<Found, String> {
    let mut entries = tar::Archive::new(archive(media_type, blob)?);
    let mut found = Found::Absent;
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
        let dir = path.parent().unwrap_or(Path::new(""));
        // A whiteout of the file or of a directory above it, or an opaque directory above it,
        // hides what lower layers have there.
        let hides = match name {
            ".wh..wh..opq" => target.starts_with(dir) && target != dir,
            _ => name
                .strip_prefix(".wh.")
                .is_some_and(|hidden| target.starts_with(dir.join(hidden))),
        };
        if hides {
            found = Found::Deleted;
        } else if path == target {
            if !entry.header().entry_type().is_file() {
                return Err(format!(
                    "{} in the image is not a regular file",
                    target.display()
                ));
            }
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("reading {}: {e}", target.display()))?;
            found = Found::File(bytes);
        }
    }
    Ok(found)
}

/// The file at `path` in the image whose layers (bottom first) are `layers`: the topmost layer
/// that has or deletes it decides.
pub fn find_file(layers: &[(String, Vec<u8>)], path: &str) -> Result<Option<Vec<u8>>, String> {
    let target = normalized(Path::new(path));
    for (media_type, blob) in layers.iter().rev() {
        match search_layer(media_type, blob, &target)? {
            Found::File(bytes) => return Ok(Some(bytes)),
            Found::Deleted => return Ok(None),
            Found::Absent => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
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

    #[test]
    fn the_top_layer_decides() {
        let base = layer(&[("app/m.wasm", b"old"), ("other", b"x")]);
        let update = layer(&[("./app/m.wasm", b"new")]);
        assert_eq!(
            find_file(&[base.clone(), update], "/app/m.wasm").unwrap(),
            Some(b"new".to_vec())
        );
        let deleted = layer(&[("app/.wh.m.wasm", b"")]);
        assert_eq!(
            find_file(&[base.clone(), deleted], "/app/m.wasm").unwrap(),
            None
        );
        let opaque = layer(&[("app/.wh..wh..opq", b"")]);
        assert_eq!(
            find_file(&[base.clone(), opaque], "/app/m.wasm").unwrap(),
            None
        );
        assert_eq!(find_file(&[base], "/missing.wasm").unwrap(), None);
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
