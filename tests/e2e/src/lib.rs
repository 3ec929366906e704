//! The end-to-end harness: a cluster (the API server stand-in, or a real cluster when
//! `KRUSTLET_E2E_KUBECONFIG` names one), a real registry with the wasm fixtures, node agents
//! started as real `krustlet-wasi` processes, per-test namespaces, and waits with deadlines.

pub mod cni;
pub mod fake_node;
pub mod metrics_server;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::wait::Condition;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use testkit::apiserver::{ApiServer, Options};
use testkit::registry::Registry;

/// How long a test waits for a condition before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The process-wide cluster: the stand-in runs on its own runtime thread so every test can use it.
struct Shared {
    standin: Option<ApiServer>,
    admin: PathBuf,
    registry: Registry,
    _runtime: Option<tokio::runtime::Runtime>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
static SIGNING_DURATION: OnceLock<Duration> = OnceLock::new();

/// Makes the stand-in's kubelet signers issue certificates valid for `duration` at most (as
/// kube-controller-manager's `--cluster-signing-duration`), for tests of certificate rotation.
/// Call it before the first [`Cluster::new`] of the test binary; it changes nothing on a real
/// cluster.
pub fn use_cluster_signing_duration(duration: Duration) {
    let _ = SIGNING_DURATION.set(duration);
}

fn shared() -> &'static Shared {
    // Set up on a thread of its own: tests call this from inside their runtimes.
    SHARED.get_or_init(|| {
        std::thread::scope(|scope| {
            scope
                .spawn(start_shared)
                .join()
                .expect("setting up the e2e cluster")
        })
    })
}

fn start_shared() -> Shared {
    {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registry = Registry::start().expect("starting the test registry");
        match std::env::var_os("KRUSTLET_E2E_KUBECONFIG") {
            Some(path) => Shared {
                standin: None,
                admin: PathBuf::from(path),
                registry,
                _runtime: None,
            },
            None => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime for the stand-in");
                let standin = runtime
                    .block_on(ApiServer::start(Options {
                        scheduler: true,
                        cluster_signing_duration: SIGNING_DURATION.get().copied(),
                    }))
                    .expect("starting the API server stand-in");
                Shared {
                    admin: standin.admin_kubeconfig().to_path_buf(),
                    standin: Some(standin),
                    registry,
                    _runtime: Some(runtime),
                }
            }
        }
    }
}

/// The cluster under test, for one test.
pub struct Cluster {
    /// An admin client.
    pub client: kube::Client,
    /// The test's own namespace.
    pub namespace: String,
    /// A name unique to this test, for nodes and images.
    pub id: String,
}

impl Cluster {
    /// Connects as admin and creates a namespace for the test; `name` makes names readable.
    pub async fn new(name: &str) -> anyhow::Result<Self> {
        let shared = shared();
        let client = client_for(&shared.admin).await?;
        let id = format!("{name}-{}", hex_id());
        let namespace = format!("e2e-{id}");
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(namespace.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .context("creating the test namespace")?;
        // Pods are refused until the namespace's default ServiceAccount exists (the
        // ServiceAccount admission plugin), which a controller creates just after the namespace.
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &namespace);
        wait_for(
            accounts,
            "default",
            |sa: Option<&k8s_openapi::api::core::v1::ServiceAccount>| sa.is_some(),
        )
        .await
        .context("the namespace's default service account did not appear")?;
        Ok(Self {
            client,
            namespace,
            id,
        })
    }

