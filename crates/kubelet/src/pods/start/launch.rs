//! Step 5 of a start: the runtime starts the guest, then its exit, its postStart hook and its
//! probes are watched, each reported to the pod's supervisor tagged with the run.

use crate::logs::LogFile;
use crate::pods::PodContext;
use crate::pods::container::Process;
use crate::pods::host::PodHost;
use crate::pods::lifecycle::{Run, SlotId};
use crate::pods::network::{self, Placement};
use crate::pods::probes::{self, ContainerProbes, Update};
use crate::pods::resources;
use crate::pods::status::now;
use crate::runtime::{
    ContainerRun, Dns, Exit, Mount, RunningContainer, Runtime, StartError, Usage, Warning, Warnings,
};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

/// How long a postStart hook may take (the kubelet bounds it by the pod's grace period).
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the runs of a pod's containers report to its supervisor.
#[derive(Clone)]
pub struct Reports {
    /// A run's exit.
    pub exits: mpsc::UnboundedSender<(SlotId, u64, Exit)>,
    /// What a run's hooks and probes found.
    pub probes: mpsc::UnboundedSender<(SlotId, u64, Update)>,
    /// What went wrong in a running container without ending it (rate-limited per container).
    pub warnings: mpsc::Sender<Warning>,
}

/// A guest the runtime started, not yet watched.
pub struct Launched {
    running: RunningContainer,
    interrupt: CancellationToken,
    /// What the guest uses, kept current by the runtime.
    pub usage: Arc<Usage>,
    /// When it started, for the status.
    started_at: Time,
}

impl Launched {
    /// A guest a previous agent process started, which the runtime still holds.
    pub fn reattached(
        running: RunningContainer,
        interrupt: CancellationToken,
        usage: Arc<Usage>,
        started_at: Time,
    ) -> Self {
        Self {
            running,
            interrupt,
            usage,
            started_at,
        }
    }
}

/// Starts the guest of `spec` from the `prepared` module as `configured`, as container
/// `container_id`, writing to `log`.
pub async fn launch<R: Runtime, H: PodHost>(
    ctx: &PodContext<R, H>,
    prepared: &R::Prepared,
    pod: &Pod,
    (spec, placement, dns): (&Container, &Placement, &Dns),
    (process, mounts): (Process, Vec<Mount>),
    (log, container_id): (&Arc<LogFile>, String),
    reports: &Reports,
) -> Result<Launched, StartError> {
    let usage = Arc::new(Usage::default());
    let interrupt = CancellationToken::new();
    // Second precision, as every time in the status.
    let started_at = now().0;
    let run = ContainerRun {
        id: container_id,
        started_at,
        stop: interrupt.clone(),
        args: process.args,
        env: process.env,
        mounts,
        state_dir: ctx
            .pods_dir
            .join(pod.uid().unwrap_or_default())
            .join("state")
            .join(&spec.name),
        stdout: log.writer("stdout"),
        stderr: log.writer("stderr"),
        limits: resources::limits(spec),
        usage: usage.clone(),
        warnings: Warnings::new(&spec.name, reports.warnings.clone()),
        network: network::network(pod, spec, placement, dns),
    };
    let running = ctx.runtime.start(prepared, run).await?;
    Ok(Launched {
        running,
        interrupt,
        usage,
        started_at: Time(started_at),
    })
}

/// Whether a watched run's postStart hook runs: not for a reattached guest, whose hook ran
/// when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostStart {
    /// Run it (a new guest).
    Run,
    /// It ran already.
    Ran,
}

/// Watches run `run_id` of container `id`: its exit, then its postStart hook and probes, all
/// reported on `reports`. Dropping the returned run stops the guest and the probes.
pub fn watch(
    launched: Launched,
    spec: &Container,
    pod_ip: &str,
    log: Arc<LogFile>,
    (id, run_id): (SlotId, u64),
    reports: &Reports,
    post_start: PostStart,
) -> Run {
    let Launched {
        mut running,
        interrupt,
        started_at: launched_at,
        ..
    } = launched;
    let checks = ContainerProbes::of(spec, pod_ip);
    let post_start = spec
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
        .filter(|_| post_start == PostStart::Run)
        .map(|hook| probes::hook_action(hook, spec, pod_ip));
    let passed_startup = !checks.has_startup();
    let ready = !id.init && passed_startup && !checks.has_readiness();
    let graceful = running.stops_gracefully();
    let exits = reports.exits.clone();
    let guest = tokio::spawn(
        async move {
            let exit = running.wait().await;
            let _ = exits.send((id, run_id, exit));
            drop(running);
        }
        .in_current_span(),
    );
    let probes = tokio::spawn(
        watch_hooks_and_probes(post_start, checks, reports.probes.clone(), id, run_id)
            .in_current_span(),
    );
    Run {
        id: run_id,
        guest: AbortOnDropHandle::new(guest),
        interrupt,
        graceful,
        probes: AbortOnDropHandle::new(probes),
        log,
        started: Instant::now(),
        started_at: launched_at,
        passed_startup,
        ready,
    }
}

/// Runs a container's postStart hook, then its probes, forwarding what they find.
async fn watch_hooks_and_probes(
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
