//! Supervisors driven through a fake runtime and a fake host: what happens to a pod when the
//! code that supervises it fails.

use super::host::{PodEvent, PodHost, StatusError};
use super::{PodContext, Supervisors};
use crate::images::ImageStore;
use crate::pods::admission::NodeFacts;
use crate::pods::resources::Requests;
use crate::runtime::{
    ContainerRun, Exit, ModuleBytes, PrepareError, PrepareFailure, RunningContainer, Runtime,
    StartError,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerStatus, Pod, PodSpec, PodStatus, Secret,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Counts the guests alive, and the most ever alive at once.
#[derive(Default)]
struct Guests {
    live: AtomicUsize,
    most: AtomicUsize,
}

/// One running fake guest; dropping it (its task ending or being aborted) counts it gone.
struct Guest(Arc<Guests>);

impl Guest {
    fn new(guests: Arc<Guests>) -> Self {
        let live = guests.live.fetch_add(1, Ordering::SeqCst) + 1;
        guests.most.fetch_max(live, Ordering::SeqCst);
        Self(guests)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a fake guest does: exit with `code` after `exits_after` (never if `None`); asked to
/// stop, end `stops_after` later (a server finishing its requests) if it stops gracefully.
#[derive(Clone, Copy)]
struct Plan {
    exits_after: Option<Duration>,
    code: i32,
    stops_after: Option<Duration>,
}

impl Plan {
    const FOREVER: Plan = Plan {
        exits_after: None,
        code: 0,
        stops_after: None,
    };

    fn exits(after: Duration, code: i32) -> Self {
        Self {
            exits_after: Some(after),
            code,
            stops_after: None,
        }
    }
}

/// Guests that follow their container's plan (the container is named by the last argument of
/// the guest's argv; run forever if it has none); start number `panic_on` panics instead.
/// With `warn`, every guest reports that warning as it starts.
struct FakeRuntime {
    starts: AtomicUsize,
    panic_on: usize,
    guests: Arc<Guests>,
    warn: Option<&'static str>,
    /// Preparing the module fails so.
    unpreparable: Option<PrepareFailure>,
    /// The first start fails so.
    start_error: std::sync::Mutex<Option<StartError>>,
    /// By container: what its `n`th start (from 1) does.
    plans: std::collections::HashMap<&'static str, Box<dyn Fn(usize) -> Plan + Send + Sync>>,
    /// Each start: the container, and when.
    started: std::sync::Mutex<Vec<(String, tokio::time::Instant)>>,
}

impl FakeRuntime {
    fn new(guests: Arc<Guests>) -> Self {
        Self {
            starts: AtomicUsize::new(0),
            panic_on: usize::MAX,
            guests,
            warn: None,
            unpreparable: None,
            start_error: Default::default(),
            plans: Default::default(),
            started: Default::default(),
        }
    }

    fn with_plan(
        mut self,
        container: &'static str,
        plan: impl Fn(usize) -> Plan + Send + Sync + 'static,
    ) -> Self {
        self.plans.insert(container, Box::new(plan));
        self
    }

    /// The seconds since `since` at which `container` was started.
    fn starts_of(&self, container: &str, since: tokio::time::Instant) -> Vec<u64> {
        self.started
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _)| c == container)
            .map(|(_, at)| (*at - since).as_secs())
            .collect()
    }

    /// The containers in the order they were started.
    fn start_order(&self) -> Vec<String> {
        self.started
            .lock()
            .unwrap()
            .iter()
            .map(|(c, _)| c.clone())
            .collect()
    }
}

impl Runtime for FakeRuntime {
    type Prepared = ();

    fn arch(&self) -> &str {
        "wasm32-fake"
    }

    fn version(&self) -> String {
        "fake://0".into()
    }

    async fn prepare(&self, _module: ModuleBytes) -> Result<(), PrepareError> {
        match self.unpreparable {
            Some(kind) => Err(PrepareError {
                message: "not WebAssembly".into(),
                kind,
            }),
            None => Ok(()),
        }
    }

    async fn start(&self, _: &(), run: ContainerRun) -> Result<RunningContainer, StartError> {
        let start = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        assert_ne!(start, self.panic_on, "injected: start {start} panics");
        if let Some(error) = self.start_error.lock().unwrap().take() {
            return Err(error);
        }
        if let Some(warning) = self.warn {
            run.warnings.warn("RequestFailed", warning);
        }
        let container = run.args.last().cloned().unwrap_or_default();
        let nth = {
            let mut started = self.started.lock().unwrap();
            started.push((container.clone(), tokio::time::Instant::now()));
            started.iter().filter(|(c, _)| *c == container).count()
        };
        let plan = self
            .plans
            .get(container.as_str())
            .map_or(Plan::FOREVER, |plan| plan(nth));
        let guest = Guest::new(self.guests.clone());
        let stop = run.stop.clone();
        let task = tokio::spawn(async move {
            let _guest = guest;
            let exit = async {
                match plan.exits_after {
                    Some(after) => tokio::time::sleep(after).await,
                    None => std::future::pending().await,
                }
            };
            let asked = async {
                stop.cancelled().await;
                match plan.stops_after {
                    Some(after) => tokio::time::sleep(after).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = exit => Exit { code: plan.code, reason: None, message: None },
                () = asked => Exit::stopped(),
            }
        });
        Ok(if plan.stops_after.is_some() {
            RunningContainer::graceful(task)
        } else {
            RunningContainer::new(task)
        })
    }
}

/// A host that keeps the last status written, the events recorded and when the pod was
/// removed; its first `failing_writes` status writes fail.
#[derive(Default)]
struct FakeHost {
    status: std::sync::Mutex<Option<PodStatus>>,
    events: std::sync::Mutex<Vec<PodEvent>>,
    failing_writes: AtomicUsize,
    /// When each status write was tried.
    writes: std::sync::Mutex<Vec<tokio::time::Instant>>,
    deleted: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl PodHost for FakeHost {
    async fn write_status(&self, _pod: &Pod, status: &PodStatus) -> Result<(), StatusError> {
        self.writes
            .lock()
            .unwrap()
            .push(tokio::time::Instant::now());
        let failing = self
            .failing_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(StatusError::Failed(
                "injected: the API server is away".into(),
            ));
        }
        *self.status.lock().unwrap() = Some(status.clone());
        Ok(())
    }
    async fn record(&self, _pod: &Pod, event: PodEvent) {
        self.events.lock().unwrap().push(event);
    }
    async fn finish_deletion(&self, _pod: &Pod) {
        *self.deleted.lock().unwrap() = Some(tokio::time::Instant::now());
    }
    async fn runtime_handler(&self, name: &str) -> Result<Option<String>, String> {
        // Two RuntimeClasses exist: one of a handler this node runs, one of containerd's.
        Ok(match name {
            "wasm" => Some("wasmtime".into()),
            "containers" => Some("runc".into()),
            _ => None,
        })
    }
    async fn config_map(&self, _ns: &str, _name: &str) -> Result<Option<Arc<ConfigMap>>, String> {
        Ok(None)
    }
    async fn secret(&self, _ns: &str, _name: &str) -> Result<Option<Arc<Secret>>, String> {
        Ok(None)
    }
    async fn service_account_token(
        &self,
        _pod: &Pod,
        _audience: Option<String>,
        _expiration_seconds: i64,
    ) -> Result<String, String> {
        Err("no tokens here".into())
    }
}

fn context(
    dir: &std::path::Path,
    runtime: FakeRuntime,
    host: Arc<FakeHost>,
) -> Arc<PodContext<FakeRuntime, FakeHost>> {
    Arc::new(PodContext {
        runtime: Arc::new(runtime),
        images: Arc::new(ImageStore::new(
            dir.join("images"),
            Vec::new(),
            true,
            Default::default(),
        )),
        logs: Arc::default(),
        host,
        node: NodeFacts {
            name: "node".into(),
            labels: Default::default(),
            taints: Vec::new(),
            max_pods: 10,
            allocatable: Requests {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
            },
        },
        node_ip: "127.0.0.1".into(),
        networks: None,
        pods_dir: dir.join("pods"),
        registry: Arc::default(),
        stopping: Default::default(),
        node_credentials: Default::default(),
        sync_frequency: Duration::from_secs(60),
        allowed_host_paths: Vec::new(),
        dns: Default::default(),
        runtime_handlers: Arc::from(["wasmtime".to_string()]),
    })
}

fn pod(image: &str, containers: &[&str]) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("p".into()),
            namespace: Some("default".into()),
            uid: Some("uid-1".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: containers
                .iter()
                .map(|name| Container {
                    name: name.to_string(),
                    image: Some(image.into()),
                    // The fake runtime finds the container's plan by it.
                    args: Some(vec![name.to_string()]),
                    ..Default::default()
                })
                .collect(),
            node_name: Some("node".into()),
            ..Default::default()
        }),
        status: None,
    }
}

