//! The kubelet API on HTTPS: `/healthz`, `/pods` and `/containerLogs/{ns}/{pod}/{container}`
//! (with follow, tailLines, timestamps, sinceSeconds, sinceTime, limitBytes and previous), which
//! the API server proxies `kubectl logs` to.

use crate::logs::{self, LogFiles, LogOptions};
use crate::pods::registry::PodRegistry;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
    /// Serving failed (for example the port is taken).
    #[error("kubelet API on {addr}: {source}; pick another with --port or --addr")]
    Serve {
        /// The listen address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// TLS for the kubelet API.
pub struct Tls {
    /// Serving certificate chain (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
    /// CA whose client certificates are required, when set.
    pub client_ca_pem: Option<String>,
}

#[derive(Clone)]
struct Shared {
    registry: Arc<PodRegistry>,
    logs: Arc<LogFiles>,
}

/// Serves the kubelet API on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    tls: Tls,
    registry: Arc<PodRegistry>,
    logs: Arc<LogFiles>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let config = rustls_config(&tls)?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(pods))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .with_state(Shared { registry, logs });
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(Some(std::time::Duration::from_secs(1)));
    });
    axum_server::bind_rustls(
        addr,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)),
    )
    .handle(handle)
    .serve(app.into_make_service())
    .await
    .map_err(|source| ServerError::Serve { addr, source })
}

fn rustls_config(tls: &Tls) -> Result<rustls::ServerConfig, ServerError> {
    let err = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let certs: Vec<_> = rustls_pemfile::certs(&mut tls.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| err(&e))?;
    let key = rustls_pemfile::private_key(&mut tls.key_pem.as_bytes())
        .map_err(|e| err(&e))?
        .ok_or_else(|| ServerError::Tls("no private key in the key file".into()))?;
    let builder = rustls::ServerConfig::builder();
    let mut config = match &tls.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut ca.as_bytes()) {
                roots.add(cert.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| err(&e))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
        }
        None => builder.with_no_client_auth().with_single_cert(certs, key),
    }
    .map_err(|e| err(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A self-signed serving certificate for the node's names and addresses: (cert PEM, key PEM).
pub fn self_signed(names: Vec<String>) -> Result<(String, String), ServerError> {
    let cert =
        rcgen::generate_simple_self_signed(names).map_err(|e| ServerError::Tls(e.to_string()))?;
    Ok((cert.cert.pem(), cert.signing_key.serialize_pem()))
}

async fn pods(State(shared): State<Shared>) -> Response {
    let items = shared.registry.pods();
    let list =
        serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
    axum::Json(list).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    follow: Option<String>,
    previous: Option<String>,
    timestamps: Option<String>,
    tail_lines: Option<i64>,
    since_seconds: Option<i64>,
    since_time: Option<String>,
    limit_bytes: Option<i64>,
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
        (Some(s), _) => Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s.max(0))),
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
