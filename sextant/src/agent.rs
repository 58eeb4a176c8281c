//! `sextant agent`: joins the cluster once (the token for the node's own client
//! certificate, kept in the data dir as `agent/kubeconfig`), then runs the
//! dataplane agent (pod networking through `sextant-cni`) and the kubelet, and
//! serves their metrics.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use kube::config::{KubeConfigOptions, Kubeconfig};
use sextant_apiserver::{bootstrap, pki};

/// Command line of `sextant agent`.
#[derive(Debug, clap::Args)]
pub(crate) struct AgentArgs {
    /// The API server, e.g. https://10.0.0.1:6443.
    #[arg(long)]
    pub(crate) server: String,
    /// The join token from the server's `<data-dir>/node-token` (used once).
    #[arg(long, env = "SEXTANT_TOKEN", hide_env_values = true)]
    pub(crate) token: String,
    /// Where the agent keeps its identity, pod logs and state.
    #[arg(long, default_value = "/var/lib/sextant-agent")]
    pub(crate) data_dir: PathBuf,
    /// The Node's name (default: the host name).
    #[arg(long)]
    pub(crate) node_name: Option<String>,
    /// The address this node is reached at.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) node_ip: IpAddr,
    /// The CRI runtime's socket, e.g. unix:///run/containerd/containerd.sock;
    /// without it the agent runs its own containerd under its data dir.
    #[arg(long)]
    pub(crate) container_runtime_endpoint: Option<String>,
    /// Where that runtime serves Prometheus metrics (containerd's `[metrics]
    /// address`, e.g. 127.0.0.1:1338); the kubelet port relays them as
    /// /metrics/containerd. The agent's own containerd needs none.
    #[arg(long)]
    pub(crate) container_runtime_metrics_address: Option<SocketAddr>,
    /// The cluster's pod CIDR (the server's --cluster-cidr): pod traffic leaving it
    /// is masqueraded to the node's address. This node's own range is the
    /// podCIDR the control plane assigns to its Node.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub(crate) cluster_cidr: ipnet::Ipv4Net,
    /// Where the container runtime reads CNI network configurations; with an
    /// external --container-runtime-endpoint, Sextant networks pods only when set.
    #[arg(long)]
    pub(crate) cni_conf_dir: Option<PathBuf>,
    /// Where the container runtime finds CNI plugins (`sextant-cni` is linked here).
    #[arg(long)]
    pub(crate) cni_bin_dir: Option<PathBuf>,
    /// The agent's directory in bpffs for pinned maps and links (default
    /// /sys/fs/bpf/sextant/<node name>).
    #[arg(long)]
    pub(crate) bpf_dir: Option<PathBuf>,
    /// Remove every program, pin, route, link and file the dataplane made on this
    /// node, then exit (uninstall; drain the node first).
    #[arg(long)]
    pub(crate) cleanup: bool,
    /// The cgroup pods' cgroups are made under.
    #[arg(long, default_value = "/sextant")]
    pub(crate) cgroup_root: String,
    /// Where the agent serves /metrics (plain HTTP; keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:10255")]
    pub(crate) metrics_listen: SocketAddr,
    /// Where the kubelet API (HTTPS, for the API server's log proxy) listens.
    #[arg(long, default_value = "0.0.0.0:10250")]
    pub(crate) kubelet_listen: SocketAddr,
    /// The cluster DNS address pods use (the `kube-dns` Service: the tenth address
    /// of the server's --service-cluster-ip-range).
    #[arg(long, value_delimiter = ',', default_value = "10.96.0.10")]
    pub(crate) cluster_dns: Vec<IpAddr>,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    pub(crate) cluster_domain: String,
    /// Where this node's agent answers cluster DNS (default: the node IP, port 53).
    #[arg(long)]
    pub(crate) dns_listen: Option<SocketAddr>,
}

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Joining failed.
    #[error(transparent)]
    Join(#[from] bootstrap::JoinError),
    /// Writing or reading the agent's identity failed.
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// The kubeconfig could not be used.
    #[error("the agent kubeconfig {path}: {message}")]
    Kubeconfig {
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The endpoint is not a unix socket.
    #[error("--container-runtime-endpoint {0:?} is not a unix:// socket")]
    Endpoint(String),
    /// The data dir could not be made.
    #[error("creating {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The metrics listener.
    #[error(transparent)]
    Metrics(#[from] sextant_metrics::Error),
    /// The kubelet stopped.
    #[error(transparent)]
    Kubelet(#[from] sextant_kubelet::Error),
    /// The dataplane agent could not start.
    #[error("the dataplane: {0}")]
    Dataplane(#[from] sextant_dataplane::Error),
    /// The CNI directories are incomplete.
    #[error("--cni-conf-dir and --cni-bin-dir go together")]
    CniDirs,
    /// The path of this executable (linked as `sextant-cni`) is unknown.
    #[error("locating the sextant executable: {0}")]
    Executable(std::io::Error),
}

/// Joins if needed, then runs the kubelet until it stops or a signal arrives.
pub(crate) async fn run(args: AgentArgs) -> Result<(), Error> {
    let node_name = match args.node_name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().to_lowercase())
            .unwrap_or_else(|_| "node".into()),
    };
    let dataplane_config = |cni_conf_dir: PathBuf, cni_bin_dir: PathBuf| {
        Ok::<_, Error>(sextant_dataplane::agent::Config {
            dir: args.data_dir.join("dataplane"),
            pin_dir: args
                .bpf_dir
                .clone()
                .unwrap_or_else(|| Path::new("/sys/fs/bpf/sextant").join(&node_name)),
            node_name: node_name.clone(),
            cluster_cidr: args.cluster_cidr,
            cni_conf_dir,
            cni_bin_dir,
            plugin: std::env::current_exe().map_err(Error::Executable)?,
            cluster_domain: args.cluster_domain.clone(),
            dns_listen: args
                .dns_listen
                .unwrap_or_else(|| SocketAddr::new(args.node_ip, 53)),
        })
    };
    if args.cleanup {
        let cni = sextant_kubelet::containerd::cni_dir(&args.data_dir);
        let config = dataplane_config(
            args.cni_conf_dir
                .clone()
                .unwrap_or_else(|| cni.join("net.d")),
            args.cni_bin_dir.clone().unwrap_or_else(|| cni.join("bin")),
        )?;
        sextant_dataplane::agent::cleanup(&config).await?;
        return Ok(());
    }
    // An external runtime, or the agent's own containerd (kept for its lifetime).
    let (socket, runtime_metrics, _containerd) = match &args.container_runtime_endpoint {
        Some(endpoint) => {
            let path = endpoint
                .strip_prefix("unix://")
                .ok_or_else(|| Error::Endpoint(endpoint.clone()))?;
            (
                PathBuf::from(path),
                args.container_runtime_metrics_address,
                None,
            )
        }
        None => {
            let managed = sextant_kubelet::containerd::start(&args.data_dir).await?;
            (managed.socket.clone(), Some(managed.metrics), Some(managed))
        }
    };
    // Pod networking: always for our own containerd, else only when asked to.
    let cni_dirs = match (&args.cni_conf_dir, &args.cni_bin_dir) {
        (Some(conf), Some(bin)) => Some((conf.clone(), bin.clone())),
        (None, None) if args.container_runtime_endpoint.is_none() => {
            let cni = sextant_kubelet::containerd::cni_dir(&args.data_dir);
            Some((cni.join("net.d"), cni.join("bin")))
        }
        (None, None) => None,
        _ => return Err(Error::CniDirs),
    };
    let dir = args.data_dir.join("agent");
    std::fs::create_dir_all(&dir).map_err(|source| Error::DataDir {
        path: dir.clone(),
        source,
    })?;
    let kubeconfig = dir.join("kubeconfig");
    let (serving_cert, serving_key, ca) = (
        dir.join("kubelet.crt"),
        dir.join("kubelet.key"),
        dir.join("ca.crt"),
    );
    if !kubeconfig.exists() || !serving_cert.exists() {
        let addresses = [args.node_ip.to_string()];
        let joined =
            bootstrap::join_cluster(&args.server, &args.token, &node_name, &addresses).await?;
        let pair = pki::CertPair {
            cert_pem: joined.certificate,
            key_pem: joined.key,
        };
        pki::write_private(&ca, &joined.ca)?;
        pki::write_private(&serving_cert, &joined.serving_certificate)?;
        pki::write_private(&serving_key, &joined.serving_key)?;
        pki::write_private(
            &kubeconfig,
            &pki::kubeconfig(&args.server, &joined.ca, &pair),
        )?;
        tracing::info!(node = %node_name, kubeconfig = %kubeconfig.display(), "joined the cluster");
    }
    let client = client(&kubeconfig).await?;

    let mut registry = sextant_metrics::Registry::default();
    sextant_metrics::process::register(&mut registry);
    let metrics = sextant_kubelet::metrics::KubeletMetrics::register(&mut registry);
    let dataplane = match cni_dirs {
        Some((cni_conf_dir, cni_bin_dir)) => {
            let config = dataplane_config(cni_conf_dir, cni_bin_dir)?;
            Some(sextant_dataplane::agent::start(client.clone(), config, &mut registry).await?)
        }
        None => {
            tracing::info!("pod networking is left to the runtime's own CNI configuration");
            None
        }
    };
    let node_routes = dataplane.as_ref().map_or_else(axum::Router::new, |d| {
        sextant_dataplane::inspect::router(d.inspect.clone())
    });
    let registry = Arc::new(registry);
    let server = sextant_metrics::serve(args.metrics_listen, registry.clone()).await?;
    tracing::info!(addr = ?server.local_addr().ok(), "serving agent metrics");
    let serving = tokio::spawn(server.run());

    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| Error::Kubeconfig {
            path: p.to_owned(),
            message: e.to_string(),
        })
    };
    let tls = sextant_kubelet::server::Tls {
        ca_pem: read(&ca)?,
        cert_pem: read(&serving_cert)?,
        key_pem: read(&serving_key)?,
    };
    let config = sextant_kubelet::Config {
        node_name,
        node_ip: args.node_ip,
        cri_socket: socket,
        data_dir: args.data_dir,
        cgroup_root: args.cgroup_root,
        kubelet_listen: args.kubelet_listen,
        cluster_dns: args.cluster_dns.clone(),
        cluster_domain: args.cluster_domain.clone(),
        runtime_metrics,
    };
    let result = tokio::select! {
        r = sextant_kubelet::run(client, config, tls, metrics, registry, node_routes) => r.map_err(Error::from),
        _ = crate::shutdown_signal() => {
            tracing::info!("shutting down; pods keep running");
            Ok(())
        }
    };
    serving.abort();
    result
}

/// A kube client from the kubeconfig at `path`.
pub(crate) async fn client(path: &Path) -> Result<kube::Client, Error> {
    let bad = |message: String| Error::Kubeconfig {
        path: path.to_owned(),
        message,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| bad(e.to_string()))
}
