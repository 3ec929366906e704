//! File descriptors are charged to the pod they serve: the files its guests open (all its
//! instances together, preview 1 modules and components alike), the connections its clients
//! make. One pod at its cap fails alone, with the error the operating system would give; a set
//! of pods that takes what no pod was guaranteed leaves every pod its guaranteed share, so a
//! bystander keeps opening its files and answering its clients. One runtime worker, so that the
//! runtime's budget is the one these numbers are counted against.

use e2e::{Cluster, free_ports, has_phase, http_pod, wait_for, wasm_pod, with_scratch};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;

/// The index `N` of the file `open /scratch/open-N` that `logs` say failed to open.
fn failed_open(logs: &str) -> Option<usize> {
    let (_, rest) = logs.split_once("open /scratch/open-")?;
    rest.split(':').next()?.parse().ok()
}

#[tokio::test]
async fn guests_files_are_capped_per_pod_and_every_pod_keeps_its_guaranteed_share()
-> anyhow::Result<()> {
    let cluster = Cluster::new("descriptors").await?;
    let agent = cluster
        .start_node_with(&[
            "--runtime-workers",
            "1",
            "--max-pod-descriptors",
            "100",
            "--guaranteed-descriptors-per-container",
            "16",
            "--max-open-files-per-container",
            "60",
        ])
        .await?;
    let module = cluster.push_guest("wasi-probe").await?;
    let component = cluster.push_component("wasi-probe").await?;
    let server = cluster.push_component("http_probe").await?;
    let [port] = free_ports()?;
    cluster
        .serve(http_pod(
            "quiet",
            &server,
            &agent.name,
            port,
            serde_json::json!({}),
        ))
        .await?;
    let host = e2e::node_ip();
    let usual = e2e::usual_latency(&host, port).await?;
    let opener = |name: &str, image: &str, args: &[&str]| {
        with_scratch(wasm_pod(name, image, &agent.name, args, "Never"))
    };
    let logs = |name: &str| cluster.kubectl(&["logs", name]);

    // One container's files, across the node's whole budget: the per-container cap stops it
    // (its preopened directories count too), as EMFILE would, and the guest sees an error.
    for (name, image) in [("greedy", &module), ("greedy-p2", &component)] {
        cluster
            .create_pod(opener(name, image, &["open", "/scratch", "100"]))
            .await?;
        cluster
            .wait_pod(name, "Failed", has_phase("Failed"))
            .await?;
        let logs = logs(name)?;
        let failed = failed_open(&logs).unwrap_or_else(|| panic!("{name}: {logs}"));
        assert!(
            (56..60).contains(&failed),
            "{name} stopped at its 60 descriptors: {logs}"
        );
    }
    assert!(
        logs("greedy")?.contains("No file descriptors available"),
        "a module sees EMFILE"
    );

    // One pod holds all its cap; the next finds only its guarantee and what little is left.
    cluster
        .create_pod(opener(
            "hoarder",
            &module,
            &["open", "/scratch", "56", "forever"],
        ))
        .await?;
    cluster
        .eventually("the hoarder holds its files", async || {
            Ok(logs("hoarder")?
                .contains("holding 56 open files")
                .then_some(()))
        })
        .await?;
    cluster
        .create_pod(opener("second", &module, &["open", "/scratch", "56"]))
        .await?;
    cluster
        .wait_pod("second", "Failed", has_phase("Failed"))
        .await?;
    let second = logs("second")?;
    let failed = failed_open(&second).unwrap_or_else(|| panic!("second: {second}"));
    assert!(
        (13..40).contains(&failed),
        "the second pod got its 16 guaranteed descriptors and what the hoarder left, not its cap: {second}"
    );
    // A bystander still opens its files, and the quiet pod answers as it did.
    cluster
        .create_pod(opener(
            "modest",
            &module,
            &["open", "/scratch", "10", "print", "done"],
        ))
        .await?;
    cluster
        .wait_pod("modest", "Succeeded", has_phase("Succeeded"))
        .await?;
    e2e::answers_as_usual(&host, port, usual).await?;

    // Files closed are given back: a guest opening and closing many more than its cap.
    cluster
        .pods()
        .delete("hoarder", &DeleteParams::default())
        .await?;
    let gone = wait_for(cluster.pods(), "hoarder", |p: Option<&Pod>| p.is_none()).await;
    assert!(matches!(gone, Ok(None)), "the hoarder is deleted");
    cluster
        .create_pod(opener("churner", &module, &["churn", "/scratch", "500"]))
        .await?;
    cluster
        .wait_pod("churner", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert!(logs("churner")?.contains("opened and closed 500 files"));
    Ok(())
}

#[tokio::test]
async fn one_pods_idle_clients_cannot_take_the_connections_its_neighbour_is_guaranteed()
-> anyhow::Result<()> {
    let cluster = Cluster::new("descriptor-conns").await?;
    let agent = cluster
        .start_node_with(&[
            "--runtime-workers",
            "1",
            "--max-pod-descriptors",
            "120",
            "--guaranteed-descriptors-per-container",
            "16",
        ])
        .await?;
    let image = cluster.push_component("http_probe").await?;
    let [noisy_port, quiet_port] = free_ports()?;
    for (name, port) in [("noisy", noisy_port), ("quiet", quiet_port)] {
        cluster
            .serve(http_pod(
                name,
                &image,
                &agent.name,
                port,
                serde_json::json!({}),
            ))
            .await?;
    }
    let host = e2e::node_ip();
    let usual = e2e::usual_latency(&host, quiet_port).await?;
    // 200 idle connections: far below the per-container cap (1024), above what the runtime
    // has left once each pod's 16 are set aside.
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(tokio::net::TcpStream::connect((host.as_str(), noisy_port)).await?);
    }
    e2e::answers_as_usual(&host, quiet_port, usual).await?;
    // A new client of the noisy pod is told which limit it met.
    let answer = cluster.refusal(&host, noisy_port).await?;
    assert!(answer.contains("--max-pod-descriptors"), "{answer}");
    // Closed connections give their descriptors back.
    drop(held);
    cluster
        .eventually("the noisy pod answers again", async || {
            Ok((e2e::http_get_at(&host, noisy_port, "/").await?.0 == 200).then_some(()))
        })
        .await?;
    Ok(())
}

