//! The node lifecycle controller (kube-controller-manager's `node-lifecycle-controller`): a node
//! whose kubelet has neither renewed its Lease nor posted its status for the grace period
//! (`--node-monitor-grace-period`, 50 s since Kubernetes 1.32; `--node-startup-grace-period`,
//! 60 s, for a node that never posted) has its conditions set to Unknown ("Kubelet stopped
//! posting node status."); its taints follow its Ready condition: `node.kubernetes.io/
//! unreachable` (NoSchedule and NoExecute) while it is Unknown, `node.kubernetes.io/not-ready`
//! while it is False, neither once it is True again.

use super::objects::now;
use super::store::State;
use serde_json::{Value, json};
use std::time::Duration;

/// How long a running node may go without a heartbeat (kube-controller-manager's default).
pub const GRACE_PERIOD: Duration = Duration::from_secs(50);
/// How long a new node may take to post its first status.
const STARTUP_GRACE_PERIOD: Duration = Duration::from_secs(60);
/// The conditions the controller marks Unknown.
const CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// Marks silent nodes Unknown and keeps every node's readiness taints in step with it.
pub fn reconcile(state: &mut State, grace: Duration) {
    let updates: Vec<Value> = state
        .list("nodes", None)
        .filter_map(|node| updated(state, node, grace))
        .collect();
    for node in updates {
        state.put("nodes", node);
    }
}

/// The node with its conditions and taints brought up to date, if they change.
fn updated(state: &State, node: &Value, grace: Duration) -> Option<Value> {
    let mut node = node.clone();
    let name = node["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if is_silent(state, &name, &node, grace) {
        mark_unknown(&mut node);
    }
    // A node that never posted a Ready condition is left alone until its startup grace ends.
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .map(str::to_string);
    if let Some(ready) = ready {
        set_readiness_taints(&mut node, &ready);
    }
    let original = state.get("nodes", "", &name)?;
    (node != *original).then_some(node)
}

/// Whether neither the Lease nor the status was renewed within the grace period.
fn is_silent(state: &State, name: &str, node: &Value, grace: Duration) -> bool {
    let lease = state
        .get("leases", "kube-node-lease", name)
        .and_then(|l| timestamp(&l["spec"]["renewTime"]));
    let status = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| timestamp(&c["lastHeartbeatTime"]))
        .max();
    let (last, allowed) = match lease.max(status) {
        Some(last) => (last, grace),
        None => match timestamp(&node["metadata"]["creationTimestamp"]) {
            Some(created) => (created, STARTUP_GRACE_PERIOD),
            None => return false,
        },
    };
    let silent_for = jiff::Timestamp::now().duration_since(last);
    Duration::try_from(silent_for).is_ok_and(|d| d > allowed)
}

fn timestamp(value: &Value) -> Option<jiff::Timestamp> {
    value.as_str()?.parse().ok()
}

fn mark_unknown(node: &mut Value) {
    let mut conditions: Vec<Value> = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for kind in CONDITIONS {
        match conditions.iter_mut().find(|c| c["type"] == kind) {
            Some(c) if c["status"] == "Unknown" => {}
            Some(c) => {
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(now());
            }
            None => conditions.push(json!({
                "type": kind, "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                "message": "Kubelet never posted node status.",
                "lastHeartbeatTime": null, "lastTransitionTime": now(),
            })),
        }
    }
    node["status"]["conditions"] = Value::Array(conditions);
}

/// Sets the unreachable or not-ready taints that `ready` (the Ready condition's status) calls
/// for and removes the others; taints already right are kept with their time.
fn set_readiness_taints(node: &mut Value, ready: &str) {
    let wanted = match ready {
        "True" => None,
        "False" => Some(NOT_READY),
        _ => Some(UNREACHABLE),
    };
    let mut taints: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let before = taints.len();
    taints.retain(|t| {
        let key = t["key"].as_str().unwrap_or_default();
        !(key == UNREACHABLE || key == NOT_READY) || Some(key) == wanted
    });
    let mut changed = taints.len() != before;
    if let Some(key) = wanted {
        for effect in ["NoSchedule", "NoExecute"] {
            if !taints
                .iter()
                .any(|t| t["key"] == key && t["effect"] == effect)
            {
                let mut taint = json!({"key": key, "effect": effect});
                if effect == "NoExecute" {
                    taint["timeAdded"] = json!(now());
                }
                taints.push(taint);
                changed = true;
            }
        }
    }
    if !changed {
        return;
    }
    if taints.is_empty() {
        if let Some(spec) = node["spec"].as_object_mut() {
            spec.remove("taints");
        }
    } else {
        node["spec"]["taints"] = Value::Array(taints);
    }
}
