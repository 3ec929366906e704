//! Container probes as the kubelet runs them: startup first, then liveness and readiness, each
//! with its delay, period, timeout and thresholds. `httpGet` and `tcpSocket` reach the pod's
//! IP (the node's); `exec` and `grpc` cannot run against a WebAssembly guest and fail with a
//! message that says so.

use k8s_openapi::api::core::v1::{
    Container, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::time::Duration;
use tokio::sync::mpsc;

/// The User-Agent the kubelet's HTTP probes send.
const USER_AGENT: &str = "kube-probe/1.33";

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `startupProbe`.
    Startup,
    /// `livenessProbe`.
    Liveness,
    /// `readinessProbe`.
    Readiness,
}

impl Kind {
    /// The name used in events (`Liveness probe failed: ...`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Startup => "Startup",
            Self::Liveness => "Liveness",
            Self::Readiness => "Readiness",
        }
    }
}

/// What the probes of one container run report to its pod's supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The startup probe succeeded.
    Started,
    /// The readiness probe crossed a threshold.
    Ready(bool),
    /// A probe failed once (for an `Unhealthy` event).
    Failed(Kind, String),
    /// The liveness or startup probe failed `failureThreshold` times: restart the container.
    Kill(Kind),
    /// The postStart hook failed: kill the container.
    PostStartFailed(String),
}

/// What a probe or hook does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `GET http://host:port/path` with headers; 200-399 passes.
    Http {
        /// Host to connect to.
        host: String,
        /// Port.
        port: u16,
        /// Path and query.
        path: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// A TCP connection that opens passes.
    Tcp {
        /// Host to connect to.
        host: String,
        /// Port.
        port: u16,
    },
    /// Sleep (lifecycle hooks only).
    Sleep(Duration),
    /// Something a WebAssembly container cannot do; always fails with this message.
    Unsupported(String),
}

/// A probe's timing and thresholds, with the kubelet's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    action: Action,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

fn seconds(value: Option<i32>, default: u64) -> Duration {
    value.map_or(Duration::from_secs(default), |v| {
        crate::time::seconds(i64::from(v))
    })
}

