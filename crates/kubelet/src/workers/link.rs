//! The agent's link to one runtime worker: its connection, made again whenever it breaks (the
//! worker is started when nobody answers on its socket), the containers the agent follows
//! there, and the containers found there that no pod has claimed yet.

use super::key::AgentKey;
use super::protocol::{
    self, ContainerState, Envelope, FromWorker, Hello, MAX_MESSAGE_BYTES, Notice, PROTOCOL_VERSION,
    Reply, Request,
};
use super::spawn::Launcher;
use crate::logs::LogFile;
use crate::runtime::{Exit, Usage, Warnings};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::Framed;

/// How long a request waits for a worker to be connected.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// How long a request waits for its answer (a large module compiles for a while).
const REPLY_DEADLINE: Duration = Duration::from_secs(300);
/// The longest pause between attempts to bring a worker back.
const MAX_RESPAWN_BACKOFF: Duration = Duration::from_secs(30);

/// A container the agent follows in the worker.
pub(super) struct Followed {
    /// Where its exit goes (taken when sent).
    pub exit: Option<oneshot::Sender<Exit>>,
    /// What it uses, as the worker reports it.
    pub usage: Arc<Usage>,
    /// Where its warnings go.
    pub warnings: Warnings,
    /// The agent's side of its log file (followers read the progress the worker reports).
    pub log: Arc<LogFile>,
}

/// What goes to the worker: a message, or a message and the module bytes it announces.
enum Outgoing {
    Message(Envelope),
    WithBytes(Envelope, Bytes),
}

#[derive(Default)]
struct State {
    followed: HashMap<String, Followed>,
    /// Containers the worker holds that no pod has claimed since the agent connected.
    unclaimed: HashMap<String, ContainerState>,
    /// Modules the worker has prepared on this connection.
    prepared: HashSet<String>,
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    next_id: u64,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No worker answered.
    #[error("runtime worker {index} is not running (see {log}): {why}")]
    Down {
        /// The worker's index.
        index: usize,
        /// Its log file.
        log: String,
        /// What happened.
        why: &'static str,
    },
}

/// The agent's link to one runtime worker.
pub(super) struct Link {
    pub index: usize,
    socket: PathBuf,
    launcher: Launcher,
    /// What the agent greets the worker with.
    key: AgentKey,
    outbox: watch::Sender<Option<mpsc::UnboundedSender<Outgoing>>>,
    state: Mutex<State>,
    /// The worker's greeting on the first connection.
    hello: watch::Sender<Option<Arc<Hello>>>,
}

