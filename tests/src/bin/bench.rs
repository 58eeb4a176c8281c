//! Benchmarks run by `cargo xtask bench <name>`: each measures Sextant beside the
//! alternative a user would pick, in the same run, prints one table, and rewrites
//! its section of `docs/benchmarks.md`.
//!
//! `api`: ConfigMap creates through `sextant server` on etcd beside raw etcd puts
//! (1, 16 and 64 concurrent clients), list latency at 10 000 objects, and event
//! delivery latency to 100 watchers.
//!
//! `pod-startup`: 30 pods created at once on one node (a real `sextant agent` and
//! containerd, images present), create-to-Ready latency beside upstream's pod
//! startup SLO (p99 ≤ 5 s).
//!
//! `dataplane`: ClusterIP new connections/s and p99 through eBPF beside
//! kube-proxy-style iptables at 1, 1 000 and 10 000 services, and the time to
//! program 10 000 services (see `bench/dataplane.rs`).
//!
//! `scheduler`: 1 000 pods created by 16 clients at once against 100 simulated
//! nodes; pods/s bound and create-to-bound latency, beside the scheduling share
//! of upstream's pod startup SLO (kube-scheduler itself cannot run here).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde_json::json;
use sextant_tests::{
    etcd::EtcdCluster,
    sextant::{Datastore, SextantServer},
};
use tokio::sync::Mutex;

