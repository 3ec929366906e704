//! Authentication (client certificates, bootstrap tokens, issued tokens) and an authorizer close
//! to the real server's Node authorizer (as 1.32 runs it, with `AuthorizeNodeWithSelectors`) +
//! NodeRestriction + the default RBAC roles.

use super::selectors::FieldSelector;
use super::store::State;
use base64::Engine;
use serde_json::Value;

/// An authenticated (or anonymous) user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name.
    pub user: String,
    /// Groups, including `system:authenticated` or `system:unauthenticated`.
    pub groups: Vec<String>,
}

impl Identity {
    /// A user in groups; `system:authenticated` is added.
    pub fn user(user: impl Into<String>, groups: &[&str]) -> Self {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        groups.push("system:authenticated".into());
        Self {
            user: user.into(),
            groups,
        }
    }

    /// The anonymous user.
    pub fn anonymous() -> Self {
        Self {
            user: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    /// Whether this is the anonymous user.
    pub fn is_anonymous(&self) -> bool {
        self.user == "system:anonymous"
    }

    fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The node name for a node identity (`system:node:<name>` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        self.user
            .strip_prefix("system:node:")
            .filter(|_| self.in_group("system:nodes"))
    }
}

/// Authenticates a bootstrap token `<id>.<secret>` against `kube-system/bootstrap-token-<id>`.
pub fn bootstrap_token(state: &State, token: &str) -> Option<Identity> {
    let (id, secret) = token.split_once('.')?;
    let stored = state.get("secrets", "kube-system", &format!("bootstrap-token-{id}"))?;
    let data = &stored["data"];
    let field = |k: &str| {
        data[k]
            .as_str()
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .and_then(|v| String::from_utf8(v).ok())
    };
    let valid = stored["type"] == "bootstrap.kubernetes.io/token"
        && field("token-id").as_deref() == Some(id)
        && field("token-secret").as_deref() == Some(secret)
        && field("usage-bootstrap-authentication").as_deref() == Some("true")
        && field("expiration")
            .and_then(|e| e.parse::<jiff::Timestamp>().ok())
            .is_none_or(|exp| exp > jiff::Timestamp::now());
    if !valid {
        return None;
    }
    let mut groups = vec!["system:bootstrappers".to_string()];
    groups.extend(
        field("auth-extra-groups")
            .into_iter()
            .flat_map(|g| g.split(',').map(String::from).collect::<Vec<_>>()),
    );
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    Some(Identity::user(format!("system:bootstrap:{id}"), &groups))
}

/// What a request asks to do, as the authorizer sees it.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// API group of the resource.
    pub group: String,
    /// Resource plural.
    pub resource: String,
    /// Subresource, if any.
    pub subresource: Option<String>,
    /// Namespace, if namespaced.
    pub namespace: String,
    /// Object name, if one object.
    pub name: String,
    /// For non-resource requests: the path.
    pub path: Option<String>,
    /// A list's or watch's field selector (empty for other verbs).
    pub field_selector: FieldSelector,
}

/// The authorizer's answer.
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied, with the reason the real authorizers would add.
    Deny(String),
}

const PUBLIC_PATHS: &[&str] = &["/version", "/healthz", "/readyz", "/livez"];

/// Decides whether `who` may do `attrs`, looking at stored objects where the Node authorizer does.
pub fn authorize(state: &State, who: &Identity, attrs: &Attributes) -> Decision {
    if who.in_group("system:masters") {
        return Decision::Allow;
    }
    if let Some(path) = &attrs.path {
        let public = PUBLIC_PATHS
            .iter()
            .any(|p| path == p || path.starts_with(&format!("{p}/")));
        let discovery = path == "/api"
            || path == "/apis"
            || path.starts_with("/api/")
            || path.starts_with("/apis/")
            || path.starts_with("/openapi");
        return if public || (discovery && !who.is_anonymous()) {
            Decision::Allow
        } else {
            Decision::Deny(String::new())
        };
    }
    let resource = match &attrs.subresource {
        Some(sub) => format!("{}/{sub}", attrs.resource),
        None => attrs.resource.clone(),
    };
    let read = matches!(attrs.verb.as_str(), "get" | "list" | "watch");
    if who.in_group("system:bootstrappers")
        && resource == "certificatesigningrequests"
        && (read || attrs.verb == "create")
    {
        return Decision::Allow;
    }
    if let Some(node) = who.node_name() {
        return authorize_node(state, node, attrs, &resource, read);
    }
    if !who.is_anonymous()
        && attrs.group == "authorization.k8s.io"
        && resource == "selfsubjectaccessreviews"
    {
        return Decision::Allow;
    }
    Decision::Deny(String::new())
}

