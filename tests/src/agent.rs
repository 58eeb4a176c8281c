//! A real `sextant agent` process joined to a harness [`SextantServer`] and running
//! pods through a harness [`Containerd`], with its own data dir, node name and
//! metrics port.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tempfile::TempDir;

use crate::{
    Error, Result,
    containerd::Containerd,
    etcd::EtcdCluster,
    free_port, io_err,
    netns::{Fabric, Netns},
    process::ChildProcess,
    sextant::SextantServer,
    unique_name,
};

/// A `sextant agent` owned by a test; killed on drop (its pods stay in the
/// harness containerd, which cleans them up).
#[derive(Debug)]
pub struct SextantAgent {
    process: Option<ChildProcess>,
    binary: PathBuf,
    args: Vec<String>,
    /// The node's network namespace, when the agent runs inside one.
    netns: Option<String>,
    /// The Node's name.
    pub node_name: String,
    /// Where `/metrics` is served.
    pub metrics_addr: String,
    dir: TempDir,
}

impl SextantAgent {
    /// Starts `binary agent` against `server` and `containerd`, and waits until its
    /// Node is Ready. The agent runs in the host's network namespace and leaves pod
    /// networking to the harness containerd's bridge.
    pub async fn start(
        binary: &Path,
        server: &SextantServer,
        containerd: &Containerd,
    ) -> Result<Self> {
        Self::start_inner(binary, server, containerd, None, &[]).await
    }

    /// Starts `binary agent` inside the network namespace of `containerd` (made with
    /// [`Containerd::start_for_node`]) as a node at `node_ip`, with Sextant's own
    /// pod networking: it installs `sextant-cni` for that containerd. Its kubelet and
    /// metrics listen on `node_ip`, which the host reaches through the fabric.
    pub async fn start_on_node(
        binary: &Path,
        server: &SextantServer,
        containerd: &Containerd,
        node_ip: std::net::Ipv4Addr,
    ) -> Result<Self> {
        Self::start_inner(binary, server, containerd, Some(node_ip), &[]).await
    }

    async fn start_inner(
        binary: &Path,
        server: &SextantServer,
        containerd: &Containerd,
        node_ip: Option<std::net::Ipv4Addr>,
        extra: &[&str],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sextant-agent-")
            .tempdir()
            .map_err(io_err("temp dir"))?;
        let token = std::fs::read_to_string(server.data_dir().join("node-token"))
            .map_err(io_err("reading the node token"))?;
        let node_name = unique_name("node-");
        let ip = node_ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST);
        let metrics_addr = format!("{ip}:{}", free_port()?);
        let mut args = vec![
            "agent".to_owned(),
            "--server".to_owned(),
            format!("https://{}", server.addr),
            "--token".to_owned(),
            token.trim().to_owned(),
            "--data-dir".to_owned(),
            dir.path().join("data").to_string_lossy().into_owned(),
            "--node-name".to_owned(),
            node_name.clone(),
            "--node-ip".to_owned(),
            ip.to_string(),
            "--container-runtime-endpoint".to_owned(),
            format!("unix://{}", containerd.socket().display()),
            "--container-runtime-metrics-address".to_owned(),
            containerd.metrics_addr(),
            // Under the harness containerd's cgroup parent, so its cleanup finds them.
            "--cgroup-root".to_owned(),
            format!("/{}", containerd.cgroup_parent()),
            "--metrics-listen".to_owned(),
            metrics_addr.clone(),
            "--kubelet-listen".to_owned(),
            format!("{ip}:{}", free_port()?),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        if node_ip.is_some() {
            let (conf, bin) = containerd.cni_dirs();
            args.extend([
                "--bpf-dir".to_owned(),
                bpf_dir(&node_name).to_string_lossy().into_owned(),
                "--cni-conf-dir".to_owned(),
                conf.to_string_lossy().into_owned(),
                "--cni-bin-dir".to_owned(),
                bin.to_string_lossy().into_owned(),
            ]);
        }
        let mut agent = Self {
            process: None,
            binary: binary.to_owned(),
            args,
            netns: node_ip.map(|_| containerd.netns().path()),
            node_name,
            metrics_addr,
            dir,
        };
        agent.spawn(server).await?;
        Ok(agent)
    }

