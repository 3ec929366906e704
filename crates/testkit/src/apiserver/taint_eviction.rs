//! The taint eviction controller (kube-controller-manager's `taint-eviction-controller`): a pod
//! bound to a node with a NoExecute taint it does not tolerate is deleted at once; one that
//! tolerates every such taint, but some only for `tolerationSeconds`, is deleted when the
//! shortest of those runs out (counted from when the controller first saw it so). Deleting
//! marks the pod `DisruptionTarget` (reason `DeletionByTaintManager`), records a
//! `TaintManagerEviction` event, and deletes it with its own grace period.

use super::controllers::{record_event, tolerates};
use super::objects::{self, DeleteOptions, now};
use super::resources;
use super::store::{State, key_of};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Evictions waiting for a toleration to run out, by pod uid: when the controller began
/// counting, and for how long.
#[derive(Default)]
pub struct TaintEviction {
    scheduled: HashMap<String, (Instant, Duration)>,
}

impl TaintEviction {
    /// Evicts the pods due for eviction and schedules the ones that tolerate for a while.
    pub fn reconcile(&mut self, state: &mut State) {
        let now = Instant::now();
        let mut evict = Vec::new();
        let mut seen = Vec::new();
        for pod in state.list("pods", None) {
            if !pod["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            let Some(node) = pod["spec"]["nodeName"]
                .as_str()
                .filter(|n| !n.is_empty())
                .and_then(|n| state.get("nodes", "", n))
            else {
                continue;
            };
            let taints: Vec<&Value> = node["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["effect"] == "NoExecute")
                .collect();
            if taints.is_empty() {
                continue;
            }
            let uid = pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match tolerated_for(pod, &taints) {
                Tolerated::Not => evict.push(key_of(pod)),
                Tolerated::Forever => continue,
                Tolerated::For(allowed) => {
                    let (since, _) = *self.scheduled.entry(uid.clone()).or_insert((now, allowed));
                    // A toleration changed since: the shortest one counts from the first sight.
                    self.scheduled.insert(uid.clone(), (since, allowed));
                    if now.saturating_duration_since(since) >= allowed {
                        evict.push(key_of(pod));
                    }
                }
            }
            seen.push(uid);
        }
        self.scheduled.retain(|uid, _| seen.contains(uid));
        for (ns, name) in evict {
            evict_pod(state, &ns, &name);
        }
    }
}

/// How long a pod tolerates a node's NoExecute taints.
enum Tolerated {
    /// Some taint is not tolerated: evict now.
    Not,
    /// Every taint is tolerated, the shortest for this long.
    For(Duration),
    /// Every taint is tolerated for ever.
    Forever,
}

fn tolerated_for(pod: &Value, taints: &[&Value]) -> Tolerated {
    let tolerations: Vec<&Value> = pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut shortest: Option<Duration> = None;
    for taint in taints {
        let used: Vec<&&Value> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if used.is_empty() {
            return Tolerated::Not;
        }
        for toleration in used {
            if let Some(seconds) = toleration["tolerationSeconds"].as_i64() {
                let allowed = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
                shortest = Some(shortest.map_or(allowed, |s| s.min(allowed)));
            }
        }
    }
    shortest.map_or(Tolerated::Forever, Tolerated::For)
}

fn evict_pod(state: &mut State, ns: &str, name: &str) {
    let Some(mut pod) = state.get("pods", ns, name).cloned() else {
        return;
    };
    let mut conditions: Vec<Value> = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !conditions.iter().any(|c| c["type"] == "DisruptionTarget") {
        conditions.push(json!({
            "type": "DisruptionTarget", "status": "True", "lastTransitionTime": now(),
            "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint",
        }));
        pod["status"]["conditions"] = Value::Array(conditions);
        state.put("pods", pod);
    }
    record_event(
        state,
        ns,
        name,
        ("Normal", "taint-eviction-controller"),
        "TaintManagerEviction",
        &format!("Marking for deletion Pod {ns}/{name}"),
    );
    let pods = resources::find("", "v1", "pods").expect("pods are served");
    let _ = objects::delete(state, pods, ns, name, &DeleteOptions::default());
}
