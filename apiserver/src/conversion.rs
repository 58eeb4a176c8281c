//! Versions served from another version's storage, as upstream does:
//! `events.k8s.io/v1` Events are stored as core/v1 Events, and
//! `autoscaling/v1` HorizontalPodAutoscalers as `autoscaling/v2` ones. Objects are
//! converted on the way out of the store (get, list, watch) and on the way in
//! (create, update, patch), so every version sees every write.
//!
//! The field mappings follow upstream's conversion functions
//! (`pkg/apis/events/v1`, `pkg/apis/autoscaling/v1`); what `autoscaling/v1` cannot
//! express (other metrics, behavior, conditions) travels in upstream's
//! `autoscaling.alpha.kubernetes.io/*` annotations, so a v1 round trip loses nothing.

use serde_json::{Map, Value, json};

use crate::resources::ResourceType;

const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

/// core/v1 Event field ↔ events.k8s.io/v1 Event field.
const EVENT_FIELDS: [(&str, &str); 10] = [
    ("involvedObject", "regarding"),
    ("related", "related"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("reportingInstance", "reportingInstance"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("eventTime", "eventTime"),
];

/// Fields both Event versions share.
const EVENT_SAME: [&str; 5] = ["metadata", "series", "action", "reason", "type"];

/// The stored object `obj` as `rt` serves it.
pub fn to_served(rt: &ResourceType, obj: Value) -> Value {
    match (rt.group, rt.version, rt.kind) {
        ("events.k8s.io", "v1", "Event") => event(obj, false),
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => hpa_to_v1(obj),
        _ => obj,
    }
}

/// `obj`, an object of `rt`, in its storage version.
pub fn to_stored(rt: &ResourceType, obj: Value) -> Value {
    match (rt.group, rt.version, rt.kind) {
        ("events.k8s.io", "v1", "Event") => event(obj, true),
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => hpa_to_v2(obj),
        _ => obj,
    }
}

/// core/v1 → events.k8s.io/v1, or the reverse with `to_core`.
fn event(obj: Value, to_core: bool) -> Value {
    let Value::Object(mut from) = obj else {
        return obj;
    };
    let mut out = Map::new();
    out.insert(
        "apiVersion".into(),
        json!(if to_core { "v1" } else { "events.k8s.io/v1" }),
    );
    out.insert("kind".into(), json!("Event"));
    for f in EVENT_SAME {
        if let Some(v) = from.remove(f) {
            out.insert(f.into(), v);
        }
    }
    for (core, events) in EVENT_FIELDS {
        let (src, dst) = if to_core {
            (events, core)
        } else {
            (core, events)
        };
        if let Some(v) = from.remove(src).filter(|v| !v.is_null()) {
            out.insert(dst.into(), v);
        }
    }
    Value::Object(out)
}

fn annotations(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let meta = obj.get_mut("metadata")?.as_object_mut()?;
    meta.entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
}

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["type"] == "Utilization"
}

/// autoscaling/v2 (stored) → autoscaling/v1.
fn hpa_to_v1(mut obj: Value) -> Value {
    let spec = obj["spec"].take();
    let status = obj["status"].take();
    let metrics: Vec<Value> = spec["metrics"].as_array().cloned().unwrap_or_default();
    let (cpu, others): (Vec<Value>, Vec<Value>) = metrics.into_iter().partition(is_cpu_utilization);
    let mut v1_spec = json!({
        "scaleTargetRef": spec["scaleTargetRef"],
        "maxReplicas": spec["maxReplicas"],
    });
    if !spec["minReplicas"].is_null() {
        v1_spec["minReplicas"] = spec["minReplicas"].clone();
    }
    if let Some(u) = cpu
        .first()
        .map(|m| m["resource"]["target"]["averageUtilization"].clone())
    {
        v1_spec["targetCPUUtilizationPercentage"] = u;
    }
    let current: Vec<Value> = status["currentMetrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let current_cpu = current
        .iter()
        .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
        .map(|m| m["resource"]["current"]["averageUtilization"].clone());
    let mut v1_status = json!({
        "currentReplicas": status["currentReplicas"].as_i64().unwrap_or(0),
        "desiredReplicas": status["desiredReplicas"].as_i64().unwrap_or(0),
    });
    for f in ["lastScaleTime", "observedGeneration"] {
        if !status[f].is_null() {
            v1_status[f] = status[f].clone();
        }
    }
    if let Some(c) = current_cpu.filter(|c| !c.is_null()) {
        v1_status["currentCPUUtilizationPercentage"] = c;
    }
    let extras = [
        (
            METRICS_ANNOTATION,
            (!others.is_empty()).then(|| json!(others)),
        ),
        (
            BEHAVIOR_ANNOTATION,
            Some(spec["behavior"].clone()).filter(|b| !b.is_null()),
        ),
        (
            CONDITIONS_ANNOTATION,
            Some(status["conditions"].clone()).filter(|c| !c.is_null()),
        ),
        (
            CURRENT_METRICS_ANNOTATION,
            (!current.is_empty()).then(|| json!(current)),
        ),
    ];
    if let Some(a) = annotations(&mut obj) {
        for (key, value) in extras {
            match value {
                Some(v) => {
                    a.insert(key.into(), json!(v.to_string()));
                }
                None => {
                    a.remove(key);
                }
            }
        }
    }
    if obj["metadata"]["annotations"]
        .as_object()
        .is_some_and(Map::is_empty)
        && let Some(m) = obj["metadata"].as_object_mut()
    {
        m.remove("annotations");
    }
    obj["apiVersion"] = json!("autoscaling/v1");
    obj["spec"] = v1_spec;
    obj["status"] = v1_status;
    obj
}

/// autoscaling/v1 → autoscaling/v2 (stored).
fn hpa_to_v2(mut obj: Value) -> Value {
    let spec = obj["spec"].take();
    let status = obj["status"].take();
    let mut taken = |key: &str| -> Option<Value> {
        let a = annotations(&mut obj)?;
        let raw = a.remove(key)?;
        serde_json::from_str(raw.as_str()?).ok()
    };
    let mut metrics: Vec<Value> = taken(METRICS_ANNOTATION)
        .and_then(|m| m.as_array().cloned())
        .unwrap_or_default();
    let behavior = taken(BEHAVIOR_ANNOTATION);
    let conditions = taken(CONDITIONS_ANNOTATION);
    let current: Vec<Value> = taken(CURRENT_METRICS_ANNOTATION)
        .and_then(|m| m.as_array().cloned())
        .unwrap_or_default();
    if let Some(u) = spec["targetCPUUtilizationPercentage"].as_i64() {
        metrics.insert(
            0,
            json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": u}}}),
        );
    }
    let mut v2_spec = json!({
        "scaleTargetRef": spec["scaleTargetRef"],
        "maxReplicas": spec["maxReplicas"],
    });
    if !spec["minReplicas"].is_null() {
        v2_spec["minReplicas"] = spec["minReplicas"].clone();
    }
    if !metrics.is_empty() {
        v2_spec["metrics"] = json!(metrics);
    }
    if let Some(b) = behavior {
        v2_spec["behavior"] = b;
    }
    let mut v2_status = json!({"desiredReplicas": status["desiredReplicas"].as_i64().unwrap_or(0)});
    for f in ["currentReplicas", "lastScaleTime", "observedGeneration"] {
        if !status[f].is_null() {
            v2_status[f] = status[f].clone();
        }
    }
    if !current.is_empty() {
        v2_status["currentMetrics"] = json!(current);
    }
    if let Some(c) = conditions {
        v2_status["conditions"] = c;
    }
    if obj["metadata"]["annotations"]
        .as_object()
        .is_some_and(Map::is_empty)
        && let Some(m) = obj["metadata"].as_object_mut()
    {
        m.remove("annotations");
    }
    obj["apiVersion"] = json!("autoscaling/v2");
    obj["spec"] = v2_spec;
    obj["status"] = v2_status;
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn events_map_fields_both_ways() {
        let rt = find("events.k8s.io", "v1", "events").unwrap();
        let core = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p"},
            "reason": "Started", "message": "Started container c", "type": "Normal",
            "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:00:01Z", "count": 2,
            "reportingComponent": "kubelet", "reportingInstance": "n1",
        });
        let served = to_served(rt, core.clone());
        assert_eq!(served["apiVersion"], "events.k8s.io/v1");
        assert_eq!(served["regarding"]["name"], "p");
        assert_eq!(served["note"], "Started container c");
        assert_eq!(served["deprecatedCount"], 2);
        assert_eq!(served["reportingController"], "kubelet");
        assert_eq!(to_stored(rt, served), core);
    }

    #[test]
    fn hpa_v1_round_trips_through_v2() {
        let rt = find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let v2 = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                "minReplicas": 2, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                ],
            },
            "status": {"currentReplicas": 2, "desiredReplicas": 3,
                       "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 91}}}]},
        });
        let v1 = to_served(rt, v2.clone());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 80);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 91);
        assert!(
            v1["metadata"]["annotations"][METRICS_ANNOTATION]
                .as_str()
                .unwrap()
                .contains("memory")
        );
        assert_eq!(to_stored(rt, v1), v2);
        // A plain v1 object becomes a v2 CPU metric.
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
                        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50}});
        let v2 = to_stored(rt, v1);
        assert_eq!(
            v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            50
        );
    }
}
