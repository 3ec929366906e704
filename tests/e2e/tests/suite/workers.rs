//! Guests run in runtime worker processes that outlive the agent: a crash, a restart or an
//! upgrade of the agent leaves them running and reporting as before, and a worker's crash ends
//! only its own guests.

use e2e::{
    Cluster, NodeAgent, actor_pod, container_state, free_ports, has_phase, http_get, http_pod,
    is_running_after_restarts, wasm_pod,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long the test waits for something that takes a second.
const SOON: Duration = Duration::from_secs(20);

/// What must not change while a container runs on: its ID, start time and restart count.
fn identity(pod: &Pod) -> (Option<String>, Option<String>, i32) {
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .cloned()
        .unwrap_or_default();
    let started = status
        .state
        .and_then(|s| s.running)
        .and_then(|r| r.started_at)
        .map(|t| t.0.to_string());
    (status.container_id, started, status.restart_count)
}

/// The first run's log file of `pod`'s first container, in the agent's data dir.
fn log_file(agent: &NodeAgent, pod: &Pod, container: &str) -> PathBuf {
    agent
        .data_dir
        .path()
        .join("pods")
        .join(pod.uid().unwrap_or_default())
        .join("logs")
        .join(container)
        .join("0.log")
}

fn len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Waits (up to [`SOON`]) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SOON;
    while !check() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {SOON:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The numbers of the `tick N` lines of `logs`, which must count up from 0 without a gap.
fn ticks(logs: &str) -> anyhow::Result<u64> {
    let mut expected = 0;
    for line in logs.lines() {
        let n: u64 = line
            .strip_prefix("tick ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("unexpected line {line:?} in\n{logs}"))?;
        anyhow::ensure!(n == expected, "tick {expected} missing before {n}:\n{logs}");
        expected += 1;
    }
    Ok(expected)
}

/// Clients calling `GET /` on a port one after another, each on a connection of its own, until
/// stopped.
struct RequestLoad {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<(usize, Vec<String>)>>,
}

impl RequestLoad {
    fn start(port: u16, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let (mut answered, mut failed) = (0, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match http_get(port, "/").await {
                            Ok((200, _)) => answered += 1,
                            other => failed.push(format!("{other:?}")),
                        }
                    }
                    (answered, failed)
                })
            })
            .collect();
        Self { stop, clients }
    }

    /// Stops the clients: how many calls were answered 200, and what the others got.
    async fn stop(mut self) -> anyhow::Result<(usize, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let (mut answered, mut failed) = (0, Vec::new());
        for client in std::mem::take(&mut self.clients) {
            let (a, f) = client.await?;
            answered += a;
            failed.extend(f);
        }
        Ok((answered, failed))
    }
}

impl Drop for RequestLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn guests_run_on_through_an_agent_crash_and_a_restart_with_new_flags() -> anyhow::Result<()> {
    let cluster = Cluster::new("outlive").await?;
    let mut agent = cluster.start_node_with(&["--runtime-workers", "2"]).await?;
    let probe = cluster.push_guest("wasi-probe").await?;
    let component = cluster.push_component("http_probe").await?;
    let [port] = free_ports()?;
    let pods = cluster.pods();
    cluster
        .create_pod(wasm_pod(
            "ticker",
            &probe,
            &agent.name,
            &["tick", "100"],
            "Always",
        ))
        .await?;
    cluster
        .create_pod(http_pod(
            "web",
            &component,
            &agent.name,
            port,
            serde_json::json!({}),
        ))
        .await?;
    // The late guest ends when the test lets it: once the agent is down.
    let signal = tempfile::tempdir()?;
    let mut late = wasm_pod(
        "late",
        &probe,
        &agent.name,
        &["await", "/signal/go", "print", "done", "exit", "3"],
        "Never",
    );
    let spec = late.spec.as_mut().expect("spec");
    spec.containers[0].volume_mounts = Some(vec![serde_json::from_value(
        serde_json::json!({"name": "signal", "mountPath": "/signal"}),
    )?]);
    spec.volumes = Some(vec![serde_json::from_value(
        serde_json::json!({"name": "signal", "hostPath": {"path": signal.path(), "type": "Directory"}}),
    )?]);
    cluster.create_pod(late).await?;
    for name in ["ticker", "late"] {
        cluster
            .wait_pod(name, "running", is_running_after_restarts(0))
            .await?;
    }
    cluster
        .wait_pod("web", "Ready", e2e::is_pod_ready())
        .await?;
    let ticker = pods.get("ticker").await?;
    let late = pods.get("late").await?;
    let before = (identity(&ticker), identity(&pods.get("web").await?));

