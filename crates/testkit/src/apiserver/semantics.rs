//! What the real server does to objects besides storing them: schema pruning and strict field
//! validation (through the k8s-openapi types), defaulting, validation, and the update strategies
//! of the main resource and its status subresource.

use super::resources::ResourceDef;
use serde_json::{Value, json};

/// A validation failure, answered with 422 Invalid.
#[derive(Debug)]
pub struct Invalid(pub Vec<(String, String)>);

/// Decodes `object` as the typed Kubernetes object it claims to be and encodes it again: fields
/// the type does not know are dropped (and returned, as `spec.foo` paths); wrong types fail.
pub fn prune(def: &ResourceDef, object: &Value) -> Result<(Value, Vec<String>), String> {
    use k8s_openapi::api::{authentication::v1 as authn, authorization::v1 as authz};
    use k8s_openapi::api::{
        certificates::v1 as certs, coordination::v1 as coord, core::v1 as core,
    };
    fn round<T: serde::de::DeserializeOwned + serde::Serialize>(
        v: &Value,
    ) -> Result<Value, String> {
        let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        serde_json::to_value(typed).map_err(|e| e.to_string())
    }
    let pruned = match (def.group, def.kind) {
        ("", "Namespace") => round::<core::Namespace>(object),
        ("", "Node") => round::<core::Node>(object),
        ("", "Pod") => round::<core::Pod>(object),
        ("", "Binding") => round::<core::Binding>(object),
        ("", "ConfigMap") => round::<core::ConfigMap>(object),
        ("", "Secret") => round::<core::Secret>(object),
        ("", "Event") => round::<core::Event>(object),
        ("", "ServiceAccount") => round::<core::ServiceAccount>(object),
        ("", "Service") => round::<core::Service>(object),
        ("discovery.k8s.io", _) => round::<k8s_openapi::api::discovery::v1::EndpointSlice>(object),
        ("coordination.k8s.io", _) => round::<coord::Lease>(object),
        ("events.k8s.io", _) => round::<k8s_openapi::api::events::v1::Event>(object),
        ("certificates.k8s.io", _) => round::<certs::CertificateSigningRequest>(object),
        ("authentication.k8s.io", _) => round::<authn::TokenReview>(object),
        ("authorization.k8s.io", "SubjectAccessReview") => {
            round::<authz::SubjectAccessReview>(object)
        }
        ("authorization.k8s.io", _) => round::<authz::SelfSubjectAccessReview>(object),
        _ => Ok(object.clone()),
    }?;
    let mut unknown = Vec::new();
    find_unknown(object, &pruned, "", &mut unknown);
    Ok((pruned, unknown))
}

