//! A runtime worker process: it holds guests for the node agent, serves the agent on a unix
//! socket, and outlives it. The agent may come and go (a crash, an upgrade); the guests, their
//! log files and their listening sockets stay here. A worker never stops a guest on its own,
//! except when its socket's directory is removed (the node's data dir is gone); a worker left
//! with no agent and no guests for [`ABANDONED_AFTER`] ends.

use super::WorkerError;
use super::key::AgentKey;
use super::protocol::{
    self, ContainerState, Envelope, FromWorker, Hello, MAX_MESSAGE_BYTES, Notice, PROTOCOL_VERSION,
    Reply, Request, StartSpec, UsageReport,
};
use crate::logs::{LogFile, LogFiles, LogPolicy, Progress};
use crate::runtime::{ContainerRun, Exit, ModuleBytes, Runtime, Usage, Warnings};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// How often running containers' usage and log progress are reported to the agent.
pub const USAGE_INTERVAL: Duration = Duration::from_millis(500);

/// How often the worker checks that its socket still exists.
const SOCKET_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// A worker with no agent connected and no guest running for this long ends (the agent
/// starts a new one when it needs one); one with guests never ends on its own.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(600);
/// How long a new connection has to greet with the agent's key before it is closed.
const GREETING_DEADLINE: Duration = Duration::from_secs(10);
/// Connections that have not greeted yet, at most; more are closed as they come.
const MAX_UNGREETED: usize = 16;

/// What a worker is given at start.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The socket it serves the agent on.
    pub socket: PathBuf,
    /// How container log files are rotated.
    pub logs: LogPolicy,
    /// The largest module the agent may send (`--max-image-size`).
    pub max_module_bytes: usize,
}

/// A container the worker holds.
struct Held {
    graceful: bool,
    started_at: jiff::Timestamp,
    /// Asks a graceful container to finish.
    stop: CancellationToken,
    /// Ends the guest at once.
    kill: CancellationToken,
    usage: Arc<Usage>,
    log: Arc<LogFile>,
    exit: Option<Exit>,
    /// What the agent was last told of its usage.
    reported: Option<(u64, u64, Progress)>,
}

/// The worker's state, shared by its connection, its containers and its reporter.
struct Worker<R: Runtime> {
    runtime: R,
    logs: LogFiles,
    prepared: Mutex<HashMap<String, R::Prepared>>,
    containers: Mutex<HashMap<String, Held>>,
    /// The connected agent's outbox, if one is connected.
    agent: Mutex<Option<mpsc::UnboundedSender<FromWorker>>>,
    /// Ends the connected agent's connection when another agent (one with the key) greets.
    agent_connection: Mutex<Option<CancellationToken>>,
    /// What an agent's greeting must carry.
    key: AgentKey,
    draining: CancellationToken,
    /// Woken whenever a container exits.
    exited: tokio::sync::Notify,
    /// A usage report waits in the connection's queue.
    usage_queued: AtomicBool,
    /// Warnings waiting in the connection's queue (at most [`MAX_QUEUED_WARNINGS`]).
    warnings_queued: AtomicUsize,
}

/// Warnings that may wait for a slow or stopped agent; more are dropped (each container's are
/// rate-limited where they are made, and they are only events). Replies and exits are never
/// dropped: there is one per request, and one per container run.
const MAX_QUEUED_WARNINGS: usize = 1024;

impl<R: Runtime> Worker<R> {
    fn notify(&self, notice: Notice) {
        if let Some(agent) = &*self.agent.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = agent.send(FromWorker::Notice { notice });
        }
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hello(&self) -> Hello {
        let containers = self
            .containers()
            .iter_mut()
            .map(|(id, held)| {
                // The new agent hears every container's usage at the next report.
                held.reported = None;
                ContainerState {
                    container: id.clone(),
                    exit: held.exit.clone(),
                    graceful: held.graceful,
                    started_at: held.started_at.to_string(),
                }
            })
            .collect();
        Hello {
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            arch: self.runtime.arch().to_string(),
            version: self.runtime.version(),
            capacity: self.runtime.capacity(),
            features: protocol::FEATURES.iter().map(|f| f.to_string()).collect(),
            containers,
        }
    }

