//! Which manifests and layers are WebAssembly, and messages for the ones that are not.

use super::PullError;
use super::registry::RegistryError;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest};

/// Layer media types that hold a wasm module or component.
pub const WASM_LAYER_TYPES: &[&str] = &[
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
];

/// The layer holding the module, if the manifest is a wasm artifact.
pub fn wasm_layer(manifest: &OciImageManifest) -> Option<&OciDescriptor> {
    manifest
        .layers
        .iter()
        .find(|l| WASM_LAYER_TYPES.contains(&l.media_type.as_str()))
}

fn platform_string(entry: &ImageIndexEntry) -> Option<(String, String)> {
    let p = serde_json::to_value(entry.platform.as_ref()?).ok()?;
    Some((
        p["os"].as_str()?.to_string(),
        p["architecture"].as_str()?.to_string(),
    ))
}

/// The wasi/wasm entry of an image index.
pub fn pick_wasm_platform<'a>(
    image: &str,
    index: &'a OciImageIndex,
) -> Result<&'a ImageIndexEntry, PullError> {
    let platforms: Vec<(String, String)> =
        index.manifests.iter().filter_map(platform_string).collect();
    index
        .manifests
        .iter()
        .find(|m| platform_string(m).is_some_and(|(os, arch)| os == "wasi" || arch == "wasm" || arch == "wasm32"))
        .ok_or_else(|| {
            let listed: Vec<String> = platforms.iter().map(|(os, arch)| format!("{os}/{arch}")).collect();
            PullError::NotWasm(format!(
                "image \"{image}\" is a multi-platform OCI container image ({}), not WebAssembly: it has no wasi/wasm platform; schedule this pod to a node that runs containers, or push a wasm build of it",
                listed.join(", ")
            ))
        })
}

/// The `os/architecture` in an image config blob.
pub fn platform_of_config(config: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(config).ok()?;
    Some(format!(
        "{}/{}",
        v["os"].as_str()?,
        v["architecture"].as_str()?
    ))
}

/// Says plainly what the image is instead of WebAssembly, and what to do.
pub fn not_wasm_message(
    image: &str,
    manifest: &OciImageManifest,
    platform: Option<&str>,
) -> String {
    let config = manifest.config.media_type.as_str();
    let container_config = config == oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE
        || config == oci_client::manifest::IMAGE_DOCKER_CONFIG_MEDIA_TYPE;
    if container_config {
        let platform = platform.map(|p| format!(" ({p})")).unwrap_or_default();
        return format!(
            "image \"{image}\" is an OCI container image{platform}, not a WebAssembly module: this node runs only wasm; schedule this pod to a node that runs containers (it tolerates the krustlet/arch taint or selects kubernetes.io/arch of this node)"
        );
    }
    let layers: Vec<&str> = manifest
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    format!(
        "image \"{image}\" is not a WebAssembly artifact: its config is {config} and its layers are [{}]; a wasm image has a layer of type {}",
        layers.join(", "),
        WASM_LAYER_TYPES.join(" or ")
    )
}

/// Turns a failed pull into a sentence that names the image and the cause.
pub fn explain_registry_error(image: &str, error: &RegistryError) -> String {
    explain("pull", image, error, error.is_unauthorized())
}

/// Turns a failed push (oci-client's error) into a sentence that names the image and the cause.
pub fn explain_push_error(image: &str, error: &OciDistributionError) -> String {
    let unauthorized = matches!(
        error,
        OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::UnauthorizedError { .. }
    );
    explain("push", image, error, unauthorized)
}

fn explain(verb: &str, image: &str, error: &dyn std::error::Error, unauthorized: bool) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        if !text.contains(&cause.to_string()) {
            text = format!("{text}: {cause}");
        }
        source = cause.source();
    }
    let unauthorized =
        unauthorized || text.contains("401") || text.to_lowercase().contains("unauthorized");
    let hint = if unauthorized {
        "; the registry wants credentials: reference a kubernetes.io/dockerconfigjson secret for it in the pod's imagePullSecrets, or give the node --image-credentials"
    } else {
        ""
    };
    format!("failed to {verb} image \"{image}\": {text}{hint}")
}
