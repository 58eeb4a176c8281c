//! A real `sextant server` process on a free loopback port with its own data dir,
//! and the real kubectl 1.33 pointed at it with a fresh discovery cache.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use crate::{Error, Result, etcd::EtcdCluster, free_port, io_err, process::ChildProcess};

/// The kubectl the tests use: 1.33 from the machine image, else `kubectl` on PATH.
pub const KUBECTL_1_33: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";

/// Which datastore the server runs on.
#[derive(Clone, Copy, Debug)]
pub enum Datastore<'a> {
    /// The embedded redb file in the data dir.
    Embedded,
    /// A harness etcd cluster.
    Etcd(&'a EtcdCluster),
}

/// A `sextant server` owned by a test; killed on drop.
#[derive(Debug)]
pub struct SextantServer {
    process: Option<ChildProcess>,
    binary: PathBuf,
    args: Vec<String>,
    /// `<ip>:<port>`, 127.0.0.1 unless started with [`SextantServer::start_on`].
    pub addr: String,
    dir: TempDir,
}

impl SextantServer {
    /// Starts `binary server` (pass `env!("CARGO_BIN_EXE_sextant")`) and waits until
    /// `/readyz` answers and the admin kubeconfig exists.
    pub async fn start(binary: &Path, datastore: Datastore<'_>) -> Result<Self> {
        Self::start_with(binary, datastore, &[]).await
    }

    /// Like [`SextantServer::start`], with extra `sextant server` flags.
    pub async fn start_with(
        binary: &Path,
        datastore: Datastore<'_>,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_on(binary, datastore, std::net::Ipv4Addr::LOCALHOST, extra).await
    }

    /// Like [`SextantServer::start_with`], listening on `ip` (a host address that
    /// node namespaces reach, such as a [`crate::netns::Fabric`]'s host address).
    pub async fn start_on(
        binary: &Path,
        datastore: Datastore<'_>,
        ip: std::net::Ipv4Addr,
        extra: &[&str],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sextant-server-")
            .tempdir()
            .map_err(io_err("temp dir"))?;
        let addr = format!("{ip}:{}", free_port()?);
        let mut args = vec![
            "server".to_owned(),
            "--data-dir".to_owned(),
            dir.path().join("data").to_string_lossy().into_owned(),
            "--listen".to_owned(),
            addr.clone(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        if let Datastore::Etcd(etcd) = datastore {
            args.extend([
                "--datastore".to_owned(),
                "etcd".to_owned(),
                "--etcd-endpoints".to_owned(),
                etcd.endpoints().join(","),
            ]);
        }
        let mut s = Self {
            process: None,
            binary: binary.to_owned(),
            args,
            addr,
            dir,
        };
        s.spawn().await?;
        Ok(s)
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args);
        let log = self.dir.path().join("server.log");
        // Append across restarts so a failure shows the whole story.
        let process = ChildProcess::spawn("sextant server", cmd, &log)?;
        self.process = Some(process);
        let url = format!("https://{}/readyz", self.addr);
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .map_err(|source| Error::Http {
                url: url.clone(),
                source,
            })?;
        let kubeconfig = self.kubeconfig();
        let ready = crate::wait_for(
            "sextant server /readyz",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                let req = client.get(&url).send();
                let kubeconfig = kubeconfig.clone();
                async move {
                    (req.await.ok()?.status().is_success() && kubeconfig.exists()).then_some(())
                }
            },
        )
        .await;
        ready.map_err(|e| match e {
            Error::Timeout { what, after, .. } => Error::Timeout {
                what,
                after,
                log_tail: self.process.as_ref().map(|p| p.log_tail(40)),
            },
            other => other,
        })
    }

    /// The admin kubeconfig the server wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data").join("admin.kubeconfig")
    }

    /// The server's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `kill -9` (a crash).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the server again with the same flags and data dir.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }

    /// kubectl for this server.
    pub fn kubectl(&self) -> Result<Kubectl> {
        Kubectl::new(&self.kubeconfig())
    }
}