    async fn prepare(&self, digest: String, bytes: Bytes) -> Reply {
        let module = ModuleBytes {
            digest: digest.clone(),
            bytes: Arc::from(&bytes[..]),
        };
        match self.runtime.prepare(module).await {
            Ok(prepared) => {
                self.prepared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(digest, prepared);
                Reply::Done
            }
            Err(e) => Reply::PrepareFailed {
                retry: e.kind == crate::runtime::PrepareFailure::Refused,
                message: e.message,
            },
        }
    }

    async fn start(self: &Arc<Self>, spec: StartSpec) -> Reply {
        if self.draining.is_cancelled() {
            return refused("the runtime worker is draining");
        }
        let prepared = self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&spec.digest)
            .cloned();
        let Some(prepared) = prepared else {
            return refused(format!("module {} is not prepared", spec.digest));
        };
        if self
            .containers()
            .get(&spec.container)
            .is_some_and(|held| held.exit.is_none())
        {
            return refused(format!("container {} is already running", spec.container));
        }
        let log = match self.logs.create(&spec.log) {
            Ok(log) => log,
            Err(e) => {
                return Reply::StartFailed(
                    crate::runtime::StartError::node(
                        format!("opening the log file {}", spec.log.display()),
                        e,
                    )
                    .into(),
                );
            }
        };
        let (warnings_tx, warnings_rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let usage = Arc::new(Usage::default());
        let started_at = spec
            .started_at
            .parse()
            .unwrap_or_else(|_| jiff::Timestamp::now());
        let run = ContainerRun {
            id: spec.container.clone(),
            started_at,
            args: spec.args,
            env: spec.env,
            mounts: spec.mounts,
            state_dir: spec.state_dir,
            stdout: log.writer("stdout"),
            stderr: log.writer("stderr"),
            limits: spec.limits,
            network: spec.network,
            usage: usage.clone(),
            warnings: Warnings::new(&spec.name, warnings_tx),
            stop: stop.clone(),
        };
        let mut running = match self.runtime.start(&prepared, run).await {
            Ok(running) => running,
            Err(e) => {
                log.close();
                return Reply::StartFailed(e.into());
            }
        };
        let graceful = running.stops_gracefully();
        let kill = CancellationToken::new();
        self.containers().insert(
            spec.container.clone(),
            Held {
                graceful,
                started_at,
                stop,
                kill: kill.clone(),
                usage,
                log: log.clone(),
                exit: None,
                reported: None,
            },
        );
        tokio::spawn(forward_warnings(
            self.clone(),
            spec.container.clone(),
            warnings_rx,
        ));
        let worker = self.clone();
        let container = spec.container;
        tokio::spawn(async move {
            let exit = tokio::select! {
                exit = running.wait() => exit,
                () = kill.cancelled() => {
                    running.stop();
                    running.wait().await
                }
            };
            log.close();
            let progress = log.progress_now();
            if let Some(held) = worker.containers().get_mut(&container) {
                held.exit = Some(exit.clone());
            }
            worker.exited.notify_waiters();
            worker.notify(Notice::Exited {
                container,
                exit,
                log: progress,
            });
        });
        Reply::Started { graceful }
    }

    fn stop(&self, container: &str, graceful: bool) -> Reply {
        match self.containers().get(container) {
            Some(held) if graceful => held.stop.cancel(),
            Some(held) => held.kill.cancel(),
            None => return refused(format!("no container {container}")),
        }
        Reply::Done
    }

    fn remove(&self, container: &str) -> Reply {
        if let Some(held) = self.containers().remove(container) {
            // Removing a running container stops it: nobody would ever hear of its exit.
            held.kill.cancel();
        }
        self.exited.notify_waiters();
        Reply::Done
    }

