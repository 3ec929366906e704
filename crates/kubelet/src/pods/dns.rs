//! A pod's DNS configuration, formed as the kubelet forms it (`pkg/kubelet/network/dns`): the
//! name servers, search domains and options its `dnsPolicy` and `dnsConfig` give, within the
//! API's limits, and the hosts entries the kubelet writes into its `/etc/hosts` (localhost, the
//! pod's own hostname, its `hostAliases`). The runtime resolves guests' names with it.

use super::host::PodEvent;
use crate::runtime::{Dns, HostEntry};
use k8s_openapi::api::core::v1::{Pod, PodDNSConfig};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// Name servers a pod may have (`MaxDNSNameservers`).
pub const MAX_NAMESERVERS: usize = 3;
/// Search domains a pod may have (`MaxDNSSearchPaths`).
pub const MAX_SEARCHES: usize = 32;
/// Characters of the search line (`MaxDNSSearchListChars`).
pub const MAX_SEARCH_CHARS: usize = 2048;
/// Characters of one search domain (a DNS-1123 subdomain): longer ones are left out, as some
/// resolvers abort on them.
const MAX_SEARCH_DOMAIN_CHARS: usize = 253;
/// Bytes of the node's resolv.conf or hosts file read (the kubelet's `maxResolvConfLength`).
const MAX_FILE_BYTES: u64 = 10 << 20;
/// The options a pod on the cluster's DNS gets (the kubelet's `defaultDNSOptions`).
const CLUSTER_OPTIONS: &[&str] = &["ndots:5"];

/// The node's DNS settings (`--cluster-dns`, `--cluster-domain`, `--resolv-conf`).
#[derive(Debug, Clone, Default)]
pub struct NodeDns {
    /// The cluster's DNS servers, for `ClusterFirst` pods; none: they fall back to the node's.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster's domain (`cluster.local`); empty: no cluster search domains.
    pub cluster_domain: String,
    /// The node's resolver configuration, for `Default` pods and the search domains of the
    /// cluster's; `None` (`--resolv-conf ""`): the node has none, pods ask the local machine.
    pub resolv_conf: Option<PathBuf>,
    /// The node runs without a cluster (`--standalone`): ClusterFirst pods use the node's
    /// configuration without a MissingClusterDNS event, as there is no cluster to miss.
    pub standalone: bool,
}

/// The node's resolver configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the node's resolver configuration {} (--resolv-conf): {source}", .path.display())]
pub struct DnsError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub source: std::io::Error,
}

/// Where a pod's names resolve, by its `dnsPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PolicyKind {
    /// The cluster's DNS.
    Cluster,
    /// The node's resolver configuration.
    Node,
    /// Only the pod's `dnsConfig`.
    None,
}

fn policy_kind(pod: &Pod) -> PolicyKind {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    // The API server defaults the policy to ClusterFirst and refuses any other value.
    match spec.and_then(|s| s.dns_policy.as_deref()) {
        Some("None") => PolicyKind::None,
        Some("Default") => PolicyKind::Node,
        Some("ClusterFirstWithHostNet") => PolicyKind::Cluster,
        // A hostNetwork pod does not reach the cluster's DNS by ClusterFirst.
        _ if host_network => PolicyKind::Node,
        _ => PolicyKind::Cluster,
    }
}

/// A resolver configuration: name servers, search domains and options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ResolvConf {
    nameservers: Vec<IpAddr>,
    searches: Vec<String>,
    options: Vec<String>,
}

