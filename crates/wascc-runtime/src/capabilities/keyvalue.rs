//! `wascc:keyvalue`: an in-memory store per running actor, with the waSCC codec's operations
//! (strings with optional expiry, atomic counters, lists and sets, as Redis has them).

use super::{decode, encode};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

#[derive(Deserialize)]
struct Key {
    key: String,
}

#[derive(Deserialize)]
struct KeyValue {
    key: String,
    value: String,
}

#[derive(Deserialize)]
struct SetRequest {
    key: String,
    value: String,
    #[serde(default)]
    expires: i32,
}

#[derive(Deserialize)]
struct AddRequest {
    key: String,
    value: i32,
}

#[derive(Deserialize)]
struct RangeRequest {
    key: String,
    start: i32,
    stop: i32,
}

#[derive(Deserialize)]
struct Keys {
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Serialize)]
struct GetResponse {
    value: String,
    exists: bool,
}

#[derive(Serialize)]
struct ValueResponse<T> {
    value: T,
}

#[derive(Serialize)]
struct KeyResponse {
    key: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CountResponse {
    new_count: i32,
}

#[derive(Serialize)]
struct ValuesResponse {
    values: Vec<String>,
}

#[derive(Debug)]
enum Value {
    Text {
        text: String,
        expires: Option<Instant>,
    },
    List(Vec<String>),
    Set(BTreeSet<String>),
}

/// The most one actor's key-value store may hold (keys, values and their bookkeeping), as
/// host memory the actor makes the agent keep; past it a storing call fails in the actor.
pub const MAX_STORE_BYTES: usize = 64 << 20;
/// What the store counts for a key beside its bytes.
const KEY_OVERHEAD: usize = 64;
/// What the store counts for a list or set item beside its bytes.
const ITEM_OVERHEAD: usize = 32;

impl Value {
    /// The bytes this value counts for.
    fn size(&self) -> usize {
        match self {
            Value::Text { text, .. } => text.len(),
            Value::List(items) => items.iter().map(|i| i.len() + ITEM_OVERHEAD).sum(),
            Value::Set(items) => items.iter().map(|i| i.len() + ITEM_OVERHEAD).sum(),
        }
    }
}

/// The key-value store of one actor, holding at most [`MAX_STORE_BYTES`].
#[derive(Debug)]
pub struct KeyValueStore {
    entries: HashMap<String, Value>,
    /// What the entries count for.
    bytes: usize,
    limit: usize,
}

impl Default for KeyValueStore {
    fn default() -> Self {
        Self::with_limit(MAX_STORE_BYTES)
    }
}

impl KeyValueStore {
    /// An empty store that holds at most `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            limit,
        }
    }

    /// Refuses a call that could store `growth` more bytes past the limit (a call cannot store
    /// more than its payload brings, and an `Add` a number).
    fn reserve(&self, growth: usize) -> Result<(), String> {
        if self.bytes.saturating_add(growth) > self.limit {
            return Err(format!(
                "wascc:keyvalue: this actor's store holds {} bytes; storing {growth} more would pass its limit of {} bytes",
                self.bytes, self.limit
            ));
        }
        Ok(())
    }

    /// Replaces (or removes, with `None`) the value of `key`, keeping the count.
    fn put(&mut self, key: String, value: Option<Value>) {
        let added = value
            .as_ref()
            .map_or(0, |v| v.size() + key.len() + KEY_OVERHEAD);
        let old = match value {
            Some(value) => self.entries.insert(key.clone(), value),
            None => self.entries.remove(&key),
        };
        let removed = old.map_or(0, |v| v.size() + key.len() + KEY_OVERHEAD);
        self.bytes = self.bytes.saturating_sub(removed).saturating_add(added);
    }

    /// Handles `operation` with its MessagePack `payload`.
    pub fn call(&mut self, operation: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
        self.expire();
        let storing = matches!(operation, "Set" | "Add" | "Push" | "SetAdd");
        if storing {
            self.reserve(payload.len() + KEY_OVERHEAD + ITEM_OVERHEAD + 16)?;
        }
        match operation {
            "Get" => {
                let Key { key } = decode(payload)?;
                let value = self.text(&key)?;
                encode(&GetResponse {
                    exists: value.is_some(),
                    value: value.unwrap_or_default(),
                })
            }
            "Set" => {
                let request: SetRequest = decode(payload)?;
                let expires = u64::try_from(request.expires)
                    .ok()
                    .filter(|s| *s > 0)
                    .map(|s| Instant::now() + Duration::from_secs(s));
                let text = request.value.clone();
                self.put(request.key, Some(Value::Text { text, expires }));
                encode(&ValueResponse {
                    value: request.value,
                })
            }
            "Del" => {
                let Key { key } = decode(payload)?;
                self.put(key.clone(), None);
                encode(&KeyResponse { key })
            }
            "Add" => {
                let AddRequest { key, value } = decode(payload)?;
                let current = match self.text(&key)? {
                    Some(text) => text.parse::<i32>().map_err(|_| {
                        format!("key {key:?} holds {text:?}, which is not an integer")
                    })?,
                    None => 0,
                };
                let sum = current
                    .checked_add(value)
                    .ok_or_else(|| format!("adding {value} to key {key:?} overflows"))?;
                let text = sum.to_string();
                self.put(
                    key,
                    Some(Value::Text {
                        text,
                        expires: None,
                    }),
                );
                encode(&ValueResponse { value: sum })
            }
            "KeyExists" => {
                let Key { key } = decode(payload)?;
                encode(&GetResponse {
                    value: String::new(),
                    exists: self.entries.contains_key(&key),
                })
            }
            "Push" => {
                let KeyValue { key, value } = decode(payload)?;
                let new = !self.entries.contains_key(&key);
                let added =
                    value.len() + ITEM_OVERHEAD + if new { key.len() + KEY_OVERHEAD } else { 0 };
                let list = self.list(&key)?;
                list.push(value);
                let new_count = count(list.len());
                self.bytes = self.bytes.saturating_add(added);
                encode(&CountResponse { new_count })
            }
            "ListItemDelete" => {
                let KeyValue { key, value } = decode(payload)?;
                let new = !self.entries.contains_key(&key);
                let list = self.list(&key)?;
                let before = list.len();
                list.retain(|item| *item != value);
                let new_count = count(list.len());
                let freed = (before - list.len()) * (value.len() + ITEM_OVERHEAD);
                let made = if new { key.len() + KEY_OVERHEAD } else { 0 };
                self.bytes = self.bytes.saturating_sub(freed).saturating_add(made);
                encode(&CountResponse { new_count })
            }
            "Clear" => {
                let Key { key } = decode(payload)?;
                self.list(&key)?;
                self.put(key.clone(), Some(Value::List(Vec::new())));
                encode(&KeyResponse { key })
            }
            "Range" => {
                let RangeRequest { key, start, stop } = decode(payload)?;
                let values = match self.entries.get(&key) {
                    None => Vec::new(),
                    Some(Value::List(list)) => range(list, start, stop).to_vec(),
                    Some(_) => return Err(wrong_type(&key, "a list")),
                };
                encode(&ValuesResponse { values })
            }
            "SetAdd" | "SetRemove" => {
                let KeyValue { key, value } = decode(payload)?;
                let new = !self.entries.contains_key(&key);
                let made = if new { key.len() + KEY_OVERHEAD } else { 0 };
                let item = value.len() + ITEM_OVERHEAD;
                let set = self.set(&key)?;
                let changed = if operation == "SetAdd" {
                    set.insert(value)
                } else {
                    set.remove(&value)
                };
                let new_count = count(set.len());
                self.bytes = self.bytes.saturating_add(made);
                if changed && operation == "SetAdd" {
                    self.bytes = self.bytes.saturating_add(item);
                } else if changed {
                    self.bytes = self.bytes.saturating_sub(item);
                }
                encode(&CountResponse { new_count })
            }
            "SetQuery" => {
                let Key { key } = decode(payload)?;
                let values = self.members(&key)?.into_iter().collect();
                encode(&ValuesResponse { values })
            }
            "SetUnion" | "SetIntersection" => {
                let Keys { keys } = decode(payload)?;
                let mut sets = keys.iter().map(|k| self.members(k));
                let first = sets.next().transpose()?.unwrap_or_default();
                let combined = sets.try_fold(first, |acc, set| {
                    let set = set?;
                    Ok::<_, String>(if operation == "SetUnion" {
                        acc.union(&set).cloned().collect()
                    } else {
                        acc.intersection(&set).cloned().collect()
                    })
                })?;
                encode(&ValuesResponse {
                    values: combined.into_iter().collect(),
                })
            }
            other => Err(format!(
                "wascc:keyvalue has no operation {other:?} (it has Get, Set, Del, Add, KeyExists, Push, ListItemDelete, Clear, Range, SetAdd, SetRemove, SetQuery, SetUnion, SetIntersection)"
            )),
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let mut freed = 0;
        self.entries.retain(|key, value| {
            let expired = matches!(value, Value::Text { expires: Some(at), .. } if *at <= now);
            if expired {
                freed += value.size() + key.len() + KEY_OVERHEAD;
            }
            !expired
        });
        self.bytes = self.bytes.saturating_sub(freed);
    }

    fn text(&self, key: &str) -> Result<Option<String>, String> {
        match self.entries.get(key) {
            None => Ok(None),
            Some(Value::Text { text, .. }) => Ok(Some(text.clone())),
            Some(_) => Err(wrong_type(key, "a string")),
        }
    }

    fn list(&mut self, key: &str) -> Result<&mut Vec<String>, String> {
        match self
            .entries
            .entry(key.to_string())
            .or_insert_with(|| Value::List(Vec::new()))
        {
            Value::List(list) => Ok(list),
            _ => Err(wrong_type(key, "a list")),
        }
    }

    fn set(&mut self, key: &str) -> Result<&mut BTreeSet<String>, String> {
        match self
            .entries
            .entry(key.to_string())
            .or_insert_with(|| Value::Set(BTreeSet::new()))
        {
            Value::Set(set) => Ok(set),
            _ => Err(wrong_type(key, "a set")),
        }
    }

    fn members(&self, key: &str) -> Result<BTreeSet<String>, String> {
        match self.entries.get(key) {
            None => Ok(BTreeSet::new()),
            Some(Value::Set(set)) => Ok(set.clone()),
            Some(_) => Err(wrong_type(key, "a set")),
        }
    }
}

