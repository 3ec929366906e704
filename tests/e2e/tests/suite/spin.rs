//! Spin apps as SpinKube ships them: an app built with spin-sdk 3 (a core wasip1 module the
//! node componentizes), two components on two routes, variables from the pod's env and from
//! defaults, static files; pushed as `spin registry push` lays it out (by `krustlet-wasi
//! push`) and as a `FROM scratch` image with `spin.toml` at its root; run by pods shaped as
//! spin-operator makes them.

use e2e::{Cluster, container_state, free_ports, has_phase, http_get, http_request};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::runtime::wait::Condition;
use std::path::Path;

/// The app: `hello` answers `/hello/...` with its `message` variable (a template over the
/// app's `greeting`, which has a default, and `api_key`, which is required); `files` answers
/// `/static/...` with the files of `assets/`; `hello-sdk5`, the same source built with
/// spin-sdk 5.1, answers `/v5/...`; `cgi`, a WAGI program, answers `/cgi/...`.
const SPIN_TOML: &str = r#"
spin_manifest_version = 2

[application]
name = "spin-hello"
version = "1.0.0"

[variables]
greeting = { default = "hello from the defaults" }
api_key = { required = true, secret = true }

[[trigger.http]]
route = "/hello/..."
component = "hello"

[[trigger.http]]
route = "/static/..."
component = "files"

[[trigger.http]]
route = "/v5/..."
component = "hello-sdk5"

[[trigger.http]]
route = "/cgi/..."
component = "cgi"
executor = { type = "wagi" }

[component.hello]
source = "spin_hello.wasm"
[component.hello.variables]
message = "{{ greeting }} (key {{ api_key }})"

[component.files]
source = "spin_hello.wasm"
files = [{ source = "assets", destination = "/" }]

[component.hello-sdk5]
source = "spin_hello_sdk5.wasm"
[component.hello-sdk5.variables]
message = "sdk5 says {{ greeting }}"

[component.cgi]
source = "wagi-hello.wasm"
"#;

/// A file larger than a locked app inlines (its own layer when pushed).
fn big_file() -> String {
    "spin static file\n".repeat(20)
}

/// The app's files: `(path beneath the app's root, content)`.
fn app_files() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let module = std::fs::read(testkit::fixtures::wasm_module("spin_hello")?)?;
    let sdk5 = std::fs::read(testkit::fixtures::wasm_module("spin_hello_sdk5")?)?;
    let wagi = std::fs::read(testkit::fixtures::wasm_module("wagi-hello")?)?;
    Ok(vec![
        ("spin.toml".into(), SPIN_TOML.as_bytes().to_vec()),
        ("spin_hello.wasm".into(), module),
        ("spin_hello_sdk5.wasm".into(), sdk5),
        ("wagi-hello.wasm".into(), wagi),
        ("assets/big.txt".into(), big_file().into_bytes()),
        ("assets/small.txt".into(), b"small".to_vec()),
    ])
}

fn write_app(dir: &Path) -> anyhow::Result<()> {
    for (path, content) in app_files()? {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent"))?;
        std::fs::write(path, content)?;
    }
    Ok(())
}

/// A pod as spin-operator makes one for a SpinApp (command `/`, port `http-app`, the listen
/// address and variables in its env, probes on Spin's health endpoint), placed on `node` as
/// the RuntimeClass's scheduling would (`runtime_class.rs` covers that), listening on `port`,
/// with `env` besides.
fn operator_pod(name: &str, image: &str, node: &str, port: u16, env: &[(&str, &str)]) -> Pod {
    let listen = format!("0.0.0.0:{port}");
    let env: Vec<serde_json::Value> = [("SPIN_HTTP_LISTEN_ADDR", listen.as_str())]
        .iter()
        .chain(env)
        .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
        .collect();
    let probe = serde_json::json!({"httpGet": {"path": "/.well-known/spin/health", "port": "http-app"}, "periodSeconds": 1});
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"core.spinkube.dev/app-name": "spin-hello"}},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "containers": [{
                "name": "spin-hello", "image": image, "command": ["/"],
                "ports": [{"name": "http-app", "containerPort": port}],
                "env": env, "readinessProbe": probe, "livenessProbe": probe,
            }],
            "tolerations": [{"key": "krustlet/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoExecute"}],
        }
    }))
    .expect("a valid pod")
}

