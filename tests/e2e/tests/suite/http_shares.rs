//! What one HTTP pod may take of what its runtime shares with every other pod: its guaranteed
//! share of the instance pool (and a node that admits no more HTTP pods than it can
//! guarantee), CPU time per request, outgoing connections. Each test keeps a bystander that
//! must answer throughout.

use e2e::{Cluster, free_ports, http_get, http_pod, is_waiting, node_ip, waiting_message};
use kube::api::DeleteParams;
use std::time::Duration;

/// Waits until pod `name`'s log holds `needle` `times` times.
async fn logged(cluster: &Cluster, name: &str, needle: &str, times: usize) -> anyhow::Result<()> {
    cluster
        .eventually(
            &format!("{times} x {needle:?} in {name}'s log"),
            async || {
                let logs = cluster.kubectl(&["logs", name])?;
                Ok((logs.matches(needle).count() >= times).then_some(()))
            },
        )
        .await
}

#[tokio::test]
async fn a_pod_keeps_its_guaranteed_share_and_the_node_admits_no_more_than_it_can_guarantee()
-> anyhow::Result<()> {
    let cluster = Cluster::new("http-pool").await?;
    // A pool of 9 instances; the probe's requests take 3 each (its core modules), one request
    // is guaranteed per container: three containers fit.
    let agent = cluster
        .start_node_with(&[
            "--runtime-workers",
            "1",
            "--http-pool-instances",
            "9",
            "--http-guaranteed-requests-per-container",
            "1",
        ])
        .await?;
    let image = cluster.push_component("http_probe").await?;
    let [noisy, quiet, third, fourth] = free_ports()?;
    for (name, port) in [("noisy", noisy), ("quiet", quiet)] {
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
    // The noisy pod's slow requests take its own instance and borrow every one not promised.
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(http_get(noisy, "/sleep/6000")))
        .collect();
    logged(&cluster, "noisy", "/sleep/6000", 2).await?;
    let (code, body) = http_get(noisy, "/").await?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("--http-pool-instances"), "{body}");
    // The quiet one serves from its own share meanwhile.
    let (code, body) = http_get(quiet, "/").await?;
    assert_eq!((code, body.as_str()), (200, "hello from wasi-http\n"));
    // A third pod can be guaranteed its share: it gets the borrowed instances as they come back.
    cluster
        .serve(http_pod(
            "third",
            &image,
            &agent.name,
            third,
            serde_json::json!({}),
        ))
        .await?;
    for request in slow {
        assert_eq!(request.await??.0, 200);
    }
    // A fourth cannot: it waits, saying why, and the pods already running serve on.
    cluster
        .create_pod(http_pod(
            "fourth",
            &image,
            &agent.name,
            fourth,
            serde_json::json!({}),
        ))
        .await?;
    let refused = cluster
        .wait_pod("fourth", "refused", is_waiting("CreateContainerError"))
        .await?;
    let message = waiting_message(&refused);
    assert!(message.contains("--http-pool-instances"), "{message}");
    assert!(message.contains("guaranteed"), "{message}");
    for port in [noisy, quiet, third] {
        assert_eq!(http_get(port, "/").await?.0, 200);
    }
    // Once a pod goes, its share is free and the fourth starts.
    cluster
        .pods()
        .delete("third", &DeleteParams::default())
        .await?;
    cluster.wait_port_closed(third).await?;
    cluster
        .wait_pod("fourth", "Ready", e2e::is_pod_ready())
        .await?;
    assert_eq!(http_get(fourth, "/").await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn a_request_past_its_cpu_time_is_stopped_and_its_pod_serves_on() -> anyhow::Result<()> {
    let cluster = Cluster::new("http-cpu").await?;
    let agent = cluster
        .start_node_with(&["--http-request-cpu-time", "1s"])
        .await?;
    let image = cluster.push_component("http_probe").await?;
    let [busy, bystander] = free_ports()?;
    for (name, port) in [("busy", busy), ("bystander", bystander)] {
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
    let (code, body) = http_get(busy, "/spin/100").await?;
    assert_eq!((code, body.as_str()), (200, "computed 100 ms\n"));
    let spinning = tokio::spawn(http_get(busy, "/spin/20000"));
    logged(&cluster, "busy", "/spin/20000", 1).await?;
    let started = std::time::Instant::now();
    assert_eq!(http_get(bystander, "/").await?.0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the bystander answered within its usual latency"
    );
    let (code, _) = spinning.await??;
    assert_eq!(code, 500, "the request's instance was stopped");
    logged(&cluster, "busy", "--http-request-cpu-time", 1).await?;
    assert_eq!(http_get(busy, "/").await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn a_pods_outgoing_connections_are_capped() -> anyhow::Result<()> {
    let cluster = Cluster::new("http-outgoing").await?;
    let agent = cluster
        .start_node_with(&["--max-outgoing-http-connections-per-container", "1"])
        .await?;
    let image = cluster.push_component("http_probe").await?;
    // A server that takes connections and never answers.
    let silent = tokio::net::TcpListener::bind((node_ip().as_str(), 0)).await?;
    let silent_host = format!("{}:{}", node_ip(), silent.local_addr()?.port());
    let [caller, bystander] = free_ports()?;
    let allowed = serde_json::json!({"krustlet.dev/allowed-outbound-hosts": silent_host});
    cluster
        .serve(http_pod("caller", &image, &agent.name, caller, allowed))
        .await?;
    cluster
        .serve(http_pod(
            "bystander",
            &image,
            &agent.name,
            bystander,
            serde_json::json!({}),
        ))
        .await?;
    let fetch = format!("/fetch/{silent_host}/");
    let waiting = tokio::spawn({
        let fetch = fetch.clone();
        async move { http_get(caller, &fetch).await }
    });
    let (held, _) = tokio::time::timeout(Duration::from_secs(30), silent.accept()).await??;
    // The container's one connection is held: the next outgoing request fails at once.
    let (code, body) = http_get(caller, &fetch).await?;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("ConnectionLimitReached"), "{body}");
    assert_eq!(http_get(bystander, "/").await?.0, 200);
    // The held connection closes: its request fails, and the place is free again.
    drop(held);
    let (code, body) = waiting.await??;
    assert_eq!(code, 502, "{body}");
    let again = tokio::spawn({
        let fetch = fetch.clone();
        async move { http_get(caller, &fetch).await }
    });
    let (_held, _) = tokio::time::timeout(Duration::from_secs(30), silent.accept()).await??;
    again.abort();
    Ok(())
}

#[tokio::test]
async fn a_pods_cpu_limit_bounds_all_its_requests_together() -> anyhow::Result<()> {
    let cluster = Cluster::new("http-cpu-share").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_component("http_probe").await?;
    let [port] = free_ports()?;
    let mut pod = http_pod("limited", &image, &agent.name, port, serde_json::json!({}));
    pod.spec.as_mut().expect("spec").containers[0].resources = Some(serde_json::from_value(
        serde_json::json!({"limits": {"cpu": "200m"}}),
    )?);
    cluster.serve(pod).await?;
    // Four requests computing at once: each an instance of its own, all of them the container's.
    let spinning: Vec<_> = (0..4)
        .map(|_| tokio::spawn(http_get(port, "/spin/30000")))
        .collect();
    logged(&cluster, "limited", "/spin/30000", 4).await?;
    // The container's rate, between samples a second apart, is near its limit (one sample may
    // run over on a loaded machine); instances each given the limit would show 800m or more in
    // every sample.
    let mut seen = Vec::new();
    let within = cluster
        .eventually("the container's CPU rate within its limit", async || {
            let raw = cluster.kubectl(&[
                "get",
                "--raw",
                &format!("/api/v1/nodes/{}/proxy/stats/summary", agent.name),
            ])?;
            let rate = e2e::metrics_server::scrape(&raw)?
                .pods
                .into_iter()
                .find(|p| p.name == "limited" && p.namespace == cluster.namespace)
                .and_then(|p| p.containers.into_iter().next())
                .map(|(_, usage)| usage.nano_cores)
                .filter(|cores| *cores > 0);
            seen.extend(rate);
            Ok(rate.filter(|cores| *cores <= 300_000_000))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}: four requests limited to 200m used {seen:?}"))?;
    assert!(within > 0);
    for request in spinning {
        request.abort();
    }
    Ok(())
}

#[tokio::test]
async fn a_container_its_worker_cannot_guarantee_starts_in_another_or_waits() -> anyhow::Result<()>
{
    let cluster = Cluster::new("http-pool-workers").await?;
    // Two runtime workers, each with a pool that guarantees one container of the probe.
    let agent = cluster
        .start_node_with(&[
            "--runtime-workers",
            "2",
            "--http-pool-instances",
            "3",
            "--http-guaranteed-requests-per-container",
            "1",
        ])
        .await?;
    let image = cluster.push_component("http_probe").await?;
    let command = cluster.push_guest("wasi-probe").await?;
    let [first, second, third] = free_ports()?;
    // The first goes to worker 0 (both idle), a command pod to worker 1 (the less loaded): the
    // second server finds worker 0 first (the loads are equal), whose pool is promised, and
    // starts in worker 1.
    cluster
        .serve(http_pod(
            "first",
            &image,
            &agent.name,
            first,
            serde_json::json!({}),
        ))
        .await?;
    cluster
        .run_forever("command", &command, &agent.name)
        .await?;
    cluster
        .serve(http_pod(
            "second",
            &image,
            &agent.name,
            second,
            serde_json::json!({}),
        ))
        .await?;
    // No worker can guarantee a third.
    cluster
        .create_pod(http_pod(
            "third",
            &image,
            &agent.name,
            third,
            serde_json::json!({}),
        ))
        .await?;
    let refused = cluster
        .wait_pod("third", "refused", is_waiting("CreateContainerError"))
        .await?;
    let message = waiting_message(&refused);
    assert!(message.contains("runtime worker"), "{message}");
    assert!(message.contains("--http-pool-instances"), "{message}");
    for port in [first, second] {
        assert_eq!(http_get(port, "/").await?.0, 200);
    }
    Ok(())
}
