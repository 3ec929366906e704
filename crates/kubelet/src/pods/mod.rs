//! The pods bound to this node: a watch of them, one supervisor task per pod, and everything a
//! supervisor needs.

pub mod admission;
mod backoff;
pub mod container;
pub mod dns;
mod events;
pub use events::EventRate;
pub mod host;
pub mod host_path;
pub mod lifecycle;
pub mod network;
mod object_cache;
pub mod probes;
pub mod registry;
pub mod resources;
pub mod service_env;
pub mod start;
pub mod static_pods;
pub mod status;
mod status_writer;
mod supervisor;
pub mod volumes;

#[cfg(test)]
mod tests;

use crate::images::ImageStore;
use crate::logs::LogFiles;
use crate::runtime::Runtime;
use admission::NodeFacts;
use futures::StreamExt;
use host::PodHost;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector;
use kube::runtime::watcher::{self, Event};
use registry::PodRegistry;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long shutdown waits for pods to be stopped and reported.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// What every pod supervisor shares.
pub struct PodContext<R: Runtime, H: PodHost> {
    /// The wasm runtime.
    pub runtime: Arc<R>,
    /// The image store.
    pub images: Arc<ImageStore>,
    /// Open log files.
    pub logs: Arc<LogFiles>,
    /// Where effects go.
    pub host: Arc<H>,
    /// The node, for admission.
    pub node: NodeFacts,
    /// The node's IP, which is also the IP of every pod on the node's network.
    pub node_ip: String,
    /// The node's CNI network, which gives pods that serve or connect a network namespace and
    /// IPs of their own; `None`: every pod is on the node's network.
    pub networks: Option<Arc<crate::cni::PodNetworks>>,
    /// `<data-dir>/pods`: per-pod logs and volumes.
    pub pods_dir: PathBuf,
    /// The pods known to the node.
    pub registry: Arc<PodRegistry>,
    /// Cancelled when the node agent shuts down: supervisors stop their containers and report.
    pub stopping: CancellationToken,
    /// Registry credentials of the node itself (`--image-credentials`, ~/.docker/config.json).
    pub node_credentials: crate::images::credentials::Keyring,
    /// How often API-backed volumes are written again from the current objects
    /// (`--sync-frequency`).
    pub sync_frequency: std::time::Duration,
    /// Directories hostPath volumes must lie in (`--allowed-host-paths`); empty: any.
    pub allowed_host_paths: Vec<PathBuf>,
    /// The node's DNS settings, which pods' DNS configurations are formed from.
    pub dns: dns::NodeDns,
    /// The RuntimeClass handlers this node runs (`--runtime-handlers`): a pod whose
    /// `runtimeClassName` names another is not started, as containerd refuses a handler it has
    /// no runtime for.
    pub runtime_handlers: Arc<[String]>,
}

impl<R: Runtime, H: PodHost> PodContext<R, H> {
    /// What env and volume resolution need to know of the node.
    pub fn node_context(&self) -> container::NodeContext<'_> {
        container::NodeContext {
            ip: &self.node_ip,
            pod_ips: &[],
            allocatable: self.node.allocatable,
        }
    }
}

/// How long after a supervisor's panic the pod gets a new one, doubling with each further
/// panic of the same pod up to [`MAX_RESPAWN_DELAY`].
const RESPAWN_DELAY: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest wait before a pod whose supervisor keeps panicking gets a new one.
const MAX_RESPAWN_DELAY: std::time::Duration = std::time::Duration::from_secs(300);

/// Pods by uid, each with the channel to its supervisor.
pub struct Supervisors<R: Runtime, H: PodHost> {
    ctx: Arc<PodContext<R, H>>,
    pods: HashMap<String, watch::Sender<Option<Pod>>>,
    tasks: tokio::task::JoinSet<()>,
    /// Which pod each supervisor task runs.
    owners: HashMap<tokio::task::Id, String>,
    /// How often each pod's supervisor panicked.
    panics: HashMap<String, u32>,
}

impl<R: Runtime, H: PodHost> Supervisors<R, H> {
    /// No pods yet.
    pub fn new(ctx: Arc<PodContext<R, H>>) -> Self {
        Self {
            ctx,
            pods: HashMap::new(),
            tasks: tokio::task::JoinSet::new(),
            owners: HashMap::new(),
            panics: HashMap::new(),
        }
    }