/// Waits until pod `name` (restartPolicy Never) has failed to start, as a container that can
/// never run does (`StartError`); its message.
async fn start_failure(cluster: &Cluster, name: &str) -> anyhow::Result<String> {
    let failed = cluster
        .wait_pod(name, "Failed", has_phase("Failed"))
        .await?;
    let terminated = container_state(&failed)
        .and_then(|s| s.terminated)
        .ok_or_else(|| anyhow::anyhow!("pod {name} failed without a terminated container"))?;
    let message = terminated.message.unwrap_or_default();
    anyhow::ensure!(
        terminated.reason.as_deref() == Some("StartError"),
        "pod {name}: {:?}, not StartError: {message}",
        terminated.reason
    );
    Ok(message)
}

#[tokio::test]
async fn a_pushed_spin_app_serves_its_routes_variables_and_files() -> anyhow::Result<()> {
    let cluster = Cluster::new("spin-app").await?;
    let agent = cluster.start_node().await?;
    let dir = tempfile::tempdir()?;
    write_app(dir.path())?;
    let image = format!("{}/{}/spin-hello:v1", cluster.registry(), cluster.id);
    let pushed = e2e::run_binary(
        e2e::Provider::Wasi,
        &[
            "push".as_ref(),
            dir.path().as_os_str(),
            image.as_ref(),
            "--insecure-registries".as_ref(),
            cluster.registry().as_ref(),
        ],
    )?;
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    // Two replicas, as the SpinApp's Deployment makes them.
    let ports = free_ports::<2>()?;
    for (replica, port) in ["spin-hello-a", "spin-hello-b"].iter().zip(ports) {
        cluster
            .serve(operator_pod(
                replica,
                &image,
                &agent.name,
                port,
                &[("SPIN_VARIABLE_API_KEY", "k-123")],
            ))
            .await?;
    }
    for port in ports {
        let (status, body) = http_get(port, "/hello/there").await?;
        assert_eq!(status, 200, "{body}");
        for expected in [
            "message=hello from the defaults (key k-123)",
            "route=/hello",
            "path_info=/there",
            "matched=/hello/...",
        ] {
            assert!(body.contains(expected), "{expected:?} in {body}");
        }
    }
    // A Service selecting the app, as the operator makes one, lists both replicas at their
    // named port.
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "spin-hello"},
                "spec": {"selector": {"core.spinkube.dev/app-name": "spin-hello"},
                         "ports": [{"port": 80, "targetPort": "http-app"}]}
            }))?,
        )
        .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    cluster
        .eventually("EndpointSlices listing both replicas", async || {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=spin-hello"))
                .await?;
            let mut listed: Vec<i32> = list
                .items
                .iter()
                .filter(|slice| {
                    slice
                        .endpoints
                        .iter()
                        .any(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                })
                .flat_map(|slice| slice.ports.iter().flatten().filter_map(|p| p.port))
                .collect();
            listed.sort();
            let mut wanted: Vec<i32> = ports.iter().map(|p| i32::from(*p)).collect();
            wanted.sort();
            Ok((listed == wanted).then_some(()))
        })
        .await?;
    let port = ports[0];
    // The other component, its own files at its root, the small one inlined in the lock.
    assert_eq!(
        http_get(port, "/static/file/big.txt").await?,
        (200, big_file())
    );
    assert_eq!(
        http_get(port, "/static/file/small.txt").await?,
        (200, "small".to_owned())
    );
    // `hello` has no files of its own.
    assert_eq!(http_get(port, "/hello/file/big.txt").await?.0, 404);
    // The same source built with a newer SDK.
    let (status, body) = http_get(port, "/v5/x").await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("message=sdk5 says hello from the defaults"),
        "{body}"
    );
    // The WAGI component: the body on its stdin, the CGI variables and argv as Spin sets them.
    let (status, body) = http_request(port, "POST", "/cgi/run/it?a=1&b=2", "the body").await?;
    assert_eq!(status, 200, "{body}");
    for expected in [
        "method=POST",
        "path_info=/run/it",
        "query=a=1&b=2",
        "argv=/cgi/run/it,a=1,b=2",
        "body=the body",
    ] {
        assert!(body.contains(expected), "{expected:?} in {body}");
    }
    // No route, and the host's own endpoints.
    assert_eq!(http_get(port, "/elsewhere").await?.0, 404);
    assert_eq!(
        http_get(port, "/.well-known/spin/health").await?,
        (200, "OK".to_owned())
    );
    let (status, info) = http_get(port, "/.well-known/spin/info").await?;
    assert_eq!(status, 200);
    assert!(
        info.contains("\"spin-hello\"") && info.contains("1.0.0"),
        "{info}"
    );
    // The components' output is the container's log.
    let logs = cluster.kubectl(&["logs", "spin-hello-a"])?;
    assert!(logs.contains("spin-hello: GET /hello/there"), "{logs}");
    Ok(())
}

