//! Static pods on a node joined to a cluster: read from --pod-manifest-path, run without a
//! scheduler or the node's toleration, mirrored to the API server as mirror pods.

use e2e::{Cluster, is_running_after_restarts, wasm_pod};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::DeleteParams;
use kube::runtime::wait::Condition;

#[tokio::test]
async fn static_pods_run_mirrored_and_outlive_their_mirror_but_not_their_manifest()
-> anyhow::Result<()> {
    let cluster = Cluster::new("static").await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let manifests = testkit::scratch::tempdir("static-pods")?;
    // As an operator writes it: no node, no toleration of the node's taint.
    let mut manifest = wasm_pod("web", &image, "", &["print", "up", "forever"], "Always");
    manifest.metadata.namespace = Some(cluster.namespace.clone());
    let spec = manifest.spec.as_mut().expect("spec");
    spec.node_name = None;
    spec.tolerations = None;
    let file = manifests.path().join("web.json");
    std::fs::write(&file, serde_json::to_vec(&manifest)?)?;
    let mut other = manifest.clone();
    other.metadata.name = Some("other".into());
    let other_file = manifests.path().join("other.json");
    std::fs::write(&other_file, serde_json::to_vec(&other)?)?;
    let mut agent = cluster
        .start_node_with(&[
            "--pod-manifest-path",
            manifests.path().to_str().expect("utf-8 path"),
            "--file-check-frequency",
            "2s",
        ])
        .await?;
    let mirror_name = format!("web-{}", agent.name);

    let mirror = cluster
        .wait_pod(
            &mirror_name,
            "mirrored and running",
            is_running_after_restarts(0),
        )
        .await?;
    assert!(
        mirror
            .annotations()
            .contains_key("kubernetes.io/config.mirror"),
        "{:?}",
        mirror.metadata
    );
    let owner = mirror
        .owner_references()
        .first()
        .cloned()
        .expect("an owner");
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Node", agent.name.as_str())
    );
    let logs = cluster.kubectl(&["logs", "-n", &cluster.namespace, &mirror_name])?;
    assert!(logs.contains("up"), "{logs}");

    // Deleting the mirror pod does not stop the static pod: it is mirrored again.
    let first_uid = mirror.uid();
    cluster
        .pods()
        .delete(&mirror_name, &DeleteParams::default())
        .await?;
    let remirrored = cluster
        .wait_pod(&mirror_name, "mirrored again", |pod: Option<&Pod>| {
            pod.is_some_and(|p| p.uid() != first_uid && p.metadata.deletion_timestamp.is_none())
                && is_running_after_restarts(0).matches_object(pod)
        })
        .await?;
    assert!(
        remirrored
            .annotations()
            .contains_key("kubernetes.io/config.mirror")
    );

    // A manifest removed while the node is down: its mirror pod goes once the node is back
    // (the node learns of it from its own pod watch, the only way it may list pods).
    let other_mirror = format!("other-{}", agent.name);
    cluster
        .wait_pod(&other_mirror, "mirrored", |pod: Option<&Pod>| pod.is_some())
        .await?;
    agent.terminate()?;
    std::fs::remove_file(&other_file)?;
    agent.start_again().await?;
    e2e::wait_for(cluster.pods(), &other_mirror, |pod: Option<&Pod>| {
        pod.is_none()
    })
    .await?;
    cluster
        .wait_pod(&mirror_name, "still mirrored", is_running_after_restarts(0))
        .await?;

    // Removing the manifest stops the static pod and deletes its mirror.
    std::fs::remove_file(&file)?;
    e2e::wait_for(cluster.pods(), &mirror_name, |pod: Option<&Pod>| {
        pod.is_none()
    })
    .await?;
    Ok(())
}
