//! The Container Runtime Interface (CRI v1) client: gRPC over a unix socket to any
//! CRI runtime (containerd, CRI-O). Every call goes through [`TimedChannel`],
//! which feeds `kubelet_runtime_operations_duration_seconds`.

use std::{
    path::{Path, PathBuf},
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use prometheus_client::metrics::{family::Family, histogram::Histogram};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::metrics::OperationLabels;

/// A connection to a CRI runtime: both services share one channel.
#[derive(Clone, Debug)]
pub struct CriClient {
    /// RuntimeService: sandboxes, containers, exec, stats.
    pub runtime: RuntimeServiceClient<TimedChannel>,
    /// ImageService: pull, list, status, remove.
    pub images: ImageServiceClient<TimedChannel>,
}

/// Latency of runtime calls by upstream's `operation_type`.
pub type OperationLatency = Family<OperationLabels, Histogram>;

/// The gRPC channel to the runtime, timing each call by its method.
#[derive(Clone, Debug)]
pub struct TimedChannel {
    inner: Channel,
    latency: Option<OperationLatency>,
}

/// Upstream's `operation_type` for a CRI method path:
/// `/runtime.v1.RuntimeService/RunPodSandbox` → `run_podsandbox`.
pub fn operation_type(path: &str) -> String {
    let method = path.rsplit('/').next().unwrap_or(path);
    let mut out = String::with_capacity(method.len() + 4);
    for (i, ch) in method.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out.replace("pod_sandbox", "podsandbox")
}

type Body = tonic::body::Body;

impl tower::Service<hyper::Request<Body>> for TimedChannel {
    type Response = hyper::Response<Body>;
    type Error = tonic::transport::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: hyper::Request<Body>) -> Self::Future {
        let operation = self
            .latency
            .as_ref()
            .map(|_| operation_type(request.uri().path()));
        let latency = self.latency.clone();
        let start = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            if let (Some(latency), Some(operation_type)) = (latency, operation) {
                latency
                    .get_or_create(&OperationLabels { operation_type })
                    .observe(start.elapsed().as_secs_f64());
            }
            response
        })
    }
}

/// Errors of the CRI connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket did not accept the connection.
    #[error("connecting to the CRI socket {path}: {source}")]
    Connect {
        /// The unix socket path.
        path: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
}

impl CriClient {
    /// Connects to the runtime's unix socket (`/run/containerd/containerd.sock`, or a
    /// `unix://` endpoint with the scheme stripped).
    pub async fn connect(socket: &Path) -> Result<Self, Error> {
        Self::connect_timed(socket, None).await
    }

    /// Like [`CriClient::connect`], timing every call into `latency`.
    pub async fn connect_timed(
        socket: &Path,
        latency: Option<OperationLatency>,
    ) -> Result<Self, Error> {
        let path = socket.to_owned();
        let connector_path = path.clone();
        // The URI is a placeholder: the connector ignores it and dials the socket.
        let channel = Endpoint::from_static("http://[::1]:50051")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = connector_path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .map_err(|source| Error::Connect { path, source })?;
        let channel = TimedChannel {
            inner: channel,
            latency,
        };
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn operation_types_are_upstreams() {
        for (path, want) in [
            ("/runtime.v1.RuntimeService/RunPodSandbox", "run_podsandbox"),
            (
                "/runtime.v1.RuntimeService/ListPodSandboxStats",
                "list_podsandbox_stats",
            ),
            (
                "/runtime.v1.RuntimeService/CreateContainer",
                "create_container",
            ),
            ("/runtime.v1.ImageService/PullImage", "pull_image"),
            ("/runtime.v1.RuntimeService/ExecSync", "exec_sync"),
        ] {
            assert_eq!(super::operation_type(path), want);
        }
    }
}
