//! The node lifecycle controller (kube-controller-manager's `node-lifecycle-controller`), with
//! its zone states as in Kubernetes 1.32:
//!
//! - A node whose kubelet has neither renewed its Lease nor posted its status for the grace
//!   period (`--node-monitor-grace-period`, 50 s since 1.32; `--node-startup-grace-period`, 60 s,
//!   for a node that never posted) has its conditions set to Unknown ("Kubelet stopped posting
//!   node status.").
//! - Its NoSchedule taint follows its Ready condition at once: `node.kubernetes.io/unreachable`
//!   while it is Unknown, `node.kubernetes.io/not-ready` while it is False.
//! - Its NoExecute taint (the one that evicts pods) goes through its zone's rate-limited queue
//!   (`topology.kubernetes.io/region` and `zone` labels; nodes labelled
//!   `node.kubernetes.io/exclude-disruption` are not counted). A zone is in full disruption
//!   when none of its nodes is Ready, in partial disruption when more than 2 and at least 55 %
//!   (`--unhealthy-zone-threshold`) are not, normal otherwise. Taints are added at 0.1 a second
//!   (`--node-eviction-rate`) in a normal or fully disrupted zone, at 0.01
//!   (`--secondary-node-eviction-rate`) in a partially disrupted zone of more than 50 nodes
//!   (`--large-cluster-size-threshold`), and not at all in a smaller one.
//! - When every zone is fully disrupted ("master disruption mode": the control plane is more
//!   likely cut off than every node down), NoExecute taints are removed from every node and none
//!   is added; leaving that mode gives every node a fresh grace period.
//! - A node Ready again loses both taints at once.

use super::objects::now;
use super::store::State;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a running node may go without a heartbeat (kube-controller-manager's default).
pub const GRACE_PERIOD: Duration = Duration::from_secs(50);
/// How long a new node may take to post its first status.
const STARTUP_GRACE_PERIOD: Duration = Duration::from_secs(60);
/// The conditions the controller marks Unknown.
const CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// A node with this label is left out of its zone's state.
const EXCLUDE_DISRUPTION: &str = "node.kubernetes.io/exclude-disruption";
/// NoExecute taints a second in a normal zone (`--node-eviction-rate`).
const EVICTION_QPS: f64 = 0.1;
/// NoExecute taints a second in a large partially disrupted zone
/// (`--secondary-node-eviction-rate`).
const SECONDARY_EVICTION_QPS: f64 = 0.01;
/// Above this many nodes a partially disrupted zone still gets taints, slowly
/// (`--large-cluster-size-threshold`).
const LARGE_CLUSTER_SIZE: usize = 50;
/// The share of not-Ready nodes that makes a zone partially disrupted
/// (`--unhealthy-zone-threshold`).
const UNHEALTHY_ZONE_THRESHOLD: f64 = 0.55;

/// A zone's health, as the controller names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneState {
    /// Seen for the first time in this pass.
    Initial,
    /// Most of its nodes are Ready.
    Normal,
    /// More than 2, and at least 55 %, of its nodes are not Ready.
    PartialDisruption,
    /// None of its nodes is Ready.
    FullDisruption,
}

impl ZoneState {
    /// The state of a zone whose nodes' Ready conditions are `ready` (`None`: never posted).
    fn of(ready: &[Option<String>]) -> Self {
        let ready_nodes = ready
            .iter()
            .filter(|r| r.as_deref() == Some("True"))
            .count();
        let not_ready = ready.len() - ready_nodes;
        if ready_nodes == 0 && not_ready > 0 {
            Self::FullDisruption
        } else if not_ready > 2 && not_ready as f64 / ready.len() as f64 >= UNHEALTHY_ZONE_THRESHOLD
        {
            Self::PartialDisruption
        } else {
            Self::Normal
        }
    }

    /// The NoExecute taint rate of a zone of `size` nodes in this state (while some zone is not
    /// fully disrupted).
    fn taint_rate(self, size: usize) -> f64 {
        match self {
            Self::PartialDisruption if size > LARGE_CLUSTER_SIZE => SECONDARY_EVICTION_QPS,
            Self::PartialDisruption => 0.0,
            Self::Initial | Self::Normal | Self::FullDisruption => EVICTION_QPS,
        }
    }
}

/// One zone's NoExecute taint queue: node names in the order they became not Ready, taken at
/// most `qps` a second with a burst of 1 (a token bucket), none at a rate of 0.
struct Tainter {
    qps: f64,
    tokens: f64,
    refilled: Instant,
    queue: VecDeque<String>,
}

