//! `GET /metrics/containerd`: the container runtime's own Prometheus metrics
//! (containerd's `[metrics] address`, `/v1/metrics`), relayed through the
//! kubelet's HTTPS port. containerd serves them in plain HTTP without
//! authentication, so it listens on loopback only and Prometheus reaches it here,
//! behind the kubelet's client-certificate check, found like the kubelet's other
//! endpoints through `role: node` discovery.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use http_body_util::BodyExt as _;

use crate::pods::PodRuntime;

/// How long the runtime gets to answer (Prometheus's scrape timeout is 10 s).
const TIMEOUT: Duration = Duration::from_secs(5);

/// Relays one scrape of the runtime's metrics endpoint.
pub(crate) async fn handler(State(rt): State<Arc<PodRuntime>>) -> Response {
    let Some(addr) = rt.config.runtime_metrics else {
        return (
            StatusCode::NOT_FOUND,
            "this node's agent was not told where its container runtime serves metrics \
             (--container-runtime-metrics-address)\n",
        )
            .into_response();
    };
    match tokio::time::timeout(TIMEOUT, fetch(addr)).await {
        Ok(Ok((content_type, body))) => {
            let mut response = Response::new(Body::from(body));
            if let Some(ct) = content_type {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            response
        }
        Ok(Err(message)) => (
            StatusCode::BAD_GATEWAY,
            format!("container runtime metrics at {addr}: {message}\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("container runtime metrics at {addr}: no answer within {TIMEOUT:?}\n"),
        )
            .into_response(),
    }
}

/// `GET http://<addr>/v1/metrics`: the content type and the body.
async fn fetch(
    addr: SocketAddr,
) -> Result<(Option<header::HeaderValue>, axum::body::Bytes), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("/v1/metrics")
        .header(header::HOST, addr.to_string())
        .body(http_body_util::Empty::<axum::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    connection.abort();
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    Ok((content_type, body))
}
