//! Conversion between core/v1 Events (the stored form) and events.k8s.io/v1 Events, which the real
//! server serves from the same storage.

use serde_json::{Map, Value, json};

fn copy(from: &Value, to: &mut Map<String, Value>, pairs: &[(&str, &str)]) {
    for (src, dst) in pairs {
        if !from[*src].is_null() {
            to.insert(dst.to_string(), from[*src].clone());
        }
    }
}

/// Renders a stored core/v1 Event as an events.k8s.io/v1 Event.
pub fn to_events_v1(core: &Value) -> Value {
    let mut out = Map::new();
    copy(
        core,
        &mut out,
        &[
            ("metadata", "metadata"),
            ("message", "note"),
            ("involvedObject", "regarding"),
            ("reason", "reason"),
            ("type", "type"),
            ("action", "action"),
            ("related", "related"),
            ("eventTime", "eventTime"),
            ("source", "deprecatedSource"),
            ("firstTimestamp", "deprecatedFirstTimestamp"),
            ("lastTimestamp", "deprecatedLastTimestamp"),
            ("count", "deprecatedCount"),
            ("series", "series"),
        ],
    );
    let controller = core["reportingComponent"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from)
        .or_else(|| core["source"]["component"].as_str().map(String::from));
    let instance = core["reportingInstance"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from)
        .or_else(|| core["source"]["host"].as_str().map(String::from));
    if let Some(c) = controller {
        out.insert("reportingController".into(), json!(c));
    }
    if let Some(i) = instance {
        out.insert("reportingInstance".into(), json!(i));
    }
    out.insert("apiVersion".into(), json!("events.k8s.io/v1"));
    out.insert("kind".into(), json!("Event"));
    Value::Object(out)
}

/// Stores an events.k8s.io/v1 Event as a core/v1 Event.
pub fn to_core(new: &Value) -> Value {
    let mut out = Map::new();
    copy(
        new,
        &mut out,
        &[
            ("metadata", "metadata"),
            ("note", "message"),
            ("regarding", "involvedObject"),
            ("reason", "reason"),
            ("type", "type"),
            ("action", "action"),
            ("related", "related"),
            ("eventTime", "eventTime"),
            ("reportingController", "reportingComponent"),
            ("reportingInstance", "reportingInstance"),
            ("deprecatedFirstTimestamp", "firstTimestamp"),
            ("deprecatedLastTimestamp", "lastTimestamp"),
            ("deprecatedCount", "count"),
            ("series", "series"),
        ],
    );
    let source = if new["deprecatedSource"].is_object() {
        new["deprecatedSource"].clone()
    } else {
        json!({"component": new["reportingController"], "host": new["reportingInstance"]})
    };
    out.insert("source".into(), source);
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Event"));
    let mut v = Value::Object(out);
    super::semantics::strip_nulls(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_what_kubectl_shows() {
        let core = json!({"metadata": {"name": "e"}, "message": "Pulling image", "reason": "Pulling", "type": "Normal",
            "involvedObject": {"kind": "Pod", "name": "p"}, "source": {"component": "kubelet", "host": "n1"}, "count": 2});
        let v1 = to_events_v1(&core);
        assert_eq!(v1["note"], "Pulling image");
        assert_eq!(v1["reportingController"], "kubelet");
        let back = to_core(&v1);
        for key in [
            "message",
            "reason",
            "type",
            "involvedObject",
            "source",
            "count",
        ] {
            assert_eq!(back[key], core[key], "{key}");
        }
    }
}
