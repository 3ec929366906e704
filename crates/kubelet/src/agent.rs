//! The node agent put together: a node in a cluster, or standalone with static pods.

use crate::cni::PodNetworks;
use crate::config::Config;
use crate::images::ImageStore;
use crate::images::credentials::Keyring;
use crate::logs::LogFiles;
use crate::node::{self, Identity};
use crate::pods::admission::NodeFacts;
use crate::pods::host::{ApiHost, PodHost};
use crate::pods::registry::PodRegistry;
use crate::pods::{self, PodContext, Supervisors};
use crate::runtime::Runtime;
use crate::server::{self, ServerError, Tls};
use crate::tls::{self, csr::CertificateRequest, identity::NodeCertificate};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Errors that stop the node agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Registering the node failed.
    #[error(transparent)]
    Node(#[from] node::NodeError),
    /// The serving certificate cannot be used.
    #[error("kubelet API certificate: {0}")]
    Certificate(#[from] tls::CertificateError),
    /// The kubelet API could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A docker config with registry credentials cannot be used.
    #[error("registry credentials in {path}: {message}")]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The node's CNI network cannot be used.
    #[error("pod network: {0}")]
    Network(#[from] crate::cni::CniError),
    /// Reading configuration files or preparing the data dir failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

/// The node's pod capacity: `--max-pods`, or less when the runtime can hold fewer guests.
fn pod_capacity(max_pods: u32, runtime_capacity: Option<usize>) -> u32 {
    runtime_capacity.map_or(max_pods, |c| {
        max_pods.min(u32::try_from(c).unwrap_or(u32::MAX))
    })
}

/// The parts of the agent that do not depend on the API server.
pub(crate) struct Parts<R: Runtime> {
    pub config: Config,
    pub identity: Identity,
    pub runtime: Arc<R>,
    pub images: Arc<ImageStore>,
    pub logs: Arc<LogFiles>,
    pub registry: Arc<PodRegistry>,
    pub node_credentials: Keyring,
    pub networks: Option<Arc<PodNetworks>>,
}

impl<R: Runtime> Parts<R> {
    pub fn new(mut config: Config, runtime: R, local_files: bool) -> Result<Self, AgentError> {
        let capacity = pod_capacity(config.max_pods, runtime.capacity());
        if capacity < config.max_pods {
            tracing::warn!(
                max_pods = config.max_pods,
                capacity,
                "this machine holds fewer guests than --max-pods (for wasmtime, vm.max_map_count is the limit: raise it, e.g. `sysctl -w vm.max_map_count=262144`); the node's pod capacity is {capacity}"
            );
            config.max_pods = capacity;
        }
        std::fs::create_dir_all(&config.data_dir).map_err(io(format!(
            "creating data dir {}",
            config.data_dir.display()
        )))?;
        // Keys, tokens and pod files live here: the node agent's alone.
        std::fs::set_permissions(
            &config.data_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(io(format!(
            "restricting data dir {}",
            config.data_dir.display()
        )))?;
        let networks = PodNetworks::load(
            &config.cni_conf_dir,
            config.cni_bin_dirs.clone(),
            config.cni_plugin_timeout,
            config.data_dir.join("netns"),
        )?
        .map(Arc::new);
        let pod_network = match &networks {
            Some(networks) => format!(
                "pods that serve or connect get their own IP from {}",
                networks.describe()
            ),
            None => format!(
                "pods use the node's network (no CNI configuration in {})",
                config.cni_conf_dir.display()
            ),
        };
        tracing::info!("{pod_network}");
        let identity = Identity {
            arch: runtime.arch().to_string(),
            runtime_version: runtime.version(),
            pod_network,
        };
        let images = Arc::new(ImageStore::new(
            config.data_dir.join("images"),
            config.insecure_registries.clone(),
            local_files,
            config.image_pull,
        ));
        let mut node_credentials = Keyring::default();
        for path in &config.image_credentials {
            let text = std::fs::read(path).map_err(io(format!(
                "reading --image-credentials {}",
                path.display()
            )))?;
            node_credentials
                .add_docker_config(&text)
                .map_err(|e| AgentError::Credentials {
                    path: path.clone(),
                    message: e.0,
                })?;
        }
        let container_logs = config.container_logs;
        Ok(Self {
            config,
            identity,
            runtime: Arc::new(runtime),
            images,
            logs: Arc::new(crate::logs::LogFiles::new(container_logs)),
            registry: Arc::default(),
            node_credentials,
            networks,
        })
    }

    pub fn context<H: PodHost>(&self, host: Arc<H>) -> Arc<PodContext<R, H>> {
        Arc::new(PodContext {
            runtime: self.runtime.clone(),
            images: self.images.clone(),
            logs: self.logs.clone(),
            host,
            node: NodeFacts {
                name: self.config.node_name.clone(),
                labels: node::labels(&self.config, &self.identity),
                taints: node::taints(&self.config, &self.identity),
                max_pods: self.config.max_pods as usize,
                allocatable: node::allocatable(&self.config),
            },
            node_ip: self.config.node_ip.to_string(),
            networks: self.networks.clone(),
            pods_dir: self.config.data_dir.join("pods"),
            registry: self.registry.clone(),
            stopping: CancellationToken::new(),
            node_credentials: self.node_credentials.clone(),
            sync_frequency: self.config.sync_frequency,
            allowed_host_paths: self.config.allowed_host_paths.clone(),
            dns: self.config.dns.clone(),
            runtime_handlers: self.config.runtime_handlers(&self.identity.arch).into(),
        })
    }

    /// The kubelet API's TLS: `--cert-file`; or with `--rotate-server-certificates` a
    /// certificate from the `kubernetes.io/kubelet-serving` signer, kept renewed through
    /// `client` until `shutdown`; or a self-signed one.
    fn tls(&self, client: &kube::Client, shutdown: &CancellationToken) -> Result<Tls, AgentError> {
        let config = &self.config;
        let certificate = match &config.tls {
            Some((cert, key)) => Arc::new(NodeCertificate::fixed(
                &std::fs::read_to_string(cert)
                    .map_err(io(format!("reading --cert-file {}", cert.display())))?,
                &std::fs::read_to_string(key)
                    .map_err(io(format!("reading --private-key-file {}", key.display())))?,
            )?),
            None if config.rotate_server_certificates => {
                let certificate = Arc::new(NodeCertificate::stored(
                    config.data_dir.join("pki").join(tls::SERVING_CERT_FILE),
                ));
                let request = CertificateRequest::serving(
                    &config.node_name,
                    &config.hostname,
                    vec![config.node_ip],
                );
                tokio::spawn(tls::rotation::keep_renewed(
                    client.clone(),
                    request,
                    certificate.clone(),
                    shutdown.clone(),
                ));
                certificate
            }
            None => {
                let (cert_pem, key_pem) =
                    server::self_signed(vec![config.hostname.clone(), config.node_ip.to_string()])?;
                Arc::new(NodeCertificate::fixed(&cert_pem, &key_pem)?)
            }
        };
        let client_ca_pem = match &config.client_ca_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(io(format!("reading --client-ca-file {}", path.display())))?,
            ),
            None => None,
        };
        Ok(Tls {
            certificate,
            client_ca_pem,
        })
    }

    /// Starts the kubelet API, checking requests through `client`; returns its task.
    pub fn serve(
        &self,
        client: kube::Client,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<Result<(), ServerError>>, AgentError> {
        let tls = self.tls(&client, &shutdown)?;
        let addr = SocketAddr::new(self.config.addr, self.config.port);
        let auth = Arc::new(server::auth::Auth::new(
            client,
            self.config.node_name.clone(),
            self.config.anonymous_auth,
        ));
        Ok(tokio::spawn(server::serve(
            addr,
            self.config.api_limits,
            tls,
            auth,
            self.registry.clone(),
            self.logs.clone(),
            self.config.node_name.clone(),
            shutdown,
        )))
    }
}

/// How long a stopping agent waits for its last events to be sent.
const EVENTS_FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a node in the cluster `client` talks to, until `shutdown`.
pub async fn run_node<R: Runtime>(
    config: Config,
    runtime: R,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let parts = Parts::new(config, runtime, false)?;
    // Pods stop first (after the node is cordoned, with --drain-on-shutdown), then the rest.
    let pods_stop = CancellationToken::new();
    let rest_stop = CancellationToken::new();
    // Healthy from the start, as the kubelet (kubeadm waits on it while the node registers).
    let _rest_stopped_on_error = rest_stop.clone().drop_guard();
    if let Some(addr) = parts.config.healthz {
        tokio::spawn(server::healthz::serve(addr, rest_stop.clone()));
    }
    let registered = node::register(&client, &parts.config, &parts.identity).await?;
    let mut server = parts.serve(client.clone(), rest_stop.clone())?;
    // The pods bound to the node, kept by its pod watch: all a node may list or read of pods.
    let (node_pods, node_pods_writer) = kube::runtime::reflector::store();
    let host = Arc::new(ApiHost::new(
        client.clone(),
        parts.config.node_name.clone(),
        parts.config.event_rate,
        node_pods.clone(),
    ));
    let supervisors = Supervisors::new(parts.context(host.clone()));
    let heartbeat = tokio::spawn(node::heartbeat(
        client.clone(),
        parts.config.clone(),
        parts.identity.clone(),
        registered,
        rest_stop.clone(),
    ));
    let static_source = parts.config.pod_manifest_path.clone().map(|path| {
        let (mirrored, static_pods) = tokio::sync::watch::channel(None);
        let mirror_changed = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(pods::static_pods::keep_mirror_pods(
            client.clone(),
            parts.config.node_name.clone(),
            node_pods.clone(),
            static_pods,
            mirror_changed.clone(),
            parts.config.file_check_frequency,
            pods_stop.clone(),
        ));
        pods::StaticSource {
            pods: pods::static_pods::StaticPods::new(
                path,
                parts.config.node_name.clone(),
                mirrored,
            ),
            every: parts.config.file_check_frequency,
            mirror_changed,
        }
    });
    let pods = tokio::spawn(pods::watch_pods(
        client.clone(),
        parts.config.node_name.clone(),
        node_pods_writer,
        supervisors,
        static_source,
        pods_stop.clone(),
    ));
    tokio::spawn(collect_images(
        parts.images.clone(),
        parts.runtime.clone(),
        parts.registry.clone(),
        parts.config.clone(),
        rest_stop.clone(),
    ));
    tracing::info!(node = %parts.config.node_name, port = parts.config.port, "node agent running");
    let result = tokio::select! {
        served = &mut server => match served {
            Ok(Err(e)) => Err(AgentError::Server(e)),
            _ => Ok(()),
        },
        _ = shutdown.cancelled() => Ok(()),
    };
    if parts.config.drain_on_shutdown {
        node::cordon(&client, &parts.config.node_name).await;
    } else if parts.runtime.detach() {
        tracing::info!(
            "leaving the guests running in the runtime workers (--drain-on-shutdown stops them)"
        );
    }
    pods_stop.cancel();
    let _ = pods.await;
    host.flush_events(EVENTS_FLUSH_DEADLINE).await;
    rest_stop.cancel();
    let _ = heartbeat.await;
    if !server.is_finished() {
        let _ = server.await;
    }
    tracing::info!("node agent stopped");
    result
}

/// Image garbage collection every `--image-gc-period` until `stop`: the images of the pods the
/// node knows are kept; what is removed is forgotten by the runtime too.
async fn collect_images<R: Runtime>(
    images: Arc<ImageStore>,
    runtime: Arc<R>,
    registry: Arc<PodRegistry>,
    config: Config,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(config.image_gc_period) => {}
        }
        let in_use: Vec<String> = registry
            .pods()
            .iter()
            .filter_map(|pod| pod.spec.as_ref())
            .flat_map(|spec| {
                spec.containers
                    .iter()
                    .chain(spec.init_containers.iter().flatten())
            })
            .filter_map(|container| container.image.clone())
            .collect();
        match images.collect_garbage(&in_use, &config.image_gc) {
            Ok(removed) => removed.iter().for_each(|digest| runtime.forget(digest)),
            Err(e) => tracing::warn!(error = %e, "image garbage collection failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pod_capacity;

    #[test]
    fn the_runtime_can_lower_the_pod_capacity_but_not_raise_it() {
        assert_eq!(pod_capacity(110, None), 110);
        assert_eq!(pod_capacity(110, Some(8776)), 110);
        assert_eq!(pod_capacity(20_000, Some(8776)), 8776);
    }
}
