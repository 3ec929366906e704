//! Volumes as WASI preopened directories: the service account volume every cluster injects,
//! configMap, secret and emptyDir volumes, read-only mounts, a missing ConfigMap that holds the
//! pod in ContainerCreating until it appears, updates reaching running guests, subPath,
//! subPathExpr and workingDir, refused escapes, and emptyDir size limits.

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

#[tokio::test]
async fn mounted_config_maps_and_secrets_follow_their_updates() -> anyhow::Result<()> {
    let cluster = Cluster::new("volume-updates").await?;
    // The kubelet's --sync-frequency (default 1m), shortened for the test.
    let agent = cluster.start_node_with(&["--sync-frequency", "1s"]).await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "live"}, "data": {"greeting": "hello"}}),
        )?,
    )
    .await?;
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "live"}, "stringData": {"token": "one"}}),
            )?,
        )
        .await?;
    // Two containers, each following one file of its volume.
    let mut pod = with_volumes(
        wasm_pod(
            "follower",
            &image,
            &agent.name,
            &["follow", "/config/greeting"],
            "Never",
        ),
        json!([
            {"name": "config", "configMap": {"name": "live"}},
            {"name": "secret", "secret": {"secretName": "live"}},
        ]),
        json!([{"name": "config", "mountPath": "/config"}]),
    );
    let spec = pod.spec.as_mut().expect("spec");
    let mut second = spec.containers[0].clone();
    second.name = "secret".into();
    second.args = Some(vec!["follow".into(), "/secret/token".into()]);
    second.volume_mounts = Some(serde_json::from_value(
        json!([{"name": "secret", "mountPath": "/secret"}]),
    )?);
    spec.containers.push(second);
    cluster.create_pod(pod).await?;
    cluster
        .wait_pod("follower", "Running", has_phase("Running"))
        .await?;
    let logged = async |container: &str, text: &str| {
        cluster
            .eventually(
                &format!("{text:?} in the output of {container}"),
                async || {
                    let logs = cluster.kubectl(&["logs", "follower", "-c", container])?;
                    Ok(logs.contains(text).then_some(()))
                },
            )
            .await
    };
    logged("main", "/config/greeting: hello").await?;
    logged("secret", "/secret/token: one").await?;
    cms.patch(
        "live",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"data": {"greeting": "hola"}})),
    )
    .await?;
    secrets
        .patch(
            "live",
            &Default::default(),
            &kube::api::Patch::Merge(json!({"stringData": {"token": "two"}})),
        )
        .await?;
    // The running guests see the new content, switched atomically, without a restart.
    logged("main", "/config/greeting: hola").await?;
    logged("secret", "/secret/token: two").await?;
    let pod = cluster.pods().get("follower").await?;
    let restarts: Vec<i32> = pod
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .iter()
        .map(|c| c.restart_count)
        .collect();
    assert_eq!(restarts, [0, 0]);
    // The objects are kept by watches, as the kubelet's watch-based manager keeps them: volume
    // syncs (every second here) read no ConfigMap or Secret from the API server. (Counted by
    // the stand-in; a real cluster does not tell.)
    if let Some(standin) = cluster.standin() {
        let node = format!("system:node:{}", agent.name);
        let before = standin.request_counts(&node).config_reads;
        let window = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while tokio::time::Instant::now() < window {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let reads = standin.request_counts(&node).config_reads;
            assert_eq!(
                reads, before,
                "volume syncs read ConfigMaps or Secrets again"
            );
        }
    }
    Ok(())
}

/// How much of a core the agent may use while 20 pods mount an unchanged ConfigMap of 1000 KiB
/// and sync their volumes every second. Measured in a debug build: 0.014 (140 ms in 10 s);
/// rendering and hashing the ConfigMap at each sync, as before, cost about 0.04 per 10 pods.
const IDLE_SYNC_CPU_SHARE: f64 = 0.05;

#[tokio::test]
async fn a_large_config_map_costs_little_at_each_sync() -> anyhow::Result<()> {
    let cluster = Cluster::new("volume-cost").await?;
    let agent = cluster.start_node_with(&["--sync-frequency", "1s"]).await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    // Near the API server's 1 MiB limit on a ConfigMap's data.
    let blob = "x".repeat(1000 << 10);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "big"}, "data": {"blob": blob}}))?,
    )
    .await?;
    let pods = 20;
    for i in 0..pods {
        let pod = with_volumes(
            wasm_pod(
                &format!("reader-{i}"),
                &image,
                &agent.name,
                &["forever"],
                "Always",
            ),
            json!([{"name": "config", "configMap": {"name": "big"}}]),
            json!([{"name": "config", "mountPath": "/config"}]),
        );
        cluster.create_pod(pod).await?;
    }
    for i in 0..pods {
        cluster
            .wait_pod(&format!("reader-{i}"), "Running", has_phase("Running"))
            .await?;
    }
    // Every pod syncs its volume every second; nothing changed, so nothing is rendered again.
    let window = std::time::Duration::from_secs(10);
    let before = e2e::cpu_time(agent.pid());
    tokio::time::sleep(window).await;
    let used = e2e::cpu_time(agent.pid()).saturating_sub(before);
    let share = used.as_secs_f64() / window.as_secs_f64();
    eprintln!(
        "agent CPU while syncing {pods} volumes of 1000 KiB every second: {used:?} in {window:?}"
    );
    assert!(
        share < IDLE_SYNC_CPU_SHARE,
        "the agent used {used:?} of CPU in {window:?} re-syncing unchanged volumes"
    );
    Ok(())
}

