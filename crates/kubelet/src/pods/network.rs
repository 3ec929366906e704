//! A container's network as the runtime sees it: the ports it serves on the node's IP (the pod
//! shares the node's network) and the destinations the pod allows it to reach.

use crate::runtime::Network;
use k8s_openapi::api::core::v1::{Container, Pod};
use std::net::IpAddr;

/// The pod annotation listing the outbound destinations its guests may reach, comma- or
/// whitespace-separated: `host`, `host:port`, or `*` for any. Without it, a guest can reach
/// nothing (outgoing HTTP and sockets are denied).
pub const ALLOWED_OUTBOUND_HOSTS: &str = "krustlet.dev/allowed-outbound-hosts";

/// The network for `container` of `pod` on a node with address `node_ip`: its TCP
/// containerPorts and hostPorts, in order.
pub fn network(pod: &Pod, container: &Container, node_ip: IpAddr) -> Network {
    // The pod shares the node's network, so its hostPort, when it declares a different one,
    // is served too: clients of the node reach it there, Services at the containerPort.
    let mut ports: Vec<u16> = Vec::new();
    for port in container
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
    {
        for number in std::iter::once(port.container_port).chain(port.host_port) {
            if let Ok(number) = u16::try_from(number)
                && number != 0
                && !ports.contains(&number)
            {
                ports.push(number);
            }
        }
    }
    let allowed_outbound = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOWED_OUTBOUND_HOSTS))
        .map(|list| {
            list.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Network {
        listen_ip: node_ip,
        ports,
        allowed_outbound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn tcp_ports_and_the_annotation() {
        let mut pod = Pod::default();
        pod.metadata.annotations = Some(
            [(
                ALLOWED_OUTBOUND_HOSTS.to_string(),
                "example.com:443, 10.0.0.5\n*.bad".to_string(),
            )]
            .into(),
        );
        let container = Container {
            ports: Some(vec![
                ContainerPort {
                    container_port: 8080,
                    ..Default::default()
                },
                ContainerPort {
                    container_port: 9090,
                    host_port: Some(19090),
                    ..Default::default()
                },
                ContainerPort {
                    container_port: 53,
                    protocol: Some("UDP".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let net = network(&pod, &container, "10.1.2.3".parse().unwrap());
        assert_eq!(net.ports, vec![8080, 9090, 19090]);
        assert_eq!(
            net.allowed_outbound,
            vec!["example.com:443", "10.0.0.5", "*.bad"]
        );
        assert_eq!(net.listen_ip.to_string(), "10.1.2.3");
    }

    #[test]
    fn nothing_allowed_by_default() {
        let net = network(
            &Pod::default(),
            &Container::default(),
            "10.1.2.3".parse().unwrap(),
        );
        assert!(net.allowed_outbound.is_empty());
        assert!(net.ports.is_empty());
    }
}
