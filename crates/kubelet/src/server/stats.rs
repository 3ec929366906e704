//! Resource usage as the kubelet reports it: the Summary API (`/stats/summary`, the
//! `stats/v1alpha1` shape that `kubectl get --raw` and older metrics-server read) and the
//! resource metrics endpoint (`/metrics/resource`, Prometheus text, which metrics-server and so
//! `kubectl top` scrape). Container figures come from the runtime's accounting (CPU time
//! charged at epoch ticks, linear memories and tables); node figures from /proc.

use crate::pods::registry::{ContainerUsage, PodRegistry};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

/// Nanoseconds per USER_HZ tick of /proc/stat (100 Hz on Linux).
const NANOS_PER_TICK: u64 = 10_000_000;

/// The Summary API's top level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The node.
    pub node: NodeStats,
    /// Each pod with running containers.
    pub pods: Vec<PodStats>,
}

/// Node-level usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// The node's name.
    pub node_name: String,
    /// When the node agent started.
    pub start_time: Time,
    /// CPU of the whole machine.
    pub cpu: CpuStats,
    /// Memory of the whole machine.
    pub memory: MemoryStats,
}

/// A pod and its containers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// Which pod.
    pub pod_ref: PodReference,
    /// When the node agent took the pod on.
    pub start_time: Option<Time>,
    /// Its running containers.
    pub containers: Vec<ContainerStats>,
    /// The sum over its containers.
    pub cpu: CpuStats,
    /// The sum over its containers.
    pub memory: MemoryStats,
}

/// A pod's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodReference {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// UID.
    pub uid: String,
}

/// One running container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    /// The container's name.
    pub name: String,
    /// When its current run started.
    pub start_time: Time,
    /// Its CPU.
    pub cpu: CpuStats,
    /// Its memory.
    pub memory: MemoryStats,
}

/// CPU usage at `time`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// When it was measured.
    pub time: Time,
    /// Usage rate since the previous sample, in billionths of a core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    /// Cumulative usage, in core-nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
}

/// Memory usage at `time`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// When it was measured.
    pub time: Time,
    /// Memory still available (node only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// Memory in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    /// The working set, which limits and eviction are measured against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    /// Resident memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
}

/// Usage rates between samples at least a second apart (as cAdvisor's housekeeping keeps them).
#[derive(Debug, Default)]
pub struct Rates {
    samples: Mutex<HashMap<String, Sample>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    total: u64,
    rate: u64,
}

impl Rates {
    /// The rate of `total` (nanoseconds of CPU) for `key`, in nanocores.
    fn rate(&self, key: &str, total: u64) -> u64 {
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let sample = samples.entry(key.to_string()).or_insert(Sample {
            at: now,
            total,
            rate: 0,
        });
        let elapsed = now.duration_since(sample.at);
        if elapsed.as_secs() >= 1 {
            let used = total.saturating_sub(sample.total) as f64;
            sample.rate = (used / elapsed.as_secs_f64()) as u64;
            sample.at = now;
            sample.total = total;
        }
        sample.rate
    }
}

fn cpu(time: &Time, rates: &Rates, key: &str, total: u64) -> CpuStats {
    CpuStats {
        time: time.clone(),
        usage_nano_cores: Some(rates.rate(key, total)),
        usage_core_nano_seconds: Some(total),
    }
}

fn memory(time: &Time, bytes: u64) -> MemoryStats {
    MemoryStats {
        time: time.clone(),
        available_bytes: None,
        usage_bytes: Some(bytes),
        working_set_bytes: Some(bytes),
        rss_bytes: Some(bytes),
    }
}

/// The machine's CPU time used (all cores, not idle or waiting) and memory, from /proc.
struct Machine {
    cpu_nanos: u64,
    memory_total: u64,
    memory_available: u64,
}

impl Machine {
    fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let busy: u64 = ticks
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
            .map(|(_, v)| v)
            .sum();
        let memory = crate::node::machine::Memory::read();
        Self {
            cpu_nanos: busy * NANOS_PER_TICK,
            memory_total: memory.total_kib * 1024,
            memory_available: memory.available_kib * 1024,
        }
    }
}

/// Builds the Summary for the node's pods now.
pub fn summary(node_name: &str, started: &Time, registry: &PodRegistry, rates: &Rates) -> Summary {
    let now = Time(jiff::Timestamp::now());
    let machine = Machine::read();
    let working_set = machine
        .memory_total
        .saturating_sub(machine.memory_available);
    let node = NodeStats {
        node_name: node_name.to_string(),
        start_time: started.clone(),
        cpu: cpu(&now, rates, "", machine.cpu_nanos),
        memory: MemoryStats {
            available_bytes: Some(machine.memory_available),
            ..memory(&now, working_set)
        },
    };
    let pods = registry
        .usage()
        .into_iter()
        .filter(|(_, running)| !running.is_empty())
        .map(|(pod, running)| pod_stats(&now, rates, &pod, &running))
        .collect();
    Summary { node, pods }
}