    /// The stand-in, when the tests run against it.
    pub fn standin(&self) -> Option<&'static ApiServer> {
        shared().standin.as_ref()
    }

    /// The admin kubeconfig (for kubectl).
    pub fn admin_kubeconfig(&self) -> &'static Path {
        &shared().admin
    }

    /// The registry host (`127.0.0.1:<port>`).
    pub fn registry(&self) -> &'static str {
        shared().registry.host()
    }

    /// Creates a pod in the test namespace.
    pub async fn create_pod(&self, pod: Pod) -> anyhow::Result<Pod> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {name}"))
    }

    /// Creates a serving pod and waits until it is Ready.
    pub async fn serve(&self, pod: Pod) -> anyhow::Result<Pod> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.create_pod(pod).await?;
        self.wait_pod(&name, "Ready", is_pod_ready()).await
    }

    /// Creates pod `name` on `node` running the `wasi-probe` guest `image` for ever
    /// (restartPolicy Always), and waits until its container runs.
    pub async fn run_forever(&self, name: &str, image: &str, node: &str) -> anyhow::Result<Pod> {
        self.create_pod(wasm_pod(name, image, node, &["forever"], "Always"))
            .await?;
        self.wait_pod(name, "running", is_running_after_restarts(0))
            .await
    }

    /// Creates a pod with a spec the API server may refuse by its validation (a real one does
    /// for `..` in paths or out-of-range values): `false` when it answered 422, which counts as
    /// the cluster's own defence working.
    pub async fn create_pod_unless_invalid(&self, pod: Pod) -> anyhow::Result<bool> {
        match self.pods().create(&PostParams::default(), &pod).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 422 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Pods of the test namespace.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Pushes a guest from examples/ to the registry under this test's name; returns the image.
    pub async fn push_guest(&self, guest: &str) -> anyhow::Result<String> {
        let module = std::fs::read(testkit::fixtures::wasm_module(guest)?)?;
        let image = format!("{}/{}/{guest}:v1", self.registry(), self.id);
        testkit::fixtures::push_wasm(&image, &module).await?;
        Ok(image)
    }

    /// Pushes a WASI preview 2 component from examples/ as a CNCF wasm artifact (the layout
    /// `wkg` and `wasm-pkg-tools` publish); returns the image.
    pub async fn push_component(&self, guest: &str) -> anyhow::Result<String> {
        let component = std::fs::read(testkit::fixtures::wasm_component(guest)?)?;
        self.push_component_bytes(&format!("{}-component", guest.replace('_', "-")), component)
            .await
    }

    /// Pushes `component` as the CNCF wasm artifact `<registry>/<test>/<name>:v1`; returns the
    /// image.
    pub async fn push_component_bytes(
        &self,
        name: &str,
        component: Vec<u8>,
    ) -> anyhow::Result<String> {
        let image = format!("{}/{}/{name}:v1", self.registry(), self.id);
        testkit::fixtures::push(
            &image,
            component,
            testkit::fixtures::WASM_LAYER_CNCF,
            br#"{"architecture":"wasm","os":"wasip2"}"#.to_vec(),
            testkit::fixtures::WASM_CONFIG_CNCF,
        )
        .await?;
        Ok(image)
    }

    /// Starts a node agent for this test (a real `krustlet-wasi` process).
    pub async fn start_node(&self) -> anyhow::Result<NodeAgent> {
        NodeAgent::start(self, &format!("node-{}", self.id)).await
    }

    /// Starts a `krustlet-wasi` node agent for this test with extra flags.
    pub async fn start_node_with(&self, extra: &[&str]) -> anyhow::Result<NodeAgent> {
        let name = format!("node-{}", self.id);
        NodeAgent::start_provider_with(Provider::Wasi, self, &name, extra).await
    }

    /// Starts a `krustlet-wascc` node agent for this test.
    pub async fn start_wascc_node(&self) -> anyhow::Result<NodeAgent> {
        NodeAgent::start_provider(Provider::Wascc, self, &format!("wascc-{}", self.id)).await
    }

    /// Pushes the waSCC actor `actor` from examples/ signed by a new account with
    /// `capabilities` (or unsigned, with `None`) as image `actor-<tag>`; returns the image.
    pub async fn push_actor(
        &self,
        actor: &str,
        tag: &str,
        capabilities: Option<&[&str]>,
    ) -> anyhow::Result<String> {
        let module = std::fs::read(testkit::fixtures::wascc_actor(actor)?)?;
        let module = match capabilities {
            Some(capabilities) => testkit::fixtures::sign_actor(&module, actor, capabilities)?,
            None => module,
        };
        let image = format!("{}/{}/actor-{tag}:v1", self.registry(), self.id);
        testkit::fixtures::push_wasm(&image, &module).await?;
        Ok(image)
    }

    /// Runs kubectl as admin in the test namespace; returns stdout, or fails with stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.kubectl_output(args)?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs kubectl and returns its whole output.
    pub fn kubectl_output(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.admin_kubeconfig())
            .args(["--namespace", &self.namespace, "--request-timeout", "30s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running kubectl")
    }

    /// Waits until the pod satisfies `condition`; returns it.
    pub async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        condition: impl Condition<Pod>,
    ) -> anyhow::Result<Pod> {
        let found = wait_for(self.pods(), name, condition)
            .await
            .with_context(|| format!("pod {name} did not become {what}"))?;
        found.with_context(|| {
            format!("pod {name} was deleted while waiting for it to become {what}")
        })
    }

    /// Waits until `check` passes, polling the API every 100 ms (for things no watch can express,
    /// such as events arriving).
    pub async fn eventually<T>(
        &self,
        what: &str,
        mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last_error = None;
        while tokio::time::Instant::now() < deadline {
            match check().await {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(e) => last_error = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{what} did not happen within {DEADLINE:?}{}",
            last_error
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default()
        )
    }

    /// Waits until an agent's plain-HTTP health endpoint on 127.0.0.1:`port` answers; returns
    /// its status and body.
    pub async fn wait_healthz(&self, port: u16) -> anyhow::Result<(u16, String)> {
        self.eventually("the health endpoint answering", async || {
            Ok(http_get_at("127.0.0.1", port, "/healthz").await.ok())
        })
        .await
    }

    /// Waits until `port` of the node IP takes no new connections (a deleted pod's server
    /// closing it).
    pub async fn wait_port_closed(&self, port: u16) -> anyhow::Result<()> {
        self.eventually("the port to close", async || {
            Ok(tokio::net::TcpStream::connect((node_ip().as_str(), port))
                .await
                .is_err()
                .then_some(()))
        })
        .await
    }

    /// The events about a pod.
    async fn events_about(
        &self,
        pod: &str,
    ) -> anyhow::Result<Vec<k8s_openapi::api::core::v1::Event>> {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let list = events
            .list(&kube::api::ListParams::default().fields(&format!("involvedObject.name={pod}")))
            .await?;
        Ok(list.items)
    }

    /// How many times events of `reason` about a pod were recorded (repeats aggregated into
    /// one Event count as its `count`).
    pub async fn pod_event_count(&self, pod: &str, reason: &str) -> anyhow::Result<i32> {
        Ok(self
            .events_about(pod)
            .await?
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.count.unwrap_or(1).max(1))
            .sum())
    }

    /// The messages of events about a pod, as `reason: message`.
    pub async fn pod_events(&self, pod: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .events_about(pod)
            .await?
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default()
                )
            })
            .collect())
    }

    /// Waits (up to [`DEADLINE`]) until the events about `pod` hold, for each of `wanted`, one
    /// that contains it; returns them all as [`Cluster::pod_events`] does. Events are sent
    /// apart from the pod's status, as the kubelet sends them, so they may come a moment after
    /// the status that led to them.
    pub async fn wait_events(&self, pod: &str, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
        self.eventually(&format!("events {wanted:?} about pod {pod}"), async || {
            let events = self.pod_events(pod).await?;
            let all = wanted.iter().all(|w| events.iter().any(|e| e.contains(w)));
            Ok(all.then_some(events))
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        delete_quietly(self.admin_kubeconfig(), &["namespace", &self.namespace]);
    }
}

/// `kubectl delete <what> --wait=false --ignore-not-found` as admin, for cleanup (also while a
/// failed test unwinds); errors are ignored.
fn delete_quietly(admin: &Path, what: &[&str]) {
    let _ = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(admin)
        .arg("delete")
        .args(what)
        .args(["--wait=false", "--ignore-not-found"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn hex_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{:06x}",
        (nanos ^ std::process::id().rotate_left(16)) & 0xff_ffff
    )
}

/// The cluster entry (server, CA) of the admin kubeconfig.
pub fn admin_cluster() -> anyhow::Result<kube::config::Cluster> {
    let admin = kube::config::Kubeconfig::read_from(&shared().admin)?;
    admin
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("the admin kubeconfig names no cluster")
}

/// The cluster CA (PEM) from the admin kubeconfig: it signs the API server's kubelet client
/// certificate, so node agents take it as `--client-ca-file`.
pub fn cluster_ca() -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    let cluster = admin_cluster()?;
    match (
        cluster.certificate_authority_data,
        cluster.certificate_authority,
    ) {
        (Some(data), _) => Ok(base64::engine::general_purpose::STANDARD.decode(data)?),
        (None, Some(path)) => Ok(std::fs::read(path)?),
        (None, None) => bail!("the admin kubeconfig has no certificate authority"),
    }
}

/// Calls the node agent's kubelet API directly with `auth` (the kubelet's serving certificate is
/// self-signed, so it is not verified, as the API server does not); returns the status code and
/// body.
pub async fn kubelet_get(
    agent: &NodeAgent,
    auth: kube::config::AuthInfo,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let mut config = kube::Config::new(format!("https://{}:{}", node_ip(), agent.port).parse()?);
    config.accept_invalid_certs = true;
    config.auth_info = auth;
    let client = kube::Client::try_from(config)?;
    let request = http::Request::get(path).body(Vec::new())?;
    match client.request_text(request).await {
        Ok(body) => Ok((200, body)),
        Err(kube::Error::Api(e)) => Ok((e.code, e.message)),
        Err(e) => Err(e.into()),
    }
}

/// The admin's credentials from the admin kubeconfig.
pub fn admin_auth() -> anyhow::Result<kube::config::AuthInfo> {
    let admin = kube::config::Kubeconfig::read_from(&shared().admin)?;
    admin
        .auth_infos
        .first()
        .and_then(|a| a.auth_info.clone())
        .context("the admin kubeconfig has no user")
}

/// Waits (up to [`DEADLINE`]) until the named object satisfies `condition`, watching it with a
/// watcher that relists after errors such as 410 Gone, as any client of a real cluster must.
pub async fn wait_for<K>(
    api: Api<K>,
    name: &str,
    condition: impl Condition<K>,
) -> anyhow::Result<Option<K>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    wait_for_within(api, name, DEADLINE, condition).await
}

