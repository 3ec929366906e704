//! The kubelet API on HTTPS: `/healthz`, `/pods`, `/containerLogs/{ns}/{pod}/{container}`
//! (with follow, tailLines, timestamps, sinceSeconds, sinceTime, limitBytes and previous), which
//! the API server proxies `kubectl logs` to, the agent's own metrics (`/metrics`), and resource
//! usage ([`stats`]: `/stats/summary`, `/metrics/resource`). Every request is authenticated and authorized
//! ([`auth`]) as on the kubelet.

pub mod auth;
mod connection;
pub mod healthz;
pub mod stats;

pub use connection::ApiLimits;

use crate::logs::{self, LogFiles, LogOptions};
use crate::pods::registry::PodRegistry;
use auth::{Attributes, Auth, Refusal, User};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Errors starting the kubelet API.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS material is unusable.
    #[error("kubelet API TLS setup: {0}")]
    Tls(String),
    /// Listening failed (for example the port is taken).
    #[error("kubelet API on {addr}: {source}; pick another with --port or --addr")]
    Listen {
        /// The listen address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// TLS for the kubelet API.
pub struct Tls {
    /// The serving certificate, read at every handshake (it may be renewed meanwhile).
    pub certificate: Arc<crate::tls::identity::NodeCertificate>,
    /// CA whose client certificates authenticate their holders (`--client-ca-file`).
    pub client_ca_pem: Option<String>,
}

#[derive(Clone)]
struct Shared {
    registry: Arc<PodRegistry>,
    logs: Arc<LogFiles>,
    node_name: Arc<str>,
    started: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    rates: Arc<stats::Rates>,
}

/// The user named by the connection's verified client certificate.
#[derive(Clone)]
struct PeerCertificate(Option<User>);

/// Serves the kubelet API on `addr` until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    addr: SocketAddr,
    limits: ApiLimits,
    tls: Tls,
    auth: Arc<Auth>,
    registry: Arc<PodRegistry>,
    logs: Arc<LogFiles>,
    node_name: String,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(rustls_config(&tls)?));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(pods))
        .route("/stats/summary", get(summary))
        .route("/metrics", get(agent_metrics))
        .route("/metrics/resource", get(resource_metrics))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/exec/{*rest}", any(not_supported))
        .route("/attach/{*rest}", any(not_supported))
        .route("/portForward/{*rest}", any(not_supported))
        .route("/run/{*rest}", any(not_supported))
        .with_state(Shared {
            registry,
            logs,
            node_name: node_name.into(),
            started: crate::pods::status::now(),
            rates: Arc::default(),
        })
        .layer(middleware::from_fn_with_state(
            auth,
            authenticate_and_authorize,
        ));
    let connections_allowed = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    let mut accept_errors = connection::AcceptBackoff::default();
    loop {
        // At the cap, nothing more is accepted until a connection ends: further clients wait
        // in the listen backlog instead of costing the agent memory and descriptors.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = connections_allowed.clone().acquire_owned() => permit.expect("never closed"),
        };
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    accept_errors.succeeded();
                    tcp
                }
                Err(e) => {
                    accept_errors.failed(&e).await;
                    continue;
                }
            },
        };
        let served = connection::serve(
            tcp,
            acceptor.clone(),
            app.clone(),
            limits,
            |tls: &rustls::ServerConnection| {
                PeerCertificate(
                    tls.peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| auth::user_of_certificate(c)),
                )
            },
        );
        connections.spawn(async move {
            // The connection counts against the cap until its task ends.
            let _permit = permit;
            served.await;
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
    Ok(())
}

async fn authenticate_and_authorize(
    State(auth): State<Arc<Auth>>,
    request: Request,
    next: Next,
) -> Response {
    let certificate = request
        .extensions()
        .get::<PeerCertificate>()
        .and_then(|p| p.0.clone());
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let refused = |refusal: Refusal| match refusal {
        Refusal::Unauthorized => text(StatusCode::UNAUTHORIZED, "Unauthorized".into()),
        Refusal::Forbidden(message) => text(StatusCode::FORBIDDEN, message),
        Refusal::Error(message) => text(StatusCode::INTERNAL_SERVER_ERROR, message),
    };
    let user = match auth.authenticate(certificate, bearer.as_deref()).await {
        Ok(user) => user,
        Err(refusal) => return refused(refusal),
    };
    if request.uri().path() != "/healthz" {
        let attrs = Attributes::of(request.method(), request.uri().path());
        if let Err(refusal) = auth.authorize(&user, &attrs).await {
            return refused(refusal);
        }
    }
    next.run(request).await
}

fn rustls_config(tls: &Tls) -> Result<rustls::ServerConfig, ServerError> {
    let err = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let builder = rustls::ServerConfig::builder();
    let builder = match &tls.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut ca.as_bytes()) {
                roots.add(cert.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
            }
            // Certificates are optional: a client may authenticate with a bearer token instead.
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .map_err(|e| err(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(tls.certificate.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A self-signed serving certificate for the node's names and addresses: (cert PEM, key PEM).
pub fn self_signed(names: Vec<String>) -> Result<(String, String), ServerError> {
    let cert =
        rcgen::generate_simple_self_signed(names).map_err(|e| ServerError::Tls(e.to_string()))?;
    Ok((cert.cert.pem(), cert.signing_key.serialize_pem()))
}

/// `kubectl exec/attach/port-forward` have nothing to reach in a WebAssembly guest: a clear
/// refusal instead of a hang.
async fn not_supported() -> Response {
    text(
        StatusCode::NOT_IMPLEMENTED,
        "exec, attach, port-forward and run are not supported for WebAssembly pods: a wasm guest has no shell or process to enter".into(),
    )
}

/// The agent's own metrics (`/metrics`), with the pods and containers running now.
async fn agent_metrics(State(shared): State<Shared>) -> Response {
    let usage = shared.registry.usage();
    let running_pods = usage.iter().filter(|(_, c)| !c.is_empty()).count();
    let running_containers = usage.iter().map(|(_, c)| c.len()).sum();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::metrics().render(running_pods, running_containers),
    )
        .into_response()
}

async fn summary(State(shared): State<Shared>) -> Response {
    axum::Json(stats::summary(
        &shared.node_name,
        &shared.started,
        &shared.registry,
        &shared.rates,
    ))
    .into_response()
}

async fn resource_metrics(State(shared): State<Shared>) -> Response {
    let summary = stats::summary(
        &shared.node_name,
        &shared.started,
        &shared.registry,
        &shared.rates,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        stats::resource_metrics(&summary),
    )
        .into_response()
}

async fn pods(State(shared): State<Shared>) -> Response {
    let items = shared.registry.pods();
    let list =
        serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
    axum::Json(list).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LogQuery {
    follow: Option<String>,
    previous: Option<String>,
    timestamps: Option<String>,
    tail_lines: Option<i64>,
    pub(crate) since_seconds: Option<i64>,
    since_time: Option<String>,
    limit_bytes: Option<i64>,
}

impl LogQuery {
    /// The API server's validation of `PodLogOptions`, which the kubelet applies again: a
    /// request with an out-of-range value is answered 400 with the reason.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.since_seconds.is_some() && self.since_time.is_some() {
            return Err("at most one of sinceTime or sinceSeconds may be specified".into());
        }
        if self.since_seconds.is_some_and(|s| s < 1) {
            return Err("sinceSeconds: must be greater than 0".into());
        }
        if self.tail_lines.is_some_and(|n| n < 0) {
            return Err("tailLines: must be greater than or equal to 0".into());
        }
        if self.limit_bytes.is_some_and(|n| n < 1) {
            return Err("limitBytes: must be greater than 0".into());
        }
        Ok(())
    }
}

fn flag(value: &Option<String>) -> bool {
    value.as_deref().is_some_and(|v| v == "true" || v == "1")
}

fn text(code: StatusCode, message: String) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], message).into_response()
}

