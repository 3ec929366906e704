//! What the node binaries share at their edge: the kubelet's flags, the Kubernetes client (or
//! the TLS bootstrap that makes one), signals, and start-up. A binary adds its runtime.

#![warn(missing_docs)]

use anyhow::{Context, bail};
use kubelet::config::Config;
use kubelet::runtime::Runtime;
use kubelet::tls::csr::CertificateRequest;
use kubelet::tls::identity::NodeCertificate;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub mod config_file;
pub mod logging;

/// The node agent's flags, flattened into each binary's command line.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// A configuration file (YAML or JSON): the kubelet's `KubeletConfiguration`
    /// (kubelet.config.k8s.io/v1beta1, as kubeadm writes /var/lib/kubelet/config.yaml) and, in
    /// the same file, this node's own settings as a `KrustletConfiguration`
    /// (krustlet.dev/v1alpha1: any flag by its camelCase name). Flags on the command line win
    /// over the file, and the file over KRUSTLET_* variables; see docs/operations.md.
    #[arg(long, env = "KRUSTLET_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    logging: logging::LoggingArgs,
    /// The node's kubeconfig (default <data-dir>/kubeconfig; with --bootstrap-file, written by
    /// the TLS bootstrap when missing). As on the kubelet, the KUBECONFIG environment variable
    /// is not read: an administrator's kubeconfig is never the node's by accident, and the
    /// bootstrap never writes over a file it did not write.
    #[arg(long, env = "KRUSTLET_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// A kubeconfig holding a bootstrap token. When the --kubeconfig file does not exist, the
    /// node requests its client certificate with a CSR (signer
    /// kubernetes.io/kube-apiserver-client-kubelet), waits until it is issued, and writes it.
    /// Also `--bootstrap-kubeconfig`, the kubelet's name.
    #[arg(long, env = "KRUSTLET_BOOTSTRAP_FILE", alias = "bootstrap-kubeconfig")]
    bootstrap_file: Option<PathBuf>,
    /// Run the pods of --pod-manifest-path without an API server, print their output, and exit
    /// when they have all finished.
    #[arg(long, env = "KRUSTLET_STANDALONE")]
    standalone: bool,
    /// A pod manifest file, or a directory of them, to run as static pods: with --standalone
    /// alone; in a cluster beside the API server's pods, each mirrored to it as a mirror pod.
    #[arg(long, env = "KRUSTLET_POD_MANIFEST_PATH")]
    pod_manifest_path: Option<PathBuf>,
    /// How often the static pod manifests are read again in a cluster, e.g. `20s`.
    #[arg(long, env = "KRUSTLET_FILE_CHECK_FREQUENCY", default_value = "20s", value_parser = parse_period)]
    file_check_frequency: std::time::Duration,
    /// How often the node's status is computed and posted when it changed, as the kubelet's
    /// flag.
    #[arg(long, env = "KRUSTLET_NODE_STATUS_UPDATE_FREQUENCY", default_value = "10s", value_parser = parse_period)]
    node_status_update_frequency: std::time::Duration,
    /// The longest time between node status posts when nothing changed (the kubelet's
    /// nodeStatusReportFrequency).
    #[arg(long, env = "KRUSTLET_NODE_STATUS_REPORT_FREQUENCY", default_value = "5m", value_parser = parse_period)]
    node_status_report_frequency: std::time::Duration,
    /// The node Lease's duration in seconds (the kubelet's nodeLeaseDurationSeconds); it is
    /// renewed every quarter of it.
    #[arg(long, env = "KRUSTLET_NODE_LEASE_DURATION_SECONDS", default_value_t = 40, value_parser = clap::value_parser!(u32).range(4..=3600))]
    node_lease_duration_seconds: u32,
    /// Name of the Node object (default: the hostname). Also `--hostname-override`, the
    /// kubelet's name.
    #[arg(long, env = "KRUSTLET_NODE_NAME", alias = "hostname-override")]
    node_name: Option<String>,
    /// IP address of the node, advertised as InternalIP and used as every pod's IP (default:
    /// the address of the default route).
    #[arg(long, env = "KRUSTLET_NODE_IP")]
    node_ip: Option<IpAddr>,
    /// Hostname to advertise (default: the machine's).
    #[arg(long, env = "KRUSTLET_HOSTNAME")]
    hostname: Option<String>,
    /// Address the kubelet API listens on.
    #[arg(long, env = "KRUSTLET_ADDR", default_value = "0.0.0.0")]
    addr: IpAddr,
    /// Port of the kubelet API (logs, pods), advertised in the Node's daemonEndpoints.
    #[arg(long, env = "KRUSTLET_PORT", default_value_t = 10250)]
    port: u16,
    /// Port of the plain-HTTP health endpoint (`GET /healthz` answers `ok`), which `kubeadm
    /// join` waits on; 0 serves none. As on the kubelet, a port that cannot be bound is logged
    /// and tried again every 5 s.
    #[arg(long, env = "KRUSTLET_HEALTHZ_PORT", default_value_t = 10248)]
    healthz_port: u16,
    /// Address of the health endpoint.
    #[arg(
        long,
        env = "KRUSTLET_HEALTHZ_BIND_ADDRESS",
        default_value = "127.0.0.1"
    )]
    healthz_bind_address: IpAddr,
    /// Directory for images, compiled modules, logs and pod files (default: ~/.krustlet). Also
    /// `--root-dir`, the kubelet's name.
    #[arg(long, env = "KRUSTLET_DATA_DIR", alias = "root-dir")]
    data_dir: Option<PathBuf>,
    /// Most pods this node runs at once (the Node's pod capacity).
    #[arg(long, env = "KRUSTLET_MAX_PODS", default_value_t = 110)]
    max_pods: u32,
    /// Extra node labels, `key=value[,key=value...]`.
    #[arg(long, env = "KRUSTLET_NODE_LABELS", value_delimiter = ',', value_parser = parse_label)]
    node_labels: Vec<(String, String)>,
    /// Taints the node registers with besides its `krustlet/arch=<arch>:NoExecute` taint, as
    /// the kubelet's flag: `key[=value]:effect[,...]`, effect NoSchedule, PreferNoSchedule or
    /// NoExecute.
    #[arg(long, env = "KRUSTLET_REGISTER_WITH_TAINTS", value_delimiter = ',', value_parser = parse_taint)]
    register_with_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// The kubelet's CRI endpoint (kubeadm passes it): accepted so that kubeadm's unit starts
    /// this node unchanged, and ignored (a wasm node runs its guests itself), with a log line.
    #[arg(long, env = "KRUSTLET_CONTAINER_RUNTIME_ENDPOINT", hide = true)]
    container_runtime_endpoint: Option<String>,
    /// The RuntimeClass handlers this node runs, `name[,name...]`: a pod whose RuntimeClass
    /// names another is not started (FailedCreatePodSandBox, as containerd refuses a handler it
    /// has no runtime for). Default: `wasmtime,spin,wasi` for krustlet-wasi (SpinKube's
    /// RuntimeClass names the handler `spin`), `wascc` for krustlet-wascc.
    #[arg(long, env = "KRUSTLET_RUNTIME_HANDLERS", value_delimiter = ',')]
    runtime_handlers: Vec<String>,
    /// The kubelet's sandbox image (kubeadm up to 1.34 writes it into kubeadm-flags.env):
    /// accepted and ignored as the kubelet 1.32 does (a no-op there too), with a log line.
    #[arg(long, hide = true)]
    pod_infra_container_image: Option<String>,
    /// Registries to reach over plain HTTP, `host[:port][,...]`.
    #[arg(
        long,
        env = "KRUSTLET_INSECURE_REGISTRIES",
        value_delimiter = ',',
        global = true
    )]
    insecure_registries: Vec<String>,
    /// Docker config file(s) with the node's own registry credentials, used after a pod's
    /// imagePullSecrets (default: ~/.docker/config.json when it exists).
    #[arg(
        long,
        env = "KRUSTLET_IMAGE_CREDENTIALS",
        value_delimiter = ',',
        global = true
    )]
    image_credentials: Vec<PathBuf>,
    /// Serving certificate (PEM) of the kubelet API (default: a self-signed one).
    #[arg(long, env = "KRUSTLET_CERT_FILE", requires = "private_key_file")]
    cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, env = "KRUSTLET_PRIVATE_KEY_FILE", requires = "cert_file")]
    private_key_file: Option<PathBuf>,
    /// Request the kubelet API's serving certificate from the cluster (a CSR to the
    /// kubernetes.io/kubelet-serving signer, which an operator or an approver approves) and
    /// renew it before it expires, instead of a self-signed one.
    #[arg(
        long,
        env = "KRUSTLET_ROTATE_SERVER_CERTIFICATES",
        conflicts_with = "cert_file"
    )]
    rotate_server_certificates: bool,
    /// CA (PEM) whose client certificates authenticate kubelet API clients (the CA of the API
    /// server's kubelet client certificate); bearer tokens are checked with a TokenReview.
    #[arg(long, env = "KRUSTLET_CLIENT_CA_FILE")]
    client_ca_file: Option<PathBuf>,
    /// Let requests to the kubelet API without credentials through as system:anonymous; they are
    /// still authorized (SubjectAccessReview), so by default only /healthz answers them.
    /// Without it they get 401.
    #[arg(long, env = "KRUSTLET_ANONYMOUS_AUTH")]
    anonymous_auth: bool,
    /// How often mounted ConfigMaps, Secrets, downward API files and service account tokens
    /// are brought up to date (and emptyDir size limits checked), e.g. `1m`, `30s`.
    #[arg(long, env = "KRUSTLET_SYNC_FREQUENCY", default_value = "1m", value_parser = parse_period)]
    sync_frequency: std::time::Duration,
    /// Directories hostPath volumes must lie in, `dir[,dir...]`; a pod with a hostPath
    /// elsewhere gets a FailedMount event saying so. Empty (the default) allows any.
    #[arg(long, env = "KRUSTLET_ALLOWED_HOST_PATHS", value_delimiter = ',')]
    allowed_host_paths: Vec<PathBuf>,
    /// Pod events written to the API server a second at most (0: unlimited); more wait in the
    /// event queue (as the kubelet's --event-qps).
    #[arg(long, env = "KRUSTLET_EVENT_QPS", default_value_t = 50)]
    event_qps: u32,
    /// Pod events written at once after a quiet time (as the kubelet's --event-burst).
    #[arg(long, env = "KRUSTLET_EVENT_BURST", default_value_t = 100)]
    event_burst: u32,
    /// The cluster's DNS servers, `ip[,ip...]`: ClusterFirst pods' names resolve there. Without
    /// them, such pods fall back to --resolv-conf with a MissingClusterDNS event (as the
    /// kubelet's --cluster-dns).
    #[arg(long, env = "KRUSTLET_CLUSTER_DNS", value_delimiter = ',')]
    cluster_dns: Vec<std::net::IpAddr>,
    /// The cluster's domain (e.g. `cluster.local`): ClusterFirst pods search
    /// `<namespace>.svc.<domain>`, `svc.<domain>` and `<domain>`. Empty: no such search.
    #[arg(long, env = "KRUSTLET_CLUSTER_DOMAIN", default_value = "")]
    cluster_domain: String,
    /// The resolver configuration Default pods (and hostNetwork pods) use, and whose search
    /// domains ClusterFirst pods add; "" gives them the local machine's name server.
    #[arg(long, env = "KRUSTLET_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Disk use (percent) of the image store's filesystem above which unused images are
    /// removed, least recently used first.
    #[arg(long, env = "KRUSTLET_IMAGE_GC_HIGH_THRESHOLD", default_value_t = 85, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_high_threshold: u8,
    /// Disk use (percent) image garbage collection brings the filesystem down to.
    #[arg(long, env = "KRUSTLET_IMAGE_GC_LOW_THRESHOLD", default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_low_threshold: u8,
    /// How long an image must be unused before it may be removed.
    #[arg(long, env = "KRUSTLET_IMAGE_MINIMUM_GC_AGE", default_value = "2m", value_parser = parse_duration)]
    image_minimum_gc_age: std::time::Duration,
    /// Unused longer than this, an image is removed whatever the disk use (0s: never).
    #[arg(long, env = "KRUSTLET_IMAGE_MAXIMUM_GC_AGE", default_value = "0s", value_parser = parse_duration)]
    image_maximum_gc_age: std::time::Duration,
    /// How often image garbage collection runs.
    #[arg(long, env = "KRUSTLET_IMAGE_GC_PERIOD", default_value = "5m", value_parser = parse_period)]
    image_gc_period: std::time::Duration,
    /// The most an image may be (its layers together, and what a compressed layer unpacks
    /// to), as a Kubernetes quantity: `1Gi`, `512Mi`. A larger image fails with ErrImagePull.
    #[arg(long, env = "KRUSTLET_MAX_IMAGE_SIZE", default_value = "1Gi", value_parser = parse_bytes, global = true)]
    max_image_size: u64,
    /// A pull that receives less than 64 KiB in this long is cancelled (ErrImagePull, then
    /// back-off), as the kubelet's flag of the same name did.
    #[arg(long, env = "KRUSTLET_IMAGE_PULL_PROGRESS_DEADLINE", default_value = "1m", value_parser = parse_duration, global = true)]
    image_pull_progress_deadline: std::time::Duration,
    /// Requests one container serving HTTP (a wasi-http component) may have in flight, each
    /// holding instances of its runtime's pool; more are answered 503 at once, so that one
    /// pod's clients cannot take every instance.
    #[arg(long, env = "KRUSTLET_MAX_HTTP_REQUESTS_PER_CONTAINER", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    max_http_requests_per_container: u32,
    /// Slots of each runtime's pool of HTTP instances (the agent's, or each runtime worker's):
    /// of component instances, core instances, memories, tables and stacks each. A request
    /// takes one slot per core module its component instantiates (three for most components);
    /// each slot reserves 6 GiB of address space, none of memory until used.
    #[arg(long, env = "KRUSTLET_HTTP_POOL_INSTANCES", default_value_t = 4000, value_parser = clap::value_parser!(u32).range(1..=10000))]
    http_pool_instances: u32,
    /// Requests of each HTTP container whose instances are reserved for it alone: however
    /// busy the other pods are, it can serve this many at once. A container is started only
    /// when its runtime's pool can hold this beside every other container's reservation
    /// (else it waits in CreateContainerError); requests past it borrow unreserved instances.
    #[arg(long, env = "KRUSTLET_HTTP_GUARANTEED_REQUESTS_PER_CONTAINER", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    http_guaranteed_requests_per_container: u32,
    /// CPU time one HTTP request's instance may use (its wasm running, not its waiting); past
    /// it the instance is stopped and its request answered 500 (or its streaming answer cut).
    #[arg(long, env = "KRUSTLET_HTTP_REQUEST_CPU_TIME", default_value = "1m", value_parser = parse_period)]
    http_request_cpu_time: std::time::Duration,
    /// Connections one container's outgoing HTTP requests (wasi:http/outgoing-handler) may
    /// hold open at once; a request past it fails with connection-limit-reached, so that one
    /// pod cannot take its runtime process's file descriptors.
    #[arg(long, env = "KRUSTLET_MAX_OUTGOING_HTTP_CONNECTIONS_PER_CONTAINER", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_outgoing_http_connections_per_container: u32,
    /// WASI handles one guest instance (a module, a command, one HTTP request's instance) may
    /// hold at once: open files and directories, sockets, streams, pollables, HTTP requests.
    /// Past it, the call that would open one more traps the guest, so that no guest can take
    /// its process's file descriptors from the others (as a container's RLIMIT_NOFILE).
    #[arg(long, env = "KRUSTLET_MAX_GUEST_HANDLES", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(64..))]
    max_guest_handles: u32,
    /// Name lookups one container's guests may have asking name servers at once (each asks
    /// with a few sockets, each one of the container's file descriptors, until it is answered
    /// or times out); more wait their turn holding none, so that one pod's unanswered lookups
    /// cannot take its runtime process's file descriptors.
    #[arg(long, env = "KRUSTLET_MAX_NAME_LOOKUPS_PER_CONTAINER", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    max_name_lookups_per_container: u32,
    /// Memory each pooled HTTP instance's slot keeps between requests, per linear memory and
    /// per table (a Kubernetes quantity): the pages a request wrote are reset in place up to
    /// this much (Linux 6.7+), which spares the next request page faults and the node TLB
    /// shootdowns; the rest is given back. `0` gives everything back, as `wasmtime serve` does.
    #[arg(long, env = "KRUSTLET_HTTP_INSTANCE_KEEP_RESIDENT", default_value = "1Mi", value_parser = parse_bytes_or_zero)]
    http_instance_keep_resident: u64,
    /// Bytes of keys and values each key-value store of a Spin app may hold (a Kubernetes
    /// quantity); a write past it fails in the guest with the store's size in the error. The
    /// stores are kept in a SQLite file per container under the pod's directory in the data
    /// dir, across the container's restarts.
    #[arg(long, env = "KRUSTLET_MAX_KEY_VALUE_STORE_SIZE", default_value = "64Mi", value_parser = parse_bytes)]
    max_key_value_store_size: u64,
    /// File descriptors all containers of a runtime process together may hold: connections to
    /// their served ports, their outgoing connections and name lookups, the files, directories
    /// and sockets their guests open. Default: three quarters of the process's open-file
    /// limit, the rest left to the node's own work.
    #[arg(long, env = "KRUSTLET_MAX_POD_DESCRIPTORS", value_parser = clap::value_parser!(u32).range(1..))]
    max_pod_descriptors: Option<u32>,
    /// File descriptors each container is guaranteed whatever other pods hold (its first
    /// connections, lookups and open files); a container a runtime cannot guarantee this is not
    /// started until it can.
    #[arg(
        long,
        env = "KRUSTLET_GUARANTEED_DESCRIPTORS_PER_CONTAINER",
        default_value_t = 16
    )]
    guaranteed_descriptors_per_container: u32,
    /// Files, directories and sockets one container's guests may have open at once, all its
    /// instances together (as a container's RLIMIT_NOFILE: containerd's default soft limit);
    /// one more fails for the guest with a "too many open files" error.
    #[arg(long, env = "KRUSTLET_MAX_OPEN_FILES_PER_CONTAINER", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_open_files_per_container: u32,
    /// Connections open at once on the ports one container serves (wasi-http, waSCC
    /// http_server); one more is answered 503 and closed, so that one pod's clients cannot
    /// take the runtime process's file descriptors from the other pods.
    #[arg(long, env = "KRUSTLET_HTTP_MAX_CONNECTIONS_PER_CONTAINER", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    http_max_connections_per_container: u32,
    /// How long a client of a served port has to send a request's headers once it has begun
    /// (nginx's client_header_timeout); a slower one is disconnected.
    #[arg(long, env = "KRUSTLET_HTTP_HEADER_READ_TIMEOUT", default_value = "60s", value_parser = parse_period)]
    http_header_read_timeout: std::time::Duration,
    /// A connection to a served port with no request in flight (a new one too) is closed after
    /// this long (nginx's keepalive_timeout).
    #[arg(long, env = "KRUSTLET_HTTP_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_period)]
    http_idle_timeout: std::time::Duration,
    /// A request body that the guest reads and that brings nothing for this long fails the
    /// read (nginx's client_body_timeout).
    #[arg(long, env = "KRUSTLET_HTTP_BODY_READ_TIMEOUT", default_value = "60s", value_parser = parse_period)]
    http_body_read_timeout: std::time::Duration,
    /// How long one HTTP request's instance (a wasi-http component's) may run, from its start
    /// to its handler's return; past it the instance is stopped (a streaming answer is cut).
    #[arg(long, env = "KRUSTLET_HTTP_REQUEST_TIMEOUT", default_value = "10m", value_parser = parse_period)]
    http_request_timeout: std::time::Duration,
    /// How long a request's instance may run on once its answer is complete (the handler's
    /// work after the response, as `wasmtime serve` allows); past it the instance is stopped
    /// and its place among the container's requests in flight is free again.
    #[arg(long, env = "KRUSTLET_HTTP_RETURN_GRACE", default_value = "30s", value_parser = parse_period)]
    http_return_grace: std::time::Duration,
    /// A container's log file at least this large is rotated (a Kubernetes quantity).
    #[arg(long, env = "KRUSTLET_CONTAINER_LOG_MAX_SIZE", default_value = "10Mi", value_parser = parse_bytes)]
    container_log_max_size: u64,
    /// How many log files of a container are kept, the current one included.
    #[arg(long, env = "KRUSTLET_CONTAINER_LOG_MAX_FILES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..))]
    container_log_max_files: u32,
    /// The most kubelet API connections served at once; further clients wait in the listen
    /// backlog until one ends.
    #[arg(long, env = "KRUSTLET_KUBELET_API_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    kubelet_api_max_connections: u32,
    /// How long a kubelet API client has to finish its TLS handshake, and then to send each
    /// request's headers, before its connection is closed.
    #[arg(long, env = "KRUSTLET_KUBELET_API_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    kubelet_api_handshake_timeout: std::time::Duration,
    /// On SIGTERM/SIGINT, mark the node unschedulable before stopping its pods (the agent undoes
    /// its own cordon when it starts again). Without it, pods are stopped and reported, and the
    /// node stays schedulable.
    #[arg(long, env = "KRUSTLET_DRAIN_ON_SHUTDOWN")]
    drain_on_shutdown: bool,
    /// How many runtime worker processes hold the guests (default: the machine's cores, at
    /// most 4). Workers outlive the agent: a restart, a crash or an upgrade of the agent leaves
    /// the guests running, and a worker's crash ends only its own guests. 0 runs the guests in
    /// the agent's process (they then end with it). Standalone mode always runs them in the
    /// agent.
    #[arg(long, env = "KRUSTLET_RUNTIME_WORKERS")]
    runtime_workers: Option<usize>,
    /// Where the node's CNI network configuration is read from at start (the first
    /// `.conflist`, `.conf` or `.json` file in lexical order, as containerd reads it). With
    /// one, pods that serve a port or may reach a destination get a network namespace and IP
    /// of their own; without one, every pod uses the node's network.
    #[arg(long, env = "KRUSTLET_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Where CNI plugin binaries are looked for, `dir[:dir...]` in order (Debian's
    /// containernetworking-plugins installs them in /usr/lib/cni).
    #[arg(
        long,
        env = "KRUSTLET_CNI_BIN_DIR",
        default_value = "/opt/cni/bin",
        value_delimiter = ':'
    )]
    cni_bin_dir: Vec<PathBuf>,
    /// How long one CNI plugin call (ADD, CHECK, DEL) may take; past it the plugin is killed
    /// with everything it started, and the pod's start fails and is tried again with back-off.
    #[arg(long, env = "KRUSTLET_CNI_PLUGIN_TIMEOUT", default_value = "60s", value_parser = parse_period)]
    cni_plugin_timeout: std::time::Duration,
}

