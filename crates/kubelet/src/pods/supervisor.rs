//! One task per pod: admit it, pull images, prepare modules, start containers (init containers
//! first, one at a time), follow their exits through the restart policy with backoff, keep the
//! status true, and on deletion stop everything, write the final status and remove the pod.

use super::PodContext;
use super::admission::{self, Rejection};
use super::backoff::Backoff;
use super::host::{PodEvent, PodHost};
use super::probes::{self, ContainerProbes, Update};
use super::status::{self, Snapshot, now};
use super::status_writer::{StatusWriter, Written};
use super::volumes::PodVolumes;
use super::{container, network, resources};
use crate::images::credentials::Keyring;
use crate::images::{PullError, PullPolicy, Source};
use crate::logs::LogFile;
use crate::metrics::metrics;
use crate::runtime::{ContainerRun, Exit, PrepareFailure, Runtime, Usage, Warning, Warnings};
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long a postStart hook may take (the kubelet bounds it by the pod's grace period).
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// The reason and exit code of a container that could not be started, as containerd's.
const START_ERROR: &str = "StartError";
const START_ERROR_CODE: i32 = 128;

/// How long the agent, stopping, tries to report a pod's stopped containers.
const SHUTDOWN_STATUS_DEADLINE: Duration = Duration::from_secs(10);
/// Warnings from running containers waiting for the supervisor; more are dropped (each
/// container's are rate-limited where they are made).
const WARNINGS_QUEUED: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SlotId {
    init: bool,
    index: usize,
}

struct Run {
    id: u64,
    /// The task that owns the guest and waits for its exit: dropping the run (also when this
    /// supervisor unwinds from a panic) stops the guest, so none is ever left unowned.
    stop: tokio_util::task::AbortOnDropHandle<()>,
    /// Asks the container to stop; `graceful` when it ends by itself once asked.
    interrupt: CancellationToken,
    graceful: bool,
    /// The container's hooks and probes; dropped (and so stopped) with the run.
    _probes: tokio_util::task::AbortOnDropHandle<()>,
    log: Arc<LogFile>,
    started: Instant,
    started_at: Time,
}

struct Slot {
    spec: Container,
    status: ContainerStatus,
    restart_backoff: Backoff,
    pull_failures: u32,
    due: Option<Instant>,
    run: Option<Run>,
    runs: u64,
}

/// Why the supervisor stopped a step early.
enum Interrupt {
    /// The pod is being deleted or is gone.
    Deleted,
}

/// Supervises one pod until it is removed.
pub struct Supervisor<R: Runtime, H: PodHost> {
    ctx: Arc<PodContext<R, H>>,
    pod: Pod,
    updates: watch::Receiver<Option<Pod>>,
    init: Vec<Slot>,
    app: Vec<Slot>,
    start_time: Time,
    /// `start_time` on the monotonic clock, which deadlines are counted on.
    started: Instant,
    status: StatusWriter,
    exits_tx: mpsc::UnboundedSender<(SlotId, u64, Exit)>,
    exits: mpsc::UnboundedReceiver<(SlotId, u64, Exit)>,
    probes_tx: mpsc::UnboundedSender<(SlotId, u64, Update)>,
    probes: mpsc::UnboundedReceiver<(SlotId, u64, Update)>,
    /// Warnings the runtime reports about running containers (rate-limited at the source).
    warnings_tx: mpsc::Sender<Warning>,
    warnings: mpsc::Receiver<Warning>,
    finished: bool,
    volumes: Option<PodVolumes>,
    /// When the API-backed volumes are next written again (and emptyDir limits checked).
    volume_sync: Option<Instant>,
    mount_backoff: Backoff,
    /// A pod-level failure (reason, message), such as DeadlineExceeded.
    failure: Option<(String, String)>,
    /// When the supervisor first saw the pod, until its first app container ran (for the
    /// pod start duration metric).
    seen: Option<Instant>,
}

fn slot(spec: &Container, reason: &str) -> Slot {
    Slot {
        status: ContainerStatus {
            name: spec.name.clone(),
            image: spec.image.clone().unwrap_or_default(),
            image_id: String::new(),
            ready: false,
            started: Some(false),
            restart_count: 0,
            state: Some(status::waiting(reason, None)),
            ..Default::default()
        },
        spec: spec.clone(),
        restart_backoff: Backoff::default(),
        pull_failures: 0,
        due: None,
        run: None,
        runs: 0,
    }
}

impl<R: Runtime, H: PodHost> Supervisor<R, H> {
    /// A supervisor for `pod`; `updates` carries newer versions, and `None` once the pod is gone.
    pub fn new(
        ctx: Arc<PodContext<R, H>>,
        pod: Pod,
        updates: watch::Receiver<Option<Pod>>,
    ) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let inits = spec.init_containers.unwrap_or_default();
        let app_reason = if inits.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let init: Vec<Slot> = inits.iter().map(|c| slot(c, "PodInitializing")).collect();
        let app: Vec<Slot> = spec
            .containers
            .iter()
            .map(|c| slot(c, app_reason))
            .collect();
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let (probes_tx, probes) = mpsc::unbounded_channel();
        let (warnings_tx, warnings) = mpsc::channel(WARNINGS_QUEUED);
        Self {
            ctx,
            pod,
            updates,
            init,
            app,
            start_time: now(),
            started: Instant::now(),
            status: StatusWriter::default(),
            exits_tx,
            exits,
            probes_tx,
            probes,
            warnings_tx,
            warnings,
            finished: false,
            volumes: None,
            volume_sync: None,
            mount_backoff: Backoff::default(),
            failure: None,
            seen: Some(Instant::now()),
        }
    }

    fn ns(&self) -> String {
        self.pod.namespace().unwrap_or_default()
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn is_deleting(pod: &Pod) -> bool {
        pod.metadata.deletion_timestamp.is_some()
    }

    /// Runs the pod to its removal.
    pub async fn run(mut self) {
        let (ns, name) = (self.ns(), self.pod.name_any());
        let recorded = self.pod.status.clone().unwrap_or_default();
        let ran_before = recorded
            .container_statuses
            .as_ref()
            .is_some_and(|c| !c.is_empty());
        if recorded.phase.as_deref() == Some("Failed") && !ran_before {
            // Rejected before this agent restarted: it stays rejected.
            self.await_deletion_of_rejected().await;
            return;
        }
        if !ran_before {
            let node = &self.ctx.node;
            let admitted = self.ctx.registry.admit(&ns, &name, &self.pod, |active| {
                admission::admit(&self.pod, node, active)
            });
            if let Err(rejection) = admitted {
                self.reject(rejection).await;
                return;
            }
        }
        self.ctx.registry.upsert(&ns, &name, self.pod.clone());
        if Self::is_deleting(&self.pod) {
            self.terminate().await;
            return;
        }
        if ran_before {
            self.adopt(&recorded);
        } else {
            self.publish().await;
            match self.init.first_mut() {
                Some(first) => first.due = Some(Instant::now()),
                None => self
                    .app
                    .iter_mut()
                    .for_each(|s| s.due = Some(Instant::now())),
            }
        }
        loop {
            if let Err(Interrupt::Deleted) = self.start_due().await {
                break;
            }
            self.update_finished();
            self.publish().await;
            let next_due = self
                .init
                .iter()
                .chain(&self.app)
                .filter_map(|s| s.due)
                .min();
            let deadline = self.active_deadline().filter(|_| !self.finished);
            let volume_sync = self.volume_sync.filter(|_| !self.finished);
            let wake = [next_due, self.status.retry_at(), deadline, volume_sync]
                .into_iter()
                .flatten()
                .min();
            if deadline.is_some_and(|d| d <= Instant::now()) {
                self.exceed_deadline().await;
                continue;
            }
            if volume_sync.is_some_and(|d| d <= Instant::now()) {
                self.sync_volumes().await;
                continue;
            }
            tokio::select! {
                changed = self.updates.changed() => {
                    let latest = if changed.is_ok() { self.updates.borrow_and_update().clone() } else { None };
                    match latest {
                        Some(pod) if !Self::is_deleting(&pod) => {
                            self.ctx.registry.upsert(&ns, &name, pod.clone());
                            self.pod = pod;
                        }
                        Some(pod) => {
                            self.pod = pod;
                            break;
                        }
                        None => {
                            self.stop_all(false).await;
                            self.finished = true;
                            self.cleanup();
                            return;
                        }
                    }
                }
                Some((id, run, exit)) = self.exits.recv() => self.on_exit(id, run, exit).await,
                Some((id, run, update)) = self.probes.recv() => self.on_probe(id, run, update).await,
                Some(warning) = self.warnings.recv() => self.on_warning(warning).await,
                _ = self.ctx.stopping.cancelled() => {
                    self.shut_down().await;
                    return;
                }
                _ = sleep_until(wake) => {}
            }
        }
        self.terminate().await;
    }

    async fn reject(&mut self, rejection: Rejection) {
        tracing::info!(pod = %self.pod.name_any(), reason = %rejection.reason, "{}", rejection.message);
        self.event(PodEvent::warning(
            "",
            &rejection.reason,
            rejection.message.clone(),
        ))
        .await;
        let status = PodStatus {
            phase: Some("Failed".into()),
            reason: Some(rejection.reason),
            message: Some(rejection.message),
            start_time: Some(self.start_time.clone()),
            ..Default::default()
        };
        let gone = removed(self.updates.clone());
        let written = self
            .status
            .write_until(&*self.ctx.host, &self.pod, &status, gone)
            .await;
        if written == Written::Done {
            self.await_deletion_of_rejected().await;
        }
    }

    /// A rejected pod stays Failed until it is deleted; then it is removed at once.
    async fn await_deletion_of_rejected(&mut self) {
        if Self::is_deleting(&self.pod) {
            self.ctx.host.finish_deletion(&self.pod).await;
            return;
        }
        while self.updates.changed().await.is_ok() {
            let latest = self.updates.borrow_and_update().clone();
            match latest {
                Some(pod) if Self::is_deleting(&pod) => {
                    self.ctx.host.finish_deletion(&pod).await;
                    return;
                }
                Some(_) => {}
                None => return,
            }
        }
    }

    /// Takes over a pod this node ran before the agent restarted: restart counts, image ids and
    /// finished containers are kept; containers that were running are gone (their process was
    /// this agent) and go through the restart policy as the kubelet treats lost containers.
    fn adopt(&mut self, recorded: &PodStatus) {
        if let Some(start) = &recorded.start_time {
            self.start_time = start.clone();
            let elapsed = jiff::Timestamp::now().duration_since(start.0);
            let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
            self.started = Instant::now()
                .checked_sub(elapsed)
                .unwrap_or_else(Instant::now);
        }
        if recorded.phase.as_deref() == Some("Failed")
            && let Some(reason) = &recorded.reason
        {
            self.failure = Some((reason.clone(), recorded.message.clone().unwrap_or_default()));
        }
        let policy = self.restart_policy();
        for (slots, statuses, init) in [
            (&mut self.init, &recorded.init_container_statuses, true),
            (&mut self.app, &recorded.container_statuses, false),
        ] {
            for slot in slots.iter_mut() {
                let Some(old) = statuses.iter().flatten().find(|c| c.name == slot.spec.name) else {
                    continue;
                };
                slot.status.restart_count = old.restart_count;
                slot.status.image_id = old.image_id.clone();
                slot.status.container_id = old.container_id.clone();
                slot.status.last_state = old.last_state.clone();
                let state = old.state.clone().unwrap_or_default();
                if state.running.is_some()
                    || state.terminated.is_some()
                    || old
                        .last_state
                        .as_ref()
                        .is_some_and(|l| l.terminated.is_some())
                {
                    slot.runs = 1;
                }
                slot.status.state = match (state.running, state.terminated) {
                    (Some(running), _) => Some(status::terminated(
                        137,
                        "ContainerStatusUnknown".into(),
                        Some("The container could not be located: the node agent restarted while it ran".into()),
                        running.started_at,
                        old.container_id.clone(),
                    )),
                    _ => old.state.clone(),
                };
                let exit_code = slot
                    .status
                    .state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| t.exit_code);
                slot.due = match exit_code {
                    Some(code) if !should_restart(init, &policy, code) => None,
                    _ => Some(Instant::now()),
                };
            }
        }
        // Only the first unfinished init container may run, and app containers only after them.
        let mut blocked = false;
        for slot in self.init.iter_mut() {
            if blocked {
                slot.due = None;
            }
            let succeeded = slot
                .status
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0);
            blocked |= !succeeded;
        }
        if blocked {
            self.app.iter_mut().for_each(|s| s.due = None);
        }
        self.update_finished();
        if self.finished {
            self.status.assume_published(recorded.clone());
        }
        self.register_existing_logs();
    }

    /// Makes the logs of earlier runs (still in the data dir) readable again.
    fn register_existing_logs(&self) {
        let logs_dir = self
            .ctx
            .pods_dir
            .join(self.pod.uid().unwrap_or_default())
            .join("logs");
        for slot in self.init.iter().chain(&self.app) {
            let Ok(entries) = std::fs::read_dir(logs_dir.join(&slot.spec.name)) else {
                continue;
            };
            let mut runs: Vec<(u64, std::path::PathBuf)> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter_map(|p| Some((p.file_stem()?.to_str()?.parse().ok()?, p)))
                .collect();
            runs.sort();
            for (_, path) in runs.into_iter().rev().take(2).rev() {
                self.ctx
                    .registry
                    .new_log(&self.ns(), &self.pod.name_any(), &slot.spec.name, path);
            }
        }
    }

    /// A running container's warning goes to the pod's events and the agent's log.
    async fn on_warning(&self, warning: Warning) {
        tracing::warn!(
            pod = %self.pod.name_any(),
            container = %warning.container,
            reason = warning.reason,
            "{}",
            warning.message
        );
        self.event(PodEvent::warning(
            &warning.container,
            warning.reason,
            warning.message,
        ))
        .await;
    }

    async fn event(&self, event: PodEvent) {
        self.ctx.host.record(&self.pod, event).await;
    }

    fn slot_mut(&mut self, id: SlotId) -> &mut Slot {
        if id.init {
            &mut self.init[id.index]
        } else {
            &mut self.app[id.index]
        }
    }

    async fn start_due(&mut self) -> Result<(), Interrupt> {
        let now = Instant::now();
        let due: Vec<SlotId> = self
            .init
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    SlotId {
                        init: true,
                        index: i,
                    },
                    s,
                )
            })
            .chain(self.app.iter().enumerate().map(|(i, s)| {
                (
                    SlotId {
                        init: false,
                        index: i,
                    },
                    s,
                )
            }))
            .filter(|(_, s)| s.run.is_none() && s.due.is_some_and(|d| d <= now))
            .map(|(id, _)| id)
            .collect();
        for id in due {
            self.slot_mut(id).due = None;
            let span = tracing::info_span!("container", name = %self.slot_mut(id).spec.name);
            self.start(id).instrument(span).await?;
        }
        Ok(())
    }

    /// Waits for `fut` unless the pod is deleted first.
    async fn unless_deleted<T>(
        updates: &mut watch::Receiver<Option<Pod>>,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, Interrupt> {
        let deleted = async {
            loop {
                if updates.changed().await.is_err() {
                    return;
                }
                let gone = updates.borrow().as_ref().is_none_or(Self::is_deleting);
                if gone {
                    return;
                }
            }
        };
        tokio::select! {
            value = fut => Ok(value),
            () = deleted => Err(Interrupt::Deleted),
        }
    }

    async fn start(&mut self, id: SlotId) -> Result<(), Interrupt> {
        let spec = self.slot_mut(id).spec.clone();
        let name = spec.name.clone();
        let image = spec.image.clone().unwrap_or_default();
        let policy = PullPolicy::for_container(spec.image_pull_policy.as_deref(), &image);
        if policy == PullPolicy::Always
            || !self.ctx.images.is_present(&image) && policy != PullPolicy::Never
        {
            self.event(PodEvent::normal(
                &name,
                "Pulling",
                format!("Pulling image \"{image}\""),
            ))
            .await;
        }
        let began = Instant::now();
        let images = self.ctx.images.clone();
        let keyring = self.keyring().await;
        let pulled =
            Self::unless_deleted(&mut self.updates, images.get(&image, policy, &keyring)).await?;
        let (pulled, source) = match pulled {
            Ok(p) => p,
            Err(e) => {
                metrics().image_pull_failed();
                self.pull_failed(id, &image, e).await;
                return Ok(());
            }
        };
        match source {
            Source::Pulled => metrics().image_pulled(began.elapsed()),
            Source::Present => metrics().image_present(),
        }
        self.slot_mut(id).pull_failures = 0;
        let pulled_message = match source {
            Source::Pulled => format!(
                "Successfully pulled image \"{image}\" in {:.3}s. Image size: {} bytes.",
                began.elapsed().as_secs_f64(),
                pulled.module.bytes.len()
            ),
            Source::Present => format!("Container image \"{image}\" already present on machine"),
        };
        self.event(PodEvent::normal(&name, "Pulled", pulled_message))
            .await;
        self.slot_mut(id).status.image_id = pulled.image_id.clone();
        let prepared = match self.ctx.runtime.prepare(pulled.module.clone()).await {
            Ok(p) => p,
            Err(e) => {
                let message = format!("the image's module cannot run on this node: {e}");
                match e.kind {
                    PrepareFailure::NotRunnable => self.failed_to_start(id, message).await,
                    PrepareFailure::Refused => {
                        self.failed_to_create(id, "CreateContainerError", message)
                            .await;
                    }
                }
                return Ok(());
            }
        };
        let uid = self.pod.uid().unwrap_or_default();
        let pod_dir = self.ctx.pods_dir.join(&uid);
        if self.volumes.is_none() {
            let (ctx, pod) = (self.ctx.clone(), self.pod.clone());
            let volumes_dir = pod_dir.join("volumes");
            let prepared = PodVolumes::prepare(
                ctx.host.as_ref(),
                &pod,
                &volumes_dir,
                ctx.node_context(),
                &ctx.allowed_host_paths,
            );
            match Self::unless_deleted(&mut self.updates, prepared).await? {
                Ok(v) => {
                    self.volumes = Some(v);
                    self.volume_sync = Some(crate::time::deadline_in(self.ctx.sync_frequency));
                }
                Err(e) => {
                    let delay = self
                        .mount_backoff
                        .next(Duration::ZERO)
                        .max(Duration::from_secs(1));
                    self.slot_mut(id).due = Some(crate::time::deadline_in(delay));
                    self.event(PodEvent::warning("", "FailedMount", e.to_string()))
                        .await;
                    return Ok(());
                }
            }
        }
        let volume_dirs = self
            .volumes
            .as_ref()
            .map(|v| v.dirs().clone())
            .unwrap_or_default();
        let sources = self.env_sources(&spec).await;
        let resolved = container::process(&self.pod, &spec, &self.ctx.node_context(), &sources)
            .and_then(|p| container::mounts(&self.pod, &spec, &volume_dirs, &p).map(|m| (p, m)));
        let (process, mounts) = match resolved {
            Ok(r) => r,
            Err(e) => {
                self.failed_to_create(id, "CreateContainerConfigError", e.0)
                    .await;
                return Ok(());
            }
        };
        let restarts =
            self.slot_mut(id).status.restart_count + i32::from(self.slot_mut(id).runs > 0);
        let log_path = pod_dir
            .join("logs")
            .join(&name)
            .join(format!("{restarts}.log"));
        if let Some(dir) = log_path.parent()
            && let Err(e) = crate::logs::remove_runs_before(dir, i64::from(restarts) - 1)
        {
            tracing::warn!(error = %e, "removing the logs of earlier runs failed");
        }
        let label = format!("{}/{name}", self.pod.name_any());
        let log = match self.ctx.logs.for_container(&log_path, &label) {
            Ok(log) => log,
            Err(e) => {
                self.failed_to_create(
                    id,
                    "CreateContainerError",
                    format!("creating log file {}: {e}", log_path.display()),
                )
                .await;
                return Ok(());
            }
        };
        let usage = Arc::new(Usage::default());
        let interrupt = CancellationToken::new();
        let run = ContainerRun {
            stop: interrupt.clone(),
            args: process.args,
            env: process.env,
            mounts,
            stdout: log.writer("stdout"),
            stderr: log.writer("stderr"),
            limits: resources::limits(&spec),
            usage: usage.clone(),
            warnings: Warnings::new(&name, self.warnings_tx.clone()),
            network: network::network(
                &self.pod,
                &spec,
                self.ctx
                    .node_ip
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
            ),
        };
        let mut running = match self.ctx.runtime.start(&prepared, run).await {
            Ok(r) => r,
            Err(e) => {
                log.close();
                self.failed_to_create(id, "CreateContainerError", e.to_string())
                    .await;
                return Ok(());
            }
        };
        self.ctx
            .registry
            .new_log(&self.ns(), &self.pod.name_any(), &name, log_path);
        self.ctx
            .registry
            .started(&self.ns(), &self.pod.name_any(), &name, usage);
        metrics().container_started(id.init);
        if !id.init
            && let Some(seen) = self.seen.take()
        {
            metrics().pod_started(seen.elapsed());
        }
        let started_at = now();
        let exits = self.exits_tx.clone();
        let checks = ContainerProbes::of(&spec, &self.ctx.node_ip);
        let post_start = spec
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
            .map(|hook| probes::hook_action(hook, &spec, &self.ctx.node_ip));
        let run_id = self.begin_run(id);
        let slot = self.slot_mut(id);
        slot.status.state = Some(status::running(started_at.clone()));
        slot.status.started = Some(!checks.has_startup());
        slot.status.ready = !id.init && !checks.has_startup() && !checks.has_readiness();
        let graceful = running.stops_gracefully();
        let waiter = tokio::spawn(
            async move {
                let exit = running.wait().await;
                let _ = exits.send((id, run_id, exit));
                drop(running);
            }
            .in_current_span(),
        );
        let probe_task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            watch_container(post_start, checks, self.probes_tx.clone(), id, run_id)
                .in_current_span(),
        ));
        let slot = self.slot_mut(id);
        slot.run = Some(Run {
            id: run_id,
            stop: tokio_util::task::AbortOnDropHandle::new(waiter),
            interrupt,
            graceful,
            _probes: probe_task,
            log,
            started: Instant::now(),
            started_at,
        });
        self.event(PodEvent::normal(
            &name,
            "Created",
            format!("Created container: {name}"),
        ))
        .await;
        self.event(PodEvent::normal(
            &name,
            "Started",
            format!("Started container {name}"),
        ))
        .await;
        Ok(())
    }

    /// Reads the ConfigMaps and Secrets the container's environment refers to (a read error
    /// counts as absent, and the container retries with backoff).
    async fn env_sources(
        &self,
        spec: &k8s_openapi::api::core::v1::Container,
    ) -> container::EnvSources {
        let ns = self.ns();
        let (config_maps, secrets) = container::env_references(spec);
        let mut sources = container::EnvSources::default();
        for name in config_maps {
            let data = self
                .ctx
                .host
                .config_map(&ns, &name)
                .await
                .ok()
                .flatten()
                .map(|cm| {
                    let mut data = cm.data.unwrap_or_default();
                    data.extend(
                        cm.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned())),
                    );
                    data
                });
            sources.config_maps.insert(name, data);
        }
        for name in secrets {
            let data = self
                .ctx
                .host
                .secret(&ns, &name)
                .await
                .ok()
                .flatten()
                .map(|secret| {
                    secret
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                        .collect()
                });
            sources.secrets.insert(name, data);
        }
        sources
    }

    /// The pod's image pull secrets, then the node's credentials; read at every pull, as the
    /// kubelet does, so a secret created later is used.
    async fn keyring(&self) -> Keyring {
        let mut keyring = Keyring::default();
        let ns = self.ns();
        let mut missing = Vec::new();
        for reference in self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
        {
            let name = reference.name.clone();
            let found = match self.ctx.host.secret(&ns, &name).await {
                Ok(Some(secret)) => secret,
                _ => {
                    missing.push(name);
                    continue;
                }
            };
            let data = found.data.unwrap_or_default();
            let config = data
                .get(".dockerconfigjson")
                .or_else(|| data.get(".dockercfg"));
            match config.map(|c| keyring.add_docker_config(&c.0)) {
                Some(Ok(())) => {}
                Some(Err(e)) => missing.push(format!("{name}: {e}")),
                None => missing.push(format!("{name}: no .dockerconfigjson or .dockercfg key")),
            }
        }
        if !missing.is_empty() {
            let message = format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                missing.join(", ")
            );
            self.event(PodEvent::warning(
                "",
                "FailedToRetrieveImagePullSecret",
                message,
            ))
            .await;
        }
        keyring.extend(&self.ctx.node_credentials);
        keyring
    }

    async fn pull_failed(&mut self, id: SlotId, image: &str, error: PullError) {
        let name = self.slot_mut(id).spec.name.clone();
        let message = error.to_string();
        let slot = self.slot_mut(id);
        slot.pull_failures += 1;
        let failures = slot.pull_failures;
        let delay = Duration::from_secs(10 * 2u64.pow(failures.saturating_sub(1).min(5)))
            .min(Duration::from_secs(300));
        slot.due = Some(crate::time::deadline_in(delay));
        let (reason, event_reason) = match error {
            PullError::NeverPull(_) => ("ErrImageNeverPull", "ErrImageNeverPull"),
            PullError::InvalidReference(..) => ("InvalidImageName", "InspectFailed"),
            _ if failures > 1 => ("ImagePullBackOff", "BackOff"),
            _ => ("ErrImagePull", "Failed"),
        };
        let state_message = if reason == "ImagePullBackOff" {
            format!("Back-off pulling image \"{image}\": {message}")
        } else {
            message.clone()
        };
        slot.status.state = Some(status::waiting(reason, Some(state_message)));
        match reason {
            "InvalidImageName" => {
                self.event(PodEvent::warning(&name, event_reason, message))
                    .await;
                self.event(PodEvent::warning(
                    &name,
                    "Failed",
                    "Error: InvalidImageName".into(),
                ))
                .await;
            }
            "ErrImageNeverPull" => {
                self.event(PodEvent::warning(&name, "ErrImageNeverPull", message))
                    .await
            }
            "ImagePullBackOff" => {
                self.event(PodEvent::normal(
                    &name,
                    event_reason,
                    format!("Back-off pulling image \"{image}\""),
                ))
                .await;
                self.event(PodEvent::warning(
                    &name,
                    "Failed",
                    "Error: ImagePullBackOff".into(),
                ))
                .await;
            }
            _ => {
                self.event(PodEvent::warning(
                    &name,
                    "Failed",
                    format!("Failed to pull image \"{image}\": {message}"),
                ))
                .await;
                self.event(PodEvent::warning(
                    &name,
                    "Failed",
                    "Error: ErrImagePull".into(),
                ))
                .await;
            }
        }
    }

    /// Counts a new run of the container (a restart after the first) and names it: the last
    /// termination becomes `lastState`. Returns the run's number.
    fn begin_run(&mut self, id: SlotId) -> u64 {
        let (pod_key, uid) = (
            format!("{}/{}", self.ns(), self.pod.name_any()),
            self.pod.uid().unwrap_or_default(),
        );
        let slot = self.slot_mut(id);
        slot.runs += 1;
        let run_id = slot.runs;
        if run_id > 1 {
            slot.status.restart_count += 1;
            slot.status.last_state = slot
                .status
                .state
                .take()
                .filter(|s| s.terminated.is_some())
                .or(slot.status.last_state.take());
        }
        slot.status.container_id = Some(container_id(&pod_key, &uid, &slot.spec.name, run_id));
        run_id
    }

    /// The container's module can never run: as containerd reports a process that cannot be
    /// started, the container is terminated with `StartError` (exit code 128) and its restart
    /// policy decides what follows.
    async fn failed_to_start(&mut self, id: SlotId, message: String) {
        metrics().container_start_failed(id.init, START_ERROR);
        self.begin_run(id);
        let slot = self.slot_mut(id);
        let name = slot.spec.name.clone();
        slot.status.state = Some(status::terminated(
            START_ERROR_CODE,
            START_ERROR.into(),
            Some(message.clone()),
            None,
            slot.status.container_id.clone(),
        ));
        slot.status.ready = false;
        slot.status.started = Some(false);
        tracing::info!(reason = START_ERROR, "{message}");
        self.event(PodEvent::warning(
            &name,
            "Failed",
            format!("Error: {message}"),
        ))
        .await;
        self.after_termination(id, START_ERROR_CODE, Duration::ZERO)
            .await;
    }

    async fn failed_to_create(&mut self, id: SlotId, reason: &str, message: String) {
        metrics().container_start_failed(id.init, reason);
        let slot = self.slot_mut(id);
        let name = slot.spec.name.clone();
        let delay = slot
            .restart_backoff
            .next(Duration::ZERO)
            .max(Duration::from_secs(10));
        slot.due = Some(crate::time::deadline_in(delay));
        slot.status.state = Some(status::waiting(reason, Some(message.clone())));
        tracing::info!(pod = %self.pod.name_any(), container = %name, reason, "{message}");
        self.event(PodEvent::warning(
            &name,
            "Failed",
            format!("Error: {message}"),
        ))
        .await;
    }

    async fn on_exit(&mut self, id: SlotId, run_id: u64, exit: Exit) {
        let slot = self.slot_mut(id);
        if slot.run.as_ref().is_none_or(|r| r.id != run_id) {
            return;
        }
        let run = slot.run.take().expect("checked above");
        run.log.close();
        let reason = exit.reason.clone().unwrap_or_else(|| {
            if exit.code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            }
        });
        slot.status.state = Some(status::terminated(
            exit.code,
            reason,
            exit.message.clone(),
            Some(run.started_at),
            slot.status.container_id.clone(),
        ));
        slot.status.ready = false;
        slot.status.started = Some(false);
        self.after_termination(id, exit.code, run.started.elapsed())
            .await;
    }

    /// What follows a container's termination with `code` after it ran for `ran_for`: the
    /// next init container or the app containers, a restart (after its back-off), or nothing.
    async fn after_termination(&mut self, id: SlotId, code: i32, ran_for: Duration) {
        let policy = self.restart_policy();
        let pod_name = self.pod.name_any();
        let (ns, uid) = (self.ns(), self.pod.uid().unwrap_or_default());
        let slot = self.slot_mut(id);
        let name = slot.spec.name.clone();
        let failed = code != 0;
        let restart = should_restart(id.init, &policy, code);
        if !restart {
            if id.init && !failed {
                match self.init.get_mut(id.index + 1) {
                    Some(next) => next.due = Some(Instant::now()),
                    None => {
                        for app in &mut self.app {
                            app.due = Some(Instant::now());
                            app.status.state = Some(status::waiting("ContainerCreating", None));
                        }
                    }
                }
            }
            return;
        }
        let delay = slot.restart_backoff.next(ran_for);
        slot.due = Some(crate::time::deadline_in(delay));
        if delay.is_zero() {
            return;
        }
        let last = slot.status.state.take();
        slot.status.last_state = last;
        slot.status.state = Some(status::waiting(
            "CrashLoopBackOff",
            Some(format!(
                "back-off {}s restarting failed container={name} pod={pod_name}_{ns}({uid})",
                delay.as_secs()
            )),
        ));
        self.event(PodEvent::warning(
            &name,
            "BackOff",
            format!("Back-off restarting failed container {name} in pod {pod_name}_{ns}({uid})"),
        ))
        .await;
    }

    /// Applies what a container's hooks and probes found.
    async fn on_probe(&mut self, id: SlotId, run_id: u64, update: Update) {
        let slot = self.slot_mut(id);
        if slot.run.as_ref().is_none_or(|r| r.id != run_id) {
            return;
        }
        let name = slot.spec.name.clone();
        let has_readiness = slot.spec.readiness_probe.is_some();
        match update {
            Update::Started => {
                slot.status.started = Some(true);
                slot.status.ready = !id.init && !has_readiness;
            }
            Update::Ready(ready) => {
                slot.status.ready = ready && slot.status.started == Some(true);
            }
            Update::Failed(kind, message) => {
                self.event(PodEvent::warning(
                    &name,
                    "Unhealthy",
                    format!("{} probe failed: {message}", kind.name()),
                ))
                .await;
            }
            Update::Kill(kind) => {
                let message = format!(
                    "Container {name} failed {} probe, will be restarted",
                    kind.name().to_lowercase()
                );
                self.kill(id, run_id, message).await;
            }
            Update::PostStartFailed(message) => {
                self.event(PodEvent::warning(
                    &name,
                    "FailedPostStartHook",
                    format!("PostStartHook failed: {message}"),
                ))
                .await;
                self.kill(id, run_id, format!("FailedPostStartHook: {message}"))
                    .await;
            }
        }
    }

    /// Stops a running container as failed (exit code 137), then applies the restart policy.
    async fn kill(&mut self, id: SlotId, run_id: u64, message: String) {
        let name = self.slot_mut(id).spec.name.clone();
        if let Some(run) = &self.slot_mut(id).run {
            run.stop.abort();
        }
        self.event(PodEvent::normal(&name, "Killing", message.clone()))
            .await;
        let exit = Exit {
            code: 137,
            reason: None,
            message: Some(message),
        };
        self.on_exit(id, run_id, exit).await;
    }

    fn update_finished(&mut self) {
        let idle = |s: &Slot| s.run.is_none() && s.due.is_none();
        let init_failed_for_good = self.init.iter().any(|s| {
            idle(s)
                && s.status
                    .state
                    .as_ref()
                    .and_then(|st| st.terminated.as_ref())
                    .is_some_and(|t| t.exit_code != 0)
        });
        let all_done = self.init.iter().chain(&self.app).all(|s| {
            idle(s)
                && s.status
                    .state
                    .as_ref()
                    .is_some_and(|st| st.terminated.is_some())
        });
        // A pod-level failure (DeadlineExceeded) is final, whatever state its containers were
        // left in (one waiting to be created never terminated).
        self.finished = self.failure.is_some() || init_failed_for_good || all_done;
    }

    /// When `spec.activeDeadlineSeconds` (counted from the pod's start time, on the monotonic
    /// clock) runs out.
    fn active_deadline(&self) -> Option<Instant> {
        let seconds = self.pod.spec.as_ref()?.active_deadline_seconds?;
        let allowed = crate::time::seconds(seconds);
        Some(
            self.started
                .checked_add(allowed)
                .unwrap_or_else(|| crate::time::deadline_in(allowed)),
        )
    }

    /// The periodic volume sync: API-backed volumes written again from the current objects
    /// (a failure is a FailedMount event; the files stay as they were), and the pod evicted
    /// when an emptyDir outgrew its sizeLimit.
    async fn sync_volumes(&mut self) {
        self.volume_sync = Some(crate::time::deadline_in(self.ctx.sync_frequency));
        let (ctx, pod) = (self.ctx.clone(), self.pod.clone());
        let Some(volumes) = self.volumes.as_mut() else {
            return;
        };
        let refreshed = volumes
            .refresh(ctx.host.as_ref(), &pod, ctx.node_context())
            .await;
        let eviction = volumes.over_size_limit(&pod);
        if let Err(e) = refreshed {
            self.event(PodEvent::warning("", "FailedMount", e.to_string()))
                .await;
        }
        if let Some(message) = eviction {
            self.stop_all(true).await;
            self.finished = true;
            self.event(PodEvent::warning("", "Evicted", message.clone()))
                .await;
            self.failure = Some(("Evicted".into(), message));
            self.publish().await;
        }
    }

    /// Ends the pod as the kubelet does when its active deadline passes.
    async fn exceed_deadline(&mut self) {
        self.stop_all(true).await;
        self.finished = true;
        let message = "Pod was active on the node longer than the specified deadline".to_string();
        self.event(PodEvent::warning("", "DeadlineExceeded", message.clone()))
            .await;
        self.failure = Some(("DeadlineExceeded".into(), message));
        self.publish().await;
    }

    fn current_status(&self) -> PodStatus {
        let init: Vec<ContainerStatus> = self.init.iter().map(|s| s.status.clone()).collect();
        let app: Vec<ContainerStatus> = self.app.iter().map(|s| s.status.clone()).collect();
        let policy = self.restart_policy();
        let mut status = status::pod_status(&Snapshot {
            init: &init,
            containers: &app,
            restart_policy: &policy,
            finished: self.finished,
            node_ip: &self.ctx.node_ip,
            start_time: &self.start_time,
            previous: self.status.published(),
        });
        if let Some((reason, message)) = &self.failure {
            status.phase = Some("Failed".into());
            status.reason = Some(reason.clone());
            status.message = Some(message.clone());
        }
        status
    }

    /// Writes the pod's current status (once; a failed write is tried again when the
    /// supervisor next wakes after its backoff).
    async fn publish(&mut self) {
        let status = self.current_status();
        self.status.write(&*self.ctx.host, &self.pod, &status).await;
    }

    async fn stop_all(&mut self, record: bool) {
        let ids: Vec<SlotId> = (0..self.init.len())
            .map(|i| SlotId {
                init: true,
                index: i,
            })
            .chain((0..self.app.len()).map(|i| SlotId {
                init: false,
                index: i,
            }))
            .collect();
        for id in ids {
            let slot = self.slot_mut(id);
            slot.due = None;
            let Some(run) = slot.run.take() else { continue };
            run.stop.abort();
            run.log.close();
            let exit = Exit::killed();
            slot.status.state = Some(status::terminated(
                exit.code,
                "Error".into(),
                None,
                Some(run.started_at),
                slot.status.container_id.clone(),
            ));
            slot.status.ready = false;
            slot.status.started = Some(false);
            let name = slot.spec.name.clone();
            if record {
                self.event(PodEvent::normal(
                    &name,
                    "Killing",
                    format!("Stopping container {name}"),
                ))
                .await;
            }
        }
    }

    /// The node agent is shutting down: stop the containers and report them stopped. The pod is
    /// not finished: its restart policy applies when the agent is back.
    async fn shut_down(&mut self) {
        self.stop_all(true).await;
        self.finished = false;
        let status = self.current_status();
        let deadline = tokio::time::sleep(SHUTDOWN_STATUS_DEADLINE);
        if self
            .status
            .write_until(&*self.ctx.host, &self.pod, &status, deadline)
            .await
            == Written::Pending
        {
            tracing::warn!(
                "the pod's stopped containers could not be reported before the agent stopped"
            );
        }
    }

    /// The pod's grace period for this deletion, as the kubelet computes it.
    fn grace_period(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| self.pod.spec.as_ref()?.termination_grace_period_seconds)
            .unwrap_or(30);
        crate::time::seconds(seconds)
    }

    /// Runs the preStop hooks of the running containers, together, within the grace period.
    async fn pre_stop(&mut self) {
        let hooks: Vec<(String, probes::Action)> = self
            .app
            .iter()
            .filter(|s| s.run.is_some())
            .filter_map(|s| {
                let hook = s.spec.lifecycle.as_ref()?.pre_stop.as_ref()?;
                let action = probes::hook_action(hook, &s.spec, &self.ctx.node_ip);
                Some((s.spec.name.clone(), action))
            })
            .collect();
        let grace = self.grace_period();
        let results =
            futures::future::join_all(hooks.iter().map(|(_, hook)| probes::run(hook, grace))).await;
        for ((name, _), result) in hooks.iter().zip(results) {
            if let Err(message) = result {
                self.event(PodEvent::warning(
                    name,
                    "FailedPreStopHook",
                    format!("PreStopHook failed: {message}"),
                ))
                .await;
            }
        }
    }

    /// Asks the running containers to stop and waits, until `deadline`, for those that end by
    /// themselves when asked (servers finishing their requests in flight); their exits are
    /// recorded as they come.
    async fn interrupt_all(&mut self, deadline: Instant) {
        let mut waiting = 0;
        for slot in self.init.iter().chain(&self.app) {
            if let Some(run) = &slot.run {
                run.interrupt.cancel();
                waiting += usize::from(run.graceful);
            }
        }
        while waiting > 0 {
            let (id, run_id, exit) = tokio::select! {
                Some(ended) = self.exits.recv() => ended,
                () = tokio::time::sleep_until(deadline) => return,
            };
            let slot = self.slot_mut(id);
            if slot.run.as_ref().is_none_or(|r| r.id != run_id) {
                continue;
            }
            let Some(run) = slot.run.take() else { continue };
            run.log.close();
            slot.status.state = Some(status::terminated(
                exit.code,
                exit.reason
                    .unwrap_or_else(|| if exit.code == 0 { "Completed" } else { "Error" }.into()),
                exit.message,
                Some(run.started_at),
                slot.status.container_id.clone(),
            ));
            slot.status.ready = false;
            slot.status.started = Some(false);
            waiting -= usize::from(run.graceful);
        }
    }

    /// Runs preStop hooks, asks the containers to stop and waits for those that can (all within
    /// the grace period), stops the rest, writes the final status and removes the pod (delete
    /// with grace 0).
    async fn terminate(&mut self) {
        let deadline = crate::time::deadline_in(self.grace_period());
        self.pre_stop().await;
        self.interrupt_all(deadline).await;
        self.stop_all(true).await;
        self.finished = true;
        let status = self.current_status();
        let gone = removed(self.updates.clone());
        self.status
            .write_until(&*self.ctx.host, &self.pod, &status, gone)
            .await;
        self.ctx.host.finish_deletion(&self.pod).await;
        self.cleanup();
    }

    fn cleanup(&mut self) {
        self.ctx.registry.remove(&self.ns(), &self.pod.name_any());
        let dir = self.ctx.pods_dir.join(self.pod.uid().unwrap_or_default());
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, dir = %dir.display(), "removing the pod's files failed");
        }
    }
}