/// Runs the supervisors until `done` holds, or fails after a deadline.
async fn drive_until(
    supervisors: &mut Supervisors<FakeRuntime, FakeHost>,
    what: &str,
    done: impl Fn() -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen"
        );
        tokio::select! {
            () = supervisors.reap() => {}
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

#[tokio::test]
async fn a_panicking_supervisor_stops_its_guests_and_the_pod_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("m.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
    let guests = Arc::new(Guests::default());
    let runtime = FakeRuntime {
        // The first container starts, the second's start panics in the supervisor's task.
        panic_on: 2,
        ..FakeRuntime::new(guests.clone())
    };
    let host = Arc::new(FakeHost::default());
    let ctx = context(dir.path(), runtime, host.clone());
    let mut supervisors = Supervisors::new(ctx.clone());
    supervisors.apply(pod(&format!("file://{}", module.display()), &["a", "b"]));

    drive_until(&mut supervisors, "both containers running again", || {
        ctx.runtime.starts.load(Ordering::SeqCst) >= 4 && guests.live.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(
        guests.most.load(Ordering::SeqCst),
        2,
        "the guest started before the panic was stopped, never left running beside its successor"
    );
    let running = |host: &FakeHost| {
        host.status
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .is_some_and(|c| {
                c.len() == 2
                    && c.iter()
                        .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            })
    };
    drive_until(&mut supervisors, "both containers reported running", || {
        running(&host)
    })
    .await;

    // The new supervisor owns the pod: its removal stops every guest.
    supervisors.remove("uid-1");
    drive_until(&mut supervisors, "the guests stopped", || {
        guests.live.load(Ordering::SeqCst) == 0
    })
    .await;
}

/// A `Write` into a shared buffer, for capturing the agent's log.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_running_containers_warning_is_an_event_and_a_log_line_naming_the_pod() {
    let log = Captured::default();
    let writer = log.clone();
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("m.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
    let runtime = FakeRuntime {
        warn: Some("a request failed"),
        ..FakeRuntime::new(Arc::default())
    };
    let host = Arc::new(FakeHost::default());
    let mut supervisors = Supervisors::new(context(dir.path(), runtime, host.clone()));
    supervisors.apply(pod(&format!("file://{}", module.display()), &["web"]));

    let warned = || {
        host.events
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.reason == "RequestFailed")
            .cloned()
    };
    drive_until(&mut supervisors, "the warning recorded", || {
        warned().is_some()
    })
    .await;
    let event = warned().unwrap();
    assert_eq!(
        (
            event.kind,
            event.container.as_deref(),
            event.message.as_str()
        ),
        ("Warning", Some("web"), "a request failed")
    );
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("a request failed"))
        .unwrap_or_else(|| panic!("the warning in the agent's log: {log}"));
    assert!(
        line.contains("pod{namespace=default pod=p uid=uid-1}") && line.contains("container=web"),
        "the line names its pod and container: {line}"
    );
    supervisors.remove("uid-1");
}

/// The state of the pod's only container in the last status written.
fn only_container(host: &FakeHost) -> Option<(Option<String>, ContainerStatus)> {
    let status = host.status.lock().unwrap().clone()?;
    let container = status.container_statuses?.into_iter().next()?;
    Some((status.phase, container))
}

#[tokio::test(start_paused = true)]
async fn a_module_that_can_never_run_fails_to_start_and_follows_the_restart_policy() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("m.wasm");
    std::fs::write(&module, b"#!/bin/sh").unwrap();
    for (policy, kind) in [
        ("Never", PrepareFailure::NotRunnable),
        ("Always", PrepareFailure::NotRunnable),
        ("Never", PrepareFailure::Refused),
    ] {
        let runtime = FakeRuntime {
            unpreparable: Some(kind),
            ..FakeRuntime::new(Arc::default())
        };
        let host = Arc::new(FakeHost::default());
        let mut supervisors = Supervisors::new(context(dir.path(), runtime, host.clone()));
        let mut spec = pod(&format!("file://{}", module.display()), &["main"]);
        spec.spec.as_mut().unwrap().restart_policy = Some(policy.into());
        supervisors.apply(spec);
        let settled = |host: &FakeHost| {
            let Some((phase, container)) = only_container(host) else {
                return false;
            };
            let state = container.state.unwrap_or_default();
            match (policy, kind) {
                ("Never", PrepareFailure::NotRunnable) => {
                    phase.as_deref() == Some("Failed")
                        && state.terminated.is_some_and(|t| {
                            (t.exit_code, t.reason.as_deref()) == (128, Some("StartError"))
                                && t.message.is_some_and(|m| m.contains("not WebAssembly"))
                        })
                }
                ("Always", _) => {
                    container.restart_count >= 1
                        && state
                            .waiting
                            .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
                        && container
                            .last_state
                            .and_then(|s| s.terminated)
                            .is_some_and(|t| t.reason.as_deref() == Some("StartError"))
                }
                _ => {
                    phase.as_deref() == Some("Pending")
                        && state
                            .waiting
                            .is_some_and(|w| w.reason.as_deref() == Some("CreateContainerError"))
                }
            }
        };
        drive_until(
            &mut supervisors,
            &format!("{policy} pod, {kind:?}: its container's state"),
            || settled(&host),
        )
        .await;
        supervisors.remove("uid-1");
    }
}