impl NodeArgs {
    /// How many runtime workers to run: the flag, else the machine's cores up to 4.
    fn runtime_workers(&self) -> usize {
        self.runtime_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)))
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration like 1m or 30s: {e}"))?;
    std::time::Duration::try_from(duration).map_err(|_| format!("{text:?} is negative"))
}

/// A period something runs at: a duration above zero (a zero period would spin).
fn parse_period(text: &str) -> Result<std::time::Duration, String> {
    let period = parse_duration(text)?;
    if period.is_zero() {
        return Err(format!(
            "{text:?} is not a period: give one above zero, like 1m or 30s"
        ));
    }
    Ok(period)
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    let quantity = k8s_openapi::apimachinery::pkg::api::resource::Quantity(text.to_string());
    kubelet::pods::resources::bytes(&quantity)
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| format!("{text:?} is not a size like 1Gi or 500Mi"))
}

/// A size as [`parse_bytes`] reads it, or `0`.
fn parse_bytes_or_zero(text: &str) -> Result<u64, String> {
    if text.trim() == "0" {
        return Ok(0);
    }
    parse_bytes(text)
}

/// A taint as the kubelet's `--register-with-taints` takes it: `key[=value]:effect`.
fn parse_taint(text: &str) -> Result<k8s_openapi::api::core::v1::Taint, String> {
    let (key_value, effect) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not key[=value]:effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "{text:?}: the effect {effect:?} is none of NoSchedule, PreferNoSchedule, NoExecute"
        ));
    }
    let (key, value) = match key_value.split_once('=') {
        Some((key, value)) => (key, Some(value.to_string())),
        None => (key_value, None),
    };
    if key.is_empty() {
        return Err(format!("{text:?} has no key"));
    }
    Ok(k8s_openapi::api::core::v1::Taint {
        key: key.to_string(),
        value,
        effect: effect.to_string(),
        time_added: None,
    })
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