    /// Stops every guest (servers may finish within `grace`), then ends the worker.
    async fn drain(&self, grace: Duration) {
        self.draining.cancel();
        let held: Vec<(CancellationToken, CancellationToken)> = self
            .containers()
            .values()
            .filter(|h| h.exit.is_none())
            .map(|h| (h.stop.clone(), h.kill.clone()))
            .collect();
        for (stop, _) in &held {
            stop.cancel();
        }
        if tokio::time::timeout(grace, self.all_exited())
            .await
            .is_err()
        {
            held.iter().for_each(|(_, kill)| kill.cancel());
            self.all_exited().await;
        }
    }

    /// Returns once no container is running.
    async fn all_exited(&self) {
        loop {
            let exited = self.exited.notified();
            tokio::pin!(exited);
            exited.as_mut().enable();
            if self.containers().values().all(|h| h.exit.is_some()) {
                return;
            }
            exited.await;
        }
    }

    /// Reports usage and log progress of the containers that changed since the last report.
    fn report_usage(&self) {
        // At most one report waits to be sent: an agent that reads slowly (or is stopped)
        // gets the latest figures when it catches up, not a growing queue of old ones.
        if self.usage_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut changed = Vec::new();
        for (id, held) in self.containers().iter_mut() {
            if held.exit.is_some() {
                continue;
            }
            let now = (
                held.usage.cpu_nanos(),
                held.usage.memory_bytes(),
                held.log.progress_now(),
            );
            if held.reported != Some(now) {
                held.reported = Some(now);
                changed.push(UsageReport {
                    container: id.clone(),
                    cpu_nanos: now.0,
                    memory_bytes: now.1,
                    log: now.2,
                });
            }
        }
        if changed.is_empty() {
            self.usage_queued.store(false, Ordering::Release);
        } else {
            self.notify(Notice::Usage {
                containers: changed,
            });
        }
    }
}

fn refused(message: impl Into<String>) -> Reply {
    Reply::Refused {
        message: message.into(),
    }
}

async fn forward_warnings<R: Runtime>(
    worker: Arc<Worker<R>>,
    container: String,
    mut warnings: mpsc::Receiver<crate::runtime::Warning>,
) {
    while let Some(warning) = warnings.recv().await {
        let queued = worker.warnings_queued.fetch_add(1, Ordering::AcqRel);
        if queued >= MAX_QUEUED_WARNINGS {
            worker.warnings_queued.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(
                container,
                "dropped a warning: the agent is not reading them"
            );
            continue;
        }
        worker.notify(Notice::Warning {
            container: container.clone(),
            reason: warning.reason.into_owned(),
            message: warning.message,
        });
    }
}

