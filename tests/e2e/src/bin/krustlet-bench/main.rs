//! The benchmark: starts the API server stand-in (or uses the cluster `KRUSTLET_E2E_KUBECONFIG`
//! names), one `krustlet-wasi` node agent built in release mode and the test registry, runs the
//! scenarios of BENCHMARKS.md and prints a table.
//!
//! `cargo run --release -p e2e --bin krustlet-bench -- --help`

mod http_load;
mod lease;
mod noisy;
mod spin;

use anyhow::Context;
use clap::Parser;
use e2e::{Cluster, NodeAgent, rss_kib, wasm_pod};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::watcher;
use lease::LeaseWatch;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Benchmarks of the node agent: start latency, cold and warm starts, density, idle footprint,
/// and the wasmtime baseline.
#[derive(Debug, Parser)]
struct Args {
    /// Pods per start-latency batch.
    #[arg(long, default_value_t = 200)]
    pods: usize,
    /// Pod creations per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Idle pods to ramp to, in steps (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    density: Vec<usize>,
    /// Idle HTTP-serving pods (wasi-http components, a port each) to ramp to, in steps; then
    /// each is sent one request. 0 skips the scenario.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    http_density: Vec<usize>,
    /// Pod creations per second while ramping density.
    #[arg(long, default_value_t = 200.0)]
    density_rate: f64,
    /// Seconds to watch the idle agent.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// Runs of the plain-wasmtime baseline.
    #[arg(long, default_value_t = 2000)]
    baseline_runs: usize,
    /// Connections of the HTTP load runs against one wasi-http pod, one run per value
    /// (comma-separated); 0 skips the scenario. With a `wasmtime` on PATH the same component
    /// is loaded under `wasmtime serve` too, in the same run.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64")]
    http_connections: Vec<usize>,
    /// Seconds each HTTP load run lasts.
    #[arg(long, default_value_t = 10)]
    http_seconds: u64,
    /// Cold first requests (a new component each) to a pod and to `wasmtime serve`, taken in
    /// turn, of which the HTTP scenario reports medians.
    #[arg(long, default_value_t = 7)]
    cold_http_runs: usize,
    /// Runs the HTTP load scenarios only.
    #[arg(long)]
    http_load_only: bool,
    /// Load connections to the quiet pod of the noisy-neighbour scenario (run after the HTTP
    /// load scenario, for `--http-seconds` each way); 0 skips it.
    #[arg(long, default_value_t = 16)]
    noisy_connections: usize,
    /// Load connections of the Spin scenario (a Spin app pod beside a wasi-http pod of the
    /// same component, run after the noisy one, for `--http-seconds` each); 0 skips it.
    #[arg(long, default_value_t = 16)]
    spin_connections: usize,
    /// `--runtime-workers` of the node agent, one full run of the node scenarios per value
    /// (comma-separated; 0 runs the guests in the agent's process), then the two compared. The
    /// HTTP load scenario runs with the last value.
    #[arg(long, value_delimiter = ',', default_value = "0,2")]
    runtime_workers: Vec<usize>,
    /// Idle HTTP servers to ramp to, in steps, on a node with a CNI network of the bench's own
    /// (each pod in its own network namespace with its own IP, all on one port; Debian's
    /// containernetworking-plugins), beside the node-network HTTP density above. 0 skips it.
    #[arg(long, value_delimiter = ',', default_value = "500")]
    cni_http_density: Vec<usize>,
}

/// What one mode's run measured, for the comparison.
struct Summary {
    mode: String,
    idle_rss_kib: u64,
    worker_rss_kib: Vec<u64>,
    running: Vec<Duration>,
    succeeded: Vec<Duration>,
    per_pod_kib: f64,
    cold: Duration,
    warm: Duration,
    restarted: Duration,
}

/// First times each pod was seen in a state, by the watch.
#[derive(Default)]
struct Seen {
    running: HashMap<String, Instant>,
    succeeded: HashMap<String, Instant>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.0} us", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

/// `(p50, p90, p99, max)` as a table row.
fn latency_row(name: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    format!(
        "| {name} | {} | {} | {} | {} | {} |",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 90.0)),
        ms(percentile(&samples, 99.0)),
        ms(samples.last().copied().unwrap_or_default())
    )
}

/// The memory mappings of processes `pids` (what `vm.max_map_count` limits, per process).
fn mappings(pids: &[u32]) -> usize {
    pids.iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .map_or(0, |maps| maps.lines().count())
        })
        .sum()
}

