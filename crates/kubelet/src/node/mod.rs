//! The Node object: registration (or taking over an existing Node), status with capacity,
//! conditions and nodeInfo, the Lease heartbeat, and periodic status posts.

mod lease;
pub(crate) mod machine;

pub use machine::Machine;

use crate::config::Config;
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How the node reports that it lives: its Lease and its status, as the kubelet's settings of
/// the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// How often the status is computed and posted when it changed
    /// (`--node-status-update-frequency`, 10 s).
    pub status_update_frequency: Duration,
    /// The longest time between status posts when nothing changes
    /// (`--node-status-report-frequency`, 5 min).
    pub status_report_frequency: Duration,
    /// The Lease's duration (`--node-lease-duration-seconds`, 40): it is renewed every quarter
    /// of it, as the kubelet renews it.
    pub lease_duration: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            status_update_frequency: Duration::from_secs(10),
            status_report_frequency: Duration::from_secs(300),
            lease_duration: Duration::from_secs(40),
        }
    }
}

impl Heartbeat {
    /// How often the Lease is renewed: a quarter of its duration (10 s of 40).
    fn lease_renewal(&self) -> Duration {
        (self.lease_duration / 4).max(Duration::from_secs(1))
    }

    /// A Lease not renewed for this long (three quarters of its duration, 30 s of 40) may have
    /// let the node lifecycle controller mark the node Unknown and taint it unreachable (its
    /// grace period is 40 s, or 50 s since Kubernetes 1.32): the status is then posted at the
    /// next renewal, changed or not, so that the node is Ready again at once rather than after
    /// the report frequency.
    fn silence(&self) -> Duration {
        self.lease_duration * 3 / 4
    }
}

/// The taint key every krustlet node carries.
pub const ARCH_TAINT_KEY: &str = "krustlet/arch";

/// Errors talking to the API server about the Node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An API call failed.
    #[error("{action} node {node}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// The node.
        node: String,
        /// The API error.
        source: kube::Error,
    },
}

/// What identifies this node beyond the config.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The runtime's arch (`wasm32-wasi`).
    pub arch: String,
    /// The runtime and version (`wasmtime://48.0.8`).
    pub runtime_version: String,
    /// Where pods are on the network, said in the Ready condition's message.
    pub pod_network: String,
}

/// The labels a krustlet node carries.
pub fn labels(config: &Config, identity: &Identity) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/arch".to_string(), identity.arch.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        (
            "kubernetes.io/hostname".to_string(),
            config.hostname.clone(),
        ),
        ("beta.kubernetes.io/arch".to_string(), identity.arch.clone()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("type".to_string(), "krustlet".to_string()),
    ]);
    labels.extend(config.node_labels.iter().cloned());
    labels
}

/// The taints a krustlet node registers with: its `krustlet/arch=<arch>:NoExecute` taint,
/// whatever else `--register-with-taints` adds (one of those with the same key and effect does
/// not replace it).
pub fn taints(config: &Config, identity: &Identity) -> Vec<Taint> {
    let mut taints = vec![Taint {
        key: ARCH_TAINT_KEY.into(),
        value: Some(identity.arch.clone()),
        effect: "NoExecute".into(),
        time_added: None,
    }];
    for extra in &config.register_with_taints {
        if !taints
            .iter()
            .any(|t| t.key == extra.key && t.effect == extra.effect)
        {
            taints.push(extra.clone());
        }
    }
    taints
}

fn condition(kind: &str, status: bool, reason: &str, message: &str) -> NodeCondition {
    NodeCondition {
        type_: kind.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: None,
        last_transition_time: None,
    }
}

/// What pods may request of this node: all of its CPUs and memory (the node status's
/// allocatable, which reserves nothing for the system, as the kubelet by default).
pub fn allocatable(config: &Config) -> crate::pods::resources::Requests {
    let machine = Machine::read(&config.data_dir);
    crate::pods::resources::Requests {
        cpu_millis: machine.cpus as u64 * 1000,
        memory_bytes: machine.memory_kib * 1024,
    }
}

