//! Supervisors driven through a fake runtime and a fake host: what happens to a pod when the
//! code that supervises it fails.

use super::host::{PodEvent, PodHost, StatusError};
use super::{PodContext, Supervisors};
use crate::images::ImageStore;
use crate::pods::admission::NodeFacts;
use crate::pods::resources::Requests;
use crate::runtime::{
    ContainerRun, ModuleBytes, PrepareError, PrepareFailure, RunningContainer, Runtime, StartError,
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

/// Guests that run until stopped; start number `panic_on` panics instead. With `warn`, every
/// guest reports that warning as it starts.
struct FakeRuntime {
    starts: AtomicUsize,
    panic_on: usize,
    guests: Arc<Guests>,
    warn: Option<&'static str>,
    /// Preparing the module fails so.
    unpreparable: Option<PrepareFailure>,
}

impl FakeRuntime {
    fn new(guests: Arc<Guests>) -> Self {
        Self {
            starts: AtomicUsize::new(0),
            panic_on: usize::MAX,
            guests,
            warn: None,
            unpreparable: None,
        }
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
        if let Some(warning) = self.warn {
            run.warnings.warn("RequestFailed", warning);
        }
        let guest = Guest::new(self.guests.clone());
        Ok(RunningContainer::new(tokio::spawn(async move {
            let _guest = guest;
            std::future::pending().await
        })))
    }
}

/// A host that keeps the last status written and the events recorded.
#[derive(Default)]
struct FakeHost {
    status: std::sync::Mutex<Option<PodStatus>>,
    events: std::sync::Mutex<Vec<PodEvent>>,
}

impl PodHost for FakeHost {
    async fn write_status(&self, _pod: &Pod, status: &PodStatus) -> Result<(), StatusError> {
        *self.status.lock().unwrap() = Some(status.clone());
        Ok(())
    }
    async fn record(&self, _pod: &Pod, event: PodEvent) {
        self.events.lock().unwrap().push(event);
    }
    async fn finish_deletion(&self, _pod: &Pod) {}
    async fn config_map(&self, _ns: &str, _name: &str) -> Result<Option<ConfigMap>, String> {
        Ok(None)
    }
    async fn secret(&self, _ns: &str, _name: &str) -> Result<Option<Secret>, String> {
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
        pods_dir: dir.join("pods"),
        registry: Arc::default(),
        stopping: Default::default(),
        node_credentials: Default::default(),
        sync_frequency: Duration::from_secs(60),
        allowed_host_paths: Vec::new(),
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
        line.contains("pod{namespace=default name=p uid=uid-1}") && line.contains("container=web"),
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