async fn container_logs(
    State(shared): State<Shared>,
    Path((ns, pod_name, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let Some((pod, logs)) = shared.registry.logs(&ns, &pod_name, &container) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod_name} is not known on this node"),
        );
    };
    let statuses = pod.status.as_ref().map(|s| {
        s.container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
            .cloned()
            .collect::<Vec<_>>()
    });
    let known = pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == container)
    });
    if !known {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not valid for pod {pod_name}"),
        );
    }
    if let Err(invalid) = q.validate() {
        return text(StatusCode::BAD_REQUEST, invalid);
    }
    let previous = flag(&q.previous);
    let path: Option<PathBuf> = logs.and_then(|l| if previous { l.previous } else { l.current });
    let Some(path) = path else {
        if previous {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "previous terminated container \"{container}\" in pod \"{pod_name}\" not found"
                ),
            );
        }
        let waiting = statuses
            .into_iter()
            .flatten()
            .find(|s| s.name == container)
            .and_then(|s| s.state.and_then(|st| st.waiting))
            .and_then(|w| w.reason);
        let why = waiting.unwrap_or_else(|| "ContainerCreating".into());
        return text(
            StatusCode::BAD_REQUEST,
            format!("container \"{container}\" in pod \"{pod_name}\" is waiting to start: {why}"),
        );
    };
    let since = match (q.since_seconds, q.since_time.as_deref()) {
        (Some(s), _) => Some(crate::time::timestamp_plus(
            jiff::Timestamp::now(),
            s.saturating_neg(),
        )),
        (None, Some(t)) => match t.parse::<jiff::Timestamp>() {
            Ok(t) => Some(t),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("sinceTime {t:?} is not an RFC 3339 time: {e}"),
                );
            }
        },
        (None, None) => None,
    };
    let options = LogOptions {
        follow: flag(&q.follow) && !previous,
        tail_lines: q.tail_lines.and_then(|n| usize::try_from(n).ok()),
        timestamps: flag(&q.timestamps),
        since,
        limit_bytes: q.limit_bytes.and_then(|n| usize::try_from(n).ok()),
    };
    let progress = shared.logs.progress(&path);
    let stream = logs::read(path, options, progress);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
