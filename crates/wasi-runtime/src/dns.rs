//! Guests' name lookups with their pod's DNS configuration, as a container's libc resolves with
//! the `/etc/resolv.conf` and `/etc/hosts` the kubelet writes for it: hosts entries first, then
//! the pod's name servers with its search domains and `ndots`. Queries are sent from the pod's
//! network namespace when it has one.
//!
//! wasmtime-wasi resolves `wasi:sockets/ip-name-lookup` with the node's resolver and offers no
//! hook, so this module implements that one interface (bindings generated from wasmtime-wasi's
//! own WIT, sharing its `network` and `pollable` types) and [`add_to_linker`] puts it in place
//! of wasmtime-wasi's. Outgoing HTTP requests resolve through [`PodResolver`] too
//! ([`crate::outbound`]).

use kubelet::netns::PodNetns;
use kubelet::runtime::Dns;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::task::AbortOnDropHandle;
use wasm_host::descriptors::{ContainerDescriptors, DescriptorPermit};
use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::p2::SocketError;
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddress, Network};
use wasmtime_wasi::sockets::WasiSocketsCtxView;
use wasmtime_wasi_io::poll::{DynPollable, Pollable, subscribe};

use hickory_resolver::Resolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_resolver::net::runtime::{DnsUdpSocket, RuntimeProvider, TokioHandle, TokioTime};
use hickory_resolver::proto::rr::Name;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "krustlet:dns/lookup",
        imports: { default: trappable },
        require_store_data_send: true,
        trappable_error_type: {
            "wasi:sockets/network.error-code" => wasmtime_wasi::p2::SocketError,
        },
        with: {
            "wasi:io": wasmtime_wasi_io::bindings::wasi::io,
            "wasi:sockets/network": wasmtime_wasi::p2::bindings::sockets::network,
            "wasi:sockets/ip-name-lookup.resolve-address-stream": super::ResolveAddressStream,
        },
    });
}

use bindings::wasi::sockets::ip_name_lookup::{Host, HostResolveAddressStream};

/// Responses one container's resolver remembers (hickory's default is 32).
const CACHE_RESPONSES: u64 = 64;
/// The most of each resolver option a pod may ask for, as glibc caps them: `ndots` 15,
/// `timeout` 30 s, `attempts` 5.
const MAX_NDOTS: usize = 15;
const MAX_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_ATTEMPTS: usize = 5;

/// How one pod's guests resolve names. The resolver behind it is made at the first lookup
/// that needs a name server, and shared by every instance of the container.
pub struct PodResolver {
    dns: Dns,
    netns: Option<Arc<PodNetns>>,
    resolver: OnceLock<Resolver<PodNet>>,
    /// Lookups that may ask the name servers at once; the others wait their turn holding no
    /// socket (`--max-name-lookups-per-container`).
    asking: Arc<tokio::sync::Semaphore>,
    /// The container's descriptors, one held by each socket a lookup asks with.
    descriptors: Arc<ContainerDescriptors>,
}

impl std::fmt::Debug for PodResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodResolver")
            .field("dns", &self.dns)
            .finish_non_exhaustive()
    }
}

/// Why a name did not resolve, as `wasi:sockets` tells a guest.
fn lookup_error(error: &hickory_resolver::net::NetError) -> ErrorCode {
    if error.is_no_records_found() {
        ErrorCode::NameUnresolvable
    } else {
        ErrorCode::TemporaryResolverFailure
    }
}

impl PodResolver {
    /// The resolver for `dns`, sending queries from `netns` (the node's network without one),
    /// at most `max_asking` lookups at a time, each socket holding a descriptor of
    /// `descriptors`.
    pub fn new(
        dns: Dns,
        netns: Option<Arc<PodNetns>>,
        max_asking: usize,
        descriptors: Arc<ContainerDescriptors>,
    ) -> Arc<Self> {
        Arc::new(Self {
            dns,
            netns,
            resolver: OnceLock::new(),
            asking: Arc::new(tokio::sync::Semaphore::new(max_asking.max(1))),
            descriptors,
        })
    }

