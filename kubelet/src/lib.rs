//! The node side of pods: a CRI client to containerd ([`cri`]), the node's
//! registration, status and Lease heartbeat ([`node`]), pod workers that run pods
//! through the runtime and report their status ([`pods`]) with probes, hooks,
//! volumes and events, and the kubelet HTTPS API ([`server`]: logs, exec, attach
//! and port-forward through the runtime's streaming server ([`streaming`]), and
//! resource usage ([`stats`])).
//!
//! Everything goes through the API server with the node's own identity (kube-rs);
//! nothing here touches the store. See docs/architecture.md.

pub mod container;
pub mod containerd;
pub mod cri;
pub mod events;
pub mod host;
pub mod labels;
pub mod local_path;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod probes;
mod runtime_metrics;
pub use sextant_apimachinery::quantity;
pub mod server;
pub mod spdy;
pub mod stats;
pub mod status;
pub mod streaming;
pub mod volumes;

use std::{net::IpAddr, path::PathBuf, sync::Arc};

use k8s_cri::v1 as cri_api;
use kube::Client;

/// What the kubelet needs to know about its node.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Node's name.
    pub node_name: String,
    /// The address other nodes and the API server reach this node at.
    pub node_ip: IpAddr,
    /// The CRI runtime's unix socket.
    pub cri_socket: PathBuf,
    /// Where pod logs and the agent's state live.
    pub data_dir: PathBuf,
    /// The cgroup every pod's cgroup is made under (`/sextant`).
    pub cgroup_root: String,
    /// Where the kubelet API listens (`0.0.0.0:10250`).
    pub kubelet_listen: std::net::SocketAddr,
    /// The cluster DNS servers pods with `dnsPolicy: ClusterFirst` use.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// Where the container runtime serves Prometheus metrics (containerd's
    /// `[metrics] address`), relayed as `/metrics/containerd`.
    pub runtime_metrics: Option<std::net::SocketAddr>,
}

/// Errors of the kubelet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CRI socket could not be reached.
    #[error(transparent)]
    Connect(#[from] cri::Error),
    /// A CRI call failed.
    #[error("container runtime: {}", .0.message())]
    Runtime(#[from] tonic::Status),
    /// An API call failed.
    #[error("API server: {0}")]
    Api(#[from] kube::Error),
    /// A bug or an impossible state.
    #[error("{0}")]
    Internal(String),
}

/// Registers the node and runs its heartbeat and pod workers until the pod watch
/// ends (it does not, short of a panic); metrics go to `metrics`.
pub async fn run(
    client: Client,
    config: Config,
    tls: server::Tls,
    metrics: metrics::KubeletMetrics,
    registry: sextant_metrics::SharedRegistry,
    node_routes: axum::Router,
) -> Result<(), Error> {
    let cri =
        cri::CriClient::connect_timed(&config.cri_socket, Some(metrics.runtime_latency.clone()))
            .await?;
    let version = cri
        .runtime
        .clone()
        .version(cri_api::VersionRequest::default())
        .await?
        .into_inner();
    let runtime_version = format!("{}://{}", version.runtime_name, version.runtime_version);
    tracing::info!(runtime = %runtime_version, node = %config.node_name, "connected to the container runtime");
    std::fs::create_dir_all(config.data_dir.join("pods"))
        .map_err(|e| Error::Internal(format!("creating {}: {e}", config.data_dir.display())))?;
    let facts = host::HostFacts::read(&config.data_dir);
    let rt = Arc::new(pods::PodRuntime {
        events: events::Recorder::new(client.clone(), config.node_name.clone()),
        client: client.clone(),
        cri,
        config: config.clone(),
        runtime_name: version.runtime_name,
        metrics,
    });
    let (api_addr, api) = server::serve(
        config.kubelet_listen,
        &tls,
        rt.clone(),
        registry,
        node_routes,
    )
    .await?;
    tracing::info!(addr = %api_addr, "serving the kubelet API");
    // Heartbeat first: a Lease left stale by an earlier run would otherwise make
    // the node lifecycle controller mark the freshly registered node Unknown.
    node::renew_lease(&client, &config.node_name).await;
    node::register(&client, &config, &facts, &runtime_version).await?;
    // Upstream's start-up story on the Node, as `kubectl describe node` shows it.
    {
        use events::Type::Normal;
        let node = &config.node_name;
        rt.events
            .record_node(Normal, "Starting", "Starting kubelet.")
            .await;
        for condition in [
            "NodeHasSufficientMemory",
            "NodeHasNoDiskPressure",
            "NodeHasSufficientPID",
            "NodeReady",
        ] {
            rt.events
                .record_node(
                    Normal,
                    condition,
                    &format!("Node {node} status is now: {condition}"),
                )
                .await;
        }
    }
    let lease = tokio::spawn(node::keep_lease(client.clone(), config.node_name.clone()));
    let status = tokio::spawn(node::keep_status(
        client.clone(),
        config.clone(),
        facts,
        runtime_version,
    ));
    let deleter = tokio::spawn(local_path::run_deleter(
        client.clone(),
        config.node_name.clone(),
        config.data_dir.clone(),
    ));
    let result = pods::run(rt).await;
    deleter.abort();
    lease.abort();
    status.abort();
    api.abort();
    result
}
