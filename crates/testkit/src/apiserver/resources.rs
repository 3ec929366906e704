//! The resource types the stand-in serves, and the discovery documents that describe them.

use serde_json::{Value, json};

/// One served resource type.
#[derive(Debug)]
pub struct ResourceDef {
    /// API group ("" for core).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Plural name as it appears in URLs.
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Kind of one object.
    pub kind: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Subresources served below an object.
    pub subresources: &'static [&'static str],
    /// Short names for kubectl.
    pub short_names: &'static [&'static str],
    /// Verbs served on the resource.
    pub verbs: &'static [&'static str],
    /// Objects are stored under this key; two resources may share it (core and events.k8s.io events).
    pub storage: &'static str,
}

const CRUD: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const CREATE_ONLY: &[&str] = &["create"];

macro_rules! resource {
    ($group:expr, $version:expr, $plural:expr, $singular:expr, $kind:expr, $namespaced:expr, $subs:expr, $short:expr, $verbs:expr, $storage:expr) => {
        ResourceDef {
            group: $group,
            version: $version,
            plural: $plural,
            singular: $singular,
            kind: $kind,
            namespaced: $namespaced,
            subresources: $subs,
            short_names: $short,
            verbs: $verbs,
            storage: $storage,
        }
    };
}

/// Every resource the stand-in serves.
pub static RESOURCES: &[ResourceDef] = &[
    resource!(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["status", "finalize"],
        &["ns"],
        CRUD,
        "namespaces"
    ),
    resource!(
        "",
        "v1",
        "nodes",
        "node",
        "Node",
        false,
        &["status", "proxy"],
        &["no"],
        CRUD,
        "nodes"
    ),
    resource!(
        "",
        "v1",
        "pods",
        "pod",
        "Pod",
        true,
        &["status", "binding", "log"],
        &["po"],
        CRUD,
        "pods"
    ),
    resource!(
        "",
        "v1",
        "bindings",
        "binding",
        "Binding",
        true,
        &[],
        &[],
        CREATE_ONLY,
        "bindings"
    ),
    resource!(
        "",
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &[],
        &["cm"],
        CRUD,
        "configmaps"
    ),
    resource!(
        "",
        "v1",
        "secrets",
        "secret",
        "Secret",
        true,
        &[],
        &[],
        CRUD,
        "secrets"
    ),
    resource!(
        "",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &[],
        &["ev"],
        CRUD,
        "events"
    ),
    resource!(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["token"],
        &["sa"],
        CRUD,
        "serviceaccounts"
    ),
    resource!(
        "",
        "v1",
        "services",
        "service",
        "Service",
        true,
        &["status"],
        &["svc"],
        CRUD,
        "services"
    ),
    resource!(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
        &[],
        &[],
        CRUD,
        "endpointslices"
    ),
    resource!(
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        true,
        &[],
        &[],
        CRUD,
        "leases"
    ),
    resource!(
        "events.k8s.io",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &[],
        &["ev"],
        CRUD,
        "events"
    ),
    resource!(
        "node.k8s.io",
        "v1",
        "runtimeclasses",
        "runtimeclass",
        "RuntimeClass",
        false,
        &[],
        &[],
        CRUD,
        "runtimeclasses"
    ),
    resource!(
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests",
        "certificatesigningrequest",
        "CertificateSigningRequest",
        false,
        &["status", "approval"],
        &["csr"],
        CRUD,
        "certificatesigningrequests"
    ),
    resource!(
        "authentication.k8s.io",
        "v1",
        "tokenreviews",
        "tokenreview",
        "TokenReview",
        false,
        &[],
        &[],
        CREATE_ONLY,
        "tokenreviews"
    ),
    resource!(
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "subjectaccessreview",
        "SubjectAccessReview",
        false,
        &[],
        &[],
        CREATE_ONLY,
        "subjectaccessreviews"
    ),
    resource!(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        "SelfSubjectAccessReview",
        false,
        &[],
        &[],
        CREATE_ONLY,
        "selfsubjectaccessreviews"
    ),
];

impl ResourceDef {
    /// The apiVersion string of this resource's objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether objects of this kind are only ever created, never stored (reviews, bindings).
    pub fn is_virtual(&self) -> bool {
        self.verbs == CREATE_ONLY
    }
}

/// Looks up a resource by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// `GET /api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

/// `GET /apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|(group, version)| {
            let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
            json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`.
pub fn api_group(group: &str) -> Option<Value> {
    let (_, version) = groups().into_iter().find(|(g, _)| *g == group)?;
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv.clone()], "preferredVersion": gv}),
    )
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in defs {
        resources.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": r.verbs, "shortNames": r.short_names,
        }));
        for sub in r.subresources {
            let (kind, verbs): (&str, &[&str]) = match *sub {
                "status" => (r.kind, &["get", "patch", "update"]),
                "approval" => (r.kind, &["get", "patch", "update"]),
                "finalize" => (r.kind, &["update"]),
                "binding" => ("Binding", &["create"]),
                "token" => ("TokenRequest", &["create"]),
                "log" => ("Pod", &["get"]),
                _ => ("NodeProxyOptions", &["get"]),
            };
            resources.push(json!({
                "name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": kind, "verbs": verbs,
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `GET /openapi/v3`: the index of group-version documents.
pub fn openapi_v3_root() -> Value {
    let mut gvs = vec![("", "v1")];
    gvs.extend(groups());
    let paths: serde_json::Map<String, Value> = gvs
        .into_iter()
        .map(|(g, v)| {
            let path = gv_path(g, v);
            let url = format!("/openapi/v3/{path}?hash=standin");
            (path, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// `GET /openapi/v3/{api/v1 | apis/g/v}`: the operations of one group version, with the
/// group-version-kind extension and the query parameters clients probe for (`fieldValidation`).
/// The stand-in publishes no schemas, so clients validate on the server (`fieldValidation=Strict`).
pub fn openapi_v3_group_version(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    for def in defs {
        let prefix = format!("/{}", gv_path(group, version));
        let base = if def.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", def.plural)
        } else {
            format!("{prefix}/{}", def.plural)
        };
        let gvk = json!({"group": group, "version": version, "kind": def.kind});
        let params = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
        ]);
        let op = |action: &str| json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": {}});
        if def.verbs.contains(&"patch") {
            paths.insert(format!("{base}/{{name}}"), json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}));
        }
        if def.verbs.contains(&"create") {
            paths.insert(base, json!({"post": op("post")}));
        }
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths, "components": {"schemas": {}}}),
    )
}