fn pod_stats(
    now: &Time,
    rates: &Rates,
    pod: &k8s_openapi::api::core::v1::Pod,
    running: &[ContainerUsage],
) -> PodStats {
    let uid = pod.uid().unwrap_or_default();
    let containers: Vec<ContainerStats> = running
        .iter()
        .map(|c| ContainerStats {
            name: c.name.clone(),
            start_time: Time(c.started),
            cpu: cpu(
                now,
                rates,
                &format!("{uid}/{}/{}", c.name, c.started),
                c.usage.cpu_nanos(),
            ),
            memory: memory(now, c.usage.memory_bytes()),
        })
        .collect();
    let total = |f: fn(&ContainerStats) -> Option<u64>| containers.iter().filter_map(f).sum();
    PodStats {
        pod_ref: PodReference {
            name: pod.name_any(),
            namespace: pod.namespace().unwrap_or_default(),
            uid,
        },
        start_time: pod.status.as_ref().and_then(|s| s.start_time.clone()),
        cpu: CpuStats {
            time: now.clone(),
            usage_nano_cores: Some(total(|c| c.cpu.usage_nano_cores)),
            usage_core_nano_seconds: Some(total(|c| c.cpu.usage_core_nano_seconds)),
        },
        memory: memory(now, total(|c| c.memory.working_set_bytes)),
        containers,
    }
}

/// One labelled subject of the resource metrics: the node, a pod or a container.
struct Subject<'a> {
    labels: String,
    cpu: &'a CpuStats,
    memory: &'a MemoryStats,
}

/// The resource metrics in Prometheus text format, as the kubelet's `/metrics/resource`.
pub fn resource_metrics(summary: &Summary) -> String {
    let millis = |t: &Time| t.0.as_millisecond();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let node = vec![Subject {
        labels: String::new(),
        cpu: &summary.node.cpu,
        memory: &summary.node.memory,
    }];
    let pods: Vec<Subject> = summary
        .pods
        .iter()
        .map(|p| Subject {
            labels: format!(
                "{{namespace=\"{}\",pod=\"{}\"}}",
                p.pod_ref.namespace, p.pod_ref.name
            ),
            cpu: &p.cpu,
            memory: &p.memory,
        })
        .collect();
    let containers: Vec<(Subject, &ContainerStats)> = summary
        .pods
        .iter()
        .flat_map(|p| {
            p.containers.iter().map(move |c| {
                let labels = format!(
                    "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
                    c.name, p.pod_ref.namespace, p.pod_ref.name
                );
                let subject = Subject {
                    labels,
                    cpu: &c.cpu,
                    memory: &c.memory,
                };
                (subject, c)
            })
        })
        .collect();
    family(
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
        containers
            .iter()
            .map(|(s, c)| {
                let value = format!("{} {}", c.start_time.0.as_second(), millis(&c.cpu.time));
                (s.labels.clone(), value)
            })
            .collect(),
    );
    let containers: Vec<Subject> = containers.into_iter().map(|(s, _)| s).collect();
    for (scope, subjects) in [("container", &containers), ("node", &node), ("pod", &pods)] {
        family(
            &format!("{scope}_cpu_usage_seconds_total"),
            "counter",
            &format!("Cumulative cpu time consumed by the {scope} in core-seconds"),
            subjects
                .iter()
                .map(|s| {
                    let seconds = s.cpu.usage_core_nano_seconds.unwrap_or(0) as f64 / 1e9;
                    (
                        s.labels.clone(),
                        format!("{seconds} {}", millis(&s.cpu.time)),
                    )
                })
                .collect(),
        );
        family(
            &format!("{scope}_memory_working_set_bytes"),
            "gauge",
            &format!("Current working set of the {scope} in bytes"),
            subjects
                .iter()
                .map(|s| {
                    let bytes = s.memory.working_set_bytes.unwrap_or(0);
                    (
                        s.labels.clone(),
                        format!("{bytes} {}", millis(&s.memory.time)),
                    )
                })
                .collect(),
        );
    }
    family(
        "resource_scrape_error",
        "gauge",
        "1 if there was an error while getting container metrics, 0 otherwise",
        vec![(String::new(), "0".into())],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Usage;
    use std::sync::Arc;

    #[test]
    fn running_containers_are_summed_per_pod_and_exposed_as_metrics() {
        let registry = PodRegistry::default();
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}
        }))
        .unwrap();
        registry.upsert("ns", "p", pod);
        let (a, b) = (Arc::new(Usage::default()), Arc::new(Usage::default()));
        a.add_cpu(std::time::Duration::from_millis(1500));
        a.grow_memory(1 << 20);
        b.grow_memory(2 << 20);
        registry.started("ns", "p", "a", a.clone());
        registry.started("ns", "p", "b", b.clone());
        let started = Time(jiff::Timestamp::now());
        let summary = summary("node", &started, &registry, &Rates::default());
        let pod = &summary.pods[0];
        assert_eq!(pod.pod_ref.uid, "u1");
        assert_eq!(pod.containers.len(), 2);
        assert_eq!(pod.memory.working_set_bytes, Some(3 << 20));
        assert_eq!(pod.cpu.usage_core_nano_seconds, Some(1_500_000_000));
        assert!(summary.node.memory.available_bytes.unwrap_or(0) > 0);

        let text = resource_metrics(&summary);
        assert!(
            text.contains(
                "container_cpu_usage_seconds_total{container=\"a\",namespace=\"ns\",pod=\"p\"} 1.5 "
            ),
            "{text}"
        );
        assert!(
            text.contains("pod_memory_working_set_bytes{namespace=\"ns\",pod=\"p\"} 3145728 "),
            "{text}"
        );

        // A container whose guest is gone is no longer reported.
        drop(b);
        let summary = super::summary("node", &started, &registry, &Rates::default());
        assert_eq!(summary.pods[0].containers.len(), 1);
    }
}
