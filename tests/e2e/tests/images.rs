//! Private registries: image pull secrets in both docker config formats, and a plain message
//! when credentials are missing.

use base64::Engine;
use e2e::{
    Cluster, Credentials, NodeAgent, container_state, has_phase, is_waiting, node_credentials,
    wasm_pod,
};
use k8s_openapi::api::core::v1::{LocalObjectReference, Pod, Secret};
use kube::api::{Api, PostParams};
use oci_client::secrets::RegistryAuth;
use serde_json::json;
use testkit::fixtures::{WASM_CONFIG_V1, WASM_LAYER_V1, push_as, wasm_module};
use testkit::registry::Registry;

fn with_pull_secret(mut pod: Pod, secret: &str) -> Pod {
    pod.spec.as_mut().expect("spec").image_pull_secrets = Some(vec![LocalObjectReference {
        name: secret.into(),
    }]);
    pod
}

#[tokio::test]
async fn private_images_are_pulled_with_the_pods_pull_secrets() -> anyhow::Result<()> {
    let cluster = Cluster::new("pullsecrets").await?;
    let private = Registry::start_with_auth("alice", "wonderland")?;
    let data_dir = tempfile::Builder::new().prefix("krustlet-node").tempdir()?;
    let name = format!("node-{}", cluster.id);
    let credentials =
        Credentials::Kubeconfig(node_credentials(&cluster, &name, data_dir.path()).await?);
    let agent = NodeAgent::start_with_args(
        &cluster,
        &name,
        data_dir,
        credentials,
        &["--insecure-registries", private.host()],
    )
    .await?;
    let image = format!("{}/private/probe:v1", private.host());
    let module = std::fs::read(wasm_module("wasi-probe")?)?;
    let alice = RegistryAuth::Basic("alice".into(), "wonderland".into());
    push_as(
        &image,
        module,
        WASM_LAYER_V1,
        b"{}".to_vec(),
        WASM_CONFIG_V1,
        &alice,
    )
    .await?;
    let pods = cluster.pods();

    pods.create(
        &PostParams::default(),
        &wasm_pod("nosecret", &image, &agent.name, &["print", "x"], "Never"),
    )
    .await?;
    let refused = cluster
        .wait_pod("nosecret", "ErrImagePull", is_waiting("ErrImagePull"))
        .await?;
    let message = container_state(&refused)
        .and_then(|s| s.waiting)
        .and_then(|w| w.message)
        .unwrap_or_default();
    assert!(
        message.contains("imagePullSecrets"),
        "the message says what to do: {message}"
    );

    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:wonderland");
    let config_json = json!({"auths": {private.host(): {"auth": auth}}}).to_string();
    secrets.create(&PostParams::default(), &serde_json::from_value(json!({
        "metadata": {"name": "regcred"}, "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": config_json}
    }))?).await?;
    let legacy =
        json!({private.host(): {"username": "alice", "password": "wonderland"}}).to_string();
    secrets.create(&PostParams::default(), &serde_json::from_value(json!({
        "metadata": {"name": "legacycred"}, "type": "kubernetes.io/dockercfg", "stringData": {".dockercfg": legacy}
    }))?).await?;

    pods.create(
        &PostParams::default(),
        &with_pull_secret(
            wasm_pod(
                "withsecret",
                &image,
                &agent.name,
                &["print", "pulled privately"],
                "Never",
            ),
            "regcred",
        ),
    )
    .await?;
    pods.create(
        &PostParams::default(),
        &with_pull_secret(
            wasm_pod(
                "legacy",
                &image,
                &agent.name,
                &["print", "legacy format"],
                "Never",
            ),
            "legacycred",
        ),
    )
    .await?;
    cluster
        .wait_pod("withsecret", "Succeeded", has_phase("Succeeded"))
        .await?;
    cluster
        .wait_pod("legacy", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert_eq!(
        cluster.kubectl(&["logs", "withsecret"])?,
        "pulled privately\n"
    );
    assert_eq!(cluster.kubectl(&["logs", "legacy"])?, "legacy format\n");

    pods.create(
        &PostParams::default(),
        &with_pull_secret(
            wasm_pod("missing", &image, &agent.name, &["print", "x"], "Never"),
            "no-such-secret",
        ),
    )
    .await?;
    let event = cluster
        .eventually("a FailedToRetrieveImagePullSecret event", async || {
            Ok(cluster
                .pod_events("missing")
                .await?
                .into_iter()
                .find(|e| e.starts_with("FailedToRetrieveImagePullSecret")))
        })
        .await?;
    assert!(event.contains("no-such-secret"), "{event}");
    Ok(())
}
