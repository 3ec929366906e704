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

/// The key-value store of one actor.
#[derive(Debug, Default)]
pub struct KeyValueStore {
    entries: HashMap<String, Value>,
}

impl KeyValueStore {
    /// Handles `operation` with its MessagePack `payload`.
    pub fn call(&mut self, operation: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
        self.expire();
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
                self.entries.insert(
                    request.key,
                    Value::Text {
                        text: request.value.clone(),
                        expires,
                    },
                );
                encode(&ValueResponse {
                    value: request.value,
                })
            }
            "Del" => {
                let Key { key } = decode(payload)?;
                self.entries.remove(&key);
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
                self.entries.insert(
                    key,
                    Value::Text {
                        text: sum.to_string(),
                        expires: None,
                    },
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
                let list = self.list(&key)?;
                list.push(value);
                encode(&CountResponse {
                    new_count: count(list.len()),
                })
            }
            "ListItemDelete" => {
                let KeyValue { key, value } = decode(payload)?;
                let list = self.list(&key)?;
                list.retain(|item| *item != value);
                encode(&CountResponse {
                    new_count: count(list.len()),
                })
            }
            "Clear" => {
                let Key { key } = decode(payload)?;
                self.list(&key)?.clear();
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
                let set = self.set(&key)?;
                if operation == "SetAdd" {
                    set.insert(value);
                } else {
                    set.remove(&value);
                }
                encode(&CountResponse {
                    new_count: count(set.len()),
                })
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
        self.entries.retain(
            |_, value| !matches!(value, Value::Text { expires: Some(at), .. } if *at <= now),
        );
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
}
