//! The agent's side of the runtime workers: a [`Runtime`] that runs every container in one of
//! a few worker processes and follows it there.

use super::WorkerError;
use super::key::AgentKey;
use super::link::{Followed, Link, LinkError};
use super::protocol::{self, Reply, Request, StartSpec};
use super::spawn::Launcher;
use crate::runtime::{
    ContainerRun, Exit, ModuleBytes, PrepareError, Reattach, Reattached, RunningContainer, Runtime,
    StartError,
};
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long the workers' first greetings may take at the agent's start.
const FIRST_HELLO_DEADLINE: Duration = Duration::from_secs(30);
/// Containers found in the workers at start that no pod claims within this long are stopped
/// (their pods were deleted while the agent was away), as the kubelet's container garbage
/// collection removes containers of pods it no longer knows.
pub const CLAIM_WINDOW: Duration = Duration::from_secs(60);

/// Where the workers are and how to start them.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// How many workers hold new containers (`--runtime-workers`).
    pub workers: usize,
    /// The directory of their sockets, pid files and logs (`<data-dir>/workers`).
    pub dir: PathBuf,
    /// How to start one.
    pub launcher: Launcher,
    /// The largest module sent to a worker (`--max-image-size`).
    pub max_module_bytes: usize,
}

/// Runs containers in runtime worker processes that outlive the agent.
pub struct WorkerPool {
    links: Vec<Arc<Link>>,
    arch: String,
    version: String,
    capacity: Option<usize>,
    /// Set when the agent stops without draining: guests are left running.
    detached: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl WorkerPool {
    /// Connects to the workers in `options.dir` (starting those that do not answer) and waits
    /// for each to greet; the containers they hold wait for their pods to claim them.
    pub async fn start(options: PoolOptions) -> Result<Self, WorkerError> {
        std::fs::create_dir_all(&options.dir).map_err(|source| WorkerError::Io {
            what: format!("creating {}", options.dir.display()),
            source,
        })?;
        let key = AgentKey::load_or_create(&options.dir).map_err(|source| WorkerError::Io {
            what: format!(
                "reading the runtime workers' key in {}",
                options.dir.display()
            ),
            source,
        })?;
        let stop = CancellationToken::new();
        let links: Vec<Arc<Link>> = (0..options.workers.max(1))
            .map(|index| {
                let socket = options.dir.join(format!("{index}.sock"));
                Link::new(index, socket, options.launcher.clone(), key.clone())
            })
            .collect();
        for link in &links {
            let run = link.clone().run(options.max_module_bytes);
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = run => {}
                    () = stop.cancelled() => {}
                }
            });
        }
        let mut hellos = Vec::new();
        for link in &links {
            let hello =
                link.first_hello(FIRST_HELLO_DEADLINE)
                    .await
                    .ok_or(WorkerError::NoGreeting {
                        index: link.index,
                        dir: options.dir.clone(),
                    })?;
            hellos.push(hello);
        }
        let capacity = hellos
            .iter()
            .map(|h| h.capacity)
            .try_fold(0usize, |sum, c| c.map(|c| sum.saturating_add(c)));
        let claim_links = links.clone();
        let claim_stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(CLAIM_WINDOW) => claim_links.iter().for_each(|l| l.release_unclaimed()),
                () = claim_stop.cancelled() => {}
            }
        });
        Ok(Self {
            arch: hellos[0].arch.clone(),
            version: hellos[0].version.clone(),
            capacity,
            links,
            detached: Arc::default(),
            stop,
        })
    }

    /// The worker that compiles `digest` first (the others then load its compiled code).
    fn home(&self, digest: &str) -> &Arc<Link> {
        let hash = digest.bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        &self.links[hash % self.links.len()]
    }

    /// Has `link` prepare `module` unless it has.
    async fn prepare_in(link: &Link, module: &ModuleBytes) -> Result<(), PrepareError> {
        if link.has_prepared(&module.digest) {
            return Ok(());
        }
        let request = Request::Prepare {
            digest: module.digest.clone(),
        };
        let bytes = Bytes::copy_from_slice(&module.bytes);
        match link.request(request, Some(bytes)).await {
            Ok(Reply::Done) => {
                link.prepared(&module.digest);
                Ok(())
            }
            Ok(Reply::PrepareFailed {
                message,
                retry: true,
            }) => Err(PrepareError::refused(message)),
            Ok(Reply::PrepareFailed { message, .. }) => Err(PrepareError::not_runnable(message)),
            Ok(other) => Err(PrepareError::refused(unexpected(link, &other))),
            Err(e) => Err(PrepareError::refused(e.to_string())),
        }
    }

    /// Starts the container of `run` in `link`: what it answers when it exits, and whether it
    /// stops gracefully.
    async fn start_in(
        link: &Arc<Link>,
        module: &ModuleBytes,
        run: &ContainerRun,
    ) -> Result<(oneshot::Receiver<Exit>, bool), StartError> {
        // The home worker compiled it; this one loads the compiled code from disk.
        Self::prepare_in(link, module).await.map_err(|e| {
            StartError::node(
                format!("preparing the module in runtime worker {}", link.index),
                e.message,
            )
        })?;
        let log = run.stdout.file().clone();
        let spec = StartSpec::new(
            run.id.clone(),
            module.digest.clone(),
            run,
            log.path().to_path_buf(),
        );
        let (exit_tx, exit_rx) = oneshot::channel();
        link.follow(
            &run.id,
            Followed {
                exit: Some(exit_tx),
                usage: run.usage.clone(),
                warnings: run.warnings.clone(),
                log,
            },
        );
        match link.request(Request::Start(Box::new(spec)), None).await {
            Ok(Reply::Started { graceful }) => Ok((exit_rx, graceful)),
            failed => {
                link.release(&run.id);
                Err(match failed {
                    Ok(Reply::StartFailed(e)) => e.into(),
                    Ok(other) => {
                        StartError::node("starting the container", unexpected(link, &other))
                    }
                    Err(e @ LinkError::Down { .. }) => {
                        StartError::node("starting the container", e)
                    }
                })
            }
        }
    }

    /// Follows container `id` in `link` until it exits; dropping the returned future (the
    /// agent stops the container) stops it in the worker, unless the agent is detaching.
    fn follow(
        &self,
        link: &Arc<Link>,
        id: String,
        exit: oneshot::Receiver<Exit>,
        stop: CancellationToken,
        graceful: bool,
    ) -> RunningContainer {
        let guard = StopOnDrop {
            link: link.clone(),
            id,
            detached: self.detached.clone(),
            armed: true,
        };
        let task = tokio::spawn(async move {
            let mut guard = guard;
            let mut exit = exit;
            let ended = if graceful {
                tokio::select! {
                    ended = &mut exit => ended,
                    () = stop.cancelled() => {
                        guard.link.send(Request::Stop { container: guard.id.clone(), graceful: true });
                        exit.await
                    }
                }
            } else {
                exit.await
            };
            guard.armed = false;
            guard.link.release(&guard.id);
            ended.unwrap_or_else(|_| Exit {
                code: 137,
                reason: Some("ContainerStatusUnknown".into()),
                message: Some(
                    "The container could not be located: the agent lost its runtime worker".into(),
                ),
            })
        });
        if graceful {
            RunningContainer::graceful(task)
        } else {
            RunningContainer::new(task)
        }
    }
}

