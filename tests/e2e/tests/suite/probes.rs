//! Probes and lifecycle hooks as on any kubelet: readiness drives the Ready condition, a failing
//! liveness probe restarts the container, hooks call out on start and before stop.

use e2e::{Cluster, container_state, free_ports, node_ip, wasm_pod};
use k8s_openapi::api::core::v1::Pod;
use std::convert::Infallible;
use tokio::sync::mpsc;

fn condition(pod: Option<&Pod>, kind: &str) -> Option<String> {
    pod?.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

fn restart_count(pod: Option<&Pod>) -> i32 {
    pod.and_then(|p| p.status.as_ref())
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

/// A pod serving the http-probe component on `port`, with `container` fields merged in.
fn web_pod(name: &str, image: &str, node: &str, port: u16, extra: serde_json::Value) -> Pod {
    let mut container =
        serde_json::json!({"name": "web", "image": image, "ports": [{"containerPort": port}]});
    for (k, v) in extra.as_object().expect("an object") {
        container[k] = v.clone();
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "containers": [container],
            "tolerations": [{"key": "krustlet/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoExecute"}],
        }
    }))
    .expect("a valid pod")
}

#[tokio::test]
async fn readiness_follows_its_probe_and_a_failing_liveness_probe_restarts() -> anyhow::Result<()> {
    let cluster = Cluster::new("probes").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_component("http_probe").await?;
    let [ready_port, dying_port] = free_ports()?;
    let flags = tempfile::tempdir()?;
    let mut web = web_pod(
        "web",
        &image,
        &agent.name,
        ready_port,
        serde_json::json!({
            "readinessProbe": {"httpGet": {"path": "/file/flags/ready", "port": ready_port}, "periodSeconds": 1, "failureThreshold": 1},
            "livenessProbe": {"tcpSocket": {"port": ready_port}, "periodSeconds": 1},
            "volumeMounts": [{"name": "flags", "mountPath": "/flags"}],
        }),
    );
    web.spec.as_mut().expect("spec").volumes = Some(vec![serde_json::from_value(
        serde_json::json!({"name": "flags", "hostPath": {"path": flags.path(), "type": "Directory"}}),
    )?]);
    cluster.create_pod(web).await?;
    cluster
        .create_pod(web_pod(
            "dying",
            &image,
            &agent.name,
            dying_port,
            serde_json::json!({"livenessProbe": {"httpGet": {"path": "/status/500", "port": dying_port}, "periodSeconds": 1, "failureThreshold": 2}}),
        ))
        .await?;
    let mut exec = wasm_pod(
        "exec",
        &cluster.push_guest("wasi-probe").await?,
        &agent.name,
        &["forever"],
        "Always",
    );
    exec.spec.as_mut().expect("spec").containers[0].readiness_probe = Some(serde_json::from_value(
        serde_json::json!({"exec": {"command": ["cat", "/ready"]}, "periodSeconds": 1}),
    )?);
    cluster.create_pod(exec).await?;

    // Not ready while the probe fails, with the kubelet's event.
    cluster
        .eventually("the readiness probe's failure event", async || {
            let events = cluster.pod_events("web").await?;
            Ok(events
                .iter()
                .any(|e| {
                    e.contains(
                        "Unhealthy: Readiness probe failed: HTTP probe failed with statuscode: 503",
                    )
                })
                .then_some(()))
        })
        .await?;
    let web = cluster.pods().get("web").await?;
    assert_eq!(condition(Some(&web), "Ready").as_deref(), Some("False"));
    assert!(
        container_state(&web).is_some_and(|s| s.running.is_some()),
        "running but not ready"
    );

    std::fs::write(flags.path().join("ready"), "")?;
    cluster
        .wait_pod("web", "Ready", |p: Option<&Pod>| {
            condition(p, "Ready").as_deref() == Some("True")
        })
        .await?;
    std::fs::remove_file(flags.path().join("ready"))?;
    let unready = cluster
        .wait_pod("web", "not Ready again", |p: Option<&Pod>| {
            condition(p, "Ready").as_deref() == Some("False")
        })
        .await?;
    assert_eq!(restart_count(Some(&unready)), 0, "readiness never restarts");

    // Liveness: killed and restarted, with the kubelet's events and exit code.
    let restarted = cluster
        .wait_pod(
            "dying",
            "restarted by its liveness probe",
            |p: Option<&Pod>| restart_count(p) >= 1,
        )
        .await?;
    let last = e2e::last_terminated(&restarted).expect("the killed run is the last state");
    assert_eq!(last.exit_code, 137);
    cluster
        .wait_events(
            "dying",
            &[
                "Liveness probe failed: HTTP probe failed with statuscode: 500",
                "Killing: Container web failed liveness probe, will be restarted",
            ],
        )
        .await?;

    // exec probes cannot run in a wasm guest: said plainly, and the pod is not Ready.
    cluster
        .eventually("the exec probe's event", async || {
            let events = cluster.pod_events("exec").await?;
            Ok(events
                .iter()
                .any(|e| e.contains("exec probes cannot run in a WebAssembly container"))
                .then_some(()))
        })
        .await?;
    let exec = cluster.pods().get("exec").await?;
    assert_eq!(condition(Some(&exec), "Ready").as_deref(), Some("False"));
    Ok(())
}

