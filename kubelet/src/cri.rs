//! The Container Runtime Interface (CRI v1) client: gRPC over a unix socket to any
//! CRI runtime (containerd, CRI-O).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// A connection to a CRI runtime: both services share one channel.
#[derive(Clone, Debug)]
pub struct CriClient {
    /// RuntimeService: sandboxes, containers, exec, stats.
    pub runtime: RuntimeServiceClient<Channel>,
    /// ImageService: pull, list, status, remove.
    pub images: ImageServiceClient<Channel>,
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
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }
}
