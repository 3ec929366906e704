//! Resources: a container's limits (`resources.limits`) as the runtime enforces them, and a
//! pod's requests as admission counts them against the node's allocatable.

use crate::runtime::Limits;
use k8s_openapi::api::core::v1::{Container, Pod, ResourceFieldSelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube_quantity::ParsedQuantity;

/// The container's memory and CPU limits.
pub fn limits(container: &Container) -> Limits {
    let limit = |name: &str| {
        container
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(name))
    };
    Limits {
        memory_bytes: limit("memory").and_then(bytes),
        cpu_cores: limit("cpu").and_then(cores),
    }
}

/// What a pod asks of the node: CPU in millicores and memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// Millicores.
    pub cpu_millis: u64,
    /// Bytes.
    pub memory_bytes: u64,
}

impl std::ops::Add for Requests {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis + other.cpu_millis,
            memory_bytes: self.memory_bytes + other.memory_bytes,
        }
    }
}

fn container_requests(container: &Container) -> Requests {
    let get = |name: &str| {
        let resources = container.resources.as_ref()?;
        // A limit without a request is also the request (the API server defaults it so).
        resources
            .requests
            .as_ref()
            .and_then(|r| r.get(name))
            .or_else(|| resources.limits.as_ref()?.get(name))
    };
    Requests {
        cpu_millis: get("cpu")
            .and_then(cores)
            .map_or(0, |c| (c * 1000.0).ceil() as u64),
        memory_bytes: get("memory").and_then(bytes).unwrap_or(0),
    }
}

/// The pod's effective requests, as the scheduler and the kubelet count them: the larger of
/// the app containers' sum and the largest init container, per resource.
pub fn pod_requests(pod: &Pod) -> Requests {
    let Some(spec) = &pod.spec else {
        return Requests::default();
    };
    let app = spec
        .containers
        .iter()
        .map(container_requests)
        .fold(Requests::default(), |a, b| a + b);
    spec.init_containers
        .iter()
        .flatten()
        .map(container_requests)
        .fold(app, |a, b| Requests {
            cpu_millis: a.cpu_millis.max(b.cpu_millis),
            memory_bytes: a.memory_bytes.max(b.memory_bytes),
        })
}

/// The value of a downward API `resourceFieldRef` for `container`, as the kubelet computes it:
/// the request or limit divided by `divisor` (default 1, and a zero divisor, which the API
/// server defaults an unset one to, counts as 1) and rounded up; a limit that is not set is the
/// node's allocatable.
pub fn field_value(
    container: &Container,
    selector: &ResourceFieldSelector,
    allocatable: Requests,
) -> Result<String, String> {
    let (kind, resource) = selector
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {:?}", selector.resource))?;
    let resources = container.resources.as_ref();
    let declared = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => None,
    }
    .and_then(|m| m.get(resource));
    let divisor = selector.divisor.as_ref();
    match resource {
        "cpu" => {
            let millis = match declared {
                Some(q) => cores(q).map(|c| (c * 1000.0).ceil() as u64),
                None if kind == "limits" => Some(allocatable.cpu_millis),
                None => Some(0),
            }
            .ok_or_else(|| format!("unreadable quantity for {}", selector.resource))?;
            // The API server defaults an unset divisor to "0", which the kubelet reads as 1.
            let divisor_millis = divisor
                .and_then(cores)
                .map(|c| (c * 1000.0).round() as u64)
                .filter(|millis| *millis > 0)
                .unwrap_or(1000);
            Ok(millis.div_ceil(divisor_millis).to_string())
        }
        "memory" | "ephemeral-storage" => {
            let value = match declared {
                Some(q) => bytes(q),
                None if kind == "limits" && resource == "memory" => Some(allocatable.memory_bytes),
                None => Some(0),
            }
            .ok_or_else(|| format!("unreadable quantity for {}", selector.resource))?;
            let divisor = divisor.and_then(bytes).unwrap_or(1).max(1);
            Ok(value.div_ceil(divisor).to_string())
        }
        _ => Err(format!("unsupported resource {:?}", selector.resource)),
    }
}

/// A memory quantity in bytes (`128Mi`, `1G`, `1e9`); the API server has validated it.
pub fn bytes(quantity: &Quantity) -> Option<u64> {
    ParsedQuantity::try_from(quantity).ok()?.to_bytes_u64()
}

/// A CPU quantity in cores (`500m` is 0.5).
pub fn cores(quantity: &Quantity) -> Option<f64> {
    ParsedQuantity::try_from(quantity).ok()?.to_bytes_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;

    fn container(memory: &str, cpu: &str) -> Container {
        Container {
            resources: Some(ResourceRequirements {
                limits: Some(
                    [
                        ("memory".to_string(), Quantity(memory.into())),
                        ("cpu".to_string(), Quantity(cpu.into())),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn limits_are_parsed_in_kubernetes_units() {
        let l = limits(&container("64Mi", "250m"));
        assert_eq!(l.memory_bytes, Some(64 * 1024 * 1024));
        assert_eq!(l.cpu_cores, Some(0.25));
        let l = limits(&container("1G", "2"));
        assert_eq!(l.memory_bytes, Some(1_000_000_000));
        assert_eq!(l.cpu_cores, Some(2.0));
    }

    #[test]
    fn pod_requests_take_the_larger_of_apps_and_inits() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                ],
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
            }
        }))
        .unwrap();
        assert_eq!(
            pod_requests(&pod),
            Requests {
                cpu_millis: 2000,
                memory_bytes: (64 << 20) + (1 << 30)
            }
        );
    }

    #[test]
    fn resource_fields_divide_and_round_up_with_allocatable_for_missing_limits() {
        let c = container("64Mi", "250m");
        let node = Requests {
            cpu_millis: 2000,
            memory_bytes: 8 << 30,
        };
        let field = |resource: &str, divisor: Option<&str>| {
            field_value(
                &c,
                &ResourceFieldSelector {
                    resource: resource.into(),
                    divisor: divisor.map(|d| Quantity(d.into())),
                    container_name: None,
                },
                node,
            )
        };
        assert_eq!(field("limits.cpu", None).unwrap(), "1");
        assert_eq!(field("limits.cpu", Some("1m")).unwrap(), "250");
        // What the API server stores for an unset divisor.
        assert_eq!(field("limits.cpu", Some("0")).unwrap(), "1");
        assert_eq!(
            field("limits.memory", Some("0")).unwrap(),
            (64u64 << 20).to_string()
        );
        assert_eq!(field("limits.memory", Some("1Mi")).unwrap(), "64");
        assert_eq!(field("requests.memory", None).unwrap(), "0");
        let bare = field_value(
            &Container::default(),
            &ResourceFieldSelector {
                resource: "limits.memory".into(),
                ..Default::default()
            },
            node,
        );
        assert_eq!(bare.unwrap(), (8u64 << 30).to_string());
        assert!(field("limits.gpu", None).is_err());
    }

    #[test]
    fn no_limits_means_none() {
        assert_eq!(limits(&Container::default()), Limits::default());
    }
}
