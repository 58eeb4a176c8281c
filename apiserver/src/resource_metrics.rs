//! `metrics.k8s.io/v1beta1` (NodeMetrics, PodMetrics), served by the API server
//! itself from each node's kubelet Summary API (`/stats/summary`), as
//! metrics-server computes it but without a separate deployment or aggregation
//! layer: `kubectl top` and the HorizontalPodAutoscaler read it. Read-only:
//! `get` and `list` (with `labelSelector`); nothing is stored.

use std::sync::Arc;

use axum::{
    extract::{Path, RawQuery, State},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    kubelet_proxy::KubeletClient,
    resources,
    selectors::LabelSelector,
    server::AppState,
    status::ApiError,
    storage::{self, Store},
};

/// The group.
pub const GROUP: &str = "metrics.k8s.io";
/// The version.
pub const VERSION: &str = "v1beta1";
const API_VERSION: &str = "metrics.k8s.io/v1beta1";
/// The window kubelets compute CPU rates over (their sampling period).
const WINDOW: &str = "10s";

/// The resources of the group, for discovery: (plural, singular, kind, namespaced).
pub const RESOURCES: [(&str, &str, &str, bool); 2] = [
    ("nodes", "", "NodeMetrics", false),
    ("pods", "", "PodMetrics", true),
];

/// `GET /apis/metrics.k8s.io/v1beta1`.
pub async fn resource_list() -> Response {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .map(|(plural, singular, kind, namespaced)| {
            json!({"name": plural, "singularName": singular, "namespaced": namespaced,
                   "kind": kind, "verbs": ["get", "list"]})
        })
        .collect();
    axum::Json(json!({"kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": API_VERSION, "resources": resources}))
    .into_response()
}

/// What a request under the group asks for.
#[derive(Debug, PartialEq)]
enum Request {
    Nodes(Option<String>),
    Pods {
        namespace: Option<String>,
        name: Option<String>,
    },
}

fn parse(rest: &str) -> Option<Request> {
    let parts: Vec<&str> = rest.trim_matches('/').split('/').collect();
    Some(match parts.as_slice() {
        ["nodes"] => Request::Nodes(None),
        ["nodes", name] => Request::Nodes(Some((*name).to_owned())),
        ["pods"] => Request::Pods {
            namespace: None,
            name: None,
        },
        ["namespaces", ns, "pods"] => Request::Pods {
            namespace: Some((*ns).to_owned()),
            name: None,
        },
        ["namespaces", ns, "pods", name] => Request::Pods {
            namespace: Some((*ns).to_owned()),
            name: Some((*name).to_owned()),
        },
        _ => return None,
    })
}