/// A supervisor for `pod` over `runtime` and a fresh host, with its module on disk.
struct Harness {
    _dir: tempfile::TempDir,
    module: String,
    ctx: Arc<PodContext<FakeRuntime, FakeHost>>,
    host: Arc<FakeHost>,
    supervisors: Supervisors<FakeRuntime, FakeHost>,
    began: tokio::time::Instant,
}

impl Harness {
    fn new(runtime: FakeRuntime, host: FakeHost) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("m.wasm");
        std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
        let host = Arc::new(host);
        let ctx = context(dir.path(), runtime, host.clone());
        Self {
            module: format!("file://{}", module.display()),
            supervisors: Supervisors::new(ctx.clone()),
            ctx,
            host,
            _dir: dir,
            began: tokio::time::Instant::now(),
        }
    }

    /// A pod of `containers` (and `init` containers) under `policy`.
    fn pod(&self, init: &[&str], containers: &[&str], policy: &str) -> Pod {
        let mut pod = pod(&self.module, containers);
        let spec = pod.spec.as_mut().unwrap();
        spec.restart_policy = Some(policy.into());
        let inits = super::tests::pod(&self.module, init)
            .spec
            .unwrap()
            .containers;
        spec.init_containers = (!inits.is_empty()).then_some(inits);
        pod
    }

    async fn until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} did not happen"
            );
            tokio::select! {
                () = self.supervisors.reap() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    fn container(&self, name: &str) -> Option<ContainerStatus> {
        let status = self.host.status.lock().unwrap().clone()?;
        status
            .init_container_statuses
            .into_iter()
            .flatten()
            .chain(status.container_statuses.into_iter().flatten())
            .find(|c| c.name == name)
    }

    fn phase(&self) -> Option<String> {
        self.host.status.lock().unwrap().as_ref()?.phase.clone()
    }
}