/// Serves the agent on `options.socket` with `runtime` until drained, or until the socket's
/// directory is removed (then every guest is stopped: the node is gone).
pub async fn serve<R: Runtime>(runtime: R, options: WorkerOptions) -> Result<(), WorkerError> {
    let listener = bind(&options.socket)?;
    let dir = options.socket.parent().unwrap_or(std::path::Path::new("."));
    let key = AgentKey::load_or_create(dir).map_err(|source| WorkerError::Io {
        what: format!("reading the agent's key in {}", dir.display()),
        source,
    })?;
    let pid_file = options.socket.with_extension("pid");
    std::fs::write(&pid_file, std::process::id().to_string()).map_err(|source| {
        WorkerError::Io {
            what: format!("writing {}", pid_file.display()),
            source,
        }
    })?;
    let worker = Arc::new(Worker {
        runtime,
        logs: LogFiles::new(options.logs),
        prepared: Mutex::default(),
        containers: Mutex::default(),
        agent: Mutex::default(),
        agent_connection: Mutex::default(),
        key,
        draining: CancellationToken::new(),
        exited: tokio::sync::Notify::new(),
        usage_queued: AtomicBool::new(false),
        warnings_queued: AtomicUsize::new(0),
    });
    tracing::info!(socket = %options.socket.display(), pid = std::process::id(), "runtime worker serving");
    let mut usage = tokio::time::interval(USAGE_INTERVAL);
    usage.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut socket_check = tokio::time::interval(SOCKET_CHECK_INTERVAL);
    let ungreeted = Arc::new(tokio::sync::Semaphore::new(MAX_UNGREETED));
    let mut idle_since: Option<tokio::time::Instant> = None;
    let max_frame = options.max_module_bytes.max(MAX_MESSAGE_BYTES);
    let ended = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                // Only a connection that greets with the agent's key becomes the agent's (and
                // ends the one before, which is gone or going); the others wait their turn to
                // greet, a few at a time.
                Ok((stream, _)) => match ungreeted.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(serve_agent(worker.clone(), stream, max_frame, permit));
                    }
                    Err(_) => tracing::warn!(
                        "closed a connection to the worker's socket: {MAX_UNGREETED} others have not greeted yet"
                    ),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "accepting the agent's connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = usage.tick() => worker.report_usage(),
            _ = socket_check.tick() => {
                if !options.socket.exists() {
                    tracing::warn!(socket = %options.socket.display(), "the worker's socket was removed (the node's data dir is gone): stopping every guest");
                    worker.drain(Duration::ZERO).await;
                    break Ok(());
                }
                let idle = worker.agent.lock().unwrap_or_else(|p| p.into_inner()).is_none()
                    && worker.containers().values().all(|h| h.exit.is_some());
                match idle_since {
                    Some(since) if idle && since.elapsed() >= ABANDONED_AFTER => {
                        tracing::info!("no agent and no guests for {ABANDONED_AFTER:?}: the worker ends");
                        break Ok(());
                    }
                    Some(_) if idle => {}
                    _ => idle_since = idle.then(tokio::time::Instant::now),
                }
            }
            () = worker.draining.cancelled() => {
                // Drain was asked for: its task stops the guests; leave once they are gone.
                worker.all_exited().await;
                break Ok(());
            }
        }
    };
    let _ = std::fs::remove_file(&options.socket);
    let _ = std::fs::remove_file(&pid_file);
    tracing::info!("runtime worker stopped");
    ended
}

/// Binds the socket, replacing a stale one (a worker that died leaves its socket behind).
fn bind(socket: &std::path::Path) -> Result<UnixListener, WorkerError> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|source| WorkerError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(WorkerError::Io {
            what: format!("binding {}", socket.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another runtime worker serves this socket",
            ),
        });
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(|source| WorkerError::Io {
        what: format!("binding {}", socket.display()),
        source,
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        WorkerError::Io {
            what: format!("restricting {}", socket.display()),
            source,
        }
    })?;
    Ok(listener)
}

