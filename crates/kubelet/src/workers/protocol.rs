//! The agent-worker protocol: length-delimited frames over a unix socket, each a JSON message,
//! except the module bytes that follow a [`Request::Prepare`] as one binary frame.
//!
//! The agent sends [`Envelope`]s of [`Request`]s; the worker answers each with a
//! [`FromWorker::Reply`] carrying the same id, and sends [`FromWorker::Notice`]s on its own
//! (exits, warnings, usage). The first request on a connection is [`Request::Hello`]; a worker
//! refuses every other request until the agent has said which protocol it speaks, so an agent
//! and a worker of different builds either agree on [`PROTOCOL_VERSION`] or the agent tells the
//! worker to drain.

use super::key::AgentKey;
use crate::logs::Progress;
use crate::runtime::{ContainerRun, Exit, Limits, Mount, Network};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The protocol this build speaks. A change that an older peer would misread takes a new
/// version; additions an older peer ignores (new optional fields) do not.
pub const PROTOCOL_VERSION: u32 = 1;

/// What this build's workers can do beyond protocol 1 as first defined, told in
/// [`Hello::features`]: an agent gives a worker only what it says it can do.
pub const FEATURES: &[&str] = &[FEATURE_NETNS];

/// The worker runs a container's guest inside its pod's network namespace
/// ([`Network::netns`]); a worker without it would run the guest on the node's network.
pub const FEATURE_NETNS: &str = "netns";

/// The largest control message either side accepts (a list of 10,000 containers is ~3 MiB).
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// A request from the agent, with the id its reply carries.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// Chosen by the agent, unique on the connection.
    pub id: u64,
    /// What is asked.
    pub request: Request,
}

/// What the agent asks of a worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The first request: the agent's protocol version and key. Answered with
    /// [`Reply::Hello`]; a connection without the right key is refused and closed.
    Hello {
        /// The agent's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The agent's key ([`super::key`]); none from agents of builds before it.
        #[serde(default)]
        key: AgentKey,
    },
    /// Validate and compile a module (the next frame holds its bytes); cached by digest.
    Prepare {
        /// `sha256:<hex>` of the bytes.
        digest: String,
    },
    /// Start a container from a prepared module.
    Start(Box<StartSpec>),
    /// Stop a container: `graceful` lets a server finish what is in flight, otherwise the
    /// guest is stopped at once.
    Stop {
        /// The container's id.
        container: String,
        /// Whether to ask rather than end it.
        graceful: bool,
    },
    /// The agent has handled a container's exit: the worker forgets it.
    Remove {
        /// The container's id.
        container: String,
    },
    /// Drop what is kept for a module (its image was garbage-collected).
    Forget {
        /// The module's digest.
        digest: String,
    },
    /// Stop taking containers, stop every guest within `grace_seconds`, then exit.
    Drain {
        /// How long servers may take to finish what is in flight.
        grace_seconds: u64,
    },
}

/// A container to start, as [`ContainerRun`] without what only lives in the agent.
#[derive(Debug, Serialize, Deserialize)]
pub struct StartSpec {
    /// The container's id (the run's `containerID`), unique on the node.
    pub container: String,
    /// The digest of a module the worker prepared.
    pub digest: String,
    /// argv, starting with the program name.
    pub args: Vec<String>,
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
    /// Directories to preopen.
    pub mounts: Vec<Mount>,
    /// Where the container's state is kept across its restarts (none from an older agent).
    #[serde(default)]
    pub state_dir: PathBuf,
    /// The CRI log file the worker writes the guest's output to.
    pub log: PathBuf,
    /// Memory and CPU limits.
    pub limits: Limits,
    /// Ports to serve and destinations the guest may reach.
    pub network: Network,
    /// The container's name, for its warnings.
    pub name: String,
    /// When the agent started it (RFC 3339), kept for the next agent.
    pub started_at: String,
}

impl StartSpec {
    /// The wire form of `run` for container `container` of module `digest`, logging to `log`.
    pub fn new(container: String, digest: String, run: &ContainerRun, log: PathBuf) -> Self {
        Self {
            container,
            digest,
            args: run.args.clone(),
            env: run.env.clone(),
            mounts: run.mounts.clone(),
            state_dir: run.state_dir.clone(),
            log,
            limits: run.limits,
            network: run.network.clone(),
            name: run.warnings.container().to_string(),
            started_at: run.started_at.to_string(),
        }
    }
}

