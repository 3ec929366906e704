//! A Kubernetes API server stand-in for tests: HTTPS with its own CA, certificate and token
//! authentication, the resources a kubelet touches, and the real server's semantics for them.
//! It is a test double; the node agent never depends on it.

mod admission;
mod auth;
mod controllers;
mod convert;
mod csr;
mod endpoints;
mod handlers;
mod node_lifecycle;
mod objects;
mod patch;
mod pki;
mod proxy;
mod resources;
mod response;
mod reviews;
mod runtime_class;
mod selectors;
mod semantics;
mod store;
mod taint_eviction;
mod watch;

pub use auth::Identity;
pub use pki::{Ca, Usage};
pub use proxy::anonymous_client_config;

use anyhow::Context;
use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::Store;
use tokio::task::JoinHandle;

/// State shared by every connection.
pub struct Shared {
    store: Store,
    ca: Ca,
    tokens: Mutex<HashMap<String, Identity>>,
    address: String,
    kubelet_client: Arc<rustls::ClientConfig>,
    requests: Mutex<HashMap<String, RequestCounts>>,
    cluster_signing_duration: Duration,
}

/// Requests one user made, by kind (for measuring what a node agent costs the API server).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// GETs that are not watches (gets and lists).
    pub reads: u64,
    /// Of those, reads of ConfigMaps and Secrets.
    pub config_reads: u64,
    /// Watches opened.
    pub watches: u64,
    /// Creates, updates, patches and deletes, except of events.
    pub writes: u64,
    /// Events created or updated.
    pub event_writes: u64,
}

impl Shared {
    /// Authenticates a bearer token: bootstrap tokens, then tokens this server issued.
    fn identity_for_token(&self, token: &str) -> Option<Identity> {
        if let Some(who) = self.store.read(|s| auth::bootstrap_token(s, token)) {
            return Some(who);
        }
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    /// Issues a new opaque bearer token for `identity`.
    fn issue_token(&self, identity: Identity) -> String {
        let token = hex::encode(rand::random::<[u8; 24]>());
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), identity);
        token
    }
}

/// Options for [`ApiServer::start`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Run a scheduler that binds pending pods to nodes.
    pub scheduler: bool,
    /// The longest validity of certificates the kubelet signers issue, as
    /// kube-controller-manager's `--cluster-signing-duration` (default one year).
    pub cluster_signing_duration: Option<Duration>,
}

/// A running stand-in; stops when dropped.
pub struct ApiServer {
    url: String,
    shared: Arc<Shared>,
    dir: tempfile::TempDir,
    admin_kubeconfig: PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts a stand-in on 127.0.0.1 with an ephemeral port.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = Ca::new("krustlet-standin-ca")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let url = format!("https://{addr}");
        let year = Duration::from_secs(365 * 24 * 3600);
        let (serving_cert, serving_key) = ca.issue(
            "kube-apiserver",
            &[],
            &["127.0.0.1".into(), "localhost".into(), "kubernetes".into()],
            Usage::Server,
            year,
        )?;
        let (client_cert, client_key) = ca.issue(
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            &[],
            Usage::Client,
            year,
        )?;
        let tls = server_tls(&ca, &serving_cert, &serving_key)?;
        let shared = Arc::new(Shared {
            store: Store::default(),
            kubelet_client: Arc::new(proxy::kubelet_client_config(&client_cert, &client_key)?),
            ca,
            tokens: Mutex::new(HashMap::new()),
            address: addr.to_string(),
            requests: Mutex::default(),
            cluster_signing_duration: options.cluster_signing_duration.unwrap_or(year),
        });
        seed(&shared);
        let dir = crate::scratch::tempdir("krustlet-standin")?;
        let mut server = Self {
            url,
            shared: shared.clone(),
            admin_kubeconfig: PathBuf::new(),
            dir,
            tasks: Vec::new(),
        };
        server.admin_kubeconfig = server.kubeconfig_for("kubernetes-admin", &["system:masters"])?;
        server.tasks.push(tokio::spawn(accept_loop(
            listener,
            tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            shared.clone(),
        )));
        server
            .tasks
            .push(tokio::spawn(controllers::run(shared, options.scheduler)));
        Ok(server)
    }

    /// The requests `user` has made so far.
    pub fn request_counts(&self, user: &str) -> RequestCounts {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .copied()
            .unwrap_or_default()
    }

    /// The server's URL, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The cluster CA certificate (PEM); it signs every certificate the stand-in issues.
    pub fn ca_pem(&self) -> &str {
        self.shared.ca.cert_pem()
    }

    /// The CA, to sign certificates for tests (a kubelet's client CA, say).
    pub fn ca(&self) -> &Ca {
        &self.shared.ca
    }

    /// A kubeconfig with cluster-admin rights (`system:masters`).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// Writes a kubeconfig authenticating with a client certificate for `user` in `groups`.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> anyhow::Result<PathBuf> {
        let (cert, key) = self.shared.ca.issue(
            user,
            groups,
            &[],
            Usage::Client,
            Duration::from_secs(30 * 24 * 3600),
        )?;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let credentials =
            json!({"client-certificate-data": b64(&cert), "client-key-data": b64(&key)});
        self.write_kubeconfig(&user.replace(':', "-"), credentials)
    }

    /// Forgets the watch history, as etcd compaction does: watches from older versions get 410.
    pub fn compact(&self) {
        self.shared.store.compact();
    }

    fn write_kubeconfig(&self, name: &str, user: serde_json::Value) -> anyhow::Result<PathBuf> {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem());
        let config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": name}}],
            "current-context": "standin",
        });
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, serde_yaml::to_string(&config)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn seed(shared: &Shared) {
    let namespaces = resources::find("", "v1", "namespaces").expect("namespaces are served");
    let admin = Identity::user("system:apiserver", &["system:masters"]);
    shared.store.write(|state| {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            objects::create(state, namespaces, "", &admin, object)
                .expect("seeding a fresh store cannot fail");
        }
        // Every cluster's Service for its API server, at the first address of the range.
        let services = resources::find("", "v1", "services").expect("services are served");
        let kubernetes = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}});
        objects::create(state, services, "default", &admin, kubernetes)
            .expect("seeding a fresh store cannot fail");
    });
}

fn server_tls(ca: &Ca, cert_pem: &str, key_pem: &str) -> anyhow::Result<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?.context("no key in PEM")?;
    let mut roots = rustls::RootCertStore::empty();
    for ca_cert in rustls_pemfile::certs(&mut ca.cert_pem().as_bytes()) {
        roots.add(ca_cert?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(identity_of);
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                let peer = peer.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(handlers::handle(shared, peer, req).await)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn identity_of(cert: &CertificateDer<'_>) -> Option<Identity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let user = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    Some(Identity::user(user, &groups))
}
