//! The Spin scenario: what a Spin app pod costs beside a wasi-http pod of the same component.
//! Both run `examples/spin-hello` (spin-sdk 3): once componentized as the node does it and
//! pushed as a plain wasi-http component, once as a one-component Spin app pushed as `spin
//! registry push` lays it out. Start (creation to Ready, cold then warm) and load (requests per
//! second, p99, CPU per request) are measured for each in one run.

use crate::{Bench, http_load, measured_load, ms, percentile};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SPIN_TOML: &str = r#"
spin_manifest_version = 2
[application]
name = "bench"
[[trigger.http]]
route = "/..."
component = "hello"
[component.hello]
source = "spin_hello.wasm"
"#;

/// Runs the scenario on `bench`'s node with `connections` load connections for `seconds` per
/// run, and prints its tables.
pub async fn scenario(bench: &Bench, connections: usize, seconds: u64) -> anyhow::Result<()> {
    let module = std::fs::read(testkit::fixtures::wasm_module("spin_hello")?)?;
    let component = spin_runtime::componentize::componentize(&module)?.into_owned();
    let http_image = bench
        .cluster
        .push_component_bytes("spin-hello-component", component)
        .await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("spin.toml"), SPIN_TOML)?;
    std::fs::write(dir.path().join("spin_hello.wasm"), &module)?;
    let locked = spin_runtime::lock::lock_dir(dir.path())?;
    let registry = bench.cluster.registry();
    let spin_image = format!("{registry}/{}/spin-hello-app:v1", bench.cluster.id);
    kubelet::images::push_spin_app(
        &spin_image,
        kubelet::images::SpinAppLayers {
            locked: locked.json,
            components: locked.components,
            files: locked.files,
        },
        &kubelet::images::credentials::Keyring::default(),
        &[registry.to_string()],
    )
    .await?;

    let [http_port, spin_port]: [u16; 2] = e2e::free_ports()?;
    let ip: std::net::IpAddr = e2e::node_ip().parse()?;
    let http_pod = |name: &str| crate::http_pod(name, &http_image, &bench.agent.name, http_port);
    let spin_pod = |name: &str| {
        let mut pod = crate::http_pod(name, &spin_image, &bench.agent.name, spin_port);
        if let Some(spec) = pod.spec.as_mut() {
            spec.containers[0].env = Some(vec![serde_json::from_value(serde_json::json!(
                {"name": "SPIN_HTTP_LISTEN_ADDR", "value": format!("0.0.0.0:{spin_port}")}
            ))?]);
        }
        anyhow::Ok(pod)
    };
    // Cold (pull, componentize, compile) then warm (cached) starts, one pod at a time.
    let mut starts: HashMap<&str, [Duration; 2]> = HashMap::new();
    let pod_of = |kind: &str, name: &str| match kind {
        "spin app" => spin_pod(name),
        _ => Ok(http_pod(name)),
    };
    for kind in ["wasi-http", "spin app"] {
        let mut times = [Duration::ZERO; 2];
        for (round, time) in times.iter_mut().enumerate() {
            let name = format!("{}-{round}", kind.replace(' ', "-"));
            let pod = pod_of(kind, &name)?;
            let created = HashMap::from([(name.clone(), Instant::now())]);
            bench
                .cluster
                .pods()
                .create(&Default::default(), &pod)
                .await?;
            *time = bench
                .latencies(&created, false, Duration::from_secs(120))
                .await?
                .first()
                .copied()
                .unwrap_or_default();
            if round == 0 {
                bench
                    .cluster
                    .pods()
                    .delete(&name, &Default::default())
                    .await?;
                wait_gone(bench, &name).await?;
            }
        }
        starts.insert(kind, times);
    }

    println!(
        "## Spin app beside wasi-http: examples/spin-hello both ways, {connections} connections, {seconds} s per run\n"
    );
    println!(
        "| pod | cold start | warm start | requests/s | p50 | p99 | errors | CPU per request |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut measured = Vec::new();
    for (kind, port) in [("wasi-http", http_port), ("spin app", spin_port)] {
        let addr = SocketAddr::new(ip, port);
        http_load::run(addr, "/", 4, Duration::from_secs(1)).await;
        let (load, cpu) = measured_load(addr, connections, seconds, &bench.pids()).await;
        let per_request = cpu.as_secs_f64() / load.ok.max(1) as f64;
        let [cold, warm] = starts[kind];
        println!(
            "| {kind} | {} | {} | {:.0} | {} | {} | {} | {:.0} us |",
            ms(cold),
            ms(warm),
            load.rate(),
            ms(percentile(&load.latencies, 50.0)),
            ms(percentile(&load.latencies, 99.0)),
            load.errors,
            per_request * 1e6
        );
        measured.push((load, per_request, [cold, warm]));
    }
    let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
    let (http, spin) = (&measured[0], &measured[1]);
    println!(
        "\nSpin app / wasi-http: requests/s **{:.2}x**, p99 **{:.2}x**, CPU per request **{:.2}x**, cold start **{:.2}x**, warm start **{:.2}x**.\n",
        ratio(spin.0.rate(), http.0.rate()),
        ratio(
            percentile(&spin.0.latencies, 99.0).as_secs_f64(),
            percentile(&http.0.latencies, 99.0).as_secs_f64()
        ),
        ratio(spin.1, http.1),
        ratio(spin.2[0].as_secs_f64(), http.2[0].as_secs_f64()),
        ratio(spin.2[1].as_secs_f64(), http.2[1].as_secs_f64()),
    );
    bench.delete_all().await
}

/// Waits until pod `name` is gone (its port free for the next).
async fn wait_gone(bench: &Bench, name: &str) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(120);
    while bench.cluster.pods().get_opt(name).await?.is_some() {
        anyhow::ensure!(
            Instant::now() < until,
            "pod {name} was not deleted within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
