//! Images: pulls of wasm OCI artifacts and of ordinary images built for wasi/wasm ([`layers`])
//! through a bounded registry client ([`registry`]), a content-addressed store in the data dir,
//! pull policies, coalesced concurrent pulls, and plain-spoken refusals of images that are not
//! WebAssembly.
//!
//! Everything a registry sends is hostile until checked: digests are validated before they name
//! a path ([`digest`]), sizes are capped by [`PullLimits`] while streaming, downloads land in
//! the store's `tmp/` and are renamed into place only once verified, and only regular files are
//! ever opened from the store.

pub mod bundle;
pub mod credentials;
pub mod digest;
pub mod gc;
pub(crate) mod layers;
mod media;
mod push;
pub mod registry;

pub use digest::Digest;
pub use push::{PushError, SpinAppLayers, push_module, push_spin_app};
pub use registry::PullLimits;

use crate::runtime::ModuleBytes;
use oci_client::Reference;
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use registry::{RegistryClient, RegistryError, Session};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// When to contact the registry (`imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the reference every time (downloads only what the store lacks).
    Always,
    /// Use the stored image when there is one.
    IfNotPresent,
    /// Never contact the registry.
    Never,
}

impl PullPolicy {
    /// Parses a container's `imagePullPolicy`, with the kubelet's default for an unset one.
    pub fn for_container(policy: Option<&str>, image: &str) -> Self {
        match policy {
            Some("Always") => Self::Always,
            Some("Never") => Self::Never,
            Some("IfNotPresent") => Self::IfNotPresent,
            _ if image.contains('@') => Self::IfNotPresent,
            _ => match image
                .rsplit('/')
                .next()
                .and_then(|last| last.split_once(':'))
            {
                Some((_, tag)) if tag != "latest" => Self::IfNotPresent,
                _ => Self::Always,
            },
        }
    }
}

/// Why an image could not be had; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The image exists but is not WebAssembly.
    #[error("{0}")]
    NotWasm(String),
    /// `imagePullPolicy: Never` and the image is not on the node.
    #[error("Container image \"{0}\" is not present with pull policy of Never")]
    NeverPull(String),
    /// The reference does not parse (the kubelet's `InvalidImageName`).
    #[error("invalid image reference \"{0}\": {1}")]
    InvalidReference(String, String),
    /// The registry failed, refused, or sent something the node does not accept.
    #[error("{0}")]
    Registry(String),
    /// Reading or writing the store failed.
    #[error("image store: {0}")]
    Store(#[from] std::io::Error),
}

/// An image ready to run.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The image ID the kubelet reports (`repository@sha256:...`).
    pub image_id: String,
    /// The module.
    pub module: ModuleBytes,
}

/// How an image was obtained, for the Pulled event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Downloaded now.
    Pulled,
    /// Already on the node.
    Present,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RefRecord {
    image_id: String,
    layer: String,
    /// The reference it was pulled by (`Reference::whole`), for garbage collection.
    #[serde(default)]
    reference: String,
}

/// The node's image store.
pub struct ImageStore {
    root: PathBuf,
    /// Pulls; each pull authenticates with its own pod's credentials.
    registry: RegistryClient,
    local_files: bool,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    modules: Mutex<HashMap<String, Arc<[u8]>>>,
    /// When each reference was last asked for; images not asked for since the store was opened
    /// count from then.
    last_used: Mutex<HashMap<String, std::time::Instant>>,
    opened: std::time::Instant,
}

impl ImageStore {
    /// A store under `root`; `insecure` lists registries reached over plain HTTP; `local_files`
    /// allows `file://` images (standalone mode). Downloads a crash left half done are removed.
    pub fn new(
        root: PathBuf,
        insecure: Vec<String>,
        local_files: bool,
        limits: PullLimits,
    ) -> Self {
        let _ = std::fs::remove_dir_all(root.join("tmp"));
        Self {
            root,
            registry: RegistryClient::new(insecure, limits),
            local_files,
            locks: Mutex::default(),
            modules: Mutex::default(),
            last_used: Mutex::default(),
            opened: std::time::Instant::now(),
        }
    }

