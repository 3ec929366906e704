//! Object storage with a cluster-wide resourceVersion, a bounded change history for watches, and a
//! broadcast of every change.

use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// How many changes the history keeps; a watch from an older resourceVersion gets 410 Gone.
const HISTORY_WINDOW: usize = 10_000;

/// (namespace, name); the namespace is empty for cluster-scoped objects.
pub type ObjKey = (String, String);

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Removed.
    Deleted,
}

/// One committed change.
#[derive(Debug)]
pub struct Change {
    /// The resourceVersion the change committed at.
    pub rv: u64,
    /// Storage key of the object's resource.
    pub storage: &'static str,
    /// What happened.
    pub kind: ChangeKind,
    /// The object after the change (for deletions, the last state with the deletion's rv).
    pub object: Value,
    /// The object before the change, for modifications and deletions.
    pub old: Option<Value>,
}

/// The result of subscribing to changes from a resourceVersion.
pub struct Subscription {
    /// Changes after the requested resourceVersion that are already committed.
    pub replay: Vec<Arc<Change>>,
    /// Changes committed from now on.
    pub live: broadcast::Receiver<Arc<Change>>,
}

/// The requested resourceVersion is older than the history window.
#[derive(Debug)]
pub struct Gone {
    /// The oldest resourceVersion a watch may still start from.
    pub oldest: u64,
}

/// All objects, under one lock; every mutation happens inside [`Store::write`].
pub struct Store {
    state: Mutex<State>,
    changes: broadcast::Sender<Arc<Change>>,
}

/// The locked state: read and mutate objects, each mutation bumping the resourceVersion.
pub struct State {
    rv: u64,
    objects: HashMap<&'static str, BTreeMap<ObjKey, Value>>,
    history: VecDeque<Arc<Change>>,
    oldest_rv: u64,
    changes: broadcast::Sender<Arc<Change>>,
}

impl Default for Store {
    fn default() -> Self {
        let (changes, _) = broadcast::channel(16_384);
        Self {
            state: Mutex::new(State {
                rv: 1000,
                objects: HashMap::new(),
                history: VecDeque::new(),
                oldest_rv: 1000,
                changes: changes.clone(),
            }),
            changes,
        }
    }
}

impl Store {
    /// Runs `f` with the state locked.
    pub fn write<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.lock())
    }

    /// Runs `f` with the state locked, for reading.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Subscribes to changes after `rv` (or from now when `None`).
    pub fn subscribe(&self, rv: Option<u64>) -> Result<Subscription, Gone> {
        let state = self.lock();
        let live = self.changes.subscribe();
        let replay = match rv {
            None => Vec::new(),
            Some(rv) if rv < state.oldest_rv => {
                return Err(Gone {
                    oldest: state.oldest_rv,
                });
            }
            Some(rv) => state
                .history
                .iter()
                .filter(|c| c.rv > rv)
                .cloned()
                .collect(),
        };
        Ok(Subscription { replay, live })
    }

    /// A receiver of every change from now on (for controllers).
    pub fn changes(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Forgets the change history, as etcd compaction does: older watches get 410 Gone.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.history.clear();
        state.oldest_rv = state.rv;
    }
}

impl State {
    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch or a continued list may still name.
    pub fn oldest_rv(&self) -> u64 {
        self.oldest_rv
    }

    /// One object.
    pub fn get(&self, storage: &str, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(storage)?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// All objects of a resource, in one namespace or all.
    pub fn list<'a>(
        &'a self,
        storage: &str,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .get(storage)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(move |((obj_ns, _), _)| ns.is_none_or(|ns| obj_ns == ns))
            .map(|(_, v)| v)
    }

    /// Stores an object (created or replaced), stamping a new resourceVersion; returns the stored object.
    pub fn put(&mut self, storage: &'static str, mut object: Value) -> Value {
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let key = key_of(&object);
        let old = self
            .objects
            .entry(storage)
            .or_default()
            .insert(key, object.clone());
        let kind = if old.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.record(Change {
            rv,
            storage,
            kind,
            object: object.clone(),
            old,
        });
        object
    }

    /// Removes an object; returns its last state.
    pub fn remove(&mut self, storage: &'static str, ns: &str, name: &str) -> Option<Value> {
        let old = self
            .objects
            .get_mut(storage)?
            .remove(&(ns.to_string(), name.to_string()))?;
        self.rv += 1;
        let rv = self.rv;
        let mut object = old.clone();
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.record(Change {
            rv,
            storage,
            kind: ChangeKind::Deleted,
            object: object.clone(),
            old: Some(old),
        });
        Some(object)
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY_WINDOW {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest_rv = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(change);
    }
}

/// The (namespace, name) of an object.
pub fn key_of(object: &Value) -> ObjKey {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_string(),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}
