//! The ConfigMaps and Secrets the node's pods use, each kept by a watch of its own, as the
//! kubelet's watch-based manager (`configMapAndSecretChangeDetectionStrategy: Watch`) keeps
//! them: a pod's env and volumes read the cached object, volume syncs cost no API request, and
//! an object no pod has read for [`IDLE_AFTER`] stops being watched.

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::task::AbortOnDropHandle;

/// How long an object's watch is kept without a read (pods read theirs at every volume sync,
/// `--sync-frequency`, 1 min by default).
pub const IDLE_AFTER: Duration = Duration::from_secs(5 * 60);

/// How long the first read of an object waits for its watch's first list.
pub const FIRST_LIST_DEADLINE: Duration = Duration::from_secs(10);

/// One watched object.
struct Watched<K: kube::Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store: Store<K>,
    last_read: Instant,
    _watch: AbortOnDropHandle<()>,
}

/// Objects of kind `K`, by namespace and name, each with its watch.
pub struct ObjectCache<K: kube::Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    watched: Mutex<HashMap<(String, String), Watched<K>>>,
}

impl<K: kube::Resource + Clone + 'static> Default for ObjectCache<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    fn default() -> Self {
        Self {
            watched: Mutex::default(),
        }
    }
}

impl<K> ObjectCache<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + std::hash::Hash + Eq + Clone,
{
    /// Object `ns/name` (`None` when it does not exist), from its watch, which starts at the
    /// first read; that read waits up to [`FIRST_LIST_DEADLINE`] for the watch's first list.
    pub async fn get(
        &self,
        client: &kube::Client,
        ns: &str,
        name: &str,
    ) -> Result<Option<K>, String> {
        let store = {
            let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            watched.retain(|_, w| now.duration_since(w.last_read) < IDLE_AFTER);
            let entry = watched
                .entry((ns.to_string(), name.to_string()))
                .or_insert_with(|| Self::watch(client, ns, name));
            entry.last_read = now;
            entry.store.clone()
        };
        let kind = K::kind(&Default::default()).to_lowercase();
        tokio::time::timeout(FIRST_LIST_DEADLINE, store.wait_until_ready())
            .await
            .map_err(|_| {
                format!("reading {kind} {ns}/{name}: its watch did not list it within {FIRST_LIST_DEADLINE:?}")
            })?
            .map_err(|e| format!("reading {kind} {ns}/{name}: {e}"))?;
        Ok(store
            .get(&ObjectRef::new(name).within(ns))
            .map(|object| (*object).clone()))
    }

    /// Starts watching `ns/name` alone (a field selector on its name, which the node
    /// authorizer allows for objects the node's pods use).
    fn watch(client: &kube::Client, ns: &str, name: &str) -> Watched<K> {
        let (store, writer) = reflector::store();
        let api = Api::<K>::namespaced(client.clone(), ns);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let key = format!("{ns}/{name}");
        let watch = watcher::watcher(api, config)
            .default_backoff()
            .reflect(writer)
            .for_each(move |event| {
                if let Err(e) = event {
                    tracing::warn!(object = %key, error = %e, "watching an object pods use failed; retrying with backoff");
                }
                std::future::ready(())
            });
        Watched {
            store,
            last_read: Instant::now(),
            _watch: AbortOnDropHandle::new(tokio::spawn(watch)),
        }
    }
}