fn count(value: Option<i32>, default: u32) -> u32 {
    value
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

impl Settings {
    fn of(probe: &Probe, container: &Container, pod_ip: &str) -> Self {
        let action = if let Some(http) = &probe.http_get {
            http_action(http, container, pod_ip)
        } else if let Some(tcp) = &probe.tcp_socket {
            tcp_action(tcp, container, pod_ip)
        } else if probe.exec.is_some() {
            Action::Unsupported(
                "exec probes cannot run in a WebAssembly container (it has no processes to exec); use httpGet or tcpSocket".into(),
            )
        } else if probe.grpc.is_some() {
            Action::Unsupported(
                "grpc probes are not supported on this node; use httpGet or tcpSocket".into(),
            )
        } else {
            Action::Unsupported("the probe has no handler".into())
        };
        Self {
            action,
            initial_delay: seconds(probe.initial_delay_seconds, 0),
            period: seconds(probe.period_seconds, 10),
            timeout: seconds(probe.timeout_seconds, 1),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// The port a probe or hook names: a number, or the name of one of the container's ports.
fn port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

/// The action of an `httpGet` handler.
pub fn http_action(http: &HTTPGetAction, container: &Container, pod_ip: &str) -> Action {
    if http.scheme.as_deref() == Some("HTTPS") {
        return Action::Unsupported(
            "HTTPS probes are not supported on this node (wasi-http guests are served over plain HTTP); use scheme HTTP".into(),
        );
    }
    match port(&http.port, container) {
        Ok(port) => {
            let path = http.path.clone().unwrap_or_default();
            Action::Http {
                host: http.host.clone().unwrap_or_else(|| pod_ip.to_string()),
                port,
                path: if path.starts_with('/') {
                    path
                } else {
                    format!("/{path}")
                },
                headers: http
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            }
        }
        Err(e) => Action::Unsupported(e),
    }
}

/// The action of a `tcpSocket` handler.
pub fn tcp_action(tcp: &TCPSocketAction, container: &Container, pod_ip: &str) -> Action {
    match port(&tcp.port, container) {
        Ok(port) => Action::Tcp {
            host: tcp.host.clone().unwrap_or_else(|| pod_ip.to_string()),
            port,
        },
        Err(e) => Action::Unsupported(e),
    }
}

/// The action of a lifecycle hook (`postStart`, `preStop`).
pub fn hook_action(hook: &LifecycleHandler, container: &Container, pod_ip: &str) -> Action {
    if let Some(http) = &hook.http_get {
        http_action(http, container, pod_ip)
    } else if let Some(tcp) = &hook.tcp_socket {
        tcp_action(tcp, container, pod_ip)
    } else if let Some(sleep) = &hook.sleep {
        Action::Sleep(crate::time::seconds(sleep.seconds))
    } else if hook.exec.is_some() {
        Action::Unsupported(
            "exec hooks cannot run in a WebAssembly container (it has no processes to exec); use httpGet or sleep".into(),
        )
    } else {
        Action::Unsupported("the hook has no handler".into())
    }
}

/// Runs `action` once within `timeout`; the error is the kubelet-style failure message.
pub async fn run(action: &Action, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        match action {
            Action::Http {
                host,
                port,
                path,
                headers,
            } => http_get(host, *port, path, headers).await,
            Action::Tcp { host, port } => tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {host}:{port}: {e}")),
            Action::Sleep(duration) => {
                tokio::time::sleep(*duration).await;
                Ok(())
            }
            Action::Unsupported(message) => Err(message.clone()),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(match action {
            Action::Http {
                host, port, path, ..
            } => format!(
                "Get \"http://{host}:{port}{path}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            ),
            Action::Tcp { host, port } => format!("dial tcp {host}:{port}: i/o timeout"),
            _ => format!("timed out after {timeout:?}"),
        }),
    }
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let url = format!("http://{host}:{port}{path}");
    let failed = |e: &dyn std::fmt::Display| format!("Get \"{url}\": {e}");
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| failed(&format!("dial tcp {host}:{port}: {e}")))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| failed(&e))?;
    let connection = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(connection));
    let mut request = http::Request::get(path)
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::USER_AGENT, USER_AGENT)
        .header(http::header::ACCEPT, "*/*");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| failed(&e))?;
    let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
    drop(connection);
    let code = response.status().as_u16();
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// A container's probes.
#[derive(Debug, Clone, Default)]
pub struct ContainerProbes {
    startup: Option<Settings>,
    liveness: Option<Settings>,
    readiness: Option<Settings>,
}

impl ContainerProbes {
    /// The probes `container` declares, aimed at `pod_ip`.
    pub fn of(container: &Container, pod_ip: &str) -> Self {
        let settings = |p: &Option<Probe>| p.as_ref().map(|p| Settings::of(p, container, pod_ip));
        Self {
            startup: settings(&container.startup_probe),
            liveness: settings(&container.liveness_probe),
            readiness: settings(&container.readiness_probe),
        }
    }

    /// Whether there is no probe at all.
    pub fn is_empty(&self) -> bool {
        self.startup.is_none() && self.liveness.is_none() && self.readiness.is_none()
    }

    /// Whether the container counts as started only once its startup probe passes.
    pub fn has_startup(&self) -> bool {
        self.startup.is_some()
    }

    /// Whether the container is ready only once its readiness probe passes.
    pub fn has_readiness(&self) -> bool {
        self.readiness.is_some()
    }

    /// Probes the container until the task is dropped, reporting on `updates`.
    pub async fn run(self, updates: mpsc::UnboundedSender<Update>) {
        if let Some(startup) = &self.startup {
            if !watch(startup, Kind::Startup, &updates).await {
                return;
            }
            let _ = updates.send(Update::Started);
        }
        let liveness = async {
            if let Some(liveness) = &self.liveness {
                watch(liveness, Kind::Liveness, &updates).await;
            }
        };
        let readiness = async {
            if let Some(readiness) = &self.readiness {
                watch(readiness, Kind::Readiness, &updates).await;
            }
        };
        tokio::join!(liveness, readiness);
    }
}

/// Runs one probe. Startup returns `true` at its first success; liveness and startup return
/// `false` after reporting a kill; readiness reports transitions and runs on.
async fn watch(settings: &Settings, kind: Kind, updates: &mpsc::UnboundedSender<Update>) -> bool {
    tokio::time::sleep(settings.initial_delay).await;
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut ready = false;
    let mut ticks = tokio::time::interval(settings.period.max(Duration::from_secs(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match run(&settings.action, settings.timeout).await {
            Ok(()) => {
                failures = 0;
                successes += 1;
                match kind {
                    Kind::Startup => return true,
                    Kind::Readiness if !ready && successes >= settings.success_threshold => {
                        ready = true;
                        let _ = updates.send(Update::Ready(true));
                    }
                    _ => {}
                }
            }
            Err(message) => {
                successes = 0;
                failures += 1;
                let _ = updates.send(Update::Failed(kind, message));
                if failures >= settings.failure_threshold {
                    match kind {
                        Kind::Startup | Kind::Liveness => {
                            let _ = updates.send(Update::Kill(kind));
                            return false;
                        }
                        Kind::Readiness if ready => {
                            ready = false;
                            let _ = updates.send(Update::Ready(false));
                        }
                        Kind::Readiness => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(json: serde_json::Value) -> Container {
        serde_json::from_value(json).expect("a valid container")
    }

    #[test]
    fn defaults_are_the_kubelets() {
        let c = container(
            serde_json::json!({"name": "c", "livenessProbe": {"tcpSocket": {"port": 80}}}),
        );
        let probes = ContainerProbes::of(&c, "10.0.0.1");
        assert!(!probes.has_startup() && !probes.has_readiness());
        let liveness = probes.liveness.expect("liveness");
        assert_eq!(liveness.period, Duration::from_secs(10));
        assert_eq!(liveness.timeout, Duration::from_secs(1));
        assert_eq!(liveness.failure_threshold, 3);
        assert_eq!(liveness.success_threshold, 1);
        assert_eq!(liveness.initial_delay, Duration::ZERO);
        assert_eq!(
            liveness.action,
            Action::Tcp {
                host: "10.0.0.1".into(),
                port: 80
            }
        );
    }

    #[test]
    fn named_ports_resolve_against_the_container() {
        let c = container(serde_json::json!({
            "name": "c",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"port": "http", "path": "healthz", "httpHeaders": [{"name": "X-A", "value": "b"}]}}
        }));
        let readiness = ContainerProbes::of(&c, "10.0.0.1")
            .readiness
            .expect("readiness");
        assert_eq!(
            readiness.action,
            Action::Http {
                host: "10.0.0.1".into(),
                port: 8080,
                path: "/healthz".into(),
                headers: vec![("X-A".into(), "b".into())]
            }
        );
        let c = container(
            serde_json::json!({"name": "c", "readinessProbe": {"httpGet": {"port": "nope"}}}),
        );
        let readiness = ContainerProbes::of(&c, "10.0.0.1")
            .readiness
            .expect("readiness");
        assert!(matches!(readiness.action, Action::Unsupported(m) if m.contains("no port named")));
    }

    #[tokio::test]
    async fn exec_fails_with_a_message_that_says_why() {
        let c = container(
            serde_json::json!({"name": "c", "livenessProbe": {"exec": {"command": ["true"]}}}),
        );
        let liveness = ContainerProbes::of(&c, "10.0.0.1")
            .liveness
            .expect("liveness");
        let error = run(&liveness.action, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(error.contains("exec probes cannot run"), "{error}");
    }

    #[tokio::test]
    async fn a_closed_port_fails_and_an_open_one_passes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Action::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(run(&open, Duration::from_secs(1)).await, Ok(()));
        drop(listener);
        let error = run(&open, Duration::from_secs(1)).await.unwrap_err();
        assert!(
            error.starts_with(&format!("dial tcp 127.0.0.1:{port}")),
            "{error}"
        );
    }
}
