//! Prometheus service discovery served by the API server:
//! `GET /sextant/v1/prometheus/sd/{node,pod,endpoints}` answers in Prometheus's
//! HTTP SD format (`http_sd_configs`) with the targets and `__meta_kubernetes_*`
//! labels that Prometheus's own `kubernetes_sd_configs` would find for the same
//! role, so the same relabelling works with either. Debian's Prometheus is built
//! without Kubernetes discovery; this needs nothing but HTTP SD (Prometheus 2.28+).

use axum::{
    Json,
    extract::{Path, State},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

use crate::{
    resources,
    server::AppState,
    status::ApiError,
    storage::{self, Store},
};

/// One HTTP SD target group: here always one target with its labels.
#[derive(Debug, Serialize, PartialEq)]
pub struct TargetGroup {
    /// `host:port` (or a bare host for a container without ports).
    pub targets: Vec<String>,
    /// Discovery labels.
    pub labels: BTreeMap<String, String>,
}

/// `GET /sextant/v1/prometheus/sd/{role}`.
pub async fn targets(State(state): State<AppState>, Path(role): Path<String>) -> Response {
    match discover(state.store.as_ref(), &role).await {
        Ok(groups) => Json(groups).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn discover(store: &dyn Store, role: &str) -> Result<Vec<TargetGroup>, ApiError> {
    Ok(match role {
        "node" => list(store, "nodes")
            .await?
            .iter()
            .filter_map(node)
            .collect(),
        "pod" => list(store, "pods").await?.iter().flat_map(pod).collect(),
        "endpoints" => {
            let services = list(store, "services").await?;
            list(store, "endpoints")
                .await?
                .iter()
                .flat_map(|e| endpoints(e, &services))
                .collect()
        }
        other => {
            return Err(ApiError::not_found(
                "sextant",
                "prometheus/sd",
                &format!("{other} (roles: node, pod, endpoints)"),
            ));
        }
    })
}

/// Every stored object of the core `plural`, in all namespaces.
async fn list(store: &dyn Store, plural: &str) -> Result<Vec<Value>, ApiError> {
    let rt = resources::find("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("no core resource {plural}")))?;
    Ok(storage::list_json(store, rt.prefix(None)).await?)
}

/// Prometheus's label-name sanitizing: anything but `[a-zA-Z0-9_]` becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `<prefix>_label_<name>`, `<prefix>_labelpresent_<name>` and the same for
/// annotations, from `metadata`.
fn metadata_labels(labels: &mut BTreeMap<String, String>, prefix: &str, metadata: &Value) {
    for (kind, field) in [("label", "labels"), ("annotation", "annotations")] {
        if let Some(map) = metadata[field].as_object() {
            for (k, v) in map {
                let k = sanitize(k);
                labels.insert(format!("{prefix}_{kind}_{k}"), text(v));
                labels.insert(format!("{prefix}_{kind}present_{k}"), "true".into());
            }
        }
    }
}

/// The node's kubelet: its first address by Prometheus's preference, on the
/// kubelet port from `daemonEndpoints`.
fn node(n: &Value) -> Option<TargetGroup> {
    let name = n["metadata"]["name"].as_str()?;
    let addresses = n["status"]["addresses"].as_array()?;
    let first_of = |t: &str| {
        addresses
            .iter()
            .find(|a| a["type"] == t)
            .and_then(|a| a["address"].as_str())
    };
    let host = [
        "InternalIP",
        "InternalDNS",
        "ExternalDNS",
        "ExternalIP",
        "Hostname",
    ]
    .into_iter()
    .find_map(first_of)?;
    let port = n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| *p > 0)
        .unwrap_or(10250);
    let mut labels = BTreeMap::new();
    labels.insert("instance".into(), name.to_owned());
    labels.insert("__meta_kubernetes_node_name".into(), name.to_owned());
    labels.insert(
        "__meta_kubernetes_node_provider_id".into(),
        text(&n["spec"]["providerID"]),
    );
    metadata_labels(&mut labels, "__meta_kubernetes_node", &n["metadata"]);
    for a in addresses {
        if let (Some(t), Some(addr)) = (a["type"].as_str(), a["address"].as_str()) {
            labels
                .entry(format!("__meta_kubernetes_node_address_{}", sanitize(t)))
                .or_insert_with(|| addr.to_owned());
        }
    }
    Some(TargetGroup {
        targets: vec![format!("{host}:{port}")],
        labels,
    })
}

/// One target per container port of a pod with an IP; a container without
/// ports gets one port-less target.
fn pod(p: &Value) -> Vec<TargetGroup> {
    let Some(ip) = p["status"]["podIP"].as_str().filter(|ip| !ip.is_empty()) else {
        return Vec::new();
    };
    let meta = &p["metadata"];
    let mut common = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        common.insert(format!("__meta_kubernetes_{k}"), v);
    };
    put("namespace", text(&meta["namespace"]));
    put("pod_name", text(&meta["name"]));
    put("pod_uid", text(&meta["uid"]));
    put("pod_ip", ip.to_owned());
    put("pod_node_name", text(&p["spec"]["nodeName"]));
    put("pod_host_ip", text(&p["status"]["hostIP"]));
    put("pod_phase", text(&p["status"]["phase"]));
    let ready = p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| text(&c["status"]).to_lowercase())
        .unwrap_or_else(|| "unknown".into());
    put("pod_ready", ready);
    if let Some(owner) = meta["ownerReferences"]
        .as_array()
        .and_then(|os| os.iter().find(|o| o["controller"] == true))
    {
        put("pod_controller_kind", text(&owner["kind"]));
        put("pod_controller_name", text(&owner["name"]));
    }
    metadata_labels(&mut common, "__meta_kubernetes_pod", meta);
    let mut out = Vec::new();
    for c in p["spec"]["containers"].as_array().into_iter().flatten() {
        let mut labels = common.clone();
        labels.insert(
            "__meta_kubernetes_pod_container_name".into(),
            text(&c["name"]),
        );
        labels.insert(
            "__meta_kubernetes_pod_container_image".into(),
            text(&c["image"]),
        );
        labels.insert(
            "__meta_kubernetes_pod_container_init".into(),
            "false".into(),
        );
        let ports = c["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if ports.is_empty() {
            out.push(TargetGroup {
                targets: vec![ip.to_owned()],
                labels,
            });
            continue;
        }
        for port in ports {
            let mut labels = labels.clone();
            let number = text(&port["containerPort"]);
            labels.insert(
                "__meta_kubernetes_pod_container_port_name".into(),
                text(&port["name"]),
            );
            labels.insert(
                "__meta_kubernetes_pod_container_port_number".into(),
                number.clone(),
            );
            let protocol = port["protocol"].as_str().unwrap_or("TCP").to_owned();
            labels.insert(
                "__meta_kubernetes_pod_container_port_protocol".into(),
                protocol,
            );
            out.push(TargetGroup {
                targets: vec![format!("{ip}:{number}")],
                labels,
            });
        }
    }
    out
}

/// One target per address × port of an Endpoints object, with its Service's
/// labels and annotations.
fn endpoints(e: &Value, services: &[Value]) -> Vec<TargetGroup> {
    let meta = &e["metadata"];
    let (ns, name) = (text(&meta["namespace"]), text(&meta["name"]));
    let mut common = BTreeMap::new();
    common.insert("__meta_kubernetes_namespace".into(), ns.clone());
    common.insert("__meta_kubernetes_endpoints_name".into(), name.clone());
    metadata_labels(&mut common, "__meta_kubernetes_endpoints", meta);
    if let Some(svc) = services.iter().find(|s| {
        s["metadata"]["namespace"].as_str() == Some(&ns)
            && s["metadata"]["name"].as_str() == Some(&name)
    }) {
        common.insert("__meta_kubernetes_service_name".into(), name.clone());
        metadata_labels(&mut common, "__meta_kubernetes_service", &svc["metadata"]);
    }
    let mut out = Vec::new();
    for subset in e["subsets"].as_array().into_iter().flatten() {
        for (field, ready) in [("addresses", "true"), ("notReadyAddresses", "false")] {
            for addr in subset[field].as_array().into_iter().flatten() {
                let Some(ip) = addr["ip"].as_str() else {
                    continue;
                };
                for port in subset["ports"].as_array().into_iter().flatten() {
                    let mut labels = common.clone();
                    labels.insert(
                        "__meta_kubernetes_endpoint_port_name".into(),
                        text(&port["name"]),
                    );
                    labels.insert(
                        "__meta_kubernetes_endpoint_port_protocol".into(),
                        port["protocol"].as_str().unwrap_or("TCP").to_owned(),
                    );
                    labels.insert("__meta_kubernetes_endpoint_ready".into(), ready.into());
                    if let Some(node) = addr["nodeName"].as_str() {
                        labels.insert("__meta_kubernetes_endpoint_node_name".into(), node.into());
                    }
                    if let Some(t) = addr["targetRef"].as_object() {
                        labels.insert(
                            "__meta_kubernetes_endpoint_address_target_kind".into(),
                            text(&t["kind"]),
                        );
                        labels.insert(
                            "__meta_kubernetes_endpoint_address_target_name".into(),
                            text(&t["name"]),
                        );
                    }
                    out.push(TargetGroup {
                        targets: vec![format!("{ip}:{}", text(&port["port"]))],
                        labels,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn an_unknown_role_is_a_404_naming_the_roles() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::storage::embedded::EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let err = discover(&store, "ingress").await.unwrap_err();
        assert_eq!(err.code, 404);
        assert!(
            err.message.contains("roles: node, pod, endpoints"),
            "{}",
            err.message
        );
        assert!(discover(&store, "node").await.unwrap().is_empty());
    }

    #[test]
    fn a_node_is_its_kubelet_with_kubernetes_sd_labels() {
        let n = json!({
            "metadata": {"name": "n1", "labels": {"kubernetes.io/os": "linux"}},
            "status": {
                "addresses": [
                    {"type": "Hostname", "address": "n1"},
                    {"type": "InternalIP", "address": "10.0.0.5"}
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}
            }
        });
        let g = node(&n).unwrap();
        assert_eq!(g.targets, ["10.0.0.5:10250"]);
        assert_eq!(g.labels["instance"], "n1");
        assert_eq!(
            g.labels["__meta_kubernetes_node_label_kubernetes_io_os"],
            "linux"
        );
        assert_eq!(
            g.labels["__meta_kubernetes_node_labelpresent_kubernetes_io_os"],
            "true"
        );
        assert_eq!(
            g.labels["__meta_kubernetes_node_address_InternalIP"],
            "10.0.0.5"
        );
    }

    #[test]
    fn a_pod_gives_one_target_per_port_and_one_for_a_portless_container() {
        let p = json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "u",
                "annotations": {"prometheus.io/scrape": "true"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "web", "image": "demo", "ports": [{"containerPort": 8080, "name": "http"}]},
                {"name": "side", "image": "busybox"}
            ]},
            "status": {"podIP": "10.42.0.7", "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let gs = pod(&p);
        assert_eq!(gs.len(), 2);
        assert_eq!(gs[0].targets, ["10.42.0.7:8080"]);
        assert_eq!(
            gs[0].labels["__meta_kubernetes_pod_container_port_name"],
            "http"
        );
        assert_eq!(
            gs[0].labels["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
            "true"
        );
        assert_eq!(gs[0].labels["__meta_kubernetes_pod_ready"], "true");
        assert_eq!(
            gs[0].labels["__meta_kubernetes_pod_controller_kind"],
            "ReplicaSet"
        );
        assert_eq!(gs[1].targets, ["10.42.0.7"]);
        assert_eq!(gs[1].labels["__meta_kubernetes_pod_container_name"], "side");
        // No IP yet: nothing to scrape.
        assert!(pod(&json!({"metadata": {"name": "x"}, "status": {}})).is_empty());
    }

    #[test]
    fn endpoints_carry_readiness_and_the_service() {
        let e = json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": "10.0.0.1"}],
                "notReadyAddresses": [{"ip": "10.0.0.2", "nodeName": "n2"}],
                "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
            }]
        });
        let svc = json!({"metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"component": "apiserver"}}});
        let gs = endpoints(&e, &[svc]);
        assert_eq!(gs.len(), 2);
        assert_eq!(gs[0].targets, ["10.0.0.1:6443"]);
        assert_eq!(gs[0].labels["__meta_kubernetes_service_name"], "kubernetes");
        assert_eq!(
            gs[0].labels["__meta_kubernetes_endpoint_port_name"],
            "https"
        );
        assert_eq!(gs[0].labels["__meta_kubernetes_endpoint_ready"], "true");
        assert_eq!(
            gs[0].labels["__meta_kubernetes_service_label_component"],
            "apiserver"
        );
        assert_eq!(gs[1].labels["__meta_kubernetes_endpoint_ready"], "false");
        assert_eq!(gs[1].labels["__meta_kubernetes_endpoint_node_name"], "n2");
    }
}