/// The resident memory of processes `pids` together, in KiB.
fn rss(pids: &[u32]) -> u64 {
    pids.iter().map(|pid| rss_kib(*pid)).sum()
}

/// CPU time (user + system) of processes `pids` together.
fn cpu_time(pids: &[u32]) -> Duration {
    pids.iter().map(|pid| e2e::cpu_time(*pid)).sum()
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let mut revision = git(&["rev-parse", "--short", "HEAD"]);
    if !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        revision.push_str(" with uncommitted changes");
    }
    let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count").unwrap_or_default();
    format!(
        "{cores} cores, {:.1} GiB memory, vm.max_map_count {}, revision {revision}, command: {}",
        memory as f64 / 1048576.0,
        max_map_count.trim(),
        std::env::args().collect::<Vec<_>>().join(" ")
    )
}

struct Bench {
    cluster: Cluster,
    agent: NodeAgent,
    /// `--runtime-workers` of the agent.
    workers: usize,
    image: String,
    seen: Arc<Mutex<Seen>>,
    _watch: tokio::task::JoinHandle<()>,
}

impl Bench {
    /// A cluster and a node agent running its guests in `workers` runtime workers (0: in the
    /// agent's process).
    async fn start(workers: usize) -> anyhow::Result<Self> {
        Self::start_with(workers, &[]).await
    }

