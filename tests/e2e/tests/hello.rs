//! A user's first pod: ../shared/examples/hello-wasm.yaml, unchanged but for the image, applied
//! with kubectl, scheduled by the cluster, run on the krustlet-wasi node, its logs read with
//! `kubectl logs`; and pods that may not run on the node are kept off it.

use e2e::{Cluster, has_phase};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::wait::Condition;

#[tokio::test]
async fn hello_wasm_runs_from_apply_to_succeeded_with_logs() -> anyhow::Result<()> {
    let cluster = Cluster::new("hello").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("hello-wasm").await?;
    let manifest = cluster
        .admin_kubeconfig()
        .with_file_name(format!("hello-{}.yaml", cluster.id));
    std::fs::write(&manifest, e2e::hello_wasm_manifest(&image)?)?;
    cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap_or_default()])?;
    let pod = cluster
        .wait_pod(
            "hello-wasm",
            "Succeeded (restartPolicy Always restarts it, so: Running with a completed run)",
            |p: Option<&Pod>| {
                let statuses = p
                    .and_then(|p| p.status.as_ref())
                    .and_then(|s| s.container_statuses.clone())
                    .unwrap_or_default();
                statuses.iter().any(|c| {
                    let finished = |st: &Option<k8s_openapi::api::core::v1::ContainerState>| {
                        st.as_ref()
                            .and_then(|s| s.terminated.as_ref())
                            .is_some_and(|t| {
                                t.exit_code == 0 && t.reason.as_deref() == Some("Completed")
                            })
                    };
                    finished(&c.state) || finished(&c.last_state)
                })
            },
        )
        .await?;
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(agent.name.as_str()),
        "scheduled to the wasm node"
    );
    let status = pod.status.clone().unwrap_or_default();
    let container = &status.container_statuses.clone().unwrap_or_default()[0];
    assert!(
        container.image_id.contains("@sha256:"),
        "imageID {:?}",
        container.image_id
    );
    assert!(
        container
            .container_id
            .as_deref()
            .unwrap_or_default()
            .starts_with("wasm://")
    );
    assert_eq!(status.host_ip, Some(e2e::node_ip()));
    let logs = cluster.kubectl(&["logs", "hello-wasm"])?;
    assert!(
        logs.contains("Hello, world! This is WebAssembly running as a Kubernetes pod."),
        "logs: {logs}"
    );
    assert!(logs.contains("hello from stderr!"), "logs: {logs}");
    // The kubelet's events come apart from the status: wait for the last of them.
    cluster
        .wait_events("hello-wasm", &["Pulled", "Created", "Started"])
        .await?;
    let described = cluster.kubectl(&["describe", "pod", "hello-wasm"])?;
    for expected in [
        "Scheduled",
        "Pulling",
        "Pulled",
        "Created",
        "Started",
        "kubelet",
    ] {
        assert!(
            described.contains(expected),
            "describe lacks {expected}:\n{described}"
        );
    }
    cluster.kubectl(&["delete", "pod", "hello-wasm", "--timeout=60s"])?;
    Ok(())
}

#[tokio::test]
async fn a_pod_without_the_toleration_is_not_scheduled_to_the_wasm_node() -> anyhow::Result<()> {
    let cluster = Cluster::new("untolerated").await?;
    let _agent = cluster.start_node().await?;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]}
    }))?;
    cluster.pods().create(&Default::default(), &pod).await?;
    let pending = cluster
        .eventually("a FailedScheduling event", async || {
            let events = cluster.pod_events("plain").await?;
            Ok(events
                .into_iter()
                .find(|e| e.starts_with("FailedScheduling")))
        })
        .await?;
    assert!(
        pending.contains("untolerated taint {krustlet/arch: wasm32-wasi}"),
        "{pending}"
    );
    let pod = cluster.pods().get("plain").await?;
    assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.clone()), None);
    assert!(
        has_phase("Pending").matches_object(Some(&pod)),
        "{:?}",
        pod.status
    );
    Ok(())
}