    // Clients keep calling the server from now until after the restart below: not one call
    // fails.
    let load = RequestLoad::start(port, 4);
    agent.crash()?;
    // While the agent is down, the command keeps logging, the server keeps answering, and a
    // guest that ends, ends.
    let ticker_log = log_file(&agent, &ticker, "main");
    let outage_start = len(&ticker_log);
    until("the ticker logs while the agent is down", || {
        len(&ticker_log) > outage_start + 100
    })
    .await?;
    let (code, body) = http_get(port, "/").await?;
    assert_eq!(
        (code, body.as_str()),
        (200, "hello from wasi-http\n"),
        "served while the agent is down"
    );
    std::fs::write(signal.path().join("go"), "")?;
    let late_log = log_file(&agent, &late, "main");
    until("the late guest finishes while the agent is down", || {
        std::fs::read_to_string(&late_log).is_ok_and(|l| l.contains(" done"))
    })
    .await?;

    agent.start_again().await?;
    let ended = cluster
        .wait_pod("late", "Failed", has_phase("Failed"))
        .await?;
    let terminated = container_state(&ended)
        .and_then(|s| s.terminated)
        .expect("terminated");
    assert_eq!(
        terminated.exit_code, 3,
        "the exit it made while the agent was away"
    );
    let after_crash = (
        identity(&pods.get("ticker").await?),
        identity(&pods.get("web").await?),
    );
    assert_eq!(
        after_crash, before,
        "no restart, no new container, same start time"
    );
    let (code, _) = http_get(port, "/").await?;
    assert_eq!(code, 200);

