//! WebAssembly fixtures built from the repository's Rust sources (examples/), and pushes of
//! images to a registry: wasm artifacts in their media types, and ordinary container images.

use anyhow::{Context, bail};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Layer media type of Krustlet's wasm-to-oci images.
pub const WASM_LAYER_V1: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// Config media type of Krustlet's wasm-to-oci images.
pub const WASM_CONFIG_V1: &str = "application/vnd.wasm.config.v1+json";
/// Layer media type of the CNCF wasm OCI artifact.
pub const WASM_LAYER_CNCF: &str = "application/wasm";
/// Config media type of the CNCF wasm OCI artifact.
pub const WASM_CONFIG_CNCF: &str = "application/vnd.wasm.config.v0+json";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the testkit crate lives in the repository")
}

static BUILT: Mutex<bool> = Mutex::new(false);

/// Preview 1 modules, preview 2 components and waSCC actors built from examples/ (package
/// names).
const BUILDS: [(&str, &[&str]); 3] = [
    (
        "wasm32-wasip1",
        &[
            "hello-wasm",
            "wasi-probe",
            "spin-hello",
            "spin-hello-sdk5",
            "spin-kv",
            "spin-sqlite",
            "wagi-hello",
        ],
    ),
    ("wasm32-wasip2", &["wasi-probe", "http-probe"]),
    ("wasm32-unknown-unknown", &["http-actor"]),
];

/// Builds the guests in examples/ (once per process) and returns the path of `name`.wasm for
/// `target`.
fn built(target: &str, name: &str) -> anyhow::Result<PathBuf> {
    let root = repo_root();
    let target_dir = root.join("target/wasm");
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !*built {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        for (target, packages) in BUILDS {
            let mut command = std::process::Command::new(&cargo);
            command
                .args(["build", "--locked", "--release", "--target", target])
                .arg("--manifest-path")
                .arg(root.join("examples/Cargo.toml"))
                .arg("--target-dir")
                .arg(&target_dir);
            for package in packages {
                command.args(["-p", package]);
            }
            let output = command
                .output()
                .context("running cargo to build the wasm fixtures")?;
            if !output.status.success() {
                bail!(
                    "building the wasm fixtures failed (is the target installed? `rustup target add {target}`):\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        *built = true;
    }
    let path = target_dir.join(format!("{target}/release/{name}.wasm"));
    if !path.is_file() {
        bail!(
            "{} was not built: no such guest in examples/",
            path.display()
        );
    }
    Ok(path)
}

/// The WASI preview 1 module `name` (a package of examples/).
pub fn wasm_module(name: &str) -> anyhow::Result<PathBuf> {
    built("wasm32-wasip1", name)
}

/// The WASI preview 2 component `name` (a package of examples/; a library's name has `_` for
/// `-`).
pub fn wasm_component(name: &str) -> anyhow::Result<PathBuf> {
    built("wasm32-wasip2", name)
}

/// The waSCC actor `name` (a package of examples/, with `_` for `-`), unsigned.
pub fn wascc_actor(name: &str) -> anyhow::Result<PathBuf> {
    built("wasm32-unknown-unknown", name)
}

/// `module` signed as an actor named `name` by a new account, its claims granting
/// `capabilities` (what `wash claims sign` does).
pub fn sign_actor(module: &[u8], name: &str, capabilities: &[&str]) -> anyhow::Result<Vec<u8>> {
    let claims = wascc_runtime::claims::ActorClaims {
        name: name.to_string(),
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    };
    Ok(wascc_runtime::claims::sign(
        module,
        &nkeys::KeyPair::new_account(),
        &claims,
    )?)
}

fn client() -> Client {
    // The workspace uses ring; oci-client is built without a provider of its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

/// Pushes `bytes` as a one-layer image `reference` (`host/repo:tag`) with the given media types;
/// returns the manifest URL.
pub async fn push(
    reference: &str,
    layer: Vec<u8>,
    layer_type: &str,
    config: Vec<u8>,
    config_type: &str,
) -> anyhow::Result<String> {
    push_as(
        reference,
        layer,
        layer_type,
        config,
        config_type,
        &RegistryAuth::Anonymous,
    )
    .await
}

/// [`push`] with registry credentials.
pub async fn push_as(
    reference: &str,
    layer: Vec<u8>,
    layer_type: &str,
    config: Vec<u8>,
    config_type: &str,
    auth: &RegistryAuth,
) -> anyhow::Result<String> {
    let reference: Reference = reference
        .parse()
        .with_context(|| format!("parsing {reference}"))?;
    let layers = [ImageLayer::new(layer, layer_type.to_string(), None)];
    let config = Config::new(config, config_type.to_string(), None);
    let response = client()
        .push(&reference, &layers, config, auth, None)
        .await
        .context("pushing to the registry")?;
    Ok(response.manifest_url)
}

/// Pushes a wasm module as Krustlet's wasm-to-oci artifact.
pub async fn push_wasm(reference: &str, module: &[u8]) -> anyhow::Result<String> {
    push(
        reference,
        module.to_vec(),
        WASM_LAYER_V1,
        b"{}".to_vec(),
        WASM_CONFIG_V1,
    )
    .await
}

/// Pushes an ordinary linux/amd64 container image (a gzipped tar layer) to `reference`.
pub async fn push_container_image(reference: &str) -> anyhow::Result<String> {
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "config": {"Cmd": ["/bin/sh"]}});
    let layer = gzip_empty_tar();
    push(
        reference,
        layer,
        oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE,
        serde_json::to_vec(&config)?,
        oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE,
    )
    .await
}

/// Pushes `module` the way runwasi-style tooling builds wasm images (`docker buildx --platform
/// wasi/wasm`): an ordinary OCI image for platform wasi/wasm whose gzipped filesystem layer
/// holds the module at `path` (absolute), named by `entrypoint` in the image config.
pub async fn push_wasi_platform_image(
    reference: &str,
    module: &[u8],
    path: &str,
    entrypoint: &[&str],
) -> anyhow::Result<String> {
    push_wasi_filesystem_image(reference, &[(path, module)], entrypoint).await
}

/// Pushes an ordinary OCI image for platform wasi/wasm whose one gzipped filesystem layer holds
/// `files` (absolute paths and contents), with `entrypoint` in its config (none: a Spin app's
/// image, `FROM scratch` with `spin.toml` at its root).
pub async fn push_wasi_filesystem_image(
    reference: &str,
    files: &[(&str, &[u8])],
    entrypoint: &[&str],
) -> anyhow::Result<String> {
    use sha2::Digest as _;
    let mut archive = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        archive.append_data(&mut header, path.trim_start_matches('/'), *content)?;
    }
    let tar = archive.into_inner()?;
    let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&tar)));
    let mut config = serde_json::json!({
        "architecture": "wasm", "os": "wasi",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "config": {},
    });
    if !entrypoint.is_empty() {
        config["config"]["Entrypoint"] = serde_json::json!(entrypoint);
    }
    push(
        reference,
        gzip(&tar),
        oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE,
        serde_json::to_vec(&config)?,
        oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE,
    )
    .await
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(bytes)
        .expect("writing to memory cannot fail");
    encoder.finish().expect("writing to memory cannot fail")
}

