//! A real Prometheus (Debian `prometheus`) on a free loopback port, scraping the
//! targets a test gives it every second.

use std::{net::Ipv4Addr, path::Path, process::Command, time::Duration};

use serde_json::Value;
use tempfile::TempDir;

use crate::{
    Error, Result, free_port, io_err, netns::Netns, process::ChildProcess, require_command,
};

fn temp_dir() -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix("sextant-prometheus-")
        .tempdir()
        .map_err(io_err("creating the prometheus temp dir"))
}

/// A Prometheus server owned by a test.
#[derive(Debug)]
pub struct Prometheus {
    process: ChildProcess,
    url: String,
    http: reqwest::Client,
    _dir: TempDir,
}

/// One static scrape job.
#[derive(Clone, Debug)]
pub struct ScrapeJob {
    /// The `job` label.
    pub name: String,
    /// `host:port` targets.
    pub targets: Vec<String>,
}

impl Prometheus {
    /// Starts Prometheus with `jobs` (or with a full config file's text, see
    /// [`Prometheus::start_with_config`]) and waits until it is ready.
    pub async fn start(jobs: &[ScrapeJob]) -> Result<Self> {
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for j in jobs {
            let targets: Vec<String> = j.targets.iter().map(|t| format!("'{t}'")).collect();
            config.push_str(&format!(
                "  - job_name: '{}'\n    static_configs:\n      - targets: [{}]\n",
                j.name,
                targets.join(", ")
            ));
        }
        Self::start_with_config(&config).await
    }

    /// Starts Prometheus with the given `prometheus.yml` text.
    pub async fn start_with_config(config: &str) -> Result<Self> {
        let dir = temp_dir()?;
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).map_err(io_err("writing prometheus.yml"))?;
        Self::spawn(Command::new("prometheus"), Ipv4Addr::LOCALHOST, &file, dir).await
    }

    /// Starts Prometheus inside `netns`, as one running on that node would, with
    /// the configuration file at `config` (its relative paths resolve beside it),
    /// its API on `ip`.
    pub async fn start_in(netns: &Netns, ip: Ipv4Addr, config: &Path) -> Result<Self> {
        Self::spawn(netns.command("prometheus"), ip, config, temp_dir()?).await
    }

    async fn spawn(mut cmd: Command, ip: Ipv4Addr, config: &Path, dir: TempDir) -> Result<Self> {
        require_command("prometheus")?;
        let port = free_port()?;
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={ip}:{port}"))
            .arg("--log.level=warn");
        let process = ChildProcess::spawn("prometheus", cmd, &dir.path().join("prometheus.log"))?;
        let this = Self {
            process,
            url: format!("http://{ip}:{port}"),
            http: reqwest::Client::new(),
            _dir: dir,
        };
        let ready = format!("{}/-/ready", this.url);
        let http = this.http.clone();
        let r = crate::wait_for(
            "prometheus ready",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                let req = http.get(&ready).send();
                async move { req.await.ok()?.status().is_success().then_some(()) }
            },
        )
        .await;
        this.with_log(r)?;
        Ok(this)
    }

    fn with_log<T>(&self, r: Result<T>) -> Result<T> {
        r.map_err(|e| match e {
            Error::Timeout { what, after, .. } => Error::Timeout {
                what,
                after,
                log_tail: Some(self.process.log_tail(30)),
            },
            other => other,
        })
    }

    /// Base URL, `http://<ip>:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// GETs an API path (e.g. `/api/v1/targets`) and returns its `data` field.
    pub async fn api(&self, path_and_query: &str) -> Result<Value> {
        let body = self
            .get_json(&format!("{}{path_and_query}", self.url), &[])
            .await?;
        Ok(body.get("data").cloned().unwrap_or(Value::Null))
    }

    /// Runs an instant query and returns the result vector.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let body = self
            .get_json(&format!("{}/api/v1/query", self.url), &[("query", expr)])
            .await?;
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    async fn get_json(&self, url: &str, query: &[(&str, &str)]) -> Result<Value> {
        let http = |source| Error::Http {
            url: url.to_owned(),
            source,
        };
        let response = self
            .http
            .get(url)
            .query(query)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        response.map_err(http)?.json().await.map_err(http)
    }

    /// Waits until every active target of `job` has been scraped successfully.
    pub async fn wait_for_job_up(&self, job: &str, timeout: Duration) -> Result<()> {
        let r = crate::wait_for(
            &format!("scrape job {job} up"),
            timeout,
            Duration::from_millis(200),
            || async {
                let data = self.api("/api/v1/targets?state=active").await.ok()?;
                let targets: Vec<&Value> = data["activeTargets"]
                    .as_array()?
                    .iter()
                    .filter(|t| t["labels"]["job"] == job)
                    .collect();
                (!targets.is_empty() && targets.iter().all(|t| t["health"] == "up")).then_some(())
            },
        )
        .await;
        self.with_log(r)
    }
}