/// Pushes `files` as a `FROM scratch` image named `name` (a Spin app when they hold
/// `spin.toml`); its reference.
async fn push_scratch_app(
    cluster: &Cluster,
    name: &str,
    files: &[(String, Vec<u8>)],
) -> anyhow::Result<String> {
    let image = format!("{}/{}/{name}:v1", cluster.registry(), cluster.id);
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(path, content)| (path.as_str(), content.as_slice()))
        .collect();
    testkit::fixtures::push_wasi_filesystem_image(&image, &refs, &[]).await?;
    Ok(image)
}

#[tokio::test]
async fn a_scratch_spin_image_runs_and_a_missing_variable_component_or_interface_is_named()
-> anyhow::Result<()> {
    let cluster = Cluster::new("spin-scratch").await?;
    let agent = cluster.start_node().await?;
    let files = app_files()?;
    let push = async |name: &str, files: Vec<(String, Vec<u8>)>| {
        push_scratch_app(&cluster, name, &files).await
    };
    let image = push("spin-scratch", files.clone()).await?;
    let [
        port,
        unset_port,
        broken_port,
        retained_port,
        sqlite_port,
        small_port,
    ] = free_ports()?;
    cluster
        .serve(operator_pod(
            "scratch",
            &image,
            &agent.name,
            port,
            &[("SPIN_VARIABLE_API_KEY", "k-9")],
        ))
        .await?;
    let (status, body) = http_get(port, "/hello/x").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("(key k-9)"), "{body}");
    assert_eq!(http_get(port, "/static/file/small.txt").await?.1, "small");

    // A SpinApp's `components` select what a pod runs (SPIN_COMPONENTS_TO_RETAIN): the others'
    // routes are gone.
    let retained = [
        ("SPIN_VARIABLE_API_KEY", "k"),
        ("SPIN_COMPONENTS_TO_RETAIN", "files"),
    ];
    cluster
        .serve(operator_pod(
            "retained",
            &image,
            &agent.name,
            retained_port,
            &retained,
        ))
        .await?;
    assert_eq!(http_get(retained_port, "/hello/x").await?.0, 404);
    assert_eq!(
        http_get(retained_port, "/static/file/small.txt").await?.1,
        "small"
    );

    // SPIN_MAX_INSTANCE_MEMORY bounds each instance by itself: a component that needs more
    // than 64 KiB fails its requests, and the log says which limit.
    let small = [
        ("SPIN_VARIABLE_API_KEY", "k"),
        ("SPIN_MAX_INSTANCE_MEMORY", "65536"),
    ];
    cluster
        .serve(operator_pod(
            "small",
            &image,
            &agent.name,
            small_port,
            &small,
        ))
        .await?;
    assert_eq!(http_get(small_port, "/hello/x").await?.0, 500);
    cluster
        .eventually("the limit in the log", async || {
            let logs = cluster.kubectl(&["logs", "small"])?;
            Ok(logs.contains("SPIN_MAX_INSTANCE_MEMORY").then_some(()))
        })
        .await?;

    // Without its required variable the container cannot start, and says which it lacks.
    cluster
        .create_pod(operator_pod("unset", &image, &agent.name, unset_port, &[]))
        .await?;
    let message = start_failure(&cluster, "unset").await?;
    assert!(
        message.contains("\"api_key\"") && message.contains("SPIN_VARIABLE_API_KEY"),
        "{message}"
    );

    // A spin.toml naming a component file the image lacks (both components do).
    let broken: Vec<(String, Vec<u8>)> = files
        .into_iter()
        .filter(|(path, _)| path != "spin_hello.wasm")
        .collect();
    let broken = push("spin-broken", broken).await?;
    cluster
        .create_pod(operator_pod(
            "broken",
            &broken,
            &agent.name,
            broken_port,
            &[("SPIN_VARIABLE_API_KEY", "k")],
        ))
        .await?;
    let message = start_failure(&cluster, "broken").await?;
    assert!(
        message.contains("spin_hello.wasm") && message.contains("is not in the image"),
        "{message}"
    );

    // A component using a Spin host interface this node does not have yet (SQLite) is
    // refused, naming the interface.
    let sqlite_app = one_component_app("spin_sqlite", r#"sqlite_databases = ["default"]"#)?;
    let sqlite = push("spin-sqlite", sqlite_app).await?;
    cluster
        .create_pod(operator_pod(
            "sqlite",
            &sqlite,
            &agent.name,
            sqlite_port,
            &[],
        ))
        .await?;
    let message = start_failure(&cluster, "sqlite").await?;
    assert!(
        message.contains("fermyon:spin/sqlite@2.0.0")
            && message.contains("which this node does not provide yet"),
        "{message}"
    );

    Ok(())
}

