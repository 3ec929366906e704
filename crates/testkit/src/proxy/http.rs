//! An HTTPS proxy in front of the API server that can make it fail the way an overloaded or
//! restarting API server does: every request answered `503 ServiceUnavailable` with a Status
//! body, and every open watch closed.
//!
//! It terminates TLS with a certificate of its own and forwards each connection to the API
//! server over TLS as the node (the client certificate of the node's kubeconfig), so it works
//! against the stand-in and a real cluster alike. Only HTTP/1.1 is offered.

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kube::client::ConfigExt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The proxy; it stops when dropped.
pub struct FaultyApiServer {
    addr: SocketAddr,
    ca_pem: String,
    state: Arc<State>,
    _serving: AbortOnDropHandle<()>,
}

struct State {
    upstream: String,
    server_name: rustls::pki_types::ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    /// Cancelled when a fault starts; replaced when it ends.
    healthy: std::sync::Mutex<Option<CancellationToken>>,
    refused: AtomicUsize,
}

impl FaultyApiServer {
    /// Listens on 127.0.0.1 and forwards to the API server of `node_kubeconfig` with that
    /// kubeconfig's client certificate.
    pub async fn start(node_kubeconfig: &Path) -> anyhow::Result<Self> {
        let kubeconfig = kube::config::Kubeconfig::read_from(node_kubeconfig)
            .with_context(|| format!("reading {}", node_kubeconfig.display()))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .context("the node kubeconfig")?;
        let mut client_tls = config
            .rustls_client_config()
            .context("TLS to the API server")?;
        client_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let host = config.cluster_url.host().context("no API server host")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let upstream = format!("{host}:{}", config.cluster_url.port_u16().unwrap_or(443));
        let server_name = rustls::pki_types::ServerName::try_from(host)?;

        let ca = crate::apiserver::Ca::new("faulty-api-server-ca")?;
        let (cert, key) = ca.issue(
            "faulty-api-server",
            &[],
            &["127.0.0.1".into()],
            crate::apiserver::Usage::Server,
            Duration::from_secs(24 * 3600),
        )?;
        let certs = rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<_, _>>()?;
        let key = rustls_pemfile::private_key(&mut key.as_bytes())?.context("no key")?;
        let mut server_tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        server_tls.alpn_protocols = vec![b"http/1.1".to_vec()];

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            upstream,
            server_name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(client_tls)),
            healthy: std::sync::Mutex::new(Some(CancellationToken::new())),
            refused: AtomicUsize::new(0),
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
        let serving = tokio::spawn(accept(listener, acceptor, state.clone()));
        Ok(Self {
            addr,
            ca_pem: ca.cert_pem().to_string(),
            state,
            _serving: AbortOnDropHandle::new(serving),
        })
    }

    /// The URL the node agent should use, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA (PEM) that signed the proxy's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Starts failing: open watches and other streams end, every request gets a 503.
    pub fn fail(&self) {
        if let Some(healthy) = self.state.lock_healthy().take() {
            healthy.cancel();
        }
    }

    /// Stops failing.
    pub fn recover(&self) {
        self.state
            .lock_healthy()
            .get_or_insert_with(CancellationToken::new);
    }

    /// How many requests were answered 503 so far.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::Relaxed)
    }
}

impl State {
    fn lock_healthy(&self) -> std::sync::MutexGuard<'_, Option<CancellationToken>> {
        self.healthy.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Incoming>> {
        let tcp = TcpStream::connect(&self.upstream).await?;
        let tls = self.tls.connect(self.server_name.clone(), tcp).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Forwards `request` on the connection's upstream link (made or remade as needed), or
    /// refuses it while failing. A forwarded body ends when a fault starts.
    async fn handle(
        &self,
        upstream: &Mutex<Option<SendRequest<Incoming>>>,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let Some(healthy) = self.lock_healthy().clone() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            );
        };
        let mut upstream = upstream.lock().await;
        if upstream.as_ref().is_none_or(|sender| sender.is_closed()) {
            match self.connect().await {
                Ok(sender) => *upstream = Some(sender),
                Err(error) => {
                    return status(
                        StatusCode::BAD_GATEWAY,
                        "InternalError",
                        &format!("{error:#}"),
                    );
                }
            }
        }
        let Some(sender) = upstream.as_mut() else {
            return status(StatusCode::BAD_GATEWAY, "InternalError", "no upstream");
        };
        match sender.send_request(request).await {
            Ok(response) => response.map(|body| {
                let frames = BodyStream::new(body).take_until(healthy.cancelled_owned());
                BodyExt::boxed(StreamBody::new(frames))
            }),
            Err(error) => {
                *upstream = None;
                status(
                    StatusCode::BAD_GATEWAY,
                    "InternalError",
                    &format!("{error}"),
                )
            }
        }
    }
}

/// A `metav1.Status` failure response, as the API server writes one.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    let mut response = Response::new(BodyExt::boxed(
        Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}),
    ));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn accept(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, state: Arc<State>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, state) = (acceptor.clone(), state.clone());
        connections.spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let upstream = Arc::new(Mutex::new(None));
            let service = hyper::service::service_fn(move |request| {
                let (state, upstream) = (state.clone(), upstream.clone());
                async move { Ok::<_, std::convert::Infallible>(state.handle(&upstream, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}
