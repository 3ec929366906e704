//! Pushing to a registry with the node's registry credentials and plain-HTTP list: a `.wasm`
//! file as a CNCF wasm OCI artifact (layer `application/wasm`, config
//! `application/vnd.wasm.config.v0+json`), and a Spin app as `spin registry push` lays it out
//! (its locked app, component and file layers), the formats this node pulls.

use super::credentials::Keyring;
use super::digest_of;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::{Client, Reference};

/// Layer media type of the CNCF wasm artifact.
const WASM_LAYER: &str = "application/wasm";
/// Layer media type of a Spin app's components.
const SPIN_WASM_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// Config media type of the CNCF wasm artifact.
const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";

/// A push failed; the message says why and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PushError(pub String);

/// Pushes `module` as `image`; returns the pushed manifest's URL.
pub async fn push_module(
    image: &str,
    module: Vec<u8>,
    keyring: &Keyring,
    insecure: &[String],
) -> Result<String, PushError> {
    let os = match module.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => "wasip1",
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => "wasip2",
        _ => {
            return Err(PushError(
                "the file is not WebAssembly (it does not start with the \\0asm header); push a .wasm module or component".into(),
            ));
        }
    };
    let config = serde_json::json!({
        "architecture": "wasm",
        "os": os,
        "layerDigests": [digest_of(&module)],
    });
    push_layers(image, vec![(module, WASM_LAYER)], config, keyring, insecure).await
}

/// The layers of a Spin app pushed as `spin registry push` does.
#[derive(Debug)]
pub struct SpinAppLayers {
    /// The locked app's JSON.
    pub locked: Vec<u8>,
    /// Each component's wasm.
    pub components: Vec<Vec<u8>>,
    /// Each file not inlined in the locked app.
    pub files: Vec<Vec<u8>>,
}

/// Pushes a Spin app as `image`; returns the pushed manifest's URL.
pub async fn push_spin_app(
    image: &str,
    app: SpinAppLayers,
    keyring: &Keyring,
    insecure: &[String],
) -> Result<String, PushError> {
    use super::bundle::{DATA_MEDIA_TYPE, LOCKED_APP_MEDIA_TYPE};
    let mut layers: Vec<(Vec<u8>, &str)> = Vec::new();
    layers.extend(app.components.into_iter().map(|c| (c, SPIN_WASM_LAYER)));
    layers.extend(app.files.into_iter().map(|f| (f, DATA_MEDIA_TYPE)));
    layers.push((app.locked, LOCKED_APP_MEDIA_TYPE));
    let config = serde_json::json!({
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": layers.iter().map(|(bytes, _)| digest_of(bytes)).collect::<Vec<_>>(),
    });
    push_layers(image, layers, config, keyring, insecure).await
}

/// Pushes `layers` (bytes and media type) with a wasm artifact's `config` as `image`.
async fn push_layers(
    image: &str,
    layers: Vec<(Vec<u8>, &str)>,
    config: serde_json::Value,
    keyring: &Keyring,
    insecure: &[String],
) -> Result<String, PushError> {
    let reference: Reference = image
        .parse()
        .map_err(|e| PushError(format!("invalid image reference \"{image}\": {e}")))?;
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure.to_vec()),
        ..Default::default()
    });
    let auth = keyring.auth_for(reference.resolve_registry());
    let layers: Vec<ImageLayer> = layers
        .into_iter()
        .map(|(bytes, media_type)| ImageLayer::new(bytes, media_type.into(), None))
        .collect();
    let config = Config::new(
        serde_json::to_vec(&config).expect("a JSON value encodes"),
        WASM_CONFIG.into(),
        None,
    );
    let pushed = client
        .push(&reference, &layers, config, &auth, None)
        .await
        .map_err(|e| PushError(super::media::explain_push_error(image, &e)))?;
    Ok(pushed.manifest_url)
}