/// An app of one component, fixture `module` (a spin-sdk build) on every route, with `grants`
/// (manifest lines) besides, as a `FROM scratch` image's files.
fn one_component_app(module: &str, grants: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let manifest = format!(
        r#"spin_manifest_version = 2
[application]
name = "one"
[[trigger.http]]
route = "/..."
component = "one"
[component.one]
source = "{module}.wasm"
{grants}
"#
    );
    Ok(vec![
        ("spin.toml".to_owned(), manifest.into_bytes()),
        (
            format!("{module}.wasm"),
            std::fs::read(testkit::fixtures::wasm_module(module)?)?,
        ),
    ])
}

/// A one-component app counting its requests in the key-value stores `granted`
/// (`examples/spin-kv`: `/` through `fermyon:spin/key-value`, `/wasi` through `wasi:keyvalue`).
fn counter_app(granted: &[&str]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    one_component_app("spin_kv", &format!("key_value_stores = {granted:?}"))
}

#[tokio::test]
async fn a_counter_in_the_default_store_survives_requests_and_a_container_restart()
-> anyhow::Result<()> {
    let cluster = Cluster::new("spin-kv").await?;
    let agent = cluster.start_node_with(&["--runtime-workers", "1"]).await?;
    let counter = push_scratch_app(&cluster, "spin-kv", &counter_app(&["default"])?).await?;
    let ungranted = push_scratch_app(&cluster, "spin-kv-ungranted", &counter_app(&[])?).await?;
    let [port, ungranted_port] = free_ports()?;
    // As a Deployment's pod: restarted whenever its container ends.
    let mut pod = operator_pod("counter", &counter, &agent.name, port, &[]);
    pod.spec.as_mut().expect("spec").restart_policy = Some("Always".into());
    cluster.serve(pod).await?;
    cluster
        .serve(operator_pod(
            "ungranted",
            &ungranted,
            &agent.name,
            ungranted_port,
            &[],
        ))
        .await?;
    for expected in ["1", "2", "3"] {
        let (status, body) = http_get(port, "/").await?;
        assert_eq!((status, body.trim()), (200, expected));
    }
    // The same store through wasi:keyvalue: an atomic increment, a batch written and read.
    for hits in 1..=2 {
        let (status, body) = http_get(port, "/wasi").await?;
        assert_eq!(
            (status, body.trim()),
            (200, format!("hits {hits} last={hits} never=none").as_str())
        );
    }
    // A component whose manifest grants it no store is refused the default one.
    assert_eq!(http_get(ungranted_port, "/").await?.0, 500);
    let logs = cluster
        .eventually("the refusal in the log", async || {
            let logs = cluster.kubectl(&["logs", "ungranted"])?;
            Ok(logs.contains("AccessDenied").then_some(logs))
        })
        .await?;
    assert!(logs.contains("AccessDenied"), "{logs}");
    // The runtime worker holding the container dies: the container is started again, and
    // finds its store as it left it.
    let [(_, worker)] = agent.worker_pids()[..] else {
        anyhow::bail!("one runtime worker: {:?}", agent.worker_pids());
    };
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &worker.to_string()])
        .status()?;
    assert!(killed.success());
    cluster
        .wait_pod("counter", "restarted and Ready", |pod: Option<&Pod>| {
            let restarts = pod
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .map_or(0, |c| c.restart_count);
            restarts == 1 && e2e::is_pod_ready().matches_object(pod)
        })
        .await?;
    let (status, body) = http_get(port, "/").await?;
    assert_eq!((status, body.trim()), (200, "4"));
    let (status, body) = http_get(port, "/wasi").await?;
    assert_eq!((status, body.trim()), (200, "hits 3 last=3 never=none"));
    Ok(())
}