    /// Gets an image by the pull policy; concurrent requests for one reference share one pull.
    pub async fn get(
        &self,
        image: &str,
        policy: PullPolicy,
        keyring: &credentials::Keyring,
    ) -> Result<(PulledImage, Source), PullError> {
        if let Some(path) = image.strip_prefix("file://") {
            return self.local_file(image, path).await;
        }
        let reference = parse_reference(image)?;
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(reference.whole()).or_default().clone()
        };
        let _guard = lock.lock().await;
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(reference.whole(), std::time::Instant::now());
        let stored = self.stored(&reference)?;
        match (policy, stored) {
            (PullPolicy::IfNotPresent | PullPolicy::Never, Some(found)) => {
                Ok((found, Source::Present))
            }
            (PullPolicy::Never, None) => Err(PullError::NeverPull(image.into())),
            _ => {
                let auth = keyring.auth_for(reference.resolve_registry());
                self.pull(image, &reference, auth).await
            }
        }
    }

    /// Removes the images no pod uses (`in_use` holds the pods' image references) as `policy`
    /// says; returns the digests of the modules removed, for the runtime to forget.
    pub fn collect_garbage(
        &self,
        in_use: &[String],
        policy: &gc::GcPolicy,
    ) -> Result<Vec<String>, PullError> {
        let in_use: Vec<String> = in_use
            .iter()
            .filter_map(|image| image.parse::<Reference>().ok())
            .map(|r| r.whole())
            .collect();
        let refs = self.root.join("refs");
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&refs).into_iter().flatten().flatten() {
            if let Ok(record) = serde_json::from_slice::<RefRecord>(&std::fs::read(entry.path())?) {
                records.push((entry.path(), record));
            }
        }
        let now = std::time::Instant::now();
        let last_used = self
            .last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let unused = records
            .iter()
            .enumerate()
            .filter(|(_, (_, record))| !in_use.contains(&record.reference))
            .map(|(index, (_, record))| gc::Unused {
                key: index,
                idle: now.saturating_duration_since(
                    last_used
                        .get(&record.reference)
                        .copied()
                        .unwrap_or(self.opened),
                ),
                bytes: record
                    .layer
                    .parse::<Digest>()
                    .ok()
                    .and_then(|d| std::fs::symlink_metadata(self.blob_path(&d)).ok())
                    .map_or(0, |m| m.len()),
            })
            .collect();
        let disk = rustix::fs::statvfs(&self.root)
            .map(|s| gc::Disk {
                capacity: s.f_blocks.saturating_mul(s.f_frsize),
                used: s
                    .f_blocks
                    .saturating_sub(s.f_bavail)
                    .saturating_mul(s.f_frsize),
            })
            .map_err(std::io::Error::from)?;
        let chosen = policy.select(unused, disk);
        let mut removed = Vec::new();
        for index in &chosen {
            let (path, record) = &records[*index];
            std::fs::remove_file(path)?;
            self.last_used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&record.reference);
            tracing::info!(image = %record.image_id, "removed an unused image");
            let shared = records
                .iter()
                .enumerate()
                .any(|(i, (_, other))| !chosen.contains(&i) && other.layer == record.layer);
            if !shared && !removed.contains(&record.layer) {
                if let Ok(digest) = record.layer.parse::<Digest>() {
                    let _ = std::fs::remove_file(self.blob_path(&digest));
                }
                self.modules
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&record.layer);
                removed.push(record.layer.clone());
            }
        }
        Ok(removed)
    }

    /// Whether the image is in the store (for `file://` images: whether the file exists).
    pub fn is_present(&self, image: &str) -> bool {
        if let Some(path) = image.strip_prefix("file://") {
            return Path::new(path).is_file();
        }
        image
            .parse::<Reference>()
            .ok()
            .and_then(|r| self.stored(&r).ok().flatten())
            .is_some()
    }

    async fn local_file(
        &self,
        image: &str,
        path: &str,
    ) -> Result<(PulledImage, Source), PullError> {
        if !self.local_files {
            return Err(PullError::InvalidReference(
                image.into(),
                "file:// images are only allowed in standalone mode".into(),
            ));
        }
        let limit = self.registry.limits().max_image_size;
        let bytes = read_regular_file(Path::new(path), limit)
            .and_then(|found| {
                found.ok_or_else(|| {
                    std::io::Error::other(format!(
                        "not a regular file of at most {limit} bytes (--max-image-size)"
                    ))
                })
            })
            .map_err(|e| PullError::Registry(format!("reading {path}: {e}")))?;
        let digest = digest_of(&bytes);
        let module = ModuleBytes {
            digest: digest.clone(),
            bytes: bytes.into(),
        };
        Ok((
            PulledImage {
                image_id: format!("file://{path}@{digest}"),
                module,
            },
            Source::Present,
        ))
    }

    fn ref_path(&self, reference: &Reference) -> PathBuf {
        let digest = Digest::sha256_of(reference.whole().as_bytes());
        let (_, hex) = digest.path_parts();
        self.root.join("refs").join(format!("{hex}.json"))
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let (algorithm, hex) = digest.path_parts();
        self.root.join("blobs").join(algorithm).join(hex)
    }

    fn stored(&self, reference: &Reference) -> Result<Option<PulledImage>, PullError> {
        let Ok(Some(text)) = read_regular_file(&self.ref_path(reference), MAX_RECORD_BYTES) else {
            return Ok(None);
        };
        let Ok(record) = serde_json::from_slice::<RefRecord>(&text) else {
            return Ok(None);
        };
        let Ok(layer) = record.layer.parse::<Digest>() else {
            return Ok(None);
        };
        Ok(self.load_module(&layer)?.map(|module| PulledImage {
            image_id: record.image_id,
            module,
        }))
    }

    /// The module stored under `digest`, if it is there whole (a damaged file counts as absent
    /// and is fetched again).
    fn load_module(&self, digest: &Digest) -> Result<Option<ModuleBytes>, PullError> {
        let key = digest.to_string();
        if let Some(bytes) = self
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(Some(ModuleBytes {
                digest: key,
                bytes: bytes.clone(),
            }));
        }
        let limit = self.registry.limits().max_image_size;
        let bytes: Arc<[u8]> = match read_regular_file(&self.blob_path(digest), limit) {
            Ok(Some(b)) if digest_of(&b) == key => b.into(),
            Ok(_) | Err(_) => return Ok(None),
        };
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), bytes.clone());
        Ok(Some(ModuleBytes { digest: key, bytes }))
    }

    async fn pull(
        &self,
        image: &str,
        reference: &Reference,
        auth: RegistryAuth,
    ) -> Result<(PulledImage, Source), PullError> {
        let mut session = self.registry.session(reference, auth);
        let registry =
            |e: RegistryError| PullError::Registry(media::explain_registry_error(image, &e));
        let name = reference
            .digest()
            .or(reference.tag())
            .unwrap_or("latest")
            .to_string();
        let (manifest, digest) = session.manifest(&name).await.map_err(registry)?;
        let (manifest, digest) = match manifest {
            OciManifest::Image(m) => (m, digest),
            OciManifest::ImageIndex(index) => {
                let entry = media::pick_wasm_platform(image, &index)?;
                match session.manifest(&entry.digest).await.map_err(registry)? {
                    (OciManifest::Image(m), d) => (m, d),
                    (OciManifest::ImageIndex(_), _) => {
                        return Err(PullError::Registry(format!(
                            "image \"{image}\": the index's wasi/wasm entry {} is another index, not an image manifest",
                            entry.digest
                        )));
                    }
                }
            }
        };
        let module = match media::wasm_layer(&manifest) {
            // A Spin app has wasm layers too: its components.
            _ if bundle::is_spin_artifact(&manifest) => {
                self.spin_artifact(&mut session, image, &manifest).await?
            }
            Some(layer) => {
                let stored = match layer.digest.parse::<Digest>() {
                    Ok(d) => self.load_module(&d)?,
                    Err(_) => None,
                };
                match stored {
                    Some(module) => module,
                    None => {
                        let download =
                            self.download(&mut session, layer).await.map_err(registry)?;
                        self.keep_module(download)?
                    }
                }
            }
            None => {
                self.module_from_filesystem(&mut session, image, &manifest)
                    .await?
            }
        };
        let image_id = format!(
            "{}/{}@{digest}",
            reference.resolve_registry(),
            reference.repository()
        );
        let record = RefRecord {
            image_id: image_id.clone(),
            layer: module.digest.clone(),
            reference: reference.whole(),
        };
        write_atomic(
            &self.ref_path(reference),
            &serde_json::to_vec(&record).expect("records encode"),
        )?;
        Ok((PulledImage { image_id, module }, Source::Pulled))
    }

    /// The module of an ordinary image: only one built for the wasi/wasm platform has one (a
    /// file named by its entrypoint); any other is refused before its layers are downloaded.
    async fn module_from_filesystem(
        &self,
        session: &mut Session<'_>,
        image: &str,
        manifest: &OciImageManifest,
    ) -> Result<ModuleBytes, PullError> {
        let registry =
            |e: RegistryError| PullError::Registry(media::explain_registry_error(image, &e));
        // A config the registry fails to send is its failure, said as such; one that arrives
        // and is not for wasi/wasm is an image of another platform.
        let raw = session
            .small_blob(&manifest.config)
            .await
            .map_err(registry)?;
        let config: Option<serde_json::Value> = serde_json::from_slice(&raw).ok();
        let Some(config) = config.filter(layers::is_wasi_platform) else {
            let platform = media::platform_of_config(&raw);
            return Err(PullError::NotWasm(media::not_wasm_message(
                image,
                manifest,
                platform.as_deref(),
            )));
        };
        // spin-operator's pods run Spin apps with the command `/`.
        let entrypoint = layers::entrypoint(&config).filter(|path| path != "/");
        let blobs = self
            .download_layers(session, image, &manifest.layers)
            .await?;
        let limit = self.registry.limits().max_image_size;
        let scratch = self.root.join("tmp");
        let Some(entrypoint) = entrypoint else {
            return self.filesystem_app(image, blobs).await;
        };
        let found = tokio::task::spawn_blocking(move || {
            let readers = reopen_all(&blobs)?;
            layers::find_file(readers.into_iter(), &entrypoint, limit, &scratch)
                .map(|found| (found, entrypoint))
        })
        .await
        .map_err(|e| {
            PullError::Registry(format!("image \"{image}\": reading its layers failed: {e}"))
        })?;
        let (module, entrypoint) =
            found.map_err(|e| PullError::Registry(format!("image \"{image}\": {e}")))?;
        let module = module.ok_or_else(|| {
            PullError::NotWasm(format!(
                "image \"{image}\" names {entrypoint} as its entrypoint, but that file is not in the image's layers"
            ))
        })?;
        self.keep_module(module)
    }

    /// Downloads every layer of `layers` (their sizes together at most `--max-image-size`),
    /// each with its media type.
    async fn download_layers(
        &self,
        session: &mut Session<'_>,
        image: &str,
        layers: &[OciDescriptor],
    ) -> Result<Vec<(OciDescriptor, tempfile::NamedTempFile)>, PullError> {
        let registry =
            |e: RegistryError| PullError::Registry(media::explain_registry_error(image, &e));
        let limit = self.registry.limits().max_image_size;
        let total = layers.iter().fold(0u64, |sum, l| {
            sum.saturating_add(u64::try_from(l.size).unwrap_or(u64::MAX))
        });
        if total > limit {
            return Err(registry(RegistryError::TooLarge {
                what: format!("the image's layers ({total} bytes)"),
                limit,
                flag: "--max-image-size",
            }));
        }
        let mut blobs = Vec::with_capacity(layers.len().min(bundle::MAX_LAYERS));
        for layer in layers {
            let download = self.download(session, layer).await.map_err(registry)?;
            blobs.push((layer.clone(), download));
        }
        Ok(blobs)
    }

    /// A filesystem image without an entrypoint: a Spin app when `spin.toml` is at its root
    /// (its files become a bundle, [`bundle`]), else an image whose module is unknown.
    async fn filesystem_app(
        &self,
        image: &str,
        blobs: Vec<(OciDescriptor, tempfile::NamedTempFile)>,
    ) -> Result<ModuleBytes, PullError> {
        let limit = self.registry.limits().max_image_size;
        let scratch = self.root.join("tmp");
        let written = tokio::task::spawn_blocking(move || {
            let scratch_dir = tempfile::tempdir_in(&scratch)
                .map_err(|e| format!("making a directory in {}: {e}", scratch.display()))?;
            if !bundle::has_spin_manifest(
                reopen_all(&blobs)?.into_iter(),
                limit,
                scratch_dir.path(),
            )? {
                return Ok(None);
            }
            let output = tempfile::NamedTempFile::new_in(&scratch)
                .map_err(|e| format!("making a file in {}: {e}", scratch.display()))?;
            let file = output
                .reopen()
                .map_err(|e| format!("writing the bundle: {e}"))?;
            let mut writer = bundle::BundleWriter::new(file, limit);
            bundle::write_filesystem(
                reopen_all(&blobs)?.into_iter(),
                &mut writer,
                scratch_dir.path(),
            )?;
            writer.finish()?;
            Ok(Some(output))
        })
        .await
        .map_err(|e| {
            PullError::Registry(format!("image \"{image}\": reading its layers failed: {e}"))
        })?
        .map_err(|e: String| PullError::Registry(format!("image \"{image}\": {e}")))?;
        match written {
            Some(bundle) => self.keep_module(bundle),
            None => Err(PullError::NotWasm(format!(
                "image \"{image}\" is built for wasi/wasm but its config names no Entrypoint or Cmd and it has no spin.toml at its root, so the module in its layers is unknown; set ENTRYPOINT to the .wasm file"
            ))),
        }
    }

    /// A pushed Spin app: its locked app and content layers, as one bundle ([`bundle`]).
    async fn spin_artifact(
        &self,
        session: &mut Session<'_>,
        image: &str,
        manifest: &OciImageManifest,
    ) -> Result<ModuleBytes, PullError> {
        let layers: Vec<OciDescriptor> = bundle::artifact_layers(manifest)
            .map_err(|e| PullError::Registry(format!("image \"{image}\": {e}")))?
            .into_iter()
            .cloned()
            .collect();
        let blobs = self.download_layers(session, image, &layers).await?;
        let limit = self.registry.limits().max_image_size;
        let scratch = self.root.join("tmp");
        let written = tokio::task::spawn_blocking(move || {
            let output = tempfile::NamedTempFile::new_in(&scratch)
                .map_err(|e| format!("making a file in {}: {e}", scratch.display()))?;
            let file = output
                .reopen()
                .map_err(|e| format!("writing the bundle: {e}"))?;
            let mut writer = bundle::BundleWriter::new(file, limit);
            let opened = blobs
                .iter()
                .map(|(descriptor, blob)| Ok((descriptor, blob.reopen()?)))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| format!("reading a downloaded layer: {e}"))?;
            bundle::write_artifact(opened, &mut writer)?;
            writer.finish()?;
            Ok(output)
        })
        .await
        .map_err(|e| {
            PullError::Registry(format!("image \"{image}\": reading its layers failed: {e}"))
        })?
        .map_err(|e: String| PullError::Registry(format!("image \"{image}\": {e}")))?;
        self.keep_module(written)
    }

    /// Streams a blob into a file in the store's `tmp/`, checked against its descriptor; the
    /// file is removed when dropped unless it is kept.
    async fn download(
        &self,
        session: &mut Session<'_>,
        descriptor: &OciDescriptor,
    ) -> Result<tempfile::NamedTempFile, RegistryError> {
        let dir = self.root.join("tmp");
        std::fs::create_dir_all(&dir).map_err(RegistryError::Store)?;
        let temp = tempfile::NamedTempFile::new_in(&dir).map_err(RegistryError::Store)?;
        let mut file = tokio::fs::File::from_std(temp.reopen().map_err(RegistryError::Store)?);
        session.blob_to_file(descriptor, &mut file).await?;
        Ok(temp)
    }

    /// Keeps a downloaded module in the store under its sha256 digest.
    fn keep_module(&self, download: tempfile::NamedTempFile) -> Result<ModuleBytes, PullError> {
        let limit = self.registry.limits().max_image_size;
        let mut bytes = Vec::new();
        download
            .reopen()?
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)?;
        let digest = Digest::sha256_of(&bytes);
        let path = self.blob_path(&digest);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        download.persist(&path).map_err(|e| e.error)?;
        Ok(self.remember(&digest, bytes))
    }

    /// Keeps a stored module's bytes in memory too, for the pods that ask for it next.
    fn remember(&self, digest: &Digest, bytes: Vec<u8>) -> ModuleBytes {
        let bytes: Arc<[u8]> = bytes.into();
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.to_string(), bytes.clone());
        ModuleBytes {
            digest: digest.to_string(),
            bytes,
        }
    }
}

