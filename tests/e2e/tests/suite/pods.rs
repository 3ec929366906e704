//! Pods on a krustlet-wasi node, bound to it directly: exit codes, traps, deletion, logs, and
//! bad input that must end in a clear status and event while the node stays Ready.

use e2e::{
    Cluster, NodeAgent, container_state, has_phase, is_node_ready, is_waiting, waiting_message,
    wasm_pod,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams};
use kube::runtime::wait::Condition;

async fn node_still_ready(cluster: &Cluster, agent: &NodeAgent) -> anyhow::Result<()> {
    let node = Api::<Node>::all(cluster.client.clone())
        .get(&agent.name)
        .await?;
    assert!(
        is_node_ready().matches_object(Some(&node)),
        "node {} should stay Ready",
        agent.name
    );
    Ok(())
}

#[tokio::test]
async fn exit_codes_and_traps_end_the_pod_with_the_kubelets_statuses() -> anyhow::Result<()> {
    let cluster = Cluster::new("exits").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    cluster
        .create_pod(wasm_pod(
            "exit3",
            &image,
            &agent.name,
            &["print", "bye", "exit", "3"],
            "Never",
        ))
        .await?;
    cluster
        .create_pod(wasm_pod(
            "ok",
            &image,
            &agent.name,
            &["print", "fine"],
            "Never",
        ))
        .await?;
    cluster
        .create_pod(wasm_pod("trap", &image, &agent.name, &["trap"], "Never"))
        .await?;

    let failed = cluster
        .wait_pod("exit3", "Failed", has_phase("Failed"))
        .await?;
    let terminated = container_state(&failed)
        .and_then(|s| s.terminated)
        .expect("terminated state");
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (3, Some("Error"))
    );
    assert!(terminated.started_at.is_some() && terminated.finished_at.is_some());
    let conditions: Vec<(String, String)> = failed
        .status
        .clone()
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    assert!(
        conditions.contains(&("Ready".into(), "False".into())),
        "{conditions:?}"
    );
    assert!(
        conditions.contains(&("Initialized".into(), "True".into())),
        "{conditions:?}"
    );

    let ok = cluster
        .wait_pod("ok", "Succeeded", has_phase("Succeeded"))
        .await?;
    let terminated = container_state(&ok)
        .and_then(|s| s.terminated)
        .expect("terminated state");
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (0, Some("Completed"))
    );

    let trapped = cluster
        .wait_pod("trap", "Failed", has_phase("Failed"))
        .await?;
    let terminated = container_state(&trapped)
        .and_then(|s| s.terminated)
        .expect("terminated state");
    assert_eq!(terminated.exit_code, 134);
    assert!(
        terminated
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("unreachable"),
        "{terminated:?}"
    );
    node_still_ready(&cluster, &agent).await
}

#[tokio::test]
async fn deleting_a_running_pod_stops_it_and_removes_it() -> anyhow::Result<()> {
    let cluster = Cluster::new("delete").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let pods = cluster.pods();
    cluster
        .create_pod(wasm_pod(
            "sleeper",
            &image,
            &agent.name,
            &["print", "started", "forever"],
            "Always",
        ))
        .await?;
    cluster
        .wait_pod("sleeper", "Running", has_phase("Running"))
        .await?;
    let started = std::time::Instant::now();
    cluster.kubectl(&["delete", "pod", "sleeper", "--timeout=30s"])?;
    assert!(pods.get_opt("sleeper").await?.is_none());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "deletion took {:?}",
        started.elapsed()
    );
    node_still_ready(&cluster, &agent).await
}

