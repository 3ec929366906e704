//! The consumer's side of the Summary API: the `stats/v1alpha1` types as
//! `k8s.io/kubelet/pkg/apis/stats/v1alpha1` declares them, and the decoding metrics-server
//! applied to them (`pkg/sources/summary` before it moved to `/metrics/resource`).
//!
//! Written from the Go declarations, not from the node agent's own types, so that a field the
//! agent names, types or omits differently fails here. Unknown fields are errors: Go would
//! ignore them, but a field the kubelet does not have is a field no consumer reads.

use anyhow::{Context, bail};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Deserialize;

/// `Summary`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

/// `NodeStats` (the fields a wasm node can fill; the others are `omitempty` pointers).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStats {
    pub node_name: String,
    #[serde(default)]
    pub system_containers: Vec<ContainerStats>,
    pub start_time: Time,
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
}

/// `PodStats`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodStats {
    pub pod_ref: PodReference,
    /// `metav1.Time`, which encodes its zero value as `null`.
    pub start_time: Option<Time>,
    pub containers: Vec<ContainerStats>,
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
}

/// `PodReference`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// `ContainerStats`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerStats {
    pub name: String,
    pub start_time: Time,
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
}

/// `CPUStats`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpuStats {
    pub time: Time,
    pub usage_nano_cores: Option<u64>,
    pub usage_core_nano_seconds: Option<u64>,
}

/// `MemoryStats`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryStats {
    pub time: Time,
    pub available_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    pub working_set_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
}

/// What metrics-server keeps of a node, pod or container: the two figures `kubectl top` shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// The earlier of the CPU and memory sample times.
    pub timestamp: Timestamp,
    pub nano_cores: u64,
    pub working_set_bytes: u64,
}

/// A pod as metrics-server decodes it.
#[derive(Debug)]
pub struct PodMetrics {
    pub name: String,
    pub namespace: String,
    pub containers: Vec<(String, Usage)>,
}

/// A scrape as metrics-server decodes it.
#[derive(Debug)]
pub struct Scrape {
    pub node: Usage,
    pub pods: Vec<PodMetrics>,
}

/// Parses a `/stats/summary` body and decodes it as metrics-server does. Where metrics-server
/// would drop the node or a pod (a missing figure or timestamp), this is an error.
pub fn scrape(body: &str) -> anyhow::Result<Scrape> {
    let summary: Summary =
        serde_json::from_str(body).context("the Summary is not stats/v1alpha1")?;
    let node = usage(summary.node.cpu.as_ref(), summary.node.memory.as_ref())
        .with_context(|| format!("node {}", summary.node.node_name))?;
    let pods = summary
        .pods
        .iter()
        .map(|pod| {
            let containers = pod
                .containers
                .iter()
                .map(|c| Ok((c.name.clone(), usage(c.cpu.as_ref(), c.memory.as_ref())?)))
                .collect::<anyhow::Result<_>>()
                .with_context(|| format!("pod {}/{}", pod.pod_ref.namespace, pod.pod_ref.name))?;
            Ok(PodMetrics {
                name: pod.pod_ref.name.clone(),
                namespace: pod.pod_ref.namespace.clone(),
                containers,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Scrape { node, pods })
}

/// metrics-server's `decodeCPU`, `decodeMemory` and `getScrapeTime` (a zero `metav1.Time` is
/// encoded as `null`, which the types above already refuse).
fn usage(cpu: Option<&CpuStats>, memory: Option<&MemoryStats>) -> anyhow::Result<Usage> {
    let timestamp = [cpu.map(|c| c.time.0), memory.map(|m| m.time.0)]
        .into_iter()
        .flatten()
        .min()
        .context("no non-zero timestamp on either CPU or memory")?;
    let Some(nano_cores) = cpu.and_then(|c| c.usage_nano_cores) else {
        bail!("missing cpu usage metric");
    };
    let Some(working_set_bytes) = memory.and_then(|m| m.working_set_bytes) else {
        bail!("missing memory usage metric");
    };
    Ok(Usage {
        timestamp,
        nano_cores,
        working_set_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_the_kubelet_does_not_have_or_a_missing_figure_fails() {
        let ok = r#"{"node":{"nodeName":"n","startTime":"2026-01-01T00:00:00Z",
            "cpu":{"time":"2026-01-01T00:00:01Z","usageNanoCores":5},
            "memory":{"time":"2026-01-01T00:00:02Z","workingSetBytes":7}},"pods":[]}"#;
        let scrape = scrape(ok).unwrap();
        assert_eq!(scrape.node.nano_cores, 5);
        assert_eq!(scrape.node.timestamp.to_string(), "2026-01-01T00:00:01Z");
        assert!(super::scrape(&ok.replace("nodeName", "name")).is_err());
        assert!(super::scrape(&ok.replace("\"usageNanoCores\":5", "\"extra\":5")).is_err());
        let missing = ok.replace(",\"usageNanoCores\":5", "");
        let error = format!("{:#}", super::scrape(&missing).unwrap_err());
        assert!(error.contains("missing cpu usage metric"), "{error}");
    }
}
