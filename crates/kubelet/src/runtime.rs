//! The contract between the node agent and a WebAssembly runtime: the agent owns everything that
//! is Kubernetes, a runtime only prepares and runs modules.

mod warnings;

pub use warnings::{WARNING_BURST, WARNING_INTERVAL, Warning, Warnings};

use crate::logs::LogWriter;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A module's bytes as pulled, identified by their content digest.
#[derive(Debug, Clone)]
pub struct ModuleBytes {
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// The module or component.
    pub bytes: Arc<[u8]>,
}

/// A directory the guest sees.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// Directory on the node.
    pub host_path: PathBuf,
    /// Path inside the guest.
    pub guest_path: String,
    /// Whether the guest may only read.
    pub read_only: bool,
}

/// Everything needed to start one container.
#[derive(Debug)]
pub struct ContainerRun {
    /// The run's container ID (`wasm://<hex>`), unique on the node; the status shows it.
    pub id: String,
    /// When the agent started it (the status's `startedAt`); a runtime that outlives the
    /// agent keeps it for the next one.
    pub started_at: jiff::Timestamp,
    /// argv, starting with the program name.
    pub args: Vec<String>,
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
    /// Directories to preopen.
    pub mounts: Vec<Mount>,
    /// A directory the runtime may keep the container's state in (Spin's key-value stores):
    /// kept across the container's restarts, removed with its pod. Made when first used.
    pub state_dir: PathBuf,
    /// Where the guest's stdout goes.
    pub stdout: LogWriter,
    /// Where the guest's stderr goes.
    pub stderr: LogWriter,
    /// What the guest may use: memory and CPU (`resources.limits`).
    pub limits: Limits,
    /// Ports to serve and hosts the guest may reach.
    pub network: Network,
    /// Where the runtime accounts what the container uses.
    pub usage: Arc<Usage>,
    /// Where the runtime reports what went wrong without ending the container (a request
    /// its guest failed), for the pod's events.
    pub warnings: Warnings,
    /// Cancelled when the container is asked to stop (its pod is being deleted). A container
    /// that can stop gracefully (a server: stop accepting, finish the requests in flight, then
    /// end) is started with [`RunningContainer::graceful`]; the agent waits for it up to the
    /// pod's grace period, then stops it.
    pub stop: tokio_util::sync::CancellationToken,
}

/// What a container uses, kept current by the runtime and read for the Summary API.
#[derive(Debug, Default)]
pub struct Usage {
    cpu_nanos: AtomicU64,
    memory_bytes: AtomicU64,
}

impl Usage {
    /// Charges CPU time the guest ran.
    pub fn add_cpu(&self, ran: std::time::Duration) {
        let nanos = u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX);
        self.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Records memory (linear memories, tables) the guest took.
    pub fn grow_memory(&self, bytes: u64) {
        self.memory_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records `bytes` more memory unless that would take the container past `limit` (all its
    /// instances together); whether it did.
    pub fn try_grow_memory(&self, bytes: u64, limit: Option<u64>) -> bool {
        self.memory_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                let grown = m.saturating_add(bytes);
                limit.is_none_or(|limit| grown <= limit).then_some(grown)
            })
            .is_ok()
    }

    /// Takes what another process (a runtime worker) measured.
    pub(crate) fn set(&self, cpu_nanos: u64, memory_bytes: u64) {
        self.cpu_nanos.store(cpu_nanos, Ordering::Relaxed);
        self.memory_bytes.store(memory_bytes, Ordering::Relaxed);
    }

    /// Records memory the guest gave back (its instance ended).
    pub fn release_memory(&self, bytes: u64) {
        let _ = self
            .memory_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some(m.saturating_sub(bytes))
            });
    }

    /// CPU time used so far, in nanoseconds.
    pub fn cpu_nanos(&self) -> u64 {
        self.cpu_nanos.load(Ordering::Relaxed)
    }

    /// Memory held now, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }
}