    fn command(&self) -> Command {
        match &self.netns {
            // Only the network namespace: the agent needs the host's cgroup and bpf mounts.
            Some(path) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={path}")).arg("--").arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        }
    }

    /// Stops the agent and runs `sextant agent --cleanup` with its flags (in its
    /// node's namespace): the uninstall path. Returns the command's output.
    pub fn uninstall(&mut self) -> Result<String> {
        self.kill();
        let mut cmd = self.command();
        cmd.args(&self.args).arg("--cleanup");
        crate::run(&mut cmd)
    }

    async fn spawn(&mut self, server: &SextantServer) -> Result<()> {
        let mut cmd = self.command();
        cmd.args(&self.args);
        let log = self.dir.path().join("agent.log");
        self.process = Some(ChildProcess::spawn("sextant agent", cmd, &log)?);
        let kubectl = server.kubectl()?;
        let node = self.node_name.clone();
        let metrics = format!("http://{}/metrics", self.metrics_addr);
        let ready = crate::wait_for(
            "the agent's Node to be Ready",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let out = kubectl.run(
                    &[
                        "get",
                        "node",
                        &node,
                        "-o",
                        r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
                    ],
                    None,
                );
                let metrics = metrics.clone();
                async move {
                    let ready = out.ok().is_some_and(|o| o.stdout == b"True");
                    let serving = reqwest::get(&metrics)
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    (ready && serving).then_some(())
                }
            },
        )
        .await;
        ready.map_err(|e| match e {
            Error::Timeout { what, after, .. } => Error::Timeout {
                what,
                after,
                log_tail: Some(self.log_tail(40)),
            },
            other => other,
        })
    }

    /// The agent's bpffs pin directory (agents on a node namespace only).
    pub fn bpf_dir(&self) -> PathBuf {
        bpf_dir(&self.node_name)
    }

    /// `kill -9` (a crash); the pods keep running.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the agent again with the same flags and data dir.
    pub async fn restart(&mut self, server: &SextantServer) -> Result<()> {
        self.kill();
        self.spawn(server).await
    }

    /// The agent's data dir (identity, pod logs).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }

    /// Opens an Observe stream (flows) on the agent's socket.
    pub async fn observe(
        &self,
        filter: sextant_dataplane::api::ObserveRequest,
    ) -> Result<tonic::Streaming<sextant_dataplane::api::Flow>> {
        let socket = self.data_dir().join("dataplane/dataplane.sock");
        let failed =
            |e: String| Error::Failed(format!("observing flows on {}: {e}", socket.display()));
        let channel = sextant_dataplane::agent::connect(&socket, Duration::from_secs(60))
            .await
            .map_err(|e| failed(e.to_string()))?;
        let stream = sextant_dataplane::api::observer_client::ObserverClient::new(channel)
            .observe(filter)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(stream.into_inner())
    }

    /// The value of the counter `metric{labels}` (labels as printed, e.g.
    /// `reason="no_backend"`) in the agent's `/metrics`.
    pub async fn counter(&self, metric: &str, labels: &str) -> Result<u64> {
        let text = self.metrics().await?;
        let prefix = format!("{metric}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| Error::Failed(format!("no {prefix}in /metrics")))
    }

    /// The agent's `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("http://{}/metrics", self.metrics_addr);
        let r = reqwest::get(&url).await.map_err(|source| Error::Http {
            url: url.clone(),
            source,
        })?;
        r.text().await.map_err(|source| Error::Http { url, source })
    }
}

/// Where a test agent pins its maps and links: unique per node, removed on drop.
fn bpf_dir(node_name: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(format!("sextant-{node_name}"))
}