/// The real kubectl with its own discovery cache.
#[derive(Debug)]
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    cache: TempDir,
}

impl Kubectl {
    /// kubectl 1.33 for `kubeconfig`; an error naming the package if it is missing.
    pub fn new(kubeconfig: &Path) -> Result<Self> {
        let binary = if Path::new(KUBECTL_1_33).exists() {
            PathBuf::from(KUBECTL_1_33)
        } else {
            crate::require_command("kubectl")?
        };
        Self::with_binary(&binary, kubeconfig)
    }

    /// Another kubectl-compatible CLI (`sextantctl`) run the same way.
    pub fn with_binary(binary: &Path, kubeconfig: &Path) -> Result<Self> {
        let cache = tempfile::Builder::new()
            .prefix("sextant-kubectl-")
            .tempdir()
            .map_err(io_err("temp dir"))?;
        Ok(Self {
            binary: binary.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            cache,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.cache.path())
            .env_remove("KUBECTL_EXTERNAL_DIFF");
        cmd
    }

    /// Starts kubectl in the background (e.g. `get -w`) with stdout and stderr piped.
    pub fn spawn(&self, args: &[&str]) -> Result<std::process::Child> {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn()
            .map_err(io_err(format!("running kubectl {args:?}")))
    }

    /// Runs kubectl with extra environment variables (e.g. `EDITOR`).
    pub fn ok_env(&self, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
        succeeded(args, self.run_env(args, None, env)?)
    }

    /// Runs kubectl with `stdin` as input and returns everything it did.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        self.run_env(args, stdin, &[])
    }

    /// Runs kubectl with `stdin` and extra environment variables; everything it did.
    pub fn run_env(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<Output> {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(io_err(format!("running kubectl {args:?}")))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin.unwrap_or_default().as_bytes())
                .map_err(io_err("kubectl stdin"))?;
        }
        child
            .wait_with_output()
            .map_err(io_err(format!("running kubectl {args:?}")))
    }

    /// The namespace's events as `<reason>: <message>` lines.
    pub fn events(&self) -> Result<String> {
        self.ok(&[
            "get",
            "events",
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
        ])
    }

    /// Runs kubectl and returns stdout; a failure is an error carrying stderr.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        self.ok_with(args, None)
    }

    /// Like [`Kubectl::ok`], with `stdin`.
    pub fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        succeeded(args, self.run(args, stdin)?)
    }

    /// Runs kubectl expecting failure and returns stderr.
    pub fn fails(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.run(args, stdin)?;
        if out.status.success() {
            return Err(Error::Missing(format!(
                "kubectl {} succeeded but should have failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl SextantServer {
    /// An HTTPS client that trusts the cluster CA and presents the admin
    /// certificate, read from the admin kubeconfig.
    pub fn http_client(&self) -> Result<reqwest::Client> {
        let text =
            std::fs::read_to_string(self.kubeconfig()).map_err(io_err("reading the kubeconfig"))?;
        let field = |name: &str| -> Result<Vec<u8>> {
            let line = text
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
                .ok_or_else(|| Error::Missing(format!("{name} not in the kubeconfig")))?;
            {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(line.trim())
                    .map_err(|_| Error::Missing(format!("{name} is not base64")))
            }
        };
        let ca = reqwest::Certificate::from_pem(&field("certificate-authority-data")?).map_err(
            |source| Error::Http {
                url: "ca".into(),
                source,
            },
        )?;
        let mut identity = field("client-certificate-data")?;
        identity.extend(field("client-key-data")?);
        let identity = reqwest::Identity::from_pem(&identity).map_err(|source| Error::Http {
            url: "identity".into(),
            source,
        })?;
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .identity(identity)
            .build()
            .map_err(|source| Error::Http {
                url: "client".into(),
                source,
            })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// stdout of a kubectl run that succeeded; an error carrying stderr otherwise.
fn succeeded(args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        return Err(Error::CommandFailed {
            command: format!("kubectl {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
