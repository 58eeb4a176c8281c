//! Test harness: starts real etcd, containerd, Prometheus, network-namespace
//! nodes and terminals (tmux), and cleans every one of them up on drop — also
//! when the test panics.
//!
//! Every resource gets a name unique to this process ([`unique_name`]) so two test
//! runs can share a machine. Prerequisites are checked with [`require_command`]:
//! a missing one fails the test with a message saying what to install, never skips.
//!
//! End-to-end tests live in `tests/tests/`; later crates' tests use this library too.

pub mod agent;
pub mod containerd;
pub mod dashboards;
pub mod etcd;
pub mod images;
pub mod netns;
pub mod process;
pub mod prometheus;
pub mod sextant;
pub mod terminal;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Errors of the harness. Tests usually `expect()` them: a harness failure is a
/// failed test with the reason in the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command the harness needs is not installed.
    #[error("`{command}` is not installed: {hint}")]
    MissingCommand {
        /// The executable looked for on PATH.
        command: String,
        /// How to install it.
        hint: String,
    },
    /// Spawning or running a process failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Something did not become ready in time.
    #[error("timed out after {after:?} waiting for {what}{}", log_tail.as_deref().map(|t| format!("\n--- log tail ---\n{t}")).unwrap_or_default())]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        after: Duration,
        /// The end of the component's log, when there is one.
        log_tail: Option<String>,
    },
    /// A gRPC call (CRI) failed.
    #[error("{what}: {status}")]
    Grpc {
        /// The call.
        what: String,
        /// The status the server returned.
        #[source]
        status: Box<tonic::Status>,
    },
    /// Connecting a gRPC channel failed.
    #[error("connecting to {what}: {source}")]
    Connect {
        /// The endpoint.
        what: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// An etcd client call failed.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// An HTTP call failed.
    #[error("http {url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// The client error.
        #[source]
        source: reqwest::Error,
    },
    /// A prerequisite file (such as a built image) is missing.
    #[error("{0}")]
    Missing(String),
    /// A component answered, but not as expected.
    #[error("{0}")]
    Failed(String),
}

/// Result with the harness [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A name unique to this process and call: `<prefix><pid hex><counter hex>`, at
/// most 15 characters for short prefixes so it also fits an interface name.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id())
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .map_err(io_err("binding a free loopback port"))?;
    let port = l
        .local_addr()
        .map_err(io_err("reading the bound port"))?
        .port();
    Ok(port)
}

/// Checks that `command` is on PATH; the error names the Debian package or step
/// that installs it (all of them come from `cargo xtask setup`).
pub fn require_command(command: &str) -> Result<PathBuf> {
    find_on_path(command).ok_or_else(|| Error::MissingCommand {
        command: command.to_owned(),
        hint: install_hint(command),
    })
}

fn find_on_path(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(command))
        .find(|p| p.is_file())
}

fn install_hint(command: &str) -> String {
    let package = match command {
        "etcd" => "etcd-server",
        "etcdctl" => "etcd-client",
        "containerd" | "ctr" | "containerd-shim-runc-v2" => "containerd",
        "runc" => "runc",
        "prometheus" | "promtool" => "prometheus",
        "ip" | "nsenter" | "bridge" => "iproute2 / util-linux",
        "bpftool" => "bpftool",
        "iptables" | "iptables-restore" => "iptables",
        "skopeo" => "skopeo",
        "ethtool" => "ethtool",
        "tmux" => "tmux",
        _ => "",
    };
    if package.is_empty() {
        "run `cargo xtask setup`".to_owned()
    } else {
        format!("run `cargo xtask setup` (Debian package {package})")
    }
}

/// The workspace's cargo target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map(|p| p.join("target"))
                .unwrap_or_else(|| PathBuf::from("target"))
        })
}

/// Polls `check` every `every` until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(Error::Timeout {
                what: what.to_owned(),
                after: timeout,
                log_tail: None,
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs a command to completion and returns its stdout; a non-zero exit is an error
/// carrying stderr.
pub fn run(cmd: &mut std::process::Command) -> Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(io_err(format!("running {line}")))?;
    if !out.status.success() {
        return Err(Error::CommandFailed {
            command: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The lines a child's `stdout` prints, as they come (read on a thread of its
/// own, so a test can wait for them with a timeout).
pub fn lines_of(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}
