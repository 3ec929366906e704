//! Volumes as WASI preopened directories: the service account volume every cluster injects,
//! configMap, secret and emptyDir volumes, read-only mounts, and a missing ConfigMap that
//! holds the pod in ContainerCreating until it appears.

use e2e::{Cluster, container_state, has_phase, is_waiting, waiting_message, wasm_pod};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn with_volumes(mut pod: Pod, volumes: serde_json::Value, mounts: serde_json::Value) -> Pod {
    let spec = pod.spec.as_mut().expect("spec");
    spec.volumes = Some(serde_json::from_value(volumes).expect("volumes"));
    spec.containers[0].volume_mounts = Some(serde_json::from_value(mounts).expect("mounts"));
    pod
}

#[tokio::test]
async fn the_service_account_volume_is_mounted_read_only() -> anyhow::Result<()> {
    let cluster = Cluster::new("savolume").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let namespace_file = format!("{SA_DIR}/namespace");
    let args = [
        "read",
        &namespace_file,
        "ls",
        SA_DIR,
        "write",
        &format!("{SA_DIR}/x"),
        "nope",
    ];
    cluster
        .create_pod(wasm_pod("reader", &image, &agent.name, &args, "Never"))
        .await?;
    let pod = cluster
        .wait_pod(
            "reader",
            "Failed (the write must fail)",
            has_phase("Failed"),
        )
        .await?;
    let logs = cluster.kubectl(&["logs", "reader"])?;
    let mut lines = logs.lines();
    assert_eq!(lines.next(), Some(cluster.namespace.as_str()), "{logs}");
    let listing = lines.next().unwrap_or_default();
    for name in ["ca.crt", "namespace", "token"] {
        assert!(
            listing.split(' ').any(|n| n == name),
            "{name} missing from {listing:?}"
        );
    }
    assert!(
        logs.contains(&format!("write {SA_DIR}/x")),
        "the write is refused: {logs}"
    );
    assert_eq!(
        container_state(&pod)
            .and_then(|s| s.terminated)
            .map(|t| t.exit_code),
        Some(2)
    );
    Ok(())
}

#[tokio::test]
async fn config_maps_secrets_and_empty_dirs_become_files() -> anyhow::Result<()> {
    let cluster = Cluster::new("volumes").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "settings"}, "data": {"greeting": "hello", "other": "x"}}),
        )?,
    )
    .await?;
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}}),
            )?,
        )
        .await?;
    let volumes = json!([
        {"name": "config", "configMap": {"name": "settings", "items": [{"key": "greeting", "path": "sub/greeting.txt"}]}},
        {"name": "creds", "secret": {"secretName": "creds"}},
        {"name": "scratch", "emptyDir": {}},
    ]);
    let mounts = json!([
        {"name": "config", "mountPath": "/etc/config"},
        {"name": "creds", "mountPath": "/etc/creds"},
        {"name": "scratch", "mountPath": "/scratch"},
    ]);
    let args = [
        "read",
        "/etc/config/sub/greeting.txt",
        "read",
        "/etc/creds/password",
        "write",
        "/scratch/note",
        "kept",
        "read",
        "/scratch/note",
    ];
    let pod = with_volumes(
        wasm_pod("files", &image, &agent.name, &args, "Never"),
        volumes.clone(),
        mounts.clone(),
    );
    cluster.create_pod(pod).await?;
    cluster
        .wait_pod("files", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert_eq!(
        cluster.kubectl(&["logs", "files"])?,
        "hello\ns3cret\nkept\n"
    );

    // A ConfigMap that does not exist yet holds the pod in ContainerCreating, with FailedMount events...
    let late_volumes = json!([{"name": "config", "configMap": {"name": "late"}}]);
    let late_mounts = json!([{"name": "config", "mountPath": "/etc/late"}]);
    let pod = with_volumes(
        wasm_pod(
            "waits",
            &image,
            &agent.name,
            &["read", "/etc/late/key"],
            "Never",
        ),
        late_volumes,
        late_mounts,
    );
    cluster.create_pod(pod).await?;
    let event = cluster
        .eventually("a FailedMount event", async || {
            Ok(cluster
                .pod_events("waits")
                .await?
                .into_iter()
                .find(|e| e.starts_with("FailedMount")))
        })
        .await?;
    assert!(
        event.contains(
            "MountVolume.SetUp failed for volume \"config\" : configmap \"late\" not found"
        ),
        "{event}"
    );
    cluster
        .wait_pod(
            "waits",
            "ContainerCreating",
            is_waiting("ContainerCreating"),
        )
        .await?;
    // ...and it starts once the ConfigMap appears.
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "late"}, "data": {"key": "arrived"}}))?,
    )
    .await?;
    cluster
        .wait_pod("waits", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert_eq!(cluster.kubectl(&["logs", "waits"])?, "arrived\n");
    Ok(())
}