/// `GET /apis/metrics.k8s.io/v1beta1/...`.
pub async fn handle(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let selector = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "labelSelector")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let result = async {
        let selector = LabelSelector::parse(&selector).map_err(ApiError::bad_request)?;
        let request = parse(&rest).ok_or_else(ApiError::no_route)?;
        serve(&state.store, &state.kubelet, request, &selector).await
    };
    match result.await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn stored(
    store: &Arc<dyn Store>,
    plural: &str,
    ns: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    let rt = resources::find("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("no core resource {plural}")))?;
    Ok(storage::list_json(store.as_ref(), rt.prefix(ns)).await?)
}

async fn serve(
    store: &Arc<dyn Store>,
    kubelet: &KubeletClient,
    request: Request,
    selector: &LabelSelector,
) -> Result<Value, ApiError> {
    let nodes = stored(store, "nodes", None).await?;
    let summaries = futures::future::join_all(nodes.iter().map(|n| kubelet.summary(n))).await;
    let summaries: Vec<Value> = summaries.into_iter().flatten().collect();
    match request {
        Request::Nodes(name) => {
            let items: Vec<Value> = nodes
                .iter()
                .filter(|n| selector.matches(n))
                .filter(|n| name.as_deref().is_none_or(|w| n["metadata"]["name"] == w))
                .filter_map(|n| {
                    let node = n["metadata"]["name"].as_str()?;
                    let s = summaries.iter().find(|s| s["node"]["nodeName"] == node)?;
                    node_metrics(n, s)
                })
                .collect();
            one_or_list(name.as_deref(), "nodes", "NodeMetricsList", items)
        }
        Request::Pods { namespace, name } => {
            let pods = stored(store, "pods", namespace.as_deref()).await?;
            let items: Vec<Value> = pods
                .iter()
                .filter(|p| selector.matches(p))
                .filter(|p| name.as_deref().is_none_or(|w| p["metadata"]["name"] == w))
                .filter_map(|p| {
                    let (ns, pod) = (
                        p["metadata"]["namespace"].as_str()?,
                        p["metadata"]["name"].as_str()?,
                    );
                    let s = summaries.iter().find_map(|s| {
                        s["pods"].as_array()?.iter().find(|sp| {
                            sp["podRef"]["namespace"] == ns && sp["podRef"]["name"] == pod
                        })
                    })?;
                    pod_metrics(p, s)
                })
                .collect();
            one_or_list(name.as_deref(), "pods", "PodMetricsList", items)
        }
    }
}

/// The one object a `get` asked for (404 when the kubelets have no figures for
/// it, as metrics-server answers), or the list.
fn one_or_list(
    name: Option<&str>,
    plural: &str,
    list_kind: &str,
    mut items: Vec<Value>,
) -> Result<Value, ApiError> {
    match name {
        Some(n) => items
            .pop()
            .ok_or_else(|| ApiError::not_found(GROUP, plural, n)),
        None => Ok(json!({"kind": list_kind, "apiVersion": API_VERSION,
            "metadata": {}, "items": items})),
    }
}

/// CPU in nanocores and memory (working set) in Ki, as metrics-server writes them.
fn usage(cpu_nano_cores: u64, working_set_bytes: u64) -> Value {
    json!({"cpu": format!("{cpu_nano_cores}n"), "memory": format!("{}Ki", working_set_bytes / 1024)})
}

fn node_metrics(node: &Value, summary: &Value) -> Option<Value> {
    let s = &summary["node"];
    let cpu = s["cpu"]["usageNanoCores"].as_u64()?;
    let memory = s["memory"]["workingSetBytes"].as_u64()?;
    Some(json!({
        "kind": "NodeMetrics", "apiVersion": API_VERSION,
        "metadata": {"name": node["metadata"]["name"], "labels": node["metadata"]["labels"],
            "creationTimestamp": s["cpu"]["time"]},
        "timestamp": s["cpu"]["time"], "window": WINDOW,
        "usage": usage(cpu, memory),
    }))
}

/// A pod's metrics, when every container has a CPU rate (a container's first
/// sample has none yet: metrics-server skips such pods too).
fn pod_metrics(pod: &Value, summary: &Value) -> Option<Value> {
    let containers: Option<Vec<Value>> = summary["containers"]
        .as_array()?
        .iter()
        .map(|c| {
            Some(json!({"name": c["name"], "usage": usage(
                c["cpu"]["usageNanoCores"].as_u64()?,
                c["memory"]["workingSetBytes"].as_u64()?,
            )}))
        })
        .collect();
    let containers = containers?;
    if containers.is_empty() {
        return None;
    }
    let time = &summary["cpu"]["time"];
    Some(json!({
        "kind": "PodMetrics", "apiVersion": API_VERSION,
        "metadata": {"name": pod["metadata"]["name"], "namespace": pod["metadata"]["namespace"],
            "labels": pod["metadata"]["labels"], "creationTimestamp": time},
        "timestamp": time, "window": WINDOW,
        "containers": containers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_requests() {
        assert_eq!(parse("nodes"), Some(Request::Nodes(None)));
        assert_eq!(parse("nodes/n1"), Some(Request::Nodes(Some("n1".into()))));
        assert_eq!(
            parse("namespaces/default/pods"),
            Some(Request::Pods {
                namespace: Some("default".into()),
                name: None
            })
        );
        assert_eq!(parse("namespaces/default/pods/x/extra"), None);
    }

    #[test]
    fn figures_are_quantities_and_a_pod_without_rates_is_skipped() {
        let pod = json!({"metadata": {"name": "web", "namespace": "default"}});
        let summary = json!({
            "podRef": {"name": "web", "namespace": "default"},
            "cpu": {"time": "2026-11-22T00:00:00Z"},
            "containers": [{"name": "main",
                "cpu": {"usageNanoCores": 2_500_000},
                "memory": {"workingSetBytes": 4_194_304}}]
        });
        let m = pod_metrics(&pod, &summary).unwrap();
        assert_eq!(m["containers"][0]["usage"]["cpu"], "2500000n");
        assert_eq!(m["containers"][0]["usage"]["memory"], "4096Ki");
        let first_sample =
            json!({"containers": [{"name": "main", "cpu": {}, "memory": {"workingSetBytes": 1}}]});
        assert!(pod_metrics(&pod, &first_sample).is_none());
    }
}