/// A container's resource limits, from `resources.limits`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Cap on the guest's linear memories and tables together, in bytes; growing past it ends
    /// the container as OOMKilled.
    pub memory_bytes: Option<u64>,
    /// Share of one core the guest may use (`0.5` for `500m`), enforced per 100 ms period.
    pub cpu_cores: Option<f64>,
}

/// Bounds on the clients of the ports one container serves (wasi-http components, waSCC
/// `http_server` actors), so that one pod's clients cannot hold what the whole runtime process
/// shares (descriptors, tasks, pooled instances).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections open at once on the container's ports; one past it is answered 503 and
    /// closed (`--http-max-connections-per-container`).
    pub max_connections: usize,
    /// How long a client has to send a request's headers once it has begun
    /// (`--http-header-read-timeout`, nginx's `client_header_timeout`).
    pub header_read_timeout: std::time::Duration,
    /// A connection with no request in flight (a new one too) is closed after this long
    /// (`--http-idle-timeout`, nginx's `keepalive_timeout`).
    pub idle_timeout: std::time::Duration,
    /// A request body the guest reads that brings nothing for this long fails the read
    /// (`--http-body-read-timeout`, nginx's `client_body_timeout`).
    pub body_read_timeout: std::time::Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: std::time::Duration::from_secs(60),
            idle_timeout: std::time::Duration::from_secs(75),
            body_read_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// What a runtime's containers may hold of its process's file descriptors: connections to
/// served ports, outgoing connections, name lookups' sockets and the files, directories and
/// sockets guests open are all charged to the container they serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorLimits {
    /// Descriptors all containers of a runtime process together may hold
    /// (`--max-pod-descriptors`); `None`: three quarters of the process's open-file limit,
    /// the rest left to the node's own work.
    pub total: Option<u32>,
    /// Descriptors each container is guaranteed (`--guaranteed-descriptors-per-container`); a
    /// container the runtime cannot guarantee is not started.
    pub guaranteed_per_container: u32,
    /// Files, directories and sockets one container's guests may have open at once, all its
    /// instances together (`--max-open-files-per-container`).
    pub open_files_per_container: u32,
}

impl Default for DescriptorLimits {
    fn default() -> Self {
        Self {
            total: None,
            guaranteed_per_container: 16,
            open_files_per_container: 1024,
        }
    }
}

/// The container's network: the node's, or its pod's own network namespace (CNI).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Network {
    /// The address served ports bind to: the node's IP on the node's network, the unspecified
    /// address in the pod's own namespace.
    pub listen_ip: std::net::IpAddr,
    /// The pod's network namespace, when it has one of its own: every socket the guest and its
    /// host code make (listening, connecting) is made inside it.
    #[serde(default)]
    pub netns: Option<std::path::PathBuf>,
    /// TCP ports the container serves: its `containerPort`s (on the node's network, also its
    /// `hostPort`s where they differ), in order.
    pub ports: Vec<u16>,
    /// Outbound destinations the guest may reach: `host`, `host:port` or `*` (any); empty
    /// means none.
    pub allowed_outbound: Vec<String>,
    /// How the guest's names resolve: the pod's resolver configuration and hosts entries.
    #[serde(default)]
    pub dns: Dns,
}

/// How a pod's guests resolve names: what the kubelet writes into a container's
/// `/etc/resolv.conf` and `/etc/hosts`, for the runtime's resolver ([`crate::pods::dns`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dns {
    /// Name servers, asked in order (port 53).
    pub nameservers: Vec<std::net::IpAddr>,
    /// Search domains, tried in order for names with fewer dots than `ndots`.
    pub searches: Vec<String>,
    /// resolv.conf options (`ndots:5`, `timeout:2`, `attempts:3`, ...).
    pub options: Vec<String>,
    /// Names that resolve without asking a name server (localhost, the pod's own hostname,
    /// its `hostAliases`), in the hosts file's order: the first entry for a name wins.
    pub hosts: Vec<HostEntry>,
}

/// One line of a hosts file: an address and its names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostEntry {
    /// The address the names resolve to.
    pub ip: std::net::IpAddr,
    /// The names, lowercase, without a final dot.
    pub names: Vec<String>,
}