impl NodeArgs {
    /// The docker config files with registry credentials: --image-credentials, else
    /// ~/.docker/config.json when it exists.
    fn image_credentials(&self) -> Vec<PathBuf> {
        if !self.image_credentials.is_empty() {
            return self.image_credentials.clone();
        }
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".docker/config.json"))
            .filter(|p| p.is_file())
            .into_iter()
            .collect()
    }

    /// The node agent's configuration from the flags.
    pub fn config(&self) -> anyhow::Result<Config> {
        if self.image_gc_low_threshold > self.image_gc_high_threshold {
            anyhow::bail!(
                "--image-gc-low-threshold ({}) must not be above --image-gc-high-threshold ({})",
                self.image_gc_low_threshold,
                self.image_gc_high_threshold
            );
        }
        let hostname = self
            .hostname
            .clone()
            .unwrap_or_else(Config::detect_hostname);
        let data_dir = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => std::env::var_os("HOME")
                .map(PathBuf::from)
                .context("set --data-dir (there is no $HOME)")?
                .join(".krustlet"),
        };
        Ok(Config {
            node_name: self.node_name.clone().unwrap_or_else(|| hostname.clone()),
            node_ip: self.node_ip.unwrap_or_else(Config::detect_ip),
            hostname,
            addr: self.addr,
            port: self.port,
            healthz: (self.healthz_port != 0)
                .then(|| std::net::SocketAddr::new(self.healthz_bind_address, self.healthz_port)),
            data_dir,
            max_pods: self.max_pods,
            node_labels: self.node_labels.clone(),
            register_with_taints: self.register_with_taints.clone(),
            insecure_registries: self.insecure_registries.clone(),
            image_credentials: self.image_credentials(),
            tls: self.cert_file.clone().zip(self.private_key_file.clone()),
            rotate_server_certificates: self.rotate_server_certificates,
            client_ca_file: self.client_ca_file.clone(),
            anonymous_auth: self.anonymous_auth,
            drain_on_shutdown: self.drain_on_shutdown,
            sync_frequency: self.sync_frequency,
            pod_manifest_path: self.pod_manifest_path.clone(),
            file_check_frequency: self.file_check_frequency,
            runtime_handlers: self.runtime_handlers.clone(),
            heartbeat: kubelet::node::Heartbeat {
                status_update_frequency: self.node_status_update_frequency,
                status_report_frequency: self.node_status_report_frequency,
                lease_duration: std::time::Duration::from_secs(u64::from(
                    self.node_lease_duration_seconds,
                )),
            },
            allowed_host_paths: self.allowed_host_paths.clone(),
            event_rate: kubelet::pods::EventRate {
                qps: self.event_qps,
                burst: self.event_burst,
            },
            dns: kubelet::pods::dns::NodeDns {
                cluster_dns: self.cluster_dns.clone(),
                cluster_domain: self.cluster_domain.trim_end_matches('.').to_string(),
                resolv_conf: Some(self.resolv_conf.clone())
                    .filter(|path| !path.as_os_str().is_empty()),
                standalone: self.standalone,
            },
            image_gc: kubelet::images::gc::GcPolicy {
                high_threshold: self.image_gc_high_threshold,
                low_threshold: self.image_gc_low_threshold,
                minimum_age: self.image_minimum_gc_age,
                maximum_age: self.image_maximum_gc_age,
            },
            image_gc_period: self.image_gc_period,
            max_http_requests_per_container: self.max_http_requests_per_container as usize,
            http_pool_instances: self.http_pool_instances,
            http_guaranteed_requests_per_container: self.http_guaranteed_requests_per_container,
            http_request_cpu_time: self.http_request_cpu_time,
            max_outgoing_http_connections_per_container: self
                .max_outgoing_http_connections_per_container
                as usize,
            max_guest_handles: self.max_guest_handles as usize,
            max_name_lookups_per_container: self.max_name_lookups_per_container as usize,
            max_key_value_store_size: self.max_key_value_store_size,
            http_instance_keep_resident: usize::try_from(self.http_instance_keep_resident)
                .unwrap_or(usize::MAX),
            http_request_timeout: self.http_request_timeout,
            http_return_grace: self.http_return_grace,
            http_serving: kubelet::runtime::ServeLimits {
                max_connections: self.http_max_connections_per_container as usize,
                header_read_timeout: self.http_header_read_timeout,
                idle_timeout: self.http_idle_timeout,
                body_read_timeout: self.http_body_read_timeout,
            },
            descriptors: kubelet::runtime::DescriptorLimits {
                total: self.max_pod_descriptors,
                guaranteed_per_container: self.guaranteed_descriptors_per_container,
                open_files_per_container: self.max_open_files_per_container,
            },
            container_logs: kubelet::logs::LogPolicy {
                max_size: self.container_log_max_size,
                max_files: self.container_log_max_files as usize,
            },
            api_limits: kubelet::server::ApiLimits {
                max_connections: self.kubelet_api_max_connections as usize,
                handshake_timeout: self.kubelet_api_handshake_timeout,
            },
            image_pull: kubelet::images::PullLimits {
                max_image_size: self.max_image_size,
                progress_deadline: self.image_pull_progress_deadline,
            },
            cni_conf_dir: self.cni_conf_dir.clone(),
            cni_bin_dirs: self.cni_bin_dir.clone(),
            cni_plugin_timeout: self.cni_plugin_timeout,
        })
    }
}