    // An operator's restart with a changed flag (SIGTERM without --drain-on-shutdown): the
    // guests run on as well.
    agent.set_extra(&["--runtime-workers", "2", "--max-pods", "100"]);
    agent.restart().await?;
    let (code, _) = http_get(port, "/").await?;
    assert_eq!(code, 200, "served across the restart");
    let after_restart = (
        identity(&pods.get("ticker").await?),
        identity(&pods.get("web").await?),
    );
    assert_eq!(
        after_restart, before,
        "no restart, no new container, same start time"
    );
    let phase = pods.get("ticker").await?.status.and_then(|s| s.phase);
    assert_eq!(phase.as_deref(), Some("Running"));
    let (answered, failed) = load.stop().await?;
    eprintln!("{answered} calls answered across the crash and the restart");
    assert!(
        failed.is_empty() && answered > 0,
        "{} of {} calls failed across the crash and the restart: {:?}",
        failed.len(),
        answered + failed.len(),
        &failed[..failed.len().min(5)]
    );
    // The log has every tick since the start, and grows on after the restart.
    let counted = ticks(&cluster.kubectl(&["logs", "ticker"])?)?;
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let now = ticks(&cluster.kubectl(&["logs", "ticker"])?)?;
        if now > counted {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the ticker's log stopped at {now} ticks:\n{}",
            agent.worker_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_worker_crash_restarts_only_its_own_guests() -> anyhow::Result<()> {
    let cluster = Cluster::new("worker-crash").await?;
    let agent = cluster.start_node_with(&["--runtime-workers", "2"]).await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let names = ["a", "b", "c", "d"];
    for name in names {
        cluster.run_forever(name, &image, &agent.name).await?;
    }
    let pods = cluster.pods();
    let mut before = Vec::new();
    for name in names {
        before.push(identity(&pods.get(name).await?));
    }
    let workers = agent.worker_pids();
    assert_eq!(workers.len(), 2, "two runtime workers: {workers:?}");
    let (_, victim) = workers[0];
    let status = std::process::Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()?;
    assert!(status.success());

    // Its guests are reported lost and run again; the other worker's are untouched. The lost
    // ones are reported together but their statuses are written one by one: the set of
    // restarted pods counts once it has held for a few seconds.
    const SETTLED: Duration = Duration::from_secs(5);
    let mut seen: Option<(Vec<&str>, tokio::time::Instant)> = None;
    let restarted = cluster
        .eventually(
            "the crashed worker's pods running again, and no others",
            async || {
                let mut restarted = Vec::new();
                for name in names {
                    let pod = pods.get(name).await?;
                    match identity(&pod) {
                        (_, Some(_), 1) => restarted.push(name),
                        (_, _, 0) => {}
                        _ => return Ok(None),
                    }
                }
                if restarted.is_empty() {
                    return Ok(None);
                }
                match &seen {
                    Some((set, since)) if *set == restarted => {
                        Ok((since.elapsed() >= SETTLED).then_some(restarted))
                    }
                    _ => {
                        seen = Some((restarted, tokio::time::Instant::now()));
                        Ok(None)
                    }
                }
            },
        )
        .await?;
    assert!(
        restarted.len() < names.len(),
        "only one worker's pods restarted: {restarted:?}"
    );
    for (name, was) in names.iter().zip(&before) {
        let pod = pods.get(name).await?;
        if restarted.contains(name) {
            let last = e2e::last_terminated(&pod).expect("lastState");
            assert_eq!(
                (last.exit_code, last.reason.as_deref()),
                (137, Some("ContainerStatusUnknown")),
                "{name}"
            );
        } else {
            assert_eq!(&identity(&pod), was, "{name} was not touched");
        }
    }
    let respawned = agent.worker_pids();
    assert_eq!(
        respawned.len(),
        2,
        "the agent started the worker again: {respawned:?}"
    );
    assert_ne!(respawned[0].1, victim);
    Ok(())
}

#[tokio::test]
async fn an_actor_keeps_serving_and_its_state_through_an_agent_crash() -> anyhow::Result<()> {
    let cluster = Cluster::new("outlive-actor").await?;
    let mut agent = cluster.start_wascc_node().await?;
    let image = cluster
        .push_actor(
            "http_actor",
            "all",
            Some(&["wascc:http_server", "wascc:keyvalue"]),
        )
        .await?;
    let [port] = free_ports()?;
    let pod = actor_pod(
        "counter",
        &image,
        &agent.name,
        port,
        serde_json::json!({}),
        serde_json::json!([]),
    );
    cluster.create_pod(pod).await?;
    cluster
        .wait_pod("counter", "Ready", e2e::is_pod_ready())
        .await?;
    assert_eq!(http_get(port, "/count").await?, (200, "1".to_string()));
    let before = identity(&cluster.pods().get("counter").await?);

    agent.crash()?;
    // The same actor instance answers while the agent is down: its count goes on.
    assert_eq!(http_get(port, "/count").await?, (200, "2".to_string()));
    agent.start_again().await?;
    assert_eq!(http_get(port, "/count").await?, (200, "3".to_string()));
    assert_eq!(
        identity(&cluster.pods().get("counter").await?),
        before,
        "no restart, no new container, same start time"
    );
    Ok(())
}

#[tokio::test]
async fn a_static_pod_runs_on_through_an_agent_crash() -> anyhow::Result<()> {
    let cluster = Cluster::new("outlive-static").await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let manifests = testkit::scratch::tempdir("static-pods")?;
    let mut manifest = wasm_pod("ticker", &image, "", &["tick", "100"], "Always");
    manifest.metadata.namespace = Some(cluster.namespace.clone());
    let spec = manifest.spec.as_mut().expect("spec");
    spec.node_name = None;
    spec.tolerations = None;
    // An init container ran before it: it is not run again either.
    let mut setup = spec.containers[0].clone();
    setup.name = "setup".into();
    setup.args = Some(vec!["print".into(), "set up".into()]);
    spec.init_containers = Some(vec![setup]);
    std::fs::write(
        manifests.path().join("ticker.json"),
        serde_json::to_vec(&manifest)?,
    )?;
    let path = manifests.path().to_str().expect("utf-8 path");
    let mut agent = cluster
        .start_node_with(&["--pod-manifest-path", path, "--runtime-workers", "2"])
        .await?;
    let mirror = format!("ticker-{}", agent.name);
    let before = identity(
        &cluster
            .wait_pod(
                &mirror,
                "mirrored and running",
                is_running_after_restarts(0),
            )
            .await?,
    );
    agent.crash()?;
    agent.start_again().await?;
    // Its status lives only in the mirror pod; the new agent finds the container by its ID
    // and reports it as it was once it writes the mirror's status again.
    let after = cluster
        .eventually("the mirror pod's status written again", async || {
            let now = identity(&cluster.pods().get(&mirror).await?);
            Ok((now.0 == before.0 && now.1.is_some()).then_some(now))
        })
        .await?;
    assert_eq!(
        after, before,
        "no restart, no new container, same start time"
    );
    let logs = cluster
        .kubectl(&["logs", &mirror])
        .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", agent.log(), agent.worker_logs()))?;
    assert!(ticks(&logs)? > 0);
    let pod = cluster.pods().get(&mirror).await?;
    let setup = pod
        .status
        .and_then(|s| s.init_container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.state?.terminated)
        .map(|t| (t.exit_code, t.reason));
    assert_eq!(
        setup,
        Some((0, Some("Completed".into()))),
        "the init container"
    );
    let setup_logs = cluster.kubectl(&["logs", &mirror, "-c", "setup"])?;
    assert_eq!(
        setup_logs.matches("set up").count(),
        1,
        "the init container ran once:\n{setup_logs}"
    );
    Ok(())
}

/// Sends one frame of the workers' protocol (a 4-byte big-endian length, then JSON).
async fn send_frame(
    stream: &mut tokio::net::UnixStream,
    json: &serde_json::Value,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let body = serde_json::to_vec(json)?;
    stream
        .write_all(&u32::try_from(body.len())?.to_be_bytes())
        .await?;
    stream.write_all(&body).await?;
    Ok(())
}

/// Reads what a worker says on `stream` until it closes it (within [`SOON`]).
async fn read_until_closed(stream: &mut tokio::net::UnixStream) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut said = Vec::new();
    tokio::time::timeout(SOON, stream.read_to_end(&mut said)).await??;
    Ok(String::from_utf8_lossy(&said).into_owned())
}

#[tokio::test]
async fn a_stray_client_of_a_workers_socket_cannot_displace_the_agent() -> anyhow::Result<()> {
    let cluster = Cluster::new("worker-stray").await?;
    let mut agent = cluster.start_node_with(&["--runtime-workers", "1"]).await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let component = cluster.push_component("http_probe").await?;
    let [port] = free_ports()?;
    cluster.run_forever("ticker", &image, &agent.name).await?;
    cluster
        .create_pod(http_pod(
            "web",
            &component,
            &agent.name,
            port,
            serde_json::json!({}),
        ))
        .await?;
    cluster
        .wait_pod("web", "Ready", e2e::is_pod_ready())
        .await?;
    let pods = cluster.pods();
    let ticker = identity(&pods.get("ticker").await?);
    let socket = agent.data_dir.path().join("workers/0.sock");

    // A client that greets as an agent without the agent's key, and one that asks to drain the
    // guests, are refused and closed...
    for request in [
        serde_json::json!({"op": "hello", "protocol": 1}),
        serde_json::json!({"op": "drain", "grace_seconds": 0}),
    ] {
        let mut stray = tokio::net::UnixStream::connect(&socket).await?;
        send_frame(
            &mut stray,
            &serde_json::json!({"id": 1, "request": request}),
        )
        .await?;
        let said = read_until_closed(&mut stray).await?;
        assert!(said.contains("only the node agent may connect"), "{said:?}");
    }
    // ...and one that says nothing is closed after the greeting's deadline, while the agent
    // still drives its worker: a pod deleted is stopped there, a new one started.
    let mut silent = tokio::net::UnixStream::connect(&socket).await?;
    pods.delete("web", &Default::default()).await?;
    cluster.wait_port_closed(port).await?;
    cluster.run_forever("newcomer", &image, &agent.name).await?;
    assert_eq!(read_until_closed(&mut silent).await?, "");
    assert_eq!(
        identity(&pods.get("ticker").await?),
        ticker,
        "the guest ran on untouched"
    );
    // The next agent takes its worker over at once (the stray clients left no link behind)
    // and drives it: a pod deleted now is stopped there and goes.
    let started = std::time::Instant::now();
    agent.restart().await?;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the restart took {:?}",
        started.elapsed()
    );
    pods.delete("newcomer", &Default::default()).await?;
    cluster
        .eventually("the deleted pod gone", async || {
            Ok(pods.get_opt("newcomer").await?.is_none().then_some(()))
        })
        .await?;
    assert_eq!(identity(&pods.get("ticker").await?), ticker);
    Ok(())
}