#[tokio::test]
async fn sub_paths_and_the_working_directory() -> anyhow::Result<()> {
    let cluster = Cluster::new("subpaths").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let args = [
        "write",
        "/conf/setting",
        "on", // into data/app/conf through the subPath
        "write",
        "/mine/note",
        "mine", // into data/pods/<pod name> through the subPathExpr
        "write",
        "relative.txt",
        "here", // into the workingDir
        "ls",
        "/data/app/conf",
        "read",
        "/data/pods/paths/note",
        "read",
        "/data/work/relative.txt",
        "env",
    ];
    let mut pod = with_volumes(
        wasm_pod("paths", &image, &agent.name, &args, "Never"),
        json!([{"name": "data", "emptyDir": {}}]),
        json!([
            {"name": "data", "mountPath": "/data"},
            {"name": "data", "mountPath": "/conf", "subPath": "app/conf"},
            {"name": "data", "mountPath": "/mine", "subPathExpr": "pods/$(POD_NAME)"},
        ]),
    );
    let container = &mut pod.spec.as_mut().expect("spec").containers[0];
    container.working_dir = Some("/data/work".into());
    container.env = Some(serde_json::from_value(json!([
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]))?);
    cluster.create_pod(pod).await?;
    cluster
        .wait_pod("paths", "Succeeded", has_phase("Succeeded"))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}: {}",
                cluster.kubectl(&["logs", "paths"]).unwrap_or_default()
            )
        })?;
    let logs = cluster.kubectl(&["logs", "paths"])?;
    assert!(logs.starts_with("setting\nmine\nhere\n"), "{logs}");
    assert!(logs.contains("PWD=/data/work\n"), "{logs}");
    Ok(())
}