/// [`wait_for`] with a deadline of its own, for what a controller does only after a grace
/// period of its own.
pub async fn wait_for_within<K>(
    api: Api<K>,
    name: &str,
    deadline: Duration,
    condition: impl Condition<K>,
) -> anyhow::Result<Option<K>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    let mut stream = Box::pin(kube::runtime::watcher::watch_object(api, name).default_backoff());
    let mut last_error = None;
    let waited = tokio::time::timeout(deadline, async {
        while let Some(event) = stream.next().await {
            match event {
                Ok(object) if condition.matches_object(object.as_ref()) => return Some(object),
                Ok(_) => {}
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        None
    })
    .await;
    match waited {
        Ok(Some(object)) => Ok(object),
        _ => bail!(
            "not within {deadline:?}{}",
            last_error
                .map(|e| format!(" (last watch error: {e})"))
                .unwrap_or_default()
        ),
    }
}

/// A client from a kubeconfig file.
pub async fn client_for(path: &Path) -> anyhow::Result<kube::Client> {
    let file = kube::config::Kubeconfig::read_from(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

/// The address node agents advertise: `KRUSTLET_E2E_NODE_IP`, or 127.0.0.1 (enough for the
/// stand-in, and for a real API server on this host).
pub fn node_ip() -> String {
    std::env::var("KRUSTLET_E2E_NODE_IP").unwrap_or_else(|_| "127.0.0.1".into())
}

/// `N` distinct TCP ports free on the node's address right now (for pods to serve on).
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let mut ports = [0; N];
    for port in &mut ports {
        *port = testkit::ports::free_port().context("finding a free port")?;
    }
    Ok(ports)
}

/// `GET http://<node ip>:<port><path>` with a 10 s deadline; returns the status and body.
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    http_request(port, "GET", path, "").await
}

/// `method http://<node ip>:<port><path>` with `body` and a 10 s deadline; returns the status
/// and body.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    http_request_at(&node_ip(), port, method, path, body).await
}