#[tokio::test(start_paused = true)]
async fn a_crashing_container_backs_off_doubling_in_crash_loop_back_off_and_resets_after_a_long_run()
 {
    // Exits with 1 at once, five times; then runs 11 minutes before exiting; then at once again.
    let runtime = FakeRuntime::new(Arc::default()).with_plan("c", |n| match n {
        6 => Plan::exits(Duration::from_secs(660), 1),
        _ => Plan::exits(Duration::ZERO, 1),
    });
    let mut h = Harness::new(runtime, FakeHost::default());
    h.supervisors.apply(h.pod(&[], &["c"], "Always"));
    h.until("the third restart", |h| {
        h.ctx.runtime.starts_of("c", h.began).len() >= 4
    })
    .await;
    // The first restart is at once, then 10 s doubling, as the kubelet's.
    assert_eq!(h.ctx.runtime.starts_of("c", h.began), [0, 0, 10, 30]);
    h.until("CrashLoopBackOff", |h| {
        h.container("c").is_some_and(|c| {
            c.restart_count == 3
                && c.state.and_then(|s| s.waiting).is_some_and(|w| {
                    w.reason.as_deref() == Some("CrashLoopBackOff")
                        && w.message.is_some_and(|m| m.contains("back-off 40s"))
                })
                && c.last_state
                    .and_then(|s| s.terminated)
                    .is_some_and(|t| t.exit_code == 1)
        })
    })
    .await;
    h.until("the run after the long one", |h| {
        h.ctx.runtime.starts_of("c", h.began).len() >= 7
    })
    .await;
    let starts = h.ctx.runtime.starts_of("c", h.began);
    // 0, 0, 10, 30, 70, 150 (+80): the sixth runs 660 s, past the 10 minutes that reset the
    // back-off, so the seventh starts at once when it ends.
    assert_eq!(starts, [0, 0, 10, 30, 70, 150, 810]);
    assert_eq!(
        h.phase().as_deref(),
        Some("Running"),
        "an Always pod restarting is Running"
    );
    h.supervisors.remove("uid-1");
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_one_after_another_before_the_app_and_a_failed_one_fails_a_never_pod() {
    let runtime = FakeRuntime::new(Arc::default())
        .with_plan("first", |_| Plan::exits(Duration::from_secs(1), 0))
        .with_plan("second", |_| Plan::exits(Duration::from_secs(2), 0));
    let mut h = Harness::new(runtime, FakeHost::default());
    h.supervisors
        .apply(h.pod(&["first", "second"], &["app"], "Never"));
    h.until("the app running", |h| {
        h.container("app")
            .is_some_and(|c| c.state.is_some_and(|s| s.running.is_some()))
    })
    .await;
    assert_eq!(h.ctx.runtime.start_order(), ["first", "second", "app"]);
    assert_eq!(h.ctx.runtime.starts_of("first", h.began), [0]);
    assert_eq!(h.ctx.runtime.starts_of("second", h.began), [1]);
    assert_eq!(h.ctx.runtime.starts_of("app", h.began), [3]);
    assert_eq!(h.phase().as_deref(), Some("Running"));
    h.supervisors.remove("uid-1");

    let runtime = FakeRuntime::new(Arc::default())
        .with_plan("first", |_| Plan::exits(Duration::from_secs(1), 3));
    let mut h = Harness::new(runtime, FakeHost::default());
    h.supervisors
        .apply(h.pod(&["first", "second"], &["app"], "Never"));
    h.until("the pod Failed", |h| h.phase().as_deref() == Some("Failed"))
        .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        h.ctx.runtime.start_order(),
        ["first"],
        "nothing after a failed init container of a Never pod"
    );
    let first = h.container("first").unwrap();
    assert_eq!(
        first.state.and_then(|s| s.terminated).map(|t| t.exit_code),
        Some(3)
    );
    h.supervisors.remove("uid-1");
}