impl Drop for SextantAgent {
    fn drop(&mut self) {
        self.kill();
        // Unpinning detaches the pods' programs and frees the maps.
        let dir = self.bpf_dir();
        for sub in ["links", "maps"] {
            if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let _ = std::fs::remove_dir(dir.join(sub));
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// A one-node cluster for tests whose pods must run: a harness containerd with
/// the test images, a server on the embedded store, and an agent joined to it.
/// Fields drop in order: the agent first, the containerd last.
#[derive(Debug)]
pub struct OneNodeCluster {
    /// The node's agent.
    pub agent: SextantAgent,
    /// The server.
    pub server: SextantServer,
    /// The node's container runtime.
    pub containerd: Containerd,
}

impl OneNodeCluster {
    /// Starts the three, the agent once its Node is Ready.
    pub async fn start(binary: &Path) -> Result<Self> {
        Self::start_with_flags(binary, &[]).await
    }

    /// Like [`OneNodeCluster::start`], with `flags` given to both the server and
    /// the agent (global flags such as `--otlp-endpoint`).
    pub async fn start_with_flags(binary: &Path, flags: &[&str]) -> Result<Self> {
        let containerd = Containerd::start().await?;
        containerd.import_test_images().await?;
        let server =
            SextantServer::start_with(binary, crate::sextant::Datastore::Embedded, flags).await?;
        let agent = SextantAgent::start_inner(binary, &server, &containerd, None, flags).await?;
        Ok(Self {
            agent,
            server,
            containerd,
        })
    }
}

/// A cluster of network-namespace nodes with Sextant's own pod networking: a
/// [`Fabric`] the host joins at `.254`, a server listening there, and per node a
/// namespace on the fabric (`.1`, `.2`, ...) holding its containerd and its agent.
/// Fields drop in order: agents, server, etcd, containerds, then the fabric.
#[derive(Debug)]
pub struct NetworkCluster {
    /// The nodes' agents, in node order.
    pub agents: Vec<SextantAgent>,
    /// The server.
    pub server: SextantServer,
    /// The server's etcd, when the cluster stores in one ([`NetworkCluster::start_on_etcd`]).
    pub etcd: Option<EtcdCluster>,
    /// The nodes' runtimes (each owns its node's namespace).
    pub containerds: Vec<Containerd>,
    /// The host's address on the fabric.
    pub host_ip: std::net::Ipv4Addr,
    /// The fabric.
    pub fabric: Fabric,
}

impl NetworkCluster {
    /// Starts `nodes` nodes, each Ready with the test images imported.
    pub async fn start(binary: &Path, nodes: u8) -> Result<Self> {
        Self::start_with_flags(binary, nodes, |_| Vec::new()).await
    }

    /// Like [`NetworkCluster::start`], giving the server and every agent the
    /// global flags `flags(host address on the fabric)` returns (such as an
    /// `--otlp-endpoint` on the host).
    pub async fn start_with_flags(
        binary: &Path,
        nodes: u8,
        flags: impl Fn(std::net::Ipv4Addr) -> Vec<String>,
    ) -> Result<Self> {
        Self::start_inner(binary, nodes, flags, false).await
    }

    /// Like [`NetworkCluster::start`], the server storing in a real one-member
    /// etcd that listens on the host's fabric address (so Prometheus on a node
    /// can scrape it).
    pub async fn start_on_etcd(binary: &Path, nodes: u8) -> Result<Self> {
        Self::start_inner(binary, nodes, |_| Vec::new(), true).await
    }

    async fn start_inner(
        binary: &Path,
        nodes: u8,
        flags: impl Fn(std::net::Ipv4Addr) -> Vec<String>,
        with_etcd: bool,
    ) -> Result<Self> {
        let mut fabric = Fabric::new_unused()?;
        let host_ip = fabric.join_host()?;
        let flags = flags(host_ip);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut containerds = Vec::new();
        let mut ips = Vec::new();
        for i in 0..nodes {
            let ns = Netns::new("sxn")?;
            ips.push(fabric.join(&ns, i + 1)?);
            let c = Containerd::start_for_node(ns).await?;
            c.import_test_images().await?;
            containerds.push(c);
        }
        let etcd = if with_etcd {
            Some(EtcdCluster::start_on(1, host_ip).await?)
        } else {
            None
        };
        let datastore = match &etcd {
            Some(etcd) => crate::sextant::Datastore::Etcd(etcd),
            None => crate::sextant::Datastore::Embedded,
        };
        let server = SextantServer::start_on(binary, datastore, host_ip, &flags).await?;
        let mut agents = Vec::new();
        for (c, ip) in containerds.iter().zip(ips) {
            agents.push(SextantAgent::start_inner(binary, &server, c, Some(ip), &flags).await?);
        }
        Ok(Self {
            agents,
            server,
            etcd,
            containerds,
            host_ip,
            fabric,
        })
    }
}