/// Completes when the pod is gone from the watch (`updates` says `None` or ends).
async fn removed(mut updates: watch::Receiver<Option<Pod>>) {
    let _ = updates.wait_for(Option::is_none).await;
}

/// Whether a container that exited with `code` runs again under the pod's restart policy.
fn should_restart(init: bool, policy: &str, code: i32) -> bool {
    match (init, policy) {
        (_, "Never") => false,
        (true, _) | (false, "OnFailure") => code != 0,
        _ => true,
    }
}

fn container_id(pod_key: &str, uid: &str, container: &str, run: u64) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{pod_key}/{uid}/{container}/{run}"));
    format!("wasm://{}", hex::encode(&digest[..16]))
}

/// Runs a container's postStart hook, then its probes, forwarding what they find.
async fn watch_container(
    post_start: Option<probes::Action>,
    checks: ContainerProbes,
    to: mpsc::UnboundedSender<(SlotId, u64, Update)>,
    id: SlotId,
    run_id: u64,
) {
    if let Some(hook) = post_start
        && let Err(message) = probes::run(&hook, HOOK_TIMEOUT).await
    {
        let _ = to.send((id, run_id, Update::PostStartFailed(message)));
        return;
    }
    if checks.is_empty() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let forward = async {
        while let Some(update) = rx.recv().await {
            let _ = to.send((id, run_id, update));
        }
    };
    tokio::join!(checks.run(tx), forward);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