/// An HTTP server on every address of this machine answering each request with the address
/// it came from (as the body, and as the status line's reason); its port. It stops when the
/// handle is dropped.
pub async fn peer_echo_server() -> anyhow::Result<(u16, tokio_util::task::AbortOnDropHandle<()>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let body = peer.ip().to_string();
                let answer = format!(
                    "HTTP/1.1 200 {body}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    Ok((port, tokio_util::task::AbortOnDropHandle::new(server)))
}

/// `GET http://<host>:<port><path>` (e.g. a pod's own IP) with a 10 s deadline; returns the
/// status and body.
pub async fn http_get_at(host: &str, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    http_request_at(host, port, "GET", path, "").await
}

/// `method http://<host>:<port><path>` with `body` and a 10 s deadline.
async fn http_request_at(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host, port)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, format!("{host}:{port}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        connection.abort();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("{method} {host}:{port}{path} did not answer within 10 s"))?
        .with_context(|| format!("{method} {host}:{port}{path}"))
}

/// Which node binary an agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// `krustlet-wasi`: WASI modules and components.
    Wasi,
    /// `krustlet-wascc`: waSCC actors.
    Wascc,
}

impl Provider {
    /// The binary's name.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Wasi => "krustlet-wasi",
            Self::Wascc => "krustlet-wascc",
        }
    }

    /// The node's arch, the value of its `krustlet/arch` taint.
    pub fn arch(self) -> &'static str {
        match self {
            Self::Wasi => "wasm32-wasi",
            Self::Wascc => "wasm32-wascc",
        }
    }
}

/// The node binary of `provider`, built by cargo if needed (both binaries in one build, a
/// no-op when they are up to date: in a debug build, with the workspace's tests, as
/// `scripts/test.sh` builds them).
pub fn agent_binary(provider: Provider) -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| {
            let root = testkit::fixtures::repo_root();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            // The agents are built with this harness's profile: release for the benchmark.
            let profile = if cfg!(debug_assertions) {
                "dev"
            } else {
                "release"
            };
            // Without the variables cargo sets for this test (CARGO_PKG_*, CARGO_MANIFEST_DIR,
            // ...), which build scripts (ring's) watch: with them, every test run would rebuild
            // what the next `cargo test` rebuilds back.
            let mut command = Command::new(cargo);
            for (name, _) in std::env::vars_os() {
                let name_str = name.to_string_lossy();
                if name_str.starts_with("CARGO_PKG_")
                    || name_str.starts_with("CARGO_MANIFEST_")
                    || [
                        "CARGO_CRATE_NAME",
                        "CARGO_PRIMARY_PACKAGE",
                        "CARGO_TARGET_TMPDIR",
                    ]
                    .contains(&name_str.as_ref())
                {
                    command.env_remove(&name);
                }
            }
            command.args(["build", "--quiet", "--profile", profile]);
            if cfg!(debug_assertions) {
                // With the features `cargo test --workspace` builds with (dev-dependencies'
                // included, e.g. tokio's test-util): a no-op after it, where a build of the two
                // packages alone would build every dependency of theirs a second time.
                command.args(["--workspace", "--bins", "--tests"]);
            } else {
                command.args([
                    "-p",
                    Provider::Wasi.binary(),
                    "-p",
                    Provider::Wascc.binary(),
                ]);
            }
            let status = command
                .arg("--manifest-path")
                .arg(root.join("Cargo.toml"))
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("building the node binaries failed".into());
            }
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            let dir = if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            };
            Ok(target.join(dir))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(dir.join(provider.binary()))
}

/// Runs `provider`'s binary with `args` to its end (killed at [`DEADLINE`], and with the test
/// process); returns its output.
pub fn run_binary(
    provider: Provider,
    args: &[&std::ffi::OsStr],
) -> anyhow::Result<std::process::Output> {
    let mut command = Command::new(agent_binary(provider)?);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = testkit::process::spawn_owned(command)?;
    let deadline = std::time::Instant::now() + DEADLINE;
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            child.kill()?;
            bail!("{} did not finish within {DEADLINE:?}", provider.binary());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

/// What `kubeadm join` (1.32) writes to /var/lib/kubelet/config.yaml (deploy/kubeadm), with the
/// paths and port a test on a shared machine gives it: the client CA, the static pod directory
/// and the health port.
pub fn kubeadm_kubelet_config(
    client_ca: &Path,
    static_pod_path: &Path,
    healthz_port: u16,
) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(
        testkit::fixtures::repo_root().join("deploy/kubeadm/kubelet-config-1.32.yaml"),
    )?;
    Ok(text
        .replace(
            "clientCAFile: /etc/kubernetes/pki/ca.crt",
            &format!("clientCAFile: {}", client_ca.display()),
        )
        .replace(
            "staticPodPath: /etc/kubernetes/manifests",
            &format!("staticPodPath: {}", static_pod_path.display()),
        )
        .replace(
            "healthzPort: 10248",
            &format!("healthzPort: {healthz_port}"),
        ))
}