#[tokio::test]
async fn environment_from_config_maps_and_secrets() -> anyhow::Result<()> {
    let cluster = Cluster::new("envfrom").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "app"}, "data": {"MODE": "fast", "LEVEL": "3"}}),
        )?,
    )
    .await?;
    let env_pod = |name: &str| -> anyhow::Result<Pod> {
        let mut pod = wasm_pod(name, &image, &agent.name, &["env"], "Never");
        let container = &mut pod.spec.as_mut().expect("spec").containers[0];
        container.env_from = Some(serde_json::from_value(
            json!([{"prefix": "APP_", "configMapRef": {"name": "app"}}]),
        )?);
        container.env = Some(serde_json::from_value(json!([
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}},
            {"name": "LEVEL_TWICE", "value": "$(APP_LEVEL)$(APP_LEVEL)"},
        ]))?);
        Ok(pod)
    };
    cluster.create_pod(env_pod("envs")?).await?;
    // The secret does not exist yet: CreateContainerConfigError with the kubelet's message.
    let waiting = cluster
        .wait_pod(
            "envs",
            "CreateContainerConfigError",
            is_waiting("CreateContainerConfigError"),
        )
        .await?;
    let message = waiting_message(&waiting);
    assert_eq!(message, "secret \"later\" not found");
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "later"}, "stringData": {"token": "t0k3n"}}),
            )?,
        )
        .await?;
    cluster
        .wait_pod("envs", "Succeeded", has_phase("Succeeded"))
        .await?;
    let logs = cluster.kubectl(&["logs", "envs"])?;
    for line in [
        "APP_MODE=fast",
        "APP_LEVEL=3",
        "TOKEN=t0k3n",
        "LEVEL_TWICE=33",
    ] {
        assert!(
            logs.lines().any(|l| l == line),
            "{line} missing from:\n{logs}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn resource_fields_reach_env_and_downward_api_files() -> anyhow::Result<()> {
    let cluster = Cluster::new("resourcefields").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let mut pod = with_volumes(
        wasm_pod(
            "sized",
            &image,
            &agent.name,
            &["env", "read", "/etc/info/mem"],
            "Never",
        ),
        json!([{"name": "info", "downwardAPI": {"items": [
            {"path": "mem", "resourceFieldRef": {"containerName": "main", "resource": "limits.memory", "divisor": "1Mi"}}
        ]}}]),
        json!([{"name": "info", "mountPath": "/etc/info"}]),
    );
    let container = &mut pod.spec.as_mut().expect("spec").containers[0];
    container.resources = Some(serde_json::from_value(
        json!({"limits": {"cpu": "250m", "memory": "64Mi"}}),
    )?);
    container.env = Some(serde_json::from_value(json!([
        {"name": "CPU_MILLIS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
        {"name": "CPU_CORES", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        {"name": "MEM_REQUEST", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory"}}},
    ]))?);
    cluster.create_pod(pod).await?;
    cluster
        .wait_pod("sized", "Succeeded", has_phase("Succeeded"))
        .await?;
    let logs = cluster.kubectl(&["logs", "sized"])?;
    assert!(logs.contains("CPU_MILLIS=250\n"), "{logs}");
    assert!(logs.contains("CPU_CORES=1\n"), "rounded up: {logs}");
    // The API server defaults requests to the limits when only limits are set.
    assert!(
        logs.contains(&format!("MEM_REQUEST={}\n", 64 << 20)),
        "{logs}"
    );
    assert!(logs.ends_with("64\n"), "{logs}");
    Ok(())
}
