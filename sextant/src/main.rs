//! The one Sextant binary: `sextant server` runs the API server (controllers,
//! scheduler and `--with-agent` join it as they are built); `sextant agent` runs a
//! node (the kubelet and the dataplane agent); under the name `sextant-cni` it is
//! the CNI plugin. Subcommands turn flags into typed configs and call the
//! library crates; `main` only maps errors to exit codes.

mod agent;
mod prometheus_config;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sextant_apiserver::server::{self, Datastore};
use sextant_metrics::LogFormat;

/// Command line of `sextant`.
#[derive(Debug, Parser)]
#[command(
    name = "sextant",
    version,
    about = "Kubernetes-compatible orchestrator with an eBPF dataplane"
)]
struct Cli {
    /// Log format: human or json.
    #[arg(
        long,
        global = true,
        default_value = "human",
        env = "SEXTANT_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Log filter (e.g. `info`, `sextant_apiserver=debug`); overrides SEXTANT_LOG and RUST_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Export OpenTelemetry traces (a pod's life: API server, scheduler,
    /// kubelet, dataplane) over OTLP/gRPC to this collector, e.g. http://collector:4317.
    #[arg(long, global = true, env = "SEXTANT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane: the Kubernetes API server on the chosen datastore.
    Server(ServerArgs),
    /// Run a node: join the cluster, register the Node, run its pods through CRI.
    Agent(Box<agent::AgentArgs>),
    /// Write a Prometheus configuration (prometheus.yml, certificates, alert
    /// rules) that discovers and scrapes the cluster through its API server.
    PrometheusConfig(prometheus_config::PrometheusConfigArgs),
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Directory for the embedded store, the cluster PKI and admin.kubeconfig.
    #[arg(long, default_value = "/var/lib/sextant")]
    data_dir: PathBuf,
    /// Address and port to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// Where objects are stored.
    #[arg(long, value_enum, default_value = "embedded")]
    datastore: Datastore,
    /// etcd client URLs (comma-separated), with --datastore etcd.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// CIDR Services get their ClusterIPs from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: ipnet::Ipv4Net,
    /// Port range (inclusive) for NodePort Services.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    service_node_port_range: (u16, u16),
    /// CIDR every node's pod CIDR (`spec.podCIDR`) is allocated from.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: ipnet::Ipv4Net,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// Also run a node in this process tree: the agent joins this server and runs
    /// pods through its own containerd (a one-node cluster).
    #[arg(long)]
    with_agent: bool,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a range like 30000-32767"))?;
    let lo: u16 = lo.trim().parse().map_err(|e| format!("{lo:?}: {e}"))?;
    let hi: u16 = hi.trim().parse().map_err(|e| format!("{hi:?}: {e}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{s:?} is not a valid port range"));
    }
    Ok((lo, hi))
}

