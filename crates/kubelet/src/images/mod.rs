//! Images: pulls of wasm OCI artifacts (oci-client) and of ordinary images built for wasi/wasm
//! ([`layers`]), a content-addressed store in the data dir,
//! pull policies, coalesced concurrent pulls, and plain-spoken refusals of images that are not
//! WebAssembly.

pub mod credentials;
pub mod gc;
mod layers;
mod media;
mod push;

pub use push::{PushError, push_module};

use crate::runtime::ModuleBytes;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
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
    /// The reference does not parse.
    #[error("invalid image reference \"{0}\": {1}")]
    InvalidReference(String, String),
    /// The registry failed or refused.
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
    insecure: Vec<String>,
    /// One registry client per credential: a client keeps the first credentials it was given
    /// for a registry, and one pod's credentials must never serve another pod's pull.
    clients: Mutex<HashMap<String, Client>>,
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
    /// allows `file://` images (standalone mode).
    pub fn new(root: PathBuf, insecure: Vec<String>, local_files: bool) -> Self {
        Self {
            root,
            insecure,
            clients: Mutex::default(),
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
        let reference: Reference = image.parse().map_err(|e: oci_client::ParseError| {
            PullError::InvalidReference(image.into(), e.to_string())
        })?;
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
                bytes: std::fs::metadata(self.blob_path(&record.layer)).map_or(0, |m| m.len()),
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
                let _ = std::fs::remove_file(self.blob_path(&record.layer));
                self.modules
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&record.layer);
                removed.push(record.layer.clone());
            }
        }
        Ok(removed)
    }

    fn client(&self, auth: &RegistryAuth) -> Client {
        let key = match auth {
            RegistryAuth::Anonymous => "anonymous".to_string(),
            RegistryAuth::Basic(user, pass) => {
                format!("basic:{user}:{}", digest_of(pass.as_bytes()))
            }
            RegistryAuth::Bearer(token) => format!("bearer:{}", digest_of(token.as_bytes())),
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(key)
            .or_insert_with(|| {
                Client::new(ClientConfig {
                    protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
                    ..Default::default()
                })
            })
            .clone()
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
        let bytes = tokio::fs::read(path)
            .await
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
        self.root.join("refs").join(format!(
            "{}.json",
            hex::encode(Sha256::digest(reference.whole().as_bytes()))
        ))
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs").join(digest.replace(':', "/"))
    }

    fn stored(&self, reference: &Reference) -> Result<Option<PulledImage>, PullError> {
        let Ok(text) = std::fs::read(self.ref_path(reference)) else {
            return Ok(None);
        };
        let Ok(record) = serde_json::from_slice::<RefRecord>(&text) else {
            return Ok(None);
        };
        Ok(self.load_module(&record.layer)?.map(|module| PulledImage {
            image_id: record.image_id,
            module,
        }))
    }

    fn load_module(&self, digest: &str) -> Result<Option<ModuleBytes>, PullError> {
        if let Some(bytes) = self
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
        {
            return Ok(Some(ModuleBytes {
                digest: digest.into(),
                bytes: bytes.clone(),
            }));
        }
        let bytes: Arc<[u8]> = match std::fs::read(self.blob_path(digest)) {
            Ok(b) if digest_of(&b) == digest => b.into(),
            Ok(_) | Err(_) => return Ok(None),
        };
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.into(), bytes.clone());
        Ok(Some(ModuleBytes {
            digest: digest.into(),
            bytes,
        }))
    }

    async fn pull(
        &self,
        image: &str,
        reference: &Reference,
        auth: RegistryAuth,
    ) -> Result<(PulledImage, Source), PullError> {
        let client = self.client(&auth);
        let registry = |e: oci_client::errors::OciDistributionError| {
            PullError::Registry(media::explain_registry_error(image, &e))
        };
        let (manifest, digest) = client
            .pull_manifest(reference, &auth)
            .await
            .map_err(registry)?;
        if let Some(wanted) = reference.digest()
            && wanted != digest
        {
            return Err(PullError::Registry(format!(
                "the registry served manifest {digest} for {image}, which names digest {wanted}"
            )));
        }
        let (manifest, manifest_ref, digest) = match manifest {
            OciManifest::Image(m) => (m, reference.clone(), digest),
            OciManifest::ImageIndex(index) => {
                let entry = media::pick_wasm_platform(image, &index)?;
                let by_digest = reference.clone_with_digest(entry.digest.clone());
                let (m, d) = client
                    .pull_image_manifest(&by_digest, &auth)
                    .await
                    .map_err(registry)?;
                (m, by_digest, d)
            }
        };
        let module = match media::wasm_layer(&manifest) {
            Some(layer) => match self.load_module(&layer.digest)? {
                Some(module) => module,
                None => {
                    let bytes = self
                        .download_blob(&client, &manifest_ref, layer)
                        .await
                        .map_err(registry)??;
                    self.store_module(bytes)?
                }
            },
            None => {
                self.module_from_filesystem(&client, image, &manifest_ref, &manifest)
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
        client: &Client,
        image: &str,
        reference: &Reference,
        manifest: &OciImageManifest,
    ) -> Result<ModuleBytes, PullError> {
        let registry = |e: oci_client::errors::OciDistributionError| {
            PullError::Registry(media::explain_registry_error(image, &e))
        };
        let mut raw = Vec::new();
        let config: Option<serde_json::Value> = match client
            .pull_blob(reference, &manifest.config, &mut raw)
            .await
        {
            Ok(()) => serde_json::from_slice(&raw).ok(),
            Err(_) => None,
        };
        let Some(config) = config.filter(layers::is_wasi_platform) else {
            let platform = media::platform_of_config(&raw);
            return Err(PullError::NotWasm(media::not_wasm_message(
                image,
                manifest,
                platform.as_deref(),
            )));
        };
        let entrypoint = layers::entrypoint(&config).ok_or_else(|| {
            PullError::NotWasm(format!(
                "image \"{image}\" is built for wasi/wasm but its config names no Entrypoint or Cmd, so the module in its layers is unknown; set ENTRYPOINT to the .wasm file"
            ))
        })?;
        let mut blobs = Vec::with_capacity(manifest.layers.len());
        for layer in &manifest.layers {
            let blob = self
                .download_blob(client, reference, layer)
                .await
                .map_err(registry)??;
            blobs.push((layer.media_type.clone(), blob));
        }
        let module = layers::find_file(&blobs, &entrypoint)
            .map_err(|e| PullError::Registry(format!("image \"{image}\": {e}")))?
            .ok_or_else(|| {
                PullError::NotWasm(format!(
                    "image \"{image}\" names {entrypoint} as its entrypoint, but that file is not in the image's layers"
                ))
            })?;
        self.store_module(module)
    }

    /// Downloads a blob and checks its digest.
    async fn download_blob(
        &self,
        client: &Client,
        reference: &Reference,
        layer: &OciDescriptor,
    ) -> Result<Result<Vec<u8>, PullError>, oci_client::errors::OciDistributionError> {
        let mut bytes = Vec::with_capacity(usize::try_from(layer.size).unwrap_or_default());
        client.pull_blob(reference, layer, &mut bytes).await?;
        let digest = digest_of(&bytes);
        if digest != layer.digest {
            return Ok(Err(PullError::Registry(format!(
                "layer digest mismatch: the manifest says {}, the registry sent {digest}",
                layer.digest
            ))));
        }
        Ok(Ok(bytes))
    }

    /// Keeps a module in the store under its digest.
    fn store_module(&self, bytes: Vec<u8>) -> Result<ModuleBytes, PullError> {
        let digest = digest_of(&bytes);
        write_atomic(&self.blob_path(&digest), &bytes)?;
        let bytes: Arc<[u8]> = bytes.into();
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.clone(), bytes.clone());
        Ok(ModuleBytes { digest, bytes })
    }
}

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Writes a file through a temporary name and a rename, so readers never see half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::PullPolicy::{self, *};

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
