//! A real etcd (Debian `etcd-server`): 1 or 3 members on free ports of loopback
//! (or of an address the test gives), with fast election flags, each in its own
//! temp data dir.

use std::{process::Command, time::Duration};

use tempfile::TempDir;

use crate::{
    Error, Result, free_port, io_err, process::ChildProcess, require_command, unique_name,
};

/// One etcd member.
#[derive(Debug)]
pub struct Member {
    /// Member name (`m0`, `m1`, ...).
    pub name: String,
    /// Client URL, `http://<address>:<port>`.
    pub client_url: String,
    peer_url: String,
    process: Option<ChildProcess>,
}

/// An etcd cluster owned by a test; stopped and its data removed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: TempDir,
    token: String,
}

impl EtcdCluster {
    /// Starts `size` members (1 or 3) on loopback and waits until every one
    /// answers `/health`.
    pub async fn start(size: usize) -> Result<Self> {
        Self::start_on(size, std::net::Ipv4Addr::LOCALHOST).await
    }

    /// Like [`EtcdCluster::start`], the members listening on `ip` (an address
    /// other namespaces reach, such as the host's on a test fabric).
    pub async fn start_on(size: usize, ip: std::net::Ipv4Addr) -> Result<Self> {
        require_command("etcd")?;
        let dir = tempfile::Builder::new()
            .prefix("sextant-etcd-")
            .tempdir()
            .map_err(io_err("creating the etcd temp dir"))?;
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            members.push(Member {
                name: format!("m{i}"),
                client_url: format!("http://{ip}:{}", free_port()?),
                peer_url: format!("http://{ip}:{}", free_port()?),
                process: None,
            });
        }
        let mut cluster = Self {
            members,
            dir,
            token: unique_name("sx-etcd-"),
        };
        for i in 0..size {
            cluster.spawn_member(i, "new")?;
        }
        for i in 0..size {
            cluster.wait_healthy(i).await?;
        }
        Ok(cluster)
    }

    fn spawn_member(&mut self, i: usize, state: &str) -> Result<()> {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect();
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .args(["--log-level", "warn"]);
        let log = self.dir.path().join(format!("{}.log", m.name));
        let process = ChildProcess::spawn(&format!("etcd {}", m.name), cmd, &log)?;
        self.members[i].process = Some(process);
        Ok(())
    }

    async fn wait_healthy(&self, i: usize) -> Result<()> {
        let m = &self.members[i];
        let url = format!("{}/health", m.client_url);
        let client = reqwest::Client::new();
        let ok = crate::wait_for(
            &format!("etcd {} health", m.name),
            Duration::from_secs(20),
            Duration::from_millis(25),
            || {
                let req = client.get(&url).timeout(Duration::from_secs(1)).send();
                async move {
                    let body = req.await.ok()?.text().await.ok()?;
                    body.contains("\"health\":\"true\"").then_some(())
                }
            },
        )
        .await;
        ok.map_err(|e| match e {
            Error::Timeout { what, after, .. } => Error::Timeout {
                what,
                after,
                log_tail: m.process.as_ref().map(|p| p.log_tail(30)),
            },
            other => other,
        })
    }

    /// Client URLs of the members that run.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.process.is_some())
            .map(|m| m.client_url.clone())
            .collect()
    }

    /// The members, in start order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// A connected etcd-client.
    pub async fn client(&self) -> Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect(self.endpoints(), None).await?)
    }

    /// Kills member `i` with SIGKILL (a crash); its data stays.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            p.kill();
        }
    }

    /// Restarts a killed member on its old data and waits for its health.
    pub async fn restart_member(&mut self, i: usize) -> Result<()> {
        self.spawn_member(i, "existing")?;
        self.wait_healthy(i).await
    }
}