impl Tainter {
    fn new(now: Instant) -> Self {
        Self {
            qps: EVICTION_QPS,
            tokens: 1.0,
            refilled: now,
            queue: VecDeque::new(),
        }
    }

    /// A new rate; a bucket that was empty stays empty (the controller's `SwapLimiter`).
    fn set_rate(&mut self, qps: f64, now: Instant) {
        self.refill(now);
        self.qps = qps;
        self.tokens = if self.tokens >= 1.0 { 1.0 } else { 0.0 };
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(1.0);
        self.refilled = now;
    }

    fn add(&mut self, node: &str) {
        if !self.queue.iter().any(|n| n == node) {
            self.queue.push_back(node.to_string());
        }
    }

    fn remove(&mut self, node: &str) {
        self.queue.retain(|n| n != node);
    }

    /// The next node to taint, if the rate allows one now.
    fn take(&mut self, now: Instant) -> Option<String> {
        self.refill(now);
        if self.qps <= 0.0 || self.tokens < 1.0 || self.queue.is_empty() {
            return None;
        }
        self.tokens -= 1.0;
        self.queue.pop_front()
    }
}

/// The controller's memory between passes: each zone's state and taint queue.
pub struct NodeLifecycle {
    grace: Duration,
    states: HashMap<String, ZoneState>,
    tainters: HashMap<String, Tainter>,
    /// When the controller last left master disruption mode: no node counts as silent for
    /// longer than since then.
    fresh_grace_since: Option<jiff::Timestamp>,
}

impl NodeLifecycle {
    /// A controller that marks nodes Unknown after `grace` without a heartbeat.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            states: HashMap::new(),
            tainters: HashMap::new(),
            fresh_grace_since: None,
        }
    }

    /// One monitoring pass over every node, then one tainting pass.
    pub fn reconcile(&mut self, state: &mut State) {
        let now = Instant::now();
        let names: Vec<String> = state
            .list("nodes", None)
            .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
            .collect();
        let mut zones: HashMap<String, Vec<Option<String>>> = HashMap::new();
        for name in names {
            let Some(original) = state.get("nodes", "", &name) else {
                continue;
            };
            let mut node = original.clone();
            // What this pass found, before it marked anything (the controller's "observed").
            let observed = ready_status(&node);
            if self.is_silent(state, &name, &node) {
                mark_unknown(&mut node);
            }
            let current = ready_status(&node);
            let zone = zone_key(&node);
            let tainter = self
                .tainters
                .entry(zone.clone())
                .or_insert_with(|| Tainter::new(now));
            if let Some(current) = &current {
                set_no_schedule_taint(&mut node, current);
                match observed.as_deref().unwrap_or("Unknown") {
                    "True" => {
                        remove_no_execute_taints(&mut node);
                        tainter.remove(&name);
                    }
                    not_ready => {
                        let (wanted, opposite) = no_execute_taints(not_ready);
                        if has_taint(&node, opposite, "NoExecute") {
                            // Swapped at once, as the controller does.
                            remove_no_execute_taints(&mut node);
                            add_taint(&mut node, wanted, "NoExecute");
                        } else if !has_taint(&node, wanted, "NoExecute") {
                            tainter.add(&name);
                        }
                    }
                }
            }
            let excluded = node["metadata"]["labels"][EXCLUDE_DISRUPTION].is_string();
            if !excluded {
                zones.entry(zone).or_default().push(current);
            }
            if state.get("nodes", "", &name) != Some(&node) {
                state.put("nodes", node);
            }
        }
        self.handle_disruption(state, &zones, now);
        self.taint(state, now);
    }

    /// Whether neither the Lease nor the status was renewed within the grace period.
    fn is_silent(&self, state: &State, name: &str, node: &Value) -> bool {
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
            Some(last) => (last, self.grace),
            None => match timestamp(&node["metadata"]["creationTimestamp"]) {
                Some(created) => (created, STARTUP_GRACE_PERIOD),
                None => return false,
            },
        };
        let last = last.max(self.fresh_grace_since.unwrap_or(last));
        let silent_for = jiff::Timestamp::now().duration_since(last);
        Duration::try_from(silent_for).is_ok_and(|d| d > allowed)
    }

    /// The zones' new states and their taint rates (the controller's `handleDisruption`).
    fn handle_disruption(
        &mut self,
        state: &mut State,
        zones: &HashMap<String, Vec<Option<String>>>,
        now: Instant,
    ) {
        let new_states: HashMap<String, ZoneState> = zones
            .iter()
            .map(|(zone, ready)| (zone.clone(), ZoneState::of(ready)))
            .collect();
        let all_are_fully_disrupted = new_states.values().all(|s| *s == ZoneState::FullDisruption);
        for zone in new_states.keys() {
            self.states
                .entry(zone.clone())
                .or_insert(ZoneState::Initial);
        }
        self.states.retain(|zone, _| zones.contains_key(zone));
        let all_were_fully_disrupted = self
            .states
            .values()
            .all(|s| *s == ZoneState::FullDisruption);
        if all_are_fully_disrupted && all_were_fully_disrupted {
            return;
        }
        if all_are_fully_disrupted {
            // "Controller detected that all Nodes are not-Ready. Entering master disruption
            // mode": no node is evicted for what is more likely the control plane's isolation.
            let names: Vec<String> = state
                .list("nodes", None)
                .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
                .collect();
            for name in names {
                if let Some(mut node) = state.get("nodes", "", &name).cloned()
                    && remove_no_execute_taints(&mut node)
                {
                    state.put("nodes", node);
                }
            }
            for tainter in self.tainters.values_mut() {
                tainter.queue.clear();
                tainter.set_rate(0.0, now);
            }
            self.states
                .values_mut()
                .for_each(|s| *s = ZoneState::FullDisruption);
            return;
        }
        if all_were_fully_disrupted {
            // Leaving master disruption mode: every node gets a fresh grace period.
            self.fresh_grace_since = Some(jiff::Timestamp::now());
        }
        for (zone, state) in self.states.iter_mut() {
            let Some(&new_state) = new_states.get(zone) else {
                continue;
            };
            if *state != new_state || all_were_fully_disrupted {
                let size = zones.get(zone).map_or(0, Vec::len);
                if let Some(tainter) = self.tainters.get_mut(zone) {
                    tainter.set_rate(new_state.taint_rate(size), now);
                }
                *state = new_state;
            }
        }
    }

    /// Adds the NoExecute taints each zone's rate allows now (the `doNoExecuteTaintingPass`).
    fn taint(&mut self, state: &mut State, now: Instant) {
        for tainter in self.tainters.values_mut() {
            while let Some(name) = tainter.take(now) {
                let Some(mut node) = state.get("nodes", "", &name).cloned() else {
                    continue;
                };
                let status = ready_status(&node);
                let not_ready = match status.as_deref() {
                    Some("True") => continue,
                    None => {
                        // Not posted yet: tried again later.
                        tainter.add(&name);
                        break;
                    }
                    Some(not_ready) => not_ready,
                };
                let (wanted, _) = no_execute_taints(not_ready);
                remove_no_execute_taints(&mut node);
                add_taint(&mut node, wanted, "NoExecute");
                state.put("nodes", node);
            }
        }
    }

    /// A zone's state as the controller last computed it.
    #[cfg(test)]
    fn zone_state(&self, zone: &str) -> Option<ZoneState> {
        self.states.get(zone).copied()
    }
}

