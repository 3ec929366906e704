//! Where a pod supervisor's effects go: the API server (status patches, events, the final
//! delete) or, in standalone mode, the terminal.

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret, Service, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::future::Future;
use std::sync::Arc;
use tokio_util::task::AbortOnDropHandle;

use super::events::{EventRate, EventRecorder};
use super::object_cache::ObjectCache;

/// An event about a pod (or one of its containers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    /// `Normal` or `Warning`.
    pub kind: &'static str,
    /// The kubelet's reason (`Pulling`, `Started`, `BackOff`...).
    pub reason: String,
    /// The kubelet's message.
    pub message: String,
    /// The container, for `involvedObject.fieldPath`.
    pub container: Option<String>,
}

impl PodEvent {
    /// A Normal event about a container.
    pub fn normal(container: &str, reason: &str, message: String) -> Self {
        Self {
            kind: "Normal",
            reason: reason.into(),
            message,
            container: Some(container.into()),
        }
    }

    /// A Warning event about a container, or the pod when `container` is empty.
    pub fn warning(container: &str, reason: &str, message: String) -> Self {
        Self {
            kind: "Warning",
            reason: reason.into(),
            message,
            container: (!container.is_empty()).then(|| container.into()),
        }
    }
}

/// A pod's status could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The pod is gone (deleted, or recreated under its name with another uid): there is
    /// nothing to write the status to any more.
    #[error("the pod is gone")]
    Gone,
    /// The write failed; trying again may succeed.
    #[error("{0}")]
    Failed(String),
}

/// What a pod supervisor does to the world.
pub trait PodHost: Send + Sync + 'static {
    /// Writes the pod's status; a failure is retried by the pod's status writer.
    fn write_status(
        &self,
        pod: &Pod,
        status: &PodStatus,
    ) -> impl Future<Output = Result<(), StatusError>> + Send;
    /// Records an event.
    fn record(&self, pod: &Pod, event: PodEvent) -> impl Future<Output = ()> + Send;
    /// Removes a pod whose containers have stopped (delete with grace 0).
    fn finish_deletion(&self, pod: &Pod) -> impl Future<Output = ()> + Send;
    /// The handler of RuntimeClass `name` (`node.k8s.io/v1`), `None` if it does not exist.
    fn runtime_handler(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, String>> + Send;
    /// A ConfigMap in the pod's namespace, `None` if it does not exist.
    fn config_map(
        &self,
        ns: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Arc<ConfigMap>>, String>> + Send;
    /// A Secret in the pod's namespace, `None` if it does not exist.
    fn secret(
        &self,
        ns: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Arc<Secret>>, String>> + Send;
    /// A token for the pod's service account, bound to the pod (TokenRequest).
    fn service_account_token(
        &self,
        pod: &Pod,
        audience: Option<String>,
        expiration_seconds: i64,
    ) -> impl Future<Output = Result<String, String>> + Send;
    /// The Services a pod of `namespace` gets environment variables for: that namespace's,
    /// and the master services of `default` (see [`super::service_env`]). A host without an
    /// API server knows none.
    fn services(
        &self,
        _namespace: &str,
    ) -> impl Future<Output = Result<Vec<Service>, String>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// How long a container start waits for the first list of Services, as the kubelet waits for
/// its Service informer; after it the start fails (`CreateContainerConfigError`) and is retried.
const SERVICES_READY: std::time::Duration = std::time::Duration::from_secs(10);

/// Effects through the Kubernetes API, as the node's identity.
pub struct ApiHost {
    client: kube::Client,
    /// Every Service of the cluster, kept by a watch, for containers' service variables.
    services: Store<Service>,
    _watching_services: AbortOnDropHandle<()>,
    /// The pods bound to the node as its pod watch last saw them (static pods' mirrors among
    /// them).
    node_pods: Store<Pod>,
    /// Sends events in the background, aggregating repeats as the kubelet does.
    events: EventRecorder,
    config_maps: ObjectCache<ConfigMap>,
    secrets: ObjectCache<Secret>,
}

impl ApiHost {
    /// Effects through `client` on behalf of `node_name`, its events written at `event_rate`;
    /// `node_pods` is kept by the node's pod watch ([`super::watch_pods`]).
    pub fn new(
        client: kube::Client,
        node_name: String,
        event_rate: EventRate,
        node_pods: Store<Pod>,
    ) -> Self {
        let (services, writer) = reflector::store();
        let watch = watcher::watcher(Api::<Service>::all(client.clone()), Default::default())
            .default_backoff()
            .reflect(writer)
            .for_each(|event| async move {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "watching Services failed; retrying with backoff");
                }
            });
        Self {
            services,
            _watching_services: AbortOnDropHandle::new(tokio::spawn(watch)),
            node_pods,
            events: EventRecorder::new(client.clone(), node_name, event_rate),
            client,
            config_maps: ObjectCache::default(),
            secrets: ObjectCache::default(),
        }
    }

    /// Waits, for at most `deadline`, until the events recorded so far are sent.
    pub async fn flush_events(&self, deadline: std::time::Duration) {
        self.events.flush(deadline).await;
    }
}

impl PodHost for ApiHost {
    async fn services(&self, namespace: &str) -> Result<Vec<Service>, String> {
        let ready = tokio::time::timeout(SERVICES_READY, self.services.wait_until_ready()).await;
        if !matches!(ready, Ok(Ok(()))) {
            return Err(
                "services have not yet been read at least once, cannot construct envvars".into(),
            );
        }
        Ok(self
            .services
            .state()
            .iter()
            .filter(|s| {
                let ns = s.metadata.namespace.as_deref().unwrap_or_default();
                let name = s.metadata.name.as_deref().unwrap_or_default();
                ns == namespace
                    || ns == "default" && super::service_env::MASTER_SERVICES.contains(&name)
            })
            .map(|s| Service::clone(s))
            .collect())
    }

    async fn write_status(&self, pod: &Pod, status: &PodStatus) -> Result<(), StatusError> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let failed = |e: &dyn std::fmt::Display| {
            StatusError::Failed(format!(
                "writing status of pod {}/{}: {e}",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            ))
        };
        let is_static = super::admission::is_static(pod);
        // A static pod's status goes to its mirror pod, which the node (re)creates: until its
        // pod watch shows it, the write is tried again, never given up.
        let uid = if is_static {
            match super::static_pods::mirror_uid(&self.node_pods, pod) {
                Some(uid) => Some(uid),
                None => return Err(failed(&"its mirror pod is not created yet")),
            }
        } else {
            pod.uid()
        };
        // The uid makes the patch fail on a pod recreated under the same name.
        let patch = serde_json::json!({"metadata": {"uid": uid}, "status": status_patch(status)});
        api.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
        .map(|_| ())
        .map_err(|e| match e {
            // Not found, or the uid in the patch is not the object's (409, precondition); a
            // static pod's mirror is created again.
            kube::Error::Api(e) if (e.code == 404 || e.code == 409) && !is_static => {
                StatusError::Gone
            }
            e => failed(&e),
        })
    }

    async fn record(&self, pod: &Pod, event: PodEvent) {
        // In the journal too, with the pod's span, for `-v 3` and up (the kubelet logs its
        // events at -v 3 and 4 as well).
        tracing::debug!(
            kind = event.kind,
            reason = %event.reason,
            container = event.container.as_deref().unwrap_or_default(),
            "{}",
            event.message
        );
        self.events.record(pod, event);
    }

    async fn finish_deletion(&self, pod: &Pod) {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(error = %e, pod = %pod.name_any(), "deleting the pod failed"),
        }
        self.events.forget(pod.uid().unwrap_or_default());
    }

    async fn runtime_handler(&self, name: &str) -> Result<Option<String>, String> {
        let classes: Api<k8s_openapi::api::node::v1::RuntimeClass> = Api::all(self.client.clone());
        match classes.get_opt(name).await {
            Ok(class) => Ok(class.map(|c| c.handler)),
            Err(e) => Err(format!("reading RuntimeClass {name:?}: {e}")),
        }
    }

    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<Arc<ConfigMap>>, String> {
        self.config_maps.get(&self.client, ns, name).await
    }

    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Arc<Secret>>, String> {
        self.secrets.get(&self.client, ns, name).await
    }

    async fn service_account_token(
        &self,
        pod: &Pod,
        audience: Option<String>,
        expiration_seconds: i64,
    ) -> Result<String, String> {
        let ns = pod.namespace().unwrap_or_default();
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.into_iter().collect(),
                expiration_seconds: Some(expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.name_any()),
                    uid: pod.uid(),
                }),
            },
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
        let issued: TokenRequest = api
            .create_subresource("token", &account, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("requesting a token for service account {ns}/{account}: {e}"))?;
        issued
            .status
            .map(|s| s.token)
            .ok_or_else(|| format!("the TokenRequest for {ns}/{account} returned no token"))
    }
}

