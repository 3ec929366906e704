//! The RuntimeClass admission plugin, as the real API server runs it on pod creation: a pod
//! naming a RuntimeClass that does not exist is refused; the class's `overhead.podFixed` becomes
//! the pod's `overhead`; its `scheduling.nodeSelector` is merged into the pod's (a conflicting
//! key refuses the pod) and its `scheduling.tolerations` are added to the pod's.

use super::response::{self, ApiError};
use super::store::State;
use http::StatusCode;
use serde_json::{Value, json};

/// Applies the RuntimeClass `pod` names, if any.
pub fn admit(state: &State, pod_name: &str, pod: &mut Value) -> Result<(), ApiError> {
    let Some(class_name) = pod["spec"]["runtimeClassName"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(str::to_string)
    else {
        return Ok(());
    };
    let refuse = |why: String| {
        response::status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("pods \"{pod_name}\" is forbidden: pod rejected: {why}"),
            Some(response::details(pod_name, "", "pods")),
        )
    };
    let Some(class) = state.get("runtimeclasses", "", &class_name) else {
        return Err(refuse(format!("RuntimeClass \"{class_name}\" not found")));
    };
    let fixed = &class["overhead"]["podFixed"];
    if fixed.is_object() {
        match &pod["spec"]["overhead"] {
            Value::Null => pod["spec"]["overhead"] = fixed.clone(),
            given if given == fixed => {}
            _ => {
                return Err(refuse(
                    "Pod's Overhead doesn't match RuntimeClass's defined Overhead".into(),
                ));
            }
        }
    }
    let scheduling = &class["scheduling"];
    if let Some(selector) = scheduling["nodeSelector"].as_object() {
        if !pod["spec"]["nodeSelector"].is_object() {
            pod["spec"]["nodeSelector"] = json!({});
        }
        for (key, value) in selector {
            let ours = &mut pod["spec"]["nodeSelector"][key];
            match ours {
                Value::Null => *ours = value.clone(),
                given if given == value => {}
                given => {
                    return Err(refuse(format!(
                        "conflict: runtimeClass.scheduling.nodeSelector[{key}] = {}; pod.spec.nodeSelector[{key}] = {}",
                        value.as_str().unwrap_or_default(),
                        given.as_str().unwrap_or_default()
                    )));
                }
            }
        }
    }
    if let Some(tolerations) = scheduling["tolerations"].as_array() {
        if !pod["spec"]["tolerations"].is_array() {
            pod["spec"]["tolerations"] = json!([]);
        }
        let ours = pod["spec"]["tolerations"]
            .as_array_mut()
            .expect("made an array above");
        for toleration in tolerations {
            if !ours.contains(toleration) {
                ours.push(toleration.clone());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `check` on a state holding `class`.
    fn with_class(class: Value, check: impl FnOnce(&State)) {
        let store = super::super::store::Store::default();
        store.write(|state| {
            state.put("runtimeclasses", class);
            check(state);
        });
    }

    #[test]
    fn the_class_scheduling_and_overhead_are_merged_into_the_pod() {
        let class = json!({
            "metadata": {"name": "wasmtime-spin-v2"}, "handler": "spin",
            "overhead": {"podFixed": {"cpu": "10m"}},
            "scheduling": {
                "nodeSelector": {"kubernetes.io/arch": "wasm32-wasi"},
                "tolerations": [{"key": "krustlet/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoExecute"}],
            },
        });
        with_class(class, |state| {
            let mut pod = json!({"spec": {"runtimeClassName": "wasmtime-spin-v2", "containers": [],
            "tolerations": [{"key": "a", "operator": "Exists"}]}});
            admit(state, "p", &mut pod).unwrap();
            assert_eq!(
                pod["spec"]["nodeSelector"]["kubernetes.io/arch"],
                "wasm32-wasi"
            );
            assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
            assert_eq!(pod["spec"]["overhead"]["cpu"], "10m");
            // Admitted again, nothing is added twice.
            admit(state, "p", &mut pod).unwrap();
            assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
        });
    }

    #[test]
    fn a_missing_class_or_a_conflicting_selector_refuses_the_pod() {
        let class = json!({"metadata": {"name": "c"}, "handler": "spin",
            "scheduling": {"nodeSelector": {"zone": "a"}}});
        with_class(class, |state| {
            let mut pod = json!({"spec": {"runtimeClassName": "nope"}});
            let refused = admit(state, "p", &mut pod).unwrap_err();
            assert!(
                format!("{refused:?}").contains("RuntimeClass \\\"nope\\\" not found"),
                "{refused:?}"
            );
            let mut pod = json!({"spec": {"runtimeClassName": "c", "nodeSelector": {"zone": "b"}}});
            let refused = admit(state, "p", &mut pod).unwrap_err();
            assert!(format!("{refused:?}").contains("conflict"), "{refused:?}");
            let mut plain = json!({"spec": {}});
            admit(state, "p", &mut plain).unwrap();
        });
    }
}