async fn kube_config(path: &Path) -> anyhow::Result<kube::Config> {
    if !path.exists() {
        bail!(
            "no kubeconfig at {}: pass --kubeconfig, --bootstrap-file to join with a bootstrap token, or --standalone",
            path.display()
        );
    }
    let file = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
        .await
        .with_context(|| format!("using kubeconfig {}", path.display()))
}

fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
        cancel.cancel();
    });
    token
}

/// Raises the open-file limit as far as this process may: every running pod holds its log file
/// and its preopened directories open. Up to the system's `fs.nr_open` when privileged (what the
/// kubelet's and containerd's systemd units configure), else the soft limit to the hard one (what
/// Go programs such as the kubelet do at start).
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let privileged = ceiling.is_some_and(|max| {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        )
        .is_ok()
    });
    if !privileged {
        let raised = Rlimit {
            current: current.maximum,
            maximum: current.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "raising the open-file limit failed; pods may run out of file descriptors");
        }
    }
    let limit = getrlimit(Resource::Nofile).current;
    tracing::debug!(?limit, "open-file limit");
}

/// What a node binary can do besides running a node.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Push a .wasm module or component to a registry as a wasm OCI artifact (CNCF layout),
    /// or a Spin app (a directory with spin.toml, or the spin.toml) as `spin registry push`
    /// does, with the registry credentials of --image-credentials (default
    /// ~/.docker/config.json) and the plain-HTTP registries of --insecure-registries.
    Push {
        /// The .wasm file, or the Spin app's directory or spin.toml.
        module: PathBuf,
        /// Where to push it, `registry/repository:tag`.
        image: String,
    },
    /// Serve as a runtime worker on a unix socket (the node agent starts these itself, with
    /// its own flags).
    #[command(hide = true)]
    Worker {
        /// The socket to serve the agent on.
        #[arg(long)]
        socket: PathBuf,
    },
}

