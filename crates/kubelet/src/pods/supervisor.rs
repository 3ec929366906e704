//! One task per pod: admit it, start its containers (init containers first, one at a time)
//! through the start pipeline, follow their exits through the restart policy with back-off,
//! keep the status true, and on deletion stop everything, write the final status and remove
//! the pod. Each container's state is a [`ContainerSlot`]; this actor decides the
//! transitions, in the order events arrive.

use super::PodContext;
use super::admission::{self, Rejection};
use super::backoff::Backoff;
use super::host::{PodEvent, PodHost};
use super::lifecycle::{ContainerSlot, Run, SlotId, Termination, WaitReason};
use super::network::{self, Placement};
use super::probes::{self, Update};
use super::start::image::{self, PullFailure};
use super::start::launch::{self, Reports};
use super::start::{StartFailure, configure};
use super::status::{self, Snapshot, now};
use super::status_writer::{StatusWriter, Written};
use super::volumes::{MountError, PodVolumes};
use crate::images::PullError;
use crate::metrics::metrics;
use crate::runtime::{Dns, Exit, PrepareFailure, Reattach, Runtime, Usage, Warning, Warnings};
use k8s_openapi::api::core::v1::{Container, ContainerState, ContainerStatus, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The reason and exit code of a container that could not be started, as containerd's.
const START_ERROR: &str = "StartError";
const START_ERROR_CODE: i32 = 128;
/// The shortest wait before a container that could not be created is tried again.
const CREATE_RETRY: Duration = Duration::from_secs(10);
/// The shortest wait before the pod's volumes are set up again after a failure.
const MOUNT_RETRY: Duration = Duration::from_secs(1);

/// How long the agent, stopping, tries to report a pod's stopped containers.
const SHUTDOWN_STATUS_DEADLINE: Duration = Duration::from_secs(10);
/// Warnings from running containers waiting for the supervisor; more are dropped (each
/// container's are rate-limited where they are made).
const WARNINGS_QUEUED: usize = 32;

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
    init: Vec<ContainerSlot>,
    app: Vec<ContainerSlot>,
    start_time: Time,
    /// `start_time` on the monotonic clock, which deadlines are counted on.
    started: Instant,
    status: StatusWriter,
    /// Where the containers' runs report; the receivers are below.
    reports: Reports,
    exits: mpsc::UnboundedReceiver<(SlotId, u64, Exit)>,
    probes: mpsc::UnboundedReceiver<(SlotId, u64, Update)>,
    /// Warnings the runtime reports about running containers (rate-limited at the source).
    warnings: mpsc::Receiver<Warning>,
    finished: bool,
    volumes: Option<PodVolumes>,
    /// When the API-backed volumes are next written again (and emptyDir limits checked).
    volume_sync: Option<Instant>,
    mount_backoff: Backoff,
    /// Where the pod is on the network, once decided (and, for a network of its own,
    /// attached).
    placement: Option<Placement>,
    /// How the pod's names resolve, formed once its IPs are known.
    dns: Option<Dns>,
    /// When attaching the pod's network is tried again after it failed.
    network_backoff: Backoff,
    /// Whether the pod's network was detached (the pod finished or is gone); its IPs stay in
    /// its status.
    network_released: bool,
    /// A pod-level failure (reason, message), such as DeadlineExceeded.
    failure: Option<(String, String)>,
    /// When the supervisor first saw the pod, until its first app container ran (for the
    /// pod start duration metric).
    seen: Option<Instant>,
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
            WaitReason::ContainerCreating
        } else {
            WaitReason::PodInitializing
        };
        let init = inits
            .iter()
            .map(|c| ContainerSlot::new(c, WaitReason::PodInitializing, None))
            .collect();
        let app = spec
            .containers
            .iter()
            .map(|c| ContainerSlot::new(c, app_reason, None))
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
            reports: Reports {
                exits: exits_tx,
                probes: probes_tx,
                warnings: warnings_tx,
            },
            exits,
            probes,
            warnings,
            finished: false,
            volumes: None,
            volume_sync: None,
            mount_backoff: Backoff::restarts(),
            placement: None,
            dns: None,
            network_backoff: Backoff::restarts(),
            network_released: false,
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

    /// Every container's id, init containers first.
    fn slot_ids(&self) -> impl Iterator<Item = SlotId> + use<R, H> {
        let init = (0..self.init.len()).map(|index| SlotId { init: true, index });
        let app = (0..self.app.len()).map(|index| SlotId { init: false, index });
        init.chain(app)
    }

    fn slot(&self, id: SlotId) -> &ContainerSlot {
        if id.init {
            &self.init[id.index]
        } else {
            &self.app[id.index]
        }
    }

    fn slot_mut(&mut self, id: SlotId) -> &mut ContainerSlot {
        if id.init {
            &mut self.init[id.index]
        } else {
            &mut self.app[id.index]
        }
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
        let terminal = matches!(recorded.phase.as_deref(), Some("Succeeded" | "Failed"));
        if !Self::is_deleting(&self.pod) && !terminal {
            if !ran_before && self.placement.is_none() && self.attaches_own_network() {
                // A new pod shows Pending, its containers ContainerCreating, while its network
                // is attached (a CNI plugin may take up to its deadline), as the kubelet shows
                // a sandbox being made.
                self.publish().await;
            }
            // The pod's network comes first, as the kubelet's sandbox does: containers that
            // outlived the agent are followed at their pod's IP again, and a new pod's first
            // start finds it ready. A failure is retried (and reported) by that start.
            match self.placement().await {
                Ok(_) => {}
                Err(StartFailure::Deleted) => {
                    if let Some(latest) = self.updates.borrow().clone() {
                        self.pod = latest;
                    }
                }
                Err(e) => {
                    tracing::info!(error = %e, "the pod's sandbox (its RuntimeClass, its network) is not ready yet")
                }
            }
        }
        if ran_before {
            // Before a deletion is handled: containers that outlived the agent stop as the
            // deletion asks (grace period, preStop hooks).
            self.adopt(&recorded);
        }
        if Self::is_deleting(&self.pod) {
            self.terminate().await;
            return;
        }
        if !ran_before {
            self.reattach_unrecorded();
            self.publish().await;
            // The first init container that has not completed goes on (or starts), else the
            // app containers that are not running.
            match self.init.iter_mut().find(|s| s.exit_code() != Some(0)) {
                Some(next) => next.retry_at(Instant::now()),
                None => self
                    .app
                    .iter_mut()
                    .filter(|s| s.run().is_none())
                    .for_each(|s| s.retry_at(Instant::now())),
            }
        }
        loop {
            if let Err(Interrupt::Deleted) = self.start_due().await {
                break;
            }
            self.update_finished();
            if self.finished && matches!(self.placement, Some(Placement::Own(_))) {
                // As the kubelet stops a finished pod's sandbox: its IPs are free again.
                self.release_network().await;
            }
            self.publish().await;
            let next_due = self
                .init
                .iter()
                .chain(&self.app)
                .filter_map(ContainerSlot::due)
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
                            self.status.observe(pod.status.as_ref());
                            self.pod = pod;
                        }
                        Some(pod) => {
                            self.pod = pod;
                            break;
                        }
                        None => {
                            self.stop_all(false).await;
                            self.release_network().await;
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
        let pod_ip = self.pod_ip();
        for (slots, statuses, init) in [
            (&mut self.init, &recorded.init_container_statuses, true),
            (&mut self.app, &recorded.container_statuses, false),
        ] {
            for (index, slot) in slots.iter_mut().enumerate() {
                if let Some(old) = statuses.iter().flatten().find(|c| c.name == slot.name()) {
                    let reattached = Self::reattach(
                        &self.ctx,
                        (&self.pod, &pod_ip),
                        &self.reports,
                        (SlotId { init, index }, &slot.spec),
                        old,
                    );
                    slot.adopt(old, reattached);
                }
                let done = slot
                    .exit_code()
                    .is_some_and(|code| !should_restart(init, &policy, code));
                if !done {
                    slot.retry_at(Instant::now());
                }
            }
        }
        // Only the first unfinished init container may run, and app containers only after them.
        let mut blocked = false;
        for slot in self.init.iter_mut() {
            if blocked {
                slot.stop();
            }
            blocked |= slot.exit_code() != Some(0);
        }
        if blocked {
            self.app.iter_mut().for_each(|slot| {
                slot.stop();
            });
        }
        self.update_finished();
        if self.finished {
            self.status.assume_published(recorded.clone());
        }
        self.register_existing_logs();
    }

    /// Follows again a container recorded running, if the runtime still holds it (it runs in
    /// a runtime worker that outlived the agent): the run goes on as it was, started when it
    /// started, ready as it was, its postStart hook not run again.
    fn reattach(
        ctx: &Arc<PodContext<R, H>>,
        (pod, pod_ip): (&Pod, &str),
        reports: &launch::Reports,
        (id, spec): (SlotId, &Container),
        recorded: &ContainerStatus,
    ) -> Option<Run> {
        let recorded_start = recorded
            .state
            .as_ref()?
            .running
            .as_ref()?
            .started_at
            .clone();
        let container_id = recorded.container_id.clone()?;
        if !ctx.runtime.holds(&container_id) {
            return None;
        }
        let (log, log_path) =
            configure::open_log(ctx, pod, &spec.name, recorded.restart_count).ok()?;
        let usage = Arc::new(Usage::default());
        let interrupt = CancellationToken::new();
        let reattached = ctx.runtime.reattach(Reattach {
            id: container_id,
            log: log.clone(),
            usage: usage.clone(),
            warnings: Warnings::new(&spec.name, reports.warnings.clone()),
            stop: interrupt.clone(),
        })?;
        let started_at = recorded_start
            .or(reattached.started_at.map(Time))
            .unwrap_or_else(now);
        let running = reattached.running;
        tracing::info!(container = %spec.name, "reattached to the running container");
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        ctx.registry.new_log(&ns, &name, &spec.name, log_path);
        ctx.registry.started(&ns, &name, &spec.name, usage.clone());
        let launched = launch::Launched::reattached(running, interrupt, usage, started_at.clone());
        let mut run = launch::watch(
            launched,
            spec,
            pod_ip,
            log,
            (id, 1),
            reports,
            launch::PostStart::Ran,
        );
        let ran_for = jiff::Timestamp::now().duration_since(started_at.0);
        run.started = Instant::now()
            .checked_sub(Duration::try_from(ran_for).unwrap_or(Duration::ZERO))
            .unwrap_or_else(Instant::now);
        // What a status recorded holds; a run no status recorded starts from what it is.
        if let Some(started) = recorded.started {
            run.passed_startup = started;
            run.ready = recorded.ready;
        }
        Some(run)
    }

    /// Takes over the containers of a pod no status records that the runtime still holds from
    /// a previous agent process: a static pod (its status lives only in its mirror) or a pod
    /// whose status the agent had not written yet. Containers start in order (each init
    /// container after the one before it succeeded, the app containers after the last), so the
    /// last one held is where the pod had got to: it is followed again, and the init
    /// containers before it are Completed. A pod with nothing held starts from the beginning.
    fn reattach_unrecorded(&mut self) {
        let pod_key = format!("{}/{}", self.ns(), self.pod.name_any());
        let uid = self.pod.uid().unwrap_or_default();
        let held = |slot: &ContainerSlot| {
            self.ctx
                .runtime
                .holds(&slot.next_container_id(&pod_key, &uid))
        };
        let (completed_inits, reattached): (usize, Vec<SlotId>) =
            if self.app.iter().any(held) || self.init.is_empty() {
                let apps = (0..self.app.len()).map(|index| SlotId { init: false, index });
                (self.init.len(), apps.collect())
            } else {
                match self.init.iter().rposition(held) {
                    Some(index) => (index, vec![SlotId { init: true, index }]),
                    None => return,
                }
            };
        for slot in &mut self.init[..completed_inits] {
            let id = slot.next_container_id(&pod_key, &uid);
            slot.adopt(&completed_unrecorded(id), None);
        }
        self.register_existing_logs();
        let pod_ip = self.pod_ip();
        for id in reattached {
            let slot = self.slot(id);
            let unrecorded = ContainerStatus {
                container_id: Some(slot.next_container_id(&pod_key, &uid)),
                state: Some(ContainerState {
                    running: Some(Default::default()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            if let Some(run) = Self::reattach(
                &self.ctx,
                (&self.pod, &pod_ip),
                &self.reports,
                (id, &slot.spec),
                &unrecorded,
            ) {
                let slot = self.slot_mut(id);
                slot.begin_run(&pod_key, &uid);
                slot.running(run);
            }
        }
    }

    /// Makes the logs of earlier runs (still in the data dir) readable again.
    fn register_existing_logs(&self) {
        let logs_dir = self
            .ctx
            .pods_dir
            .join(self.pod.uid().unwrap_or_default())
            .join("logs");
        for slot in self.init.iter().chain(&self.app) {
            let Ok(entries) = std::fs::read_dir(logs_dir.join(slot.name())) else {
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
                    .new_log(&self.ns(), &self.pod.name_any(), slot.name(), path);
            }
        }
    }

    /// A running container's warning goes to the pod's events and the agent's log.
    async fn on_warning(&self, warning: Warning) {
        tracing::warn!(
            pod = %self.pod.name_any(),
            container = %warning.container,
            reason = %warning.reason,
            "{}",
            warning.message
        );
        self.event(PodEvent::warning(
            &warning.container,
            &warning.reason,
            warning.message,
        ))
        .await;
    }

    async fn event(&self, event: PodEvent) {
        self.ctx.host.record(&self.pod, event).await;
    }

    async fn start_due(&mut self) -> Result<(), Interrupt> {
        let now = Instant::now();
        let due: Vec<SlotId> = self
            .slot_ids()
            .filter(|id| self.slot(*id).due().is_some_and(|d| d <= now))
            .collect();
        for id in due {
            let span = tracing::info_span!("container", container = %self.slot(id).name());
            match self.start(id).instrument(span.clone()).await {
                Ok(()) => {}
                Err(StartFailure::Deleted) => return Err(Interrupt::Deleted),
                Err(failure) => self.could_not_start(id, failure).instrument(span).await,
            }
        }
        Ok(())
    }

    /// Waits for `fut` unless the pod is deleted first.
    async fn unless_deleted<T>(
        updates: &mut watch::Receiver<Option<Pod>>,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, StartFailure> {
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
            () = deleted => Err(StartFailure::Deleted),
        }
    }

    /// Starts a container through the steps of the start pipeline ([`super::start`]).
    async fn start(&mut self, id: SlotId) -> Result<(), StartFailure> {
        let (ctx, pod) = (self.ctx.clone(), self.pod.clone());
        let spec = self.slot(id).spec.clone();
        let placement = self.placement().await?;
        let dns = self.dns(&placement).await?;
        // The image is pulled and compiled while the pod's volumes are set up (the first
        // time): neither waits for the other's round trips.
        let image = async {
            let pulled = image::pull(&ctx, &pod, &spec).await?;
            let prepared = ctx.runtime.prepare(pulled.module).await;
            Ok::<_, crate::images::PullError>((pulled.image_id, prepared))
        };
        let volumes = futures::future::OptionFuture::from(self.volume_setup());
        let both = futures::future::join(image, volumes);
        let (image, volumes) = Self::unless_deleted(&mut self.updates, both).await?;
        let volumes_failed = match volumes {
            Some(Ok(volumes)) => {
                self.volumes = Some(volumes);
                self.volume_sync = Some(crate::time::deadline_in(self.ctx.sync_frequency));
                None
            }
            Some(Err(e)) => Some(e),
            None => None,
        };
        let (image_id, prepared) = image?;
        let slot = self.slot_mut(id);
        slot.pull_backoff.reset();
        slot.image_id = image_id;
        let prepared = prepared?;
        if let Some(e) = volumes_failed {
            return Err(e.into());
        }
        let volume_dirs = self.volume_dirs();
        let pod_ips: Vec<String> = placement.ips().iter().map(ToString::to_string).collect();
        let configured = configure::configure(&ctx, &pod, &spec, &volume_dirs, &pod_ips).await?;
        let restarts = self.slot(id).next_restart_count();
        let (log, log_path) = configure::open_log(&ctx, &pod, &spec.name, restarts)?;
        let pod_key = format!("{}/{}", self.ns(), pod.name_any());
        let container_id = self
            .slot(id)
            .next_container_id(&pod_key, &pod.uid().unwrap_or_default());
        let launched = launch::launch(
            &ctx,
            &prepared,
            &pod,
            (&spec, &placement, &dns),
            configured,
            (&log, container_id),
            &self.reports,
        )
        .await;
        let launched = launched.inspect_err(|_| log.close())?;
        let (ns, name) = (self.ns(), pod.name_any());
        ctx.registry.new_log(&ns, &name, &spec.name, log_path);
        ctx.registry
            .started(&ns, &name, &spec.name, launched.usage.clone());
        metrics().container_started(id.init);
        if !id.init
            && let Some(seen) = self.seen.take()
        {
            metrics().pod_started(seen.elapsed());
        }
        let run_id = self.begin_run(id);
        let run = launch::watch(
            launched,
            &spec,
            &placement.ip().to_string(),
            log,
            (id, run_id),
            &self.reports,
            launch::PostStart::Run,
        );
        self.slot_mut(id).running(run);
        let name = &spec.name;
        self.event(PodEvent::normal(
            name,
            "Created",
            format!("Created container: {name}"),
        ))
        .await;
        self.event(PodEvent::normal(
            name,
            "Started",
            format!("Started container {name}"),
        ))
        .await;
        Ok(())
    }

    /// Setting up the pod's volumes, when they are not set up yet (at the first start of any
    /// container).
    fn volume_setup(
        &self,
    ) -> Option<impl std::future::Future<Output = Result<PodVolumes, MountError>> + use<R, H>> {
        if self.volumes.is_some() {
            return None;
        }
        let (ctx, pod) = (self.ctx.clone(), self.pod.clone());
        Some(async move {
            let volumes_dir = ctx
                .pods_dir
                .join(pod.uid().unwrap_or_default())
                .join("volumes");
            PodVolumes::prepare(
                ctx.host.as_ref(),
                &pod,
                &volumes_dir,
                ctx.node_context(),
                &ctx.allowed_host_paths,
            )
            .await
        })
    }

    /// The directories of the pod's volumes, once set up.
    fn volume_dirs(&self) -> HashMap<String, PathBuf> {
        self.volumes
            .as_ref()
            .map(|v| v.dirs().clone())
            .unwrap_or_default()
    }

    /// Where the pod is on the network: decided once, and for a pod that gets a network of its
    /// own ([`network::wants_own_network`]) attached through the node's CNI network (a pod
    /// attached before, also by an earlier agent, keeps its namespace and IPs).
    async fn placement(&mut self) -> Result<Placement, StartFailure> {
        if let Some(placement) = &self.placement {
            return Ok(placement.clone());
        }
        self.check_runtime_class().await?;
        let placement = match &self.ctx.networks {
            Some(networks) if self.attaches_own_network() => {
                let (networks, pod) = (networks.clone(), self.pod.clone());
                let attach = async move { networks.attach(&pod).await };
                let address = Self::unless_deleted(&mut self.updates, attach).await??;
                tracing::info!(ips = ?address.ips, "attached the pod's network");
                Placement::Own(address)
            }
            _ => Placement::Node(self.node_ip()),
        };
        self.placement = Some(placement.clone());
        Ok(placement)
    }

    /// The pod's RuntimeClass, if it names one, must name a handler this node runs: as the
    /// kubelet looks the handler up and containerd refuses one it has no runtime for, the
    /// sandbox is not made (the pod stays Pending, its containers ContainerCreating, with a
    /// FailedCreatePodSandBox event, tried again with back-off).
    async fn check_runtime_class(&self) -> Result<(), StartFailure> {
        let Some(class) = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_deref())
            .filter(|c| !c.is_empty())
        else {
            return Ok(());
        };
        let handler = self
            .ctx
            .host
            .runtime_handler(class)
            .await
            .map_err(StartFailure::RuntimeClass)?
            .ok_or_else(|| {
                StartFailure::RuntimeClass(format!("RuntimeClass {class:?} not found"))
            })?;
        if self.ctx.runtime_handlers.contains(&handler) {
            return Ok(());
        }
        Err(StartFailure::RuntimeClass(format!(
            "failed to get sandbox runtime: no runtime for {handler:?} is configured (RuntimeClass {class:?}); this node runs the handlers {} (--runtime-handlers)",
            self.ctx.runtime_handlers.join(", ")
        )))
    }

    /// Whether the pod gets a network of its own through the node's CNI network.
    fn attaches_own_network(&self) -> bool {
        self.ctx.networks.is_some() && network::wants_own_network(&self.pod)
    }

    /// How the pod's names resolve ([`crate::pods::dns`]): formed once, at its first start,
    /// with the Warning events the kubelet records then.
    async fn dns(&mut self, placement: &Placement) -> Result<Dns, StartFailure> {
        if let Some(dns) = &self.dns {
            return Ok(dns.clone());
        }
        let (dns, events) = self.ctx.dns.pod_dns(&self.pod, &placement.ips())?;
        for event in events {
            self.event(event).await;
        }
        self.dns = Some(dns.clone());
        Ok(dns)
    }

    fn node_ip(&self) -> std::net::IpAddr {
        self.ctx
            .node_ip
            .parse()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into())
    }

    /// The pod's primary IP, which probes and hooks reach it on.
    fn pod_ip(&self) -> String {
        self.placement
            .as_ref()
            .map_or_else(|| self.node_ip(), Placement::ip)
            .to_string()
    }

    /// The pod's IPs for its status: none while its own network is not attached yet.
    fn pod_ips(&self) -> Vec<String> {
        let ips = match &self.placement {
            Some(placement) => placement.ips(),
            None if self.ctx.networks.is_some() && network::wants_own_network(&self.pod) => {
                Vec::new()
            }
            None => vec![self.node_ip()],
        };
        ips.iter().map(ToString::to_string).collect()
    }

    /// Detaches the pod's own network (its IPs are free again; its status keeps them, as the
    /// kubelet's does). A failure is logged; the attachment is detached again when the pod is
    /// deleted, or by the next sweep of pods that are gone.
    async fn release_network(&mut self) {
        let Some(networks) = &self.ctx.networks else {
            return;
        };
        if self.network_released {
            return;
        }
        let uid = self.pod.uid().unwrap_or_default();
        match networks.detach(&uid).await {
            Ok(()) => {
                self.network_released = true;
                if matches!(self.placement, Some(Placement::Own(_))) {
                    tracing::info!("detached the pod's network");
                }
            }
            Err(e) => tracing::warn!(error = %e, "detaching the pod's network failed"),
        }
    }

    /// What follows a start that failed: the one place a failure becomes the container's
    /// next state.
    async fn could_not_start(&mut self, id: SlotId, failure: StartFailure) {
        let message = failure.to_string();
        match failure {
            // Handled by the caller: the pod is going away.
            StartFailure::Deleted => {}
            StartFailure::Pull(error) => self.pull_failed(id, &error).await,
            StartFailure::Prepare(e) if e.kind == PrepareFailure::NotRunnable => {
                self.failed_to_start(id, message).await;
            }
            StartFailure::Launch(e) if !e.can_retry() => self.failed_to_start(id, message).await,
            StartFailure::Prepare(_) | StartFailure::Log { .. } | StartFailure::Launch(_) => {
                self.failed_to_create(id, WaitReason::CreateContainerError, message)
                    .await;
            }
            StartFailure::Config(_) => {
                self.failed_to_create(id, WaitReason::CreateContainerConfigError, message)
                    .await;
            }
            StartFailure::RuntimeClass(_) | StartFailure::Network(_) | StartFailure::Dns(_) => {
                let delay = self.network_backoff.next(Duration::ZERO).max(MOUNT_RETRY);
                self.slot_mut(id).retry_at(crate::time::deadline_in(delay));
                self.event(PodEvent::warning(
                    "",
                    "FailedCreatePodSandBox",
                    format!("Failed to create pod sandbox: {message}"),
                ))
                .await;
            }
            StartFailure::Mount(_) => {
                let delay = self.mount_backoff.next(Duration::ZERO).max(MOUNT_RETRY);
                self.slot_mut(id).retry_at(crate::time::deadline_in(delay));
                self.event(PodEvent::warning("", "FailedMount", message))
                    .await;
            }
        }
    }

    async fn pull_failed(&mut self, id: SlotId, error: &PullError) {
        let slot = self.slot_mut(id);
        let again = slot.pull_backoff.is_backing_off();
        let delay = slot.pull_backoff.next(Duration::ZERO);
        let image = slot.spec.image.clone().unwrap_or_default();
        let failure = PullFailure::of(slot.name(), &image, error, again);
        slot.wait(
            failure.reason,
            failure.message,
            crate::time::deadline_in(delay),
        );
        for event in failure.events {
            self.event(event).await;
        }
    }

    /// Counts a new run of the container and names it. Returns the run's number.
    fn begin_run(&mut self, id: SlotId) -> u64 {
        let pod_key = format!("{}/{}", self.ns(), self.pod.name_any());
        let uid = self.pod.uid().unwrap_or_default();
        self.slot_mut(id).begin_run(&pod_key, &uid)
    }

    /// The container can never start as it is: as containerd reports a process that cannot be
    /// started, the container is terminated with `StartError` (exit code 128) and its restart
    /// policy decides what follows.
    async fn failed_to_start(&mut self, id: SlotId, message: String) {
        metrics().container_start_failed(id.init, START_ERROR);
        self.begin_run(id);
        let slot = self.slot_mut(id);
        let termination = Termination::now(
            START_ERROR_CODE,
            Some(START_ERROR.into()),
            Some(message.clone()),
            None,
        );
        slot.terminated(termination);
        let name = slot.name().to_string();
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

    /// The container could not be created now: it waits, showing `reason`, and is tried again
    /// after its back-off.
    async fn failed_to_create(&mut self, id: SlotId, reason: WaitReason, message: String) {
        metrics().container_start_failed(id.init, reason.as_str());
        let slot = self.slot_mut(id);
        let delay = slot.restart_backoff.next(Duration::ZERO).max(CREATE_RETRY);
        slot.wait(reason, message.clone(), crate::time::deadline_in(delay));
        let name = slot.name().to_string();
        tracing::info!(reason = reason.as_str(), "{message}");
        self.event(PodEvent::warning(
            &name,
            "Failed",
            format!("Error: {message}"),
        ))
        .await;
    }

    async fn on_exit(&mut self, id: SlotId, run_id: u64, exit: Exit) {
        let code = exit.code;
        if let Some(run) = self.slot_mut(id).exited(run_id, exit) {
            self.after_termination(id, code, run.started.elapsed())
                .await;
        }
    }

    /// What follows a container's termination with `code` after it ran for `ran_for`: the
    /// next init container or the app containers, a restart (after its back-off), or nothing.
    async fn after_termination(&mut self, id: SlotId, code: i32, ran_for: Duration) {
        let policy = self.restart_policy();
        let pod_name = self.pod.name_any();
        let (ns, uid) = (self.ns(), self.pod.uid().unwrap_or_default());
        if !should_restart(id.init, &policy, code) {
            if id.init && code == 0 {
                match self.init.get_mut(id.index + 1) {
                    Some(next) => next.take_turn(WaitReason::PodInitializing),
                    None => self
                        .app
                        .iter_mut()
                        .for_each(|app| app.take_turn(WaitReason::ContainerCreating)),
                }
            }
            return;
        }
        let slot = self.slot_mut(id);
        let name = slot.name().to_string();
        let delay = slot.restart_backoff.next(ran_for);
        slot.restart_after(delay, || {
            format!(
                "back-off {}s restarting failed container={name} pod={pod_name}_{ns}({uid})",
                delay.as_secs()
            )
        });
        if !delay.is_zero() {
            self.event(PodEvent::warning(
                &name,
                "BackOff",
                format!(
                    "Back-off restarting failed container {name} in pod {pod_name}_{ns}({uid})"
                ),
            ))
            .await;
        }
    }

    /// Applies what a container's hooks and probes found.
    async fn on_probe(&mut self, id: SlotId, run_id: u64, update: Update) {
        let slot = self.slot_mut(id);
        let name = slot.name().to_string();
        let has_readiness = slot.spec.readiness_probe.is_some();
        let Some(run) = slot.run_mut(run_id) else {
            return;
        };
        match update {
            Update::Started => {
                run.passed_startup = true;
                run.ready = !id.init && !has_readiness;
            }
            Update::Ready(ready) => run.ready = ready && run.passed_startup,
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
        let slot = self.slot_mut(id);
        let name = slot.name().to_string();
        if let Some(run) = slot.run_mut(run_id) {
            run.guest.abort();
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
        let init_failed_for_good = self
            .init
            .iter()
            .any(|s| s.is_idle() && s.exit_code().is_some_and(|c| c != 0));
        let all_done = self
            .init
            .iter()
            .chain(&self.app)
            .all(|s| s.is_idle() && s.exit_code().is_some());
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
        let init: Vec<ContainerStatus> = self.init.iter().map(ContainerSlot::status).collect();
        let app: Vec<ContainerStatus> = self.app.iter().map(ContainerSlot::status).collect();
        let policy = self.restart_policy();
        let mut status = status::pod_status(&Snapshot {
            init: &init,
            containers: &app,
            restart_policy: &policy,
            finished: self.finished,
            node_ip: &self.ctx.node_ip,
            pod_ips: &self.pod_ips(),
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

    /// Starts nothing more and stops every running container, recording each as killed.
    async fn stop_all(&mut self, record: bool) {
        for id in self.slot_ids() {
            let slot = self.slot_mut(id);
            if slot.stop() && record {
                let name = slot.name().to_string();
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
        if self.ctx.runtime.detached() {
            // The guests run on in the runtime workers; the next agent takes them over.
            return;
        }
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
        let pod_ip = self.pod_ip();
        let hooks: Vec<(String, probes::Action)> = self
            .app
            .iter()
            .filter(|s| s.run().is_some())
            .filter_map(|s| {
                let hook = s.spec.lifecycle.as_ref()?.pre_stop.as_ref()?;
                let action = probes::hook_action(hook, &s.spec, &pod_ip);
                Some((s.name().to_string(), action))
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
        for run in self
            .init
            .iter()
            .chain(&self.app)
            .filter_map(ContainerSlot::run)
        {
            run.interrupt.cancel();
            waiting += usize::from(run.graceful);
        }
        while waiting > 0 {
            let (id, run_id, exit) = tokio::select! {
                Some(ended) = self.exits.recv() => ended,
                () = tokio::time::sleep_until(deadline) => return,
            };
            if let Some(run) = self.slot_mut(id).exited(run_id, exit) {
                waiting -= usize::from(run.graceful);
            }
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
        self.release_network().await;
        self.ctx.host.finish_deletion(&self.pod).await;
        self.cleanup();
    }

    /// Forgets the pod and removes its files.
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

/// The status of an init container that a previous agent process ran to completion without
/// recording it (a container after it was found held): Completed with exit code 0, as it must
/// have been for the next one to start; its times are not known.
fn completed_unrecorded(container_id: String) -> ContainerStatus {
    ContainerStatus {
        container_id: Some(container_id.clone()),
        state: Some(ContainerState {
            terminated: Some(k8s_openapi::api::core::v1::ContainerStateTerminated {
                exit_code: 0,
                reason: Some("Completed".into()),
                container_id: Some(container_id),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether a container that exited with `code` runs again under the pod's restart policy.
fn should_restart(init: bool, policy: &str, code: i32) -> bool {
    match (init, policy) {
        (_, "Never") => false,
        (true, _) | (false, "OnFailure") => code != 0,
        _ => true,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