    /// The addresses of `name`: an IP address itself, a hosts entry's, or the name servers'
    /// (through the search domains); a name that is neither a domain nor an address is an
    /// invalid argument, as in wasmtime-wasi.
    pub fn lookup(
        self: &Arc<Self>,
        name: &str,
    ) -> impl Future<Output = Result<Vec<IpAddr>, ErrorCode>> + Send + 'static {
        let this = self.clone();
        let parsed = parse_name(name);
        async move {
            let domain = match parsed? {
                Parsed::Ip(ip) => return Ok(vec![ip]),
                Parsed::Domain(domain) => domain,
            };
            let in_hosts = this.in_hosts(&domain);
            if !in_hosts.is_empty() {
                return Ok(in_hosts);
            }
            // A guest's lookups past its container's share wait here, holding no socket: one
            // pod's unanswered lookups cannot take the process's file descriptors.
            let _asking = this
                .asking
                .acquire()
                .await
                .map_err(|_| ErrorCode::TemporaryResolverFailure)?;
            let found = this
                .resolver()
                .lookup_ip(domain.as_str())
                .await
                .map_err(|e| {
                    tracing::debug!(%domain, error = %e, "a guest's name lookup failed");
                    // Its sockets are the container's: with none left, that is why.
                    if this.descriptors.try_take(1).is_err() {
                        ErrorCode::NewSocketLimit
                    } else {
                        lookup_error(&e)
                    }
                })?;
            let mut ips: Vec<IpAddr> = Vec::new();
            for ip in found.iter().map(|ip| ip.to_canonical()) {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
            Ok(ips)
        }
    }

    /// The addresses hosts entries give `domain`, in the entries' order.
    fn in_hosts(&self, domain: &str) -> Vec<IpAddr> {
        let key = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut ips = Vec::new();
        for entry in &self.dns.hosts {
            if entry.names.contains(&key) && !ips.contains(&entry.ip) {
                ips.push(entry.ip);
            }
        }
        ips
    }

    fn resolver(&self) -> &Resolver<PodNet> {
        self.resolver.get_or_init(|| {
            let mut nameservers: Vec<NameServerConfig> = self
                .dns
                .nameservers
                .iter()
                .map(|ip| NameServerConfig::udp_and_tcp(*ip))
                .collect();
            if nameservers.is_empty() {
                // With no name server, libc asks the local machine's.
                nameservers.push(NameServerConfig::udp_and_tcp(IpAddr::from([127, 0, 0, 1])));
            }
            let searches = self
                .dns
                .searches
                .iter()
                .filter_map(|s| Name::from_str(s).ok())
                .collect();
            let config = ResolverConfig::from_parts(None, searches, nameservers);
            let provider = PodNet {
                netns: self.netns.clone(),
                descriptors: self.descriptors.clone(),
                handle: TokioHandle::default(),
            };
            let mut builder = Resolver::builder_with_config(config, provider);
            *builder.options_mut() = options(&self.dns.options);
            builder
                .build()
                .unwrap_or_else(|e| unreachable!("a resolver without TLS always builds: {e}"))
        })
    }
}

/// The resolver options of resolv.conf `options`, with libc's defaults (`ndots:1`,
/// `timeout:5`, `attempts:2`) and caps; options libc has and hickory does not are ignored.
fn options(options: &[String]) -> ResolverOpts {
    let mut opts = ResolverOpts::default();
    opts.ndots = 1;
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    for option in options {
        let (name, value) = option.split_once(':').unwrap_or((option, ""));
        let number = value.parse::<u64>().ok();
        match (name, number) {
            ("ndots", Some(n)) => opts.ndots = (n as usize).min(MAX_NDOTS),
            ("timeout", Some(n)) => opts.timeout = Duration::from_secs(n.max(1)).min(MAX_TIMEOUT),
            ("attempts", Some(n)) => opts.attempts = (n as usize).clamp(1, MAX_ATTEMPTS),
            _ => {}
        }
    }
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.cache_size = CACHE_RESPONSES;
    // The pod's hosts entries are its hosts file; the node's is not the pod's.
    opts.use_hosts_file = ResolveHosts::Never;
    opts
}

/// A name a guest asked for.
enum Parsed {
    Ip(IpAddr),
    /// A domain name, IDNA-encoded.
    Domain(String),
}

/// `name` as wasmtime-wasi reads it: an IP address (IPv6 also without brackets), or a domain,
/// Unicode turned into punycode.
fn parse_name(name: &str) -> Result<Parsed, ErrorCode> {
    match url::Host::parse(name) {
        Ok(url::Host::Domain(domain)) => Ok(Parsed::Domain(domain)),
        Ok(url::Host::Ipv4(ip)) => Ok(Parsed::Ip(ip.into())),
        Ok(url::Host::Ipv6(ip)) => Ok(Parsed::Ip(ip.into())),
        Err(_) => std::net::Ipv6Addr::from_str(name)
            .map(|ip| Parsed::Ip(ip.into()))
            .map_err(|_| ErrorCode::InvalidArgument),
    }
}