#[tokio::test(start_paused = true)]
async fn deletion_waits_for_a_graceful_container_and_kills_one_past_the_grace_period() {
    // (seconds the server takes to stop, seconds until the pod is removed, its exit code)
    for (stops_after, removed_after, code) in [(2, 2, 0), (600, 5, 137)] {
        let plan: fn(usize) -> Plan = match stops_after {
            2 => |_| Plan {
                stops_after: Some(Duration::from_secs(2)),
                ..Plan::FOREVER
            },
            _ => |_| Plan {
                stops_after: Some(Duration::from_secs(600)),
                ..Plan::FOREVER
            },
        };
        let runtime = FakeRuntime::new(Arc::default()).with_plan("server", plan);
        let mut h = Harness::new(runtime, FakeHost::default());
        let mut pod = h.pod(&[], &["server"], "Always");
        pod.spec.as_mut().unwrap().termination_grace_period_seconds = Some(5);
        h.supervisors.apply(pod.clone());
        h.until("running", |h| {
            h.container("server")
                .is_some_and(|c| c.state.is_some_and(|s| s.running.is_some()))
        })
        .await;
        let asked = tokio::time::Instant::now();
        pod.metadata.deletion_timestamp = Some(crate::pods::status::now());
        pod.metadata.deletion_grace_period_seconds = Some(5);
        h.supervisors.apply(pod);
        h.until("removed", |h| h.host.deleted.lock().unwrap().is_some())
            .await;
        let removed = h.host.deleted.lock().unwrap().unwrap();
        assert_eq!(
            (removed - asked).as_secs(),
            removed_after,
            "a server stopping in {stops_after} s with a grace period of 5 s"
        );
        assert_eq!(h.ctx.runtime.guests.live.load(Ordering::SeqCst), 0);
        let terminated = h
            .container("server")
            .and_then(|c| c.state?.terminated)
            .expect("the final status says the container ended");
        assert_eq!(
            terminated.exit_code, code,
            "stopped, or killed at the deadline"
        );
        h.supervisors.remove("uid-1");
    }
}

#[tokio::test(start_paused = true)]
async fn a_status_write_that_fails_is_tried_again_until_the_pod_is_reported() {
    let host = FakeHost {
        failing_writes: AtomicUsize::new(3),
        ..Default::default()
    };
    let mut h = Harness::new(FakeRuntime::new(Arc::default()), host);
    h.supervisors.apply(h.pod(&[], &["c"], "Always"));
    h.until("the pod reported Running", |h| {
        h.phase().as_deref() == Some("Running")
    })
    .await;
    let writes: Vec<u64> = h
        .host
        .writes
        .lock()
        .unwrap()
        .iter()
        .map(|at| (*at - h.began).as_secs())
        .collect();
    // Three failures, tried again after 1, 2 and 4 s; the changes meanwhile coalesce.
    assert_eq!(&writes[..4], [0, 1, 3, 7], "{writes:?}");
    h.supervisors.remove("uid-1");
}