/// The node status as it is now (heartbeat and transition times left for [`stamp`]).
pub fn status(config: &Config, identity: &Identity, machine: &Machine) -> NodeStatus {
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(machine.cpus.to_string())),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", machine.memory_kib)),
        ),
        (
            "ephemeral-storage".to_string(),
            Quantity(machine.storage_bytes.to_string()),
        ),
        ("pods".to_string(), Quantity(config.max_pods.to_string())),
    ]);
    let memory_pressure =
        machine.memory_available_kib > 0 && machine.memory_available_kib < 100 * 1024;
    let disk_pressure =
        machine.storage_bytes > 0 && machine.storage_free_bytes * 10 < machine.storage_bytes;
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            if memory_pressure {
                condition(
                    "MemoryPressure",
                    true,
                    "KubeletHasInsufficientMemory",
                    "kubelet has insufficient memory available",
                )
            } else {
                condition(
                    "MemoryPressure",
                    false,
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                )
            },
            if disk_pressure {
                condition(
                    "DiskPressure",
                    true,
                    "KubeletHasDiskPressure",
                    "kubelet has disk pressure",
                )
            } else {
                condition(
                    "DiskPressure",
                    false,
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                )
            },
            condition(
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            condition(
                "Ready",
                true,
                "KubeletReady",
                &format!("kubelet is posting ready status; {}", identity.pod_network),
            ),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: config.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: config.hostname.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(config.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: identity.arch.clone(),
            boot_id: machine.boot_id.clone(),
            container_runtime_version: identity.runtime_version.clone(),
            kernel_version: machine.kernel.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: format!("v{}", env!("CARGO_PKG_VERSION")),
            machine_id: machine.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: machine.os_image.clone(),
            system_uuid: machine.machine_id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Sets heartbeat times to now, and transition times to now where a condition changed since
/// `previous` (kept otherwise).
pub fn stamp(status: &mut NodeStatus, previous: Option<&NodeStatus>) {
    let now = Time(jiff::Timestamp::now());
    let old: Vec<NodeCondition> = previous
        .and_then(|p| p.conditions.clone())
        .unwrap_or_default();
    for c in status.conditions.iter_mut().flatten() {
        c.last_heartbeat_time = Some(now.clone());
        c.last_transition_time = old
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
            .and_then(|o| o.last_transition_time.clone())
            .or(Some(now.clone()));
    }
}

fn without_times(status: &NodeStatus) -> NodeStatus {
    let mut s = status.clone();
    for c in s.conditions.iter_mut().flatten() {
        c.last_heartbeat_time = None;
        c.last_transition_time = None;
    }
    s
}

/// Annotation on a node that this agent cordoned at shutdown, so that it uncordons it at start.
pub const DRAINED_ANNOTATION: &str = "krustlet.dev/drained-on-shutdown";

/// Marks the node unschedulable (a drain before shutdown), noting that the agent did it.
pub async fn cordon(client: &kube::Client, node_name: &str) {
    let patch = serde_json::json!({"metadata": {"annotations": {DRAINED_ANNOTATION: "true"}}, "spec": {"unschedulable": true}});
    match Api::<Node>::all(client.clone())
        .patch(node_name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        Ok(_) => tracing::info!(node = %node_name, "cordoned the node for shutdown"),
        Err(e) => tracing::warn!(error = %e, "cordoning the node for shutdown failed"),
    }
}

/// Undoes a cordon this agent made at its last shutdown (not one an operator made).
async fn uncordon_if_drained(nodes: &Api<Node>, node: &Node) -> Result<(), kube::Error> {
    let drained = node
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(DRAINED_ANNOTATION));
    if !drained {
        return Ok(());
    }
    let patch = serde_json::json!({"metadata": {"annotations": {DRAINED_ANNOTATION: null}}, "spec": {"unschedulable": null}});
    nodes
        .patch(
            node.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await?;
    tracing::info!("uncordoned the node this agent drained at its last shutdown");
    Ok(())
}

/// Registers the node, or takes over the existing Node of that name; returns it.
pub async fn register(
    client: &kube::Client,
    config: &Config,
    identity: &Identity,
) -> Result<Node, NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut node_status = status(config, identity, &Machine::read(&config.data_dir));
    stamp(&mut node_status, None);
    let node = Node {
        metadata: ObjectMeta {
            name: Some(config.node_name.clone()),
            labels: Some(labels(config, identity)),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(taints(config, identity)),
            ..Default::default()
        }),
        status: Some(node_status.clone()),
    };
    let api_error = |action, source| NodeError::Api {
        action,
        node: config.node_name.clone(),
        source,
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(created) => {
            tracing::info!(node = %config.node_name, "registered node");
            Ok(created)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::info!(node = %config.node_name, "node already exists; taking it over");
            let existing = nodes
                .get(&config.node_name)
                .await
                .map_err(|e| api_error("reading existing", e))?;
            uncordon_if_drained(&nodes, &existing)
                .await
                .map_err(|e| api_error("uncordoning", e))?;
            let mut node_status = node_status;
            stamp(&mut node_status, existing.status.as_ref());
            let patch = serde_json::json!({"metadata": {"labels": labels(config, identity)}, "status": node_status});
            nodes
                .patch_status(
                    &config.node_name,
                    &PatchParams::default(),
                    &Patch::Strategic(patch),
                )
                .await
                .map_err(|e| api_error("updating the status of", e))
        }
        Err(e) => Err(api_error("registering", e)),
    }
}

/// Renews the Lease every quarter of its duration, and posts the status when it changes (looked
/// at every status update period), every report period, and after a silence
/// ([`Heartbeat`]), until `shutdown`.
pub async fn heartbeat(
    client: kube::Client,
    config: Config,
    identity: Identity,
    registered: Node,
    shutdown: CancellationToken,
) {
    let timing = config.heartbeat;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut lease = lease::Lease::new(client, &registered, timing.lease_duration);
    let mut posted = registered.status.unwrap_or_default();
    let mut posted_at = Instant::now();
    let mut renewed_at = Instant::now();
    let mut after_silence = false;
    let mut renewal = tokio::time::interval(timing.lease_renewal());
    renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status_update = tokio::time::interval(timing.status_update_frequency);
    status_update.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = renewal.tick() => {
                match lease.renew().await {
                    Ok(()) => {
                        if renewed_at.elapsed() >= timing.silence() {
                            tracing::info!(
                                silent_for = ?renewed_at.elapsed(),
                                "the node lease was renewed after a silence; posting the node status"
                            );
                            after_silence = true;
                        }
                        renewed_at = Instant::now();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the node lease failed; retrying at the next renewal");
                        continue;
                    }
                }
                if !after_silence {
                    continue;
                }
            }
            _ = status_update.tick() => {}
        }
        let mut current = status(&config, &identity, &Machine::read(&config.data_dir));
        if without_times(&current) == without_times(&posted)
            && posted_at.elapsed() < timing.status_report_frequency
            && !after_silence
        {
            continue;
        }
        stamp(&mut current, Some(&posted));
        let patch = serde_json::json!({"status": current});
        match nodes
            .patch_status(
                &config.node_name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            Ok(_) => {
                posted = current;
                posted_at = Instant::now();
                after_silence = false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "posting node status failed; retrying at the next status update")
            }
        }
    }
}