impl ResolvConf {
    /// Parses a resolv.conf as the kubelet does: every `nameserver` line (addresses only), the
    /// last `search` line (without `.` and final dots), `options` merged by name.
    fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => conf
                    .nameservers
                    .extend(fields.next().and_then(|ip| ip.parse::<IpAddr>().ok())),
                Some("search") => {
                    conf.searches = fields
                        .filter(|s| *s != ".")
                        .map(|s| s.trim_end_matches('.').to_string())
                        .collect();
                }
                Some("options") => {
                    merge_options(&mut conf.options, fields.map(str::to_string));
                }
                _ => {}
            }
        }
        conf
    }

    /// The node's configuration from `path`; without one, the local machine's name server, as
    /// the kubelet gives pods when `--resolv-conf` is empty.
    fn of_node(path: Option<&Path>, node_ip: IpAddr) -> Result<Self, DnsError> {
        let Some(path) = path else {
            let local: IpAddr = if node_ip.is_ipv6() {
                Ipv6Addr::LOCALHOST.into()
            } else {
                Ipv4Addr::LOCALHOST.into()
            };
            return Ok(Self {
                nameservers: vec![local],
                ..Self::default()
            });
        };
        let text = read_bounded(path).map_err(|source| DnsError {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::parse(&text))
    }
}

/// The first [`MAX_FILE_BYTES`] of the file at `path`, as text.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// The name of a resolver option (`ndots` of `ndots:5`).
fn option_name(option: &str) -> &str {
    option.split_once(':').map_or(option, |(name, _)| name)
}

/// Adds `options` to `into`, each replacing an option of the same name.
fn merge_options(into: &mut Vec<String>, options: impl IntoIterator<Item = String>) {
    for option in options {
        match into
            .iter_mut()
            .find(|o| option_name(o) == option_name(&option))
        {
            Some(existing) => *existing = option,
            None => into.push(option),
        }
    }
}

/// `items` without repeats, in first-seen order.
fn without_repeats<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut kept = Vec::with_capacity(items.len());
    for item in items {
        if !kept.contains(&item) {
            kept.push(item);
        }
    }
    kept
}

impl NodeDns {
    /// `pod`'s DNS configuration at `pod_ips` (on the node's network, the node's IP), and the
    /// Warning events the kubelet records while forming it (`MissingClusterDNS`,
    /// `DNSConfigForming`).
    pub fn pod_dns(&self, pod: &Pod, pod_ips: &[IpAddr]) -> Result<(Dns, Vec<PodEvent>), DnsError> {
        let node_ip = pod_ips
            .first()
            .copied()
            .unwrap_or(Ipv4Addr::LOCALHOST.into());
        let mut events = Vec::new();
        let mut conf = match policy_kind(pod) {
            PolicyKind::None => ResolvConf::default(),
            PolicyKind::Cluster if !self.cluster_dns.is_empty() => {
                let node = ResolvConf::of_node(self.resolv_conf.as_deref(), node_ip)?;
                ResolvConf {
                    nameservers: self.cluster_dns.clone(),
                    searches: self.cluster_searches(pod, node.searches),
                    options: CLUSTER_OPTIONS.iter().map(|o| o.to_string()).collect(),
                }
            }
            kind => {
                if kind == PolicyKind::Cluster && !self.standalone {
                    let message = "kubelet does not have ClusterDNS IP configured and cannot \
                                   create Pod using \"ClusterFirst\" policy. Falling back to \
                                   \"Default\" policy.";
                    events.push(PodEvent::warning(
                        "",
                        "MissingClusterDNS",
                        format!("pod: {:?}. {message}", pod_name(pod)),
                    ));
                }
                ResolvConf::of_node(self.resolv_conf.as_deref(), node_ip)?
            }
        };
        if let Some(config) = pod.spec.as_ref().and_then(|s| s.dns_config.as_ref()) {
            append_pod_config(&mut conf, config);
        }
        events.extend(fit_limits(&mut conf));
        let dns = Dns {
            nameservers: conf.nameservers,
            searches: conf.searches,
            options: conf.options,
            hosts: self.hosts(pod, pod_ips)?,
        };
        Ok((dns, events))
    }