/// A process a test started by hand, killed and reaped when dropped (also while a failed test
/// unwinds).
pub struct KilledOnDrop(pub std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How a node agent authenticates.
pub enum Credentials {
    /// A kubeconfig for `system:node:<name>`.
    Kubeconfig(PathBuf),
    /// A bootstrap kubeconfig (`--bootstrap-file`); the agent writes its own kubeconfig.
    Bootstrap(PathBuf),
}

/// Creates a bootstrap token the way kubeadm does (a `bootstrap.kubernetes.io/token` Secret in
/// kube-system, group `system:bootstrappers:kubeadm:default-node-token`) and writes a
/// kubeconfig that authenticates with it.
pub async fn bootstrap_kubeconfig(cluster: &Cluster, dir: &Path) -> anyhow::Result<PathBuf> {
    let id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let secret = format!("{:016x}", rand::random::<u64>());
    let token_secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
        serde_json::json!({
            "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "token-id": id, "token-secret": secret,
                "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
                "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
                "expiration": (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            }
        }),
    )?;
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(cluster.client.clone(), "kube-system")
        .create(&PostParams::default(), &token_secret)
        .await
        .context("creating the bootstrap token")?;
    let cluster_entry = admin_cluster()?;
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster_entry}],
        "users": [{"name": "bootstrap", "user": {"token": format!("{id}.{secret}")}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "bootstrap"}}],
        "current-context": "e2e",
    });
    let path = dir.join("bootstrap.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

/// A running node agent process; killed, and its Node deleted, when dropped.
pub struct NodeAgent {
    child: Child,
    /// The node binary it runs.
    pub provider: Provider,
    /// The node's name.
    pub name: String,
    /// The kubelet API port.
    pub port: u16,
    /// The agent's data dir.
    pub data_dir: tempfile::TempDir,
    credentials: Credentials,
    extra: Vec<String>,
    client: kube::Client,
    admin: PathBuf,
    log: PathBuf,
}

impl NodeAgent {
    /// Starts `krustlet-wasi` as node `name` with the node identity `system:node:<name>` (see
    /// [`node_credentials`]), and waits until its Node is Ready.
    pub async fn start(cluster: &Cluster, name: &str) -> anyhow::Result<Self> {
        Self::start_provider(Provider::Wasi, cluster, name).await
    }

    /// Starts `krustlet-wasi` as node `name` with the given credentials and data dir.
    pub async fn start_with(
        cluster: &Cluster,
        name: &str,
        data_dir: tempfile::TempDir,
        credentials: Credentials,
    ) -> anyhow::Result<Self> {
        Self::start_with_args(cluster, name, data_dir, credentials, &[]).await
    }

    /// Starts `krustlet-wasi` with extra flags.
    pub async fn start_with_args(
        cluster: &Cluster,
        name: &str,
        data_dir: tempfile::TempDir,
        credentials: Credentials,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::launch(Provider::Wasi, cluster, name, data_dir, credentials, extra).await
    }

    /// Starts `provider`'s binary as node `name` with the node identity `system:node:<name>`
    /// (see [`node_credentials`]; on a real cluster, KRUSTLET_E2E_BOOTSTRAP_KUBECONFIG is what
    /// agents join with), and waits until its Node is Ready.
    pub async fn start_provider(
        provider: Provider,
        cluster: &Cluster,
        name: &str,
    ) -> anyhow::Result<Self> {
        Self::start_provider_with(provider, cluster, name, &[]).await
    }

    /// [`NodeAgent::start_provider`] with extra flags.
    pub async fn start_provider_with(
        provider: Provider,
        cluster: &Cluster,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let data_dir = testkit::scratch::tempdir("krustlet-node")?;
        Self::start_in(provider, cluster, name, data_dir, extra).await
    }

    /// [`NodeAgent::start_provider_with`] with `data_dir` as `--data-dir` (a file system the
    /// test made, say).
    pub async fn start_in(
        provider: Provider,
        cluster: &Cluster,
        name: &str,
        data_dir: tempfile::TempDir,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let credentials = match std::env::var_os("KRUSTLET_E2E_BOOTSTRAP_KUBECONFIG") {
            Some(bootstrap) => Credentials::Bootstrap(PathBuf::from(bootstrap)),
            None => {
                Credentials::Kubeconfig(node_credentials(cluster, name, data_dir.path()).await?)
            }
        };
        Self::launch(provider, cluster, name, data_dir, credentials, extra).await
    }

    async fn launch(
        provider: Provider,
        cluster: &Cluster,
        name: &str,
        data_dir: tempfile::TempDir,
        credentials: Credentials,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let port = testkit::registry::free_port()?;
        let log = data_dir.path().join("agent.log");
        std::fs::write(data_dir.path().join("client-ca.pem"), cluster_ca()?)?;
        let mut agent = Self {
            child: Self::spawn(
                provider,
                name,
                port,
                data_dir.path(),
                &credentials,
                &extra,
                &log,
            )?,
            provider,
            name: name.to_string(),
            port,
            data_dir,
            credentials,
            extra,
            client: cluster.client.clone(),
            admin: shared().admin.clone(),
            log,
        };
        agent.wait_ready().await?;
        Ok(agent)
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn spawn(
        provider: Provider,
        name: &str,
        port: u16,
        data_dir: &Path,
        credentials: &Credentials,
        extra: &[String],
        log: &Path,
    ) -> anyhow::Result<Child> {
        let mut command = Command::new(agent_binary(provider)?);
        match credentials {
            Credentials::Kubeconfig(path) => command.arg("--kubeconfig").arg(path),
            Credentials::Bootstrap(path) => command.arg("--bootstrap-file").arg(path),
        };
        command
            .args([
                "--node-name",
                name,
                "--node-ip",
                &node_ip(),
                "--addr",
                "0.0.0.0",
            ])
            .args([
                "--port",
                &port.to_string(),
                "--insecure-registries",
                shared().registry.host(),
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)?,
            );
        if extra.iter().any(|a| a == "-v" || a == "--v") {
            // The test sets the agent's verbosity.
            command.env_remove("RUST_LOG");
        } else {
            command.env("RUST_LOG", "info");
        }
        let ca = data_dir.join("client-ca.pem");
        if ca.exists() {
            command.arg("--client-ca-file").arg(ca);
        }
        if !extra
            .iter()
            .any(|a| a == "--healthz-port" || a == "--config")
        {
            // Many agents share the test's machine: none takes the kubelet's health port.
            command.args(["--healthz-port", "0"]);
        }
        if !extra.iter().any(|a| a == "--cni-conf-dir") {
            // Pods share the node's network unless a test gives the node a CNI network (a
            // machine's own /etc/cni/net.d is not the test's).
            command.arg("--cni-conf-dir").arg(data_dir.join("no-cni"));
        }
        command.args(extra);
        testkit::process::spawn_owned(command)
            .with_context(|| format!("starting {}", provider.binary()))
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        if !matches!(
            wait_for(nodes, &self.name, is_node_ready()).await,
            Ok(Some(_))
        ) {
            bail!(
                "node {} did not become Ready within {DEADLINE:?}; agent log:\n{}",
                self.name,
                self.log()
            );
        }
        // The Node may still be Ready from an earlier run of the agent: wait for this process's
        // kubelet API, which it serves once it has registered.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status:?}:\n{}",
                    self.provider.binary(),
                    self.log()
                );
            }
            // Each try has a deadline of its own: one stalled request (a connection made just
            // before the agent's certificate arrived, say) must not use up the whole wait.
            let healthz = tokio::time::timeout(
                Duration::from_secs(5),
                kubelet_get(self, admin_auth()?, "/healthz"),
            );
            let last = match healthz.await {
                Ok(Ok((200, _))) => return Ok(()),
                Ok(Ok((code, body))) => format!("{code}: {body}"),
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => "no answer within 5 s".to_string(),
            };
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the kubelet API of {} did not answer within {DEADLINE:?} (last: {last}):\n{}",
                    self.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the agent with SIGTERM and starts it again with the same name, port and data dir,
    /// as an operator's restart would.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let status = self.terminate()?;
        if !status.success() {
            bail!(
                "krustlet-wasi exited with {status:?} on SIGTERM:\n{}",
                self.log()
            );
        }
        self.start_again().await
    }

    /// Kills the agent with SIGKILL (a crash) and starts it again with the same name, port and
    /// data dir.
    pub async fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.crash()?;
        self.start_again().await
    }

    /// Kills the agent with SIGKILL (a crash), leaving it stopped; its runtime workers run on.
    pub fn crash(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// The next start (after a restart) uses these extra flags instead.
    pub fn set_extra(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|a| a.to_string()).collect();
    }

    /// The process ids of the agent's runtime workers, by index (from their pid files).
    pub fn worker_pids(&self) -> Vec<(usize, u32)> {
        let dir = self.data_dir.path().join("workers");
        let mut pids: Vec<(usize, u32)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                if path.extension()? != "pid" {
                    return None;
                }
                let index = path.file_stem()?.to_str()?.parse().ok()?;
                let pid = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
                Some((index, pid))
            })
            .collect();
        pids.sort();
        pids
    }

    /// What the runtime workers logged so far.
    pub fn worker_logs(&self) -> String {
        let dir = self.data_dir.path().join("workers");
        let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        logs.iter()
            .map(|p| {
                format!(
                    "== {}\n{}",
                    p.display(),
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Starts the (stopped) agent again with the same name, port and data dir.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.child = Self::spawn(
            self.provider,
            &self.name,
            self.port,
            self.data_dir.path(),
            &self.credentials,
            &self.extra,
            &self.log,
        )?;
        self.wait_ready().await
    }

    /// Stops the agent's process (SIGSTOP) without ending it, as a hung node or a network
    /// partition looks to the cluster: no heartbeats, guests frozen. [`NodeAgent::resume`]
    /// continues it; dropping the agent still kills it.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// Continues an agent stopped by [`NodeAgent::pause`].
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} failed: {status:?}");
        Ok(())
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (with a deadline) for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("krustlet-wasi did not exit within 20s of SIGTERM")
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The runtime workers outlive the agent by design; the test ends them.
        for (_, pid) in self.worker_pids() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        // Pods' network namespaces a test did not get to delete (it failed) are unpinned, so
        // that they end with the workers and the data dir can go.
        let netns = self.data_dir.path().join("netns");
        for entry in std::fs::read_dir(netns).into_iter().flatten().flatten() {
            let _ = kubelet::netns::remove(&entry.path());
        }
        delete_quietly(&self.admin, &["node", &self.name]);
    }
}

