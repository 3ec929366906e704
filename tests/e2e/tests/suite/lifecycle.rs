//! Pod lifecycle as on any kubelet: restart policies with backoff, init containers, and pods
//! that survive a restart of the node agent.

use e2e::{
    Cluster, container_state, has_phase, is_running_after_restarts, is_waiting, waiting_message,
    wasm_pod,
};
use k8s_openapi::api::core::v1::Pod;

fn with_init(mut pod: Pod, image: &str, inits: &[(&str, &[&str])]) -> Pod {
    let containers = inits
        .iter()
        .map(|(name, args)| {
            serde_json::from_value(serde_json::json!({"name": name, "image": image, "args": args}))
                .expect("valid")
        })
        .collect();
    pod.spec.as_mut().expect("spec").init_containers = Some(containers);
    pod
}

#[tokio::test]
async fn a_crashing_container_restarts_with_backoff_and_keeps_its_last_state() -> anyhow::Result<()>
{
    let cluster = Cluster::new("crashloop").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    cluster
        .create_pod(wasm_pod(
            "crasher",
            &image,
            &agent.name,
            &["print", "crashing", "exit", "1"],
            "Always",
        ))
        .await?;
    cluster
        .create_pod(wasm_pod(
            "once",
            &image,
            &agent.name,
            &["exit", "0"],
            "OnFailure",
        ))
        .await?;
    let looping = cluster
        .wait_pod(
            "crasher",
            "CrashLoopBackOff",
            is_waiting("CrashLoopBackOff"),
        )
        .await?;
    let status = looping.status.clone().unwrap_or_default();
    assert_eq!(
        status.phase.as_deref(),
        Some("Running"),
        "a restarting pod is Running"
    );
    let container = &status.container_statuses.unwrap_or_default()[0];
    assert!(container.restart_count >= 1, "{container:?}");
    let last = container
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState keeps the previous termination");
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    let message = waiting_message(&looping);
    assert!(
        message.starts_with("back-off 10s restarting failed container=main pod=crasher_"),
        "{message}"
    );
    let events = cluster
        .eventually("a BackOff event", async || {
            let events = cluster.pod_events("crasher").await?;
            Ok(events
                .iter()
                .any(|e| e.starts_with("BackOff: Back-off restarting failed container main"))
                .then_some(events))
        })
        .await?;
    assert!(
        events.iter().filter(|e| e.starts_with("Started")).count() >= 1,
        "{events:?}"
    );
    let once = cluster
        .wait_pod("once", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert_eq!(
        once.status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default()[0]
            .restart_count,
        0
    );
    Ok(())
}

#[tokio::test]
async fn init_containers_run_in_order_before_the_app_and_a_failed_one_stops_the_pod()
-> anyhow::Result<()> {
    let cluster = Cluster::new("init").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let ordered = with_init(
        wasm_pod("ordered", &image, &agent.name, &["print", "app"], "Never"),
        &image,
        &[
            ("first", &["print", "1"]),
            ("second", &["sleep", "200", "print", "2"]),
        ],
    );
    cluster.create_pod(ordered).await?;
    let broken = with_init(
        wasm_pod("broken", &image, &agent.name, &["print", "never"], "Never"),
        &image,
        &[("fails", &["exit", "7"])],
    );
    cluster.create_pod(broken).await?;

    let done = cluster
        .wait_pod("ordered", "Succeeded", has_phase("Succeeded"))
        .await?;
    let status = done.status.unwrap_or_default();
    let inits = status.init_container_statuses.unwrap_or_default();
    let finished = |c: &k8s_openapi::api::core::v1::ContainerStatus| {
        c.state
            .clone()
            .and_then(|s| s.terminated)
            .expect("terminated")
    };
    assert_eq!(
        inits
            .iter()
            .map(|c| finished(c).reason.unwrap_or_default())
            .collect::<Vec<_>>(),
        ["Completed", "Completed"]
    );
    let app = finished(&status.container_statuses.unwrap_or_default()[0]);
    assert!(
        finished(&inits[0]).finished_at <= finished(&inits[1]).started_at,
        "init containers run one after the other"
    );
    assert!(
        finished(&inits[1]).finished_at <= app.started_at,
        "the app starts after the init containers"
    );
    assert_eq!(
        cluster.kubectl(&["logs", "ordered", "-c", "second"])?,
        "2\n"
    );

    let failed = cluster
        .wait_pod("broken", "Failed", has_phase("Failed"))
        .await?;
    let status = failed.status.unwrap_or_default();
    let init = status.init_container_statuses.unwrap_or_default();
    assert_eq!(finished(&init[0]).exit_code, 7);
    let app_state = status.container_statuses.unwrap_or_default()[0]
        .state
        .clone()
        .unwrap_or_default();
    assert_eq!(
        app_state.waiting.and_then(|w| w.reason).as_deref(),
        Some("PodInitializing"),
        "the app never started"
    );
    let initialized = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Initialized")
        .expect("Initialized condition");
    assert_eq!(
        (initialized.status.as_str(), initialized.reason.as_deref()),
        ("False", Some("ContainersNotInitialized"))
    );
    Ok(())
}

#[tokio::test]
async fn an_agent_crash_keeps_finished_pods_and_restarts_lost_containers() -> anyhow::Result<()> {
    let cluster = Cluster::new("restart").await?;
    // Guests in the agent's own process (no runtime workers) end with it.
    let mut agent = cluster.start_node_with(&["--runtime-workers", "0"]).await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let pods = cluster.pods();
    cluster
        .create_pod(wasm_pod(
            "done",
            &image,
            &agent.name,
            &["print", "ran"],
            "Never",
        ))
        .await?;
    cluster
        .create_pod(wasm_pod(
            "server",
            &image,
            &agent.name,
            &["forever"],
            "Always",
        ))
        .await?;
    let done = cluster
        .wait_pod("done", "Succeeded", has_phase("Succeeded"))
        .await?;
    cluster
        .wait_pod("server", "Running", has_phase("Running"))
        .await?;
    agent.crash_and_restart().await?;
    let server = cluster
        .wait_pod(
            "server",
            "running again with restartCount 1",
            is_running_after_restarts(1),
        )
        .await?;
    let last = e2e::last_terminated(&server).expect("lastState");
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (137, Some("ContainerStatusUnknown"))
    );
    // The finished pod is not run again.
    let still = pods.get("done").await?;
    assert_eq!(
        container_state(&still)
            .and_then(|s| s.terminated)
            .map(|t| t.finished_at),
        container_state(&done)
            .and_then(|s| s.terminated)
            .map(|t| t.finished_at)
    );
    assert_eq!(
        cluster.kubectl(&["logs", "done"])?,
        "ran\n",
        "logs of earlier runs stay readable"
    );
    Ok(())
}