/// `pod` with the runtime configuration in Secret `secret` mounted as spin-operator mounts it
/// (`/runtime-config.toml`, through a subPath) and an emptyDir at `/data`.
fn with_runtime_config(mut pod: Pod, secret: &str) -> Pod {
    let spec = pod.spec.as_mut().expect("spec");
    spec.volumes = Some(
        serde_json::from_value(serde_json::json!([
            {"name": "spin-runtime-config", "secret": {"secretName": secret}},
            {"name": "data", "emptyDir": {}},
        ]))
        .expect("volumes"),
    );
    spec.containers[0].volume_mounts = Some(
        serde_json::from_value(serde_json::json!([
            {"name": "spin-runtime-config", "mountPath": "/runtime-config.toml", "subPath": "runtime-config.toml", "readOnly": true},
            {"name": "data", "mountPath": "/data"},
        ]))
        .expect("mounts"),
    );
    pod
}

#[tokio::test]
async fn the_runtime_configuration_places_the_default_store_on_a_volume() -> anyhow::Result<()> {
    let cluster = Cluster::new("spin-runtime-config").await?;
    let agent = cluster.start_node().await?;
    let counter = push_scratch_app(&cluster, "spin-kv", &counter_app(&["default"])?).await?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(cluster.client.clone(), &cluster.namespace);
    for (name, config) in [
        (
            "on-volume",
            "[key_value_store.default]\ntype = \"spin\"\npath = \"/data/kv/store.db\"\n",
        ),
        (
            "redis",
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://localhost\"\n",
        ),
    ] {
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name},
                    "stringData": {"runtime-config.toml": config},
                }))?,
            )
            .await?;
    }
    let [port, redis_port] = free_ports()?;
    cluster
        .serve(with_runtime_config(
            operator_pod("counter", &counter, &agent.name, port, &[]),
            "on-volume",
        ))
        .await?;
    for expected in ["1", "2"] {
        let (status, body) = http_get(port, "/").await?;
        assert_eq!((status, body.trim()), (200, expected));
    }
    // The store is the volume's file, not the container's own.
    let files = files_named(agent.data_dir.path(), "store.db");
    assert!(
        files.len() == 1 && files[0].to_string_lossy().contains("volumes"),
        "the store's file in the pod's emptyDir: {files:?}"
    );
    assert!(files_named(agent.data_dir.path(), "key_value.db").is_empty());
    // A store of a type the node does not have: the container cannot start, and says why.
    cluster
        .create_pod(with_runtime_config(
            operator_pod("redis", &counter, &agent.name, redis_port, &[]),
            "redis",
        ))
        .await?;
    let message = start_failure(&cluster, "redis").await?;
    assert!(message.contains("\"redis\""), "{message}");
    Ok(())
}

/// Every file named `name` beneath `dir`.
fn files_named(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                dirs.push(path);
            } else if entry.file_name() == name {
                found.push(path);
            }
        }
    }
    found
}
