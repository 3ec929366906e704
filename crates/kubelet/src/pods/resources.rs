//! A container's resource limits (`resources.limits`) as the runtime enforces them.

use crate::runtime::Limits;
use k8s_openapi::api::core::v1::Container;
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
    fn no_limits_means_none() {
        assert_eq!(limits(&Container::default()), Limits::default());
    }
}
