//! Admission as the kubelet does it before running anything: the node's NoExecute taints must
//! be tolerated, the node selector and required node affinity must match, and the node must
//! have room: under its pod capacity, and for the pod's CPU and memory requests beside those of
//! the pods it already runs.

use super::resources::{Requests, pod_requests};

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, Pod, Taint, Toleration};
use std::collections::BTreeMap;

/// What the pod is admitted against.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// The node's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its taints.
    pub taints: Vec<Taint>,
    /// Its pod capacity.
    pub max_pods: usize,
    /// Its allocatable CPU and memory.
    pub allocatable: Requests,
}

/// A rejection: the pod ends Failed with this reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `Taint`, `NodeAffinity`, `OutOfpods`, `OutOfcpu` or `OutOfmemory`, as the kubelet says.
    pub reason: String,
    /// The kubelet's message.
    pub message: String,
}

/// What the pods still running or due to run use of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Active {
    /// How many there are.
    pub pods: usize,
    /// Their CPU and memory requests together.
    pub requests: Requests,
    /// The host ports they hold.
    pub host_ports: Vec<HostPort>,
}

/// A port of the node a container asks for (`hostPort`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// The node address, `0.0.0.0` for every one.
    pub ip: String,
    /// The port.
    pub port: i32,
}

impl HostPort {
    /// Whether two pods asking for these could not both have them (the scheduler's NodePorts
    /// rule: the same protocol and port on the same address, or on every address).
    fn conflicts(&self, other: &HostPort) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.protocol == other.protocol
            && self.port == other.port
            && (self.ip == other.ip || any(&self.ip) || any(&other.ip))
    }
}

/// The host ports `pod` asks for: those of its containers and of its sidecars (init containers
/// that run beside them).
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(HostPort {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ip: p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                port: p.host_port.filter(|port| *port > 0)?,
            })
        })
        .collect()
}

/// The annotation the kubelet gives a pod saying where it came from (`file` for a static pod
/// read from a manifest, `api` for one from the API server).
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";

/// Whether `pod` is a static pod (read from a manifest on the node, not from the API server):
/// it never passed a scheduler, and the kubelet exempts it from taint admission.
pub fn is_static(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE))
        .is_some_and(|source| source != "api")
}

/// Decides whether `pod` may run here, beside the `active` pods.
pub fn admit(pod: &Pod, node: &NodeFacts, active: &Active) -> Result<(), Rejection> {
    let (used, active_pods) = (active.requests, active.pods);
    let spec = pod.spec.clone().unwrap_or_default();
    let tolerations = spec.tolerations.unwrap_or_default();
    let taints = node.taints.iter().filter(|_| !is_static(pod));
    for taint in taints.filter(|t| t.effect == "NoExecute") {
        if !tolerations.iter().any(|t| tolerates(t, taint)) {
            let value = taint.value.clone().unwrap_or_default();
            return Err(Rejection {
                reason: "Taint".into(),
                message: format!(
                    "Pod was rejected: Predicate TaintToleration failed: node(s) had untolerated taint {{{}: {value}}}",
                    taint.key
                ),
            });
        }
    }
    let selector_ok = spec
        .node_selector
        .unwrap_or_default()
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let affinity_ok = spec
        .affinity
        .and_then(|a| a.node_affinity)
        .and_then(|a| a.required_during_scheduling_ignored_during_execution)
        .is_none_or(|required| {
            required.node_selector_terms.iter().any(|term| {
                let fields = BTreeMap::from([("metadata.name".to_string(), node.name.clone())]);
                term.match_expressions
                    .iter()
                    .flatten()
                    .all(|e| requirement_matches(e, &node.labels))
                    && term
                        .match_fields
                        .iter()
                        .flatten()
                        .all(|e| requirement_matches(e, &fields))
            })
        });
    if !selector_ok || !affinity_ok {
        return Err(Rejection {
            reason: "NodeAffinity".into(),
            message: "Pod was rejected: Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector".into(),
        });
    }
    if active_pods >= node.max_pods {
        return Err(Rejection {
            reason: "OutOfpods".into(),
            message: format!(
                "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: {active_pods}, capacity: {}",
                node.max_pods
            ),
        });
    }
    let wanted = host_ports(pod);
    if wanted
        .iter()
        .any(|port| active.host_ports.iter().any(|held| port.conflicts(held)))
    {
        return Err(Rejection {
            reason: "NodePorts".into(),
            message: "Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports".into(),
        });
    }
    let requested = pod_requests(pod);
    for (resource, reason, requested, used, capacity) in [
        (
            "cpu",
            "OutOfcpu",
            requested.cpu_millis,
            used.cpu_millis,
            node.allocatable.cpu_millis,
        ),
        (
            "memory",
            "OutOfmemory",
            requested.memory_bytes,
            used.memory_bytes,
            node.allocatable.memory_bytes,
        ),
    ] {
        if requested > 0 && used + requested > capacity {
            return Err(Rejection {
                reason: reason.into(),
                message: format!(
                    "Pod was rejected: Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
                ),
            });
        }
    }
    Ok(())
}

