//! Liveness, readiness and startup probes with upstream's semantics: an initial
//! delay, a period, a timeout, success and failure thresholds; the startup probe
//! holds the other two off until it succeeds; liveness (or startup) failure
//! restarts the container; readiness failure takes it out of Ready.
//!
//! `httpGet` (HTTP or HTTPS, certificates unchecked as upstream), `tcpSocket`
//! and `grpc` (the standard `grpc.health.v1.Health/Check`) probes connect from
//! inside the pod's network namespace (a short-lived thread enters it, connects,
//! and hands the socket back), so they reach the pod whatever the node's
//! routing; `exec` probes run through CRI `ExecSync`.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::cri::CriClient;

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `startupProbe`.
    Startup,
    /// `livenessProbe`.
    Liveness,
    /// `readinessProbe`.
    Readiness,
}

impl Kind {
    /// Upstream's word for it in events: "Liveness probe failed: ...".
    pub fn title(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }

    /// The container's probe of this kind.
    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            Kind::Startup => c.startup_probe.as_ref(),
            Kind::Liveness => c.liveness_probe.as_ref(),
            Kind::Readiness => c.readiness_probe.as_ref(),
        }
    }
}

/// One probe's running state, for one container instance.
#[derive(Clone, Debug)]
pub struct State {
    /// The container instance (its CRI id) this state is about.
    pub container_id: String,
    successes: i32,
    failures: i32,
    next: Instant,
    /// The settled result: passed its success threshold (or failed its failure one).
    pub ok: Option<bool>,
}

impl State {
    /// A fresh state for a container that started at `started`.
    pub fn new(container_id: String, probe: &Probe, started: Instant) -> Self {
        Self {
            container_id,
            successes: 0,
            failures: 0,
            next: started
                + Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64),
            ok: None,
        }
    }

    /// Whether the probe is due now.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Counts one result; returns whether the settled result changed.
    pub fn record(&mut self, probe: &Probe, success: bool, now: Instant) -> bool {
        self.next = now + Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
        let before = self.ok;
        if success {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= probe.success_threshold.unwrap_or(1).max(1) {
                self.ok = Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                self.ok = Some(false);
            }
        }
        before != self.ok
    }
}

/// What a probe needs to reach its container.
pub struct Target<'a> {
    /// The pod's IP (the default host of HTTP and TCP probes).
    pub pod_ip: Option<IpAddr>,
    /// The pod's network namespace file, from the runtime.
    pub netns: Option<PathBuf>,
    /// The container's runtime id (for exec).
    pub container_id: &'a str,
    /// The container's spec (for named ports).
    pub container: &'a Container,
}

/// Runs `probe` once: `Ok(())` on success, `Err(message)` as upstream words failures.
pub async fn run(probe: &Probe, target: &Target<'_>, cri: &CriClient) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    run_action(&Action::of_probe(probe), target, cri, timeout).await
}

/// What a probe or a lifecycle hook does: one of exec, httpGet, tcpSocket (gRPC
/// for probes only).
#[derive(Clone, Copy, Debug, Default)]
pub struct Action<'a> {
    /// Run a command in the container.
    pub exec: Option<&'a k8s_openapi::api::core::v1::ExecAction>,
    /// GET a URL.
    pub http_get: Option<&'a k8s_openapi::api::core::v1::HTTPGetAction>,
    /// Open a TCP connection.
    pub tcp_socket: Option<&'a k8s_openapi::api::core::v1::TCPSocketAction>,
    /// Call the gRPC health service (probes only).
    pub grpc: Option<&'a k8s_openapi::api::core::v1::GRPCAction>,
}

impl<'a> Action<'a> {
    /// A probe's action.
    pub fn of_probe(p: &'a Probe) -> Self {
        Self {
            exec: p.exec.as_ref(),
            http_get: p.http_get.as_ref(),
            tcp_socket: p.tcp_socket.as_ref(),
            grpc: p.grpc.as_ref(),
        }
    }

    /// A lifecycle hook's action (its `sleep` is the caller's to honour).
    pub fn of_hook(h: &'a k8s_openapi::api::core::v1::LifecycleHandler) -> Self {
        Self {
            exec: h.exec.as_ref(),
            http_get: h.http_get.as_ref(),
            tcp_socket: h.tcp_socket.as_ref(),
            grpc: None,
        }
    }
}

/// Runs `action` against `target` within `timeout`.
pub async fn run_action(
    action: &Action<'_>,
    target: &Target<'_>,
    cri: &CriClient,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = action.exec {
        let mut runtime = cri.runtime.clone();
        let r = runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: target.container_id.to_owned(),
                cmd: exec.command.clone().unwrap_or_default(),
                timeout: timeout.as_secs() as i64,
            })
            .await
            .map_err(|e| format!("exec failed: {}", e.message()))?
            .into_inner();
        return if r.exit_code == 0 {
            Ok(())
        } else {
            let out = String::from_utf8_lossy(&r.stdout).trim().to_owned();
            Err(format!(
                "command {:?} exited with {}: {out}",
                exec.command.clone().unwrap_or_default(),
                r.exit_code
            ))
        };
    }
    network(action, target, timeout).await
}