#[path = "bench/dataplane.rs"]
mod dataplane;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let result = match name.as_str() {
        "api" => api().await,
        "pod-startup" => pod_startup().await,
        "scheduler" => scheduler().await,
        "dataplane" => dataplane::dataplane().await,
        other => Err(format!(
            "unknown benchmark {other:?}; known: api, dataplane, pod-startup, scheduler"
        )
        .into()),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Percentile of sorted durations, in milliseconds.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

struct Run {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `total` operations on `clients` concurrent tasks; `op(i)` does the i-th.
async fn load<F, Fut>(clients: usize, total: usize, op: F) -> Result<Run, Error>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), Error>> + Send,
{
    let op = Arc::new(op);
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (op, latencies) = (op.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut i = c;
            while i < total {
                let t = Instant::now();
                op(i).await?;
                mine.push(t.elapsed());
                i += clients;
            }
            latencies.lock().await.extend(mine);
            Ok::<(), Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    let mut latencies = std::mem::take(&mut *latencies.lock().await);
    latencies.sort();
    Ok(Run {
        ops: total,
        elapsed,
        latencies,
    })
}

fn sextant_binary() -> PathBuf {
    sextant_tests::target_dir().join("release").join("sextant")
}

async fn api() -> Result<(), Error> {
    let binary = sextant_binary();
    if !binary.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release -p sextant` (cargo xtask bench does)",
            binary.display()
        )
        .into());
    }
    eprintln!("bench api: starting etcd and sextant server (release build) on it");
    let etcd = EtcdCluster::start(1).await?;
    let server = SextantServer::start(Path::new(&binary), Datastore::Etcd(&etcd)).await?;
    let http = server.http_client()?;
    let cms = format!("{}/api/v1/namespaces/default/configmaps", server.url());
    let value = "x".repeat(256);

    let mut rows = Vec::new();
    for (clients, total) in [(1usize, 500usize), (16, 2000), (64, 4000)] {
        eprintln!("bench api: {clients} client(s), {total} writes each way");
        let etcd_client = etcd.client().await?;
        let v = value.clone();
        let raw = load(clients, total, move |i| {
            let mut c = etcd_client.clone();
            let v = v.clone();
            async move {
                c.put(format!("/bench/raw-{clients}-{i}"), v, None).await?;
                Ok(())
            }
        })
        .await?;
        let (h, url, v) = (http.clone(), cms.clone(), value.clone());
        let api = load(clients, total, move |i| {
            let (h, url) = (h.clone(), url.clone());
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{clients}-{i}")}, "data": {"v": v}});
            async move {
                let r = h.post(url).json(&body).send().await?;
                if r.status().as_u16() != 201 {
                    return Err(format!("create answered {}: {}", r.status(), r.text().await.unwrap_or_default()).into());
                }
                Ok(())
            }
        })
        .await?;
        rows.push((clients, raw, api));
    }

    eprintln!("bench api: filling 10 000 objects for the list");
    let (h, v) = (http.clone(), value.clone());
    let url = format!("{}/api/v1/namespaces/default/configmaps", server.url());
    let fill_url = url.clone();
    load(64, 10_000 - 6500, move |i| {
        let (h, url) = (h.clone(), fill_url.clone());
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("fill-{i}")}, "data": {"v": v}});
        async move {
            let r = h.post(url).json(&body).send().await?;
            if r.status().as_u16() != 201 {
                return Err(format!("fill: {} {}", r.status(), r.text().await.unwrap_or_default()).into());
            }
            Ok(())
        }
    })
    .await?;
    let mut full = Vec::new();
    let mut count = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let list: serde_json::Value = http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        full.push(t.elapsed());
        count = list["items"].as_array().map(Vec::len).unwrap_or(0);
    }
    full.sort();
    let mut paged = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut token = String::new();
        loop {
            let q = if token.is_empty() {
                "?limit=500".to_owned()
            } else {
                format!("?limit=500&continue={token}")
            };
            let page: serde_json::Value = http
                .get(format!("{url}{q}"))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            match page["metadata"]["continue"].as_str() {
                Some(c) if !c.is_empty() => token = c.to_owned(),
                _ => break,
            }
        }
        paged.push(t.elapsed());
    }
    paged.sort();

    eprintln!("bench api: 100 watchers, 100 events");
    let ns_url = format!("{}/api/v1/namespaces", server.url());
    http.post(&ns_url)
        .json(&json!({"metadata": {"name": "watched"}}))
        .send()
        .await?
        .error_for_status()?;
    let watched = format!("{ns_url}/watched/configmaps");
    let sent: Arc<Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let received: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut watchers = Vec::new();
    for _ in 0..100 {
        let resp = http
            .get(format!("{watched}?watch=true&timeoutSeconds=60"))
            .send()
            .await?
            .error_for_status()?;
        let (sent, received) = (sent.clone(), received.clone());
        watchers.push(tokio::spawn(async move {
            let mut stream = resp.bytes_stream();
            let mut buf = Vec::new();
            let mut seen = 0;
            while seen < 100 {
                let Some(Ok(chunk)) = stream.next().await else {
                    break;
                };
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let Ok(e) = serde_json::from_slice::<serde_json::Value>(&line) else {
                        continue;
                    };
                    let name = e["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    if let Some(t) = sent.lock().await.get(&name) {
                        received.lock().await.push(t.elapsed());
                        seen += 1;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..100 {
        let name = format!("ev-{i}");
        sent.lock().await.insert(name.clone(), Instant::now());
        http.post(&watched)
            .json(&json!({"metadata": {"name": name}}))
            .send()
            .await?
            .error_for_status()?;
    }
    for w in watchers {
        let _ = tokio::time::timeout(Duration::from_secs(60), w).await;
    }
    let mut delivery = std::mem::take(&mut *received.lock().await);
    delivery.sort();

    let mut table = String::new();
    table.push_str("| clients | raw etcd puts/s | etcd p50 ms | etcd p99 ms | Sextant creates/s | Sextant p50 ms | Sextant p99 ms | Sextant / etcd |\n");
    table.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (clients, raw, api) in &rows {
        table.push_str(&format!(
            "| {clients} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
            raw.rate(),
            pct(&raw.latencies, 0.5),
            pct(&raw.latencies, 0.99),
            api.rate(),
            pct(&api.latencies, 0.5),
            pct(&api.latencies, 0.99),
            api.rate() / raw.rate()
        ));
    }
    table.push_str(&format!(
        "\n| list of {count} ConfigMaps | p50 ms | max ms |\n|---|---:|---:|\n| one request | {:.1} | {:.1} |\n| pages of 500 | {:.1} | {:.1} |\n",
        pct(&full, 0.5),
        pct(&full, 1.0),
        pct(&paged, 0.5),
        pct(&paged, 1.0)
    ));
    table.push_str(&format!(
        "\n| watch delivery (100 watchers × 100 events, from write start) | p50 ms | p99 ms | delivered |\n|---|---:|---:|---:|\n| Sextant on etcd | {:.2} | {:.2} | {}/10000 |\n",
        pct(&delivery, 0.5),
        pct(&delivery, 0.99),
        delivery.len()
    ));
    println!("{table}");
    let section = format!(
        "## api\n\n`cargo xtask bench api` on {}. Sextant is the release build\non a 1-member etcd; the raw etcd column is etcd-client puts of the same size to the\nsame etcd in the same run. Creates are HTTPS (HTTP/1.1, client certificate) with\n256-byte ConfigMaps. The 100 watchers are served by the watch cache (one store\nwatch).\n\n{table}",
        machine(),
    );
    write_section("api", &section)?;
    Ok(())
}

/// Pods created at once in `pod-startup`.
const STARTUP_PODS: usize = 30;
/// Upstream's pod startup SLO: p99 ≤ 5 s (schedule to running, images present).
const STARTUP_SLO_MS: f64 = 5000.0;

async fn pod_startup() -> Result<(), Error> {
    let ctrd = sextant_tests::containerd::Containerd::start().await?;
    ctrd.import_test_images().await?;
    let server = SextantServer::start(&sextant_binary(), Datastore::Embedded).await?;
    let agent =
        sextant_tests::agent::SextantAgent::start(&sextant_binary(), &server, &ctrd).await?;
    let http = server.http_client()?;
    let pods_url = format!("{}/api/v1/namespaces/default/pods", server.url());
    let rv = http
        .get(&pods_url)
        .send()
        .await?
        .error_for_status()?
        .json::<serde_json::Value>()
        .await?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let resp = http
        .get(format!(
            "{pods_url}?watch=true&resourceVersion={rv}&timeoutSeconds=120"
        ))
        .send()
        .await?
        .error_for_status()?;
    let sent: Arc<Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let ready: Arc<Mutex<std::collections::HashMap<String, Duration>>> = Arc::default();
    let watcher = {
        let (sent, ready) = (sent.clone(), ready.clone());
        tokio::spawn(async move {
            let mut stream = resp.bytes_stream();
            let mut buf = Vec::new();
            while ready.lock().await.len() < STARTUP_PODS {
                let Some(Ok(chunk)) = stream.next().await else {
                    break;
                };
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let Ok(e) = serde_json::from_slice::<serde_json::Value>(&line) else {
                        continue;
                    };
                    let obj = &e["object"];
                    let is_ready = obj["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    });
                    let name = obj["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    if is_ready && let Some(t) = sent.lock().await.get(&name) {
                        ready
                            .lock()
                            .await
                            .entry(name)
                            .or_insert_with(|| t.elapsed());
                    }
                }
            }
        })
    };
    // All at once: one task per pod.
    let mut creates = Vec::new();
    for i in 0..STARTUP_PODS {
        let (http, url, sent, node) = (
            http.clone(),
            pods_url.clone(),
            sent.clone(),
            agent.node_name.clone(),
        );
        creates.push(tokio::spawn(async move {
            let name = format!("start-{i}");
            let pod = json!({
                "metadata": {"name": name},
                "spec": {"nodeName": node, "containers": [{"name": "main", "image": "sextant.local/busybox:v1", "command": ["sleep", "3600"]}]},
            });
            sent.lock().await.insert(name, Instant::now());
            http.post(&url).json(&pod).send().await?.error_for_status()?;
            Ok::<(), Error>(())
        }));
    }
    for c in creates {
        c.await??;
    }
    let _ = tokio::time::timeout(Duration::from_secs(120), watcher).await;
    let mut latencies: Vec<Duration> = ready.lock().await.values().copied().collect();
    latencies.sort();
    let p99 = pct(&latencies, 0.99);
    let mut table = String::new();
    table.push_str("| pods created at once | Ready | p50 ms | p99 ms | max ms | upstream SLO p99 ms | p99 / SLO |\n");
    table.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
    table.push_str(&format!(
        "| {STARTUP_PODS} | {} | {:.0} | {p99:.0} | {:.0} | {STARTUP_SLO_MS:.0} | {:.2} |\n",
        latencies.len(),
        pct(&latencies, 0.5),
        pct(&latencies, 1.0),
        p99 / STARTUP_SLO_MS
    ));
    println!("{table}");
    if latencies.len() < STARTUP_PODS {
        return Err(format!(
            "only {} of {STARTUP_PODS} pods became Ready within 120 s",
            latencies.len()
        )
        .into());
    }
    let section = format!(
        "## pod-startup\n\n`cargo xtask bench pod-startup` on {}. {STARTUP_PODS} pods\n(busybox `sleep`, image already in containerd) created at once through the API on one\nnode (release `sextant agent`, containerd + runc, bridge CNI); latency from each\nPOST to the watch event showing the pod Ready. Upstream's SLO is p99 ≤ 5 s from\nschedule to running with images present; there is no scheduler in this path yet\n(`spec.nodeName` is set), so the numbers are create-to-Ready through the kubelet.\n\n{table}",
        machine(),
    );
    write_section("pod-startup", &section)?;
    Ok(())
}

/// Simulated nodes in `scheduler`.
const SCHED_NODES: usize = 100;
/// Pods created in `scheduler`.
const SCHED_PODS: usize = 1000;
/// kube-scheduler's published CI throughput floor at 5 000 nodes (pods/s; its
/// scheduler-perf thresholds are 680–810 depending on the workload).
const KUBE_SCHEDULER_FLOOR: f64 = 680.0;
/// Concurrent creating clients in `scheduler`.
const SCHED_CLIENTS: usize = 16;

/// Reads a watch response line by line, calling `f` on each event until it
/// returns true or the stream ends.
async fn follow_watch(resp: reqwest::Response, mut f: impl FnMut(&serde_json::Value) -> bool) {
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if let Ok(e) = serde_json::from_slice::<serde_json::Value>(&line)
                && f(&e)
            {
                return;
            }
        }
    }
}

async fn scheduler() -> Result<(), Error> {
    let server = SextantServer::start(&sextant_binary(), Datastore::Embedded).await?;
    let http = server.http_client()?;
    let base = server.url();
    let now = || {
        jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S.000000Z")
            .to_string()
    };
    // Heartbeats, as kubelets would send them: every Lease renewed every 5 s
    // from the start (leases not made yet are skipped), or the node lifecycle
    // controller takes the nodes away mid-run.
    let heartbeats = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                for i in 0..SCHED_NODES {
                    let name = format!("sim-{i:03}");
                    let renew = json!({"spec": {"renewTime": now()}});
                    let _ = http
                        .patch(format!(
                            "{base}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
                        ))
                        .header("Content-Type", "application/merge-patch+json")
                        .body(renew.to_string())
                        .send()
                        .await;
                }
            }
        })
    };
    for i in 0..SCHED_NODES {
        let name = format!("sim-{i:03}");
        http.post(format!("{base}/api/v1/nodes"))
            .json(&json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}))
            .send()
            .await?
            .error_for_status()?;
        http.patch(format!("{base}/api/v1/nodes/{name}/status"))
            .header("Content-Type", "application/merge-patch+json")
            .body(
                json!({"status": {
                    "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                    "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True"}],
                }})
                .to_string(),
            )
            .send()
            .await?
            .error_for_status()?;
        // A fresh heartbeat, so the node lifecycle controller leaves it alone.
        http.post(format!("{base}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"))
            .json(&json!({"metadata": {"name": name}, "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now()}}))
            .send()
            .await?
            .error_for_status()?;
    }
    let pods_url = format!("{base}/api/v1/namespaces/default/pods");
    let rv = http
        .get(&pods_url)
        .send()
        .await?
        .error_for_status()?
        .json::<serde_json::Value>()
        .await?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let resp = http
        .get(format!(
            "{pods_url}?watch=true&resourceVersion={rv}&timeoutSeconds=900"
        ))
        .send()
        .await?
        .error_for_status()?;
    let sent: Arc<Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let bound: Arc<Mutex<Vec<(Duration, Instant)>>> = Arc::default();
    let watcher = {
        let (sent, bound) = (sent.clone(), bound.clone());
        tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            follow_watch(resp, |e| {
                let obj = &e["object"];
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if obj["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
                    && seen.insert(name.clone())
                    && let Ok(sent) = sent.try_lock()
                    && let Some(t) = sent.get(&name)
                    && let Ok(mut bound) = bound.try_lock()
                {
                    bound.push((t.elapsed(), Instant::now()));
                }
                seen.len() >= SCHED_PODS
            })
            .await;
        })
    };
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..SCHED_CLIENTS {
        let (http, url, sent) = (http.clone(), pods_url.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            for i in (c..SCHED_PODS).step_by(SCHED_CLIENTS) {
                let name = format!("sched-{i:04}");
                let pod = json!({
                    "metadata": {"name": name},
                    "spec": {"containers": [{"name": "main", "image": "sextant.local/busybox:v1",
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
                });
                sent.lock().await.insert(name, Instant::now());
                http.post(&url)
                    .json(&pod)
                    .send()
                    .await?
                    .error_for_status()?;
            }
            Ok::<(), Error>(())
        }));
    }
    for c in clients {
        c.await??;
    }
    let _ = tokio::time::timeout(Duration::from_secs(900), watcher).await;
    heartbeats.abort();
    let bound = bound.lock().await.clone();
    let last = bound.iter().map(|(_, at)| *at).max().unwrap_or(started);
    let mut latencies: Vec<Duration> = bound.iter().map(|(d, _)| *d).collect();
    latencies.sort();
    let rate = latencies.len() as f64 / last.duration_since(started).as_secs_f64();
    let p99 = pct(&latencies, 0.99);
    let mut table = String::new();
    table.push_str("| nodes | pods | bound | pods/s | kube-scheduler floor pods/s | pods/s / floor | p50 ms | p99 ms |\n");
    table.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    table.push_str(&format!(
        "| {SCHED_NODES} | {SCHED_PODS} | {} | {rate:.0} | {KUBE_SCHEDULER_FLOOR:.0} | {:.2} | {:.0} | {p99:.0} |\n",
        latencies.len(),
        rate / KUBE_SCHEDULER_FLOOR,
        pct(&latencies, 0.5),
    ));
    println!("{table}");
    if latencies.len() < SCHED_PODS {
        return Err(format!(
            "only {} of {SCHED_PODS} pods were bound within 900 s",
            latencies.len()
        )
        .into());
    }
    let section = format!(
        "## scheduler\n\n`cargo xtask bench scheduler` on {}. {SCHED_PODS} pods\n(100m CPU, 64Mi each) created by {SCHED_CLIENTS} concurrent clients against {SCHED_NODES}\nsimulated nodes (Node objects, 8 CPU each) of a release `sextant server` on the\nembedded store; latency from each POST to the watch event showing `spec.nodeName`,\nthroughput over the whole run (creates included; the pods arrive faster than\nthey are bound, so latency includes the queue). kube-scheduler cannot run on\nthis machine; the comparison is its published scheduler-perf CI floor\n(680–810 pods/s at 5 000 nodes, on larger machines).\n\n{table}",
        machine(),
    );
    write_section("scheduler", &section)?;
    Ok(())
}

/// Where and when a benchmark ran: `Debian 12.x (N cores), <date>`.
fn machine() -> String {
    format!(
        "{} ({} cores), {}",
        std::fs::read_to_string("/etc/debian_version")
            .map(|v| format!("Debian {}", v.trim()))
            .unwrap_or_else(|_| "Linux".into()),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        today(),
    )
}

/// Today's date, from `date`.
fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Replaces (or appends) the `## <name>` section of docs/benchmarks.md.
fn write_section(name: &str, section: &str) -> Result<(), Error> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let header = format!("## {name}\n");
    let out = match doc.find(&header) {
        Some(start) => {
            let rest = &doc[start + header.len()..];
            let end = rest
                .find("\n## ")
                .map(|i| start + header.len() + i + 1)
                .unwrap_or(doc.len());
            format!("{}{}\n{}", &doc[..start], section.trim_end(), &doc[end..])
        }
        None => format!("{}\n{}\n", doc.trim_end(), section.trim_end()),
    };
    std::fs::write(&path, out)?;
    eprintln!("bench {name}: wrote {}", path.display());
    Ok(())
}
