//! The agent's own containerd, as k3s runs one: when no
//! `--container-runtime-endpoint` is given, the agent writes a containerd config
//! (own root, state, socket and runc root under its data dir; the CRI plugin with
//! `restrict_oom_score_adj = true` and `sextant.local/pause:v1` as the sandbox
//! image; CNI configs and plugins under `<data-dir>/cni`, where the dataplane agent
//! installs `sextant-cni`), starts containerd,
//! restarts it if it dies, and imports every image archive found in
//! `<data-dir>/agent/images/` (air-gapped installs; nothing is pulled).
//!
//! containerd outlives the agent on purpose: pods keep running while the agent is
//! down, and a restarted agent adopts the containerd already answering on the
//! socket.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::task::JoinHandle;

use crate::{Error, cri::CriClient};

/// The sandbox image, imported from the agent's image directory.
pub const SANDBOX_IMAGE: &str = "sextant.local/pause:v1";

/// A containerd the agent runs and watches.
#[derive(Debug)]
pub struct Managed {
    /// Its CRI socket.
    pub socket: PathBuf,
    /// Where it serves its Prometheus metrics (`[metrics] address`, loopback).
    pub metrics: SocketAddr,
    supervisor: JoinHandle<()>,
}

impl Drop for Managed {
    fn drop(&mut self) {
        // Stops restarting containerd; containerd itself keeps running.
        self.supervisor.abort();
    }
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Internal(format!("{what}: {e}"))
}

/// The CNI directory of the agent's own containerd: `net.d/` (configs), `bin/` (plugins).
pub fn cni_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cni")
}

/// Starts (or adopts) the agent's containerd under `data_dir` and imports the
/// agent's images.
pub async fn start(data_dir: &Path) -> Result<Managed, Error> {
    let dir = data_dir.join("containerd");
    for sub in ["root", "state", "runc", "opt"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(io("creating the containerd dirs"))?;
    }
    let cni = cni_dir(data_dir);
    std::fs::create_dir_all(cni.join("net.d")).map_err(io("creating the CNI dirs"))?;
    std::fs::create_dir_all(cni.join("bin")).map_err(io("creating the CNI dirs"))?;
    let socket = dir.join("containerd.sock");
    let config = dir.join("config.toml");
    // A containerd already running (adopted) keeps the metrics port its config
    // gave it; a new one gets a free port.
    let metrics = match (answers(&socket).await, metrics_address(&config)) {
        (true, Some(addr)) => addr,
        _ => free_loopback_port()?,
    };
    std::fs::write(&config, config_toml(&dir, &socket, &cni, 0, metrics.port()))
        .map_err(io("writing config.toml"))?;

    let supervisor = tokio::spawn(supervise(
        config,
        dir.join("containerd.log"),
        socket.clone(),
    ));
    let cri = wait_ready(&socket).await?;
    drop(cri);
    import_images(&socket, &data_dir.join("agent").join("images")).await?;
    Ok(Managed {
        socket,
        metrics,
        supervisor,
    })
}

/// The `[metrics] address` of the containerd config at `path`, if it has one.
fn metrics_address(path: &Path) -> Option<SocketAddr> {
    #[derive(serde::Deserialize)]
    struct Config {
        metrics: Option<Metrics>,
    }
    #[derive(serde::Deserialize)]
    struct Metrics {
        address: Option<String>,
    }
    let text = std::fs::read_to_string(path).ok()?;
    let config: Config = toml::from_str(&text).ok()?;
    config.metrics?.address?.parse().ok()
}

/// A port of the loopback address nothing listens on now.
fn free_loopback_port() -> Result<SocketAddr, Error> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(io("finding a free port for containerd's metrics"))?;
    listener
        .local_addr()
        .map_err(io("finding a free port for containerd's metrics"))
}

async fn answers(socket: &Path) -> bool {
    let Ok(mut c) = CriClient::connect(socket).await else {
        return false;
    };
    c.runtime
        .version(k8s_cri::v1::VersionRequest::default())
        .await
        .is_ok()
}

async fn wait_ready(socket: &Path) -> Result<CriClient, Error> {
    for _ in 0..300 {
        if answers(socket).await {
            return Ok(CriClient::connect(socket).await?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Internal(format!(
        "containerd did not answer on {} within 30 s; see containerd.log beside it",
        socket.display()
    )))
}

/// Keeps containerd running: adopts one already answering, else starts it, and
/// starts it again (after 1 s, doubling to 30 s) whenever it exits.
async fn supervise(config: PathBuf, log: PathBuf, socket: PathBuf) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if answers(&socket).await {
            // Adopted (or still running): check again in a while.
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log);
        let Ok(out) = out else {
            tracing::error!(log = %log.display(), "cannot open the containerd log");
            tokio::time::sleep(backoff).await;
            continue;
        };
        let err = out.try_clone();
        let mut cmd = tokio::process::Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out);
        if let Ok(err) = err {
            cmd.stderr(err);
        }
        // Its own process group: a Ctrl-C meant for the agent does not stop pods.
        cmd.process_group(0);
        match cmd.spawn() {
            Ok(mut child) => {
                tracing::info!(pid = ?child.id(), "started containerd");
                let status = child.wait().await;
                tracing::warn!(?status, "containerd exited; restarting it");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start containerd (is the containerd package installed?)")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Imports every `*.tar` OCI archive in `images` into the CRI namespace.
async fn import_images(socket: &Path, images: &Path) -> Result<(), Error> {
    let Ok(entries) = std::fs::read_dir(images) else {
        return Ok(());
    };
    let mut archives: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    archives.sort();
    for archive in archives {
        let out = tokio::process::Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(&archive)
            .output()
            .await
            .map_err(io("running ctr (from the containerd package)"))?;
        if out.status.success() {
            tracing::info!(archive = %archive.display(), "imported image archive");
        } else {
            return Err(Error::Internal(format!(
                "importing {}: {}",
                archive.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// The containerd config for root, state, runc root and socket under `dir`, CNI
/// configs in `<cni>/net.d` and plugins in `<cni>/bin` (also used by the test
/// harness's containerd). The CRI
/// streaming server (exec, attach, port-forward) listens on `127.0.0.1:<stream_port>`,
/// 0 for any free port: only the kubelet beside it connects. Prometheus metrics
/// are served on `127.0.0.1:<metrics_port>/v1/metrics`, which the kubelet relays
/// as `/metrics/containerd`.
pub fn config_toml(
    dir: &Path,
    socket: &Path,
    cni: &Path,
    stream_port: u16,
    metrics_port: u16,
) -> String {
    let (d, s, c) = (dir.display(), socket.display(), cni.display());
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{s}"

[ttrpc]
  address = "{s}.ttrpc"

[metrics]
  address = "127.0.0.1:{metrics_port}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  # Hosts without CAP_SYS_RESOURCE refuse negative oom_score_adj.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "{stream_port}"
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{c}/bin"
    conf_dir = "{c}/net.d"
"#
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_adopted_containerd_keeps_the_metrics_port_its_config_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            config_toml(d, &d.join("c.sock"), &d.join("cni"), 0, 41338),
        )
        .unwrap();
        assert_eq!(
            metrics_address(&config),
            Some("127.0.0.1:41338".parse().unwrap())
        );
        std::fs::write(&config, "version = 2\n").unwrap();
        assert_eq!(metrics_address(&config), None, "no [metrics] section");
        std::fs::write(&config, "not toml [").unwrap();
        assert_eq!(metrics_address(&config), None, "unreadable config");
    }
}