/// Readers of downloaded layers, each with its media type, bottom layer first.
fn reopen_all(
    blobs: &[(OciDescriptor, tempfile::NamedTempFile)],
) -> Result<Vec<(String, std::fs::File)>, String> {
    blobs
        .iter()
        .map(|(descriptor, file)| Ok((descriptor.media_type.clone(), file.reopen()?)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| format!("reading a downloaded layer: {e}"))
}

/// The most a reference record may be.
const MAX_RECORD_BYTES: u64 = 64 << 10;

/// Parses an image reference as the kubelet does before pulling: a reference that does not
/// parse, or whose repository is not lowercase, is an `InvalidImageName`.
fn parse_reference(image: &str) -> Result<Reference, PullError> {
    let invalid = |why: String| PullError::InvalidReference(image.into(), why);
    if image.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(invalid("it contains spaces or control characters".into()));
    }
    let reference: Reference = image
        .parse()
        .map_err(|e: oci_client::ParseError| invalid(e.to_string()))?;
    if reference
        .repository()
        .bytes()
        .any(|b| b.is_ascii_uppercase())
    {
        return Err(invalid(format!(
            "repository name ({}) must be lowercase",
            reference.repository()
        )));
    }
    if let Some(digest) = reference.digest() {
        digest
            .parse::<Digest>()
            .map_err(|e| invalid(e.to_string()))?;
    }
    Ok(reference)
}