/// Whether a toleration tolerates a taint (the Kubernetes rules).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_ok = toleration
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let exists = toleration.operator.as_deref() == Some("Exists");
    match toleration.key.as_deref() {
        None | Some("") => exists && effect_ok,
        Some(key) => {
            effect_ok
                && key == taint.key
                && (exists
                    || toleration.value.as_deref().unwrap_or_default()
                        == taint.value.as_deref().unwrap_or_default())
        }
    }
}

fn requirement_matches(req: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&req.key).map(String::as_str);
    let values: Vec<&str> = req.values.iter().flatten().map(String::as_str).collect();
    let number = |s: Option<&str>| s.and_then(|s| s.parse::<i64>().ok());
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(&v)),
        "NotIn" => value.is_none_or(|v| !values.contains(&v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((number(value), number(values.first().copied())), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((number(value), number(values.first().copied())), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeFacts {
        NodeFacts {
            name: "n".into(),
            labels: BTreeMap::from([("kubernetes.io/arch".into(), "wasm32-wasi".into())]),
            taints: vec![Taint {
                key: "krustlet/arch".into(),
                value: Some("wasm32-wasi".into()),
                effect: "NoExecute".into(),
                time_added: None,
            }],
            max_pods: 2,
            allocatable: Requests {
                cpu_millis: 2000,
                memory_bytes: 1 << 30,
            },
        }
    }

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_users_first_pod_is_admitted() {
        let p = pod(
            "spec: {containers: [{name: c, image: i}], tolerations: [{effect: NoExecute, key: krustlet/arch, operator: Equal, value: wasm32-wasi}], nodeSelector: {kubernetes.io/arch: wasm32-wasi}}",
        );
        assert_eq!(admit(&p, &node(), &Active::default()), Ok(()));
        assert_eq!(
            admit(
                &p,
                &node(),
                &Active {
                    pods: 2,
                    ..Default::default()
                }
            )
            .unwrap_err()
            .reason,
            "OutOfpods"
        );
    }

    #[test]
    fn requests_must_fit_beside_the_running_pods() {
        let sized = |cpu: &str, memory: &str| {
            pod(&format!(
                "spec: {{containers: [{{name: c, image: i, resources: {{requests: {{cpu: {cpu}, memory: {memory}}}}}}}], tolerations: [{{operator: Exists}}]}}"
            ))
        };
        let half = sized("1", "512Mi");
        assert_eq!(admit(&half, &node(), &Active::default()), Ok(()));
        let running = &Active {
            pods: 1,
            requests: pod_requests(&half),
            host_ports: Vec::new(),
        };
        let rejection = admit(&sized("1500m", "1Mi"), &node(), running).unwrap_err();
        assert_eq!(rejection.reason, "OutOfcpu");
        assert_eq!(
            rejection.message,
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 1500, used: 1000, capacity: 2000"
        );
        let rejection = admit(&sized("100m", "600Mi"), &node(), running).unwrap_err();
        assert_eq!(rejection.reason, "OutOfmemory");
    }

    #[test]
    fn untolerated_taints_and_selectors_are_rejected() {
        let no_toleration = pod("spec: {containers: [{name: c, image: i}]}");
        let rejection = admit(&no_toleration, &node(), &Active::default()).unwrap_err();
        assert_eq!(rejection.reason, "Taint");
        let mut static_pod = no_toleration.clone();
        static_pod.metadata.annotations =
            Some([(CONFIG_SOURCE.to_string(), "file".to_string())].into());
        assert_eq!(
            admit(&static_pod, &node(), &Active::default()),
            Ok(()),
            "a static pod never passed a scheduler: no taint admission"
        );
        assert!(
            rejection.message.contains("{krustlet/arch: wasm32-wasi}"),
            "{}",
            rejection.message
        );
        let wrong_arch = pod(
            "spec: {containers: [{name: c, image: i}], tolerations: [{operator: Exists}], nodeSelector: {kubernetes.io/arch: amd64}}",
        );
        assert_eq!(
            admit(&wrong_arch, &node(), &Active::default())
                .unwrap_err()
                .reason,
            "NodeAffinity"
        );
    }

    #[test]
    fn a_host_port_another_pod_holds_is_rejected() {
        let with_port = |port: u16, ip: &str, protocol: &str| {
            pod(&format!(
                "spec: {{containers: [{{name: c, image: i, ports: [{{containerPort: 8080, hostPort: {port}, hostIP: '{ip}', protocol: {protocol}}}]}}], tolerations: [{{operator: Exists}}]}}"
            ))
        };
        let first = with_port(8080, "0.0.0.0", "TCP");
        let active = Active {
            pods: 1,
            host_ports: host_ports(&first),
            ..Default::default()
        };
        let rejection = admit(&with_port(8080, "10.0.0.1", "TCP"), &node(), &active).unwrap_err();
        assert_eq!(rejection.reason, "NodePorts");
        assert!(admit(&with_port(8081, "0.0.0.0", "TCP"), &node(), &active).is_ok());
        assert!(admit(&with_port(8080, "0.0.0.0", "UDP"), &node(), &active).is_ok());
        let on_one = Active {
            pods: 1,
            host_ports: host_ports(&with_port(9000, "10.0.0.1", "TCP")),
            ..Default::default()
        };
        assert!(admit(&with_port(9000, "10.0.0.2", "TCP"), &node(), &on_one).is_ok());
        assert!(admit(&with_port(9000, "0.0.0.0", "TCP"), &node(), &on_one).is_err());
    }
}
