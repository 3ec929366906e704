//! Which destinations a guest may reach, from the pod's allow list: outgoing HTTP requests
//! (wasi:http/outgoing-handler) and sockets (wasi:sockets) are denied unless listed.

use crate::dns::PodResolver;
use kubelet::netns::{InNetns, PodNetns};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use wasm_host::descriptors::ContainerDescriptors;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// One allowed destination: a host (name or IP) and optionally a port.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Destination {
    Any,
    Host { host: String, port: Option<u16> },
}

impl Destination {
    fn parse(entry: &str) -> Self {
        let entry = entry.trim().to_ascii_lowercase();
        if entry == "*" {
            return Self::Any;
        }
        let (host, port) = match entry.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') => match port.parse() {
                Ok(port) => (host.to_string(), Some(port)),
                Err(_) => (entry.clone(), None),
            },
            _ => (entry.clone(), None),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Self::Host { host, port }
    }

    fn permits(&self, host: &str, port: u16) -> bool {
        match self {
            Self::Any => true,
            Self::Host { host: h, port: p } => {
                h.eq_ignore_ascii_case(host.trim_start_matches('[').trim_end_matches(']'))
                    && p.is_none_or(|p| p == port)
            }
        }
    }
}

/// The destinations a pod allows; empty denies everything. Connections are made in the pod's
/// network namespace when it has one, to addresses its resolver gives, and at most so many at
/// once for the whole container (each holds a file descriptor of the runtime's process).
#[derive(Debug, Clone)]
pub struct OutboundPolicy {
    allowed: Arc<[Destination]>,
    netns: Option<Arc<PodNetns>>,
    resolver: Arc<PodResolver>,
    connections: Arc<tokio::sync::Semaphore>,
    descriptors: Arc<ContainerDescriptors>,
}

impl OutboundPolicy {
    /// The policy for allow-list entries `host`, `host:port` or `*`, connecting from inside
    /// `netns` (the pod's network) when there is one, to the addresses `resolver` gives, with at
    /// most `max_connections` outgoing HTTP connections open at once, each holding a
    /// descriptor of `descriptors`.
    pub fn new(
        entries: &[String],
        netns: Option<Arc<PodNetns>>,
        resolver: Arc<PodResolver>,
        max_connections: usize,
        descriptors: Arc<ContainerDescriptors>,
    ) -> Self {
        Self {
            allowed: entries
                .iter()
                .filter(|e| !e.trim().is_empty())
                .map(|e| Destination::parse(e))
                .collect(),
            netns,
            resolver,
            connections: Arc::new(tokio::sync::Semaphore::new(max_connections.max(1))),
            descriptors,
        }
    }

    /// The pod's resolver.
    pub fn resolver(&self) -> &Arc<PodResolver> {
        &self.resolver
    }

    /// Whether the guest may reach `host` on `port`.
    pub fn permits(&self, host: &str, port: u16) -> bool {
        self.allowed.iter().any(|d| d.permits(host, port))
    }

    /// Whether a socket may be used for `addr`: talking to a listed address, and the implicit
    /// bind that comes with it. Listening is not granted (served ports are the pod's
    /// containerPorts, through wasi:http).
    pub fn permits_socket(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        match usage {
            SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
                self.permits(&addr.ip().to_string(), addr.port())
            }
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                addr.ip().is_unspecified() && addr.port() == 0 && self.allows_any()
            }
            SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
        }
    }

    /// Whether any destination is allowed at all (then sockets are turned on).
    pub fn allows_any(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// Whether the guest may resolve names (only when a name is allowed).
    pub fn allows_name_lookup(&self) -> bool {
        self.allowed.iter().any(|d| match d {
            Destination::Any => true,
            Destination::Host { host, .. } => host.parse::<IpAddr>().is_err(),
        })
    }
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                )>,
            > + Send,
    > {
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        if !self.permits(&host, port) {
            tracing::info!(%host, port, "outgoing HTTP request denied: the destination is not in the pod's allowed outbound hosts");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        // Held by the connection until it closes; none free fails the request at once.
        let Ok(connection) = self.connections.clone().try_acquire_owned() else {
            tracing::info!(%host, port, "outgoing HTTP request refused: the container holds as many connections as it may (--max-outgoing-http-connections-per-container)");
            return Box::new(async { Err(Error::ConnectionLimitReached) });
        };
        let descriptor = match self.descriptors.try_take(1) {
            Ok(descriptor) => descriptor,
            Err(e) => {
                tracing::info!(%host, port, error = %e, "outgoing HTTP request refused");
                return Box::new(async { Err(Error::ConnectionLimitReached) });
            }
        };
        let send = crate::outgoing::send(
            request,
            options,
            self.resolver.clone(),
            (connection, descriptor),
        );
        Box::new(InNetns::new(self.netns.clone(), send))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OutboundPolicy {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        let descriptors = wasm_host::descriptors::DescriptorBudget::new(Default::default())
            .reserve()
            .unwrap();
        OutboundPolicy::new(
            &entries,
            None,
            PodResolver::new(Default::default(), None, 1, descriptors.clone()),
            8,
            descriptors,
        )
    }

    #[test]
    fn empty_denies_everything() {
        let p = policy(&[]);
        assert!(!p.permits("example.com", 443));
        assert!(!p.allows_any());
        assert!(!p.permits_socket("1.2.3.4:80".parse().unwrap(), SocketAddrUse::TcpConnect));
    }

    #[test]
    fn hosts_with_and_without_ports() {
        let p = policy(&["Example.com", "127.0.0.1:8080", "[::1]:9000"]);
        assert!(p.permits("example.com", 443));
        assert!(p.permits("example.com", 80));
        assert!(p.permits("127.0.0.1", 8080));
        assert!(!p.permits("127.0.0.1", 8081));
        assert!(p.permits("[::1]", 9000));
        assert!(!p.permits("other.org", 443));
        assert!(p.allows_name_lookup());
    }

    #[test]
    fn sockets_follow_the_same_list() {
        let p = policy(&["127.0.0.1:8080"]);
        assert!(p.permits_socket("127.0.0.1:8080".parse().unwrap(), SocketAddrUse::TcpConnect));
        assert!(!p.permits_socket("127.0.0.1:22".parse().unwrap(), SocketAddrUse::TcpConnect));
        assert!(p.permits_socket("0.0.0.0:0".parse().unwrap(), SocketAddrUse::TcpBind));
        assert!(!p.permits_socket("0.0.0.0:80".parse().unwrap(), SocketAddrUse::TcpBind));
        assert!(!p.allows_name_lookup());
    }

    #[test]
    fn star_allows_all() {
        let p = policy(&["*"]);
        assert!(p.permits("anything", 1));
    }
}