/// hickory's I/O for one pod: its sockets are made inside the pod's network namespace, each
/// holding a descriptor of the container's.
#[derive(Clone)]
struct PodNet {
    netns: Option<Arc<PodNetns>>,
    descriptors: Arc<ContainerDescriptors>,
    handle: TokioHandle,
}

impl PodNet {
    /// Runs `make` (which creates a socket) inside the pod's namespace, if it has one, once the
    /// container has a descriptor for it.
    fn inside<T>(&self, make: impl FnOnce() -> io::Result<T>) -> io::Result<Charged<T>> {
        let descriptor = self
            .descriptors
            .try_take(1)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let socket = match &self.netns {
            Some(netns) => netns.enter(make)??,
            None => make()?,
        };
        Ok(Charged {
            socket,
            _descriptor: descriptor,
        })
    }
}

/// A socket a lookup asks with, and the container's descriptor it holds.
struct Charged<S> {
    socket: S,
    _descriptor: DescriptorPermit,
}

impl DnsUdpSocket for Charged<tokio::net::UdpSocket> {
    type Time = TokioTime;

    fn poll_recv_from(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<(usize, SocketAddr)>> {
        DnsUdpSocket::poll_recv_from(&self.socket, cx, buf)
    }

    fn poll_send_to(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> std::task::Poll<io::Result<usize>> {
        DnsUdpSocket::poll_send_to(&self.socket, cx, buf, target)
    }
}

impl tokio::io::AsyncRead for Charged<tokio::net::TcpStream> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Charged<tokio::net::TcpStream> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write(cx, buf)
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

impl RuntimeProvider for PodNet {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = Charged<tokio::net::UdpSocket>;
    type Tcp = AsyncIoTokioAsStd<Charged<tokio::net::TcpStream>>;

    fn create_handle(&self) -> Self::Handle {
        self.handle.clone()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        wait_for: Option<Duration>,
    ) -> Pin<Box<dyn Send + Future<Output = io::Result<Self::Tcp>>>> {
        let socket = self.inside(|| {
            let socket = match server_addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }?;
            if let Some(bind_addr) = bind_addr {
                socket.bind(bind_addr)?;
            }
            Ok(socket)
        });
        Box::pin(async move {
            let Charged {
                socket,
                _descriptor: descriptor,
            } = socket?;
            socket.set_nodelay(true)?;
            let wait_for = wait_for.unwrap_or(Duration::from_secs(5));
            match tokio::time::timeout(wait_for, socket.connect(server_addr)).await {
                Ok(stream) => Ok(AsyncIoTokioAsStd(Charged {
                    socket: stream?,
                    _descriptor: descriptor,
                })),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to the name server {server_addr} timed out"),
                )),
            }
        })
    }

    fn bind_udp(
        &self,
        local_addr: SocketAddr,
        _server_addr: SocketAddr,
    ) -> Pin<Box<dyn Send + Future<Output = io::Result<Self::Udp>>>> {
        let socket = self.inside(|| {
            let socket = std::net::UdpSocket::bind(local_addr)?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        });
        Box::pin(async move {
            let Charged {
                socket,
                _descriptor: descriptor,
            } = socket?;
            Ok(Charged {
                socket: tokio::net::UdpSocket::from_std(socket)?,
                _descriptor: descriptor,
            })
        })
    }
}

/// A lookup in progress, then its addresses one by one (the guest's
/// `resolve-address-stream`).
pub struct ResolveAddressStream(Lookup);

enum Lookup {
    Pending(AbortOnDropHandle<Result<Vec<IpAddr>, ErrorCode>>),
    Done(Result<std::vec::IntoIter<IpAddr>, ErrorCode>),
}

impl Lookup {
    /// Waits for a pending lookup to end.
    async fn finish(&mut self) {
        if let Self::Pending(task) = self {
            let outcome = task.await;
            *self = Self::done(outcome);
        }
    }

    /// Takes a pending lookup's outcome if it has one already.
    fn try_finish(&mut self) {
        if let Self::Pending(task) = self
            && task.is_finished()
        {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(outcome) = Pin::new(task).poll(&mut cx) {
                *self = Self::done(outcome);
            }
        }
    }

    /// The state after the lookup task ended (one that panicked failed).
    fn done(outcome: Result<Result<Vec<IpAddr>, ErrorCode>, tokio::task::JoinError>) -> Self {
        Self::Done(
            outcome
                .unwrap_or(Err(ErrorCode::Unknown))
                .map(Vec::into_iter),
        )
    }
}

#[wasmtime_wasi_io::async_trait]
impl Pollable for ResolveAddressStream {
    async fn ready(&mut self) {
        self.0.finish().await;
    }
}

