//! One container's life in its pod, as an explicit state machine: waiting (for its turn, a
//! retry or a back-off), running, terminated. Every transition is a method here; the
//! Kubernetes `ContainerStatus` is computed from the state, never stored as it.

use super::backoff::Backoff;
use super::status;
use crate::logs::LogFile;
use k8s_openapi::api::core::v1::{Container, ContainerState, ContainerStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// A container of the pod: init containers and app containers are numbered apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotId {
    /// Whether it is an init container.
    pub init: bool,
    /// Its index among the pod's init or app containers.
    pub index: usize,
}

/// Why a container is not running, as `state.waiting.reason` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// An init container before it has not succeeded yet.
    PodInitializing,
    /// Its turn has come; it is being pulled and created.
    ContainerCreating,
    /// Its image could not be pulled (the first failure).
    ErrImagePull,
    /// Its image could not be pulled again; the next pull waits for a back-off.
    ImagePullBackOff,
    /// Its image reference does not parse.
    InvalidImageName,
    /// `imagePullPolicy: Never` and the image is not on the node.
    ErrImageNeverPull,
    /// Its spec asks for what the node cannot give now (a missing ConfigMap key).
    CreateContainerConfigError,
    /// The node could not create it now (its module refused, its port taken).
    CreateContainerError,
    /// It failed and restarts after a back-off.
    CrashLoopBackOff,
}

impl WaitReason {
    /// The reason as the status writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PodInitializing => "PodInitializing",
            Self::ContainerCreating => "ContainerCreating",
            Self::ErrImagePull => "ErrImagePull",
            Self::ImagePullBackOff => "ImagePullBackOff",
            Self::InvalidImageName => "InvalidImageName",
            Self::ErrImageNeverPull => "ErrImageNeverPull",
            Self::CreateContainerConfigError => "CreateContainerConfigError",
            Self::CreateContainerError => "CreateContainerError",
            Self::CrashLoopBackOff => "CrashLoopBackOff",
        }
    }
}