    /// A new or changed pod: starts its supervisor or hands it the new version.
    pub fn apply(&mut self, pod: Pod) {
        let uid = pod.uid().unwrap_or_default();
        match self.pods.get(&uid) {
            Some(tx) => {
                tx.send_replace(Some(pod));
            }
            None => {
                let (tx, _) = watch::channel(Some(pod));
                self.pods.insert(uid.clone(), tx);
                self.spawn(uid, std::time::Duration::ZERO);
            }
        }
    }

    /// Starts a supervisor for the latest version of pod `uid` after `delay`.
    fn spawn(&mut self, uid: String, delay: std::time::Duration) {
        let Some(tx) = self.pods.get(&uid) else {
            return;
        };
        let updates = tx.subscribe();
        let Some(pod) = updates.borrow().clone() else {
            return;
        };
        // Every line logged about the pod, its containers and their probes carries it.
        let span = tracing::info_span!(
            "pod",
            namespace = %pod.namespace().unwrap_or_default(),
            pod = %pod.name_any(),
            uid = %uid
        );
        let supervisor = supervisor::Supervisor::new(self.ctx.clone(), pod, updates);
        let task = self.tasks.spawn(
            async move {
                tokio::time::sleep(delay).await;
                supervisor.run().await;
            }
            .instrument(span),
        );
        self.owners.insert(task.id(), uid);
    }

