//! Static pods on a node joined to a cluster, as the kubelet's file source makes them: the
//! manifests of `--pod-manifest-path`, read again every `--file-check-frequency`, each run
//! as a pod of this node (named `<name>-<node>`, its uid a hash of the manifest and the node,
//! tolerating every NoExecute taint), and mirrored to the API server as a mirror pod (a copy
//! with the `kubernetes.io/config.mirror` annotation, owned by the Node) whose status is the
//! static pod's. Deleting the mirror pod does not stop the static pod: it is mirrored again.
//! Removing the manifest stops the pod and deletes its mirror; changing it replaces both.

use super::admission::CONFIG_SOURCE;
use crate::standalone::ManifestError;
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// The annotation holding a static pod's hash (its uid), on the pod and on its mirror.
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// The annotation that makes a pod a mirror pod; its value is the static pod's hash.
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";
/// When the node first read the static pod's manifest.
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";

/// Whether `pod` (from the API server) is a mirror pod, which the node never runs.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.annotations().contains_key(CONFIG_MIRROR)
}

/// The static pod the kubelet makes of `manifest` on node `node_name`.
pub fn from_manifest(mut manifest: Pod, node_name: &str) -> Pod {
    use sha2::Digest;
    let hash = {
        let mut hasher = sha2::Sha256::new();
        hasher.update(serde_json::to_vec(&manifest).unwrap_or_default());
        hasher.update(format!("host:{node_name}").as_bytes());
        hex::encode(&hasher.finalize()[..16])
    };
    let meta = &mut manifest.metadata;
    meta.name = Some(format!(
        "{}-{}",
        meta.name.as_deref().unwrap_or_default(),
        node_name.to_lowercase()
    ));
    meta.namespace = meta
        .namespace
        .take()
        .filter(|ns| !ns.is_empty())
        .or(Some("default".into()));
    meta.uid = Some(hash.clone());
    meta.creation_timestamp = Some(super::status::now());
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(CONFIG_SOURCE.into(), "file".into());
    annotations.insert(CONFIG_HASH.into(), hash);
    annotations.insert(CONFIG_SEEN.into(), jiff::Timestamp::now().to_string());
    let spec = manifest.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node_name.into());
    // Static pods are not evicted for node problems (the kubelet adds this toleration).
    let tolerate_all = Toleration {
        operator: Some("Exists".into()),
        effect: Some("NoExecute".into()),
        ..Default::default()
    };
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    if !tolerations.contains(&tolerate_all) {
        tolerations.push(tolerate_all);
    }
    manifest.status = None;
    manifest
}

/// The static pods of one manifest file, by uid.
fn read_file(file: &Path, node_name: &str) -> Result<HashMap<String, Pod>, ManifestError> {
    Ok(crate::standalone::load_manifest_file(file)?
        .into_iter()
        .map(|manifest| {
            let pod = from_manifest(manifest, node_name);
            (pod.uid().unwrap_or_default(), pod)
        })
        .collect())
}

/// The manifests a node runs as static pods, and what it does with them.
pub struct StaticPods {
    path: PathBuf,
    node_name: String,
    /// The static pods running, by manifest file, then uid.
    current: HashMap<PathBuf, HashMap<String, Pod>>,
    /// The static pods, for the mirror pod keeper: `None` until the manifests were read once.
    mirrored: watch::Sender<Option<Vec<Pod>>>,
}

/// What changed in the manifests since they were read last.
#[derive(Debug, Default)]
pub struct Changes {
    /// New static pods (a changed manifest is a new pod, its old version removed).
    pub added: Vec<Pod>,
    /// The uids of static pods whose manifest is gone.
    pub removed: Vec<String>,
}

impl StaticPods {
    /// The static pods of `path` for node `node_name`, none read yet; `mirrored` receives
    /// them once read and then as they change.
    pub fn new(
        path: PathBuf,
        node_name: String,
        mirrored: watch::Sender<Option<Vec<Pod>>>,
    ) -> Self {
        Self {
            path,
            node_name,
            current: HashMap::new(),
            mirrored,
        }
    }

    /// Whether `uid` is one of the static pods.
    pub fn contains(&self, uid: &str) -> bool {
        self.current.values().any(|pods| pods.contains_key(uid))
    }

