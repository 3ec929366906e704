//! The controllers the tests lean on: namespace deletion, orphaned-pod collection, CSR approval
//! and signing, EndpointSlices for Services with selectors, node lifecycle (silent nodes
//! Unknown and tainted as their zones' states allow), taint eviction, and an optional scheduler with kube-scheduler's
//! filters for our users' cases.

use super::Shared;
use super::endpoints;
use super::node_lifecycle;
use super::objects::{self, DeleteOptions, now};
use super::resources;
use super::store::{State, key_of};
use super::taint_eviction::TaintEviction;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

const RESYNC: Duration = Duration::from_millis(500);

/// Runs every controller until the store is dropped.
pub async fn run(shared: Arc<Shared>, scheduler: bool) {
    let mut changes = shared.store.changes();
    let mut resync = tokio::time::interval(RESYNC);
    let mut taint_eviction = TaintEviction::default();
    let mut node_lifecycle = node_lifecycle::NodeLifecycle::new(node_lifecycle::GRACE_PERIOD);
    loop {
        tokio::select! {
            received = changes.recv() => if let Err(RecvError::Closed) = received { return },
            _ = resync.tick() => {}
        }
        while changes.try_recv().is_ok() {}
        shared.store.write(|state| {
            collect_orphaned_pods(state);
            finish_namespaces(state);
            publish_namespace_defaults(&shared, state);
            reconcile_csrs(&shared, state);
            endpoints::reconcile(state);
            node_lifecycle.reconcile(state);
            taint_eviction.reconcile(state);
            if scheduler {
                schedule(state);
            }
        });
    }
}

fn force() -> DeleteOptions {
    DeleteOptions {
        grace_period_seconds: Some(0),
        ..Default::default()
    }
}

