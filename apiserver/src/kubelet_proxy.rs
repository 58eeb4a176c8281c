//! The pod subresources served by the pod's kubelet
//! (`https://<InternalIP>:<kubeletEndpoint port>/...`), reached with the API
//! server's own kubelet client certificate:
//!
//! - `pods/<name>/log` → `/containerLogs/...`, streamed back — so `kubectl logs`,
//!   `-f`, `--previous`, `--tail`, `--since` and `--timestamps` work;
//! - `pods/<name>/exec`, `attach` and `portforward` → `/exec/...`, `/attach/...`,
//!   `/portForward/...`: the client's upgrade request (WebSocket) is passed on,
//!   and once the kubelet switches protocols the two connections are spliced
//!   byte for byte, as upstream's upgrade-aware proxy does.
//!
//! The kubelet's serving certificate is checked against the cluster CA (it is
//! issued at join for the node's name and addresses).

use std::sync::Arc;

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use serde_json::Value;

use crate::{pki::Pki, resources, status::ApiError, storage::Store};

/// The user of the API server's kubelet client certificate (upstream's name).
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// An HTTPS client for kubelets: the API server's identity, the cluster CA as
/// the only root.
#[derive(Clone, Debug)]
pub struct KubeletClient {
    http: reqwest::Client,
    /// HTTP/1.1 only: protocol upgrades do not exist in HTTP/2.
    upgrades: reqwest::Client,
}

impl KubeletClient {
    /// Issues the client certificate and builds the client.
    pub fn new(pki: &Pki) -> Result<Self, String> {
        let cert = pki
            .client_cert(KUBELET_CLIENT_USER, &["system:masters"])
            .map_err(|e| e.to_string())?;
        let identity =
            reqwest::Identity::from_pem(format!("{}{}", cert.cert_pem, cert.key_pem).as_bytes())
                .map_err(|e| e.to_string())?;
        let root =
            reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).map_err(|e| e.to_string())?;
        let builder = || {
            reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(root.clone())
                .identity(identity.clone())
                .connect_timeout(std::time::Duration::from_secs(5))
        };
        let http = builder().build().map_err(|e| e.to_string())?;
        let upgrades = builder().http1_only().build().map_err(|e| e.to_string())?;
        Ok(Self { http, upgrades })
    }
}

impl KubeletClient {
    /// The Summary API (`/stats/summary`) of `node`'s kubelet; `None` when the
    /// node has no address or its kubelet does not answer within 5 s.
    pub async fn summary(&self, node: &Value) -> Option<Value> {
        let name = node["metadata"]["name"].as_str()?;
        let url = format!("{}/stats/summary", node_base(node, name).ok()?);
        let response = self
            .http
            .get(&url)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        match response {
            Ok(r) => r.json().await.ok(),
            Err(e) => {
                tracing::debug!(node = name, error = %e, "kubelet summary");
                None
            }
        }
    }
}

async fn object(
    store: &Arc<dyn Store>,
    plural: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let rt = resources::find("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("no {plural} resource")))?;
    let kv = store.get(&rt.key(namespace, name)).await?;
    kv.map(|kv| {
        serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::internal(format!("stored object {}: {e}", kv.key)))
    })
    .transpose()
}

/// `query` as name/value pairs, in order (repeated names kept: exec's `command`).
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The container a request names, or the only one the pod has.
fn container_of(pod: &Value, name: &str, params: &[(String, String)]) -> Result<String, ApiError> {
    let spec = &pod["spec"];
    let names: Vec<&str> = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| spec[list].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match params.iter().find(|(k, _)| k == "container") {
        Some((_, c)) => c.clone(),
        None if names.len() == 1 => names[0].to_owned(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            )));
        }
    };
    if !names.contains(&container.as_str()) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    Ok(container)
}

/// `https://<node InternalIP>:<kubelet port>` of the pod's node.
async fn kubelet_base(store: &Arc<dyn Store>, pod: &Value, name: &str) -> Result<String, ApiError> {
    let Some(node_name) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let node = object(store, "nodes", None, node_name)
        .await?
        .ok_or_else(|| {
            ApiError::bad_request(format!("node {node_name} of pod {name} does not exist"))
        })?;
    node_base(&node, node_name)
}

/// `https://<InternalIP>:<kubelet port>` of a Node object.
fn node_base(node: &Value, node_name: &str) -> Result<String, ApiError> {
    let ip = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::bad_request(format!("node {node_name} has no InternalIP")))?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap_or(10250);
    let host = match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => ip.to_owned(),
    };
    Ok(format!("https://{host}:{port}"))
}