/// Pushes `module` (a .wasm file, or a Spin app's directory or spin.toml) to `image` with the
/// flags' credentials and registries.
async fn push(module: PathBuf, image: String, args: &NodeArgs) -> anyhow::Result<()> {
    let mut keyring = kubelet::images::credentials::Keyring::default();
    for path in args.image_credentials() {
        let text = std::fs::read(&path)
            .with_context(|| format!("reading --image-credentials {}", path.display()))?;
        keyring
            .add_docker_config(&text)
            .map_err(|e| anyhow::anyhow!("registry credentials in {}: {}", path.display(), e.0))?;
    }
    let spin_app_dir = if module.is_dir() {
        Some(module.clone())
    } else if module.file_name().is_some_and(|name| name == "spin.toml") {
        Some(
            module
                .parent()
                .map_or_else(|| PathBuf::from("."), PathBuf::from),
        )
    } else {
        None
    };
    let url = match spin_app_dir {
        Some(dir) => {
            let locked = spin_runtime::lock::lock_dir(&dir)
                .with_context(|| format!("reading the Spin app in {}", dir.display()))?;
            let layers = kubelet::images::SpinAppLayers {
                locked: locked.json,
                components: locked.components,
                files: locked.files,
            };
            kubelet::images::push_spin_app(&image, layers, &keyring, &args.insecure_registries)
                .await?
        }
        None => {
            let bytes =
                std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?;
            kubelet::images::push_module(&image, bytes, &keyring, &args.insecure_registries).await?
        }
    };
    println!("pushed {} to {image} ({url})", module.display());
    Ok(())
}

