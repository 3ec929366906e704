//! App bundles: an image that holds an application of several files (a Spin app) travels to its
//! runtime as one blob, an uncompressed tar, so that it is stored, cached, garbage-collected and
//! handed to runtime workers exactly as a module is. Entries, in a fixed order so that one image
//! always makes the same bundle (and digest):
//!
//! - an app pushed with `spin registry push` (or `krustlet-wasi push`): [`LOCKED_APP`] (its
//!   locked app), then `sha256/<hex>` for each of its wasm and data layers and for each file of
//!   its archive layers, named by the digest of its content;
//! - a filesystem image with `spin.toml` at its root: `rootfs/<path>` for each regular file of
//!   its layers merged (upper layers win, whiteouts delete).

use super::layers;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

/// The media type of a Spin app's locked app: a layer, or (Spin 1) the manifest's config.
pub const LOCKED_APP_MEDIA_TYPE: &str = "application/vnd.fermyon.spin.application.v1+config";
/// A file of a Spin app (a component's static file), one per layer.
pub const DATA_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+data";
/// A tar+gzip archive of a component's static files.
pub const ARCHIVE_MEDIA_TYPE: &str = "application/vnd.wasm.content.bundle.v1.tar+gzip";

/// The locked app's entry.
pub const LOCKED_APP: &str = "spin.lock";
/// The prefix of content entries (`sha256/<hex>`).
pub const CONTENT_PREFIX: &str = "sha256/";
/// The prefix of a filesystem image's files.
pub const ROOTFS_PREFIX: &str = "rootfs/";
/// The file at a filesystem image's root that makes it a Spin app.
pub const SPIN_MANIFEST: &str = "spin.toml";

/// The most layers a pushed app may have (Spin's own limit).
pub const MAX_LAYERS: usize = 500;
/// The most files a bundle may hold.
pub const MAX_FILES: usize = 10_000;

/// Whether `bytes` are a bundle (a tar), not a module or component (`\0asm`).
pub fn is_bundle(bytes: &[u8]) -> bool {
    bytes.get(257..262) == Some(b"ustar")
}

/// Whether an image manifest is a pushed Spin app.
pub fn is_spin_artifact(manifest: &OciImageManifest) -> bool {
    manifest.config.media_type == LOCKED_APP_MEDIA_TYPE
        || manifest
            .layers
            .iter()
            .any(|l| l.media_type == LOCKED_APP_MEDIA_TYPE)
}

/// A bundle being written to a file, at most `limit` bytes of content in all.
pub struct BundleWriter {
    archive: tar::Builder<std::io::BufWriter<std::fs::File>>,
    files: usize,
    left: u64,
    limit: u64,
}

impl BundleWriter {
    /// A bundle written into `file`.
    pub fn new(file: std::fs::File, limit: u64) -> Self {
        let mut archive = tar::Builder::new(std::io::BufWriter::new(file));
        archive.mode(tar::HeaderMode::Deterministic);
        Self {
            archive,
            files: 0,
            left: limit,
            limit,
        }
    }

    /// Appends `size` bytes read from `content` as the entry `name`.
    pub fn append(&mut self, name: &str, size: u64, content: impl Read) -> Result<(), String> {
        self.files += 1;
        if self.files > MAX_FILES {
            return Err(format!("it holds more than {MAX_FILES} files"));
        }
        self.left = self.left.checked_sub(size).ok_or_else(|| {
            format!(
                "its files come to more than {} bytes (--max-image-size)",
                self.limit
            )
        })?;
        let mut header = tar::Header::new_ustar();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        self.archive
            .append_data(&mut header, name, content.take(size))
            .map_err(|e| format!("writing {name} into the app's bundle: {e}"))
    }

    /// Ends the archive.
    pub fn finish(self) -> Result<(), String> {
        self.archive
            .into_inner()
            .and_then(|mut file| file.flush())
            .map_err(|e| format!("writing the app's bundle: {e}"))
    }
}

/// The layers of a pushed Spin app that go into its bundle, in order: the locked app first.
/// Layers of other types are not the app's and are left out.
pub fn artifact_layers(manifest: &OciImageManifest) -> Result<Vec<&OciDescriptor>, String> {
    if manifest.layers.len() > MAX_LAYERS {
        return Err(format!(
            "it has {} layers, more than the {MAX_LAYERS} a Spin app may have",
            manifest.layers.len()
        ));
    }
    let locked = manifest
        .layers
        .iter()
        .find(|l| l.media_type == LOCKED_APP_MEDIA_TYPE)
        .unwrap_or(&manifest.config);
    let content = manifest.layers.iter().filter(|l| {
        super::media::WASM_LAYER_TYPES.contains(&l.media_type.as_str())
            || l.media_type == DATA_MEDIA_TYPE
            || l.media_type == ARCHIVE_MEDIA_TYPE
    });
    Ok(std::iter::once(locked).chain(content).collect())
}