#[tokio::test]
async fn kubectl_logs_serves_tail_follow_and_previous_through_the_api_server() -> anyhow::Result<()>
{
    let cluster = Cluster::new("logs").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let args = [
        "print", "one", "eprint", "two", "print", "three", "sleep", "1500", "print", "four",
    ];
    cluster
        .create_pod(wasm_pod("talker", &image, &agent.name, &args, "Never"))
        .await?;
    cluster
        .wait_pod("talker", "Running", has_phase("Running"))
        .await?;
    // `-f` streams until the container exits, so it sees the line printed after the sleep.
    let followed = cluster.kubectl(&["logs", "-f", "talker"])?;
    assert_eq!(followed, "one\ntwo\nthree\nfour\n");
    cluster
        .wait_pod("talker", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert_eq!(
        cluster.kubectl(&["logs", "talker", "--tail", "2"])?,
        "three\nfour\n"
    );
    assert_eq!(
        cluster.kubectl(&["logs", "talker", "--limit-bytes", "6"])?,
        "one\ntw"
    );
    let stamped = cluster.kubectl(&["logs", "talker", "--timestamps", "--tail", "1"])?;
    assert!(
        stamped.ends_with(" four\n") && stamped.starts_with("20"),
        "{stamped:?}"
    );
    let previous = cluster.kubectl_output(&["logs", "talker", "--previous"])?;
    assert!(!previous.status.success());
    assert!(
        String::from_utf8_lossy(&previous.stderr).contains("previous terminated container"),
        "{previous:?}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_images_end_in_clear_statuses_and_events_while_the_node_stays_ready()
-> anyhow::Result<()> {
    let cluster = Cluster::new("badimages").await?;
    let agent = cluster.start_node().await?;
    let container_image = format!("{}/{}/nginx:1.27", cluster.registry(), cluster.id);
    testkit::fixtures::push_container_image(&container_image).await?;
    let garbage = format!("{}/{}/garbage:v1", cluster.registry(), cluster.id);
    testkit::fixtures::push_wasm(&garbage, b"#!/bin/sh\necho this is not wasm\n").await?;
    let pods = cluster.pods();
    cluster
        .create_pod(wasm_pod("oci", &container_image, &agent.name, &[], "Never"))
        .await?;
    cluster
        .create_pod(wasm_pod("garbage", &garbage, &agent.name, &[], "Never"))
        .await?;
    cluster
        .create_pod(wasm_pod(
            "garbage-always",
            &garbage,
            &agent.name,
            &[],
            "Always",
        ))
        .await?;
    cluster
        .create_pod(wasm_pod(
            "noregistry",
            "127.0.0.1:1/nothing/here:v1",
            &agent.name,
            &[],
            "Never",
        ))
        .await?;

    let oci = cluster
        .wait_pod("oci", "ErrImagePull", is_waiting("ErrImagePull"))
        .await?;
    let message = waiting_message(&oci);
    assert!(
        message.contains("is an OCI container image (linux/amd64), not a WebAssembly module"),
        "{message}"
    );
    assert!(
        message.contains("schedule this pod to a node that runs containers"),
        "{message}"
    );
    let events = cluster
        .wait_events(
            "oci",
            &[
                "Failed: Failed to pull image",
                "Failed: Error: ErrImagePull",
            ],
        )
        .await?;
    assert!(
        events.iter().any(|e| {
            e.starts_with("Failed: Failed to pull image") && e.contains("not a WebAssembly module")
        }),
        "{events:?}"
    );

    // A module that can never run fails to start, as an executable of the wrong format does
    // under containerd: terminated with StartError (exit code 128); a Never pod fails...
    let bad = cluster
        .wait_pod("garbage", "Failed", has_phase("Failed"))
        .await?;
    let terminated = container_state(&bad)
        .and_then(|s| s.terminated)
        .expect("terminated");
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (128, Some("StartError"))
    );
    let message = terminated.message.unwrap_or_default();
    assert!(message.contains("is not WebAssembly"), "{message}");
    // ... and an Always pod goes through its back-off like any container that cannot start.
    let looping = cluster
        .wait_pod(
            "garbage-always",
            "CrashLoopBackOff",
            is_waiting("CrashLoopBackOff"),
        )
        .await?;
    let last = e2e::last_terminated(&looping).expect("the start error is the last state");
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (128, Some("StartError"))
    );

    // Looked at after the others, by when its failure may have become the back-off.
    let missing = cluster
        .wait_pod(
            "noregistry",
            "ErrImagePull or ImagePullBackOff",
            e2e::is_failing_to_pull(),
        )
        .await?;
    let message = waiting_message(&missing);
    assert!(message.contains("127.0.0.1:1/nothing/here:v1"), "{message}");
    for name in ["oci", "noregistry"] {
        assert_eq!(
            pods.get(name)
                .await?
                .status
                .and_then(|s| s.phase)
                .as_deref(),
            Some("Pending"),
            "{name}"
        );
    }
    node_still_ready(&cluster, &agent).await?;
    pods.delete("oci", &DeleteParams::default()).await?;
    cluster
        .eventually("the pending pod to be removed by the node", async || {
            Ok(pods.get_opt("oci").await?.is_none().then_some(()))
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn the_active_deadline_fails_running_and_never_started_pods_once() -> anyhow::Result<()> {
    let cluster = Cluster::new("deadline").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let mut running = wasm_pod("running", &image, &agent.name, &["forever"], "Always");
    // An image nobody can pull: its container never starts.
    let mut stuck = wasm_pod(
        "stuck",
        "127.0.0.1:1/nothing/here:v1",
        &agent.name,
        &[],
        "Always",
    );
    for pod in [&mut running, &mut stuck] {
        pod.spec.as_mut().expect("a spec").active_deadline_seconds = Some(3);
        cluster.create_pod(pod.clone()).await?;
    }
    for name in ["running", "stuck"] {
        let failed = cluster
            .wait_pod(name, "Failed", has_phase("Failed"))
            .await?;
        let status = failed.status.expect("a status");
        assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"), "{name}");
    }
    // Failed for good: one DeadlineExceeded event each (once it has come), checked throughout
    // five seconds (the old loop recorded thousands in that time).
    for name in ["running", "stuck"] {
        cluster.wait_events(name, &["DeadlineExceeded"]).await?;
    }
    let watched_until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        for name in ["running", "stuck"] {
            let recorded = cluster.pod_event_count(name, "DeadlineExceeded").await?;
            assert_eq!(
                recorded, 1,
                "{name}: DeadlineExceeded recorded {recorded} times"
            );
        }
        if std::time::Instant::now() >= watched_until {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    node_still_ready(&cluster, &agent).await
}

#[tokio::test]
async fn a_pod_bound_without_the_toleration_is_rejected_by_the_node() -> anyhow::Result<()> {
    let cluster = Cluster::new("rejected").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let mut pod = wasm_pod(
        "intruder",
        &image,
        &agent.name,
        &["print", "should not run"],
        "Never",
    );
    pod.spec.as_mut().expect("spec").tolerations = None;
    cluster.create_pod(pod).await?;
    // The taint eviction controller deletes the pod too, before or after the node rejects it:
    // either way it never runs.
    let failed_or_evicted = |pod: Option<&Pod>| {
        pod.is_none_or(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
    };
    let Some(rejected) = e2e::wait_for(cluster.pods(), "intruder", failed_or_evicted).await? else {
        return node_still_ready(&cluster, &agent).await;
    };
    let status = rejected.status.unwrap_or_default();
    assert_eq!(status.reason.as_deref(), Some("Taint"));
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("untolerated taint {krustlet/arch: wasm32-wasi}"),
        "{status:?}"
    );
    assert!(
        status
            .container_statuses
            .unwrap_or_default()
            .iter()
            .all(|c| c.state.as_ref().and_then(|s| s.running.as_ref()).is_none())
    );
    node_still_ready(&cluster, &agent).await
}

#[tokio::test]
async fn cncf_wasm_artifacts_run_as_well_as_wasm_to_oci_ones() -> anyhow::Result<()> {
    use testkit::fixtures::{WASM_CONFIG_CNCF, WASM_LAYER_CNCF, push, wasm_module};
    let cluster = Cluster::new("cncf").await?;
    let agent = cluster.start_node().await?;
    let image = format!("{}/{}/cncf-probe:v1", cluster.registry(), cluster.id);
    let module = std::fs::read(wasm_module("wasi-probe")?)?;
    push(
        &image,
        module,
        WASM_LAYER_CNCF,
        b"{}".to_vec(),
        WASM_CONFIG_CNCF,
    )
    .await?;
    cluster
        .create_pod(wasm_pod(
            "cncf",
            &image,
            &agent.name,
            &["print", "from a CNCF artifact"],
            "Never",
        ))
        .await?;
    cluster
        .wait_pod("cncf", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert_eq!(
        cluster.kubectl(&["logs", "cncf"])?,
        "from a CNCF artifact\n"
    );
    Ok(())
}

#[tokio::test]
async fn containers_get_the_variables_of_their_namespaces_services_as_on_the_kubelet()
-> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::PostParams;
    let cluster = Cluster::new("svcenv").await?;
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db-main"},
        "spec": {"selector": {"app": "db"}, "ports": [{"name": "sql", "port": 5432}]}
    }))?;
    let created = services.create(&PostParams::default(), &service).await?;
    let ip = created.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    let master = Api::<Service>::namespaced(cluster.client.clone(), "default")
        .get("kubernetes")
        .await?;
    let master_ip = master.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    cluster
        .create_pod(wasm_pod("linked", &image, &agent.name, &["env"], "Never"))
        .await?;
    let mut unlinked = wasm_pod("unlinked", &image, &agent.name, &["env"], "Never");
    unlinked.spec.as_mut().expect("spec").enable_service_links = Some(false);
    cluster.create_pod(unlinked).await?;
    for pod in ["linked", "unlinked"] {
        cluster
            .wait_pod(pod, "Succeeded", has_phase("Succeeded"))
            .await?;
    }
    let linked = cluster.kubectl(&["logs", "linked"])?;
    for line in [
        format!("DB_MAIN_SERVICE_HOST={ip}"),
        "DB_MAIN_SERVICE_PORT=5432".into(),
        "DB_MAIN_SERVICE_PORT_SQL=5432".into(),
        format!("DB_MAIN_PORT=tcp://{ip}:5432"),
        format!("DB_MAIN_PORT_5432_TCP_ADDR={ip}"),
        format!("KUBERNETES_SERVICE_HOST={master_ip}"),
    ] {
        assert!(
            linked.lines().any(|l| l == line),
            "{line} missing from:\n{linked}"
        );
    }
    // Without service links a pod still gets the API server's Service, and no other.
    let unlinked = cluster.kubectl(&["logs", "unlinked"])?;
    assert!(
        unlinked.contains(&format!("KUBERNETES_SERVICE_HOST={master_ip}")),
        "{unlinked}"
    );
    assert!(!unlinked.contains("DB_MAIN_"), "{unlinked}");
    Ok(())
}