fn wrong_type(key: &str, wanted: &str) -> String {
    format!("key {key:?} does not hold {wanted}")
}

fn count(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

/// The items from `start` to `stop` inclusive; negative indices count from the end.
fn range(list: &[String], start: i32, stop: i32) -> &[String] {
    let len = list.len() as i64;
    let index = |i: i32| {
        let i = i64::from(i);
        if i < 0 { (len + i).max(0) } else { i }
    };
    let (start, stop) = (index(start), index(stop).min(len - 1));
    if start > stop {
        return &[];
    }
    &list[start as usize..=stop as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(
        store: &mut KeyValueStore,
        operation: &str,
        request: serde_json::Value,
    ) -> serde_json::Value {
        let payload = rmp_serde::to_vec_named(&request).unwrap();
        let response = store.call(operation, &payload).unwrap();
        rmp_serde::from_slice(&response).unwrap()
    }

    #[test]
    fn counters_strings_and_deletion() {
        let mut store = KeyValueStore::default();
        assert_eq!(
            call(&mut store, "Add", json!({"key": "hits", "value": 1})),
            json!({"value": 1})
        );
        assert_eq!(
            call(&mut store, "Add", json!({"key": "hits", "value": 2})),
            json!({"value": 3})
        );
        assert_eq!(
            call(&mut store, "Get", json!({"key": "hits"})),
            json!({"value": "3", "exists": true})
        );
        call(&mut store, "Del", json!({"key": "hits"}));
        assert_eq!(
            call(&mut store, "KeyExists", json!({"key": "hits"}))["exists"],
            json!(false)
        );
        call(
            &mut store,
            "Set",
            json!({"key": "name", "value": "x", "expires": 0}),
        );
        assert!(
            store
                .call(
                    "Add",
                    &rmp_serde::to_vec_named(&json!({"key": "name", "value": 1})).unwrap()
                )
                .is_err()
        );
    }

    #[test]
    fn lists_and_sets() {
        let mut store = KeyValueStore::default();
        for item in ["a", "b", "c"] {
            call(&mut store, "Push", json!({"key": "l", "value": item}));
        }
        assert_eq!(
            call(
                &mut store,
                "Range",
                json!({"key": "l", "start": 0, "stop": -1})
            )["values"],
            json!(["a", "b", "c"])
        );
        assert_eq!(
            call(
                &mut store,
                "Range",
                json!({"key": "l", "start": -2, "stop": 10})
            )["values"],
            json!(["b", "c"])
        );
        assert_eq!(
            call(
                &mut store,
                "ListItemDelete",
                json!({"key": "l", "value": "b"})
            )["newCount"],
            json!(2)
        );
        call(&mut store, "SetAdd", json!({"key": "s1", "value": "x"}));
        call(&mut store, "SetAdd", json!({"key": "s1", "value": "y"}));
        call(&mut store, "SetAdd", json!({"key": "s2", "value": "y"}));
        assert_eq!(
            call(&mut store, "SetIntersection", json!({"keys": ["s1", "s2"]}))["values"],
            json!(["y"])
        );
        assert_eq!(
            call(&mut store, "SetUnion", json!({"keys": ["s1", "s2"]}))["values"],
            json!(["x", "y"])
        );
    }

    #[test]
    fn the_store_holds_at_most_its_limit_and_counts_what_is_freed() {
        let mut store = KeyValueStore::with_limit(4096);
        let big = "x".repeat(1000);
        for i in 0..3 {
            call(
                &mut store,
                "Set",
                json!({"key": format!("k{i}"), "value": big, "expires": 0}),
            );
        }
        let payload =
            rmp_serde::to_vec_named(&json!({"key": "k3", "value": big, "expires": 0})).unwrap();
        let refused = store.call("Set", &payload).unwrap_err();
        assert!(refused.contains("limit of 4096 bytes"), "{refused}");
        call(&mut store, "Del", json!({"key": "k0"}));
        assert!(store.call("Set", &payload).is_ok(), "deleting made room");
        let item = rmp_serde::to_vec_named(&json!({"key": "l", "value": big})).unwrap();
        assert!(
            store.call("Push", &item).is_err(),
            "a list grows within the limit too"
        );
        call(&mut store, "Del", json!({"key": "k1"}));
        call(&mut store, "Del", json!({"key": "k2"}));
        call(&mut store, "Del", json!({"key": "k3"}));
        assert_eq!(store.bytes, 0, "everything stored was given back");
        for _ in 0..3 {
            store.call("Push", &item).unwrap();
        }
        call(&mut store, "Clear", json!({"key": "l"}));
        let members = rmp_serde::to_vec_named(&json!({"key": "s", "value": "m"})).unwrap();
        store.call("SetAdd", &members).unwrap();
        store.call("SetRemove", &members).unwrap();
        call(&mut store, "Del", json!({"key": "l"}));
        call(&mut store, "Del", json!({"key": "s"}));
        assert_eq!(store.bytes, 0);
    }
}