/// Any value the API lets a spec carry in the fields the supervisor computes with.
fn extreme_i64() -> impl proptest::strategy::Strategy<Value = i64> {
    proptest::prop_oneof![
        proptest::strategy::Just(i64::MAX),
        proptest::strategy::Just(i64::MIN),
        proptest::strategy::Just(0),
        proptest::strategy::Just(-1),
        proptest::prelude::any::<i64>(),
        0i64..100,
    ]
}

fn extreme_i32() -> impl proptest::strategy::Strategy<Value = i32> {
    proptest::prop_oneof![
        proptest::strategy::Just(i32::MAX),
        proptest::strategy::Just(i32::MIN),
        proptest::prelude::any::<i32>(),
        0i32..5,
    ]
}

/// Whether code on this thread panicked since the last call (a supervisor's panic is caught
/// by its task and respawned, so it is only seen here).
fn panicked_here() -> bool {
    use std::collections::HashSet;
    use std::sync::{Mutex, Once};
    use std::thread::ThreadId;
    static PANICKED: Mutex<Option<HashSet<ThreadId>>> = Mutex::new(None);
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(HashSet::new)
                .insert(std::thread::current().id());
            previous(info);
        }));
    });
    PANICKED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashSet::new)
        .remove(&std::thread::current().id())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Whatever durations, counts, policies, quantities and references a spec carries, the
    /// pod runs its course and is deleted without its supervisor panicking (a panic would be
    /// respawned, so it is caught here by counting respawns: none may happen).
    #[test]
    fn no_spec_value_panics_the_supervisor(
        grace in extreme_i64(),
        deadline in extreme_i64(),
        delete_grace in extreme_i64(),
        policy in proptest::prop_oneof!["Always", "OnFailure", "Never", "\\PC{0,8}"],
        probe in (extreme_i32(), extreme_i32(), extreme_i32(), extreme_i32(), extreme_i32()),
        memory in proptest::prop_oneof!["1Gi", "0", "-1", "1e400", "\\PC{0,12}"],
        cpu in proptest::prop_oneof!["250m", "0", "1e-9", "\\PC{0,12}"],
        divisor in proptest::prop_oneof!["0", "1m", "1Ei", "\\PC{0,6}"],
        field in proptest::prop_oneof!["metadata.name", "status.podIP", "\\PC{0,20}"],
        exit_after in 0u64..120,
        code in proptest::prelude::any::<i32>(),
    ) {
        panicked_here();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async move {
            let fake = FakeRuntime::new(Arc::default())
                .with_plan("c", move |_| Plan::exits(Duration::from_secs(exit_after), code));
            let mut h = Harness::new(fake, FakeHost::default());
            let (initial_delay, period, timeout, success, failure) = probe;
            let mut pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "default", "uid": "uid-1"},
                "spec": {
                    "nodeName": "node",
                    "restartPolicy": policy,
                    "terminationGracePeriodSeconds": grace,
                    "activeDeadlineSeconds": deadline,
                    "containers": [{
                        "name": "c",
                        "image": h.module,
                        "args": ["c"],
                        "resources": {"limits": {"memory": memory, "cpu": cpu}},
                        "env": [
                            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": divisor}}},
                            {"name": "FIELD", "valueFrom": {"fieldRef": {"fieldPath": field}}},
                        ],
                        "livenessProbe": {
                            "tcpSocket": {"port": 1},
                            "initialDelaySeconds": initial_delay,
                            "periodSeconds": period,
                            "timeoutSeconds": timeout,
                            "successThreshold": success,
                            "failureThreshold": failure,
                        },
                    }],
                },
            }))
            .unwrap();
            h.supervisors.apply(pod.clone());
            for _ in 0..20 {
                tokio::select! {
                    () = h.supervisors.reap() => {}
                    () = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
            }
            pod.metadata.deletion_timestamp = Some(crate::pods::status::now());
            pod.metadata.deletion_grace_period_seconds = Some(delete_grace);
            h.supervisors.apply(pod);
            h.until("the pod removed", |h| h.host.deleted.lock().unwrap().is_some()).await;
        });
        proptest::prop_assert!(!panicked_here(), "a supervisor panicked");
    }
}