/// Sets up what every binary needs once its flags are read: logging to stderr as `args` say
/// (`RUST_LOG` wins over `-v`), the TLS crypto provider, the open-file limit.
pub fn init(args: &NodeArgs) {
    logging::init(&args.logging);
    let _ = rustls::crypto::ring::default_provider().install_default();
    raise_open_files_limit();
}

/// What reading the configuration file found to say, once logging is set up.
#[derive(Debug, Default)]
pub struct ConfigNotes {
    path: Option<PathBuf>,
    not_applied: Vec<String>,
}

impl ConfigNotes {
    /// Names, in one warning line, the file's fields that do not apply to this node.
    pub fn log(&self) {
        if let Some(path) = &self.path
            && !self.not_applied.is_empty()
        {
            tracing::warn!(
                file = %path.display(),
                "these configuration fields do not apply to this node and were not used: {}",
                self.not_applied.join(", ")
            );
        }
    }
}

/// The command line of a node binary `C`, with the settings of its `--config` file (if any)
/// placed before the real flags; and what is to be said about the file ([`ConfigNotes::log`],
/// once logging is set up with [`init`]).
pub fn parse_args<C: clap::Parser>() -> anyhow::Result<(C, ConfigNotes)> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let Some(path) = config_file::config_path(&args) else {
        return Ok((C::parse_from(args), ConfigNotes::default()));
    };
    let file = config_file::load::<C>(&path)?;
    config_file::check::<C>(&path, &file)?;
    let (args, not_applied) = config_file::with_file_args::<C>(args, file);
    Ok((
        C::parse_from(args),
        ConfigNotes {
            path: Some(path),
            not_applied,
        },
    ))
}