    /// The search domains of a pod on the cluster's DNS: its namespace's services, the
    /// cluster's services, the cluster, then the node's.
    fn cluster_searches(&self, pod: &Pod, node_searches: Vec<String>) -> Vec<String> {
        if self.cluster_domain.is_empty() {
            return node_searches;
        }
        let domain = &self.cluster_domain;
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut searches = vec![
            format!("{namespace}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.clone(),
        ];
        searches.extend(node_searches);
        without_repeats(searches)
    }

    /// The hosts entries of `pod`: the kubelet's managed hosts file (localhost, the pod's
    /// hostname at each of its IPs), or the node's `/etc/hosts` for a hostNetwork pod; then
    /// its `hostAliases`.
    fn hosts(&self, pod: &Pod, pod_ips: &[IpAddr]) -> Result<Vec<HostEntry>, DnsError> {
        let spec = pod.spec.as_ref();
        let mut hosts = if spec.and_then(|s| s.host_network).unwrap_or(false) {
            let path = Path::new("/etc/hosts");
            match read_bounded(path) {
                Ok(text) => parse_hosts(&text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(source) => {
                    return Err(DnsError {
                        path: path.into(),
                        source,
                    });
                }
            }
        } else {
            let mut hosts = vec![
                entry(Ipv4Addr::LOCALHOST.into(), &["localhost"]),
                entry(
                    Ipv6Addr::LOCALHOST.into(),
                    &["localhost", "ip6-localhost", "ip6-loopback"],
                ),
            ];
            let (hostname, fqdn) = self.hostname(pod);
            let names: Vec<&str> = fqdn
                .iter()
                .map(String::as_str)
                .chain([&*hostname])
                .collect();
            hosts.extend(pod_ips.iter().map(|ip| entry(*ip, &names)));
            hosts
        };
        for alias in spec
            .and_then(|s| s.host_aliases.as_ref())
            .into_iter()
            .flatten()
        {
            if let Ok(ip) = alias.ip.parse::<IpAddr>() {
                let names: Vec<&str> = alias
                    .hostnames
                    .iter()
                    .flatten()
                    .map(String::as_str)
                    .collect();
                hosts.push(entry(ip, &names));
            }
        }
        Ok(hosts)
    }

    /// The pod's hostname (`spec.hostname`, else its name cut to 63 characters) and, with a
    /// `spec.subdomain`, its fully qualified name.
    fn hostname(&self, pod: &Pod) -> (String, Option<String>) {
        let spec = pod.spec.as_ref();
        let hostname = match spec.and_then(|s| s.hostname.as_deref()) {
            Some(hostname) if !hostname.is_empty() => hostname.to_string(),
            _ => {
                let name = pod_name(pod);
                let cut = name.get(..63).unwrap_or(name);
                cut.trim_end_matches(['-', '.']).to_string()
            }
        };
        let fqdn = spec
            .and_then(|s| s.subdomain.as_deref())
            .filter(|s| !s.is_empty())
            .map(|subdomain| {
                let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
                format!(
                    "{hostname}.{subdomain}.{namespace}.svc.{}",
                    self.cluster_domain
                )
            });
        (hostname, fqdn)
    }
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

fn entry(ip: IpAddr, names: &[&str]) -> HostEntry {
    HostEntry {
        ip,
        names: names
            .iter()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect(),
    }
}

/// The entries of a hosts file (`IP name...`, `#` comments).
fn parse_hosts(text: &str) -> Vec<HostEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            let ip = fields.next()?.parse::<IpAddr>().ok()?;
            let names: Vec<&str> = fields.collect();
            (!names.is_empty()).then(|| entry(ip, &names))
        })
        .collect()
}