/// The node's Ready condition is True.
pub fn is_node_ready() -> impl Condition<Node> {
    |node: Option<&Node>| {
        node.and_then(|n| n.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }
}

/// The message of node `node`'s Ready condition (empty when it has none).
pub fn ready_message(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.message.clone())
        .unwrap_or_default()
}

/// The pod's Ready condition is True.
pub fn is_pod_ready() -> impl Condition<Pod> {
    |pod: Option<&Pod>| {
        pod.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }
}

/// The pod's phase is `phase`.
pub fn has_phase(phase: &'static str) -> impl Condition<Pod> {
    move |pod: Option<&Pod>| {
        pod.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some(phase)
    }
}

/// The hello-wasm manifest from the shared examples, with its image replaced.
pub fn hello_wasm_manifest(image: &str) -> anyhow::Result<String> {
    let path = testkit::fixtures::repo_root().join("../shared/examples/hello-wasm.yaml");
    let local = testkit::fixtures::repo_root().join("examples/hello-wasm/pod.yaml");
    let text = std::fs::read_to_string(&path)
        .or_else(|_| std::fs::read_to_string(&local))
        .context("reading hello-wasm.yaml")?;
    Ok(text.replace("webassembly.azurecr.io/hello-wasm:v1", image))
}

/// A pod serving `image` (a wasi-http component) on `port`, with optional annotations.
pub fn http_pod(
    name: &str,
    image: &str,
    node: &str,
    port: u16,
    annotations: serde_json::Value,
) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "web", "image": image, "ports": [{"name": "http", "containerPort": port}]}],
            "tolerations": [{"key": "krustlet/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoExecute"}],
        }
    }))
    .expect("a valid pod")
}

