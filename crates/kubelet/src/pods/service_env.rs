//! The environment variables the kubelet gives every container for the Services it may use:
//! the `kubernetes` Service of the `default` namespace always, and with `enableServiceLinks`
//! (true unless the pod says otherwise) every Service of the pod's namespace that has a
//! ClusterIP, each as `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<PORT>]` and the Docker
//! link variables (`<NAME>_PORT`, `<NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]`).

use k8s_openapi::api::core::v1::Service;
use std::collections::BTreeMap;

/// The Services of the `default` namespace every pod gets variables for.
pub const MASTER_SERVICES: [&str; 1] = ["kubernetes"];

/// The variables for a pod of `namespace` from `services` (its namespace's and `default`'s),
/// ordered by name.
pub fn variables(
    services: &[Service],
    namespace: &str,
    enable_service_links: bool,
) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
    for service in services.iter().filter(|s| has_cluster_ip(s)) {
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let service_ns = service.metadata.namespace.as_deref().unwrap_or_default();
        if service_ns == "default" && MASTER_SERVICES.contains(&name) {
            chosen.entry(name).or_insert(service);
        } else if service_ns == namespace && enable_service_links {
            chosen.insert(name, service);
        }
    }
    let mut vars: Vec<(String, String)> = chosen.values().flat_map(|s| of_service(s)).collect();
    vars.sort();
    vars
}

fn has_cluster_ip(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// `my-svc` → `MY_SVC`.
fn variable_name(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

fn of_service(service: &Service) -> Vec<(String, String)> {
    let spec = service.spec.clone().unwrap_or_default();
    let ip = spec.cluster_ip.unwrap_or_default();
    let ports = spec.ports.unwrap_or_default();
    let Some(first) = ports.first() else {
        return Vec::new();
    };
    let prefix = variable_name(service.metadata.name.as_deref().unwrap_or_default());
    let mut vars = vec![
        (format!("{prefix}_SERVICE_HOST"), ip.clone()),
        (format!("{prefix}_SERVICE_PORT"), first.port.to_string()),
    ];
    for port in &ports {
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            vars.push((
                format!("{prefix}_SERVICE_PORT_{}", variable_name(name)),
                port.port.to_string(),
            ));
        }
    }
    let host = |port: i32| match ip.contains(':') {
        true => format!("[{ip}]:{port}"),
        false => format!("{ip}:{port}"),
    };
    for (index, port) in ports.iter().enumerate() {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let scheme = protocol.to_lowercase();
        let url = format!("{scheme}://{}", host(port.port));
        if index == 0 {
            vars.push((format!("{prefix}_PORT"), url.clone()));
        }
        let port_prefix = format!("{prefix}_PORT_{}_{}", port.port, protocol.to_uppercase());
        vars.push((format!("{port_prefix}_PROTO"), scheme));
        vars.push((format!("{port_prefix}_PORT"), port.port.to_string()));
        vars.push((format!("{port_prefix}_ADDR"), ip.clone()));
        vars.push((port_prefix, url));
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports}
        }))
        .unwrap()
    }

    #[test]
    fn services_become_the_kubelets_variables() {
        let services = [
            service(
                "default",
                "kubernetes",
                "10.96.0.1",
                serde_json::json!([{"name": "https", "port": 443, "protocol": "TCP"}]),
            ),
            service(
                "apps",
                "redis-primary",
                "10.96.0.20",
                serde_json::json!([{"port": 6379}, {"name": "metrics", "port": 9121, "protocol": "TCP"}]),
            ),
            service(
                "apps",
                "headless",
                "None",
                serde_json::json!([{"port": 80}]),
            ),
            service(
                "other",
                "elsewhere",
                "10.96.0.30",
                serde_json::json!([{"port": 80}]),
            ),
        ];
        let vars: BTreeMap<String, String> =
            variables(&services, "apps", true).into_iter().collect();
        let expected = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
            ("REDIS_PRIMARY_SERVICE_HOST", "10.96.0.20"),
            ("REDIS_PRIMARY_SERVICE_PORT", "6379"),
            ("REDIS_PRIMARY_SERVICE_PORT_METRICS", "9121"),
            ("REDIS_PRIMARY_PORT", "tcp://10.96.0.20:6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP", "tcp://10.96.0.20:6379"),
            ("REDIS_PRIMARY_PORT_9121_TCP_ADDR", "10.96.0.20"),
        ];
        for (name, value) in expected {
            assert_eq!(vars.get(name).map(String::as_str), Some(value), "{name}");
        }
        assert!(
            !vars
                .keys()
                .any(|k| k.starts_with("HEADLESS") || k.starts_with("ELSEWHERE"))
        );
        // Without service links only the master service's variables remain.
        let vars = variables(&services, "apps", false);
        assert!(
            vars.iter().all(|(k, _)| k.starts_with("KUBERNETES_")),
            "{vars:?}"
        );
        assert_eq!(vars.len(), 8);
    }
}