/// Adds the pod's `dnsConfig`: its name servers and search domains after the policy's, its
/// options replacing the policy's of the same name.
fn append_pod_config(conf: &mut ResolvConf, config: &PodDNSConfig) {
    let nameservers = config
        .nameservers
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse::<IpAddr>().ok());
    conf.nameservers = without_repeats(conf.nameservers.drain(..).chain(nameservers).collect());
    let searches = config.searches.iter().flatten().cloned();
    conf.searches = without_repeats(conf.searches.drain(..).chain(searches).collect());
    let options = config.options.iter().flatten().map(|o| match &o.value {
        Some(value) => format!("{}:{value}", o.name.as_deref().unwrap_or_default()),
        None => o.name.clone().unwrap_or_default(),
    });
    merge_options(&mut conf.options, options.filter(|o| !o.is_empty()));
}

/// Cuts `conf` to the API's limits (3 name servers; 32 search domains, each at most 253
/// characters, 2,048 in all), with a `DNSConfigForming` event for each limit exceeded.
fn fit_limits(conf: &mut ResolvConf) -> Vec<PodEvent> {
    let mut events = Vec::new();
    if conf.nameservers.len() > MAX_NAMESERVERS {
        conf.nameservers.truncate(MAX_NAMESERVERS);
        let applied: Vec<String> = conf.nameservers.iter().map(ToString::to_string).collect();
        events.push(PodEvent::warning(
            "",
            "DNSConfigForming",
            format!(
                "Nameserver limits were exceeded, some nameservers have been omitted, the \
                 applied nameserver line is: {}",
                applied.join(" ")
            ),
        ));
    }
    let mut exceeded = conf.searches.len() > MAX_SEARCHES;
    conf.searches.truncate(MAX_SEARCHES);
    let before = conf.searches.len();
    conf.searches.retain(|s| s.len() <= MAX_SEARCH_DOMAIN_CHARS);
    exceeded |= conf.searches.len() != before;
    // The line's length: the domains and a space between each two.
    let line_length = |searches: &[String]| -> usize {
        searches
            .iter()
            .map(|s| s.len() + 1)
            .sum::<usize>()
            .saturating_sub(1)
    };
    while line_length(&conf.searches) > MAX_SEARCH_CHARS {
        conf.searches.pop();
        exceeded = true;
    }
    if exceeded {
        events.push(PodEvent::warning(
            "",
            "DNSConfigForming",
            format!(
                "Search Line limits were exceeded, some search paths have been omitted, the \
                 applied search line is: {}",
                conf.searches.join(" ")
            ),
        ));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HostAlias, PodDNSConfigOption, PodSpec};

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn node(resolv_conf: &str) -> (NodeDns, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, resolv_conf).unwrap();
        let node = NodeDns {
            cluster_dns: vec!["10.96.0.10".parse().unwrap()],
            cluster_domain: "cluster.local".into(),
            resolv_conf: Some(path),
            standalone: false,
        };
        (node, dir)
    }

    const NODE_RESOLV_CONF: &str = "# the node's\nnameserver 192.0.2.53\nnameserver not-an-ip\n\
                                    search old.example\nsearch corp.example. .\n\
                                    options ndots:2 timeout:1\noptions ndots:3\n";

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    #[test]
    fn the_node_file_is_read_as_the_kubelet_reads_it() {
        let conf = ResolvConf::parse(NODE_RESOLV_CONF);
        assert_eq!(conf.nameservers, ips(&["192.0.2.53"]));
        assert_eq!(conf.searches, ["corp.example"]);
        assert_eq!(conf.options, ["ndots:3", "timeout:1"]);
    }

    #[test]
    fn cluster_first_asks_the_cluster_with_its_search_domains() {
        let (node, _dir) = node(NODE_RESOLV_CONF);
        let pod = pod(serde_json::json!({"containers": [], "dnsPolicy": "ClusterFirst"}));
        let (dns, events) = node.pod_dns(&pod, &ips(&["10.244.0.7"])).unwrap();
        assert!(events.is_empty());
        assert_eq!(dns.nameservers, ips(&["10.96.0.10"]));
        assert_eq!(
            dns.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example"
            ]
        );
        assert_eq!(dns.options, ["ndots:5"]);
        let hostname = dns.hosts.iter().find(|h| h.names.contains(&"web-0".into()));
        assert_eq!(hostname.unwrap().ip, ips(&["10.244.0.7"])[0]);
        assert!(dns.hosts.iter().any(|h| h.names == ["localhost"]));
    }

    #[test]
    fn a_missing_policy_is_cluster_first_as_the_api_server_defaults_it() {
        let (node, _dir) = node(NODE_RESOLV_CONF);
        let pod = pod(serde_json::json!({"containers": []}));
        let (dns, _) = node.pod_dns(&pod, &ips(&["10.244.0.7"])).unwrap();
        assert_eq!(dns.nameservers, ips(&["10.96.0.10"]));
    }

    #[test]
    fn host_network_pods_use_the_node_unless_they_ask_for_the_cluster() {
        let (node, _dir) = node(NODE_RESOLV_CONF);
        let host = pod(serde_json::json!({"containers": [], "hostNetwork": true}));
        let (dns, _) = node.pod_dns(&host, &ips(&["192.0.2.1"])).unwrap();
        assert_eq!(dns.nameservers, ips(&["192.0.2.53"]));
        assert_eq!(dns.options, ["ndots:3", "timeout:1"]);
        let with_net = pod(serde_json::json!({
            "containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"
        }));
        let (dns, _) = node.pod_dns(&with_net, &ips(&["192.0.2.1"])).unwrap();
        assert_eq!(dns.nameservers, ips(&["10.96.0.10"]));
    }

    #[test]
    fn default_uses_the_node_file_and_none_only_the_pod_config() {
        let (node, _dir) = node(NODE_RESOLV_CONF);
        let default = pod(serde_json::json!({"containers": [], "dnsPolicy": "Default"}));
        let (dns, _) = node.pod_dns(&default, &ips(&["10.244.0.7"])).unwrap();
        assert_eq!(dns.nameservers, ips(&["192.0.2.53"]));
        assert_eq!(dns.searches, ["corp.example"]);
        let none = pod(serde_json::json!({
            "containers": [], "dnsPolicy": "None",
            "dnsConfig": {
                "nameservers": ["192.0.2.99"], "searches": ["a.example"],
                "options": [{"name": "ndots", "value": "1"}, {"name": "edns0"}]
            }
        }));
        let (dns, _) = node.pod_dns(&none, &ips(&["10.244.0.7"])).unwrap();
        assert_eq!(dns.nameservers, ips(&["192.0.2.99"]));
        assert_eq!(dns.searches, ["a.example"]);
        assert_eq!(dns.options, ["ndots:1", "edns0"]);
    }

    #[test]
    fn without_cluster_dns_cluster_first_falls_back_with_an_event() {
        let (mut node, _dir) = node(NODE_RESOLV_CONF);
        node.cluster_dns.clear();
        let pod = pod(serde_json::json!({"containers": []}));
        let (dns, events) = node.pod_dns(&pod, &ips(&["10.244.0.7"])).unwrap();
        assert_eq!(dns.nameservers, ips(&["192.0.2.53"]));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "MissingClusterDNS");
        node.standalone = true;
        let (dns, events) = node.pod_dns(&pod, &ips(&["10.244.0.7"])).unwrap();
        assert_eq!(dns.nameservers, ips(&["192.0.2.53"]));
        assert!(events.is_empty(), "no cluster, nothing missing: {events:?}");
    }

    #[test]
    fn no_node_file_means_the_local_name_server() {
        let node = NodeDns {
            resolv_conf: None,
            ..NodeDns::default()
        };
        let pod = pod(serde_json::json!({"containers": [], "dnsPolicy": "Default"}));
        let (dns, _) = node.pod_dns(&pod, &ips(&["10.244.0.7"])).unwrap();
        assert_eq!(dns.nameservers, ips(&["127.0.0.1"]));
        let missing = NodeDns {
            resolv_conf: Some("/nonexistent/resolv.conf".into()),
            ..NodeDns::default()
        };
        let error = missing.pod_dns(&pod, &[]).unwrap_err();
        assert!(error.to_string().contains("--resolv-conf"), "{error}");
    }

    #[test]
    fn the_pod_config_is_merged_and_cut_to_the_limits_with_events() {
        let (node, _dir) = node(NODE_RESOLV_CONF);
        let mut pod = pod(serde_json::json!({"containers": []}));
        let long = "x".repeat(254);
        let many: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
        let spec: &mut PodSpec = pod.spec.as_mut().unwrap();
        spec.dns_config = Some(PodDNSConfig {
            nameservers: Some(vec![
                "10.96.0.10".into(),
                "192.0.2.1".into(),
                "192.0.2.2".into(),
                "192.0.2.3".into(),
            ]),
            searches: Some([vec![long], many].concat()),
            options: Some(vec![PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some("2".into()),
            }]),
        });
        let (dns, events) = node.pod_dns(&pod, &[]).unwrap();
        assert_eq!(
            dns.nameservers,
            ips(&["10.96.0.10", "192.0.2.1", "192.0.2.2"])
        );
        assert_eq!(
            dns.searches.len(),
            MAX_SEARCHES - 1,
            "32 kept, the long one left out"
        );
        assert_eq!(dns.options, ["ndots:2"]);
        let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["DNSConfigForming", "DNSConfigForming"]);
        assert!(
            events[0]
                .message
                .ends_with("10.96.0.10 192.0.2.1 192.0.2.2")
        );
    }

    #[test]
    fn a_search_line_over_2048_characters_is_cut_from_the_end() {
        let mut conf = ResolvConf {
            searches: (0..20).map(|i| format!("{i:0>120}")).collect(),
            ..ResolvConf::default()
        };
        let events = fit_limits(&mut conf);
        assert_eq!(conf.searches.len(), 16, "16 x 121 - 1 = 1935 characters");
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn hostname_subdomain_and_aliases_resolve_first() {
        let (node, _dir) = node(NODE_RESOLV_CONF);
        let mut pod = pod(serde_json::json!({
            "containers": [], "hostname": "db", "subdomain": "backends"
        }));
        pod.spec.as_mut().unwrap().host_aliases = Some(vec![HostAlias {
            ip: "192.0.2.80".into(),
            hostnames: Some(vec!["Foo.Local.".into(), "bar".into()]),
        }]);
        let (dns, _) = node.pod_dns(&pod, &ips(&["10.244.0.7"])).unwrap();
        let own = dns.hosts.iter().find(|h| h.ip == ips(&["10.244.0.7"])[0]);
        assert_eq!(
            own.unwrap().names,
            ["db.backends.shop.svc.cluster.local", "db"]
        );
        let alias = dns.hosts.last().unwrap();
        assert_eq!(alias.names, ["foo.local", "bar"]);
        assert_eq!(alias.ip, ips(&["192.0.2.80"])[0]);
    }

    #[test]
    fn a_long_pod_name_is_cut_to_a_hostname() {
        let node = NodeDns::default();
        let mut long = pod(serde_json::json!({"containers": []}));
        long.metadata.name = Some(format!("{}-x", "a".repeat(62)));
        assert_eq!(
            node.hostname(&long).0,
            "a".repeat(62),
            "cut at 63, the '-' trimmed"
        );
        long.metadata.name = Some("é".repeat(40));
        assert_eq!(
            node.hostname(&long).0.len(),
            80,
            "never cut inside a character"
        );
    }

    #[test]
    fn hosts_files_are_parsed_with_comments() {
        let hosts = parse_hosts("127.0.0.1 localhost # loop\n# all\nnot-ip x\n10.0.0.1\tA b\n");
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[1].names, ["a", "b"]);
    }
}
