//! `GET /api/v1/namespaces/<ns>/pods/<name>/log`, proxied to the kubelet of the
//! pod's node (`https://<InternalIP>:<kubeletEndpoint port>/containerLogs/...`)
//! with the API server's own kubelet client certificate, and streamed back — so
//! `kubectl logs`, `-f`, `--previous`, `--tail`, `--since` and `--timestamps` work.
//!
//! The kubelet's serving certificate is checked against the cluster CA (it is
//! issued at join for the node's name and addresses).

use std::sync::Arc;

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
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
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .identity(identity)
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { http })
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

/// Serves `pods/<name>/log` for `namespace`, passing `query` on to the kubelet.
pub async fn pod_log(
    store: &Arc<dyn Store>,
    kubelet: &KubeletClient,
    namespace: &str,
    name: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let pod = object(store, "pods", Some(namespace), name)
        .await?
        .ok_or_else(|| ApiError::not_found("", "pods", name))?;
    let params: Vec<(String, String)> = query
        .map(|q| {
            q.split('&')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
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
    let Some(node_name) = spec["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let node = object(store, "nodes", None, node_name)
        .await?
        .ok_or_else(|| {
            ApiError::bad_request(format!("node {node_name} of pod {name} does not exist"))
        })?;
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
    let rest: Vec<String> = params
        .iter()
        .filter(|(k, _)| k != "container")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let url = format!(
        "https://{host}:{port}/containerLogs/{namespace}/{name}/{container}?{}",
        rest.join("&")
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