fn gzip_empty_tar() -> Vec<u8> {
    // An empty tar archive is two zero blocks.
    gzip(&[0u8; 1024])
}

/// The digest and size of the manifest `reference` names.
pub async fn manifest_digest(reference: &str) -> anyhow::Result<(String, i64)> {
    let reference: Reference = reference
        .parse()
        .with_context(|| format!("parsing {reference}"))?;
    let accepted = [
        oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
        oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
    ];
    let (bytes, digest) = client()
        .pull_manifest_raw(&reference, &RegistryAuth::Anonymous, &accepted)
        .await
        .context("reading the manifest")?;
    Ok((digest, i64::try_from(bytes.len())?))
}

/// Pushes an image index to `reference` listing manifests of the same repository by
/// `(digest, size, os, architecture)`.
pub async fn push_index(
    reference: &str,
    entries: &[(String, i64, &str, &str)],
) -> anyhow::Result<()> {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(digest, size, os, arch)| {
            serde_json::json!({"mediaType": oci_client::manifest::OCI_IMAGE_MEDIA_TYPE, "digest": digest, "size": size,
                "platform": {"os": os, "architecture": arch}})
        })
        .collect();
    let index: oci_client::manifest::OciImageIndex = serde_json::from_value(serde_json::json!({
        "schemaVersion": 2, "mediaType": oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE, "manifests": manifests,
    }))?;
    let reference: Reference = reference
        .parse()
        .with_context(|| format!("parsing {reference}"))?;
    client()
        .push_manifest_list(&reference, &RegistryAuth::Anonymous, index)
        .await
        .context("pushing the index")?;
    Ok(())
}