fn main() -> ExitCode {
    // Invoked through the `sextant-cni` link the agent installs: be the CNI plugin.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "sextant-cni")
    {
        return ExitCode::from(u8::try_from(sextant_dataplane::cni::main()).unwrap_or(1));
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run_cli()),
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_cli() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = sextant_metrics::init_tracing(cli.log_format, cli.log_level.as_deref()) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if let Some(endpoint) = &cli.otlp_endpoint {
        let service = match cli.command {
            Command::Server(_) => "sextant-server",
            Command::Agent(_) => "sextant-agent",
            Command::PrometheusConfig(_) => "sextant",
        };
        if let Err(e) = sextant_metrics::traces::init(endpoint, service) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    let result = match cli.command {
        Command::Server(args) => run_server(args, cli.log_format).await,
        Command::Agent(args) => agent::run(*args).await.map_err(|e| e.to_string()),
        Command::PrometheusConfig(args) => prometheus_config::run(&args).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_server(args: ServerArgs, log_format: LogFormat) -> Result<(), String> {
    let config = server::Config {
        data_dir: args.data_dir,
        listen: args.listen,
        datastore: args.datastore,
        etcd_endpoints: args.etcd_endpoints.clone(),
        service_ranges: sextant_apiserver::service_allocation::Ranges {
            cluster_ips: args.service_cluster_ip_range,
            node_ports: args.service_node_port_range,
        },
    };
    let ipam =
        sextant_controllers::node_ipam::Config::new(args.cluster_cidr, args.node_cidr_mask_size)
            .map_err(|e| e.to_string())?;
    let data_dir = config.data_dir.clone();
    let mut registry = sextant_metrics::Registry::default();
    sextant_metrics::process::register(&mut registry);
    let scheduler_metrics = sextant_scheduler::SchedulerMetrics::register(&mut registry);
    let controller_metrics = sextant_controllers::Metrics::register(&mut registry);
    let state_feeds = sextant_controllers::state_metrics::register(&mut registry);
    let running = server::start(config, registry)
        .await
        .map_err(|e| e.to_string())?;
    let scheduler = tokio::spawn(run_scheduler(data_dir.clone(), scheduler_metrics));
    let dns_ip = sextant_controllers::cluster_dns::service_ip(args.service_cluster_ip_range);
    let control_plane = sextant_controllers::ControlPlane {
        api_service_ip: sextant_controllers::kubernetes_service::service_ip(
            args.service_cluster_ip_range,
        ),
        api_address: sextant_controllers::kubernetes_service::advertise(running.addr),
        etcd: sextant_controllers::etcd_service::members(&args.etcd_endpoints).await,
    };
    let controllers = tokio::spawn(run_controllers(
        data_dir.clone(),
        controller_metrics,
        state_feeds,
        ipam,
        dns_ip,
        control_plane,
    ));
    let node = if args.with_agent {
        let token = std::fs::read_to_string(&running.node_token).unwrap_or_default();
        let agent = agent::AgentArgs {
            server: format!("https://127.0.0.1:{}", running.addr.port()),
            token: token.trim().to_owned(),
            data_dir: data_dir.join("node"),
            node_name: None,
            node_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            container_runtime_endpoint: None,
            container_runtime_metrics_address: None,
            cluster_cidr: args.cluster_cidr,
            cni_conf_dir: None,
            cni_bin_dir: None,
            bpf_dir: None,
            cleanup: false,
            cgroup_root: "/sextant".into(),
            metrics_listen: ([127, 0, 0, 1], 10255).into(),
            kubelet_listen: ([0, 0, 0, 0], 10250).into(),
            cluster_dns: vec![dns_ip.into()],
            cluster_domain: "cluster.local".into(),
            dns_listen: None,
        };
        Some(tokio::spawn(async move {
            if let Err(e) = agent::run(agent).await {
                tracing::error!(error = %e, "the agent stopped");
            }
        }))
    } else {
        None
    };
    tracing::info!(
        addr = %running.addr,
        kubeconfig = %running.kubeconfig.display(),
        node_token = %running.node_token.display(),
        "serving the Kubernetes API"
    );
    // The banner is for a person at a terminal; with JSON logs every line a
    // collector reads must be JSON, so the event above says it instead.
    if log_format == LogFormat::Human {
        println!("Sextant API server listening on https://{}", running.addr);
        println!("Admin kubeconfig: {}", running.kubeconfig.display());
        println!("Node join token: {}", running.node_token.display());
        println!(
            "Try: kubectl --kubeconfig {} version",
            running.kubeconfig.display()
        );
    }
    tokio::select! {
        _ = running.wait() => {}
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    scheduler.abort();
    controllers.abort();
    if let Some(node) = node {
        node.abort();
    }
    Ok(())
}

/// The identity a component's leader election uses: host name and process id.
fn component_identity() -> String {
    format!(
        "{}_{}",
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "sextant".into()),
        std::process::id()
    )
}

/// Runs the controllers in this process with their own identity
/// (`<data-dir>/components/controllers.kubeconfig`).
async fn run_controllers(
    data_dir: PathBuf,
    metrics: sextant_controllers::Metrics,
    state_feeds: sextant_controllers::state_metrics::Feeds,
    ipam: sextant_controllers::node_ipam::Config,
    dns_ip: std::net::Ipv4Addr,
    control_plane: sextant_controllers::ControlPlane,
) {
    let path = data_dir.join("components").join("controllers.kubeconfig");
    match agent::client(&path).await {
        Ok(client) => {
            // Cluster state metrics on every server, leader or not.
            tokio::spawn(state_feeds.run(client.clone()));
            let identity = component_identity();
            sextant_controllers::run(client, metrics, identity, ipam, dns_ip, control_plane).await
        }
        Err(e) => tracing::error!(error = %e, "the controllers cannot start"),
    }
}

/// Runs the scheduler in this process with its own identity
/// (`<data-dir>/components/scheduler.kubeconfig`).
async fn run_scheduler(data_dir: PathBuf, metrics: sextant_scheduler::SchedulerMetrics) {
    let path = data_dir.join("components").join("scheduler.kubeconfig");
    let client = match agent::client(&path).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the scheduler cannot start");
            return;
        }
    };
    sextant_scheduler::run(client, metrics, component_identity()).await;
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