/// Runs what the command line asks with the runtime `make_runtime` builds from the
/// configuration: the node (or, with `--standalone`, its static pods) until a signal stops it,
/// a runtime worker, or a push.
pub async fn run<R: Runtime>(
    args: NodeArgs,
    command: Option<Command>,
    make_runtime: impl FnOnce(&Config) -> anyhow::Result<R>,
) -> anyhow::Result<()> {
    let config = args.config()?;
    if let Some(image) = &args.pod_infra_container_image {
        tracing::info!(%image, "--pod-infra-container-image names a sandbox image for a CRI runtime; this node has no sandboxes and does not use it");
    }
    if let Some(endpoint) = &args.container_runtime_endpoint {
        tracing::info!(%endpoint, "--container-runtime-endpoint names a CRI runtime for the kubelet; this node runs its wasm guests itself and does not use it");
    }
    match command {
        Some(Command::Push { module, image }) => return push(module, image, &args).await,
        Some(Command::Worker { socket }) => {
            let options = kubelet::workers::WorkerOptions {
                socket,
                logs: config.container_logs,
                max_module_bytes: usize::try_from(config.image_pull.max_image_size)
                    .unwrap_or(usize::MAX),
            };
            kubelet::workers::serve(make_runtime(&config)?, options).await?;
            return Ok(());
        }
        None => {}
    }
    let shutdown = shutdown_on_signals();
    if args.standalone {
        let path = args.pod_manifest_path.as_ref().context(
            "--standalone needs --pod-manifest-path (a pod manifest or a directory of them)",
        )?;
        let pods = kubelet::standalone::load_manifests(path)?;
        let runtime = make_runtime(&config)?;
        let outcome = kubelet::standalone::run(config, runtime, pods, shutdown).await?;
        if !outcome.failed.is_empty() {
            anyhow::bail!("pods failed: {}", outcome.failed.join(", "));
        }
        return Ok(());
    }
    let client = cluster_client(&args, &config, &shutdown).await?;
    let workers = args.runtime_workers();
    if workers == 0 {
        let runtime = make_runtime(&config)?;
        kubelet::run_node(config, runtime, client, shutdown).await?;
        return Ok(());
    }
    let pool = kubelet::workers::WorkerPool::start(kubelet::workers::PoolOptions {
        workers,
        dir: config.data_dir.join("workers"),
        launcher: kubelet::workers::Launcher {
            program: std::env::current_exe().context("finding the agent's own binary")?,
            args: std::env::args_os().skip(1).collect(),
        },
        max_module_bytes: usize::try_from(config.image_pull.max_image_size).unwrap_or(usize::MAX),
    })
    .await?;
    kubelet::run_node(config, pool, client, shutdown).await?;
    Ok(())
}

