//! Create, update and delete inside the locked store, with the real server's rules: names,
//! uids and timestamps, namespaces, preconditions, status strategies, NodeRestriction, graceful
//! pod deletion and finalizers.

use super::auth::Identity;
use super::handlers::Target;
use super::resources::{self, ResourceDef};
use super::response::{self, ApiError, conflict, not_found};
use super::semantics;
use super::store::State;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

/// The current time as the API server writes timestamps.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The parts of DeleteOptions the stand-in honours.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteOptions {
    /// Seconds to wait before deletion; 0 deletes at once.
    pub grace_period_seconds: Option<i64>,
    /// uid and resourceVersion preconditions.
    #[serde(default)]
    pub preconditions: Preconditions,
}

/// DeleteOptions preconditions.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preconditions {
    /// Required uid.
    pub uid: Option<String>,
    /// Required resourceVersion.
    pub resource_version: Option<String>,
}

/// Whether an update checks the resourceVersion the object carries.
pub enum Precondition {
    /// Check `metadata.resourceVersion` when the object has one.
    FromObject,
    /// No optimistic-concurrency check (patches that leave resourceVersion alone).
    None,
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Creates an object in `namespace` as `who`; the object is already decoded and pruned.
pub fn create(
    state: &mut State,
    def: &'static ResourceDef,
    namespace: &str,
    who: &Identity,
    mut object: Value,
) -> Result<Value, ApiError> {
    let meta = &mut object["metadata"];
    if !meta.is_object() {
        *meta = json!({});
    }
    if def.namespaced {
        match meta["namespace"].as_str() {
            Some(ns) if !ns.is_empty() && ns != namespace => {
                return Err(response::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => meta["namespace"] = json!(namespace),
        }
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    if meta["name"].as_str().unwrap_or_default().is_empty()
        && let Some(prefix) = meta["generateName"].as_str()
    {
        meta["name"] = json!(format!("{prefix}{}", random_suffix()));
    }
    let name = meta["name"].as_str().unwrap_or_default().to_string();
    semantics::validate(def, &object)
        .map_err(|e| response::invalid(def.kind, def.group, &name, &e.0))?;
    if def.namespaced {
        match state.get("namespaces", "", namespace) {
            None => return Err(not_found("", "namespaces", namespace)),
            Some(ns) if !ns["metadata"]["deletionTimestamp"].is_null() => {
                return Err(response::status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                        def.plural
                    ),
                    Some(response::details(&name, def.group, def.plural)),
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(node) = who.node_name()
        && matches!(def.kind, "Node" | "Lease")
        && name != node
    {
        // NodeRestriction: a node creates only its own Node and its own Lease.
        let qualified = response::qualified(def.group, def.plural);
        return Err(response::status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{qualified} \"{name}\" is forbidden: node \"{node}\" can only create its own {}",
                def.kind
            ),
            Some(response::details(&name, def.group, def.plural)),
        ));
    }
    if let Some(node) = who.node_name()
        && def.kind == "Pod"
        && let Err(why) = node_may_create_pod(state, node, &object)
    {
        // NodeRestriction: a node creates only mirror pods of its own.
        return Err(response::status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("pods \"{name}\" is forbidden: {why}"),
            Some(response::details(&name, def.group, def.plural)),
        ));
    }
    if state.get(def.storage, namespace, &name).is_some() {
        let qualified = response::qualified(def.group, def.plural);
        return Err(response::status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
            Some(response::details(&name, def.group, def.plural)),
        ));
    }
    let meta = &mut object["metadata"];
    meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
    meta["creationTimestamp"] = json!(now());
    for key in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "managedFields",
    ] {
        if let Some(m) = meta.as_object_mut() {
            m.remove(key);
        }
    }
    if def.kind == "Pod" {
        object["metadata"]["generation"] = json!(1);
    }
    semantics::default_on_create(def, &mut object);
    if def.kind == "Pod" {
        super::admission::service_account(state, namespace, &name, &mut object)?;
        super::runtime_class::admit(state, &name, &mut object)?;
    }
    if def.kind == "CertificateSigningRequest" {
        super::csr::prepare_create(&mut object, who)
            .map_err(|e| response::invalid(def.kind, def.group, &name, &e.0))?;
    }
    semantics::strip_nulls(&mut object);
    Ok(state.put(def.storage, object))
}

/// Updates an object (main resource or a subresource) as `who`.
pub fn update(
    state: &mut State,
    def: &'static ResourceDef,
    target: &Target,
    who: &Identity,
    mut object: Value,
    precondition: Precondition,
) -> Result<Value, ApiError> {
    let name = &target.name;
    let old = state
        .get(def.storage, &target.namespace, name)
        .cloned()
        .ok_or_else(|| not_found(def.group, def.plural, name))?;
    if let Precondition::FromObject = precondition
        && let Some(rv) = object["metadata"]["resourceVersion"].as_str()
        && rv != old["metadata"]["resourceVersion"]
    {
        return Err(conflict(
            def.group,
            def.plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if let Some(uid) = object["metadata"]["uid"].as_str()
        && uid != old["metadata"]["uid"]
    {
        return Err(conflict(
            def.group,
            def.plural,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                old["metadata"]["uid"].as_str().unwrap_or_default()
            ),
        ));
    }
    let status_write = matches!(target.subresource.as_deref(), Some("status" | "approval"));
    if target.subresource.as_deref() == Some("approval") {
        let conditions = object["status"]["conditions"].clone();
        object["status"] = old["status"].clone();
        object["status"]["conditions"] = conditions;
    }
    semantics::merge_update(def, &old, &mut object, status_write);
    if def.kind == "Pod" && !status_write {
        semantics::validate_pod_update(&old, &object)
            .map_err(|e| response::invalid(def.kind, def.group, name, &e.0))?;
    }
    if let Some(node) = who.node_name()
        && def.kind == "Node"
        && object["spec"]["taints"] != old["spec"]["taints"]
    {
        return Err(response::status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "nodes \"{name}\" is forbidden: node \"{node}\" is not allowed to modify taints"
            ),
            None,
        ));
    }
    semantics::validate(def, &object)
        .map_err(|e| response::invalid(def.kind, def.group, name, &e.0))?;
    object["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    if object == old {
        return Ok(old);
    }
    if !object["metadata"]["deletionTimestamp"].is_null()
        && finalizers(&object).is_empty()
        && !is_graceful_pod(def, &object)
    {
        return Ok(state
            .remove(def.storage, &target.namespace, name)
            .unwrap_or(object));
    }
    Ok(state.put(def.storage, object))
}

fn finalizers(object: &Value) -> Vec<Value> {
    object["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn is_graceful_pod(def: &ResourceDef, object: &Value) -> bool {
    def.kind == "Pod"
        && object["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .is_some_and(|g| g > 0)
}

/// Deletes an object: pods bound to a node and objects with finalizers are marked first.
pub fn delete(
    state: &mut State,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
    options: &DeleteOptions,
) -> Result<Value, ApiError> {
    let old = state
        .get(def.storage, ns, name)
        .cloned()
        .ok_or_else(|| not_found(def.group, def.plural, name))?;
    if let Some(uid) = &options.preconditions.uid
        && *uid != old["metadata"]["uid"]
    {
        return Err(conflict(
            def.group,
            def.plural,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                old["metadata"]["uid"].as_str().unwrap_or_default()
            ),
        ));
    }
    if let Some(rv) = &options.preconditions.resource_version
        && *rv != old["metadata"]["resourceVersion"]
    {
        return Err(conflict(
            def.group,
            def.plural,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                old["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
            ),
        ));
    }
    let grace = graceful_period(def, &old, options);
    if grace > 0 || !finalizers(&old).is_empty() || def.kind == "Namespace" {
        let mut marked = old.clone();
        // Saturates: any non-negative grace period is valid, up to i64::MAX.
        let deadline = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(grace))
            .unwrap_or(jiff::Timestamp::MAX);
        let deadline = deadline.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let meta = &mut marked["metadata"];
        let previous_grace = meta["deletionGracePeriodSeconds"].as_i64();
        if previous_grace.is_none_or(|p| grace < p) {
            meta["deletionTimestamp"] = json!(deadline);
            if def.kind == "Pod" {
                meta["deletionGracePeriodSeconds"] = json!(grace);
            }
        }
        if def.kind == "Namespace" {
            marked["status"]["phase"] = json!("Terminating");
        }
        if grace > 0 || !finalizers(&marked).is_empty() || def.kind == "Namespace" {
            return Ok(if marked == old {
                old
            } else {
                state.put(def.storage, marked)
            });
        }
    }
    Ok(state
        .remove(def.storage, ns, name)
        .expect("looked up above under the same lock"))
}

fn graceful_period(def: &ResourceDef, pod: &Value, options: &DeleteOptions) -> i64 {
    if def.kind != "Pod" {
        return 0;
    }
    let unbound = pod["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .is_empty();
    let terminal = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if unbound || terminal {
        return 0;
    }
    let requested = options
        .grace_period_seconds
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30);
    requested.max(0)
}

/// Objects that still live in a namespace (the namespace controller waits for none).
pub fn namespace_contents(state: &State, ns: &str) -> Vec<(&'static ResourceDef, String)> {
    let mut out = Vec::new();
    for def in resources::RESOURCES
        .iter()
        .filter(|d| d.namespaced && !d.is_virtual())
    {
        if out
            .iter()
            .any(|(d, _): &(&ResourceDef, String)| d.storage == def.storage)
        {
            continue;
        }
        for object in state.list(def.storage, Some(ns)) {
            out.push((
                def,
                object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
    }
    out
}

/// NodeRestriction's rules for a pod a node creates: a mirror pod bound to the node, owned by
/// its Node (as the controller, not blocking deletion), referencing no other API objects.
fn node_may_create_pod(state: &State, node: &str, pod: &Value) -> Result<(), String> {
    if !super::admission::is_mirror(pod) {
        return Err(format!(
            "pod does not have \"{}\" annotation, node \"{node}\" can only create mirror pods",
            super::admission::MIRROR_ANNOTATION
        ));
    }
    if pod["spec"]["nodeName"] != node {
        return Err(format!(
            "node \"{node}\" can only create pods with spec.nodeName set to itself"
        ));
    }
    let owners = pod["metadata"]["ownerReferences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let [owner] = owners.as_slice() else {
        return Err(format!(
            "node \"{node}\" can only create pods with a single owner reference set to itself"
        ));
    };
    if owner["apiVersion"] != "v1" || owner["kind"] != "Node" || owner["name"] != node {
        return Err(format!(
            "node \"{node}\" can only create pods with an owner reference set to itself"
        ));
    }
    if owner["controller"] != true {
        return Err(format!(
            "node \"{node}\" can only create pods with a controller owner reference set to itself"
        ));
    }
    if owner["blockOwnerDeletion"] == true {
        return Err(format!(
            "node \"{node}\" must not set blockOwnerDeletion on an owner reference"
        ));
    }
    let node_uid = state
        .get("nodes", "", node)
        .map(|n| n["metadata"]["uid"].clone());
    if node_uid.as_ref() != Some(&owner["uid"]) {
        return Err(format!("node {node} UID mismatch"));
    }
    let spec = &pod["spec"];
    if spec["serviceAccountName"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(format!(
            "node \"{node}\" can not create pods that reference a service account"
        ));
    }
    for (kind, plural) in [("secret", "secrets"), ("configmap", "configmaps")] {
        if super::auth::pod_references(spec, kind) {
            return Err(format!(
                "node \"{node}\" can not create pods that reference {plural}"
            ));
        }
    }
    let claims = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| !v["persistentVolumeClaim"].is_null());
    if claims {
        return Err(format!(
            "node \"{node}\" can not create pods that reference persistentvolumeclaims"
        ));
    }
    Ok(())
}
