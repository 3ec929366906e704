//! The test registry, with and without basic auth, is a real OCI registry.

use oci_client::secrets::RegistryAuth;
use testkit::fixtures::{WASM_CONFIG_CNCF, WASM_LAYER_CNCF, push, push_as};
use testkit::registry::Registry;

const MODULE: &[u8] = b"\0asm\x01\0\0\0";

#[tokio::test]
async fn an_open_registry_takes_pushes_from_anyone() -> anyhow::Result<()> {
    let registry = Registry::start()?;
    let image = format!("{}/open/module:v1", registry.host());
    push(
        &image,
        MODULE.to_vec(),
        WASM_LAYER_CNCF,
        b"{}".to_vec(),
        WASM_CONFIG_CNCF,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_registry_with_htpasswd_auth_refuses_anonymous_clients() -> anyhow::Result<()> {
    let registry = Registry::start_with_auth("alice", "wonderland")?;
    let image = format!("{}/private/module:v1", registry.host());
    let anonymous = push(
        &image,
        MODULE.to_vec(),
        WASM_LAYER_CNCF,
        b"{}".to_vec(),
        WASM_CONFIG_CNCF,
    )
    .await;
    assert!(anonymous.is_err(), "an anonymous push must be refused");
    let wrong = RegistryAuth::Basic("alice".into(), "queen".into());
    assert!(
        push_as(
            &image,
            MODULE.to_vec(),
            WASM_LAYER_CNCF,
            b"{}".to_vec(),
            WASM_CONFIG_CNCF,
            &wrong
        )
        .await
        .is_err()
    );
    let right = RegistryAuth::Basic("alice".into(), "wonderland".into());
    push_as(
        &image,
        MODULE.to_vec(),
        WASM_LAYER_CNCF,
        b"{}".to_vec(),
        WASM_CONFIG_CNCF,
        &right,
    )
    .await?;
    Ok(())
}