/// The client of the cluster the node joins: the node's own credentials (bootstrapped when
/// missing or expired, then renewed before they expire, without a restart), or a kubeconfig's.
async fn cluster_client(
    args: &NodeArgs,
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<kube::Client> {
    let path = args
        .kubeconfig
        .clone()
        .unwrap_or_else(|| config.data_dir.join("kubeconfig"));
    let joined = match &args.bootstrap_file {
        Some(bootstrap_file) => Some(
            kubelet::tls::bootstrap(
                bootstrap_file,
                &path,
                &config.node_name,
                &config.data_dir.join("pki"),
            )
            .await?,
        ),
        None => None,
    };
    Ok(match joined {
        Some(kubelet::tls::Joined::NodeCertificate) => {
            let certificate = Arc::new(NodeCertificate::stored(
                config
                    .data_dir
                    .join("pki")
                    .join(kubelet::tls::CLIENT_CERT_FILE),
            ));
            let client = kubelet::tls::client::rotating_client(
                kube_config(&path).await?,
                certificate.clone(),
            )?;
            tokio::spawn(kubelet::tls::rotation::keep_renewed(
                client.clone(),
                CertificateRequest::client(&config.node_name),
                certificate,
                shutdown.clone(),
            ));
            client
        }
        Some(kubelet::tls::Joined::AsItIs) | None => {
            kube::client::ClientBuilder::try_from(kube_config(&path).await?)
                .context("creating the Kubernetes client")?
                .with_layer(&tower::util::MapResultLayer::new(
                    kubelet::metrics::count_api_response,
                ))
                .build()
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn periods_must_be_above_zero() {
        assert_eq!(
            super::parse_period("20s"),
            Ok(std::time::Duration::from_secs(20))
        );
        let refused = super::parse_period("0s").unwrap_err();
        assert!(refused.contains("above zero"), "{refused}");
        assert!(super::parse_period("-1s").is_err());
    }

    /// The node's configuration from a command line.
    fn config(args: &[&str]) -> kubelet::config::Config {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            node: super::NodeArgs,
        }
        use clap::Parser;
        let cli = Cli::try_parse_from(std::iter::once("krustlet-wasi").chain(args.iter().copied()))
            .expect("the flags parse");
        cli.node.config().expect("a configuration")
    }

    #[test]
    fn the_kubelets_flag_names_give_the_same_node_as_ours() {
        let ours = config(&["--node-name", "n1", "--data-dir", "/var/lib/krustlet"]);
        let kubelets = config(&[
            "--hostname-override",
            "n1",
            "--root-dir",
            "/var/lib/krustlet",
            "--container-runtime-endpoint",
            "unix:///var/run/containerd/containerd.sock",
        ]);
        assert_eq!(
            (&ours.node_name, &ours.data_dir),
            (&kubelets.node_name, &kubelets.data_dir)
        );
        assert_eq!(ours.node_name, "n1");
    }

    #[test]
    fn taints_to_register_parse_as_the_kubelets() {
        let config = config(&[
            "--register-with-taints",
            "dedicated=wasm:NoSchedule,example.com/gpu:NoExecute",
        ]);
        let taints: Vec<(String, Option<String>, String)> = config
            .register_with_taints
            .iter()
            .map(|t| (t.key.clone(), t.value.clone(), t.effect.clone()))
            .collect();
        assert_eq!(
            taints,
            [
                ("dedicated".into(), Some("wasm".into()), "NoSchedule".into()),
                ("example.com/gpu".into(), None, "NoExecute".into()),
            ]
        );
        assert!(super::parse_taint("k=v:Sometimes").is_err());
        assert!(super::parse_taint("k=v").is_err());
        assert!(super::parse_taint("=v:NoSchedule").is_err());
    }

    #[test]
    fn sizes_that_may_be_zero() {
        assert_eq!(super::parse_bytes_or_zero("1Mi"), Ok(1 << 20));
        assert_eq!(super::parse_bytes_or_zero("0"), Ok(0));
        assert!(super::parse_bytes("0").is_err());
        assert!(super::parse_bytes_or_zero("lots").is_err());
    }
}