/// The actions that only need the network: httpGet, tcpSocket (and gRPC, refused).
async fn network(
    action: &Action<'_>,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(http) = action.http_get {
        let port = port(&http.port, target.container)?;
        let host = match http.host.as_deref().filter(|h| !h.is_empty()) {
            Some(h) => h
                .parse()
                .map_err(|_| format!("unsupported probe host {h:?}"))?,
            None => target.pod_ip.ok_or("the pod has no IP yet")?,
        };
        let https = http.scheme.as_deref() == Some("HTTPS");
        let scheme = if https { "https" } else { "http" };
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let addr = SocketAddr::new(host, port);
        let work = async {
            let stream = connect(target.netns.clone(), addr, timeout).await?;
            let mut sender = if https {
                let tls = tls_unverified(stream, host).await?;
                http1(tls).await?
            } else {
                http1(stream).await?
            };
            let mut req = hyper::Request::get(path.as_str())
                .header("Host", addr.to_string())
                .header("User-Agent", "kube-probe/1.33")
                .header("Accept", "*/*");
            for h in http.http_headers.iter().flatten() {
                req = req.header(h.name.as_str(), h.value.as_str());
            }
            let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let code = resp.status().as_u16();
            // Drain a little so the server is not reset mid-write.
            let _ = resp.into_body().collect().await;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        };
        return match tokio::time::timeout(timeout, work).await {
            Ok(r) => r.map_err(|e| {
                if e.starts_with("HTTP probe failed") {
                    e
                } else {
                    format!("Get \"{scheme}://{addr}{path}\": {e}")
                }
            }),
            Err(_) => Err(format!(
                "Get \"{scheme}://{addr}{path}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            )),
        };
    }
    if let Some(tcp) = action.tcp_socket {
        let port = port(&tcp.port, target.container)?;
        let host = match tcp.host.as_deref().filter(|h| !h.is_empty()) {
            Some(h) => h
                .parse()
                .map_err(|_| format!("unsupported probe host {h:?}"))?,
            None => target.pod_ip.ok_or("the pod has no IP yet")?,
        };
        let addr = SocketAddr::new(host, port);
        return connect(target.netns.clone(), addr, timeout)
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp {addr}: {e}"));
    }
    if let Some(grpc) = action.grpc {
        let port = u16::try_from(grpc.port).map_err(|_| format!("invalid port {}", grpc.port))?;
        let host = target.pod_ip.ok_or("the pod has no IP yet")?;
        return grpc_check(
            target.netns.clone(),
            SocketAddr::new(host, port),
            grpc.service.clone().unwrap_or_default(),
            timeout,
        )
        .await;
    }
    Err("the probe has no handler".into())
}

/// An HTTP/1.1 client connection over `io`.
async fn http1<IO>(io: IO) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Upstream's HTTPS probes skip certificate verification (pods serve
/// self-signed certificates for their own names); this verifier does the same.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS over `stream` without verifying the server's certificate.
async fn tls_unverified(
    stream: tokio::net::TcpStream,
    host: IpAddr,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::IpAddress(host.into()),
            stream,
        )
        .await
        .map_err(|e| e.to_string())
}

/// `grpc.health.v1.Health/Check` for `service` at `addr`, worded as upstream's
/// prober words its results.
async fn grpc_check(
    netns: Option<PathBuf>,
    addr: SocketAddr,
    service: String,
    timeout: Duration,
) -> Result<(), String> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let seconds = timeout.as_secs();
    let stream = tokio::time::timeout(timeout, connect(netns, addr, timeout))
        .await
        .map_err(|_| format!("timeout: failed to connect service {addr:?} within {seconds}s"))?
        .map_err(|e| {
            format!("timeout: failed to connect service {addr:?} within {seconds}s: {e}")
        })?;
    // The connection was made inside the pod's namespace: hand it to tonic once.
    let slot = Arc::new(std::sync::Mutex::new(Some(stream)));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let stream = slot.lock().ok().and_then(|mut s| s.take());
            async move {
                stream
                    .map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the probe connection was used"))
            }
        }))
        .await
        .map_err(|e| format!("failed to connect service {addr:?}: {e}"))?;
    let mut client = HealthClient::new(channel);
    let call = client.check(HealthCheckRequest { service });
    let response = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("timeout: health rpc did not complete within {seconds}s"))?
        .map_err(|status| {
            format!(
                "rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            )
        })?;
    match ServingStatus::try_from(response.into_inner().status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(format!(
            "service unhealthy (responded with {:?})",
            other.as_str_name()
        )),
        Err(_) => Err("service unhealthy (responded with an unknown status)".into()),
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port(p: &IntOrString, c: &Container) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("port {name:?} not found in the container's ports")),
    }
}