impl Link {
    pub fn new(index: usize, socket: PathBuf, launcher: Launcher, key: AgentKey) -> Arc<Self> {
        Arc::new(Self {
            index,
            socket,
            launcher,
            key,
            outbox: watch::channel(None).0,
            state: Mutex::default(),
            hello: watch::channel(None).0,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn down(&self, why: &'static str) -> LinkError {
        LinkError::Down {
            index: self.index,
            log: self.launcher.log_path(&self.socket).display().to_string(),
            why,
        }
    }

    /// The worker's first greeting, once it has connected (or `None` after `deadline`).
    pub async fn first_hello(&self, deadline: Duration) -> Option<Arc<Hello>> {
        let mut hello = self.hello.subscribe();
        let greeted = hello.wait_for(Option::is_some);
        match tokio::time::timeout(deadline, greeted).await {
            Ok(Ok(hello)) => hello.clone(),
            _ => None,
        }
    }

    /// Whether the worker, as it last greeted, can do `feature`.
    pub fn supports(&self, feature: &str) -> bool {
        self.hello
            .borrow()
            .as_ref()
            .is_some_and(|hello| hello.features.iter().any(|f| f == feature))
    }

    /// How many containers the agent follows here.
    pub fn load(&self) -> usize {
        self.state().followed.len()
    }

    /// Whether the worker has prepared `digest` on this connection.
    pub fn has_prepared(&self, digest: &str) -> bool {
        self.state().prepared.contains(digest)
    }

    /// Notes that the worker prepared `digest`.
    pub fn prepared(&self, digest: &str) {
        self.state().prepared.insert(digest.to_string());
    }

    /// Forgets `digest` (its image is gone) here too.
    pub fn forget(&self, digest: &str) {
        self.state().prepared.remove(digest);
        self.send(Request::Forget {
            digest: digest.to_string(),
        });
    }

    /// Follows container `id`, whose exit goes to the returned receiver.
    pub fn follow(&self, id: &str, followed: Followed) {
        self.state().followed.insert(id.to_string(), followed);
    }

    /// Stops following container `id`; the worker forgets it (and stops it if it runs).
    pub fn release(&self, id: &str) {
        self.state().followed.remove(id);
        self.send(Request::Remove {
            container: id.to_string(),
        });
    }

    /// Claims a container found in the worker at connect, if it is here, and follows it:
    /// returns what the worker said of it and where its exit (maybe already known) comes.
    pub fn claim(
        &self,
        id: &str,
        mut followed: Followed,
    ) -> Option<(ContainerState, oneshot::Receiver<Exit>)> {
        let mut state = self.state();
        let held = state.unclaimed.remove(id)?;
        let (tx, rx) = oneshot::channel();
        match held.exit.clone() {
            Some(exit) => {
                let _ = tx.send(exit);
            }
            None => followed.exit = Some(tx),
        }
        state.followed.insert(id.to_string(), followed);
        Some((held, rx))
    }

    /// Whether container `id` is here, unclaimed.
    pub fn holds(&self, id: &str) -> bool {
        self.state().unclaimed.contains_key(id)
    }

    /// Releases container `id` if it is here unclaimed: a new run of the same ID replaces it
    /// (the agent that started it went away before it heard it had started).
    pub fn discard_unclaimed(&self, id: &str) {
        if self.state().unclaimed.remove(id).is_some() {
            self.send(Request::Remove {
                container: id.to_string(),
            });
        }
    }

    /// Releases every container no pod claimed.
    pub fn release_unclaimed(&self) {
        let unclaimed: Vec<(String, ContainerState)> = self.state().unclaimed.drain().collect();
        for (id, held) in unclaimed {
            if held.exit.is_some() {
                // An ended run no pod follows any more (a pod's completed init container, an
                // earlier run of a restarted container, or a pod that is gone).
                tracing::debug!(worker = self.index, container = %id, "removing an ended container no pod on this node claims");
            } else {
                tracing::info!(worker = self.index, container = %id, "stopping a container no pod on this node claims (its pod went away while the agent was down)");
            }
            self.send(Request::Remove { container: id });
        }
    }

    /// Sends `request` without waiting for its answer.
    pub fn send(&self, request: Request) {
        let id = self.next_id();
        if let Some(outbox) = &*self.outbox.borrow() {
            let _ = outbox.send(Outgoing::Message(Envelope { id, request }));
        }
    }

    fn next_id(&self) -> u64 {
        let mut state = self.state();
        state.next_id += 1;
        state.next_id
    }

    /// Sends `request` (and `bytes` after it) and waits for the answer.
    pub async fn request(
        &self,
        request: Request,
        bytes: Option<Bytes>,
    ) -> Result<Reply, LinkError> {
        let mut outbox = self.outbox.subscribe();
        let connected = tokio::time::timeout(CONNECT_DEADLINE, outbox.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|o| o.clone());
        let outbox = connected.ok_or_else(|| self.down("no connection within 10s"))?;
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut state = self.state();
            state.next_id += 1;
            let id = state.next_id;
            state.pending.insert(id, tx);
            id
        };
        let envelope = Envelope { id, request };
        let outgoing = match bytes {
            Some(bytes) => Outgoing::WithBytes(envelope, bytes),
            None => Outgoing::Message(envelope),
        };
        if outbox.send(outgoing).is_err() {
            self.state().pending.remove(&id);
            return Err(self.down("the connection closed"));
        }
        let answered = tokio::time::timeout(REPLY_DEADLINE, rx).await;
        self.state().pending.remove(&id);
        match answered {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(self.down("the connection closed before it answered")),
            Err(_) => Err(self.down("no answer within 5 minutes")),
        }
    }

    /// Keeps the worker connected for as long as the agent runs: connects (starting the worker
    /// when nobody answers), greets it, takes over what it holds, serves the connection, and
    /// starts again when it breaks.
    pub async fn run(self: Arc<Self>, max_frame: usize) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let stream = match UnixStream::connect(&self.socket).await {
                Ok(stream) => Ok(stream),
                Err(_) => self.launcher.start(self.index, &self.socket).await,
            };
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::error!(worker = self.index, error = %e, retry_in = ?backoff, "starting a runtime worker failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_RESPAWN_BACKOFF);
                    continue;
                }
            };
            let mut framed = Framed::new(stream, protocol::codec(max_frame.max(MAX_MESSAGE_BYTES)));
            let hello = match greet(&mut framed, &self.key).await {
                Ok(hello) => hello,
                Err(e) => {
                    tracing::error!(worker = self.index, error = %e, retry_in = ?backoff, "greeting a runtime worker failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_RESPAWN_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_secs(1);
            self.take_over(&hello);
            tracing::info!(
                worker = self.index,
                pid = hello.pid,
                containers = hello.containers.len(),
                "connected to runtime worker"
            );
            self.hello.send_replace(Some(Arc::new(hello)));
            self.serve(framed).await;
            tracing::warn!(
                worker = self.index,
                "the connection to runtime worker {} broke; connecting again",
                self.index
            );
        }
    }

    /// Takes what a (re)connected worker holds: followed containers it no longer has were lost
    /// with it; exits it saw while the agent was away are delivered; the rest wait for a pod to
    /// claim them.
    fn take_over(&self, hello: &Hello) {
        let mut state = self.state();
        state.prepared.clear();
        let held: HashMap<&str, &ContainerState> = hello
            .containers
            .iter()
            .map(|c| (c.container.as_str(), c))
            .collect();
        for (id, followed) in state.followed.iter_mut() {
            let exit = match held.get(id.as_str()) {
                Some(c) => c.exit.clone(),
                None => Some(Exit {
                    code: 137,
                    reason: Some("ContainerStatusUnknown".into()),
                    message: Some(format!(
                        "The container could not be located: runtime worker {} that ran it exited",
                        self.index
                    )),
                }),
            };
            if let (Some(exit), Some(to)) = (exit, followed.exit.take()) {
                let _ = to.send(exit);
            }
        }
        let followed: HashSet<String> = state.followed.keys().cloned().collect();
        state.unclaimed = hello
            .containers
            .iter()
            .filter(|c| !followed.contains(&c.container))
            .map(|c| (c.container.clone(), c.clone()))
            .collect();
    }

    /// Serves one connection until it breaks.
    async fn serve(&self, framed: Framed<UnixStream, tokio_util::codec::LengthDelimitedCodec>) {
        let (mut sink, mut frames) = framed.split();
        let (outbox, mut outgoing) = mpsc::unbounded_channel::<Outgoing>();
        self.outbox.send_replace(Some(outbox));
        let writer = async move {
            while let Some(item) = outgoing.recv().await {
                let (envelope, bytes) = match item {
                    Outgoing::Message(envelope) => (envelope, None),
                    Outgoing::WithBytes(envelope, bytes) => (envelope, Some(bytes)),
                };
                let Ok(json) = serde_json::to_vec(&envelope) else {
                    continue;
                };
                if sink.send(Bytes::from(json)).await.is_err() {
                    return;
                }
                if let Some(bytes) = bytes
                    && sink.send(bytes).await.is_err()
                {
                    return;
                }
            }
        };
        let reader = async {
            while let Some(Ok(frame)) = frames.next().await {
                match serde_json::from_slice::<FromWorker>(&frame) {
                    Ok(message) => self.dispatch(message),
                    Err(e) => {
                        tracing::warn!(worker = self.index, error = %e, "a runtime worker sent a message the agent cannot read");
                        return;
                    }
                }
            }
        };
        tokio::select! {
            () = writer => {}
            () = reader => {}
        }
        self.outbox.send_replace(None);
        // Nobody will answer the requests in flight.
        self.state().pending.clear();
    }

    fn dispatch(&self, message: FromWorker) {
        let mut state = self.state();
        match message {
            FromWorker::Reply { id, reply } => {
                if let Some(to) = state.pending.remove(&id) {
                    let _ = to.send(reply);
                }
            }
            FromWorker::Notice { notice } => match notice {
                Notice::Exited {
                    container,
                    exit,
                    log,
                } => {
                    if let Some(followed) = state.followed.get_mut(&container) {
                        followed.log.observe(log);
                        if let Some(to) = followed.exit.take() {
                            let _ = to.send(exit);
                        }
                    } else if let Some(unclaimed) = state.unclaimed.get_mut(&container) {
                        unclaimed.exit = Some(exit);
                    }
                }
                Notice::Warning {
                    container,
                    reason,
                    message,
                } => {
                    if let Some(followed) = state.followed.get(&container) {
                        followed.warnings.forward(reason, message);
                    }
                }
                Notice::Usage { containers } => {
                    for report in containers {
                        if let Some(followed) = state.followed.get(&report.container) {
                            followed.usage.set(report.cpu_nanos, report.memory_bytes);
                            followed.log.observe(report.log);
                        }
                    }
                }
            },
        }
    }
}

/// Says hello on a new connection and reads the worker's greeting. A worker of another protocol
/// is asked to drain (its guests stop; the agent starts a worker of its own once it is gone).
async fn greet(
    framed: &mut Framed<UnixStream, tokio_util::codec::LengthDelimitedCodec>,
    key: &AgentKey,
) -> Result<Hello, GreetError> {
    let hello = Envelope {
        id: 0,
        request: Request::Hello {
            protocol: PROTOCOL_VERSION,
            key: key.clone(),
        },
    };
    framed
        .send(Bytes::from(serde_json::to_vec(&hello)?))
        .await?;
    let answer = tokio::time::timeout(CONNECT_DEADLINE, framed.next())
        .await
        .map_err(|_| GreetError::Silent)?
        .ok_or(GreetError::Silent)??;
    match serde_json::from_slice::<FromWorker>(&answer)? {
        FromWorker::Reply {
            reply: Reply::Hello(hello),
            ..
        } => Ok(*hello),
        FromWorker::Reply {
            reply: Reply::Refused { message },
            ..
        } => {
            let drain = Envelope {
                id: 1,
                request: Request::Drain { grace_seconds: 30 },
            };
            framed
                .send(Bytes::from(serde_json::to_vec(&drain)?))
                .await?;
            Err(GreetError::Incompatible(message))
        }
        _ => Err(GreetError::Silent),
    }
}

/// Why greeting a worker failed.
#[derive(Debug, thiserror::Error)]
enum GreetError {
    #[error("it did not answer the greeting within 10s")]
    Silent,
    #[error("it speaks another protocol ({0}); it was asked to drain")]
    Incompatible(String),
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("its greeting could not be read: {0}")]
    Json(#[from] serde_json::Error),
}