/// Descriptors the process `pid` has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |fds| fds.count())
}

#[tokio::test]
async fn unpolled_name_lookups_hold_a_few_descriptors_and_leave_a_neighbour_serving()
-> anyhow::Result<()> {
    // A name server that never answers (port 53 needs root, as the other DNS tests).
    let Ok(_silent) = std::net::UdpSocket::bind("127.0.0.78:53") else {
        eprintln!("skipped: binding a name server on port 53 needs root");
        return Ok(());
    };
    let cluster = Cluster::new("descriptor-lookups").await?;
    let agent = cluster
        .start_node_with(&["--runtime-workers", "1", "--max-pod-descriptors", "200"])
        .await?;
    let image = cluster.push_component("http_probe").await?;
    let ports: [u16; 4] = free_ports()?;
    let (quiet_port, noisy_ports) = (ports[0], &ports[1..]);
    cluster
        .serve(http_pod(
            "quiet",
            &image,
            &agent.name,
            quiet_port,
            serde_json::json!({}),
        ))
        .await?;
    for (i, port) in noisy_ports.iter().enumerate() {
        let mut pod = http_pod(
            &format!("asker-{i}"),
            &image,
            &agent.name,
            *port,
            serde_json::json!({"krustlet.dev/allowed-outbound-hosts": "*"}),
        );
        let spec = pod.spec.as_mut().expect("spec");
        spec.dns_policy = Some("None".into());
        spec.dns_config = Some(serde_json::from_value(serde_json::json!({
            "nameservers": ["127.0.0.78"],
            "options": [{"name": "timeout", "value": "30"}, {"name": "attempts", "value": "5"}],
        }))?);
        cluster.serve(pod).await?;
    }
    let host = e2e::node_ip();
    let usual = e2e::usual_latency(&host, quiet_port).await?;
    let [(_, worker)] = agent.worker_pids()[..] else {
        anyhow::bail!("one runtime worker: {:?}", agent.worker_pids());
    };
    let before = open_descriptors(worker);
    // 2,000 lookups per pod that nobody polls and no name server answers: each pod's guests
    // ask 32 at a time (hickory asks each with a few sockets), the rest wait holding none, and
    // every socket is one of the runtime's 200 descriptors for pods.
    for (i, port) in noisy_ports.iter().enumerate() {
        let (status, body) =
            e2e::http_get_at(&host, *port, &format!("/lookups/2000/host{i}.example")).await?;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("started 2000 lookups"), "{body}");
    }
    let held = open_descriptors(worker).saturating_sub(before);
    assert!(
        held <= 200,
        "6,000 unanswered lookups hold {held} more descriptors in the worker"
    );
    e2e::answers_as_usual(&host, quiet_port, usual).await?;
    Ok(())
}

#[tokio::test]
async fn a_request_whose_instance_finds_no_descriptor_is_answered_503_naming_the_limit()
-> anyhow::Result<()> {
    let cluster = Cluster::new("descriptor-requests").await?;
    // Each request's instance opens its container's mounts: two here (an emptyDir, and the
    // service account's volume where the API server adds it), one more than the cap.
    let agent = cluster
        .start_node_with(&["--max-open-files-per-container", "1"])
        .await?;
    let image = cluster.push_component("http_probe").await?;
    let [port] = free_ports()?;
    cluster
        .create_pod(with_scratch(http_pod(
            "mounted",
            &image,
            &agent.name,
            port,
            serde_json::json!({}),
        )))
        .await?;
    cluster
        .wait_pod("mounted", "running", e2e::is_running_after_restarts(0))
        .await?;
    let host = e2e::node_ip();
    let (status, body) = cluster
        .eventually("an answer", async || {
            Ok(e2e::http_get_at(&host, port, "/").await.ok())
        })
        .await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--max-open-files-per-container"), "{body}");
    Ok(())
}