#[tokio::test(start_paused = true)]
async fn the_active_deadline_fails_a_pod_once_even_when_its_container_never_started() {
    let mut h = Harness::new(FakeRuntime::new(Arc::default()), FakeHost::default());
    let mut pod = h.pod(&[], &["c"], "Always");
    let spec = pod.spec.as_mut().unwrap();
    spec.active_deadline_seconds = Some(5);
    // A reference the node cannot resolve: the container waits in CreateContainerConfigError.
    spec.containers[0].env = Some(vec![
        serde_json::from_value(serde_json::json!(
            {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.nothing"}}}
        ))
        .unwrap(),
    ]);
    h.supervisors.apply(pod);
    h.until("the pod Failed", |h| h.phase().as_deref() == Some("Failed"))
        .await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    let deadline_events = h
        .host
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.reason == "DeadlineExceeded")
        .count();
    assert_eq!(
        deadline_events, 1,
        "the deadline ends the pod once, for good"
    );
    assert!(h.ctx.runtime.start_order().is_empty());
    assert_eq!(
        h.host
            .status
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|s| s.reason.clone())
            .as_deref(),
        Some("DeadlineExceeded")
    );
    h.supervisors.remove("uid-1");
}

/// A container with `probe` as its `kind` (`livenessProbe`, `readinessProbe`...).
fn probed(mut pod: Pod, container: &str, kind: &str, probe: serde_json::Value) -> Pod {
    let spec = pod.spec.as_mut().unwrap();
    let c = spec
        .containers
        .iter_mut()
        .find(|c| c.name == container)
        .unwrap();
    let mut json = serde_json::to_value(&*c).unwrap();
    json[kind] = probe;
    *c = serde_json::from_value(json).unwrap();
    pod
}

impl Harness {
    fn events(&self, container: &str, reason: &str) -> Vec<String> {
        self.host
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.container.as_deref() == Some(container) && e.reason == reason)
            .map(|e| e.message.clone())
            .collect()
    }

    fn pod_ready(&self) -> Option<String> {
        let status = self.host.status.lock().unwrap().clone()?;
        status
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status)
    }
}

#[tokio::test(start_paused = true)]
async fn a_readiness_probe_makes_the_container_ready_and_unready_as_it_passes_and_fails() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut h = Harness::new(FakeRuntime::new(Arc::default()), FakeHost::default());
    let probe = serde_json::json!({
        "tcpSocket": {"port": port}, "periodSeconds": 5, "failureThreshold": 2
    });
    let pod = probed(h.pod(&[], &["c"], "Always"), "c", "readinessProbe", probe);
    h.supervisors.apply(pod);
    h.until("running", |h| {
        h.container("c")
            .is_some_and(|c| c.state.is_some_and(|s| s.running.is_some()))
    })
    .await;
    h.until("ready", |h| h.container("c").is_some_and(|c| c.ready))
        .await;
    assert_eq!(h.pod_ready().as_deref(), Some("True"));
    drop(listener);
    let unready_from = tokio::time::Instant::now();
    h.until("not ready", |h| h.container("c").is_some_and(|c| !c.ready))
        .await;
    // Two failures, a period apart, at the probe's 5 s ticks.
    let took = unready_from.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took <= Duration::from_secs(11),
        "unready after {took:?}"
    );
    assert_eq!(h.pod_ready().as_deref(), Some("False"));
    let unhealthy = h.events("c", "Unhealthy");
    assert!(
        unhealthy.len() >= 2
            && unhealthy.iter().all(|m| m.starts_with(&format!(
                "Readiness probe failed: dial tcp 127.0.0.1:{port}"
            ))),
        "{unhealthy:?}"
    );
    let c = h.container("c").unwrap();
    assert_eq!(c.restart_count, 0, "readiness never restarts a container");
    assert!(c.state.is_some_and(|s| s.running.is_some()));
    h.supervisors.remove("uid-1");
}

#[tokio::test(start_paused = true)]
async fn a_failing_liveness_or_startup_probe_kills_the_container_and_its_restart_policy_applies() {
    for kind in ["livenessProbe", "startupProbe"] {
        let mut h = Harness::new(FakeRuntime::new(Arc::default()), FakeHost::default());
        // An exec probe always fails on a wasm node: three failures, 10 s apart.
        let probe = serde_json::json!({"exec": {"command": ["true"]}, "periodSeconds": 10});
        let pod = probed(h.pod(&[], &["c"], "Always"), "c", kind, probe);
        h.supervisors.apply(pod);
        h.until("the second run", |h| {
            h.ctx.runtime.starts_of("c", h.began).len() >= 2
        })
        .await;
        assert_eq!(
            h.ctx.runtime.starts_of("c", h.began),
            [0, 20],
            "{kind}: killed at the third failure, restarted at once"
        );
        h.until("the restart reported", |h| {
            h.container("c").is_some_and(|c| c.restart_count == 1)
        })
        .await;
        let c = h.container("c").unwrap();
        let last = c
            .last_state
            .clone()
            .and_then(|s| s.terminated)
            .expect("lastState");
        let probe_name = kind.trim_end_matches("Probe");
        assert_eq!(last.exit_code, 137);
        assert_eq!(
            last.message.as_deref(),
            Some(format!("Container c failed {probe_name} probe, will be restarted").as_str())
        );
        assert_eq!(
            h.events("c", "Killing"),
            [format!(
                "Container c failed {probe_name} probe, will be restarted"
            )]
        );
        assert!(h.events("c", "Unhealthy").len() >= 3, "{kind}");
        let live = kind == "livenessProbe";
        assert!(c.ready == live && c.started == Some(live), "{kind}: {c:?}");
        assert_eq!(h.ctx.runtime.guests.live.load(Ordering::SeqCst), 1);
        h.supervisors.remove("uid-1");
    }
}