/// Stops a followed container in its worker when the agent stops it (its follower is dropped
/// before the exit came), unless the agent is leaving its guests running.
struct StopOnDrop {
    link: Arc<Link>,
    id: String,
    detached: Arc<AtomicBool>,
    armed: bool,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if self.armed && !self.detached.load(Ordering::Relaxed) {
            self.link.release(&self.id);
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn unexpected(link: &Link, reply: &Reply) -> String {
    match reply {
        Reply::Refused { message } => format!("runtime worker {} refused: {message}", link.index),
        other => format!(
            "runtime worker {} answered out of turn: {other:?}",
            link.index
        ),
    }
}

impl Runtime for WorkerPool {
    type Prepared = ModuleBytes;

    fn arch(&self) -> &str {
        &self.arch
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    fn capacity(&self) -> Option<usize> {
        self.capacity
    }

    fn forget(&self, digest: &str) {
        self.links.iter().for_each(|link| link.forget(digest));
    }

    async fn prepare(&self, module: ModuleBytes) -> Result<ModuleBytes, PrepareError> {
        Self::prepare_in(self.home(&module.digest), &module).await?;
        Ok(module)
    }

    async fn start(
        &self,
        module: &ModuleBytes,
        run: ContainerRun,
    ) -> Result<RunningContainer, StartError> {
        self.links
            .iter()
            .for_each(|link| link.discard_unclaimed(&run.id));
        // A pod with a network of its own runs only where the worker can enter it (a worker
        // of an older build would run the guest on the node's network).
        let needs = run.network.netns.as_ref().map(|_| protocol::FEATURE_NETNS);
        let mut candidates: Vec<&Arc<Link>> = self
            .links
            .iter()
            .filter(|link| needs.is_none_or(|feature| link.supports(feature)))
            .collect();
        candidates.sort_by_key(|link| link.load());
        let mut full = None;
        // The least loaded worker first; one with no room for it, then the next.
        for link in candidates {
            match Self::start_in(link, module, &run).await {
                Ok((exit, graceful)) => {
                    return Ok(self.follow(link, run.id, exit, run.stop, graceful));
                }
                Err(StartError::Full(message)) => {
                    full = Some(StartError::Full(format!(
                        "runtime worker {}: {message}",
                        link.index
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        Err(full.unwrap_or_else(|| {
            StartError::node(
                "choosing a runtime worker",
                "no runtime worker of this node runs pods in network namespaces of their own yet (they are from an older build); restart the agent with --runtime-workers changed, or wait until the old workers have no pods and exit",
            )
        }))
    }

    fn reattach(&self, container: Reattach) -> Option<Reattached> {
        let Reattach {
            id,
            log,
            usage,
            warnings,
            stop,
        } = container;
        let link = self.links.iter().find(|link| link.holds(&id))?;
        let followed = Followed {
            exit: None,
            usage,
            warnings,
            log,
        };
        let (held, exit) = link.claim(&id, followed)?;
        Some(Reattached {
            running: self.follow(link, id, exit, stop, held.graceful),
            started_at: held.started_at.parse().ok(),
        })
    }

    fn holds(&self, id: &str) -> bool {
        self.links.iter().any(|link| link.holds(id))
    }

    fn detach(&self) -> bool {
        self.detached.store(true, Ordering::Relaxed);
        true
    }

    fn detached(&self) -> bool {
        self.detached.load(Ordering::Relaxed)
    }
}