/// Serves one connection until it ends: one that greets with the agent's key within
/// [`GREETING_DEADLINE`] is the agent's until it ends or another agent greets; any other is
/// closed. `ungreeted` counts it until it has greeted.
async fn serve_agent<R: Runtime>(
    worker: Arc<Worker<R>>,
    stream: UnixStream,
    max_frame: usize,
    ungreeted: tokio::sync::OwnedSemaphorePermit,
) {
    let (mut sink, mut frames) = Framed::new(stream, protocol::codec(max_frame)).split();
    let first = match tokio::time::timeout(GREETING_DEADLINE, frames.next()).await {
        Ok(Some(Ok(frame))) => frame,
        Ok(_) => return,
        Err(_) => {
            tracing::warn!(
                "closed a connection to the worker's socket that did not greet within {GREETING_DEADLINE:?}"
            );
            return;
        }
    };
    let first: Envelope = match serde_json::from_slice(&first) {
        Ok(Envelope {
            id,
            request: Request::Hello { protocol, key },
        }) if worker.key.admits(&key) => Envelope {
            id,
            request: Request::Hello { protocol, key },
        },
        _ => {
            tracing::warn!(
                "refused a connection to the worker's socket: its greeting did not carry the agent's key"
            );
            let refusal = FromWorker::Reply {
                id: 0,
                reply: refused(
                    "this connection did not greet with the agent's key (<data-dir>/workers/agent.key); only the node agent may connect",
                ),
            };
            if let Ok(json) = serde_json::to_vec(&refusal) {
                let _ = sink.send(Bytes::from(json)).await;
            }
            return;
        }
    };
    drop(ungreeted);
    let mine = CancellationToken::new();
    if let Some(previous) = worker
        .agent_connection
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .replace(mine.clone())
    {
        previous.cancel();
    }
    let (outbox, mut outgoing) = mpsc::unbounded_channel::<FromWorker>();
    // A new connection hears every container's usage: no report of an old one is waiting.
    worker.usage_queued.store(false, Ordering::Release);
    worker.warnings_queued.store(0, Ordering::Release);
    let writer_worker = worker.clone();
    let writer = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            let usage = matches!(
                message,
                FromWorker::Notice {
                    notice: Notice::Usage { .. }
                }
            );
            if let FromWorker::Notice {
                notice: Notice::Warning { .. },
            } = &message
            {
                // Saturating: the count was reset when this connection began.
                let _ = writer_worker.warnings_queued.fetch_update(
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    |n| Some(n.saturating_sub(1)),
                );
            }
            let Ok(json) = serde_json::to_vec(&message) else {
                continue;
            };
            if sink.send(Bytes::from(json)).await.is_err() {
                return;
            }
            if usage {
                writer_worker.usage_queued.store(false, Ordering::Release);
            }
        }
    });
    let mut greeted = false;
    let mut next = Some(first);
    loop {
        let envelope = match next.take() {
            Some(envelope) => envelope,
            None => {
                let frame = tokio::select! {
                    () = mine.cancelled() => break,
                    frame = frames.next() => match frame {
                        Some(Ok(frame)) => frame,
                        _ => break,
                    },
                };
                match serde_json::from_slice(&frame) {
                    Ok(envelope) => envelope,
                    Err(e) => {
                        tracing::warn!(error = %e, "the agent sent a message this worker cannot read; closing the connection");
                        break;
                    }
                }
            }
        };
        let id = envelope.id;
        let reply_to = outbox.clone();
        let reply = move |reply: Reply| {
            let _ = reply_to.send(FromWorker::Reply { id, reply });
        };
        match envelope.request {
            Request::Hello { protocol, .. } => {
                if protocol != PROTOCOL_VERSION {
                    reply(refused(format!(
                        "this worker speaks protocol {PROTOCOL_VERSION}, the agent {protocol}"
                    )));
                    continue;
                }
                greeted = true;
                *worker.agent.lock().unwrap_or_else(|p| p.into_inner()) = Some(outbox.clone());
                reply(Reply::Hello(Box::new(worker.hello())));
            }
            Request::Drain { grace_seconds } => {
                reply(Reply::Done);
                let worker = worker.clone();
                tokio::spawn(async move {
                    worker
                        .drain(crate::time::seconds(
                            i64::try_from(grace_seconds).unwrap_or(i64::MAX),
                        ))
                        .await;
                });
            }
            _ if !greeted => reply(refused("say hello first")),
            Request::Prepare { digest } => {
                let Some(Ok(bytes)) = frames.next().await else {
                    break;
                };
                let worker = worker.clone();
                tokio::spawn(async move { reply(worker.prepare(digest, bytes.freeze()).await) });
            }
            Request::Start(spec) => {
                let worker = worker.clone();
                tokio::spawn(async move { reply(worker.start(*spec).await) });
            }
            Request::Stop {
                container,
                graceful,
            } => reply(worker.stop(&container, graceful)),
            Request::Remove { container } => reply(worker.remove(&container)),
            Request::Forget { digest } => {
                worker
                    .prepared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&digest);
                worker.runtime.forget(&digest);
                reply(Reply::Done);
            }
        }
    }
    // The agent is gone (or another took over); its guests stay.
    {
        let mut current = worker
            .agent_connection
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !mine.is_cancelled() {
            *current = None;
        }
    }
    {
        let mut agent = worker.agent.lock().unwrap_or_else(|p| p.into_inner());
        if agent.as_ref().is_some_and(|a| a.same_channel(&outbox)) {
            *agent = None;
        }
    }
    drop(outbox);
    let _ = writer.await;
}