#[tokio::test]
async fn active_deadline_seconds_ends_the_pod_as_deadline_exceeded() -> anyhow::Result<()> {
    let cluster = Cluster::new("deadline").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let mut pod = wasm_pod("bounded", &image, &agent.name, &["forever"], "Always");
    pod.spec.as_mut().expect("spec").active_deadline_seconds = Some(2);
    cluster.create_pod(pod).await?;
    let ended = cluster
        .wait_pod("bounded", "Failed", has_phase("Failed"))
        .await?;
    let status = ended.status.clone().unwrap_or_default();
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        status.message.as_deref(),
        Some("Pod was active on the node longer than the specified deadline")
    );
    assert!(
        container_state(&ended).and_then(|s| s.terminated).is_some(),
        "the container was stopped"
    );
    let events = cluster
        .eventually("DeadlineExceeded and Killing events", async || {
            let events = cluster.pod_events("bounded").await?;
            let both = events.iter().any(|e| e.starts_with("DeadlineExceeded"))
                && events
                    .iter()
                    .any(|e| e.starts_with("Killing: Stopping container main"));
            Ok(both.then_some(events))
        })
        .await?;
    assert!(!events.is_empty());
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_and_reports_pods_and_drain_cordons_the_node() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::Api;
    let cluster = Cluster::new("drain").await?;
    let data_dir = tempfile::Builder::new().prefix("krustlet-node").tempdir()?;
    let name = format!("node-{}", cluster.id);
    let credentials = e2e::Credentials::Kubeconfig(
        e2e::node_credentials(&cluster, &name, data_dir.path()).await?,
    );
    let mut agent = e2e::NodeAgent::start_with_args(
        &cluster,
        &name,
        data_dir,
        credentials,
        &["--drain-on-shutdown"],
    )
    .await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let pods = cluster.pods();
    cluster
        .create_pod(wasm_pod(
            "steady",
            &image,
            &agent.name,
            &["forever"],
            "Always",
        ))
        .await?;
    cluster
        .create_pod(wasm_pod(
            "oneshot",
            &image,
            &agent.name,
            &["forever"],
            "Never",
        ))
        .await?;
    cluster
        .wait_pod("steady", "Running", has_phase("Running"))
        .await?;
    cluster
        .wait_pod("oneshot", "Running", has_phase("Running"))
        .await?;
    assert!(agent.terminate()?.success(), "{}", agent.log());
    // Stopped and reported: no container is left reported as running.
    let steady = pods.get("steady").await?;
    let stopped = container_state(&steady)
        .and_then(|s| s.terminated)
        .expect("reported stopped");
    assert_eq!(stopped.exit_code, 137);
    assert_eq!(
        steady.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running"),
        "restartPolicy Always: it runs again when the node is back"
    );
    let oneshot = pods.get("oneshot").await?;
    assert_eq!(
        oneshot.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed"),
        "restartPolicy Never: stopped for good"
    );
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    assert_eq!(
        nodes
            .get(&agent.name)
            .await?
            .spec
            .and_then(|s| s.unschedulable),
        Some(true),
        "drained before stopping"
    );
    // Back again: the agent's own cordon is undone and the pod restarts.
    agent.start_again().await?;
    assert_ne!(
        nodes
            .get(&agent.name)
            .await?
            .spec
            .and_then(|s| s.unschedulable),
        Some(true)
    );
    cluster
        .wait_pod("steady", "running again", is_running_after_restarts(1))
        .await?;
    Ok(())
}