/// Writes the bundle of a pushed Spin app from its [`artifact_layers`], each a descriptor and
/// its downloaded (and verified) blob.
pub fn write_artifact(
    layers: Vec<(&OciDescriptor, std::fs::File)>,
    bundle: &mut BundleWriter,
) -> Result<(), String> {
    let mut written = std::collections::BTreeSet::new();
    for (index, (descriptor, mut blob)) in layers.into_iter().enumerate() {
        let size = blob
            .metadata()
            .map_err(|e| format!("reading a downloaded layer: {e}"))?
            .len();
        if index == 0 {
            bundle.append(LOCKED_APP, size, blob)?;
        } else if descriptor.media_type == ARCHIVE_MEDIA_TYPE {
            write_archive_files(blob, bundle, &mut written)?;
        } else if let Some(hex) = descriptor.digest.strip_prefix("sha256:")
            && written.insert(hex.to_owned())
        {
            bundle.append(&format!("{CONTENT_PREFIX}{hex}"), size, &mut blob)?;
        }
    }
    Ok(())
}

/// Each file of an archive layer, as a content entry named by its digest.
fn write_archive_files(
    blob: std::fs::File,
    bundle: &mut BundleWriter,
    written: &mut std::collections::BTreeSet<String>,
) -> Result<(), String> {
    let scratch = tempfile::tempfile().map_err(|e| format!("making a scratch file: {e}"))?;
    let unpacked = flate2::read::GzDecoder::new(blob);
    let mut archive = tar::Archive::new(layers::Capped::new(unpacked, bundle.left));
    for entry in archive
        .entries()
        .map_err(|e| format!("reading an archive layer: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("reading an archive layer: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let mut file = scratch
            .try_clone()
            .map_err(|e| format!("making a scratch file: {e}"))?;
        file.set_len(0)
            .and_then(|()| std::io::Seek::rewind(&mut file))
            .map_err(|e| format!("making a scratch file: {e}"))?;
        let mut hasher = HashingWriter::new(&mut file);
        let size = std::io::copy(&mut entry, &mut hasher)
            .map_err(|e| format!("reading an archive layer: {e}"))?;
        let hex = hasher.finish();
        std::io::Seek::rewind(&mut file).map_err(|e| format!("reading a scratch file: {e}"))?;
        if written.insert(hex.clone()) {
            bundle.append(&format!("{CONTENT_PREFIX}{hex}"), size, file)?;
        }
    }
    Ok(())
}

/// Whether a filesystem image's layers hold `spin.toml` at their root.
pub fn has_spin_manifest<R: Read>(
    layers: impl DoubleEndedIterator<Item = (String, R)>,
    limit: u64,
    scratch: &Path,
) -> Result<bool, String> {
    Ok(layers::find_file(layers, SPIN_MANIFEST, limit, scratch)?.is_some())
}

/// Writes the bundle of a filesystem image from its layers (bottom first, a media type and a
/// reader each): every regular file of the merged filesystem, under [`ROOTFS_PREFIX`].
pub fn write_filesystem<R: Read>(
    layers_bottom_first: impl Iterator<Item = (String, R)>,
    bundle: &mut BundleWriter,
    scratch: &Path,
) -> Result<(), String> {
    let mut files: BTreeMap<std::path::PathBuf, tempfile::NamedTempFile> = BTreeMap::new();
    for (media_type, blob) in layers_bottom_first {
        layers::for_each_entry(&media_type, blob, bundle.left, |change| {
            match change {
                layers::Change::File(path, content) => {
                    if files.len() >= MAX_FILES && !files.contains_key(&path) {
                        return Err(format!("it holds more than {MAX_FILES} files"));
                    }
                    let mut file = tempfile::NamedTempFile::new_in(scratch)
                        .map_err(|e| format!("making a file in {}: {e}", scratch.display()))?;
                    std::io::copy(content, &mut file)
                        .map_err(|e| format!("reading {}: {e}", path.display()))?;
                    // A file replaces whatever a lower layer had at or beneath its path.
                    files.retain(|existing, _| !existing.starts_with(&path));
                    files.insert(path, file);
                }
                layers::Change::Delete(path) | layers::Change::Other(path) => {
                    files.retain(|existing, _| !existing.starts_with(&path));
                }
                layers::Change::Opaque(dir) => {
                    files.retain(|existing, _| !(existing.starts_with(&dir) && existing != &dir));
                }
            }
            Ok(())
        })?;
    }
    for (path, file) in files {
        let size = file
            .as_file()
            .metadata()
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .len();
        let name = format!("{ROOTFS_PREFIX}{}", path.display());
        let content = file
            .reopen()
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        bundle.append(&name, size, content)?;
    }
    Ok(())
}

/// A writer that hashes what it passes on.
struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: sha2::Sha256::new(),
        }
    }

    /// The hex sha256 of what was written.
    fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::layers::test_layer as layer;
    use super::*;

    /// The bundle's entries and contents.
    fn entries(bundle: &[u8]) -> Vec<(String, Vec<u8>)> {
        assert!(is_bundle(bundle));
        let mut archive = tar::Archive::new(bundle);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let name = entry.path().unwrap().display().to_string();
                let mut content = Vec::new();
                entry.read_to_end(&mut content).unwrap();
                (name, content)
            })
            .collect()
    }

    fn write(
        limit: u64,
        fill: impl FnOnce(&mut BundleWriter) -> Result<(), String>,
    ) -> Result<Vec<u8>, String> {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut writer = BundleWriter::new(file.reopen().unwrap(), limit);
        fill(&mut writer)?;
        writer.finish()?;
        Ok(std::fs::read(file.path()).unwrap())
    }

    #[test]
    fn a_filesystem_image_becomes_its_merged_files() {
        let layers = [
            layer(&[
                ("spin.toml", b"v1"),
                ("old/a.txt", b"a"),
                ("keep/b.txt", b"b"),
                ("gone/c", b"c"),
            ]),
            layer(&[
                ("./spin.toml", b"v2"),
                ("old/.wh..wh..opq", b""),
                ("old/new.txt", b"n"),
                (".wh.gone", b""),
            ]),
        ];
        let readers = || layers.iter().map(|(t, b)| (t.clone(), b.as_slice()));
        let scratch = tempfile::tempdir().unwrap();
        assert!(has_spin_manifest(readers(), 1 << 20, scratch.path()).unwrap());
        let bundle = write(1 << 20, |w| write_filesystem(readers(), w, scratch.path())).unwrap();
        assert_eq!(
            entries(&bundle),
            [
                ("rootfs/keep/b.txt".to_owned(), b"b".to_vec()),
                ("rootfs/old/new.txt".to_owned(), b"n".to_vec()),
                ("rootfs/spin.toml".to_owned(), b"v2".to_vec()),
            ]
        );
        // The same image makes the same bundle.
        let again = write(1 << 20, |w| write_filesystem(readers(), w, scratch.path())).unwrap();
        assert_eq!(bundle, again);
        let plain = [layer(&[("app.wasm", b"\0asm")])];
        let plain = plain.iter().map(|(t, b)| (t.clone(), b.as_slice()));
        assert!(!has_spin_manifest(plain, 1 << 20, scratch.path()).unwrap());
    }

    #[test]
    fn bundles_stay_within_the_size_limit() {
        let layers = [layer(&[("spin.toml", b"x"), ("big", &[7; 4096])])];
        let readers = || layers.iter().map(|(t, b)| (t.clone(), b.as_slice()));
        let scratch = tempfile::tempdir().unwrap();
        let error = write(1024, |w| write_filesystem(readers(), w, scratch.path())).unwrap_err();
        assert!(error.contains("--max-image-size"), "{error}");
    }

    fn descriptor(media_type: &str, content: &[u8]) -> OciDescriptor {
        OciDescriptor {
            media_type: media_type.to_owned(),
            digest: format!("sha256:{}", hex::encode(sha2::Sha256::digest(content))),
            size: content.len() as i64,
            ..Default::default()
        }
    }

    fn blob(content: &[u8]) -> std::fs::File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(content).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        file
    }

    #[test]
    fn a_pushed_app_becomes_its_lock_and_content_by_digest() {
        let lock = br#"{"spin_lock_version": 1}"#;
        let wasm = b"\0asm\x01\0\0\0";
        let css = b"body {}";
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(css.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive
            .append_data(&mut header, "site.css", &css[..])
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&archive.into_inner().unwrap()).unwrap();
        let archive = gz.finish().unwrap();
        let manifest = OciImageManifest {
            config: descriptor("application/vnd.wasm.config.v0+json", b"{}"),
            layers: vec![
                descriptor(WASM_LAYER, wasm),
                descriptor(LOCKED_APP_MEDIA_TYPE, lock),
                descriptor("application/vnd.other", b"?"),
                descriptor(ARCHIVE_MEDIA_TYPE, &archive),
                descriptor(WASM_LAYER, wasm),
            ],
            ..Default::default()
        };
        assert!(is_spin_artifact(&manifest));
        let chosen = artifact_layers(&manifest).unwrap();
        assert_eq!(
            chosen
                .iter()
                .map(|d| d.media_type.as_str())
                .collect::<Vec<_>>(),
            [
                LOCKED_APP_MEDIA_TYPE,
                WASM_LAYER,
                ARCHIVE_MEDIA_TYPE,
                WASM_LAYER
            ]
        );
        let contents: [&[u8]; 4] = [lock, wasm, &archive, wasm];
        let opened = chosen
            .into_iter()
            .zip(contents)
            .map(|(d, c)| (d, blob(c)))
            .collect();
        let bundle = write(1 << 20, |w| write_artifact(opened, w)).unwrap();
        let hex = |c: &[u8]| hex::encode(sha2::Sha256::digest(c));
        assert_eq!(
            entries(&bundle),
            [
                ("spin.lock".to_owned(), lock.to_vec()),
                (format!("sha256/{}", hex(wasm)), wasm.to_vec()),
                (format!("sha256/{}", hex(css)), css.to_vec()),
            ]
        );
        let not_spin = OciImageManifest {
            layers: vec![descriptor(WASM_LAYER, wasm)],
            ..Default::default()
        };
        assert!(!is_spin_artifact(&not_spin));
    }

    const WASM_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
}