/// A pod running actor `image` on the wascc node, serving `port`; `extra` is merged into its
/// container (env, volumeMounts) and `volumes` into its spec.
pub fn actor_pod(
    name: &str,
    image: &str,
    node: &str,
    port: u16,
    extra: serde_json::Value,
    volumes: serde_json::Value,
) -> Pod {
    let mut container =
        serde_json::json!({"name": "actor", "image": image, "ports": [{"containerPort": port}]});
    if let (Some(container), Some(extra)) = (container.as_object_mut(), extra.as_object()) {
        container.extend(extra.clone());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "containers": [container],
            "volumes": volumes,
            "tolerations": [{"key": "krustlet/arch", "operator": "Equal", "value": Provider::Wascc.arch(), "effect": "NoExecute"}],
        }
    }))
    .expect("a valid pod")
}

/// The longest of five requests to `/` of the pod serving `port` on `host` took: its usual
/// latency, for [`answers_as_usual`].
pub async fn usual_latency(host: &str, port: u16) -> anyhow::Result<Duration> {
    let mut usual = Duration::ZERO;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        anyhow::ensure!(
            http_get_at(host, port, "/").await?.0 == 200,
            "{host}:{port} answers 200"
        );
        usual = usual.max(started.elapsed());
    }
    Ok(usual)
}

/// Asserts that the pod serving `port` on `host` still answers `/` within ten times its
/// `usual` latency (and a second), five times.
pub async fn answers_as_usual(host: &str, port: u16, usual: Duration) -> anyhow::Result<()> {
    for _ in 0..5 {
        let started = std::time::Instant::now();
        anyhow::ensure!(
            http_get_at(host, port, "/").await?.0 == 200,
            "{host}:{port} answers 200"
        );
        let took = started.elapsed();
        anyhow::ensure!(
            took < usual * 10 + Duration::from_secs(1),
            "the pod at {host}:{port} took {took:?} (usually {usual:?})"
        );
    }
    Ok(())
}

impl Cluster {
    /// The 503 a new client of the pod serving `port` on `host` gets once one of the few
    /// places for such answers is free (retried until then). A raw client: it sends its
    /// request at once, however busy this test's runtime is.
    pub async fn refusal(&self, host: &str, port: u16) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.eventually("a 503", async || {
            let mut client = tokio::net::TcpStream::connect((host, port)).await?;
            client
                .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await?;
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
            let answer = String::from_utf8_lossy(&answer).into_owned();
            Ok(answer.starts_with("HTTP/1.1 503").then_some(answer))
        })
        .await
    }
}

/// `pod` with an emptyDir mounted at /scratch in its container.
pub fn with_scratch(mut pod: Pod) -> Pod {
    let spec = pod.spec.as_mut().expect("spec");
    spec.volumes = Some(vec![
        serde_json::from_value(serde_json::json!({"name": "scratch", "emptyDir": {}}))
            .expect("a volume"),
    ]);
    spec.containers[0].volume_mounts = Some(vec![
        serde_json::from_value(serde_json::json!({"name": "scratch", "mountPath": "/scratch"}))
            .expect("a mount"),
    ]);
    pod
}

/// A wasm pod bound to `node` (as a DaemonSet's pods are, without the scheduler) that tolerates
/// the node's taint and runs `image` with `args`.
pub fn wasm_pod(name: &str, image: &str, node: &str, args: &[&str], restart_policy: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "restartPolicy": restart_policy,
            "containers": [{"name": "main", "image": image, "args": args}],
            "tolerations": [{"key": "krustlet/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoExecute"}],
        }
    }))
    .expect("a valid pod")
}

/// The state of the pod's first container, as `(waiting reason, terminated exit code and reason)`.
pub fn container_state(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerState> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .clone()
}

/// The first container's previous termination (`lastState.terminated`).
pub fn last_terminated(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .last_state
        .clone()?
        .terminated
}

/// Resident memory of process `pid`, in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The most resident memory process `pid` has had since it started, in KiB (0 when it is gone).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time process `pid` has used so far, user and system (zero when it is gone).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the first, utime the
    // 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_millis(ticks.saturating_mul(1000) / per_second)
}

