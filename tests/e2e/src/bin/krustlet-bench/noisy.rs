//! The noisy-neighbour scenario: a quiet wasi-http pod under load, alone, then beside a noisy
//! pod on the same node whose clients do what the isolation issue saw take nodes down: hold
//! idle connections, hold slow requests (as many instances as it may), and send requests that
//! compute (the noisy pod has `limits.cpu: 500m`). The quiet pod's requests per second and p99
//! are reported both ways, in one run.

use crate::{Bench, http_load, ms, percentile};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Idle connections the noisy pod's clients hold (under `--http-max-connections-per-container`).
const IDLE_CONNECTIONS: usize = 900;
/// Slow requests its clients hold at once (more than the 100 it may have in flight).
const SLOW_REQUESTS: usize = 120;
/// Clients sending requests that compute, one after another.
const SPINNERS: usize = 4;
/// How long a noisy client waits after a refusal before it asks again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What the noisy pod's clients saw.
#[derive(Default)]
struct NoisyAnswers {
    by_status: HashMap<u16, u64>,
    failed: u64,
}

/// Runs the scenario on `bench`'s node with `connections` load connections for `seconds` per
/// run, and prints its table.
pub async fn scenario(bench: &Bench, connections: usize, seconds: u64) -> anyhow::Result<()> {
    let image = bench.cluster.push_component("http_probe").await?;
    let [quiet_port, noisy_port]: [u16; 2] = e2e::free_ports()?;
    let quiet = crate::http_pod("quiet", &image, &bench.agent.name, quiet_port);
    let mut noisy = crate::http_pod("noisy", &image, &bench.agent.name, noisy_port);
    if let Some(spec) = noisy.spec.as_mut() {
        spec.containers[0].resources = Some(serde_json::from_value(
            serde_json::json!({"limits": {"cpu": "500m"}}),
        )?);
    }
    let pods = bench.cluster.pods();
    let mut created = HashMap::new();
    for pod in [quiet, noisy] {
        created.insert(
            pod.metadata.name.clone().unwrap_or_default(),
            Instant::now(),
        );
        pods.create(&Default::default(), &pod).await?;
    }
    bench
        .latencies(&created, false, Duration::from_secs(120))
        .await?;
    let ip: std::net::IpAddr = e2e::node_ip().parse()?;
    let quiet_addr = SocketAddr::new(ip, quiet_port);
    let noisy_addr = SocketAddr::new(ip, noisy_port);
    http_load::run(quiet_addr, "/", connections, Duration::from_secs(1)).await;
    http_load::run(noisy_addr, "/", connections, Duration::from_secs(1)).await;

    let alone = http_load::run(quiet_addr, "/", connections, Duration::from_secs(seconds)).await;

    let until = Instant::now() + Duration::from_secs(seconds + 15);
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        if let Ok(stream) = tokio::net::TcpStream::connect(noisy_addr).await {
            idle.push(stream);
        }
    }
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..SLOW_REQUESTS {
        clients.spawn(requests(noisy_addr, "/sleep/5000", until));
    }
    for _ in 0..SPINNERS {
        clients.spawn(requests(noisy_addr, "/spin/200", until));
    }
    // The noisy clients settle (every instance it may hold taken), then the quiet pod is loaded.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let beside = http_load::run(quiet_addr, "/", connections, Duration::from_secs(seconds)).await;
    let mut noisy_answers = NoisyAnswers::default();
    while let Some(done) = clients.join_next().await {
        if let Ok(answers) = done {
            for (status, n) in answers.by_status {
                *noisy_answers.by_status.entry(status).or_default() += n;
            }
            noisy_answers.failed += answers.failed;
        }
    }
    drop(idle);

    println!(
        "## Noisy neighbour: a quiet wasi-http pod, {connections} connections for {seconds} s, alone and beside a noisy pod\n"
    );
    println!(
        "The noisy pod (`limits.cpu: 500m`) meanwhile: {IDLE_CONNECTIONS} idle connections held, {SLOW_REQUESTS} clients sending `/sleep/5000` one after another, {SPINNERS} sending `/spin/200` (computing 200 ms); a refused client asks again after {RETRY_PAUSE:?}.\n"
    );
    println!("| quiet pod | requests/s | p50 | p99 | max | errors |");
    println!("|---|---|---|---|---|---|");
    for (what, load) in [("alone", &alone), ("beside the noisy pod", &beside)] {
        println!(
            "| {what} | {:.0} | {} | {} | {} | {} |",
            load.rate(),
            ms(percentile(&load.latencies, 50.0)),
            ms(percentile(&load.latencies, 99.0)),
            ms(load.latencies.last().copied().unwrap_or_default()),
            load.errors
        );
    }
    println!(
        "\nBeside / alone: requests/s {:.2}x, p99 {:.2}x.",
        beside.rate() / alone.rate().max(f64::MIN_POSITIVE),
        percentile(&beside.latencies, 99.0).as_secs_f64()
            / percentile(&alone.latencies, 99.0)
                .as_secs_f64()
                .max(f64::MIN_POSITIVE)
    );
    let mut statuses: Vec<_> = noisy_answers.by_status.into_iter().collect();
    statuses.sort();
    println!(
        "The noisy pod's clients were answered: {}; {} failed without an answer.\n",
        statuses
            .iter()
            .map(|(status, n)| format!("{n} x {status}"))
            .collect::<Vec<_>>()
            .join(", "),
        noisy_answers.failed
    );
    bench.delete_all().await
}

/// One client sending `GET path` to `addr` on one connection after another until `until`.
async fn requests(addr: SocketAddr, path: &'static str, until: Instant) -> NoisyAnswers {
    let mut answers = NoisyAnswers::default();
    while Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(
            left,
            e2e::http_get_at(&addr.ip().to_string(), addr.port(), path),
        )
        .await
        {
            Ok(Ok((status, _))) => {
                *answers.by_status.entry(status).or_default() += 1;
                if status != 200 {
                    // Refused: tried again shortly, as a retrying client does.
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
            Ok(Err(_)) => {
                answers.failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => break,
        }
    }
    answers
}
