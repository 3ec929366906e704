//! Pushing a `.wasm` file to a registry as a CNCF wasm OCI artifact (layer `application/wasm`,
//! config `application/vnd.wasm.config.v0+json`), the format this node pulls, with the node's
//! registry credentials and plain-HTTP list.

use super::credentials::Keyring;
use super::digest_of;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::{Client, Reference};

/// Layer media type of the CNCF wasm artifact.
const WASM_LAYER: &str = "application/wasm";
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
    let reference: Reference = image
        .parse()
        .map_err(|e| PushError(format!("invalid image reference \"{image}\": {e}")))?;
    let config = serde_json::json!({
        "architecture": "wasm",
        "os": os,
        "layerDigests": [digest_of(&module)],
    });
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure.to_vec()),
        ..Default::default()
    });
    let auth = keyring.auth_for(reference.resolve_registry());
    let layers = [ImageLayer::new(module, WASM_LAYER.into(), None)];
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