/// The status as a strategic merge patch that replaces it: container states are one-of
/// objects that a merge would combine (a `running` left beside the new `terminated`), so the
/// states not set are sent as null, as the kubelet's two-way merge patch does.
fn status_patch(status: &PodStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    for list in ["initContainerStatuses", "containerStatuses"] {
        let Some(items) = value.get_mut(list).and_then(|l| l.as_array_mut()) else {
            continue;
        };
        for item in items {
            for field in ["state", "lastState"] {
                let state = item
                    .as_object_mut()
                    .map(|o| o.entry(field).or_insert_with(|| serde_json::json!({})));
                if let Some(state) = state.and_then(|s| s.as_object_mut()) {
                    for kind in ["waiting", "running", "terminated"] {
                        state.entry(kind).or_insert(serde_json::Value::Null);
                    }
                }
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_patch_clears_the_states_it_does_not_set() {
        let status = PodStatus {
            container_statuses: Some(vec![k8s_openapi::api::core::v1::ContainerStatus {
                name: "main".into(),
                state: Some(crate::pods::status::terminated(
                    137,
                    "OOMKilled".into(),
                    None,
                    None,
                    None,
                )),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let patch = status_patch(&status);
        let state = &patch["containerStatuses"][0]["state"];
        assert!(state["running"].is_null() && state.get("running").is_some());
        assert!(state["waiting"].is_null() && state.get("waiting").is_some());
        assert_eq!(state["terminated"]["reason"], "OOMKilled");
        assert!(
            patch["containerStatuses"][0]["lastState"]
                .get("terminated")
                .is_some()
        );
    }
}