fn collect_orphaned_pods(state: &mut State) {
    let pods = resources::find("", "v1", "pods").expect("pods are served");
    let orphans: Vec<(String, String)> = state
        .list("pods", None)
        .filter(|p| {
            p["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty() && state.get("nodes", "", n).is_none())
        })
        .map(key_of)
        .collect();
    for (ns, name) in orphans {
        let _ = objects::delete(state, pods, &ns, &name, &force());
    }
}

/// The service account controller's `default` ServiceAccount and the root CA publisher's
/// `kube-root-ca.crt` ConfigMap, in every active namespace.
fn publish_namespace_defaults(shared: &Shared, state: &mut State) {
    let active: Vec<String> = state
        .list("namespaces", None)
        .filter(|n| n["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
        .collect();
    let system = super::auth::Identity::user("system:kube-controller-manager", &["system:masters"]);
    for ns in active {
        if state.get("serviceaccounts", &ns, "default").is_none() {
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
            let def = resources::find("", "v1", "serviceaccounts").expect("served");
            let _ = objects::create(state, def, &ns, &system, sa);
        }
        if state.get("configmaps", &ns, "kube-root-ca.crt").is_none() {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": shared.ca.cert_pem()}});
            let def = resources::find("", "v1", "configmaps").expect("served");
            let _ = objects::create(state, def, &ns, &system, cm);
        }
    }
}

fn finish_namespaces(state: &mut State) {
    let terminating: Vec<String> = state
        .list("namespaces", None)
        .filter(|n| !n["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
        .collect();
    for ns in terminating {
        let contents = objects::namespace_contents(state, &ns);
        if contents.is_empty() {
            state.remove("namespaces", "", &ns);
            continue;
        }
        for (def, name) in contents {
            let marked = state
                .get(def.storage, &ns, &name)
                .is_some_and(|o| !o["metadata"]["deletionTimestamp"].is_null());
            if !marked {
                let _ = objects::delete(state, def, &ns, &name, &DeleteOptions::default());
            }
        }
    }
}

fn reconcile_csrs(shared: &Shared, state: &mut State) {
    let updates: Vec<Value> = state
        .list("certificatesigningrequests", None)
        .filter_map(|csr| {
            super::csr::reconcile(&shared.ca, csr, shared.cluster_signing_duration).map(|status| {
                let mut updated = csr.clone();
                updated["status"] = status;
                updated
            })
        })
        .collect();
    for csr in updates {
        state.put("certificatesigningrequests", csr);
    }
}

fn schedule(state: &mut State) {
    let pending: Vec<Value> = state
        .list("pods", None)
        .filter(|p| {
            p["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
                && p["spec"]["schedulerName"] == "default-scheduler"
                && p["metadata"]["deletionTimestamp"].is_null()
                && p["status"]["phase"] == "Pending"
        })
        .cloned()
        .collect();
    if pending.is_empty() {
        return;
    }
    let nodes: Vec<Value> = state.list("nodes", None).cloned().collect();
    for pod in pending {
        let mut reasons: Vec<String> = Vec::new();
        let mut fits: Vec<(usize, &Value)> = Vec::new();
        for node in &nodes {
            let active = active_pods(state, node);
            match filter(&pod, node, &active) {
                Ok(()) => fits.push((active.len(), node)),
                Err(reason) => reasons.push(reason),
            }
        }
        match fits.into_iter().min_by_key(|(running, _)| *running) {
            Some((_, node)) => bind(
                state,
                pod,
                node["metadata"]["name"].as_str().unwrap_or_default(),
            ),
            None => unschedulable(state, pod, nodes.len(), reasons),
        }
    }
}

/// The pods bound to `node` that have not finished.
fn active_pods(state: &State, node: &Value) -> Vec<Value> {
    state
        .list("pods", None)
        .filter(|p| {
            p["spec"]["nodeName"] == node["metadata"]["name"]
                && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        })
        .cloned()
        .collect()
}

/// The `(hostIP, protocol, hostPort)` a pod's containers claim on their node.
fn host_ports(pod: &Value) -> Vec<(String, String, u64)> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| {
            let port = p["hostPort"].as_u64().filter(|p| *p > 0)?;
            let ip = p["hostIP"]
                .as_str()
                .filter(|i| !i.is_empty())
                .unwrap_or("0.0.0.0");
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            Some((ip.to_string(), protocol.to_string(), port))
        })
        .collect()
}

/// The scheduler's filters: taints, selectors and affinity, pod capacity, host ports.
fn filter(pod: &Value, node: &Value, active: &[Value]) -> Result<(), String> {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    let mut taints: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !ready {
        taints.push(json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}));
    }
    if node["spec"]["unschedulable"] == true {
        return Err("node(s) were unschedulable".into());
    }
    let tolerations = pod["spec"]["tolerations"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for taint in taints
        .iter()
        .filter(|t| t["effect"] == "NoSchedule" || t["effect"] == "NoExecute")
    {
        if !tolerations.iter().any(|t| tolerates(t, taint)) {
            let (key, value) = (
                taint["key"].as_str().unwrap_or_default(),
                taint["value"].as_str().unwrap_or_default(),
            );
            return Err(format!("node(s) had untolerated taint {{{key}: {value}}}"));
        }
    }
    if !selector_matches(pod, node) {
        return Err("node(s) didn't match Pod's node affinity/selector".into());
    }
    let capacity: usize = node["status"]["allocatable"]["pods"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or(110);
    if active.len() >= capacity {
        return Err("Too many pods".into());
    }
    let wanted = host_ports(pod);
    let taken: Vec<(String, String, u64)> = active.iter().flat_map(host_ports).collect();
    let clash = wanted.iter().any(|(ip, protocol, port)| {
        taken.iter().any(|(other_ip, other_protocol, other_port)| {
            port == other_port
                && protocol == other_protocol
                && (ip == other_ip || ip == "0.0.0.0" || other_ip == "0.0.0.0")
        })
    });
    if clash {
        return Err("node(s) didn't have free ports for the requested pod ports".into());
    }
    Ok(())
}

/// Whether `toleration` tolerates `taint`, as the scheduler and the taint eviction controller
/// match them.
pub fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let effect_ok = toleration["effect"]
        .as_str()
        .is_none_or(|e| e.is_empty() || taint["effect"] == e);
    let key = toleration["key"].as_str().unwrap_or_default();
    let exists = toleration["operator"] == "Exists";
    if key.is_empty() {
        return exists && effect_ok;
    }
    effect_ok
        && taint["key"] == key
        && (exists
            || toleration["value"].as_str().unwrap_or_default()
                == taint["value"].as_str().unwrap_or_default())
}

fn selector_matches(pod: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    let selector_ok = pod["spec"]["nodeSelector"]
        .as_object()
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels[k] == *v));
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    let affinity_ok = terms.as_array().is_none_or(|terms| {
        terms.iter().any(|term| {
            let exprs = term["matchExpressions"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|e| expression_matches(e, labels));
            let fields = term["matchFields"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|e| {
                    let mut by_name = json!({});
                    by_name["metadata.name"] = node["metadata"]["name"].clone();
                    expression_matches(e, &by_name)
                });
            exprs && fields
        })
    });
    selector_ok && affinity_ok
}

fn expression_matches(expr: &Value, labels: &Value) -> bool {
    let key = expr["key"].as_str().unwrap_or_default();
    let value = labels[key].as_str();
    let values: Vec<&str> = expr["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let number = |s: Option<&str>| s.and_then(|s| s.parse::<i64>().ok());
    match expr["operator"].as_str().unwrap_or_default() {
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

fn bind(state: &mut State, mut pod: Value, node: &str) {
    pod["spec"]["nodeName"] = json!(node);
    set_scheduled_condition(
        &mut pod,
        json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}),
    );
    let (ns, name) = key_of(&pod);
    state.put("pods", pod);
    record_event(
        state,
        &ns,
        &name,
        ("Normal", "default-scheduler"),
        "Scheduled",
        &format!("Successfully assigned {ns}/{name} to {node}"),
    );
}

fn unschedulable(state: &mut State, mut pod: Value, total: usize, reasons: Vec<String>) {
    let mut counted: Vec<(String, usize)> = Vec::new();
    for r in reasons {
        match counted.iter_mut().find(|(reason, _)| *reason == r) {
            Some((_, n)) => *n += 1,
            None => counted.push((r, 1)),
        }
    }
    counted.sort();
    let parts: Vec<String> = counted.iter().map(|(r, n)| format!("{n} {r}")).collect();
    let mut message = format!("0/{total} nodes are available");
    if !parts.is_empty() {
        message = format!("{message}: {}", parts.join(", "));
    }
    message = format!(
        "{message}. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling."
    );
    let current = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "PodScheduled")
        .cloned();
    if current
        .as_ref()
        .is_some_and(|c| c["message"] == message.as_str())
    {
        return;
    }
    set_scheduled_condition(
        &mut pod,
        json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message, "lastTransitionTime": now()}),
    );
    let (ns, name) = key_of(&pod);
    state.put("pods", pod);
    record_event(
        state,
        &ns,
        &name,
        ("Warning", "default-scheduler"),
        "FailedScheduling",
        &message,
    );
}

fn set_scheduled_condition(pod: &mut Value, condition: Value) {
    let mut conditions: Vec<Value> = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c["type"] != "PodScheduled");
    conditions.push(condition);
    pod["status"]["conditions"] = Value::Array(conditions);
}

/// Records an event about a pod from a controller: `(kind, component)`.
pub fn record_event(
    state: &mut State,
    ns: &str,
    pod: &str,
    (kind, component): (&str, &str),
    reason: &str,
    message: &str,
) {
    let Some(uid) = state
        .get("pods", ns, pod)
        .map(|p| p["metadata"]["uid"].clone())
    else {
        return;
    };
    let stamp = now();
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{pod}.{:x}", rand::random::<u64>()), "namespace": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": stamp},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": pod, "uid": uid, "apiVersion": "v1"},
        "reason": reason, "message": message, "type": kind, "count": 1,
        "source": {"component": component}, "reportingComponent": component,
        "firstTimestamp": stamp, "lastTimestamp": stamp,
    });
    state.put("events", event);
}