/// The first container's waiting reason ("" when it is not waiting).
pub fn waiting_reason(pod: &Pod) -> String {
    container_state(pod)
        .and_then(|s| s.waiting)
        .and_then(|w| w.reason)
        .unwrap_or_default()
}

/// The message of the first container's waiting state ("" when it is not waiting).
pub fn waiting_message(pod: &Pod) -> String {
    container_state(pod)
        .and_then(|s| s.waiting)
        .and_then(|w| w.message)
        .unwrap_or_default()
}

/// The first container runs again after exactly `restarts` restarts.
pub fn is_running_after_restarts(restarts: i32) -> impl Condition<Pod> {
    move |pod: Option<&Pod>| {
        let statuses = pod
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        statuses.first().is_some_and(|c| {
            c.restart_count == restarts && c.state.as_ref().is_some_and(|s| s.running.is_some())
        })
    }
}

/// The first container is waiting with `reason`.
pub fn is_waiting(reason: &'static str) -> impl Condition<Pod> {
    move |pod: Option<&Pod>| {
        pod.and_then(container_state)
            .and_then(|s| s.waiting)
            .and_then(|w| w.reason)
            .as_deref()
            == Some(reason)
    }
}

/// The pod's first container cannot get its image: `ErrImagePull`, or `ImagePullBackOff` once
/// the failure repeats. For a test that looks after doing other things, by which time the
/// first failure may have turned into the back-off (whose message names the same cause).
pub fn is_failing_to_pull() -> impl Condition<Pod> {
    |pod: Option<&Pod>| {
        let reason = pod
            .and_then(container_state)
            .and_then(|s| s.waiting)
            .and_then(|w| w.reason);
        matches!(reason.as_deref(), Some("ErrImagePull" | "ImagePullBackOff"))
    }
}

/// Credentials for `system:node:<name>` obtained the way any client can: a CSR to the
/// `kubernetes.io/kube-apiserver-client-kubelet` signer, approved by the admin, then signed by
/// the cluster. Returns a kubeconfig path.
pub async fn node_credentials(
    cluster: &Cluster,
    name: &str,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    use base64::Engine;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{name}"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let csr_pem = params.serialize_request(&key)?.pem()?;
    let csr_name = format!("e2e-{name}");
    let csrs: Api<CertificateSigningRequest> = Api::all(cluster.client.clone());
    let csr: CertificateSigningRequest = serde_json::from_value(serde_json::json!({
        "metadata": {"name": csr_name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(&csr_pem),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
        }
    }))?;
    csrs.create(&PostParams::default(), &csr)
        .await
        .context("creating the CSR")?;
    approve_csr(cluster, &csr_name).await?;
    let signed = wait_for(
        csrs.clone(),
        &csr_name,
        |c: Option<&CertificateSigningRequest>| {
            c.and_then(|c| c.status.as_ref())
                .and_then(|s| s.certificate.as_ref())
                .is_some()
        },
    )
    .await
    .context("the CSR was not signed")?
    .context("the CSR disappeared")?;
    let cert = signed
        .status
        .and_then(|s| s.certificate)
        .context("no certificate")?;
    let _ = csrs.delete(&csr_name, &Default::default()).await;
    let cluster_entry = admin_cluster()?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster_entry}],
        "users": [{"name": name, "user": {"client-certificate-data": b64(&cert.0), "client-key-data": b64(key.serialize_pem().as_bytes())}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": name}}],
        "current-context": "e2e",
    });
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

/// The cluster's CSRs to `signer` whose requester matches `requester`.
pub async fn csrs(
    cluster: &Cluster,
    signer: &str,
    requester: impl Fn(&str) -> bool,
) -> anyhow::Result<Vec<k8s_openapi::api::certificates::v1::CertificateSigningRequest>> {
    let api: Api<k8s_openapi::api::certificates::v1::CertificateSigningRequest> =
        Api::all(cluster.client.clone());
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|c| {
            c.spec.signer_name == signer
                && requester(c.spec.username.as_deref().unwrap_or_default())
        })
        .collect())
}

/// Approves the CSR `name` as an operator does (`kubectl certificate approve`, done through the
/// approval subresource: kubectl sends protobuf there, which the stand-in does not speak).
pub async fn approve_csr(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequest, CertificateSigningRequestCondition,
    };
    let csrs: Api<CertificateSigningRequest> = Api::all(cluster.client.clone());
    let current = csrs.get_approval(name).await?;
    let mut conditions = current
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    // A real cluster's approver (kube-controller-manager's csrapproving, as on kubeadm
    // clusters) may have approved it already: that is as good.
    if conditions
        .iter()
        .any(|c| c.type_ == "Approved" && c.status == "True")
    {
        return Ok(());
    }
    conditions.push(CertificateSigningRequestCondition {
        type_: "Approved".into(),
        status: "True".into(),
        reason: Some("E2E".into()),
        message: Some("approved by the e2e suite".into()),
        ..Default::default()
    });
    // No resourceVersion in the patch: a controller writing the object meanwhile is no conflict.
    let patch = serde_json::json!({"status": {"conditions": conditions}});
    csrs.patch_approval(name, &Default::default(), &kube::api::Patch::Merge(&patch))
        .await
        .with_context(|| format!("approving CSR {name}"))?;
    Ok(())
}