/// Serves `GET nodes/<name>/proxy/<path>`: the node's kubelet API (stats,
/// `/metrics`, `/metrics/cadvisor`, ...), as Prometheus scrapes it through the
/// API server.
pub async fn node_proxy(
    store: &Arc<dyn Store>,
    kubelet: &KubeletClient,
    name: &str,
    path: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let node = object(store, "nodes", None, name)
        .await?
        .ok_or_else(|| ApiError::not_found("", "nodes", name))?;
    let base = node_base(&node, name)?;
    let url = match query {
        Some(q) if !q.is_empty() => format!("{base}/{path}?{q}"),
        _ => format!("{base}/{path}"),
    };
    let response =
        kubelet.http.get(&url).send().await.map_err(|e| {
            ApiError::unavailable(format!("error trying to reach the kubelet: {e}"))
        })?;
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let stream = response
        .bytes_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    if let Some(ct) = content_type {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(r)
}

async fn pod(store: &Arc<dyn Store>, namespace: &str, name: &str) -> Result<Value, ApiError> {
    object(store, "pods", Some(namespace), name)
        .await?
        .ok_or_else(|| ApiError::not_found("", "pods", name))
}

fn encode_query(params: &[(String, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params.iter().filter(|(k, _)| k != "container") {
        q.append_pair(k, v);
    }
    q.finish()
}

/// Serves `pods/<name>/log` for `namespace`, passing `query` on to the kubelet.
pub async fn pod_log(
    store: &Arc<dyn Store>,
    kubelet: &KubeletClient,
    namespace: &str,
    name: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let pod = pod(store, namespace, name).await?;
    let params = query_pairs(query);
    let container = container_of(&pod, name, &params)?;
    let base = kubelet_base(store, &pod, name).await?;
    let url = format!(
        "{base}/containerLogs/{namespace}/{name}/{container}?{}",
        encode_query(&params)
    );
    let response = kubelet
        .http
        .get(&url)
        .send()
        .await
        .map_err(|e| ApiError::internal(format!("Get \"{url}\": {e}")))?;
    let status = response.status();
    if !status.is_success() {
        let message = response.text().await.unwrap_or_default();
        return Err(match status.as_u16() {
            404 => ApiError::bad_request(message),
            _ => ApiError::internal(format!("the kubelet answered {status}: {message}")),
        });
    }
    let stream = response
        .bytes_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r.into_response())
}

/// The headers of an upgrade handshake, passed on in both directions.
const UPGRADE_HEADERS: [&str; 8] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

/// Serves `pods/<name>/{exec,attach,portforward}`: passes the client's upgrade
/// request to the kubelet and, once both sides switched protocols, splices the
/// connections until either closes.
#[allow(clippy::too_many_arguments)] // The parts of one proxied request.
pub async fn pod_stream(
    store: &Arc<dyn Store>,
    kubelet: &KubeletClient,
    namespace: &str,
    name: &str,
    subresource: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response, ApiError> {
    let pod = pod(store, namespace, name).await?;
    let params = query_pairs(query);
    let path = match subresource {
        "exec" | "attach" => {
            let phase = pod["status"]["phase"].as_str().unwrap_or_default();
            if matches!(phase, "Succeeded" | "Failed") {
                return Err(ApiError::bad_request(format!(
                    "cannot {subresource} into a container in a completed pod; current phase is {phase}"
                )));
            }
            let container = container_of(&pod, name, &params)?;
            format!("{subresource}/{namespace}/{name}/{container}")
        }
        _ => format!("portForward/{namespace}/{name}"),
    };
    let Some(on_upgrade) = on_upgrade.filter(|_| headers.contains_key(header::UPGRADE)) else {
        return Err(ApiError::bad_request(format!(
            "pods/{subresource} needs a connection upgrade (WebSocket)"
        )));
    };
    let base = kubelet_base(store, &pod, name).await?;
    let url = format!("{base}/{path}?{}", encode_query(&params));
    let mut request = kubelet.upgrades.get(&url);
    for (k, v) in headers {
        if UPGRADE_HEADERS.contains(&k.as_str()) {
            request = request.header(k, v);
        }
    }
    let response = request
        .send()
        .await
        .map_err(|e| ApiError::internal(format!("Get \"{url}\": {e}")))?;
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let message = response.text().await.unwrap_or_default();
        return Err(match status.as_u16() {
            400 | 404 => ApiError::bad_request(message),
            _ => ApiError::internal(format!("the kubelet answered {status}: {message}")),
        });
    }
    let mut answer = Response::new(Body::empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in response.headers() {
        if UPGRADE_HEADERS.contains(&k.as_str()) {
            answer.headers_mut().insert(k.clone(), v.clone());
        }
    }
    tokio::spawn(async move {
        let (client, node) = match tokio::try_join!(
            async { on_upgrade.await.map_err(|e| e.to_string()) },
            async { response.upgrade().await.map_err(|e| e.to_string()) },
        ) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "pod stream upgrade failed");
                return;
            }
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut node = node;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
    });
    Ok(answer)
}