/// An HTTP server on the node's address that reports the path of every request it answers.
async fn hook_server() -> anyhow::Result<(
    u16,
    mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<()>,
)> {
    let listener = tokio::net::TcpListener::bind((node_ip(), 0)).await?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let _ = tx.send(request.uri().path().to_string());
                    async {
                        Ok::<_, Infallible>(hyper::Response::new(http_body_util::Empty::<
                            bytes::Bytes,
                        >::new()))
                    }
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    Ok((port, rx, server))
}

async fn next_path(paths: &mut mpsc::UnboundedReceiver<String>) -> anyhow::Result<String> {
    tokio::time::timeout(e2e::DEADLINE, paths.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the hook server stopped"))
}

#[tokio::test]
async fn hooks_call_out_after_start_and_before_stop() -> anyhow::Result<()> {
    let cluster = Cluster::new("hooks").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let (port, mut paths, server) = hook_server().await?;
    let [closed] = free_ports()?;
    let hook = |path: &str, port: u16| serde_json::json!({"httpGet": {"host": node_ip(), "port": port, "path": path}});
    let mut hooked = wasm_pod("hooked", &image, &agent.name, &["forever"], "Always");
    hooked.spec.as_mut().expect("spec").containers[0].lifecycle = Some(serde_json::from_value(
        serde_json::json!({"postStart": hook("/post-start", port), "preStop": hook("/pre-stop", port)}),
    )?);
    cluster.create_pod(hooked).await?;
    assert_eq!(next_path(&mut paths).await?, "/post-start");

    let mut failing = wasm_pod("failing-hook", &image, &agent.name, &["forever"], "Always");
    failing.spec.as_mut().expect("spec").containers[0].lifecycle = Some(serde_json::from_value(
        serde_json::json!({"postStart": hook("/", closed)}),
    )?);
    cluster.create_pod(failing).await?;
    cluster
        .wait_pod(
            "failing-hook",
            "restarted after its postStart hook failed",
            |p: Option<&Pod>| restart_count(p) >= 1,
        )
        .await?;
    cluster
        .wait_events(
            "failing-hook",
            &["FailedPostStartHook: PostStartHook failed: Get \"http://"],
        )
        .await?;

    cluster.kubectl(&["delete", "pod", "hooked", "--wait=false"])?;
    assert_eq!(next_path(&mut paths).await?, "/pre-stop");
    e2e::wait_for(cluster.pods(), "hooked", |p: Option<&Pod>| p.is_none()).await?;
    server.abort();
    Ok(())
}
