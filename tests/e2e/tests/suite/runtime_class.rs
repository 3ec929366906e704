//! RuntimeClasses, as SpinKube uses them: a pod names only its RuntimeClass, whose `scheduling`
//! (merged in by the API server's admission plugin) steers it to a wasm node that runs its
//! handler; a handler the node does not run gets no sandbox, as containerd's; a RuntimeClass
//! that does not exist refuses the pod at the API server.

use e2e::{Cluster, free_ports, http_get};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::Api;
use kube::api::PostParams;

/// Deletes the test's RuntimeClasses (cluster-wide objects) when dropped.
struct Classes {
    api: Api<RuntimeClass>,
    admin: &'static std::path::Path,
    names: Vec<String>,
}

impl Classes {
    /// Creates RuntimeClass `name` of `handler`, scheduling its pods to nodes labelled
    /// `label` and tolerating the wasm nodes' taint, as SpinKube's RuntimeClass does with
    /// `kubernetes.io/arch`.
    async fn create(
        &mut self,
        name: &str,
        handler: &str,
        label: (&str, &str),
    ) -> anyhow::Result<()> {
        let class: RuntimeClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": name},
            "handler": handler,
            "scheduling": {
                "nodeSelector": {label.0: label.1},
                "tolerations": [{"key": "krustlet/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoExecute"}],
            },
        }))?;
        self.api.create(&PostParams::default(), &class).await?;
        self.names.push(name.to_string());
        Ok(())
    }
}

impl Drop for Classes {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(self.admin)
                .args([
                    "delete",
                    "runtimeclass",
                    name,
                    "--wait=false",
                    "--ignore-not-found",
                ])
                .output();
        }
    }
}

/// A pod as spin-operator makes one: no node, no tolerations, no selector; only its
/// RuntimeClass and its port.
fn operator_pod(name: &str, image: &str, class: &str, port: u16) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "runtimeClassName": class,
            "containers": [{"name": "app", "image": image, "ports": [{"name": "http-app", "containerPort": port}]}],
        }
    }))?)
}

#[tokio::test]
async fn a_runtime_class_steers_pods_here_and_only_its_handlers_run() -> anyhow::Result<()> {
    let cluster = Cluster::new("runtime-class").await?;
    let label = ("e2e.krustlet.dev/runtime-class", cluster.id.clone());
    let agent = cluster
        .start_node_with(&["--node-labels", &format!("{}={}", label.0, label.1)])
        .await?;
    let image = cluster.push_component("http_probe").await?;
    let mut classes = Classes {
        api: Api::all(cluster.client.clone()),
        admin: cluster.admin_kubeconfig(),
        names: Vec::new(),
    };
    let wasm = format!("wasm-{}", cluster.id);
    let containers = format!("containers-{}", cluster.id);
    classes.create(&wasm, "spin", (label.0, &label.1)).await?;
    classes
        .create(&containers, "runc", (label.0, &label.1))
        .await?;
    let [served, refused] = free_ports()?;

    // The API server merged the class's scheduling into the pod; the scheduler put it here.
    cluster
        .create_pod(operator_pod("spin-app", &image, &wasm, served)?)
        .await?;
    let running = cluster
        .wait_pod("spin-app", "Ready", e2e::is_pod_ready())
        .await?;
    let spec = running.spec.expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some(agent.name.as_str()));
    assert_eq!(
        spec.node_selector.unwrap_or_default().get(label.0),
        Some(&label.1)
    );
    assert_eq!(http_get(served, "/").await?.0, 200);

    // A handler this node does not run: no sandbox, said in an event, the pod left pending.
    cluster
        .create_pod(operator_pod("runc-app", &image, &containers, refused)?)
        .await?;
    let events = cluster
        .wait_events("runc-app", &["FailedCreatePodSandBox"])
        .await?;
    let said = events.join("\n");
    assert!(said.contains("no runtime for \"runc\""), "{said}");
    let pending = cluster.pods().get("runc-app").await?;
    assert_eq!(
        pending.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );

    // A RuntimeClass that does not exist: the API server refuses the pod.
    let missing = format!("missing-{}", cluster.id);
    // (Past the namespace's default ServiceAccount, which the pods above waited for.)
    let error = cluster
        .pods()
        .create(
            &PostParams::default(),
            &operator_pod("lost", &image, &missing, refused)?,
        )
        .await
        .expect_err("a pod of a missing RuntimeClass is refused");
    let error = format!("{error:#}");
    assert!(
        error.contains(&format!("RuntimeClass \"{missing}\" not found")),
        "{error}"
    );
    Ok(())
}