fn authorize_node(
    state: &State,
    node: &str,
    attrs: &Attributes,
    resource: &str,
    read: bool,
) -> Decision {
    let deny = |why: String| Decision::Deny(why);
    let pod = || state.get("pods", &attrs.namespace, &attrs.name);
    let bound_here = |pod: Option<&Value>| pod.is_some_and(|p| p["spec"]["nodeName"] == node);
    let no_relationship = || {
        deny(format!(
            "no relationship found between node '{node}' and this object"
        ))
    };
    match (attrs.group.as_str(), resource) {
        // 1.32's Node authorizer with AuthorizeNodeWithSelectors (on by default): a node reads
        // its own Node object only.
        ("", "nodes") if read => match attrs.name.as_str() {
            name if name == node => Decision::Allow,
            "" => deny(format!(
                "node '{node}' cannot read all nodes, only its own Node object"
            )),
            other => deny(format!(
                "node '{node}' cannot read '{other}', only its own Node object"
            )),
        },
        ("", "nodes") | ("", "nodes/status") if read => deny(String::new()),
        ("", "nodes") | ("", "nodes/status") if attrs.name == node || attrs.verb == "create" => {
            Decision::Allow
        }
        ("", "nodes") | ("", "nodes/status") => {
            deny(format!("node '{node}' cannot modify node '{}'", attrs.name))
        }
        // A pod is read only if it is bound to the node; pods are listed and watched only with
        // the `spec.nodeName=<node>` field selector (or one pod bound to it, by name).
        ("", "pods") if attrs.verb == "get" => {
            if bound_here(pod()) {
                Decision::Allow
            } else {
                no_relationship()
            }
        }
        ("", "pods") if read => {
            if attrs.field_selector.requires("spec.nodeName", node) {
                Decision::Allow
            } else if !attrs.name.is_empty() {
                if bound_here(pod()) {
                    Decision::Allow
                } else {
                    no_relationship()
                }
            } else {
                deny("can only list/watch pods with spec.nodeName field selector".into())
            }
        }
        // For the containers' service variables (the system:node role reads every Service).
        ("", "services") if read => Decision::Allow,
        // The system:node role reads RuntimeClasses (a pod's handler).
        ("node.k8s.io", "runtimeclasses") if read => Decision::Allow,
        // Mirror pods; NodeRestriction (objects.rs) decides which.
        ("", "pods") if attrs.verb == "create" => Decision::Allow,
        ("", "pods/status") | ("", "pods")
            if matches!(attrs.verb.as_str(), "update" | "patch" | "delete") =>
        {
            if bound_here(pod()) {
                Decision::Allow
            } else {
                deny(format!(
                    "node '{node}' can only update pod status for pods with spec.nodeName set to itself"
                ))
            }
        }
        ("", "events") | ("events.k8s.io", "events")
            if matches!(attrs.verb.as_str(), "create" | "update" | "patch") =>
        {
            Decision::Allow
        }
        ("coordination.k8s.io", "leases")
            if attrs.namespace == "kube-node-lease"
                && (attrs.name == node || attrs.verb == "create") =>
        {
            Decision::Allow
        }
        ("coordination.k8s.io", "leases") => {
            deny(format!("node '{node}' can only access its own lease"))
        }
        ("certificates.k8s.io", "certificatesigningrequests") if read || attrs.verb == "create" => {
            Decision::Allow
        }
        ("authentication.k8s.io", "tokenreviews")
        | ("authorization.k8s.io", "subjectaccessreviews")
            if attrs.verb == "create" =>
        {
            Decision::Allow
        }
        ("", "secrets")
        | ("", "configmaps")
        | ("", "serviceaccounts")
        | ("", "serviceaccounts/token")
            if read || resource == "serviceaccounts/token" =>
        {
            let kind = attrs.resource.trim_end_matches('s');
            if !attrs.name.is_empty()
                && referenced_by_pod_on(state, node, &attrs.namespace, kind, &attrs.name)
            {
                Decision::Allow
            } else {
                no_relationship()
            }
        }
        _ => deny(String::new()),
    }
}

/// Whether a pod bound to `node` in `ns` refers to the named configmap, secret or service account.
fn referenced_by_pod_on(state: &State, node: &str, ns: &str, kind: &str, name: &str) -> bool {
    state
        .list("pods", Some(ns))
        .filter(|p| p["spec"]["nodeName"] == node)
        .any(|p| references(&p["spec"], kind, name))
}

fn references(spec: &Value, kind: &str, name: &str) -> bool {
    if kind == "serviceaccount" {
        return spec["serviceAccountName"] == name;
    }
    if kind == "secret"
        && spec["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == name)
    {
        return true;
    }
    let mut found = false;
    walk(spec, &mut |key, value| {
        let hit = match (kind, key) {
            ("configmap", "configMap" | "configMapRef" | "configMapKeyRef") => {
                value["name"] == name
            }
            ("secret", "secret") => value["secretName"] == name,
            ("secret", "secretRef" | "secretKeyRef") => value["name"] == name,
            _ => false,
        };
        found |= hit;
    });
    found
}

/// Whether a pod spec references any object of `kind` (`secret` or `configmap`).
pub fn pod_references(spec: &Value, kind: &str) -> bool {
    let mut found = kind == "secret"
        && spec["imagePullSecrets"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
    walk(spec, &mut |key, _| {
        found |= matches!(
            (kind, key),
            (
                "configmap",
                "configMap" | "configMapRef" | "configMapKeyRef"
            ) | ("secret", "secret" | "secretRef" | "secretKeyRef")
        );
    });
    found
}

fn walk(value: &Value, f: &mut impl FnMut(&str, &Value)) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                f(k, v);
                walk(v, f);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, f)),
        _ => {}
    }
}

/// The real server's Forbidden message.
pub fn forbidden_message(who: &Identity, attrs: &Attributes, reason: &str) -> String {
    let suffix = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    if let Some(path) = &attrs.path {
        return format!(
            "forbidden: User \"{}\" cannot {} path \"{path}\"{suffix}",
            who.user, attrs.verb
        );
    }
    let resource = match &attrs.subresource {
        Some(sub) => format!("{}/{sub}", attrs.resource),
        None => attrs.resource.clone(),
    };
    let scope = if attrs.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", attrs.namespace)
    };
    let what = if attrs.name.is_empty() {
        resource.clone()
    } else {
        format!("{resource} \"{}\"", attrs.name)
    };
    format!(
        "{what} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}{suffix}",
        who.user, attrs.verb, attrs.group
    )
}