    /// Waits until a supervisor ends (forever when none runs). A supervisor that panicked has
    /// dropped its containers, which stops their guests, so none runs on unowned; the pod gets
    /// a new supervisor (after a backoff) that reports it, runs it by its restart policy, and
    /// deletes it when asked: a bug met by one pod never leaves it stuck.
    pub async fn reap(&mut self) {
        let Some(ended) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, panic) = match ended {
            Ok((id, ())) => (id, None),
            Err(e) => (e.id(), e.try_into_panic().ok()),
        };
        let Some(uid) = self.owners.remove(&id) else {
            return;
        };
        let Some(panic) = panic else {
            self.panics.remove(&uid);
            return;
        };
        if self.ctx.stopping.is_cancelled() {
            tracing::error!(
                uid,
                "a pod's supervisor panicked while the node was stopping"
            );
            return;
        }
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        let count = self.panics.entry(uid.clone()).or_default();
        *count = count.saturating_add(1);
        let delay = RESPAWN_DELAY
            .saturating_mul(2u32.saturating_pow(count.saturating_sub(1).min(16)))
            .min(MAX_RESPAWN_DELAY);
        let pod = self.pods.get(&uid).and_then(|tx| {
            tx.borrow()
                .as_ref()
                .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
        });
        tracing::error!(
            pod = pod.as_deref().unwrap_or("(gone)"),
            uid,
            panic = message,
            "a pod's supervisor panicked; its containers were stopped and it starts again in {delay:?}"
        );
        self.spawn(uid, delay);
    }

    /// The status the API server has for pod `uid` (for a static pod: its mirror pod's),
    /// which its supervisor compares with the status it wrote.
    pub fn observe_status(
        &mut self,
        uid: &str,
        status: Option<k8s_openapi::api::core::v1::PodStatus>,
    ) {
        if let Some(tx) = self.pods.get(uid) {
            tx.send_modify(|pod| {
                if let Some(pod) = pod {
                    pod.status = status;
                }
            });
        }
    }

    /// A pod that is gone from the API server.
    pub fn remove(&mut self, uid: &str) {
        if let Some(tx) = self.pods.remove(uid) {
            tx.send_replace(None);
        }
    }

    /// Detaches, in the background, the networks of pods attached on this node that it no
    /// longer has (removed while no agent ran).
    pub fn sweep_networks(&self) {
        let Some(networks) = self.ctx.networks.clone() else {
            return;
        };
        let pods: HashSet<String> = self.pods.keys().cloned().collect();
        let since = std::time::SystemTime::now();
        tokio::spawn(async move { networks.sweep(&pods, since).await }.in_current_span());
    }

    /// The uids of the pods being supervised.
    pub fn uids(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    /// Waits until every supervisor has ended.
    pub async fn join_all(&mut self) {
        while !self.tasks.is_empty() {
            self.reap().await;
        }
    }

    /// Stops every pod's containers and reports them (the pods stay on the API server), waiting
    /// up to [`SHUTDOWN_GRACE`] for the supervisors.
    pub async fn shutdown(&mut self) {
        self.ctx.stopping.cancel();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.join_all())
            .await
            .is_err()
        {
            tracing::warn!(
                "some pods did not report within {SHUTDOWN_GRACE:?}; stopping them anyway"
            );
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

/// Where a node joined to a cluster reads static pods from, and how often.
pub struct StaticSource {
    /// The manifests and the static pods made of them.
    pub pods: static_pods::StaticPods,
    /// How often the manifests are read again (`--file-check-frequency`).
    pub every: std::time::Duration,
    /// Told when a mirror pod changes on the API server, so that the mirror pod keeper looks.
    pub mirror_changed: Arc<tokio::sync::Notify>,
}

/// Watches the pods bound to `node_name` (the one pod list and watch the Node authorizer allows
/// a node), keeping `node_pods` (the store behind [`ApiHost`](host::ApiHost) and the mirror pod
/// keeper), and supervises each, with the static pods of `static_source` if there is one, until
/// `shutdown`. Mirror pods are never run: a change to one is passed on to the mirror pod keeper.
pub async fn watch_pods<R: Runtime, H: PodHost>(
    client: kube::Client,
    node_name: String,
    node_pods: reflector::store::Writer<Pod>,
    mut supervisors: Supervisors<R, H>,
    mut static_source: Option<StaticSource>,
    shutdown: CancellationToken,
) {
    let api: kube::Api<Pod> = kube::Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut events = watcher::watcher(api, config)
        .default_backoff()
        .reflect(node_pods)
        .boxed();
    let mut relisted: HashSet<String> = HashSet::new();
    let mut reread = tokio::time::interval(
        static_source
            .as_ref()
            // Never ticks without a source (the branch is disabled).
            .map_or(std::time::Duration::from_secs(3600), |s| s.every),
    );
    reread.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            () = supervisors.reap() => continue,
            _ = reread.tick(), if static_source.is_some() => {
                if let Some(source) = static_source.as_mut() {
                    let changes = source.pods.reread();
                    changes.removed.iter().for_each(|uid| supervisors.remove(uid));
                    changes.added.into_iter().for_each(|pod| supervisors.apply(pod));
                }
                continue;
            }
            event = events.next() => event,
        };
        if let Some(Ok(Event::Apply(pod) | Event::Delete(pod) | Event::InitApply(pod))) = &event
            && static_pods::is_mirror(pod)
        {
            if let Some(source) = &static_source {
                source.mirror_changed.notify_one();
            }
            let mirrored = pod.annotations().get(static_pods::CONFIG_MIRROR);
            let present = !matches!(event, Some(Ok(Event::Delete(_))))
                && pod.metadata.deletion_timestamp.is_none();
            if let Some(uid) = mirrored.filter(|_| present) {
                supervisors.observe_status(uid, pod.status.clone());
            }
            continue;
        }
        match event {
            Some(Ok(Event::Apply(pod))) => supervisors.apply(pod),
            Some(Ok(Event::Delete(pod))) => supervisors.remove(&pod.uid().unwrap_or_default()),
            Some(Ok(Event::Init)) => relisted.clear(),
            Some(Ok(Event::InitApply(pod))) => {
                relisted.insert(pod.uid().unwrap_or_default());
                supervisors.apply(pod);
            }
            Some(Ok(Event::InitDone)) => {
                let is_static =
                    |uid: &String| static_source.as_ref().is_some_and(|s| s.pods.contains(uid));
                for uid in supervisors
                    .uids()
                    .into_iter()
                    .filter(|u| !relisted.contains(u) && !is_static(u))
                {
                    supervisors.remove(&uid);
                }
                supervisors.sweep_networks();
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching pods failed; retrying with backoff")
            }
            None => break,
        }
    }
    supervisors.shutdown().await;
}