fn find_unknown(original: &Value, pruned: &Value, path: &str, out: &mut Vec<String>) {
    match (original, pruned) {
        (Value::Object(o), Value::Object(p)) => {
            for (key, value) in o {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match p.get(key) {
                    Some(pv) => find_unknown(value, pv, &child, out),
                    None if !value.is_null() && !is_empty(value) => out.push(child),
                    None => {}
                }
            }
        }
        (Value::Array(o), Value::Array(p)) => {
            for (i, (ov, pv)) in o.iter().zip(p).enumerate() {
                find_unknown(ov, pv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    matches!(value, Value::Object(m) if m.is_empty())
        || matches!(value, Value::Array(a) if a.is_empty())
}

/// Fills the defaults the real server (and its default admission plugins) set on create.
pub fn default_on_create(def: &ResourceDef, object: &mut Value) {
    match (def.group, def.kind) {
        ("", "Pod") => default_pod(object),
        ("", "Namespace") => {
            let name = object["metadata"]["name"].clone();
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            object["spec"]["finalizers"] = json!(["kubernetes"]);
            object["status"] = json!({"phase": "Active"});
        }
        ("", "Secret") => {
            if object["type"].is_null() {
                object["type"] = json!("Opaque");
            }
            fold_string_data(object);
        }
        ("certificates.k8s.io", _) => object["status"] = json!({}),
        ("", "Service") => default_service(object),
        _ => {}
    }
}

/// The next ClusterIP from the default service range 10.96.0.0/12 (10.96.0.1 is `kubernetes`).
fn allocate_cluster_ip() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(10);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) + n).to_string()
}

fn default_service(service: &mut Value) {
    let spec = &mut service["spec"];
    if spec["type"].is_null() {
        spec["type"] = json!("ClusterIP");
    }
    if spec["sessionAffinity"].is_null() {
        spec["sessionAffinity"] = json!("None");
    }
    if spec["clusterIP"].is_null() {
        let ip = allocate_cluster_ip();
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
    }
    spec["ipFamilies"] = json!(["IPv4"]);
    spec["ipFamilyPolicy"] = json!("SingleStack");
    spec["internalTrafficPolicy"] = json!("Cluster");
    for port in spec["ports"].as_array_mut().into_iter().flatten() {
        if port["protocol"].is_null() {
            port["protocol"] = json!("TCP");
        }
        if port["targetPort"].is_null() {
            port["targetPort"] = port["port"].clone();
        }
    }
    service["status"] = json!({"loadBalancer": {}});
}

fn default_pod(pod: &mut Value) {
    let spec = &mut pod["spec"];
    let defaults = [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
        ("enableServiceLinks", json!(true)),
        ("priority", json!(0)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
    ];
    for (key, value) in defaults {
        if spec[key].is_null() {
            spec[key] = value;
        }
    }
    // The DefaultTolerationSeconds admission plugin.
    let tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let mut tolerations = tolerations;
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        if !tolerations
            .iter()
            .any(|t| t["key"] == key && t["effect"] == "NoExecute")
        {
            tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
    spec["tolerations"] = Value::Array(tolerations);
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec[list].as_array_mut() {
            for c in containers {
                default_container(c);
            }
        }
    }
    for volume in spec["volumes"].as_array_mut().into_iter().flatten() {
        default_volume(volume);
    }
    let qos = qos_class(&pod["spec"]);
    pod["status"] = json!({"phase": "Pending", "qosClass": qos});
}

fn default_container(c: &mut Value) {
    // A limit without a request is also the request.
    if let Some(limits) = c["resources"]["limits"].as_object().cloned() {
        for (resource, quantity) in limits {
            if c["resources"]["requests"][&resource].is_null() {
                c["resources"]["requests"][&resource] = quantity;
            }
        }
    }
    if c["imagePullPolicy"].is_null() {
        let image = c["image"].as_str().unwrap_or_default();
        let last = image.rsplit('/').next().unwrap_or_default();
        let tag = if image.contains('@') {
            None
        } else {
            last.split_once(':').map(|(_, t)| t)
        };
        let policy = match tag {
            None | Some("latest") if !image.contains('@') => "Always",
            _ => "IfNotPresent",
        };
        c["imagePullPolicy"] = json!(policy);
    }
    if c["terminationMessagePath"].is_null() {
        c["terminationMessagePath"] = json!("/dev/termination-log");
    }
    if c["terminationMessagePolicy"].is_null() {
        c["terminationMessagePolicy"] = json!("File");
    }
    if c["resources"].is_null() {
        c["resources"] = json!({});
    }
    if let Some(ports) = c["ports"].as_array_mut() {
        for p in ports.iter_mut().filter(|p| p["protocol"].is_null()) {
            p["protocol"] = json!("TCP");
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = c.get_mut(probe).filter(|p| p.is_object()) {
            default_probe(probe);
        }
    }
    for hook in ["postStart", "preStop"] {
        let action = c
            .get_mut("lifecycle")
            .and_then(|l| l.get_mut(hook))
            .and_then(|h| h.get_mut("httpGet"));
        if let Some(action) = action {
            default_http_get(action);
        }
    }
    for env in items(c, &["env"]) {
        if let Some(source) = env.get_mut("valueFrom") {
            default_references(source);
        }
    }
}

/// The elements of the array at `path` under `value`, if there is one (nothing is inserted on
/// the way, as indexing a `Value` mutably would).
fn items<'a>(value: &'a mut Value, path: &[&str]) -> impl Iterator<Item = &'a mut Value> {
    path.iter()
        .try_fold(value, |v, key| v.get_mut(*key))
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// `SetDefaults_Probe`: the kubelet's timings when a probe leaves them out (or at 0).
fn default_probe(probe: &mut Value) {
    for (key, value) in [
        ("timeoutSeconds", 1),
        ("periodSeconds", 10),
        ("successThreshold", 1),
        ("failureThreshold", 3),
    ] {
        if probe[key].is_null() || probe[key] == 0 {
            probe[key] = json!(value);
        }
    }
    if let Some(action) = probe.get_mut("httpGet") {
        default_http_get(action);
    }
}

/// `SetDefaults_HTTPGetAction`: path `/`, scheme `HTTP`.
fn default_http_get(action: &mut Value) {
    if action["path"].as_str().unwrap_or_default().is_empty() {
        action["path"] = json!("/");
    }
    if action["scheme"].as_str().unwrap_or_default().is_empty() {
        action["scheme"] = json!("HTTP");
    }
}

/// A fieldRef's `apiVersion` defaults to `v1`; a resourceFieldRef's `divisor`, a quantity
/// the server always writes, comes back as `"0"` when left out.
fn default_references(source: &mut Value) {
    if let Some(field) = source
        .get_mut("fieldRef")
        .filter(|f| f["apiVersion"].is_null())
    {
        field["apiVersion"] = json!("v1");
    }
    if let Some(resource) = source
        .get_mut("resourceFieldRef")
        .filter(|r| r["divisor"].is_null())
    {
        resource["divisor"] = json!("0");
    }
}

/// `SetDefaults_Volume` and the volume sources' defaults.
fn default_volume(volume: &mut Value) {
    let has_source = volume
        .as_object()
        .is_some_and(|v| v.keys().any(|k| k != "name"));
    if !has_source {
        volume["emptyDir"] = json!({});
    }
    for source in ["configMap", "secret", "downwardAPI", "projected"] {
        if let Some(source) = volume
            .get_mut(source)
            .filter(|s| s.is_object() && s["defaultMode"].is_null())
        {
            source["defaultMode"] = json!(0o644);
        }
    }
    if let Some(host_path) = volume
        .get_mut("hostPath")
        .filter(|h| h.is_object() && h["type"].is_null())
    {
        host_path["type"] = json!("");
    }
    for item in items(volume, &["downwardAPI", "items"]) {
        default_references(item);
    }
    for projection in items(volume, &["projected", "sources"]) {
        if let Some(token) = projection
            .get_mut("serviceAccountToken")
            .filter(|t| t["expirationSeconds"].is_null())
        {
            token["expirationSeconds"] = json!(3600);
        }
        for item in items(projection, &["downwardAPI", "items"]) {
            default_references(item);
        }
    }
}

fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec[*l].as_array().into_iter().flatten())
        .collect();
    let any_set = containers.iter().any(|c| {
        let r = &c["resources"];
        r["requests"].as_object().is_some_and(|m| !m.is_empty())
            || r["limits"].as_object().is_some_and(|m| !m.is_empty())
    });
    if !any_set {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let r = &c["resources"];
        ["cpu", "memory"].iter().all(|k| {
            !r["limits"][*k].is_null()
                && (r["requests"][*k].is_null() || r["requests"][*k] == r["limits"][*k])
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Validates an object as the real server does for the fields the node agent and tests rely on.
pub fn validate(def: &ResourceDef, object: &Value) -> Result<(), Invalid> {
    let mut errors = Vec::new();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if !def.is_virtual() {
        if name.is_empty() {
            errors.push((
                "metadata.name".into(),
                "Required value: name or generateName is required".into(),
            ));
        } else if def.kind == "Namespace" && !is_dns_label(name) {
            errors.push(("metadata.name".into(), format!("Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")));
        } else if !is_dns_subdomain(name) {
            errors.push(("metadata.name".into(), format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")));
        }
    }
    match (def.group, def.kind) {
        ("", "Pod") => validate_pod_spec(&object["spec"], &mut errors),
        ("certificates.k8s.io", _) => {
            let spec = &object["spec"];
            if spec["request"].as_str().unwrap_or_default().is_empty() {
                errors.push(("spec.request".into(), "Required value".into()));
            }
            if spec["signerName"].as_str().unwrap_or_default().is_empty() {
                errors.push(("spec.signerName".into(), "Required value".into()));
            }
            if spec["usages"].as_array().is_none_or(|u| u.is_empty()) {
                errors.push(("spec.usages".into(), "Required value".into()));
            }
        }
        _ => {}
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Invalid(errors))
    }
}

fn validate_pod_spec(spec: &Value, errors: &mut Vec<(String, String)>) {
    let containers = spec["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if containers.is_empty() {
        errors.push(("spec.containers".into(), "Required value".into()));
    }
    let mut seen = Vec::new();
    for (list, items) in [
        ("initContainers", spec["initContainers"].as_array()),
        ("containers", Some(&containers.to_vec())),
    ] {
        for (i, c) in items.into_iter().flatten().enumerate() {
            let name = c["name"].as_str().unwrap_or_default();
            if name.is_empty() {
                errors.push((format!("spec.{list}[{i}].name"), "Required value".into()));
            } else if seen.contains(&name.to_string()) {
                errors.push((
                    format!("spec.{list}[{i}].name"),
                    format!("Duplicate value: \"{name}\""),
                ));
            } else if !is_dns_label(name) {
                errors.push((format!("spec.{list}[{i}].name"), format!("Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'")));
            }
            seen.push(name.to_string());
            if c["image"].as_str().unwrap_or_default().trim().is_empty() {
                errors.push((format!("spec.{list}[{i}].image"), "Required value".into()));
            }
            validate_container(c, &format!("spec.{list}[{i}]"), errors);
        }
    }
    if let Some(deadline) = spec.get("activeDeadlineSeconds").filter(|d| !d.is_null()) {
        let value = deadline.as_i64().unwrap_or(0);
        if !(1..=i64::from(i32::MAX)).contains(&value) {
            errors.push((
                "spec.activeDeadlineSeconds".into(),
                format!("Invalid value: {value}: must be between 1 and 2147483647, inclusive"),
            ));
        }
    }
    if let Some(policy) = spec["restartPolicy"].as_str()
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        errors.push(("spec.restartPolicy".into(), format!("Unsupported value: \"{policy}\": supported values: \"Always\", \"OnFailure\", \"Never\"")));
    }
    validate_dns(spec, errors);
}

/// A pod's `dnsPolicy`, `dnsConfig` and `hostAliases`, as the real server checks them (the
/// limits the kubelet forms a pod's DNS configuration within).
fn validate_dns(spec: &Value, errors: &mut Vec<(String, String)>) {
    const POLICIES: [&str; 4] = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
    let policy = spec["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    if !POLICIES.contains(&policy) {
        errors.push(("spec.dnsPolicy".into(), format!("Unsupported value: \"{policy}\": supported values: \"ClusterFirstWithHostNet\", \"ClusterFirst\", \"Default\", \"None\"")));
    }
    let config = &spec["dnsConfig"];
    let strings = |list: &Value| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect()
    };
    let nameservers = strings(&config["nameservers"]);
    if policy == "None" {
        if config.is_null() {
            errors.push((
                "spec.dnsConfig".into(),
                "Required value: must provide `dnsConfig` when `dnsPolicy` is None".into(),
            ));
        } else if nameservers.is_empty() {
            errors.push((
                "spec.dnsConfig.nameservers".into(),
                "Required value: must provide at least one DNS nameserver when `dnsPolicy` is None"
                    .into(),
            ));
        }
    }
    if nameservers.len() > 3 {
        errors.push((
            "spec.dnsConfig.nameservers".into(),
            format!("Invalid value: {nameservers:?}: must not have more than 3 nameservers"),
        ));
    }
    for (i, ip) in nameservers.iter().enumerate() {
        if ip.parse::<std::net::IpAddr>().is_err() {
            errors.push((
                format!("spec.dnsConfig.nameservers[{i}]"),
                format!("Invalid value: \"{ip}\": must be a valid IP address"),
            ));
        }
    }
    let searches = strings(&config["searches"]);
    if searches.len() > 32 {
        errors.push((
            "spec.dnsConfig.searches".into(),
            format!("Invalid value: {searches:?}: must not have more than 32 search paths"),
        ));
    }
    if searches.join(" ").len() > 2048 {
        errors.push(("spec.dnsConfig.searches".into(), format!("Invalid value: {searches:?}: must not have more than 2048 characters (including spaces) in the search list")));
    }
    for (i, search) in searches.iter().enumerate() {
        if !is_dns_subdomain(search.strip_suffix('.').unwrap_or(search)) {
            errors.push((format!("spec.dnsConfig.searches[{i}]"), format!("Invalid value: \"{search}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'")));
        }
    }
    for (i, option) in config["options"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if option["name"].as_str().unwrap_or_default().is_empty() {
            errors.push((
                format!("spec.dnsConfig.options[{i}].name"),
                "Required value: Option.Name must not be empty".into(),
            ));
        }
    }
    for (i, alias) in spec["hostAliases"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let ip = alias["ip"].as_str().unwrap_or_default();
        if ip.parse::<std::net::IpAddr>().is_err() {
            errors.push((
                format!("spec.hostAliases[{i}].ip"),
                format!("Invalid value: \"{ip}\": must be a valid IP address"),
            ));
        }
        for (j, hostname) in strings(&alias["hostnames"]).iter().enumerate() {
            if !is_dns_subdomain(hostname) {
                errors.push((format!("spec.hostAliases[{i}].hostnames[{j}]"), format!("Invalid value: \"{hostname}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'")));
            }
        }
    }
}

/// A container's volume mounts and probes, as the real server checks them.
fn validate_container(c: &Value, path: &str, errors: &mut Vec<(String, String)>) {
    for (i, mount) in c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let sub_path = mount["subPath"].as_str().unwrap_or_default();
        if sub_path.split('/').any(|part| part == "..") {
            errors.push((
                format!("{path}.volumeMounts[{i}].subPath"),
                format!("Invalid value: \"{sub_path}\": must not contain '..'"),
            ));
        }
        if sub_path.starts_with('/') {
            errors.push((
                format!("{path}.volumeMounts[{i}].subPath"),
                format!("Invalid value: \"{sub_path}\": must be a relative path"),
            ));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let fields = [
            "initialDelaySeconds",
            "timeoutSeconds",
            "periodSeconds",
            "successThreshold",
            "failureThreshold",
        ];
        for field in fields {
            if let Some(value) = c[probe][field].as_i64().filter(|v| *v < 0) {
                errors.push((
                    format!("{path}.{probe}.{field}"),
                    format!("Invalid value: {value}: must be greater than or equal to 0"),
                ));
            }
        }
        if probe != "readinessProbe"
            && let Some(value) = c[probe]["successThreshold"].as_i64().filter(|v| *v != 1)
        {
            errors.push((
                format!("{path}.{probe}.successThreshold"),
                format!("Invalid value: {value}: must be 1"),
            ));
        }
    }
}

/// Checks a pod spec update: only images, activeDeadlineSeconds and added tolerations may change.
pub fn validate_pod_update(old: &Value, new: &Value) -> Result<(), Invalid> {
    let strip = |spec: &Value| {
        let mut s = spec.clone();
        for list in ["containers", "initContainers"] {
            if let Some(cs) = s[list].as_array_mut() {
                for c in cs {
                    c["image"] = Value::Null;
                }
            }
        }
        s["tolerations"] = Value::Null;
        s["activeDeadlineSeconds"] = Value::Null;
        s
    };
    let old_tolerations = old["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let new_tolerations = new["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let removed_toleration = old_tolerations.iter().any(|t| !new_tolerations.contains(t));
    if strip(&old["spec"]) != strip(&new["spec"]) || removed_toleration {
        return Err(Invalid(vec![(
            "spec".into(),
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
        )]));
    }
    Ok(())
}

/// Moves a Secret's write-only `stringData` into `data` (base64), as the real server does.
pub fn fold_string_data(secret: &mut Value) {
    use base64::Engine;
    let Some(strings) = secret.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    for (key, value) in strings.as_object().into_iter().flatten() {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(value.as_str().unwrap_or_default());
        secret["data"][key] = json!(encoded);
    }
}

/// Applies the update strategy: a write to the object keeps the stored status, a write to the
/// status subresource keeps the stored spec; system metadata always stays as stored.
pub fn merge_update(def: &ResourceDef, old: &Value, new: &mut Value, status_write: bool) {
    let has_status = def.subresources.contains(&"status");
    if status_write {
        for key in ["spec", "data", "type"] {
            if old.get(key).is_some() {
                new[key] = old[key].clone();
            } else if let Some(obj) = new.as_object_mut() {
                obj.remove(key);
            }
        }
        new["metadata"]["ownerReferences"] = old["metadata"]["ownerReferences"].clone();
    } else if has_status {
        new["status"] = old["status"].clone();
    }
    for key in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "name",
        "namespace",
    ] {
        new["metadata"][key] = old["metadata"][key].clone();
    }
    if def.kind == "Secret" {
        fold_string_data(new);
    }
    if def.kind == "Pod" && !status_write && old["spec"] != new["spec"] {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = json!(generation + 1);
    }
    strip_nulls(new);
}

/// Removes `null` members of maps, as encoding a typed object would.
pub fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;

    #[test]
    fn prune_reports_unknown_fields_and_keeps_known_ones() {
        let pods = find("", "v1", "pods").unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}], "nonsense": true}});
        let (pruned, unknown) = prune(pods, &pod).unwrap();
        assert_eq!(
            unknown,
            vec![
                "spec.containers[0].bogus".to_string(),
                "spec.nonsense".to_string()
            ]
        );
        assert_eq!(pruned["spec"]["containers"][0]["image"], "i");
        assert!(prune(pods, &json!({"spec": {"containers": "not a list"}})).is_err());
    }

    #[test]
    fn pod_defaults_follow_the_real_server() {
        let pods = find("", "v1", "pods").unwrap();
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "r/x"}, {"name": "b", "image": "r/x:v1"}, {"name": "c", "image": "r/x@sha256:00"}]}});
        default_on_create(pods, &mut pod);
        let policies: Vec<&str> = pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["imagePullPolicy"].as_str().unwrap())
            .collect();
        assert_eq!(policies, ["Always", "IfNotPresent", "IfNotPresent"]);
        assert_eq!(
            pod["status"],
            json!({"phase": "Pending", "qosClass": "BestEffort"})
        );
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn dns_fields_are_validated_as_the_real_server_does() {
        let pods = find("", "v1", "pods").unwrap();
        let invalid = |spec: Value| -> Vec<String> {
            let mut spec = spec;
            spec["containers"] = json!([{"name": "c", "image": "i"}]);
            let pod = json!({"metadata": {"name": "p"}, "spec": spec});
            match validate(pods, &pod) {
                Ok(()) => Vec::new(),
                Err(Invalid(errors)) => errors.into_iter().map(|(field, _)| field).collect(),
            }
        };
        assert!(invalid(json!({"dnsPolicy": "ClusterFirst"})).is_empty());
        assert_eq!(invalid(json!({"dnsPolicy": "Cluster"})), ["spec.dnsPolicy"]);
        assert_eq!(invalid(json!({"dnsPolicy": "None"})), ["spec.dnsConfig"]);
        assert_eq!(
            invalid(json!({"dnsPolicy": "None", "dnsConfig": {"searches": ["a.example"]}})),
            ["spec.dnsConfig.nameservers"]
        );
        assert_eq!(
            invalid(
                json!({"dnsConfig": {"nameservers": ["1.1.1.1", "1.0.0.1", "8.8.8.8", "9.9.9.9"]}})
            ),
            ["spec.dnsConfig.nameservers"]
        );
        assert_eq!(
            invalid(
                json!({"dnsConfig": {"nameservers": ["dns.example"], "searches": ["Bad_Domain"], "options": [{"value": "1"}]}})
            ),
            [
                "spec.dnsConfig.nameservers[0]",
                "spec.dnsConfig.searches[0]",
                "spec.dnsConfig.options[0].name"
            ]
        );
        let many: Vec<String> = (0..33).map(|i| format!("d{i}.example")).collect();
        assert_eq!(
            invalid(json!({"dnsConfig": {"searches": many}})),
            ["spec.dnsConfig.searches"]
        );
        assert_eq!(
            invalid(json!({"hostAliases": [{"ip": "not-ip", "hostnames": ["ok.example", "NO"]}]})),
            ["spec.hostAliases[0].ip", "spec.hostAliases[0].hostnames[1]"]
        );
    }
}