#[tokio::test(start_paused = true)]
async fn a_start_error_that_cannot_be_retried_terminates_the_container_and_one_that_can_waits() {
    for (error, policy) in [
        (
            StartError::Invalid("env PORT=\"x\" is not a port number".into()),
            "Never",
        ),
        (
            StartError::PortInUse {
                addr: "127.0.0.1:80".parse().unwrap(),
                source: std::io::ErrorKind::AddrInUse.into(),
            },
            "Never",
        ),
    ] {
        let retriable = error.can_retry();
        let message = error.to_string();
        let runtime = FakeRuntime {
            start_error: std::sync::Mutex::new(Some(error)),
            ..FakeRuntime::new(Arc::default())
        };
        let mut h = Harness::new(runtime, FakeHost::default());
        h.supervisors.apply(h.pod(&[], &["c"], policy));
        if retriable {
            h.until("waiting in CreateContainerError", |h| {
                h.container("c").is_some_and(|c| {
                    c.state.and_then(|s| s.waiting).is_some_and(|w| {
                        w.reason.as_deref() == Some("CreateContainerError")
                            && w.message.as_deref() == Some(message.as_str())
                    })
                })
            })
            .await;
            assert_eq!(h.phase().as_deref(), Some("Pending"));
            // Tried again after its back-off (at least 10 s), and then it runs.
            h.until("running", |h| {
                h.container("c")
                    .is_some_and(|c| c.state.is_some_and(|s| s.running.is_some()))
            })
            .await;
            assert!(h.began.elapsed() >= Duration::from_secs(10));
            assert_eq!(h.container("c").unwrap().restart_count, 0);
        } else {
            h.until("failed", |h| h.phase().as_deref() == Some("Failed"))
                .await;
            let c = h.container("c").unwrap();
            let terminated = c.state.and_then(|s| s.terminated).expect("terminated");
            assert_eq!(
                (terminated.exit_code, terminated.reason.as_deref()),
                (128, Some("StartError"))
            );
            assert_eq!(terminated.message.as_deref(), Some(message.as_str()));
        }
        h.supervisors.remove("uid-1");
    }
}

#[tokio::test(start_paused = true)]
async fn a_pod_of_a_runtime_class_the_node_does_not_run_gets_no_sandbox_and_one_it_runs_starts() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("m.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
    for (class, starts, says) in [
        ("wasm", true, ""),
        ("containers", false, "no runtime for \"runc\" is configured"),
        ("missing", false, "RuntimeClass \"missing\" not found"),
    ] {
        let host = Arc::new(FakeHost::default());
        let runtime = FakeRuntime::new(Arc::default());
        let mut supervisors = Supervisors::new(context(dir.path(), runtime, host.clone()));
        let mut spec = pod(&format!("file://{}", module.display()), &["main"]);
        spec.spec.as_mut().unwrap().runtime_class_name = Some(class.into());
        supervisors.apply(spec);
        if starts {
            drive_until(&mut supervisors, "the container running", || {
                only_container(&host)
                    .is_some_and(|(_, c)| c.state.and_then(|s| s.running).is_some())
            })
            .await;
            continue;
        }
        let refused = || {
            host.events
                .lock()
                .unwrap()
                .iter()
                .find(|e| e.reason == "FailedCreatePodSandBox")
                .cloned()
        };
        drive_until(&mut supervisors, "the sandbox refused", || {
            refused().is_some()
        })
        .await;
        let event = refused().unwrap();
        assert!(event.message.contains(says), "{class}: {}", event.message);
        let (phase, container) = only_container(&host).expect("a status");
        assert_eq!(phase.as_deref(), Some("Pending"), "{class}");
        let waiting = container.state.and_then(|s| s.waiting).expect("waiting");
        assert_eq!(
            waiting.reason.as_deref(),
            Some("ContainerCreating"),
            "{class}"
        );
        supervisors.remove("uid-1");
    }
}