/// Connects to `addr` from inside the network namespace `netns` (or from here
/// without one). A fresh thread enters the namespace — never a pooled one, which
/// would stay there — and the connected socket keeps its namespace afterwards.
async fn connect(
    netns: Option<PathBuf>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("probe-connect".into())
        .spawn(move || {
            let result = (|| -> Result<std::net::TcpStream, String> {
                if let Some(ns) = &netns {
                    let f = std::fs::File::open(ns)
                        .map_err(|e| format!("opening {}: {e}", ns.display()))?;
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("entering the pod's network namespace: {e}"))?;
                }
                let s = std::net::TcpStream::connect_timeout(&addr, timeout)
                    .map_err(|e| e.to_string())?;
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok(s)
            })();
            let _ = tx.send(result);
        })
        .map_err(|e| e.to_string())?;
    let std_stream = rx.await.map_err(|_| "the probe thread died".to_owned())??;
    tokio::net::TcpStream::from_std(std_stream).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn thresholds_settle_results() {
        let p = probe(
            json!({"periodSeconds": 1, "failureThreshold": 2, "successThreshold": 1, "initialDelaySeconds": 5}),
        );
        let t0 = Instant::now();
        let mut s = State::new("c1".into(), &p, t0);
        assert!(!s.due(t0) && s.due(t0 + Duration::from_secs(5)));
        assert!(!s.record(&p, false, t0), "one failure is not enough");
        assert!(s.record(&p, false, t0) && s.ok == Some(false));
        assert!(s.record(&p, true, t0) && s.ok == Some(true));
        assert!(!s.due(t0) && s.due(t0 + Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn tcp_and_http_probes_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let code = if req.starts_with("GET /ok") {
                        "200 OK"
                    } else {
                        "500 Internal Server Error"
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let c: Container = serde_json::from_value(
            json!({"name": "c", "ports": [{"name": "http", "containerPort": addr.port()}]}),
        )
        .unwrap();
        let target = Target {
            pod_ip: Some(addr.ip()),
            netns: None,
            container_id: "x",
            container: &c,
        };
        let second = Duration::from_secs(1);
        let ok = probe(json!({"httpGet": {"path": "/ok", "port": "http"}}));
        assert_eq!(
            network(&Action::of_probe(&ok), &target, second).await,
            Ok(())
        );
        let bad = probe(json!({"httpGet": {"path": "/bad", "port": addr.port()}}));
        assert_eq!(
            network(&Action::of_probe(&bad), &target, second).await,
            Err("HTTP probe failed with statuscode: 500".into())
        );
        let tcp = probe(json!({"tcpSocket": {"port": addr.port()}}));
        assert_eq!(
            network(&Action::of_probe(&tcp), &target, second).await,
            Ok(())
        );
        let closed = probe(json!({"tcpSocket": {"port": 1}}));
        assert!(
            network(&Action::of_probe(&closed), &target, second)
                .await
                .unwrap_err()
                .starts_with("dial tcp 127.0.0.1:1")
        );
        let named = probe(json!({"tcpSocket": {"port": "nope"}}));
        assert!(
            network(&Action::of_probe(&named), &target, second)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn grpc_probes_ask_the_health_service() {
        use tonic_health::ServingStatus;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("ready", ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("draining", ServingStatus::NotServing)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let c: Container = serde_json::from_value(json!({"name": "c"})).unwrap();
        let target = Target {
            pod_ip: Some(addr.ip()),
            netns: None,
            container_id: "x",
            container: &c,
        };
        let second = Duration::from_secs(1);
        let check =
            |service: &str| probe(json!({"grpc": {"port": addr.port(), "service": service}}));
        let ready = check("ready");
        assert_eq!(
            network(&Action::of_probe(&ready), &target, second).await,
            Ok(())
        );
        let draining = check("draining");
        assert_eq!(
            network(&Action::of_probe(&draining), &target, second).await,
            Err("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        let unknown = check("nope");
        let err = network(&Action::of_probe(&unknown), &target, second)
            .await
            .unwrap_err();
        assert!(err.starts_with("rpc error: code = NotFound"), "{err}");
        let closed = probe(json!({"grpc": {"port": 1}}));
        let err = network(&Action::of_probe(&closed), &target, second)
            .await
            .unwrap_err();
        assert!(err.contains("failed to connect service"), "{err}");
    }

    #[tokio::test]
    async fn https_probes_skip_certificate_checks() {
        let cert = rcgen::generate_simple_self_signed(vec!["pod.local".into()]).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        });
        let c: Container = serde_json::from_value(json!({"name": "c"})).unwrap();
        let target = Target {
            pod_ip: Some(addr.ip()),
            netns: None,
            container_id: "x",
            container: &c,
        };
        let https =
            probe(json!({"httpGet": {"port": addr.port(), "scheme": "HTTPS", "path": "/"}}));
        assert_eq!(
            network(&Action::of_probe(&https), &target, Duration::from_secs(2)).await,
            Ok(())
        );
        // Plain HTTP against the TLS port fails like upstream's client does.
        let plain = probe(json!({"httpGet": {"port": addr.port(), "path": "/"}}));
        assert!(
            network(&Action::of_probe(&plain), &target, Duration::from_secs(2))
                .await
                .is_err()
        );
    }
}