    /// Reads the manifests again. A file that cannot be read or parsed (one being written, or
    /// invalid) is logged and its pods run on as they were; the other files' changes apply. A
    /// missing path means no static pods (the kubelet waits for it to appear).
    pub fn reread(&mut self) -> Changes {
        let files = if self.path.exists() {
            match crate::standalone::manifest_files(&self.path) {
                Ok(files) => files,
                Err(e) => {
                    tracing::warn!(error = %e, "listing the static pod manifests failed; the static pods run on unchanged");
                    return Changes::default();
                }
            }
        } else {
            Vec::new()
        };
        let mut read: HashMap<PathBuf, HashMap<String, Pod>> = HashMap::new();
        for file in files {
            match read_file(&file, &self.node_name) {
                Ok(pods) => {
                    read.insert(file, pods);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a static pod manifest cannot be read; its pods run on unchanged");
                    let kept = self.current.get(&file).cloned().unwrap_or_default();
                    read.insert(file, kept);
                }
            }
        }
        let before: HashMap<&String, &Pod> = self.current.values().flatten().collect();
        let after: HashMap<&String, &Pod> = read.values().flatten().collect();
        let changes = Changes {
            added: after
                .iter()
                .filter(|(uid, _)| !before.contains_key(*uid))
                .map(|(_, pod)| Pod::clone(pod))
                .collect(),
            removed: before
                .keys()
                .filter(|uid| !after.contains_key(*uid))
                .map(|uid| uid.to_string())
                .collect(),
        };
        self.current = read;
        let first_read = self.mirrored.borrow().is_none();
        if first_read || !changes.added.is_empty() || !changes.removed.is_empty() {
            let pods: Vec<Pod> = self
                .current
                .values()
                .flat_map(|p| p.values().cloned())
                .collect();
            self.mirrored.send_replace(Some(pods));
        }
        changes
    }
}

/// The uid of the mirror pod of static pod `pod` as the node's pod watch (`node_pods`) last
/// saw it, if it mirrors this version of the pod and is not being deleted. The node learns of
/// mirror pods only from that watch: the Node authorizer lets a node read no pod that is not
/// bound to it, so a mirror pod that does not exist yet cannot be read by name.
pub fn mirror_uid(node_pods: &Store<Pod>, pod: &Pod) -> Option<String> {
    let hash = pod.annotations().get(CONFIG_HASH)?;
    node_pods
        .get(&object_ref(pod))
        .filter(|m| m.annotations().get(CONFIG_MIRROR) == Some(hash))
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .and_then(|m| m.uid())
}

fn object_ref(pod: &Pod) -> ObjectRef<Pod> {
    ObjectRef::new(&pod.name_any()).within(&pod.namespace().unwrap_or_default())
}

