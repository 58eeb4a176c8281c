//! A real containerd + runc (Debian packages) with its own config, root, state dir,
//! socket, runc root and CNI config, running in a network namespace of its own so the
//! CNI bridge and pod interfaces never touch the host's network.
//!
//! # Cleanup
//! On drop every pod sandbox is stopped and removed through CRI (which also removes
//! the `/var/run/netns/cni-*` namespaces), then containerd is stopped, leftover shims
//! and runc containers are killed, mounts under its directories are detached, and the
//! cgroups under its cgroup parent are removed.
//!
//! # Streaming
//! containerd's CRI streaming server (exec, attach, port-forward) listens on the
//! namespace's loopback, which a kubelet in the host namespace cannot reach. The
//! harness fixes its port and relays the same port on the host's loopback into
//! the namespace, so the kubelet's `127.0.0.1:<port>` URLs work as on a node.
//! Its metrics listener (`[metrics] address`) is relayed the same way.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use k8s_cri::v1 as cri;
use sextant_kubelet::cri::CriClient;
use tempfile::TempDir;

use crate::{
    Error, Result, images, io_err, netns::Netns, process::ChildProcess, require_command, run,
    unique_name,
};

/// A containerd owned by a test.
#[derive(Debug)]
pub struct Containerd {
    // Field order is drop order: the process goes before the namespace and the dir.
    process: Option<ChildProcess>,
    socket: PathBuf,
    cgroup_parent: String,
    netns: Netns,
    dir: TempDir,
    /// containerd's metrics port on loopback (relayed like the streaming port).
    metrics_port: u16,
    /// The relays' own runtimes: tests block their runtime's thread on kubectl.
    relays: Vec<tokio::runtime::Runtime>,
}

/// The CNI plugins the bridge network of [`Containerd::start`] runs.
const BRIDGE_PLUGINS: [&str; 4] = ["bridge", "host-local", "loopback", "portmap"];

impl Containerd {
    /// Starts containerd in a namespace of its own with the reference bridge CNI
    /// network, and waits until its CRI plugin answers `Version`.
    pub async fn start() -> Result<Self> {
        Self::start_in(Netns::new("sxc")?, true).await
    }

    /// Starts containerd in `netns`, a node's namespace, with no CNI network: the
    /// node's `sextant agent` installs `sextant-cni` into [`Containerd::cni_dirs`].
    pub async fn start_for_node(netns: Netns) -> Result<Self> {
        Self::start_in(netns, false).await
    }

    async fn start_in(netns: Netns, bridge: bool) -> Result<Self> {
        for c in [
            "containerd",
            "containerd-shim-runc-v2",
            "runc",
            "ctr",
            "nsenter",
        ] {
            require_command(c)?;
        }
        let dir = tempfile::Builder::new()
            .prefix("sextant-containerd-")
            .tempdir()
            .map_err(io_err("creating the containerd temp dir"))?;
        let d = dir.path();
        for sub in [
            "root",
            "state",
            "runc",
            "cni/net.d",
            "cni/bin",
            "cni/ipam",
            "logs",
        ] {
            std::fs::create_dir_all(d.join(sub)).map_err(io_err(format!("creating {sub}")))?;
        }
        let socket = d.join("containerd.sock");
        let cgroup_parent = unique_name("sextant-test-");
        let (stream_port, stream_relay) = relay_loopback_into(&netns)?;
        let (metrics_port, metrics_relay) = relay_loopback_into(&netns)?;
        std::fs::write(
            d.join("config.toml"),
            // The agent's own containerd config: the harness runs what nodes run.
            sextant_kubelet::containerd::config_toml(
                d,
                &socket,
                &d.join("cni"),
                stream_port,
                metrics_port,
            ),
        )
        .map_err(io_err("writing config.toml"))?;
        if bridge {
            for plugin in BRIDGE_PLUGINS {
                let target = Path::new("/usr/lib/cni").join(plugin);
                std::os::unix::fs::symlink(&target, d.join("cni/bin").join(plugin))
                    .map_err(io_err(format!("linking {}", target.display())))?;
            }
            std::fs::write(d.join("cni/net.d/10-test.conflist"), cni_conflist(d))
                .map_err(io_err("writing the CNI config"))?;
        }

        let mut cmd = netns.command("containerd");
        cmd.arg("--config").arg(d.join("config.toml"));
        let process = ChildProcess::spawn("containerd", cmd, &d.join("containerd.log"))?;
        let mut this = Self {
            process: Some(process),
            socket,
            cgroup_parent,
            netns,
            dir,
            metrics_port,
            relays: vec![stream_relay, metrics_relay],
        };
        this.wait_ready().await?;
        Ok(this)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let socket = self.socket.clone();
        let ready = crate::wait_for(
            "containerd CRI",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                let socket = socket.clone();
                async move {
                    let mut c = CriClient::connect(&socket).await.ok()?;
                    c.runtime
                        .version(cri::VersionRequest::default())
                        .await
                        .ok()
                        .map(|_| ())
                }
            },
        )
        .await;
        if let Err(Error::Timeout { what, after, .. }) = ready {
            let log_tail = self.process.as_ref().map(|p| p.log_tail(40));
            return Err(Error::Timeout {
                what,
                after,
                log_tail,
            });
        }
        ready
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Where containerd serves Prometheus metrics: `127.0.0.1:<port>` in its
    /// namespace and, relayed, on the host.
    pub fn metrics_addr(&self) -> String {
        format!("127.0.0.1:{}", self.metrics_port)
    }