/// Reads a file that must be a regular file of at most `limit` bytes: symbolic links are not
/// followed, FIFOs and devices are not read (`Ok(None)`), and nothing past the limit is read.
fn read_regular_file(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() || metadata.len() > limit {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Ok(None);
    }
    Ok(Some(bytes))
}

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    Digest::sha256_of(bytes).to_string()
}

/// Writes a file through a temporary name and a rename, so readers never see half of it; the
/// temporary file is removed when the write fails (a full disk leaves nothing behind).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::PullPolicy::{self, *};
    use super::{PullError, parse_reference, read_regular_file};
    use std::path::Path;

    #[test]
    fn invalid_image_names_are_refused_before_any_registry() {
        for bad in [
            "UPPER/case:tag",
            "registry.example/Repo:v1",
            "r/x@sha256:00",
            "r/x:v1\u{0}",
            "r/x y",
            "",
        ] {
            assert!(
                matches!(parse_reference(bad), Err(PullError::InvalidReference(..))),
                "{bad:?} must be an InvalidImageName"
            );
        }
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert!(parse_reference(&format!("Registry.Example:5000/x/y@{digest}")).is_ok());
        assert!(parse_reference("r:5000/a/b-c_d:v1.2").is_ok());
    }

    #[test]
    fn only_regular_files_are_read_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blob");
        std::fs::write(&file, b"module").unwrap();
        assert_eq!(read_regular_file(&file, 6).unwrap().unwrap(), b"module");
        assert_eq!(read_regular_file(&file, 5).unwrap(), None, "past the limit");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_eq!(
            read_regular_file(&fifo, 100).unwrap(),
            None,
            "a FIFO never blocks"
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(
            read_regular_file(&link, 100).is_err(),
            "links are not followed"
        );
        assert!(
            read_regular_file(Path::new("/dev/zero"), 100)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn default_pull_policy_follows_the_kubelet() {
        assert_eq!(PullPolicy::for_container(None, "r/x"), Always);
        assert_eq!(PullPolicy::for_container(None, "r/x:latest"), Always);
        assert_eq!(PullPolicy::for_container(None, "r:5000/x:v1"), IfNotPresent);
        assert_eq!(PullPolicy::for_container(None, "r:5000/x"), Always);
        assert_eq!(
            PullPolicy::for_container(None, "r/x@sha256:00"),
            IfNotPresent
        );
        assert_eq!(PullPolicy::for_container(Some("Never"), "r/x"), Never);
    }
}
