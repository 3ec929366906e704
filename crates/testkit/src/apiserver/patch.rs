//! The three patch formats of the real server: JSON patch, JSON merge patch and strategic merge
//! patch (with the patch merge keys of the built-in types the node agent writes).

use serde_json::{Map, Value};

/// A patch format, from the request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// RFC 6902.
    Json,
    /// RFC 7386.
    Merge,
    /// Kubernetes strategic merge patch.
    Strategic,
}

impl PatchType {
    /// Maps a Content-Type to a patch type; `None` for unsupported ones (apply patches included).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            _ => None,
        }
    }
}

/// Applies `patch` to `target`.
pub fn apply(target: &Value, patch: &Value, patch_type: PatchType) -> Result<Value, String> {
    let mut out = target.clone();
    match patch_type {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| format!("invalid JSON patch: {e}"))?;
            json_patch::patch(&mut out, &ops).map_err(|e| e.to_string())?;
        }
        PatchType::Merge => json_patch::merge(&mut out, patch),
        PatchType::Strategic => {
            if !patch.is_object() {
                return Err("strategic merge patch must be a JSON object".into());
            }
            merge_map(&mut out, patch, "")?;
        }
    }
    Ok(out)
}

/// The patch merge key of a list at a dotted path (list indices left out), if it merges.
fn merge_key(path: &str) -> Option<&'static str> {
    let path = path.trim_start_matches('.');
    let tail = |p: &str| path.ends_with(p);
    Some(match () {
        _ if path == "metadata.ownerReferences" => "uid",
        _ if path == "status.conditions" => "type",
        _ if path == "status.addresses" => "type",
        _ if path == "status.volumesAttached" => "name",
        _ if path == "status.podIPs" || path == "status.hostIPs" => "ip",
        _ if path.starts_with("status.") && path.ends_with("ContainerStatuses") => "name",
        _ if path == "status.containerStatuses" => "name",
        _ if path == "spec.containers"
            || path == "spec.initContainers"
            || path == "spec.ephemeralContainers" =>
        {
            "name"
        }
        _ if path == "spec.volumes" || path == "spec.imagePullSecrets" => "name",
        _ if path == "spec.hostAliases" => "ip",
        _ if tail("Containers.env") || tail("containers.env") => "name",
        _ if tail("Containers.ports") || tail("containers.ports") => "containerPort",
        _ if tail("Containers.volumeMounts") || tail("containers.volumeMounts") => "mountPath",
        _ if tail("Containers.volumeDevices") || tail("containers.volumeDevices") => "devicePath",
        _ => return None,
    })
}

/// Lists of scalars that merge as sets rather than being replaced.
fn merges_as_set(path: &str) -> bool {
    path.trim_start_matches('.') == "metadata.finalizers"
}

fn merge_map(target: &mut Value, patch: &Value, path: &str) -> Result<(), String> {
    let patch = patch.as_object().ok_or("expected a map")?;
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replacement = patch.clone();
            replacement.remove("$patch");
            *target = Value::Object(strip_directives(replacement));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other}")),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let retain_keys: Option<Vec<String>> =
        patch
            .get("$retainKeys")
            .and_then(Value::as_array)
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            });
    let obj = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(remove)) =
                (obj.get_mut(field), value.as_array())
            {
                items.retain(|i| !remove.contains(i));
            }
            continue;
        }
        let child = format!("{path}.{key}");
        match value {
            Value::Null => {
                obj.remove(key);
            }
            Value::Object(_) => {
                let slot = obj.entry(key.clone()).or_insert(Value::Null);
                merge_map(slot, value, &child)?;
                if slot.is_null() {
                    obj.remove(key);
                }
            }
            Value::Array(items) => {
                let slot = obj.entry(key.clone()).or_insert(Value::Array(vec![]));
                merge_list(slot, items, &child)?;
            }
            scalar => {
                obj.insert(key.clone(), scalar.clone());
            }
        }
    }
    if let Some(keys) = retain_keys {
        obj.retain(|k, _| keys.contains(k));
    }
    Ok(())
}

fn merge_list(target: &mut Value, patch: &[Value], path: &str) -> Result<(), String> {
    let replace_whole = patch
        .iter()
        .any(|item| item.get("$patch").and_then(Value::as_str) == Some("replace"));
    if replace_whole {
        let kept = patch
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .map(strip_value_directives)
            .collect();
        *target = Value::Array(kept);
        return Ok(());
    }
    if merges_as_set(path) {
        let items = target.as_array_mut().ok_or("expected a list")?;
        for item in patch {
            if !items.contains(item) {
                items.push(item.clone());
            }
        }
        return Ok(());
    }
    let Some(key) = merge_key(path) else {
        *target = Value::Array(patch.iter().cloned().map(strip_value_directives).collect());
        return Ok(());
    };
    if !target.is_array() {
        *target = Value::Array(vec![]);
    }
    let items = target.as_array_mut().expect("made a list above");
    for item in patch {
        let id = item
            .get(key)
            .cloned()
            .ok_or_else(|| format!("map: {item} does not contain declared merge key: {key}"))?;
        let pos = items
            .iter()
            .position(|existing| existing.get(key) == Some(&id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                items.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => merge_map(&mut items[i], item, path)?,
            (None, false) => {
                let mut fresh = Value::Null;
                merge_map(&mut fresh, item, path)?;
                items.push(fresh);
            }
        }
    }
    Ok(())
}

fn strip_directives(mut map: Map<String, Value>) -> Map<String, Value> {
    map.retain(|k, _| !k.starts_with('$'));
    map.into_iter()
        .map(|(k, v)| (k, strip_value_directives(v)))
        .collect()
}

fn strip_value_directives(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(strip_directives(map)),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(strip_value_directives).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_merge_by_type_and_tolerations_are_replaced() {
        let pod = json!({
            "spec": {"tolerations": [{"key": "a"}], "containers": [{"name": "c", "image": "x"}]},
            "status": {"conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}]}
        });
        let patch = json!({
            "spec": {"tolerations": [{"key": "b"}], "containers": [{"name": "c", "image": "y"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let out = apply(&pod, &patch, PatchType::Strategic).unwrap();
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "b"}]));
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c", "image": "y"}])
        );
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}])
        );
    }

    #[test]
    fn directives_delete_and_replace() {
        let node = json!({"status": {"conditions": [{"type": "A"}, {"type": "B"}], "images": [1]}, "metadata": {"labels": {"x": "1", "y": "2"}}});
        let patch = json!({
            "status": {"conditions": [{"type": "A", "$patch": "delete"}], "$setElementOrder/conditions": [{"type": "B"}]},
            "metadata": {"labels": {"$patch": "replace", "z": "3"}}
        });
        let out = apply(&node, &patch, PatchType::Strategic).unwrap();
        assert_eq!(out["status"]["conditions"], json!([{"type": "B"}]));
        assert_eq!(out["metadata"]["labels"], json!({"z": "3"}));
        assert_eq!(out["status"]["images"], json!([1]));
    }

    #[test]
    fn finalizers_merge_as_a_set_and_null_deletes() {
        let obj = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1"}}});
        let out = apply(
            &obj,
            &json!({"metadata": {"finalizers": ["b"], "labels": {"x": null}}}),
            PatchType::Strategic,
        )
        .unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["metadata"]["labels"], json!({}));
    }
}