    /// The network namespace containerd (and so every pod's host-side link) lives in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The CNI configuration and plugin directories containerd reads.
    pub fn cni_dirs(&self) -> (PathBuf, PathBuf) {
        let cni = self.dir.path().join("cni");
        (cni.join("net.d"), cni.join("bin"))
    }

    /// The cgroup parent pods must use, so cleanup finds their cgroups.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// A directory for pod log directories.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// A connected CRI client.
    pub async fn cri(&self) -> Result<CriClient> {
        CriClient::connect(&self.socket)
            .await
            .map_err(|e| Error::Missing(e.to_string()))
    }

    /// The last lines of containerd's own log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }

    /// Imports an OCI archive into the `k8s.io` namespace and waits until CRI sees it.
    pub async fn import_image(&self, image: &str) -> Result<()> {
        let archive = images::archive(image)?;
        run(Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(&archive))?;
        let c = self.cri().await?;
        crate::wait_for(
            &format!("CRI to see {image}"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let req = cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: image.to_owned(),
                        ..Default::default()
                    }),
                    verbose: false,
                };
                let mut c = c.images.clone();
                async move {
                    c.image_status(req)
                        .await
                        .ok()?
                        .into_inner()
                        .image
                        .map(|_| ())
                }
            },
        )
        .await?;
        Ok(())
    }

    /// Imports every test image (busybox, demo, pause).
    pub async fn import_test_images(&self) -> Result<()> {
        for (image, _) in images::ALL {
            self.import_image(image).await?;
        }
        Ok(())
    }

    fn cleanup(&mut self) {
        // CRI calls are async and Drop may run inside a runtime: use a fresh one on
        // its own thread.
        let socket = self.socket.clone();
        let removed = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(remove_all_sandboxes(&socket)).ok()
        })
        .join();
        if !matches!(removed, Ok(Some(()))) {
            tracing::warn!("removing pod sandboxes through CRI failed; killing what is left");
        }
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
        kill_shims(&self.socket);
        let runc_root = self.dir.path().join("runc");
        kill_runc_containers(&runc_root);
        unmount_under(self.dir.path());
        remove_cgroups(&self.cgroup_parent);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for relay in self.relays.drain(..) {
            relay.shutdown_background();
        }
        self.cleanup();
    }
}

/// Listens on a free port of the host's loopback and relays every connection to
/// the same port on `netns`'s loopback, on a runtime of its own (tests block
/// their own runtime's thread while kubectl runs); returns the port and the
/// runtime.
fn relay_loopback_into(netns: &Netns) -> Result<(u16, tokio::runtime::Runtime)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(io_err("starting the streaming relay's runtime"))?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(io_err("binding the streaming relay"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("the streaming relay's address"))?
        .port();
    listener
        .set_nonblocking(true)
        .map_err(io_err("the streaming relay's socket"))?;
    let path = netns.path();
    rt.spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        while let Ok((mut host_side, _)) = listener.accept().await {
            let path = path.clone();
            tokio::spawn(async move {
                let connect = tokio::task::spawn_blocking(move || connect_in(&path, port)).await;
                let Ok(Ok(ns_side)) = connect else { return };
                let Ok(mut ns_side) = tokio::net::TcpStream::from_std(ns_side) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut host_side, &mut ns_side).await;
            });
        }
    });
    Ok((port, rt))
}

/// Connects to `127.0.0.1:port` in the namespace at `path` (a socket stays in
/// the namespace it was made in).
fn connect_in(path: &str, port: u16) -> Result<std::net::TcpStream> {
    crate::netns::run_in_path(path, || {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    })?
    .map_err(io_err("connecting to the namespace's streaming server"))
}

async fn remove_all_sandboxes(socket: &Path) -> Result<()> {
    let mut c = CriClient::connect(socket)
        .await
        .map_err(|e| Error::Missing(e.to_string()))?;
    let list = c
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .map_err(|s| Error::Grpc {
            what: "ListPodSandbox".into(),
            status: Box::new(s),
        })?
        .into_inner();
    for sb in list.items {
        let id = sb.id;
        let _ = c
            .runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await;
        let _ = c
            .runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await;
    }
    Ok(())
}

/// Kills containerd-shim processes serving this containerd's socket.
fn kill_shims(socket: &Path) {
    let needle = socket.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_shim = args.first().is_some_and(|a| a.contains("containerd-shim"));
        if is_shim && args.iter().any(|a| a == &needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Kills and deletes every runc container under `root`.
fn kill_runc_containers(root: &Path) {
    let Ok(out) = run(Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["list", "-q"]))
    else {
        return;
    };
    for id in out.lines().filter(|l| !l.is_empty()) {
        let _ = run(Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["kill", id, "KILL"]));
        let _ = run(Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["delete", "--force", id]));
    }
}

/// Lazily unmounts every mount point under `dir`, deepest first.
pub(crate) fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Removes the cgroup directories named `parent` (and everything below) in every
/// hierarchy mounted under /sys/fs/cgroup, v1 and v2.
pub(crate) fn remove_cgroups(parent: &str) {
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for root in roots {
        let dir = root.join(parent);
        if dir.is_dir() {
            remove_cgroup_dir(&dir);
        }
    }
}

fn remove_cgroup_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_dir(&e.path());
            }
        }
    }
    // A cgroup directory can only be removed with rmdir, and only once it is empty
    // of processes; retry briefly while killed tasks exit.
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(dir = %dir.display(), "cgroup left behind");
}

fn cni_conflist(dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "sextant-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.join("cni/ipam"),
                    "ranges": [[{ "subnet": "10.88.0.0/24" }]],
                    "routes": [{ "dst": "0.0.0.0/0" }]
                }
            }
        ]
    })
    .to_string()
}
