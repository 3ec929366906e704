//! A small cache whose entries expire and whose size is bounded: what the kubelet API keeps of
//! its authentication and authorization answers (so that no client can grow it by sending new
//! tokens), and what the event recorder remembers of the events it sent.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Entries by key, each until its expiry; at most `capacity` of them.
pub struct TtlCache<K, V> {
    entries: HashMap<K, (V, Instant)>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The value of `key`, unless it expired.
    pub fn get(&self, key: &K) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(value, _)| value.clone())
    }

    /// Keeps `value` for `ttl`. When full, expired entries go first, then the one that would
    /// expire soonest.
    pub fn insert(&mut self, key: K, value: V, ttl: Duration) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let now = Instant::now();
            self.entries.retain(|_, (_, expires)| *expires > now);
            if self.entries.len() >= self.capacity
                && let Some(soonest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&soonest);
            }
        }
        self.entries
            .insert(key, (value, crate::time::std_deadline_in(ttl)));
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.entries.retain(|key, (value, _)| keep(key, value));
    }

    /// How many entries it holds (expired ones included until they are pruned).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_size_stays_bounded() {
        let mut cache = TtlCache::new(3);
        cache.insert("gone", 0, Duration::ZERO);
        assert_eq!(cache.get(&"gone"), None, "an expired entry is not answered");
        for (i, key) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            cache.insert(key, i, Duration::from_secs(60 + i as u64));
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&"a"), None, "the soonest to expire made room");
        assert_eq!(cache.get(&"e"), Some(4));
        cache.insert("e", 9, Duration::from_secs(1));
        assert_eq!((cache.len(), cache.get(&"e")), (3, Some(9)));
    }
}