/// What the `ip-name-lookup` host functions see of a store: its WASI sockets (for the
/// `network` resource and errors, as wasmtime-wasi has them), its pod's resolver and whether
/// its pod may resolve names at all.
pub struct LookupView<'a> {
    /// The instance's WASI sockets and resource table.
    pub sockets: WasiSocketsCtxView<'a>,
    /// The pod's resolver.
    pub resolver: Arc<PodResolver>,
    /// Whether the pod's allow list names a host (else lookups fail, as wasmtime-wasi's
    /// do when name lookups are not allowed).
    pub allowed: bool,
}

/// A store whose guests' lookups go through [`PodResolver`].
pub trait LookupState: Send {
    /// The view the host functions work on.
    fn lookups(&mut self) -> LookupView<'_>;
}

struct Lookups;

impl HasData for Lookups {
    type Data<'a> = LookupView<'a>;
}

/// Puts this module's `wasi:sockets/ip-name-lookup` in place of wasmtime-wasi's in `linker`
/// (which must have wasmtime-wasi's preview 2 already).
pub fn add_to_linker<T: LookupState + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added =
        bindings::wasi::sockets::ip_name_lookup::add_to_linker::<T, Lookups>(linker, T::lookups);
    linker.allow_shadowing(false);
    added
}

impl Host for LookupView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        // The network resource is the capability to look names up.
        self.sockets.table.get(&network)?;
        if !self.allowed {
            return Err(ErrorCode::PermanentResolverFailure.into());
        }
        let lookup = self.resolver.lookup(&name);
        let stream = ResolveAddressStream(Lookup::Pending(AbortOnDropHandle::new(tokio::spawn(
            lookup,
        ))));
        Ok(self.sockets.table.push(stream)?)
    }
}

impl HostResolveAddressStream for LookupView<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        let stream = self.sockets.table.get_mut(&stream)?;
        stream.0.try_finish();
        match &mut stream.0 {
            Lookup::Pending(_) => Err(ErrorCode::WouldBlock.into()),
            Lookup::Done(Ok(ips)) => Ok(ips.next().map(IpAddress::from)),
            Lookup::Done(Err(code)) => Err((*code).into()),
        }
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        subscribe(self.sockets.table, stream)
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        self.sockets.table.delete(stream)?;
        Ok(())
    }
}

/// The `network` interface the lookup interface uses, as wasmtime-wasi implements it.
impl network::Host for LookupView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        self.sockets.convert_error_code(error)
    }

    fn network_error_code(
        &mut self,
        error: Resource<wasmtime_wasi_io::streams::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        self.sockets.network_error_code(error)
    }
}