/// What a worker sends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FromWorker {
    /// The answer to request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        reply: Reply,
    },
    /// Something that happened.
    Notice {
        /// What happened.
        notice: Notice,
    },
}

/// A worker's answer to a request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// The answer to [`Request::Hello`]: who the worker is and what it holds.
    Hello(Box<Hello>),
    /// Done as asked.
    Done,
    /// [`Request::Start`] started the container.
    Started {
        /// Whether it ends by itself when asked to stop (a server).
        graceful: bool,
    },
    /// [`Request::Prepare`] failed: the module cannot run (`runnable: false`) or not now.
    PrepareFailed {
        /// What is wrong.
        message: String,
        /// Whether waiting may help.
        retry: bool,
    },
    /// [`Request::Start`] failed.
    StartFailed(WireStartError),
    /// The request could not be served (unknown container, a protocol the worker does not
    /// speak, a worker that is draining).
    Refused {
        /// Why.
        message: String,
    },
}

/// Who a worker is and what it holds, as told to an agent that connects.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    /// The worker's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The worker's process id.
    pub pid: u32,
    /// The runtime's arch (`wasm32-wasi`).
    pub arch: String,
    /// The runtime and its version.
    pub version: String,
    /// How many containers the worker can hold, if the runtime knows a limit.
    pub capacity: Option<usize>,
    /// What it can do beyond the protocol's first definition ([`FEATURES`]); none from a
    /// worker of a build before features were told.
    #[serde(default)]
    pub features: Vec<String>,
    /// Every container the worker holds, running or exited and not yet removed.
    pub containers: Vec<ContainerState>,
}

/// A container a worker holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    /// The container's id.
    pub container: String,
    /// Its exit, once it has exited.
    pub exit: Option<Exit>,
    /// Whether it ends by itself when asked to stop.
    pub graceful: bool,
    /// When it started (RFC 3339).
    pub started_at: String,
}

/// Something that happened in a worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub enum Notice {
    /// A container exited; it stays listed until the agent removes it.
    Exited {
        /// The container's id.
        container: String,
        /// How it ended.
        exit: Exit,
        /// Its log file's final progress.
        log: Progress,
    },
    /// A container reported a warning (rate-limited in the worker).
    Warning {
        /// The container's id.
        container: String,
        /// The event's reason.
        reason: String,
        /// What happened.
        message: String,
    },
    /// What running containers use, and how far their logs are: only those that changed
    /// since the last report.
    Usage {
        /// One entry per changed container.
        containers: Vec<UsageReport>,
    },
}

/// What one container uses now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageReport {
    /// The container's id.
    pub container: String,
    /// CPU time used so far.
    pub cpu_nanos: u64,
    /// Memory held now.
    pub memory_bytes: u64,
    /// Its log file's progress.
    pub log: Progress,
}

/// [`crate::runtime::StartError`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum WireStartError {
    /// A port is held by another pod or process.
    PortInUse {
        /// The address wanted.
        addr: std::net::SocketAddr,
        /// What the kernel said.
        message: String,
    },
    /// The node failed setting the container up.
    Node {
        /// What was being done.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// The runtime has no room for the container now.
    Full {
        /// Why.
        message: String,
    },
    /// The container's own settings can never start it.
    Invalid {
        /// What is wrong.
        message: String,
    },
}

impl From<crate::runtime::StartError> for WireStartError {
    fn from(e: crate::runtime::StartError) -> Self {
        use crate::runtime::StartError;
        match e {
            StartError::PortInUse { addr, source } => Self::PortInUse {
                addr,
                message: source.to_string(),
            },
            StartError::Node { what, source } => Self::Node {
                what,
                message: source.to_string(),
            },
            StartError::Full(message) => Self::Full { message },
            StartError::Invalid(message) => Self::Invalid { message },
        }
    }
}

impl From<WireStartError> for crate::runtime::StartError {
    fn from(e: WireStartError) -> Self {
        match e {
            WireStartError::PortInUse { addr, message } => Self::PortInUse {
                addr,
                source: std::io::Error::new(std::io::ErrorKind::AddrInUse, message),
            },
            WireStartError::Node { what, message } => Self::node(what, message),
            WireStartError::Full { message } => Self::Full(message),
            WireStartError::Invalid { message } => Self::Invalid(message),
        }
    }
}

/// The framing both sides use: a 4-byte big-endian length, then the frame, at most
/// `max_frame` bytes.
pub fn codec(max_frame: usize) -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec()
}
