//! The ConfigMaps and Secrets the node's pods use, each kept by a watch of its own, as the
//! kubelet's watch-based manager (`configMapAndSecretChangeDetectionStrategy: Watch`) keeps
//! them: a pod's env and volumes read the cached object, volume syncs cost no API request, and
//! an object no pod has read for [`IDLE_AFTER`] stops being watched (its watch ends itself;
//! a later read starts a new one).

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
    /// When a pod last read it; the watch ends itself once this is [`IDLE_AFTER`] ago.
    last_read: Arc<Mutex<Instant>>,
    watch: AbortOnDropHandle<()>,
}

/// Objects of kind `K`, by namespace and name, each with its watch.
pub struct ObjectCache<K: kube::Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    watched: Mutex<HashMap<(String, String), Watched<K>>>,
    /// [`IDLE_AFTER`], shorter in tests.
    idle_after: Duration,
    /// [`FIRST_LIST_DEADLINE`], shorter in tests.
    first_list_deadline: Duration,
}

impl<K: kube::Resource + Clone + 'static> Default for ObjectCache<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    fn default() -> Self {
        Self {
            watched: Mutex::default(),
            idle_after: IDLE_AFTER,
            first_list_deadline: FIRST_LIST_DEADLINE,
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
    ) -> Result<Option<Arc<K>>, String> {
        let store = {
            let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            watched.retain(|_, w| !w.watch.is_finished());
            let entry = watched
                .entry((ns.to_string(), name.to_string()))
                .or_insert_with(|| Self::watch(client, ns, name, self.idle_after));
            *entry.last_read.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            entry.store.clone()
        };
        let kind = K::kind(&Default::default()).to_lowercase();
        let deadline = self.first_list_deadline;
        tokio::time::timeout(deadline, store.wait_until_ready())
            .await
            .map_err(|_| {
                format!("reading {kind} {ns}/{name}: its watch did not list it within {deadline:?}")
            })?
            .map_err(|e| format!("reading {kind} {ns}/{name}: {e}"))?;
        Ok(store.get(&ObjectRef::new(name).within(ns)))
    }

    /// Starts watching `ns/name` alone (a field selector on its name, which the node
    /// authorizer allows for objects the node's pods use).
    fn watch(client: &kube::Client, ns: &str, name: &str, idle_after: Duration) -> Watched<K> {
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
        let last_read = Arc::new(Mutex::new(Instant::now()));
        let idle = {
            let last_read = last_read.clone();
            async move {
                loop {
                    let read = *last_read.lock().unwrap_or_else(|p| p.into_inner());
                    let idle_at = read + idle_after;
                    if Instant::now() >= idle_at {
                        return;
                    }
                    tokio::time::sleep_until(idle_at.into()).await;
                }
            }
        };
        let task = tokio::spawn(async move {
            tokio::select! {
                () = watch => {}
                () = idle => {}
            }
        });
        Watched {
            store,
            last_read,
            watch: AbortOnDropHandle::new(task),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    impl<K: kube::Resource + Clone + 'static> ObjectCache<K>
    where
        K::DynamicType: std::hash::Hash + Eq + Clone,
    {
        fn watching(&self) -> usize {
            let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            watched.values().filter(|w| !w.watch.is_finished()).count()
        }
    }

    #[tokio::test]
    async fn a_first_read_waits_a_bounded_time_and_an_unread_watch_ends() {
        // An API server that never answers.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let cache: ObjectCache<ConfigMap> = ObjectCache {
            idle_after: Duration::from_millis(1500),
            first_list_deadline: Duration::from_millis(500),
            ..Default::default()
        };
        let read = cache.get(&client, "ns", "settings").await;
        assert!(
            read.as_ref().is_err_and(|e| e.contains("did not list it")),
            "{read:?}"
        );
        assert_eq!(cache.watching(), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.watching() > 0 {
            assert!(Instant::now() < deadline, "the unread watch did not end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