    /// [`Bench::start`] with extra agent flags.
    async fn start_with(workers: usize, extra: &[String]) -> anyhow::Result<Self> {
        let cluster = Cluster::new("bench").await?;
        let data_dir = tempfile::Builder::new()
            .prefix("krustlet-bench")
            .tempdir()?;
        let name = format!("bench-node-{workers}");
        let kubeconfig = e2e::node_credentials(&cluster, &name, data_dir.path()).await?;
        let workers_flag = workers.to_string();
        let mut flags = vec!["--max-pods", "20000", "--runtime-workers", &workers_flag];
        flags.extend(extra.iter().map(String::as_str));
        let agent = NodeAgent::start_with_args(
            &cluster,
            &name,
            data_dir,
            e2e::Credentials::Kubeconfig(kubeconfig),
            &flags,
        )
        .await?;
        let image = cluster.push_guest("wasi-probe").await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let watch = {
            let seen = seen.clone();
            let pods = cluster.pods();
            tokio::spawn(async move {
                let mut events = std::pin::pin!(watcher(pods, watcher::Config::default()));
                while let Some(event) = events.next().await {
                    let now = Instant::now();
                    let (Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod))) =
                        event
                    else {
                        continue;
                    };
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    match phase.as_deref() {
                        Some("Running") => {
                            seen.running.entry(name).or_insert(now);
                        }
                        Some("Succeeded") => {
                            seen.succeeded.entry(name).or_insert(now);
                        }
                        _ => {}
                    }
                }
            })
        };
        Ok(Self {
            cluster,
            agent,
            workers,
            image,
            seen,
            _watch: watch,
        })
    }

    /// Creates pods `prefix-0..n` of the wasi-probe module with `args` at `rate` per second;
    /// returns their creation times.
    async fn create(
        &self,
        prefix: &str,
        n: usize,
        rate: f64,
        args: &[&str],
    ) -> anyhow::Result<HashMap<String, Instant>> {
        self.create_with(prefix, 0..n, rate, |name, _| {
            wasm_pod(name, &self.image, &self.agent.name, args, "Never")
        })
        .await
    }

    /// Creates pod `prefix-i` = `pod(name, i)` for each i of `range` at `rate` per second;
    /// returns their creation times.
    async fn create_with(
        &self,
        prefix: &str,
        range: std::ops::Range<usize>,
        rate: f64,
        pod: impl Fn(&str, usize) -> Pod,
    ) -> anyhow::Result<HashMap<String, Instant>> {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut ticks = tokio::time::interval(interval);
        let mut created = HashMap::new();
        let mut creations = tokio::task::JoinSet::new();
        for i in range {
            ticks.tick().await;
            let name = format!("{prefix}-{i}");
            let pod = pod(&name, i);
            created.insert(name, Instant::now());
            let pods = self.cluster.pods();
            creations.spawn(async move { pods.create(&Default::default(), &pod).await });
        }
        while let Some(result) = creations.join_next().await {
            result?.context("creating a pod")?;
        }
        Ok(created)
    }

    /// Waits until every created pod reached the state; returns creation-to-state latencies.
    async fn latencies(
        &self,
        created: &HashMap<String, Instant>,
        succeeded: bool,
        deadline: Duration,
    ) -> anyhow::Result<Vec<Duration>> {
        let until = Instant::now() + deadline;
        loop {
            {
                let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                let states = if succeeded {
                    &seen.succeeded
                } else {
                    &seen.running
                };
                let done: Vec<Duration> = created
                    .iter()
                    .filter_map(|(name, at)| Some(states.get(name)?.duration_since(*at)))
                    .collect();
                if done.len() == created.len() {
                    return Ok(done);
                }
                if Instant::now() > until {
                    anyhow::bail!(
                        "only {} of {} pods got there within {deadline:?}",
                        done.len(),
                        created.len()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn delete_all(&self) -> anyhow::Result<()> {
        let pods = self.cluster.pods();
        pods.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        let until = Instant::now() + Duration::from_secs(600);
        while !pods.list(&ListParams::default()).await?.items.is_empty() {
            anyhow::ensure!(
                Instant::now() < until,
                "pods were not deleted in 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// The node's processes: the agent and its runtime workers.
    fn pids(&self) -> Vec<u32> {
        std::iter::once(self.agent.pid())
            .chain(self.agent.worker_pids().into_iter().map(|(_, pid)| pid))
            .collect()
    }

    /// How the node runs its guests, for the tables.
    fn mode(&self) -> String {
        match self.workers {
            0 => "in the agent".into(),
            n => format!("{n} runtime workers"),
        }
    }

    /// Writes the agent has made so far: (to pods and the node, to events).
    fn writes(&self) -> (u64, u64) {
        self.cluster.standin().map_or((0, 0), |s| {
            let counts = s.request_counts(&format!("system:node:{}", self.agent.name));
            (counts.writes, counts.event_writes)
        })
    }
}

/// One pod's time from creation to Succeeded, for the cold-path scenario.
async fn one_pod(bench: &Bench, name: &str) -> anyhow::Result<Duration> {
    let created = bench.create(name, 1, 1.0, &["exit", "0"]).await?;
    Ok(bench
        .latencies(&created, true, Duration::from_secs(120))
        .await?[0])
}

/// The same module run by plain wasmtime embedding code: compile once, then instantiate and
/// run to exit in a loop. Returns the median per run.
fn baseline(path: &std::path::Path, runs: usize) -> wasmtime::Result<Duration> {
    use wasmtime::{Config, Engine, Linker, Module, Store};
    let engine = Engine::new(&Config::new())?;
    let module = Module::from_file(&engine, path)?;
    let mut linker: Linker<wasmtime_wasi::p1::WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |ctx| ctx)?;
    let pre = linker.instantiate_pre(&module)?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let began = Instant::now();
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .args(&["wasi-probe", "exit", "0"])
            .build_p1();
        let mut store = Store::new(&engine, wasi);
        let instance = pre.instantiate(&mut store)?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        if let Err(e) = start.call(&mut store, ())
            && e.downcast_ref::<wasmtime_wasi::I32Exit>()
                .is_none_or(|exit| exit.0 != 0)
        {
            return Err(e);
        }
        samples.push(began.elapsed());
    }
    samples.sort();
    Ok(percentile(&samples, 50.0))
}

/// A pod serving the wasi-http component `image` on `port` of the node, run once.
fn http_pod(name: &str, image: &str, node: &str, port: u16) -> Pod {
    let mut pod = e2e::http_pod(name, image, node, port, serde_json::json!({}));
    if let Some(spec) = pod.spec.as_mut() {
        spec.restart_policy = Some("Never".into());
    }
    pod
}

/// The machine's `MemAvailable`, in KiB.
fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Idle HTTP servers on a node with a CNI network: each pod in its own namespace with its own
/// IP, all serving one port; then one request to each at its IP.
async fn cni_scenario(workers: usize, args: &Args) -> anyhow::Result<()> {
    let network = e2e::cni::TestNetwork::new("bench")?;
    let bench = Bench::start_with(workers, &network.flags()).await?;
    let server = bench.cluster.push_component("http_probe").await?;
    let node = bench.agent.name.clone();
    const PORT: u16 = 8080;
    ramp(
        &bench,
        "cni",
        "idle HTTP servers, each in its own network namespace with its own IP (CNI bridge + host-local + portmap), all on port 8080",
        &args.cni_http_density,
        args.density_rate,
        |name, _| http_pod(name, &server, &node, PORT),
    )
    .await?;
    let pods = bench.cluster.pods().list(&ListParams::default()).await?;
    let mut samples = Vec::with_capacity(pods.items.len());
    for pod in &pods.items {
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let began = Instant::now();
        let (code, _) = e2e::http_get_at(&ip, PORT, "/").await?;
        anyhow::ensure!(code == 200, "the server at {ip} answered {code}");
        samples.push(began.elapsed());
    }
    println!("| measure | requests | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    println!(
        "{}\n",
        latency_row("first request to each idle server, at its own IP", samples)
    );
    let began = Instant::now();
    bench.delete_all().await?;
    println!(
        "Deleting them all (DEL, namespaces removed): {:.1} s; IPs still allocated: {}\n",
        began.elapsed().as_secs_f64(),
        network.allocated().len()
    );
    Ok(())
}

/// `n` ports above 20000 that nothing listens on now.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let ip = e2e::node_ip();
    let ports: Vec<u16> = (20000..u16::MAX)
        .filter(|&port| std::net::TcpListener::bind((ip.as_str(), port)).is_ok())
        .take(n)
        .collect();
    anyhow::ensure!(ports.len() == n, "only {} free ports", ports.len());
    Ok(ports)
}

/// Ramps pods made by `pod` (named `<prefix><step>-<i>`) to each of `steps` and prints, per step, the time it took, the
/// agent's RSS and memory mappings (and per pod, over those before), its CPU over the next
/// 10 s, the node's readiness and the longest time between two renewals of its Lease.
async fn ramp(
    bench: &Bench,
    prefix: &str,
    what: &str,
    steps: &[usize],
    rate: f64,
    pod: impl Fn(&str, usize) -> Pod,
) -> anyhow::Result<f64> {
    let pids = bench.pids();
    println!(
        "## Density: {what}, created at {rate}/s, guests {}\n",
        bench.mode()
    );
    println!(
        "| pods | time to reach | node RSS (agent + workers) | RSS per pod | machine memory per pod | mappings | mappings per pod | node CPU | node | longest lease gap |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let lease = LeaseWatch::start(bench.cluster.client.clone(), &bench.agent.name);
    let (base_rss, base_mappings) = (rss(&pids), mappings(&pids));
    let base_available = mem_available_kib();
    let mut total = 0;
    let mut per_pod = 0.0;
    for &target in steps.iter().filter(|&&n| n > 0) {
        let began = Instant::now();
        let created = bench
            .create_with(&format!("{prefix}{target}"), total..target, rate, &pod)
            .await?;
        bench
            .latencies(&created, false, Duration::from_secs(1800))
            .await?;
        total = target;
        let reached = began.elapsed();
        let cpu_before = cpu_time(&pids);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let cpu_share = cpu_time(&pids).saturating_sub(cpu_before).as_secs_f64() / 10.0;
        let rss = rss(&pids);
        per_pod = (rss.saturating_sub(base_rss)) as f64 / total as f64;
        // Everything the pods cost the machine, the kernel's share (namespaces, interfaces,
        // sockets) included.
        let machine_per_pod =
            base_available.saturating_sub(mem_available_kib()) as f64 / total as f64;
        let maps = mappings(&pids);
        let maps_per_pod = maps.saturating_sub(base_mappings) as f64 / total as f64;
        let node = kube::Api::<k8s_openapi::api::core::v1::Node>::all(bench.cluster.client.clone())
            .get(&bench.agent.name)
            .await?;
        let ready =
            kube::runtime::wait::Condition::matches_object(&e2e::is_node_ready(), Some(&node));
        println!(
            "| {total} | {:.1} s | {:.1} MiB | {per_pod:.1} KiB | {machine_per_pod:.1} KiB | {maps} | {maps_per_pod:.2} | {:.0} % | {} | {:.1} s |",
            reached.as_secs_f64(),
            rss as f64 / 1024.0,
            cpu_share * 100.0,
            if ready { "Ready" } else { "NOT Ready" },
            lease.take_longest_gap().as_secs_f64()
        );
    }
    println!();
    Ok(per_pod)
}

/// One row of the HTTP load table: `load` of `server` (processes `pids`, which used `cpu`).
fn load_row(server: &str, connections: usize, load: &http_load::Load, cpu: Duration, pids: &[u32]) {
    let cpu_per_request = cpu.as_secs_f64() / load.ok.max(1) as f64;
    println!(
        "| {server} | {connections} | {:.0} | {} | {} | {} | {} | {:.0} us | {:.1} MiB |",
        load.rate(),
        ms(percentile(&load.latencies, 50.0)),
        ms(percentile(&load.latencies, 99.0)),
        ms(load.latencies.last().copied().unwrap_or_default()),
        load.errors,
        cpu_per_request * 1e6,
        rss(pids) as f64 / 1024.0
    );
}

/// `load` under `server` (processes `pids`), with the CPU time they used meanwhile.
async fn measured_load(
    addr: std::net::SocketAddr,
    connections: usize,
    seconds: u64,
    pids: &[u32],
) -> (http_load::Load, Duration) {
    let before = cpu_time(pids);
    let load = http_load::run(addr, "/", connections, Duration::from_secs(seconds)).await;
    (load, cpu_time(pids).saturating_sub(before))
}

/// `examples/http-probe` made new to the node: a custom section with the time makes its digest,
/// and so its compiled code, one never seen before.
fn fresh_http_probe() -> anyhow::Result<Vec<u8>> {
    let mut component = std::fs::read(testkit::fixtures::wasm_component("http_probe")?)?;
    let name = b"krustlet-bench-cold-start";
    let mut payload = vec![u8::try_from(name.len())?];
    payload.extend_from_slice(name);
    payload.extend_from_slice(&jiff::Timestamp::now().as_nanosecond().to_le_bytes());
    // Section id 0 (custom), its size as one LEB128 byte.
    component.push(0);
    component.push(
        u8::try_from(payload.len())
            .ok()
            .filter(|&n| n < 0x80)
            .expect("a short section"),
    );
    component.extend_from_slice(&payload);
    Ok(component)
}

/// Polls `GET /` on `addr` until it answers 200: how long since `since`.
async fn first_ok(addr: std::net::SocketAddr, since: Instant) -> anyhow::Result<Duration> {
    let deadline = since + Duration::from_secs(120);
    loop {
        if let Ok((200, _)) = e2e::http_get_at(&addr.ip().to_string(), addr.port(), "/").await {
            return Ok(since.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{addr} did not answer 200 within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The first request to a component never seen before: from the pod's creation (pull, compile,
/// start) and from starting `wasmtime serve` (compile, start), each to its first 200; `runs`
/// of each, taken in turn (a new component each time), reported as medians and extremes.
async fn cold_first_request(bench: &Bench, runs: usize) -> anyhow::Result<()> {
    let mut pods = Vec::new();
    let mut serves = Vec::new();
    for run in 0..runs.max(1) {
        let component = fresh_http_probe()?;
        let [port, wasmtime_port]: [u16; 2] = free_ports(2)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("two free ports"))?;
        let image = bench
            .cluster
            .push_component_bytes(&format!("http-probe-cold-{run}"), component.clone())
            .await?;
        let name = format!("cold-{run}");
        let created = Instant::now();
        bench
            .cluster
            .pods()
            .create(
                &Default::default(),
                &http_pod(&name, &image, &bench.agent.name, port),
            )
            .await?;
        let addr = std::net::SocketAddr::new(e2e::node_ip().parse()?, port);
        pods.push(first_ok(addr, created).await?);
        bench
            .cluster
            .pods()
            .delete(&name, &Default::default())
            .await?;
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), &component)?;
        let wasmtime_addr = std::net::SocketAddr::from(([127, 0, 0, 1], wasmtime_port));
        let started = Instant::now();
        let serve =
            http_load::WasmtimeServe::start(file.path(), wasmtime_addr, tempfile::tempfile()?)
                .await?;
        if serve.is_some() {
            serves.push(first_ok(wasmtime_addr, started).await?);
        }
    }
    pods.sort();
    serves.sort();
    let runs = pods.len();
    println!(
        "## Cold first request (a component never seen before, to its first 200), {runs} runs of each, in turn\n"
    );
    println!("| server | median | fastest | slowest |");
    println!("|---|---|---|---|");
    let row = |server: &str, times: &[Duration]| {
        println!(
            "| {server} | {} | {} | {} |",
            ms(percentile(times, 50.0)),
            ms(times[0]),
            ms(times[times.len() - 1])
        );
    };
    row("krustlet-wasi pod (creation, pull, compile, start)", &pods);
    if !serves.is_empty() {
        row("wasmtime serve (start, compile)", &serves);
        println!(
            "\nPod / wasmtime serve, medians: {:.2}x",
            percentile(&pods, 50.0).as_secs_f64()
                / percentile(&serves, 50.0)
                    .as_secs_f64()
                    .max(f64::MIN_POSITIVE)
        );
    }
    println!();
    Ok(())
}

/// Loads one wasi-http pod serving `examples/http-probe` (which logs a line per request)
/// with `connections` keep-alive connections per run, and the same component under
/// `wasmtime serve` when a `wasmtime` is on PATH, and prints both and their ratios.
async fn http_load_scenario(
    bench: &Bench,
    connections: &[usize],
    (seconds, cold_runs): (u64, usize),
) -> anyhow::Result<()> {
    cold_first_request(bench, cold_runs).await?;
    let image = bench.cluster.push_component("http_probe").await?;
    let [port, wasmtime_port]: [u16; 2] = free_ports(2)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("two free ports"))?;
    bench
        .cluster
        .pods()
        .create(
            &Default::default(),
            &http_pod("load", &image, &bench.agent.name, port),
        )
        .await?;
    let created = HashMap::from([("load".to_string(), Instant::now())]);
    bench
        .latencies(&created, false, Duration::from_secs(120))
        .await?;
    let pod_addr = std::net::SocketAddr::new(e2e::node_ip().parse()?, port);
    let output = tempfile::tempfile()?;
    let component = testkit::fixtures::wasm_component("http_probe")?;
    let wasmtime_addr = std::net::SocketAddr::from(([127, 0, 0, 1], wasmtime_port));
    let wasmtime = http_load::WasmtimeServe::start(&component, wasmtime_addr, output).await?;
    // Warm both up: compiled, pools touched, connections accepted once.
    http_load::run(pod_addr, "/", 4, Duration::from_secs(1)).await;
    if wasmtime.is_some() {
        http_load::run(wasmtime_addr, "/", 4, Duration::from_secs(1)).await;
    }
    println!(
        "## HTTP load: one wasi-http pod (examples/http-probe, a log line per request), {seconds} s per run\n"
    );
    match &wasmtime {
        Some(w) => println!(
            "Compared with `{}` on the same component, in the same run.\n",
            w.version
        ),
        None => println!("No `wasmtime` on PATH: no `wasmtime serve` comparison.\n"),
    }
    println!(
        "| server | connections | requests/s | p50 | p99 | max | errors | CPU per request | RSS after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for &c in connections.iter().filter(|&&c| c > 0) {
        let node_pids = bench.pids();
        let (pod, pod_cpu) = measured_load(pod_addr, c, seconds, &node_pids).await;
        load_row("krustlet-wasi pod", c, &pod, pod_cpu, &node_pids);
        if let Some(w) = &wasmtime {
            let (serve, serve_cpu) = measured_load(wasmtime_addr, c, seconds, &[w.pid()]).await;
            load_row("wasmtime serve", c, &serve, serve_cpu, &[w.pid()]);
            let per_request =
                |cpu: Duration, load: &http_load::Load| cpu.as_secs_f64() / load.ok.max(1) as f64;
            ratios.push(format!(
                "| {c} | {:.2}x | {:.2}x | {:.2}x | {} / {} |",
                pod.rate() / serve.rate().max(f64::MIN_POSITIVE),
                percentile(&pod.latencies, 99.0).as_secs_f64()
                    / percentile(&serve.latencies, 99.0)
                        .as_secs_f64()
                        .max(f64::MIN_POSITIVE),
                per_request(pod_cpu, &pod) / per_request(serve_cpu, &serve).max(f64::MIN_POSITIVE),
                pod.errors,
                serve.errors
            ));
        }
    }
    if !ratios.is_empty() {
        println!(
            "\n| connections | requests/s, pod / serve | p99, pod / serve | CPU per request, pod / serve | errors, pod / serve |"
        );
        println!("|---|---|---|---|---|");
        for row in ratios {
            println!("{row}");
        }
    }
    println!();
    bench.delete_all().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        !cfg!(debug_assertions),
        "run the benchmark in release mode: cargo run --release -p e2e --bin krustlet-bench"
    );
    println!("Machine: {}\n", machine());
    let last = args.runtime_workers.last().copied().unwrap_or(0);
    if args.http_load_only {
        let bench = Bench::start(last).await?;
        http_load_scenario(
            &bench,
            &args.http_connections,
            (args.http_seconds, args.cold_http_runs),
        )
        .await?;
        if args.noisy_connections > 0 {
            noisy::scenario(&bench, args.noisy_connections, args.http_seconds).await?;
        }
        if args.spin_connections > 0 {
            spin::scenario(&bench, args.spin_connections, args.http_seconds).await?;
        }
        return Ok(());
    }
    let mut summaries = Vec::new();
    for &workers in &args.runtime_workers {
        let mut bench = Bench::start(workers).await?;
        println!("# Guests {}\n", bench.mode());
        summaries.push(node_scenarios(&mut bench, &args).await?);
        if workers == last && args.http_connections.iter().any(|&c| c > 0) {
            http_load_scenario(
                &bench,
                &args.http_connections,
                (args.http_seconds, args.cold_http_runs),
            )
            .await?;
        }
        if workers == last && args.noisy_connections > 0 {
            noisy::scenario(&bench, args.noisy_connections, args.http_seconds).await?;
        }
        if workers == last && args.spin_connections > 0 {
            spin::scenario(&bench, args.spin_connections, args.http_seconds).await?;
        }
    }
    compare(&summaries);
    if args.cni_http_density.iter().any(|&n| n > 0) {
        cni_scenario(last, &args).await?;
    }

    // Baseline.
    let module = testkit::fixtures::wasm_module("wasi-probe")?;
    let baseline = baseline(&module, args.baseline_runs)
        .map_err(|e| anyhow::anyhow!("the wasmtime baseline failed: {e:#}"))?;
    println!("\n## Baseline: plain wasmtime, instantiate + run to exit\n");
    println!("median {} over {} runs", ms(baseline), args.baseline_runs);
    Ok(())
}

/// Each mode beside the first (guests in the agent, when it was run), as ratios.
fn compare(summaries: &[Summary]) {
    let Some((first, rest)) = summaries.split_first() else {
        return;
    };
    if rest.is_empty() {
        return;
    }
    let p = |samples: &[Duration], q: f64| {
        let mut sorted = samples.to_vec();
        sorted.sort();
        percentile(&sorted, q)
    };
    println!("## Compared with guests {}\n", first.mode);
    println!(
        "| measure | {} | {} | ratio |",
        first.mode,
        rest.iter()
            .map(|s| s.mode.clone())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|---|{}---|", "---|".repeat(rest.len()));
    let row = |name: &str, value: &dyn Fn(&Summary) -> f64, unit: &str| {
        let base = value(first);
        let others: Vec<String> = rest
            .iter()
            .map(|s| format!("{:.1} {unit}", value(s)))
            .collect();
        let ratios: Vec<String> = rest
            .iter()
            .map(|s| format!("{:.2}x", value(s) / base.max(f64::MIN_POSITIVE)))
            .collect();
        println!(
            "| {name} | {base:.1} {unit} | {} | {} |",
            others.join(" | "),
            ratios.join(", ")
        );
    };
    let ms_of = |d: Duration| d.as_secs_f64() * 1000.0;
    row(
        "creation -> Running p50",
        &|s| ms_of(p(&s.running, 50.0)),
        "ms",
    );
    row(
        "creation -> Running p99",
        &|s| ms_of(p(&s.running, 99.0)),
        "ms",
    );
    row(
        "creation -> Succeeded p50",
        &|s| ms_of(p(&s.succeeded, 50.0)),
        "ms",
    );
    row("first pod of a new image", &|s| ms_of(s.cold), "ms");
    row("second pod of the image", &|s| ms_of(s.warm), "ms");
    row(
        "first pod after an agent restart",
        &|s| ms_of(s.restarted),
        "ms",
    );
    row("RSS per idle pod", &|s| s.per_pod_kib, "KiB");
    row(
        "idle node RSS (agent + workers), 0 pods",
        &|s| s.idle_rss_kib as f64 / 1024.0,
        "MiB",
    );
    for s in rest {
        let workers: Vec<String> = s
            .worker_rss_kib
            .iter()
            .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
            .collect();
        println!(
            "\nEach runtime worker's fixed cost (RSS with 0 pods), guests {}: {}",
            s.mode,
            workers.join(", ")
        );
    }
    println!();
}

/// The node scenarios on `bench`: idle footprint, cold and warm starts, start latency, the
/// first pod after a restart, density.
async fn node_scenarios(bench: &mut Bench, args: &Args) -> anyhow::Result<Summary> {
    // Idle footprint.
    let pids = bench.pids();
    let (cpu0, writes0) = (cpu_time(&pids), bench.writes().0);
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle_cpu = cpu_time(&pids).saturating_sub(cpu0);
    let idle_writes = bench.writes().0 - writes0;
    let idle_rss_kib = rss(&pids);
    let worker_rss_kib: Vec<u64> = pids[1..].iter().map(|pid| rss_kib(*pid)).collect();
    println!("## Idle node, 0 pods, {} s\n", args.idle_seconds);
    println!(
        "RSS {:.1} MiB (agent {:.1} MiB, workers {}), CPU {:.2} % of a core, API writes {} ({:.1}/min)\n",
        idle_rss_kib as f64 / 1024.0,
        rss_kib(pids[0]) as f64 / 1024.0,
        worker_rss_kib
            .iter()
            .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", "),
        idle_cpu.as_secs_f64() / args.idle_seconds as f64 * 100.0,
        idle_writes,
        idle_writes as f64 * 60.0 / args.idle_seconds as f64
    );

    // Cold path: the image was pushed but never pulled by the agent.
    println!("## Cold and warm starts (creation -> Succeeded)\n");
    println!("| case | time |\n|---|---|");
    let cold = one_pod(bench, "cold").await?;
    println!(
        "| first pod of a new image (pull + compile) | {} |",
        ms(cold)
    );
    let warm = one_pod(bench, "warm").await?;
    println!("| second pod of the image | {} |", ms(warm));

    // Start latency at a steady rate, module cached.
    let before = bench.writes();
    let created = bench
        .create("run", args.pods, args.rate, &["forever"])
        .await?;
    let running = bench
        .latencies(&created, false, Duration::from_secs(600))
        .await?;
    let after = bench.writes();
    let created = bench
        .create("exit", args.pods, args.rate, &["exit", "0"])
        .await?;
    let succeeded = bench
        .latencies(&created, true, Duration::from_secs(600))
        .await?;
    bench.delete_all().await?;

    // The first pod after an agent restart (compiled module cached on disk).
    bench.agent.restart().await?;
    let restarted = one_pod(bench, "restarted").await?;
    println!(
        "| first pod after an agent restart (compiled module on disk) | {} |\n",
        ms(restarted)
    );
    bench.delete_all().await?;

    println!(
        "## Start latency ({} pods at {}/s, module cached)\n",
        args.pods, args.rate
    );
    println!("| measure | pods | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    println!(
        "{}",
        latency_row("creation -> Running (watch)", running.clone())
    );
    println!(
        "{}",
        latency_row("creation -> Succeeded (exits at once)", succeeded.clone())
    );
    let per_pod = |n: u64| n as f64 / args.pods as f64;
    println!(
        "\nAPI writes by the agent per pod start (to Running): {:.2} to the pod, {:.2} events\n",
        per_pod(after.0 - before.0),
        per_pod(after.1 - before.1)
    );

    // Density: idle pods in steps, then idle HTTP servers.
    let image = bench.image.clone();
    let node = bench.agent.name.clone();
    let per_pod_kib = ramp(
        bench,
        "idle",
        "idle pods (a module blocked in a sleep)",
        &args.density,
        args.density_rate,
        |name, _| wasm_pod(name, &image, &node, &["forever"], "Never"),
    )
    .await?;
    bench.delete_all().await?;
    if args.http_density.iter().any(|&n| n > 0) {
        let server = bench.cluster.push_component("http_probe").await?;
        let ports = free_ports(args.http_density.iter().copied().max().unwrap_or(0))?;
        ramp(
            bench,
            "http",
            "idle HTTP servers (a wasi-http component serving a port each)",
            &args.http_density,
            args.density_rate,
            |name, i| http_pod(name, &server, &node, ports[i]),
        )
        .await?;
        let mut samples = Vec::with_capacity(ports.len());
        for &port in &ports[..args.http_density.iter().copied().max().unwrap_or(0)] {
            let began = Instant::now();
            let (code, _) = e2e::http_get(port, "/").await?;
            anyhow::ensure!(code == 200, "the server on port {port} answered {code}");
            samples.push(began.elapsed());
        }
        println!("\n| measure | requests | p50 | p90 | p99 | max |");
        println!("|---|---|---|---|---|---|");
        println!(
            "{}\n",
            latency_row("first request to each idle server", samples)
        );
        bench.delete_all().await?;
    }
    Ok(Summary {
        mode: bench.mode(),
        idle_rss_kib,
        worker_rss_kib,
        running,
        succeeded,
        per_pod_kib,
        cold,
        warm,
        restarted,
    })
}