/// Why a container stopped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exit {
    /// The exit code (WASI `proc_exit`, 0 on a normal return, 134 for a trap, 137 when killed
    /// or out of memory).
    pub code: i32,
    /// A reason that overrides the kubelet's default (`Completed`/`Error`), e.g. `OOMKilled`.
    pub reason: Option<String>,
    /// What went wrong, for the container status message.
    pub message: Option<String>,
}

impl Exit {
    /// A container that stopped when asked to (it finished what was in flight).
    pub fn stopped() -> Self {
        Self {
            code: 0,
            reason: None,
            message: Some("stopped gracefully when asked to".into()),
        }
    }

    /// A container the node agent stopped.
    pub fn killed() -> Self {
        Self {
            code: 137,
            reason: None,
            message: Some("stopped by the node agent".into()),
        }
    }

    /// A container whose guest grew its memory past its limit.
    pub fn out_of_memory(limit: u64) -> Self {
        Self {
            code: 137,
            reason: Some("OOMKilled".into()),
            message: Some(format!(
                "the guest's memory grew past its limit of {limit} bytes (resources.limits.memory)"
            )),
        }
    }
}

/// A started container: wait for its exit or stop it.
#[derive(Debug)]
pub struct RunningContainer {
    task: tokio::task::JoinHandle<Exit>,
    graceful: bool,
}

impl RunningContainer {
    /// Wraps the task that runs the guest and returns its exit; it cannot be asked to stop (a
    /// WASI command has no signals), so it is stopped at once.
    pub fn new(task: tokio::task::JoinHandle<Exit>) -> Self {
        Self {
            task,
            graceful: false,
        }
    }

    /// Wraps a task that ends by itself soon after [`ContainerRun::stop`] is cancelled.
    pub fn graceful(task: tokio::task::JoinHandle<Exit>) -> Self {
        Self {
            task,
            graceful: true,
        }
    }

    /// Whether the container ends by itself when asked to stop.
    pub fn stops_gracefully(&self) -> bool {
        self.graceful
    }

    /// Waits for the container to exit.
    pub async fn wait(&mut self) -> Exit {
        match (&mut self.task).await {
            Ok(exit) => exit,
            Err(e) if e.is_cancelled() => Exit::killed(),
            Err(e) => Exit {
                code: 134,
                reason: None,
                message: Some(format!("the runtime failed: {e}")),
            },
        }
    }

    /// Stops the container at once (a WASI guest cannot catch a signal, so there is no gentler way).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for RunningContainer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A container that a previous agent process started, to be followed again: the runtime
/// reports to these as it would to a new [`ContainerRun`]'s.
#[derive(Debug)]
pub struct Reattach {
    /// The container ID the pod's status shows.
    pub id: String,
    /// The agent's side of its log file (followers read the progress).
    pub log: Arc<crate::logs::LogFile>,
    /// Where the runtime accounts what it uses.
    pub usage: Arc<Usage>,
    /// Where its warnings go.
    pub warnings: Warnings,
    /// Cancelled when it is asked to stop.
    pub stop: tokio_util::sync::CancellationToken,
}

/// A container followed again after the agent restarted.
#[derive(Debug)]
pub struct Reattached {
    /// Wait for its exit or stop it, as a container just started.
    pub running: RunningContainer,
    /// When it started, if the runtime knows.
    pub started_at: Option<jiff::Timestamp>,
}

/// The module could not be prepared to run.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PrepareError {
    /// What is wrong, for the container's status and events.
    pub message: String,
    /// What the agent does about it.
    pub kind: PrepareFailure,
}

/// Whether waiting can help a module that could not be prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrepareFailure {
    /// The module can never run on this node (not WebAssembly, invalid, exports nothing to run,
    /// needs imports the node does not provide): as an executable of the wrong format under
    /// containerd, the container fails to start (terminated, `StartError`, exit code 128) and
    /// its restart policy decides what follows (a `Never` pod fails).
    NotRunnable,
    /// The module is refused for now (its claims do not verify, or are not valid yet) or the
    /// node failed preparing it: the container waits in `CreateContainerError` and is tried
    /// again with back-off.
    Refused,
}

