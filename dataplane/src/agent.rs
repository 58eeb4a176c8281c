//! The node's dataplane agent, as `sextant agent` runs it: loads the pod datapath,
//! serves the Endpoints API on a unix socket for `sextant-cni`, installs the plugin
//! and its network configuration for containerd, keeps node routes and the
//! masquerade rule in step with the Node objects, the service maps in step
//! with Services and EndpointSlices, and the policy maps with NetworkPolicies.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use ipnet::Ipv4Net;
use tokio::{net::UnixListener, sync::watch, task::JoinHandle};
use tokio_stream::wrappers::UnixListenerStream;

use crate::{
    Error, Result,
    api::{endpoints_server::EndpointsServer, observer_server::ObserverServer},
    cni,
    datapath::Datapath,
    dns,
    endpoints::EndpointService,
    flows, policy, pressure, routing, services, veth,
    watch::changes as watch_changes,
};

/// Where the agent puts things and whom it serves.
#[derive(Clone, Debug)]
pub struct Config {
    /// The agent's own directory (socket, address records, endpoint records).
    pub dir: PathBuf,
    /// The agent's directory in bpffs, where maps and links are pinned.
    pub pin_dir: PathBuf,
    /// This node's name.
    pub node_name: String,
    /// Every pod's addresses come from here; traffic leaving it is masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// Where containerd reads CNI network configurations.
    pub cni_conf_dir: PathBuf,
    /// Where containerd looks for CNI plugins; `sextant-cni` is linked here.
    pub cni_bin_dir: PathBuf,
    /// The executable that acts as `sextant-cni` (the `sextant` binary).
    pub plugin: PathBuf,
    /// The cluster domain DNS answers for (`cluster.local`).
    pub cluster_domain: String,
    /// Where cluster DNS listens (the node IP, port 53).
    pub dns_listen: std::net::SocketAddr,
}

/// The running agent; dropping it stops serving (the datapath stays attached
/// while the process lives).
#[derive(Debug)]
pub struct Running {
    /// The Endpoints API's socket.
    pub socket: PathBuf,
    /// What `sextantctl flows` and `sextantctl dataplane` read, for the kubelet
    /// port ([`crate::inspect::router`]).
    pub inspect: crate::inspect::Inspect,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A gRPC channel to an agent's socket (for `sextant-cni`, tools and tests).
pub async fn connect(
    socket: &Path,
    timeout: std::time::Duration,
) -> std::result::Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = socket.to_owned();
    // The URI is required by tonic but unused: the connector dials the socket.
    tonic::transport::Endpoint::from_static("http://sextant-agent")
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// The reference plugins containerd needs beside ours (the loopback interface).
const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

/// Starts the agent: returns once the socket answers and the plugin is installed.
pub async fn start(
    client: kube::Client,
    config: Config,
    registry: &mut sextant_metrics::Registry,
) -> Result<Running> {
    std::fs::create_dir_all(&config.dir)
        .map_err(io(format!("creating {}", config.dir.display())))?;
    routing::enable_forwarding()?;
    let mut datapath = Datapath::load(&config.pin_dir)?;
    // The node's address: cluster DNS listens on it, NodePorts answer on it.
    let host = match config.dns_listen.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    };
    // NodePort and external IPs: the programs on the interface with the node's
    // address (not on loopback: a one-node cluster on 127.0.0.1 has no outside).
    match host
        .filter(|ip| !ip.is_loopback())
        .map(|ip| (ip, routing::interface_with(ip)))
    {
        Some((_, Some(uplink))) => {
            datapath.attach_uplink(&uplink)?;
            // XDP only speeds up flows to other nodes' backends; without it the
            // TC programs carry them.
            match datapath.attach_uplink_xdp(&uplink) {
                Ok(()) => tracing::info!(uplink, "NodePort programs attached (TC and XDP)"),
                Err(e) => {
                    tracing::warn!(uplink, error = %e, "NodePort XDP not attached; TC serves NodePorts")
                }
            }
        }
        Some((ip, None)) => {
            tracing::warn!(%ip, "no interface holds the node address; no NodePorts")
        }
        None => {}
    }
    registry.register_collector(Box::new(datapath.counters()));
    let flow_ring = datapath.take_flows();
    let flow_counter = flows::register(registry);
    let hub = flows::FlowHub::new();
    let policy_names = policy::PolicyNames::default();
    let service_metrics = services::ServiceMetrics::register(registry, datapath.traffic());
    let map_gauges = pressure::MapGauges::register(registry);
    let datapath = Arc::new(Mutex::new(datapath));

    let netlink = veth::connect()?;