/// Keeps a mirror pod on the API server for each static pod, as the kubelet does: created when
/// missing (AlreadyExists counts as done: the node's pod watch shows what is there), replaced
/// when it mirrors another version or is being deleted, and deleted when no static pod has it
/// (also one whose manifest was removed while the node was down). What exists is read from
/// `node_pods`, the node's own watch of the pods bound to it. Runs once that watch and the
/// manifests have been read, then every `every`, when the static pods change, and when `poke`
/// is notified (a mirror pod changed), until `shutdown`.
pub async fn keep_mirror_pods(
    client: kube::Client,
    node_name: String,
    node_pods: Store<Pod>,
    mut static_pods: watch::Receiver<Option<Vec<Pod>>>,
    poke: Arc<Notify>,
    every: Duration,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        ready = node_pods.wait_until_ready() => if ready.is_err() { return },
    }
    let mut mirrors = Mirrors {
        client,
        node_name,
        node_pods,
        node_uid: None,
    };
    loop {
        let desired = static_pods.borrow_and_update().clone();
        if let Some(desired) = desired {
            mirrors.reconcile(&desired).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = static_pods.changed() => if changed.is_err() { return },
            () = poke.notified() => {}
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// The mirror pods of one node.
struct Mirrors {
    client: kube::Client,
    node_name: String,
    /// The pods bound to the node, mirror pods among them, as its pod watch last saw them.
    node_pods: Store<Pod>,
    /// The Node's uid, for the mirror pods' owner reference.
    node_uid: Option<String>,
}

impl Mirrors {
    async fn reconcile(&mut self, desired: &[Pod]) {
        let wanted: HashSet<ObjectRef<Pod>> = desired.iter().map(object_ref).collect();
        let orphans: Vec<Arc<Pod>> = self
            .node_pods
            .state()
            .into_iter()
            .filter(|p| is_mirror(p) && !wanted.contains(&object_ref(p)))
            .collect();
        for orphan in orphans {
            if let Err(e) = self.delete_mirror(&orphan).await {
                tracing::warn!(pod = %object_ref(&orphan), error = %e, "deleting the mirror pod of a removed static pod failed; retrying");
            }
        }
        for pod in desired {
            if let Err(e) = self.mirror(pod).await {
                tracing::warn!(pod = %object_ref(pod), error = %e, "mirroring the static pod failed; retrying");
            }
        }
    }

    /// Makes sure the mirror pod of `pod` exists and mirrors this version of it.
    async fn mirror(&mut self, pod: &Pod) -> Result<(), kube::Error> {
        let hash = pod
            .annotations()
            .get(CONFIG_HASH)
            .cloned()
            .unwrap_or_default();
        match self.node_pods.get(&object_ref(pod)) {
            Some(existing) if !is_mirror(&existing) => {
                tracing::warn!(pod = %object_ref(pod), "a pod that is not a mirror pod has the static pod's name; the static pod runs unmirrored");
                return Ok(());
            }
            Some(existing)
                if existing.annotations().get(CONFIG_MIRROR) == Some(&hash)
                    && existing.metadata.deletion_timestamp.is_none() =>
            {
                return Ok(());
            }
            // Another version's mirror, or one being deleted: replace it.
            Some(existing) => self.delete_mirror(&existing).await?,
            None => {}
        }
        let node_uid = match &self.node_uid {
            Some(uid) => uid.clone(),
            None => {
                let node = Api::<Node>::all(self.client.clone())
                    .get(&self.node_name)
                    .await?;
                let uid = node.uid().unwrap_or_default();
                self.node_uid = Some(uid.clone());
                uid
            }
        };
        let mut annotations = pod.annotations().clone();
        annotations.insert(CONFIG_MIRROR.into(), hash);
        let mirror = Pod {
            metadata: ObjectMeta {
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                labels: pod.metadata.labels.clone(),
                annotations: Some(annotations),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: self.node_name.clone(),
                    uid: node_uid,
                    controller: Some(true),
                    block_owner_deletion: None,
                }]),
                ..Default::default()
            },
            spec: pod.spec.clone(),
            status: None,
        };
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        match api.create(&PostParams::default(), &mirror).await {
            Ok(_) => Ok(()),
            // There already (made meanwhile, or not yet in the watch): the watch shows it, and
            // the next round replaces it if it is not this version's mirror.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            // The Node was replaced: its uid is read again.
            Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("UID mismatch") => {
                self.node_uid = None;
                Err(kube::Error::Api(e))
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes a mirror pod at once (it runs nothing), only if it still is the one seen.
    async fn delete_mirror(&self, mirror: &Pod) -> Result<(), kube::Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &mirror.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: mirror.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&mirror.name_any(), &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(args: &[&str]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "c", "image": "example.com/web:v1", "args": args}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_static_pod_is_named_for_its_node_and_its_uid_follows_its_manifest() {
        let pod = from_manifest(manifest(&["a"]), "Node-1");
        assert_eq!(pod.name_any(), "web-node-1");
        assert_eq!(pod.namespace().as_deref(), Some("default"));
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some("Node-1")
        );
        let annotations = pod.annotations();
        assert_eq!(
            annotations.get(CONFIG_SOURCE).map(String::as_str),
            Some("file")
        );
        assert_eq!(annotations.get(CONFIG_HASH), pod.uid().as_ref());
        let tolerations = pod.spec.as_ref().unwrap().tolerations.clone().unwrap();
        assert!(
            tolerations
                .iter()
                .any(|t| t.operator.as_deref() == Some("Exists")
                    && t.effect.as_deref() == Some("NoExecute")
                    && t.key.is_none())
        );
        // Read again, the same manifest is the same pod; another is another, as on another node.
        assert_eq!(from_manifest(manifest(&["a"]), "Node-1").uid(), pod.uid());
        assert_ne!(from_manifest(manifest(&["b"]), "Node-1").uid(), pod.uid());
        assert_ne!(from_manifest(manifest(&["a"]), "node-2").uid(), pod.uid());
    }

    #[test]
    fn rereading_reports_what_was_added_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = watch::channel(None);
        let mirrored = |rx: &watch::Receiver<Option<Vec<Pod>>>| rx.borrow().as_ref().map(Vec::len);
        let mut pods = StaticPods::new(dir.path().join("manifests"), "n".into(), tx);
        // No directory yet: no pods, as the kubelet waits for it.
        let changes = pods.reread();
        assert!(changes.added.is_empty() && changes.removed.is_empty());
        // Read once, even with nothing to mirror: the mirror pod keeper may delete orphans.
        assert_eq!(mirrored(&rx), Some(0));
        std::fs::create_dir(dir.path().join("manifests")).unwrap();
        let file = dir.path().join("manifests/web.json");
        std::fs::write(&file, serde_json::to_vec(&manifest(&["a"])).unwrap()).unwrap();
        let changes = pods.reread();
        assert_eq!(changes.added.len(), 1);
        let first = changes.added[0].uid().unwrap();
        assert!(pods.contains(&first) && mirrored(&rx) == Some(1));
        // An invalid manifest (one being written) keeps its pods; another file still counts.
        std::fs::write(&file, b"{not yaml: [").unwrap();
        let other = dir.path().join("manifests/other.yaml");
        let mut second = manifest(&["c"]);
        second.metadata.name = Some("other".into());
        std::fs::write(&other, serde_json::to_vec(&second).unwrap()).unwrap();
        let changes = pods.reread();
        assert!(changes.removed.is_empty(), "{changes:?}");
        assert_eq!(changes.added.len(), 1);
        assert!(pods.contains(&first) && mirrored(&rx) == Some(2));
        std::fs::remove_file(&other).unwrap();
        assert_eq!(pods.reread().removed.len(), 1);
        // A changed manifest replaces the pod.
        std::fs::write(&file, serde_json::to_vec(&manifest(&["b"])).unwrap()).unwrap();
        let changes = pods.reread();
        assert_eq!(changes.removed, [first]);
        assert_eq!(changes.added.len(), 1);
        std::fs::remove_file(&file).unwrap();
        let changes = pods.reread();
        assert_eq!(changes.removed.len(), 1);
        assert_eq!(mirrored(&rx), Some(0));
    }
}
