//! The EndpointSlice controller: for each Service with a selector, the matching pods that have
//! an IP, in one slice per set of ports they resolve the Service's ports to (pods whose named
//! ports have different numbers land in different slices, as with the real controller), with
//! the ready/serving/terminating conditions it derives from the pod's Ready condition and
//! deletion.

use super::auth::Identity;
use super::objects;
use super::resources;
use super::store::State;
use serde_json::{Value, json};

const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// Brings every managed EndpointSlice in line with its Service and pods.
pub fn reconcile(state: &mut State) {
    let services: Vec<Value> = state
        .list("services", None)
        .filter(|s| {
            s["spec"]["selector"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
        })
        .cloned()
        .collect();
    let def = resources::find("discovery.k8s.io", "v1", "endpointslices").expect("served");
    let system = Identity::user("system:kube-controller-manager", &["system:masters"]);
    let mut wanted = Vec::new();
    for service in &services {
        let ns = service["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        for desired in desired_slices(state, service) {
            let slice_name = desired["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            wanted.push((ns.to_string(), slice_name.clone()));
            match state.get("endpointslices", ns, &slice_name) {
                Some(existing)
                    if existing["endpoints"] == desired["endpoints"]
                        && existing["ports"] == desired["ports"] => {}
                Some(existing) => {
                    let mut updated = existing.clone();
                    updated["endpoints"] = desired["endpoints"].clone();
                    updated["ports"] = desired["ports"].clone();
                    state.put("endpointslices", updated);
                }
                None => {
                    let _ = objects::create(state, def, ns, &system, desired);
                }
            }
        }
    }
    let stale: Vec<(String, String)> = state
        .list("endpointslices", None)
        .filter(|s| s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == MANAGED_BY)
        .map(super::store::key_of)
        .filter(|key| !wanted.contains(key))
        .collect();
    for (ns, name) in stale {
        state.remove("endpointslices", &ns, &name);
    }
}

fn short_uid(object: &Value) -> String {
    object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(5)
        .collect()
}

fn selects(selector: &Value, pod: &Value) -> bool {
    selector.as_object().is_some_and(|wanted| {
        wanted
            .iter()
            .all(|(k, v)| &pod["metadata"]["labels"][k] == v)
    })
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// A service port's target on `pod`: a number, or the number of the pod's port by that name.
fn target_port(port: &Value, pod: Option<&Value>) -> Option<i64> {
    match &port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod?["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64()),
        _ => port["port"].as_i64(),
    }
}

/// The slices `service` should have: one per set of resolved ports (the first, or the only
/// one, named `<service>-<uid>`, the others after their ports), none without pods but one.
fn desired_slices(state: &State, service: &Value) -> Vec<Value> {
    let ns = service["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let name = service["metadata"]["name"].as_str().unwrap_or_default();
    let pods: Vec<&Value> = state
        .list("pods", Some(ns))
        .filter(|p| selects(&service["spec"]["selector"], p))
        .filter(|p| p["status"]["podIP"].is_string())
        .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .collect();
    let mut groups: std::collections::BTreeMap<String, (Vec<Value>, Vec<&Value>)> =
        std::collections::BTreeMap::new();
    for pod in &pods {
        let ports = resolved_ports(service, Some(pod));
        let key = Value::Array(ports.clone()).to_string();
        groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(pod);
    }
    if groups.is_empty() {
        groups.insert(String::new(), (resolved_ports(service, None), Vec::new()));
    }
    let base = format!("{name}-{}", short_uid(service));
    groups
        .into_values()
        .enumerate()
        .map(|(index, (ports, pods))| {
            let slice_name = match index {
                0 => base.clone(),
                _ => format!("{base}-{}", ports_suffix(&ports)),
            };
            slice(service, &slice_name, ports, &pods)
        })
        .collect()
}

/// The Service's ports as `pod` resolves them (named target ports to its numbers).
fn resolved_ports(service: &Value, pod: Option<&Value>) -> Vec<Value> {
    service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|port| {
            let number = target_port(port, pod)?;
            Some(json!({
                "name": port["name"].as_str().unwrap_or_default(),
                "port": number,
                "protocol": port["protocol"],
            }))
        })
        .collect()
}

/// A name part from a set of ports (`8080-9090`).
fn ports_suffix(ports: &[Value]) -> String {
    ports
        .iter()
        .filter_map(|p| p["port"].as_i64())
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("-")
}

fn slice(service: &Value, slice_name: &str, ports: Vec<Value>, pods: &[&Value]) -> Value {
    let ns = service["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|pod| {
            let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
            let ready = is_ready(pod);
            json!({
                "addresses": [pod["status"]["podIP"]],
                "conditions": {"ready": ready && !terminating, "serving": ready, "terminating": terminating},
                "nodeName": pod["spec"]["nodeName"],
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name,
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": service["metadata"]["name"],
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Service",
                "name": service["metadata"]["name"], "uid": service["metadata"]["uid"],
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}
