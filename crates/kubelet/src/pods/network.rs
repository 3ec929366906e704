//! A pod's network: the node's (pods share the node's IP, as `hostNetwork` pods do), or a
//! network namespace of its own that the node's CNI plugins attach ([`crate::cni`]); and a
//! container's network as the runtime sees it: the ports it serves and the destinations the
//! pod allows it to reach.

use crate::cni::PodAddress;
use crate::runtime::{Dns, Network};
use k8s_openapi::api::core::v1::{Container, Pod};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The pod annotation listing the outbound destinations its guests may reach, comma- or
/// whitespace-separated: `host`, `host:port`, or `*` for any. Without it, a guest can reach
/// nothing (outgoing HTTP and sockets are denied).
pub const ALLOWED_OUTBOUND_HOSTS: &str = "krustlet.dev/allowed-outbound-hosts";

/// Where a pod's containers are on the network.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// On the node's network, with the node's IP.
    Node(IpAddr),
    /// In the pod's own network namespace, with its own IPs.
    Own(PodAddress),
}

impl Placement {
    /// The pod's IPs, the primary first.
    pub fn ips(&self) -> Vec<IpAddr> {
        match self {
            Self::Node(ip) => vec![*ip],
            Self::Own(address) => address.ips.clone(),
        }
    }

    /// The pod's primary IP, which probes and hooks reach it on.
    pub fn ip(&self) -> IpAddr {
        self.ips()[0]
    }
}

/// Whether `pod` needs a network of its own when the node has one to give: it is not a
/// `hostNetwork` pod, and it serves a port or may reach a destination. A pod that neither
/// listens nor connects stays on the node's network, where its guests can do neither, and
/// costs no namespace.
pub fn wants_own_network(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    if spec.host_network == Some(true) {
        return false;
    }
    let serves = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()));
    serves || !allowed_outbound(pod).is_empty()
}

/// The destinations the pod's annotation allows.
fn allowed_outbound(pod: &Pod) -> Vec<String> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOWED_OUTBOUND_HOSTS))
        .map(|list| {
            list.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The network for `container` of `pod`, placed at `placement`: its TCP containerPorts (and on
/// the node's network its hostPorts; in a namespace of its own, the CNI `portmap` plugin
/// forwards those), in order; its names resolve by `dns`.
pub fn network(pod: &Pod, container: &Container, placement: &Placement, dns: &Dns) -> Network {
    let on_node = matches!(placement, Placement::Node(_));
    let mut ports: Vec<u16> = Vec::new();
    for port in container
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
    {
        let host_port = port.host_port.filter(|_| on_node);
        for number in std::iter::once(port.container_port).chain(host_port) {
            if let Ok(number) = u16::try_from(number)
                && number != 0
                && !ports.contains(&number)
            {
                ports.push(number);
            }
        }
    }
    let (listen_ip, netns) = match placement {
        Placement::Node(ip) => (*ip, None),
        // Inside its namespace the pod listens on every address it has, loopback included,
        // so its containers reach each other on localhost.
        Placement::Own(address) => (
            match address.ips[0] {
                IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
            },
            Some(address.netns.clone()),
        ),
    };
    Network {
        listen_ip,
        netns,
        ports,
        allowed_outbound: allowed_outbound(pod),
        dns: dns.clone(),
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
        let net = network(
            &pod,
            &container,
            &Placement::Node("10.1.2.3".parse().unwrap()),
            &Dns::default(),
        );
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
            &Placement::Node("10.1.2.3".parse().unwrap()),
            &Dns::default(),
        );
        assert!(net.allowed_outbound.is_empty());
        assert!(net.ports.is_empty());
    }

    #[test]
    fn own_namespace_serves_container_ports_on_every_address() {
        let mut pod = Pod::default();
        let container = Container {
            ports: Some(vec![ContainerPort {
                container_port: 8080,
                host_port: Some(18080),
                ..Default::default()
            }]),
            ..Default::default()
        };
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            containers: vec![container.clone()],
            ..Default::default()
        });
        assert!(wants_own_network(&pod));
        let placement = Placement::Own(PodAddress {
            netns: "/run/netns/p".into(),
            ips: vec!["10.22.0.5".parse().unwrap()],
        });
        let net = network(&pod, &container, &placement, &Dns::default());
        assert_eq!(net.ports, vec![8080]);
        assert_eq!(net.listen_ip.to_string(), "0.0.0.0");
        assert_eq!(
            net.netns.as_deref(),
            Some(std::path::Path::new("/run/netns/p"))
        );
        assert_eq!(placement.ip().to_string(), "10.22.0.5");
        pod.spec.as_mut().unwrap().host_network = Some(true);
        assert!(!wants_own_network(&pod));
        pod.spec.as_mut().unwrap().host_network = None;
        pod.spec.as_mut().unwrap().containers[0].ports = None;
        assert!(!wants_own_network(&pod), "no ports and no destinations");
    }
}
