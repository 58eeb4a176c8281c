//! The kubelet's HTTPS API (port 10250 upstream), which the API server proxies
//! `kubectl logs` to: `GET /containerLogs/<namespace>/<pod>/<container>` with
//! upstream's query (`follow`, `tailLines`, `sinceSeconds`, `sinceTime`,
//! `timestamps`, `previous`, `limitBytes`), and `GET /healthz`.
//!
//! TLS with the node's serving certificate (issued at join); clients must present
//! a certificate from the cluster CA whose user is the API server's kubelet client
//! (`kube-apiserver-kubelet-client`) or in `system:masters`. Anything else gets
//! 403, as upstream's kubelet authorizer would answer.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use futures::StreamExt as _;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use k8s_cri::v1 as cri;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde::Deserialize;
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tower::ServiceExt;

use crate::{
    Error, logs,
    pods::{self, PodRuntime},
    runtime_metrics, stats, streaming,
};

/// The user the API server's kubelet client certificate names.
pub const APISERVER_CLIENT: &str = "kube-apiserver-kubelet-client";

/// The PEM material the server needs.
#[derive(Clone)]
pub struct Tls {
    /// The cluster CA, which client certificates must chain to.
    pub ca_pem: String,
    /// The node's serving certificate.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// Binds `addr` and serves the kubelet API, plus `node_routes`, until the
/// returned task is dropped.
pub async fn serve(
    addr: SocketAddr,
    tls: &Tls,
    rt: Arc<PodRuntime>,
    registry: sextant_metrics::SharedRegistry,
    node_routes: Router,
) -> Result<(SocketAddr, JoinHandle<()>), Error> {
    let config = tls_config(tls)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Internal(format!("binding the kubelet API on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(streaming::exec).post(streaming::exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(streaming::attach).post(streaming::attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(streaming::port_forward).post(streaming::port_forward),
        )
        .route("/metrics/containerd", get(runtime_metrics::handler))
        .with_state(rt.clone());
    let sampler = Arc::new(stats::Sampler::default());
    let router = router.merge(
        Router::new()
            .route("/stats/summary", get(stats::summary_handler))
            .route("/metrics/resource", get(stats::resource_handler))
            .route("/metrics/cadvisor", get(stats::cadvisor_handler))
            .with_state(stats::StatsState {
                rt: rt.clone(),
                sampler: sampler.clone(),
            }),
    );
    // The node's own metrics (kubelet and dataplane), where upstream's kubelet
    // serves them: Prometheus's `role: node` finds them with the node's address
    // and `daemonEndpoints`, behind the same client-certificate check.
    let router = router.merge(sextant_metrics::router(registry));
    // What else the node serves behind the same check (the dataplane's flows
    // and maps for sextantctl).
    let router = router.merge(node_routes);
    // Sample in the background too, so CPU rates are never older than this; it
    // lives and dies with the server task.
    let housekeeping = async move {
        loop {
            let _ = sampler.sample(&rt).await;
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        }
    };
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let accept = async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let allowed = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .is_some_and(|c| authorized(c.as_ref()));
                let service =
                    tower::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let router = router.clone();
                        async move {
                            if !allowed {
                                return Ok::<_, std::convert::Infallible>(
                                    (StatusCode::FORBIDDEN, "Forbidden").into_response(),
                                );
                            }
                            router.oneshot(req.map(Body::new)).await
                        }
                    });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(tls),
                        TowerToHyperService::new(service),
                    )
                    .await;
            });
        }
    };
    let task = tokio::spawn(async move {
        tokio::join!(accept, housekeeping);
    });
    Ok((bound, task))
}

fn tls_config(tls: &Tls) -> Result<ServerConfig, Error> {
    let err = |e: &dyn std::fmt::Display| Error::Internal(format!("kubelet TLS: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(tls.ca_pem.as_bytes()).map_err(|e| err(&e))?)
        .map_err(|e| err(&e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| err(&e))?;
    let chain = vec![CertificateDer::from_pem_slice(tls.cert_pem.as_bytes()).map_err(|e| err(&e))?];
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| err(&e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| err(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Whether a (CA-verified) client certificate may use the kubelet API.
fn authorized(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .any(|a| a.as_str() == Ok(APISERVER_CLIENT));
    let masters = subject
        .iter_organization()
        .any(|a| a.as_str() == Ok("system:masters"));
    cn || masters
}

/// The query of `/containerLogs`, as the API server passes it on.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    follow: Option<bool>,
    previous: Option<bool>,
    tail_lines: Option<i64>,
    since_seconds: Option<i64>,
    since_time: Option<String>,
    timestamps: Option<bool>,
    limit_bytes: Option<i64>,
}

fn status(code: StatusCode, message: String) -> Response {
    (code, message).into_response()
}

async fn container_logs(
    State(rt): State<Arc<PodRuntime>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    match find_log(
        &rt,
        &namespace,
        &pod,
        &container,
        q.previous.unwrap_or(false),
    )
    .await
    {
        Ok(Ok((path, id))) => {
            let since = q
                .since_time
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .or_else(|| {
                    q.since_seconds.and_then(|s| {
                        jiff::Timestamp::now()
                            .checked_sub(jiff::SignedDuration::from_secs(s))
                            .ok()
                    })
                });
            let options = logs::Options {
                follow: q.follow.unwrap_or(false),
                tail_lines: q.tail_lines.and_then(|n| usize::try_from(n).ok()),
                since,
                timestamps: q.timestamps.unwrap_or(false),
                limit_bytes: q.limit_bytes.and_then(|n| usize::try_from(n).ok()),
            };
            let (tx, rx) = mpsc::channel(64);
            let cri = rt.cri.clone();
            tokio::spawn(logs::stream(path, options, tx, move || {
                let mut runtime = cri.runtime.clone();
                let id = id.clone();
                async move {
                    runtime
                        .container_status(cri::ContainerStatusRequest {
                            container_id: id,
                            verbose: false,
                        })
                        .await
                        .ok()
                        .and_then(|r| r.into_inner().status)
                        .is_some_and(|s| s.state == cri::ContainerState::ContainerRunning as i32)
                }
            }));
            let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, std::io::Error>));
            ([(axum::http::header::CONTENT_TYPE, "text/plain")], body).into_response()
        }
        Ok(Err(message)) => status(StatusCode::NOT_FOUND, message),
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The log file (and container id) of the current — or, with `previous`, the
/// last terminated — instance of a pod's container.
async fn find_log(
    rt: &PodRuntime,
    namespace: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<Result<(PathBuf, String), String>, Error> {
    let containers = pods::container_instances(rt, namespace, pod, container).await?;
    let chosen = if previous {
        containers.len().checked_sub(2).map(|i| &containers[i])
    } else {
        containers.last()
    };
    let Some(c) = chosen else {
        return Ok(Err(if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start")
        }));
    };
    let status = rt
        .cri
        .runtime
        .clone()
        .container_status(cri::ContainerStatusRequest {
            container_id: c.id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status;
    match status {
        Some(s) if !s.log_path.is_empty() => Ok(Ok((PathBuf::from(s.log_path), c.id.clone()))),
        _ => Ok(Err(format!(
            "no log for container \"{container}\" in pod \"{pod}\""
        ))),
    }
}