impl PrepareError {
    /// A module that can never run on this node.
    pub fn not_runnable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: PrepareFailure::NotRunnable,
        }
    }

    /// A module refused for now, or a failure of the node's own.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: PrepareFailure::Refused,
        }
    }
}

/// The container could not be started; [`StartError::can_retry`] says what the agent does.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A port the container serves is held by another pod or process on the node. Retried with
    /// back-off: the port may be freed.
    #[error(
        "port {} is already in use on {}: another pod (or process) on this node serves it; wasm pods share the node's network, so give this pod another containerPort or let it run on another node",
        .addr.port(),
        .addr.ip()
    )]
    PortInUse {
        /// The address the container wanted.
        addr: std::net::SocketAddr,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// The node failed setting the container up (a socket, a directory, a memory mapping).
    /// Retried with back-off: the node's state may change.
    #[error("{what}: {source}")]
    Node {
        /// What the node was doing, e.g. `listening on 10.0.0.1:8080`.
        what: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The runtime has no room for the container now (its pool of HTTP instances is promised
    /// to other containers). Retried with back-off, in another runtime worker first: room may
    /// be made.
    #[error("{0}")]
    Full(String),
    /// The container's own settings can never start it (an environment variable the guest
    /// needs is invalid). As a process containerd cannot start, the container is terminated
    /// (`StartError`, exit code 128) and its restart policy decides what follows.
    #[error("{0}")]
    Invalid(String),
}

impl StartError {
    /// A failure of the node's own while `what` was being done.
    pub fn node(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Node {
            what: what.into(),
            source: source.into(),
        }
    }

    /// Whether starting the container again, unchanged, can succeed.
    pub fn can_retry(&self) -> bool {
        !matches!(self, Self::Invalid(_))
    }
}

/// What a WebAssembly runtime must provide to the node agent.
pub trait Runtime: Send + Sync + 'static {
    /// A module compiled and ready to instantiate; cheap to clone.
    type Prepared: Clone + Send + Sync + 'static;

    /// Node identity: `wasm32-wasi` or `wasm32-wascc`; used for the taint and the arch label.
    fn arch(&self) -> &str;

    /// The runtime and its version, for `nodeInfo.containerRuntimeVersion` (e.g. `wasmtime://48.0.8`).
    fn version(&self) -> String;

    /// How many containers the runtime can run at once on this machine, when it knows a limit
    /// below what the node is configured for (the node's pod capacity is capped to it).
    fn capacity(&self) -> Option<usize> {
        None
    }

    /// Drops what the runtime keeps for the module `digest` (compiled code in memory and on
    /// disk): its image was garbage-collected.
    fn forget(&self, _digest: &str) {}

    /// Validates and compiles a module; the result is cached by digest.
    fn prepare(
        &self,
        module: ModuleBytes,
    ) -> impl Future<Output = Result<Self::Prepared, PrepareError>> + Send;

    /// Starts one container.
    fn start(
        &self,
        prepared: &Self::Prepared,
        run: ContainerRun,
    ) -> impl Future<Output = Result<RunningContainer, StartError>> + Send;

    /// Follows again a container a previous agent process started, if the runtime still holds
    /// it (running, or exited with its exit kept). A runtime in the agent's process holds
    /// nothing across its restarts.
    fn reattach(&self, _container: Reattach) -> Option<Reattached> {
        None
    }

    /// Whether the runtime holds container `id` from a previous agent process, for
    /// [`Runtime::reattach`] (asked first, so that nothing is set up for a container that is
    /// not there).
    fn holds(&self, _id: &str) -> bool {
        false
    }

    /// The agent is stopping without draining: guests that can outlive it are left running
    /// (stopping a [`RunningContainer`] no longer stops them). Returns whether they are.
    fn detach(&self) -> bool {
        false
    }

    /// Whether [`Runtime::detach`] left the guests running.
    fn detached(&self) -> bool {
        false
    }
}
