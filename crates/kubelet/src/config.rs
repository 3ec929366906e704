//! The node agent's configuration, filled by a binary from flags and `KRUSTLET_*` env vars.

use std::net::IpAddr;
use std::path::PathBuf;

/// Everything the node agent needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Node object's name.
    pub node_name: String,
    /// The address other nodes and the API server reach this node on.
    pub node_ip: IpAddr,
    /// The node's hostname (the `kubernetes.io/hostname` label and Hostname address).
    pub hostname: String,
    /// Address the kubelet API listens on.
    pub addr: IpAddr,
    /// Port of the kubelet API (advertised in `daemonEndpoints`).
    pub port: u16,
    /// Where the plain-HTTP `/healthz` is served (`--healthz-bind-address`:`--healthz-port`);
    /// `None`: nowhere.
    pub healthz: Option<std::net::SocketAddr>,
    /// Where images, compiled modules, logs and pod files live.
    pub data_dir: PathBuf,
    /// The node's `pods` capacity.
    pub max_pods: u32,
    /// Extra node labels.
    pub node_labels: Vec<(String, String)>,
    /// Taints the node registers with besides its `krustlet/arch` taint
    /// (`--register-with-taints`).
    pub register_with_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Docker config files with the node's own registry credentials.
    pub image_credentials: Vec<PathBuf>,
    /// Serving certificate and key (PEM); a self-signed pair is made when unset.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Request the kubelet API's serving certificate from the cluster's
    /// `kubernetes.io/kubelet-serving` signer (and renew it) instead of a self-signed one.
    pub rotate_server_certificates: bool,
    /// CA that signs client certificates the kubelet API accepts.
    pub client_ca_file: Option<PathBuf>,
    /// Whether the kubelet API lets requests without credentials through as `system:anonymous`
    /// (they are still authorized, so only `/healthz` answers them).
    pub anonymous_auth: bool,
    /// Mark the node unschedulable before stopping pods at shutdown (undone at the next start).
    pub drain_on_shutdown: bool,
    /// How often the pods' API-backed volumes (configMap, secret, downwardAPI, projected) are
    /// written again from the current objects, and emptyDir size limits checked.
    pub sync_frequency: std::time::Duration,
    /// Directories hostPath volumes must lie in; empty allows any.
    pub allowed_host_paths: Vec<PathBuf>,
    /// How fast pod events are written to the API server.
    pub event_rate: crate::pods::EventRate,
    /// The cluster's DNS and the node's resolver configuration, for pods' name lookups.
    pub dns: crate::pods::dns::NodeDns,
    /// Pod manifests (a file or a directory of them) the node runs as static pods, mirrored
    /// to the API server.
    pub pod_manifest_path: Option<PathBuf>,
    /// How often the static pod manifests are read again.
    pub file_check_frequency: std::time::Duration,
    /// How the node's Lease and status are kept.
    pub heartbeat: crate::node::Heartbeat,
    /// The RuntimeClass handlers the node runs (`--runtime-handlers`); empty: those of its
    /// runtime ([`Config::runtime_handlers`]).
    pub runtime_handlers: Vec<String>,
    /// When unused images are removed.
    pub image_gc: crate::images::gc::GcPolicy,
    /// How often image garbage collection runs.
    pub image_gc_period: std::time::Duration,
    /// The most an image may be, and how long a pull may go without progress.
    pub image_pull: crate::images::PullLimits,
    /// Requests one container serving HTTP may have in flight; more are answered 503.
    pub max_http_requests_per_container: usize,
    /// Slots of each runtime's pool of HTTP instances (`--http-pool-instances`).
    pub http_pool_instances: u32,
    /// Requests of each HTTP container whose instances are reserved for it
    /// (`--http-guaranteed-requests-per-container`).
    pub http_guaranteed_requests_per_container: u32,
    /// CPU time one HTTP request's instance may use (`--http-request-cpu-time`).
    pub http_request_cpu_time: std::time::Duration,
    /// Connections one container's outgoing HTTP requests may hold open at once
    /// (`--max-outgoing-http-connections-per-container`).
    pub max_outgoing_http_connections_per_container: usize,
    /// WASI handles (open files, sockets, streams...) one guest instance may hold at once.
    pub max_guest_handles: usize,
    /// Bytes of keys and values each of a Spin app's key-value stores may hold
    /// (`--max-key-value-store-size`).
    pub max_key_value_store_size: u64,
    /// Name lookups one container's guests may have asking name servers at once.
    pub max_name_lookups_per_container: usize,
    /// Bytes of each pooled HTTP instance's memory and table kept between requests.
    pub http_instance_keep_resident: usize,
    /// Bounds on the clients of the ports each container serves.
    pub http_serving: crate::runtime::ServeLimits,
    /// What each runtime's containers may hold of its file descriptors.
    pub descriptors: crate::runtime::DescriptorLimits,
    /// How long one HTTP request's instance may run (`--http-request-timeout`).
    pub http_request_timeout: std::time::Duration,
    /// How long a request's instance may run on once its answer is complete
    /// (`--http-return-grace`).
    pub http_return_grace: std::time::Duration,
    /// When container log files are rotated.
    pub container_logs: crate::logs::LogPolicy,
    /// The kubelet API's connection cap and handshake timeout.
    pub api_limits: crate::server::ApiLimits,
    /// Where the node's CNI network configuration is read from (`--cni-conf-dir`).
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugin binaries are looked for, in order (`--cni-bin-dir`).
    pub cni_bin_dirs: Vec<PathBuf>,
    /// How long one CNI plugin call may take before it is killed (`--cni-plugin-timeout`).
    pub cni_plugin_timeout: std::time::Duration,
}

impl Config {
    /// The RuntimeClass handlers the node runs: `--runtime-handlers`, else those a runtime of
    /// `arch` answers to (the names runwasi's shims and SpinKube give them: `spin` for Spin
    /// apps, `wasmtime` for WASI; `wascc` for actors).
    pub fn runtime_handlers(&self, arch: &str) -> Vec<String> {
        if !self.runtime_handlers.is_empty() {
            return self.runtime_handlers.clone();
        }
        let defaults: &[&str] = match arch {
            "wasm32-wascc" => &["wascc"],
            _ => &["wasmtime", "spin", "wasi"],
        };
        defaults.iter().map(|h| h.to_string()).collect()
    }

    /// The hostname of this machine, lowercased as Kubernetes wants node names.
    pub fn detect_hostname() -> String {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .to_lowercase()
    }

    /// The address this machine uses to reach other hosts (the source of its default route),
    /// found without sending anything; loopback when there is no route.
    pub fn detect_ip() -> IpAddr {
        let probe = || -> std::io::Result<IpAddr> {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
            socket.connect("192.0.2.1:9")?;
            Ok(socket.local_addr()?.ip())
        };
        probe().unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }
}