/// How a run of the container ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Termination {
    /// The exit code.
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`...
    pub reason: String,
    /// What went wrong, if anything.
    pub message: Option<String>,
    /// When the run started (none for a container that could not be started).
    pub started_at: Option<Time>,
    /// When it ended.
    pub finished_at: Option<Time>,
    /// The run's container ID.
    pub container_id: Option<String>,
}

impl Termination {
    /// A run that ended now.
    pub fn now(
        exit_code: i32,
        reason: Option<String>,
        message: Option<String>,
        started_at: Option<Time>,
    ) -> Self {
        let reason =
            reason.unwrap_or_else(|| if exit_code == 0 { "Completed" } else { "Error" }.into());
        Self {
            exit_code,
            reason,
            message,
            started_at,
            finished_at: Some(status::now()),
            container_id: None,
        }
    }

    fn from_status(state: &ContainerState) -> Option<Self> {
        let t = state.terminated.as_ref()?;
        Some(Self {
            exit_code: t.exit_code,
            reason: t.reason.clone().unwrap_or_default(),
            message: t.message.clone(),
            started_at: t.started_at.clone(),
            finished_at: t.finished_at.clone(),
            container_id: t.container_id.clone(),
        })
    }

    fn state(&self) -> ContainerState {
        ContainerState {
            terminated: Some(k8s_openapi::api::core::v1::ContainerStateTerminated {
                exit_code: self.exit_code,
                reason: Some(self.reason.clone()),
                message: self.message.clone(),
                started_at: self.started_at.clone(),
                finished_at: self.finished_at.clone(),
                container_id: self.container_id.clone(),
                signal: None,
            }),
            ..Default::default()
        }
    }
}

/// One run of the container: its guest, its probes, its log.
pub struct Run {
    /// The run's number, to tell its exit and probe reports from an earlier run's.
    pub id: u64,
    /// The task that owns the guest and waits for its exit: dropping the run (also when the
    /// supervisor unwinds from a panic) stops the guest, so none is ever left unowned.
    pub guest: AbortOnDropHandle<()>,
    /// Asks the container to stop; `graceful` when it ends by itself once asked.
    pub interrupt: CancellationToken,
    /// Whether the container ends by itself when asked to stop.
    pub graceful: bool,
    /// The container's hooks and probes; dropped (and so stopped) with the run.
    pub probes: AbortOnDropHandle<()>,
    /// The run's log file, closed when it ends.
    pub log: Arc<LogFile>,
    /// When it started, on the monotonic clock (for the restart back-off's reset).
    pub started: Instant,
    /// When it started, for the status.
    pub started_at: Time,
    /// Whether its startup probe passed (or it has none).
    pub passed_startup: bool,
    /// Whether its readiness probe passes (or it has none and it started).
    pub ready: bool,
}

/// Where a container is in its life.
pub enum Lifecycle {
    /// Not running: shows `reason`, and is started at `start_at` if set (its turn came, or a
    /// retry is due); without it, it waits for its turn (earlier init containers) for ever.
    Waiting {
        /// What the status says.
        reason: WaitReason,
        /// Why, in words.
        message: Option<String>,
        /// When it is started.
        start_at: Option<Instant>,
    },
    /// Its guest runs.
    Running(Run),
    /// Its last run ended; it runs again at `restart_at` if set (its restart policy and the
    /// first, immediate restart), else it stays terminated.
    Terminated {
        /// How the run ended.
        termination: Termination,
        /// When it runs again.
        restart_at: Option<Instant>,
    },
}

/// One container of the pod: its spec, its lifecycle and what its status accumulates.
pub struct ContainerSlot {
    /// The container's spec.
    pub spec: Container,
    /// Where it is in its life.
    pub lifecycle: Lifecycle,
    /// The termination before the current state (`lastState`).
    last_termination: Option<Termination>,
    /// Runs started so far (numbering runs; the first is 1).
    runs: u64,
    /// Restarts counted, including those before the agent restarted.
    restarts: i32,
    /// The image ID of the image it runs.
    pub image_id: String,
    /// The ID of its current or last run.
    container_id: Option<String>,
    /// Back-off between failed runs and failed creations.
    pub restart_backoff: Backoff,
    /// Back-off between failed pulls.
    pub pull_backoff: Backoff,
}

impl ContainerSlot {
    /// A container that has not run, waiting with `reason`, started at `start_at` if set.
    pub fn new(spec: &Container, reason: WaitReason, start_at: Option<Instant>) -> Self {
        Self {
            spec: spec.clone(),
            lifecycle: Lifecycle::Waiting {
                reason,
                message: None,
                start_at,
            },
            last_termination: None,
            runs: 0,
            restarts: 0,
            image_id: String::new(),
            container_id: None,
            restart_backoff: Backoff::restarts(),
            pull_backoff: Backoff::pulls(),
        }
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// When the container is to be started, if it is.
    pub fn due(&self) -> Option<Instant> {
        match &self.lifecycle {
            Lifecycle::Waiting { start_at, .. } => *start_at,
            Lifecycle::Terminated { restart_at, .. } => *restart_at,
            Lifecycle::Running(_) => None,
        }
    }

    /// Its current run, if it runs.
    pub fn run(&self) -> Option<&Run> {
        match &self.lifecycle {
            Lifecycle::Running(run) => Some(run),
            _ => None,
        }
    }

    /// Its current run, if it runs and is run `id`.
    pub fn run_mut(&mut self, id: u64) -> Option<&mut Run> {
        match &mut self.lifecycle {
            Lifecycle::Running(run) if run.id == id => Some(run),
            _ => None,
        }
    }

    /// The exit code of its last run, if it is terminated.
    pub fn exit_code(&self) -> Option<i32> {
        match &self.lifecycle {
            Lifecycle::Terminated { termination, .. } => Some(termination.exit_code),
            _ => None,
        }
    }

    /// Whether it will never start again unless its turn comes (nothing is due, nothing runs).
    pub fn is_idle(&self) -> bool {
        self.run().is_none() && self.due().is_none()
    }

    /// Its turn has come (the init containers before it succeeded): it is started now.
    pub fn take_turn(&mut self, reason: WaitReason) {
        self.lifecycle = Lifecycle::Waiting {
            reason,
            message: None,
            start_at: Some(Instant::now()),
        };
    }

    /// The next start is tried at `at`, whatever the status shows now.
    pub fn retry_at(&mut self, at: Instant) {
        match &mut self.lifecycle {
            Lifecycle::Waiting { start_at, .. } => *start_at = Some(at),
            Lifecycle::Terminated { restart_at, .. } => *restart_at = Some(at),
            Lifecycle::Running(_) => {}
        }
    }

    /// It could not be started now: it waits, showing `reason` and `message`, until `at`.
    pub fn wait(&mut self, reason: WaitReason, message: String, at: Instant) {
        self.leave_termination();
        self.lifecycle = Lifecycle::Waiting {
            reason,
            message: Some(message),
            start_at: Some(at),
        };
    }

    /// The container ID the next run will have.
    pub fn next_container_id(&self, pod_key: &str, uid: &str) -> String {
        container_id(pod_key, uid, &self.spec.name, self.runs + 1)
    }

    /// Counts a new run (a restart after the first) and names it. Returns the run's number.
    pub fn begin_run(&mut self, pod_key: &str, uid: &str) -> u64 {
        self.container_id = Some(self.next_container_id(pod_key, uid));
        self.runs += 1;
        if self.runs > 1 {
            self.restarts = self.restarts.saturating_add(1);
        }
        self.leave_termination();
        self.runs
    }

    /// The restart count the next run will have (its log file is named by it).
    pub fn next_restart_count(&self) -> i32 {
        if self.runs > 0 {
            self.restarts.saturating_add(1)
        } else {
            self.restarts
        }
    }

    /// The run begun last is running.
    pub fn running(&mut self, run: Run) {
        self.lifecycle = Lifecycle::Running(run);
    }

    /// Its run ended (or could not start) as `termination`; it stays terminated until
    /// [`Self::restart_at`] or [`Self::back_off`] says otherwise. Returns the run that ended.
    pub fn terminated(&mut self, mut termination: Termination) -> Option<Run> {
        termination.container_id = self.container_id.clone();
        let previous = std::mem::replace(
            &mut self.lifecycle,
            Lifecycle::Terminated {
                termination,
                restart_at: None,
            },
        );
        match previous {
            Lifecycle::Running(run) => {
                run.log.close();
                Some(run)
            }
            Lifecycle::Waiting { .. } | Lifecycle::Terminated { .. } => None,
        }
    }

    /// Run `run_id` ended with `exit`; returns the run, or `None` when that run is no longer
    /// current (the report came late).
    pub fn exited(&mut self, run_id: u64, exit: crate::runtime::Exit) -> Option<Run> {
        let started_at = self.run_mut(run_id)?.started_at.clone();
        let termination = Termination::now(exit.code, exit.reason, exit.message, Some(started_at));
        self.terminated(termination)
    }

    /// Its run ended and it restarts after `delay`: at once (the status keeps the
    /// termination), or in CrashLoopBackOff saying `message`.
    pub fn restart_after(&mut self, delay: Duration, message: impl FnOnce() -> String) {
        let at = crate::time::deadline_in(delay);
        if delay.is_zero() {
            self.retry_at(at);
        } else {
            self.wait(WaitReason::CrashLoopBackOff, message(), at);
        }
    }

    /// No more starts: its pod stopped. A running guest is stopped and recorded as killed
    /// (exit code 137); returns whether it was running.
    pub fn stop(&mut self) -> bool {
        match &self.lifecycle {
            Lifecycle::Running(run) => {
                run.guest.abort();
                let started_at = Some(run.started_at.clone());
                self.terminated(Termination::now(137, None, None, started_at));
                true
            }
            Lifecycle::Waiting { .. } | Lifecycle::Terminated { .. } => {
                self.retry_stop();
                false
            }
        }
    }

    fn retry_stop(&mut self) {
        match &mut self.lifecycle {
            Lifecycle::Waiting { start_at, .. } => *start_at = None,
            Lifecycle::Terminated { restart_at, .. } => *restart_at = None,
            Lifecycle::Running(_) => {}
        }
    }

    /// The current termination, if any, becomes `lastState`.
    fn leave_termination(&mut self) {
        if let Lifecycle::Terminated { termination, .. } = &self.lifecycle {
            self.last_termination = Some(termination.clone());
        }
    }

    /// Takes over what the status `recorded` says of the container from before the agent
    /// restarted: restart count, image, last state and a termination. A container recorded
    /// running is `reattached` when the runtime still holds it (it runs on as run 1);
    /// otherwise it was lost with the agent's process and is terminated as the kubelet reports
    /// lost containers. It is then idle; the supervisor decides what is due.
    pub fn adopt(&mut self, recorded: &ContainerStatus, reattached: Option<Run>) {
        self.restarts = recorded.restart_count;
        self.image_id = recorded.image_id.clone();
        self.container_id = recorded.container_id.clone();
        self.last_termination = recorded
            .last_state
            .as_ref()
            .and_then(Termination::from_status);
        let state = recorded.state.clone().unwrap_or_default();
        if state.running.is_some() || state.terminated.is_some() || self.last_termination.is_some()
        {
            self.runs = 1;
        }
        if let (Some(_), Some(run)) = (&state.running, reattached) {
            self.lifecycle = Lifecycle::Running(run);
            return;
        }
        let termination = match (&state.running, Termination::from_status(&state)) {
            (Some(running), _) => Some(Termination {
                exit_code: 137,
                reason: "ContainerStatusUnknown".into(),
                message: Some(
                    "The container could not be located: the node agent restarted while it ran"
                        .into(),
                ),
                started_at: running.started_at.clone(),
                finished_at: Some(status::now()),
                container_id: self.container_id.clone(),
            }),
            (None, termination) => termination,
        };
        if let Some(termination) = termination {
            self.lifecycle = Lifecycle::Terminated {
                termination,
                restart_at: None,
            };
        } else {
            self.retry_stop();
        }
    }

    /// The container's status, as the kubelet writes it.
    pub fn status(&self) -> ContainerStatus {
        let (state, started, ready) = match &self.lifecycle {
            Lifecycle::Waiting {
                reason, message, ..
            } => (
                status::waiting(reason.as_str(), message.clone()),
                false,
                false,
            ),
            Lifecycle::Running(run) => (
                status::running(run.started_at.clone()),
                run.passed_startup,
                run.ready,
            ),
            Lifecycle::Terminated { termination, .. } => (termination.state(), false, false),
        };
        ContainerStatus {
            name: self.spec.name.clone(),
            image: self.spec.image.clone().unwrap_or_default(),
            image_id: self.image_id.clone(),
            container_id: self.container_id.clone(),
            restart_count: self.restarts,
            ready,
            started: Some(started),
            state: Some(state),
            last_state: self.last_termination.as_ref().map(Termination::state),
            ..Default::default()
        }
    }
}

/// A run's container ID: stable for the run, distinct between runs and pods.
fn container_id(pod_key: &str, uid: &str, container: &str, run: u64) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{pod_key}/{uid}/{container}/{run}"));
    format!("wasm://{}", hex::encode(&digest[..16]))
}