impl network::HostNetwork for LookupView<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubelet::runtime::HostEntry;
    use testkit::dns::DnsServer;
    use wasm_host::descriptors::DescriptorBudget;

    /// A container's share of a runtime's default descriptor budget.
    fn descriptors() -> Arc<ContainerDescriptors> {
        DescriptorBudget::new(Default::default()).reserve().unwrap()
    }

    /// A name server on port 53 of a loopback address of its own (binding port 53 needs root).
    async fn name_server(records: &[(&str, IpAddr)]) -> Option<DnsServer> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: a name server on port 53 needs root");
            return None;
        }
        let ip = IpAddr::from([127, 53, 0, (std::process::id() % 250) as u8 + 1]);
        Some(
            DnsServer::start(SocketAddr::new(ip, 53), records)
                .await
                .unwrap(),
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn names_resolve_through_the_search_domains_by_ndots() {
        let Some(server) = name_server(&[
            ("web.shop.svc.cluster.local", ip("10.0.0.7")),
            ("example.com", ip("192.0.2.10")),
        ])
        .await
        else {
            return;
        };
        let resolver = PodResolver::new(
            Dns {
                nameservers: vec![server.addr().ip()],
                searches: vec!["shop.svc.cluster.local".into(), "cluster.local".into()],
                options: vec!["ndots:5".into(), "timeout:1".into()],
                hosts: Vec::new(),
            },
            None,
            32,
            descriptors(),
        );
        assert_eq!(resolver.lookup("web").await, Ok(vec![ip("10.0.0.7")]));
        assert!(
            server
                .names_asked()
                .starts_with(&["web.shop.svc.cluster.local".to_string()]),
            "fewer dots than ndots: the first search domain first: {:?}",
            server.names_asked()
        );
        // Fewer than five dots: the search domains are tried, then the name as it is.
        assert_eq!(
            resolver.lookup("example.com").await,
            Ok(vec![ip("192.0.2.10")])
        );
        let asked = server.names_asked();
        assert!(
            asked.contains(&"example.com.shop.svc.cluster.local".to_string()),
            "{asked:?}"
        );
        assert_eq!(
            resolver.lookup("nowhere.example").await,
            Err(ErrorCode::NameUnresolvable)
        );
    }

    #[tokio::test]
    async fn hosts_entries_and_addresses_need_no_name_server() {
        let resolver = PodResolver::new(
            Dns {
                // Nothing answers there: a query would fail.
                nameservers: vec![ip("127.0.0.1")],
                options: vec!["timeout:1".into(), "attempts:1".into()],
                hosts: vec![
                    HostEntry {
                        ip: ip("192.0.2.80"),
                        names: vec!["db".into(), "db.local".into()],
                    },
                    HostEntry {
                        ip: ip("::1"),
                        names: vec!["db".into()],
                    },
                ],
                ..Dns::default()
            },
            None,
            32,
            descriptors(),
        );
        assert_eq!(
            resolver.lookup("DB.local.").await,
            Ok(vec![ip("192.0.2.80")])
        );
        assert_eq!(
            resolver.lookup("db").await,
            Ok(vec![ip("192.0.2.80"), ip("::1")])
        );
        assert_eq!(resolver.lookup("10.1.2.3").await, Ok(vec![ip("10.1.2.3")]));
        assert_eq!(resolver.lookup("fe80::1").await, Ok(vec![ip("fe80::1")]));
        assert_eq!(
            resolver.lookup("not a name").await,
            Err(ErrorCode::InvalidArgument)
        );
    }

    #[tokio::test]
    async fn a_containers_lookups_past_its_share_wait_without_asking() {
        // A name server that never answers, counting what it is asked.
        let Ok(silent) = std::net::UdpSocket::bind("127.0.0.77:53") else {
            return; // Port 53 needs root, as the e2e DNS tests.
        };
        silent
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let resolver = PodResolver::new(
            Dns {
                nameservers: vec![ip("127.0.0.77")],
                options: vec!["timeout:5".into(), "attempts:1".into()],
                ..Dns::default()
            },
            None,
            2,
            descriptors(),
        );
        let lookups: Vec<_> = (0..6)
            .map(|i| tokio::spawn(resolver.lookup(&format!("host-{i}.example"))))
            .collect();
        let asked = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_millis(1500);
            let mut asked = std::collections::BTreeSet::new();
            let mut buf = [0u8; 512];
            while std::time::Instant::now() < deadline {
                if let Ok(n) = silent.recv(&mut buf) {
                    // The question's first label: the host asked about.
                    let len = usize::from(buf[12]);
                    asked.insert(String::from_utf8_lossy(&buf[13..(13 + len).min(n)]).into_owned());
                }
            }
            asked
        })
        .await
        .unwrap();
        // Two lookups ask (their A and AAAA queries); four wait.
        assert_eq!(
            asked.len(),
            2,
            "hosts asked about while 6 lookups were pending: {asked:?}"
        );
        lookups.iter().for_each(|l| l.abort());
    }

    #[tokio::test]
    async fn a_lookup_that_finds_no_descriptor_fails_at_once() {
        let budget = DescriptorBudget::new(kubelet::runtime::DescriptorLimits {
            total: Some(4),
            guaranteed_per_container: 0,
            ..Default::default()
        });
        let (container, other) = (budget.reserve().unwrap(), budget.reserve().unwrap());
        // The other container holds every descriptor.
        let _held = other.try_take(4).unwrap();
        let resolver = PodResolver::new(
            Dns {
                // Nothing answers there: a query would wait for its timeout.
                nameservers: vec![ip("127.0.0.1")],
                options: vec!["timeout:5".into(), "attempts:1".into()],
                ..Dns::default()
            },
            None,
            32,
            container,
        );
        let started = std::time::Instant::now();
        assert_eq!(
            resolver.lookup("example.com").await,
            Err(ErrorCode::NewSocketLimit)
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        // Addresses need no name server, so no descriptor.
        assert_eq!(
            resolver.lookup("192.0.2.1").await,
            Ok(vec![ip("192.0.2.1")])
        );
    }

    #[test]
    fn options_take_libc_defaults_and_caps() {
        let opts = options(&[]);
        assert_eq!((opts.ndots, opts.attempts), (1, 2));
        assert_eq!(opts.timeout, Duration::from_secs(5));
        let opts = options(&[
            "ndots:99".into(),
            "timeout:0".into(),
            "attempts:50".into(),
            "rotate".into(),
        ]);
        assert_eq!((opts.ndots, opts.attempts), (MAX_NDOTS, MAX_ATTEMPTS));
        assert_eq!(opts.timeout, Duration::from_secs(1));
    }
}
