//! A hostile OCI registry for tests: an HTTP server on 127.0.0.1 that answers each repository
//! with one attack a malicious or broken registry can make on a node (see [`Attack`]). Every
//! endless answer stops when the client goes, and the server stops when dropped.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a repository of the hostile registry does; its name is the repository's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// A wasm layer whose digest is a path out of the store: `sha256:../../../../dev/zero`.
    TraversalDigest,
    /// A wasm layer declared as 2^62 bytes long.
    HugeLayer,
    /// A manifest that never ends.
    EndlessManifest,
    /// A layer declared as 1 KiB whose blob never ends.
    EndlessBlob,
    /// A wasi/wasm platform image whose 64 KiB gzip layer inflates to 64 MiB.
    DecompressionBomb,
    /// A manifest sent one byte a second.
    Trickle,
}

impl Attack {
    /// Every attack.
    pub const ALL: [Attack; 6] = [
        Attack::TraversalDigest,
        Attack::HugeLayer,
        Attack::EndlessManifest,
        Attack::EndlessBlob,
        Attack::DecompressionBomb,
        Attack::Trickle,
    ];

    /// The repository that makes this attack.
    pub fn repository(self) -> &'static str {
        match self {
            Attack::TraversalDigest => "traversal-digest",
            Attack::HugeLayer => "huge-layer",
            Attack::EndlessManifest => "endless-manifest",
            Attack::EndlessBlob => "endless-blob",
            Attack::DecompressionBomb => "decompression-bomb",
            Attack::Trickle => "trickle",
        }
    }

    fn from_repository(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.repository() == name)
    }
}

/// The size the decompression bomb inflates to.
pub const BOMB_INFLATED_BYTES: usize = 64 << 20;

/// A running hostile registry.
pub struct HostileRegistry {
    addr: SocketAddr,
    stop: CancellationToken,
}

struct Content {
    bomb_layer: Bytes,
    bomb_config: Bytes,
}

impl HostileRegistry {
    /// Starts the registry on an ephemeral loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let content = Arc::new(Content {
            bomb_layer: tokio::task::spawn_blocking(bomb_layer).await??.into(),
            bomb_config: serde_json::to_vec(&serde_json::json!({
                "os": "wasi",
                "architecture": "wasm",
                "config": {"Entrypoint": ["/app.wasm"]},
                "rootfs": {"type": "layers", "diff_ids": []},
            }))?
            .into(),
        });
        let app = Router::new()
            .route("/v2/", axum::routing::get(|| async { "{}" }))
            .route(
                "/v2/{name}/manifests/{reference}",
                axum::routing::get(manifest),
            )
            .route("/v2/{name}/blobs/{digest}", axum::routing::get(blob))
            .with_state(content);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(Self { addr, stop })
    }

    /// `127.0.0.1:<port>`, for image references and `--insecure-registries`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The image reference that makes `attack`.
    pub fn image(&self, attack: Attack) -> String {
        format!("{}/{}:v1", self.host(), attack.repository())
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A tar holding `/app.wasm` of zeros, gzipped.
fn bomb_layer() -> std::io::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(BOMB_INFLATED_BYTES as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let zeros = std::io::Read::take(std::io::repeat(0), BOMB_INFLATED_BYTES as u64);
    archive.append_data(&mut header, "app.wasm", zeros)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&archive.into_inner()?)?;
    gz.finish()
}

fn json(bytes: impl Into<Body>, media_type: &str) -> Response {
    (
        [(header::CONTENT_TYPE, media_type.to_string())],
        bytes.into(),
    )
        .into_response()
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
const EMPTY_CONFIG: &[u8] = b"{}";

fn wasm_manifest(digest: &str, size: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": WASM_CONFIG, "digest": sha256(EMPTY_CONFIG), "size": EMPTY_CONFIG.len()},
        "layers": [{"mediaType": "application/wasm", "digest": digest, "size": size}],
    }))
    .expect("a manifest encodes")
}

/// A body that repeats `chunk` every `every` for as long as the client reads.
fn endless(chunk: &'static [u8], every: Duration) -> Body {
    let stream = futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(every).await;
        Some((Ok::<_, std::io::Error>(Bytes::from_static(chunk)), ()))
    });
    Body::from_stream(stream)
}

/// What endless answers repeat.
const ZEROS: &[u8] = &[b' '; 64 << 10];

async fn manifest(
    State(content): State<Arc<Content>>,
    Path((name, _reference)): Path<(String, String)>,
) -> Response {
    let Some(attack) = Attack::from_repository(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match attack {
        Attack::TraversalDigest => {
            json(wasm_manifest("sha256:../../../../dev/zero", 100), MANIFEST)
        }
        Attack::HugeLayer => json(wasm_manifest(&sha256(b"huge"), 1 << 62), MANIFEST),
        Attack::EndlessBlob => json(wasm_manifest(&sha256(b"endless"), 1024), MANIFEST),
        Attack::EndlessManifest => (
            [(header::CONTENT_TYPE, MANIFEST)],
            endless(ZEROS, Duration::ZERO),
        )
            .into_response(),
        Attack::Trickle => (
            [(header::CONTENT_TYPE, MANIFEST)],
            endless(b" ", Duration::from_secs(1)),
        )
            .into_response(),
        Attack::DecompressionBomb => json(
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha256(&content.bomb_config),
                    "size": content.bomb_config.len(),
                },
                "layers": [{
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(&content.bomb_layer),
                    "size": content.bomb_layer.len(),
                }],
            }))
            .expect("a manifest encodes"),
            MANIFEST,
        ),
    }
}

async fn blob(
    State(content): State<Arc<Content>>,
    Path((name, digest)): Path<(String, String)>,
) -> Response {
    let octets = "application/octet-stream";
    match Attack::from_repository(&name) {
        Some(Attack::EndlessBlob) => endless(ZEROS, Duration::ZERO).into_response(),
        Some(Attack::DecompressionBomb) if digest == sha256(&content.bomb_layer) => {
            json(content.bomb_layer.clone(), octets)
        }
        Some(Attack::DecompressionBomb) if digest == sha256(&content.bomb_config) => {
            json(content.bomb_config.clone(), octets)
        }
        // A node that uses a traversal digest as a path reads its own /dev/zero, not this.
        _ if digest == sha256(EMPTY_CONFIG) => json(EMPTY_CONFIG, octets),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