    let (cidr_tx, cidr_rx) = watch::channel(None);
    let caches = services::Caches::start(client.clone());
    let upstream = std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| dns::nameservers(&t))
        .unwrap_or_default();
    let cluster_dns = dns::ClusterDns::new(
        caches.services.clone(),
        caches.slices.clone(),
        &config.cluster_domain,
        upstream,
        registry,
    )
    .map_err(Error::Dns)?;
    let mut tasks = vec![
        tokio::spawn(dns::serve(cluster_dns, config.dns_listen)),
        tokio::spawn(pressure::run(config.pin_dir.clone(), map_gauges)),
    ];
    if let Some(ring) = flow_ring {
        tasks.push(tokio::spawn(flows::run(
            ring,
            hub.clone(),
            flow_counter,
            config.node_name.clone(),
            config.dir.join("endpoints"),
            caches.services.clone(),
            policy_names.clone(),
        )));
    }
    let inspect = crate::inspect::Inspect {
        hub: hub.clone(),
        datapath: datapath.clone(),
        services: caches.services.clone(),
        records_dir: config.dir.join("endpoints"),
    };
    tasks.push(tokio::spawn(services::run(
        caches,
        datapath.clone(),
        service_metrics,
        config.node_name.clone(),
        host,
    )));
    tasks.push(tokio::spawn(routing::run_node_routes(
        client.clone(),
        netlink.clone(),
        config.node_name.clone(),
        cidr_tx,
    )));
    tasks.push(tokio::spawn(keep_masquerade(
        cidr_rx.clone(),
        config.cluster_cidr,
    )));

    let (endpoint_changes, policy_changes) = watch_changes();
    tasks.push(tokio::spawn(policy::run(
        client,
        config.node_name.clone(),
        datapath.clone(),
        config.dir.join("endpoints"),
        host,
        policy_names,
        (endpoint_changes.clone(), policy_changes),
    )));
    let service = EndpointService::new(&config.dir, datapath, netlink, cidr_rx)
        .map_err(io("creating the endpoint records"))?
        .notify(endpoint_changes);
    let restored = service.restore().await.map_err(Error::Endpoints)?;
    tracing::info!(restored, "restored pod endpoints");

    let socket = config.dir.join("dataplane.sock");
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("removing the stale {}", socket.display()))(e)),
    }
    let listener =
        UnixListener::bind(&socket).map_err(io(format!("binding {}", socket.display())))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io("restricting the socket"))?;
    tasks.push(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(EndpointsServer::new(service))
            .add_service(ObserverServer::new(hub))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the dataplane socket stopped");
        }
    }));
    install_cni(&config, &socket)?;
    tracing::info!(socket = %socket.display(), conf_dir = %config.cni_conf_dir.display(), "dataplane agent ready");
    Ok(Running {
        socket,
        inspect,
        tasks,
    })
}

/// Removes everything the agent made on this node: the pods' links and their
/// pinned programs, the pinned maps, Sextant's node routes, the masquerade table,
/// the CNI configuration and link, and the endpoint and address records. Pods lose
/// their network: run it after the node is drained.
pub async fn cleanup(config: &Config) -> Result<()> {
    let netlink = veth::connect()?;
    let records = config.dir.join("endpoints");
    if let Ok(entries) = std::fs::read_dir(&records) {
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            if let Ok(record) = serde_json::from_str::<crate::endpoints::EndpointRecord>(&text) {
                veth::delete(&netlink, &record.host_ifname).await?;
                tracing::info!(link = record.host_ifname, "deleted pod link");
            }
        }
    }
    // Pinned links first (unpinning detaches them), then the maps.
    for sub in ["links", "maps"] {
        let dir = config.pin_dir.join(sub);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                std::fs::remove_file(entry.path())
                    .map_err(io(format!("unpinning {}", entry.path().display())))?;
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
    let _ = std::fs::remove_dir(&config.pin_dir);
    routing::reconcile_routes(&netlink, &Default::default()).await?;
    routing::remove_masquerade().await?;
    for path in [
        config.cni_conf_dir.join("10-sextant.conflist"),
        config.cni_bin_dir.join("sextant-cni"),
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("removing {}", path.display()))(e)),
        }
    }
    match std::fs::remove_dir_all(&config.dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("removing {}", config.dir.display()))(e)),
    }
    tracing::info!(pin_dir = %config.pin_dir.display(), "dataplane removed from this node");
    Ok(())
}

/// Installs the masquerade rule for this node's podCIDR whenever it is (re)assigned.
async fn keep_masquerade(mut cidr: watch::Receiver<Option<Ipv4Net>>, cluster: Ipv4Net) {
    loop {
        let current = *cidr.borrow_and_update();
        if let Some(pod_cidr) = current {
            match routing::install_masquerade(pod_cidr, cluster).await {
                Ok(()) => {
                    tracing::info!(%pod_cidr, %cluster, "masquerading pod traffic leaving the cluster")
                }
                Err(e) => tracing::error!(error = %e, "installing the masquerade rule"),
            }
        }
        if cidr.changed().await.is_err() {
            return;
        }
    }
}

/// Links `sextant-cni` (and the loopback plugin containerd always runs) into the
/// CNI bin dir and writes the network configuration, atomically.
fn install_cni(config: &Config, socket: &Path) -> Result<()> {
    for dir in [&config.cni_bin_dir, &config.cni_conf_dir] {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    link(&config.plugin, &config.cni_bin_dir.join("sextant-cni"))?;
    let loopback = Path::new(SYSTEM_CNI_DIR).join("loopback");
    if config.cni_bin_dir != Path::new(SYSTEM_CNI_DIR) && loopback.exists() {
        link(&loopback, &config.cni_bin_dir.join("loopback"))?;
    }
    let path = config.cni_conf_dir.join("10-sextant.conflist");
    let tmp = config.cni_conf_dir.join(".10-sextant.conflist.tmp");
    std::fs::write(&tmp, cni::conflist(socket).to_string())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(io(format!("writing {}", path.display())))
}

/// Points `at` to `target`, replacing whatever is there.
fn link(target: &Path, at: &Path) -> Result<()> {
    if std::fs::read_link(at).is_ok_and(|t| t == target) {
        return Ok(());
    }
    match std::fs::remove_file(at) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("replacing {}", at.display()))(e)),
    }
    std::os::unix::fs::symlink(target, at).map_err(io(format!("linking {}", at.display())))
}