#[tokio::test]
async fn escapes_from_volumes_and_disallowed_host_paths_are_refused() -> anyhow::Result<()> {
    let cluster = Cluster::new("escapes").await?;
    let allowed = tempfile::tempdir()?;
    let allowed_arg = allowed.path().canonicalize()?.display().to_string();
    let agent = cluster
        .start_node_with(&["--allowed-host-paths", &allowed_arg])
        .await?;
    let image = cluster.push_guest("wasi-probe").await?;
    // A symbolic link in an allowed host directory that points out of it.
    std::os::unix::fs::symlink("/etc", allowed.path().join("out"))?;
    let cases = [
        (
            "dotdot",
            json!({"emptyDir": {}}),
            json!({"subPath": "../../etc"}),
            "must be a relative path without '..'",
        ),
        (
            "symlink",
            json!({"hostPath": {"path": allowed_arg, "type": "Directory"}}),
            json!({"subPath": "out"}),
            "resolves outside the volume",
        ),
    ];
    for (name, volume, mount, expected) in cases {
        let mut volume = volume;
        volume["name"] = json!("v");
        let mut mount = mount;
        mount["name"] = json!("v");
        mount["mountPath"] = json!("/v");
        let pod = with_volumes(
            wasm_pod(name, &image, &agent.name, &["ls", "/v"], "Never"),
            json!([volume]),
            json!([mount]),
        );
        // A real API server refuses a subPath with '..' itself (422): the node's defence is
        // then not reached, and the refusal is as good.
        if !cluster.create_pod_unless_invalid(pod).await? {
            continue;
        }
        let pod = cluster
            .wait_pod(name, "refused", is_waiting("CreateContainerConfigError"))
            .await?;
        let message = waiting_message(&pod);
        assert!(message.contains(expected), "{name}: {message}");
    }
    // A file (a ConfigMap's key through a subPath) cannot be given to a WASI guest: the
    // container cannot start, and says so. (A Spin app's host reads such a file instead.)
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "one-file"}, "data": {"f": "x"}}))?,
        )
        .await?;
    let pod = with_volumes(
        wasm_pod("file", &image, &agent.name, &["ls", "/v"], "Never"),
        json!([{"name": "v", "configMap": {"name": "one-file"}}]),
        json!([{"name": "v", "mountPath": "/v", "subPath": "f"}]),
    );
    cluster.create_pod(pod).await?;
    let failed = cluster
        .wait_pod("file", "Failed", has_phase("Failed"))
        .await?;
    let message = container_state(&failed)
        .and_then(|s| s.terminated)
        .and_then(|t| t.message)
        .unwrap_or_default();
    assert!(
        message.contains("/v is a file; a WASI guest can only be given directories"),
        "{message}"
    );
    // A guest given the directory cannot follow the link out of it.
    let pod = with_volumes(
        wasm_pod(
            "follows",
            &image,
            &agent.name,
            &["read", "/v/out/hostname"],
            "Never",
        ),
        json!([{"name": "v", "hostPath": {"path": allowed_arg, "type": "Directory"}}]),
        json!([{"name": "v", "mountPath": "/v"}]),
    );
    cluster.create_pod(pod).await?;
    let failed = cluster
        .wait_pod("follows", "Failed", has_phase("Failed"))
        .await?;
    let exit = container_state(&failed)
        .and_then(|s| s.terminated)
        .map(|t| t.exit_code);
    assert_eq!(exit, Some(2), "the read failed in the guest");
    let logs = cluster.kubectl(&["logs", "follows"])?;
    assert!(logs.contains("read /v/out/hostname"), "{logs}");
    // A hostPath outside --allowed-host-paths is never mounted.
    let pod = with_volumes(
        wasm_pod("elsewhere", &image, &agent.name, &["ls", "/v"], "Never"),
        json!([{"name": "v", "hostPath": {"path": "/etc"}}]),
        json!([{"name": "v", "mountPath": "/v"}]),
    );
    cluster.create_pod(pod).await?;
    let event = cluster
        .eventually("a FailedMount event", async || {
            Ok(cluster
                .pod_events("elsewhere")
                .await?
                .into_iter()
                .find(|e| e.starts_with("FailedMount")))
        })
        .await?;
    assert!(event.contains("outside --allowed-host-paths"), "{event}");
    let pod = cluster.pods().get("elsewhere").await?;
    assert!(
        container_state(&pod).and_then(|s| s.waiting).is_some(),
        "nothing ran"
    );
    // Neither a link in the allowed directory (one a guest could have made) nor a path that
    // climbs out with `..` and does not exist yet leads a hostPath out of it. A real API server
    // refuses the `..` itself (422), which is as good.
    let escaped = tempfile::tempdir()?;
    let climbing = format!(
        "{allowed_arg}/../{}/made",
        escaped
            .path()
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    );
    for (name, path, kind, expected) in [
        (
            "through-link",
            format!("{allowed_arg}/out"),
            "Directory",
            "symbolic link",
        ),
        (
            "climbing",
            climbing,
            "DirectoryOrCreate",
            "must not contain '..'",
        ),
    ] {
        let pod = with_volumes(
            wasm_pod(name, &image, &agent.name, &["ls", "/v"], "Never"),
            json!([{"name": "v", "hostPath": {"path": path, "type": kind}}]),
            json!([{"name": "v", "mountPath": "/v"}]),
        );
        if !cluster.create_pod_unless_invalid(pod).await? {
            continue;
        }
        let event = cluster
            .eventually("a FailedMount event", async || {
                Ok(cluster
                    .pod_events(name)
                    .await?
                    .into_iter()
                    .find(|e| e.starts_with("FailedMount")))
            })
            .await?;
        assert!(event.contains(expected), "{name}: {event}");
    }
    assert!(
        std::fs::read_dir(escaped.path())?.next().is_none(),
        "nothing was made outside the allowed directory"
    );
    Ok(())
}

#[tokio::test]
async fn an_empty_dir_past_its_size_limit_evicts_the_pod() -> anyhow::Result<()> {
    let cluster = Cluster::new("sizelimit").await?;
    let agent = cluster.start_node_with(&["--sync-frequency", "1s"]).await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let pod = with_volumes(
        wasm_pod(
            "hoarder",
            &image,
            &agent.name,
            &["fill", "/cache/blob", "2", "forever"],
            "Always",
        ),
        json!([{"name": "cache", "emptyDir": {"sizeLimit": "1Mi"}}]),
        json!([{"name": "cache", "mountPath": "/cache"}]),
    );
    cluster.create_pod(pod).await?;
    let evicted = cluster
        .wait_pod("hoarder", "Failed", has_phase("Failed"))
        .await?;
    let status = evicted.status.unwrap_or_default();
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert!(
        status
            .message
            .unwrap_or_default()
            .contains("Usage of EmptyDir volume \"cache\" exceeds the limit \"1Mi\""),
    );
    Ok(())
}

#[tokio::test]
async fn command_and_args_become_argv_with_variables_expanded() -> anyhow::Result<()> {
    let cluster = Cluster::new("argv").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let mut pod = wasm_pod(
        "argv",
        &image,
        &agent.name,
        &["print", "$(GREETING), $(NOBODY) $$(GREETING)"],
        "Never",
    );
    let container = &mut pod.spec.as_mut().expect("spec").containers[0];
    container.command = Some(vec!["my-entry".into(), "args".into()]);
    container.env = Some(serde_json::from_value(
        json!([{"name": "GREETING", "value": "hi"}]),
    )?);
    cluster.create_pod(pod).await?;
    cluster
        .wait_pod("argv", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert_eq!(
        cluster.kubectl(&["logs", "argv"])?,
        "args: [\"my-entry\", \"args\", \"print\", \"hi, $(NOBODY) $(GREETING)\"]\nhi, $(NOBODY) $(GREETING)\n"
    );
    Ok(())
}