/// The zone a node counts in: its region and zone labels (`""` for neither).
fn zone_key(node: &Value) -> String {
    let label = |key: &str| {
        node["metadata"]["labels"][key]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let region = label("topology.kubernetes.io/region");
    let zone = label("topology.kubernetes.io/zone");
    if region.is_empty() && zone.is_empty() {
        String::new()
    } else {
        format!("{region}:\u{0}:{zone}")
    }
}

/// The status of the node's Ready condition, if it has one.
fn ready_status(node: &Value) -> Option<String> {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

/// The NoExecute taint a not-Ready status calls for, and the one it replaces.
fn no_execute_taints(ready: &str) -> (&'static str, &'static str) {
    if ready == "False" {
        (NOT_READY, UNREACHABLE)
    } else {
        (UNREACHABLE, NOT_READY)
    }
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

fn taints(node: &Value) -> Vec<Value> {
    node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn set_taints(node: &mut Value, taints: Vec<Value>) {
    if taints.is_empty() {
        if let Some(spec) = node["spec"].as_object_mut() {
            spec.remove("taints");
        }
    } else {
        node["spec"]["taints"] = Value::Array(taints);
    }
}

fn has_taint(node: &Value, key: &str, effect: &str) -> bool {
    taints(node)
        .iter()
        .any(|t| t["key"] == key && t["effect"] == effect)
}

fn add_taint(node: &mut Value, key: &str, effect: &str) {
    if has_taint(node, key, effect) {
        return;
    }
    let mut taint = json!({"key": key, "effect": effect});
    if effect == "NoExecute" {
        taint["timeAdded"] = json!(now());
    }
    let mut all = taints(node);
    all.push(taint);
    set_taints(node, all);
}

/// Removes the readiness taints of `effect` other than `keep`; whether any was there.
fn remove_readiness_taints(node: &mut Value, effect: &str, keep: Option<&str>) -> bool {
    let mut all = taints(node);
    let before = all.len();
    all.retain(|t| {
        let key = t["key"].as_str().unwrap_or_default();
        t["effect"] != effect || !(key == UNREACHABLE || key == NOT_READY) || Some(key) == keep
    });
    let removed = all.len() != before;
    if removed {
        set_taints(node, all);
    }
    removed
}

fn remove_no_execute_taints(node: &mut Value) -> bool {
    remove_readiness_taints(node, "NoExecute", None)
}

/// The NoSchedule taint the Ready condition's status calls for, and no other.
fn set_no_schedule_taint(node: &mut Value, ready: &str) {
    let wanted = match ready {
        "True" => None,
        "False" => Some(NOT_READY),
        _ => Some(UNREACHABLE),
    };
    remove_readiness_taints(node, "NoSchedule", wanted);
    if let Some(key) = wanted {
        add_taint(node, key, "NoSchedule");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::store::Store;

    /// A node in `zone` whose last heartbeat was `silent_for` ago, Ready as `ready` says.
    fn node(name: &str, zone: &str, ready: &str, silent_for: Duration) -> Value {
        let at = jiff::Timestamp::now() - jiff::SignedDuration::try_from(silent_for).unwrap();
        json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone},
                "creationTimestamp": at.to_string()},
            "status": {"conditions": [{"type": "Ready", "status": ready,
                "lastHeartbeatTime": at.to_string(), "lastTransitionTime": at.to_string()}]}})
    }

    /// The node's taints as `key:effect`, sorted.
    fn taints_of(store: &Store, name: &str) -> Vec<String> {
        let mut all: Vec<String> = store.read(|s| {
            taints(s.get("nodes", "", name).unwrap())
                .iter()
                .map(|t| {
                    format!(
                        "{}:{}",
                        t["key"].as_str().unwrap(),
                        t["effect"].as_str().unwrap()
                    )
                })
                .collect()
        });
        all.sort();
        all
    }

    fn ready_of(store: &Store, name: &str) -> Option<String> {
        store.read(|s| ready_status(s.get("nodes", "", name).unwrap()))
    }

    const SILENT: Duration = Duration::from_secs(120);
    const FRESH: Duration = Duration::ZERO;

    /// `n` passes (a node is marked Unknown in one, its NoExecute taint queued in the next).
    fn passes(controller: &mut NodeLifecycle, store: &Store, n: usize) {
        for _ in 0..n {
            store.write(|s| controller.reconcile(s));
        }
    }

    #[test]
    fn a_silent_node_beside_a_ready_one_is_unknown_and_tainted() {
        let store = Store::default();
        store.write(|s| {
            s.put("nodes", node("silent", "a", "True", SILENT));
            s.put("nodes", node("ready", "a", "True", FRESH));
        });
        let mut controller = NodeLifecycle::new(GRACE_PERIOD);
        passes(&mut controller, &store, 2);
        assert_eq!(ready_of(&store, "silent").as_deref(), Some("Unknown"));
        assert_eq!(
            taints_of(&store, "silent"),
            [
                format!("{UNREACHABLE}:NoExecute"),
                format!("{UNREACHABLE}:NoSchedule")
            ]
        );
        assert_eq!(controller.zone_state(":\u{0}:a"), Some(ZoneState::Normal));
        assert!(taints_of(&store, "ready").is_empty());
    }

    #[test]
    fn a_single_silent_node_is_unknown_but_not_evicted_from() {
        // The only zone is fully disrupted: master disruption mode.
        let store = Store::default();
        store.write(|s| s.put("nodes", node("alone", "", "True", SILENT)));
        let mut controller = NodeLifecycle::new(GRACE_PERIOD);
        passes(&mut controller, &store, 3);
        assert_eq!(ready_of(&store, "alone").as_deref(), Some("Unknown"));
        assert_eq!(
            taints_of(&store, "alone"),
            [format!("{UNREACHABLE}:NoSchedule")]
        );
        assert_eq!(controller.zone_state(""), Some(ZoneState::FullDisruption));
    }

    #[test]
    fn entering_master_disruption_removes_the_no_execute_taints() {
        let store = Store::default();
        store.write(|s| {
            s.put("nodes", node("first", "", "True", SILENT));
            s.put("nodes", node("second", "", "True", FRESH));
        });
        let mut controller = NodeLifecycle::new(GRACE_PERIOD);
        passes(&mut controller, &store, 2);
        assert!(taints_of(&store, "first").contains(&format!("{UNREACHABLE}:NoExecute")));
        // The other node goes silent too: every zone is down.
        store.write(|s| s.put("nodes", node("second", "", "True", SILENT)));
        passes(&mut controller, &store, 2);
        for name in ["first", "second"] {
            assert_eq!(ready_of(&store, name).as_deref(), Some("Unknown"));
            assert_eq!(
                taints_of(&store, name),
                [format!("{UNREACHABLE}:NoSchedule")],
                "{name}"
            );
        }
    }

    #[test]
    fn a_small_partially_disrupted_zone_gets_no_no_execute_taints() {
        let store = Store::default();
        store.write(|s| {
            for name in ["a", "b", "c"] {
                s.put("nodes", node(name, "z", "True", SILENT));
            }
            s.put("nodes", node("up", "z", "True", FRESH));
            // Another zone, healthy: not master disruption.
            s.put("nodes", node("elsewhere", "y", "True", FRESH));
        });
        let mut controller = NodeLifecycle::new(GRACE_PERIOD);
        passes(&mut controller, &store, 3);
        assert_eq!(
            controller.zone_state(":\u{0}:z"),
            Some(ZoneState::PartialDisruption)
        );
        for name in ["a", "b", "c"] {
            assert_eq!(ready_of(&store, name).as_deref(), Some("Unknown"));
            assert_eq!(
                taints_of(&store, name),
                [format!("{UNREACHABLE}:NoSchedule")]
            );
        }
    }

    #[test]
    fn a_fully_disrupted_zone_beside_a_healthy_one_is_tainted_one_node_at_a_time() {
        let store = Store::default();
        store.write(|s| {
            s.put("nodes", node("a", "z", "True", SILENT));
            s.put("nodes", node("b", "z", "True", SILENT));
            s.put("nodes", node("elsewhere", "y", "True", FRESH));
        });
        let mut controller = NodeLifecycle::new(GRACE_PERIOD);
        passes(&mut controller, &store, 3);
        assert_eq!(
            controller.zone_state(":\u{0}:z"),
            Some(ZoneState::FullDisruption)
        );
        let tainted = ["a", "b"]
            .iter()
            .filter(|n| taints_of(&store, n).contains(&format!("{UNREACHABLE}:NoExecute")))
            .count();
        // 0.1 a second with a burst of 1: the second waits 10 s.
        assert_eq!(tainted, 1);
    }

    #[test]
    fn a_node_ready_again_loses_its_taints_and_a_not_ready_one_is_swapped() {
        let store = Store::default();
        store.write(|s| {
            s.put("nodes", node("n", "", "True", SILENT));
            s.put("nodes", node("other", "", "True", FRESH));
        });
        let mut controller = NodeLifecycle::new(GRACE_PERIOD);
        passes(&mut controller, &store, 2);
        // The kubelet posts NotReady: the unreachable taints become not-ready ones at once.
        store.write(|s| {
            s.put("nodes", {
                let mut n = node("n", "", "False", FRESH);
                n["spec"] = s.get("nodes", "", "n").unwrap()["spec"].clone();
                n
            })
        });
        passes(&mut controller, &store, 1);
        assert_eq!(
            taints_of(&store, "n"),
            [
                format!("{NOT_READY}:NoExecute"),
                format!("{NOT_READY}:NoSchedule")
            ]
        );
        store.write(|s| {
            s.put("nodes", {
                let mut n = node("n", "", "True", FRESH);
                n["spec"] = s.get("nodes", "", "n").unwrap()["spec"].clone();
                n
            })
        });
        passes(&mut controller, &store, 1);
        assert!(taints_of(&store, "n").is_empty());
    }

    #[test]
    fn zone_states_follow_the_controllers_thresholds() {
        let of = |ready: &[&str]| {
            let ready: Vec<Option<String>> = ready.iter().map(|r| Some(r.to_string())).collect();
            ZoneState::of(&ready)
        };
        assert_eq!(of(&["Unknown"]), ZoneState::FullDisruption);
        assert_eq!(of(&["True", "Unknown", "Unknown"]), ZoneState::Normal);
        assert_eq!(
            of(&["True", "Unknown", "False", "Unknown"]),
            ZoneState::PartialDisruption
        );
        assert_eq!(
            of(&["True", "True", "True", "Unknown", "Unknown", "Unknown"]),
            ZoneState::Normal
        );
        assert_eq!(ZoneState::of(&[None]), ZoneState::FullDisruption);
        assert_eq!(ZoneState::PartialDisruption.taint_rate(50), 0.0);
        assert_eq!(
            ZoneState::PartialDisruption.taint_rate(51),
            SECONDARY_EVICTION_QPS
        );
    }
}
