//! Resource usage of the node, its pods and their containers, served on the
//! kubelet API as upstream's kubelet serves it:
//!
//! - `/stats/summary`: the Summary API (JSON) `kubectl top` and the HPA read
//!   through metrics.k8s.io;
//! - `/metrics/resource`: the same numbers as metrics (metrics-server's source);
//! - `/metrics/cadvisor`: cAdvisor's container metrics (`container_cpu_usage_seconds_total`,
//!   `container_memory_working_set_bytes`, `container_memory_rss`,
//!   `container_network_*`) for dashboards.
//!
//! Container and pod figures come from the runtime (CRI `ListPodSandboxStats`,
//! which reads the cgroups — v1 or v2 — and the pod's network namespace), so the
//! kubelet never needs to know the cgroup layout. Node figures come from
//! `/proc/stat` and `/proc/meminfo`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use k8s_cri::v1 as cri;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde_json::{Value, json};

use crate::{Error, labels, pods::PodRuntime};

/// One container's usage.
#[derive(Clone, Debug, Default)]
pub struct ContainerUsage {
    /// The name in the pod spec.
    pub name: String,
    /// The runtime's id.
    pub id: String,
    /// The image reference.
    pub image: String,
    /// When it was created (Unix seconds).
    pub start_time: f64,
    /// Cumulative CPU time, nanoseconds.
    pub cpu_ns: u64,
    /// CPU in use now, nanocores (from two samples).
    pub cpu_nano_cores: Option<u64>,
    /// Working set (usage minus inactive file cache), bytes.
    pub memory_working_set: u64,
    /// Anonymous memory and swap cache, bytes.
    pub memory_rss: u64,
    /// Everything the cgroup charges, bytes.
    pub memory_usage: u64,
}

/// One network interface's counters.
#[derive(Clone, Debug, Default)]
pub struct InterfaceUsage {
    /// `eth0` and the like.
    pub name: String,
    /// Received bytes.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Sent bytes.
    pub tx_bytes: u64,
    /// Send errors.
    pub tx_errors: u64,
}

/// One pod's usage.
#[derive(Clone, Debug, Default)]
pub struct PodUsage {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// When its sandbox was created (Unix seconds).
    pub start_time: f64,
    /// Its containers.
    pub containers: Vec<ContainerUsage>,
    /// Its network interfaces.
    pub interfaces: Vec<InterfaceUsage>,
}

impl PodUsage {
    fn cpu_ns(&self) -> u64 {
        self.containers.iter().map(|c| c.cpu_ns).sum()
    }
    fn cpu_nano_cores(&self) -> Option<u64> {
        self.containers.iter().map(|c| c.cpu_nano_cores).sum()
    }
    fn working_set(&self) -> u64 {
        self.containers.iter().map(|c| c.memory_working_set).sum()
    }
}

/// The node's own usage.
#[derive(Clone, Debug, Default)]
pub struct NodeUsage {
    /// Cumulative CPU time of all CPUs, nanoseconds.
    pub cpu_ns: u64,
    /// CPU in use now, nanocores.
    pub cpu_nano_cores: Option<u64>,
    /// MemTotal − MemAvailable, bytes.
    pub memory_working_set: u64,
    /// MemAvailable, bytes.
    pub memory_available: u64,
}

/// A snapshot of everything.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// When it was taken (Unix seconds).
    pub time: f64,
    /// The node.
    pub node: NodeUsage,
    /// Pods with a ready sandbox.
    pub pods: Vec<PodUsage>,
}

/// Samples usage and remembers the previous CPU counters, from which the
/// current rate (nanocores) is derived as upstream's stats providers do.
#[derive(Debug, Default)]
pub struct Sampler {
    previous: Mutex<HashMap<String, (u64, f64)>>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn value(v: Option<&cri::UInt64Value>) -> u64 {
    v.map_or(0, |v| v.value)
}

impl Sampler {
    /// The rate of `cpu_ns` since the last sample of `key`, nanocores.
    fn rate(&self, key: &str, cpu_ns: u64, at: f64) -> Option<u64> {
        let mut previous = self.previous.lock().ok()?;
        let last = previous.insert(key.to_owned(), (cpu_ns, at));
        let (then_ns, then) = last?;
        let elapsed = at - then;
        if elapsed <= 0.0 || cpu_ns < then_ns {
            return None;
        }
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        Some(((cpu_ns - then_ns) as f64 / elapsed) as u64)
    }

    /// Takes a snapshot from the runtime and `/proc`.
    pub async fn sample(&self, rt: &PodRuntime) -> Result<Usage, Error> {
        let at = now();
        let mut runtime = rt.cri.runtime.clone();
        let stats = runtime
            .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
            .await?
            .into_inner()
            .stats;
        // Image and creation time are not in the stats.
        let containers: HashMap<String, cri::Container> = runtime
            .list_containers(cri::ListContainersRequest::default())
            .await?
            .into_inner()
            .containers
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        let sandboxes: HashMap<String, i64> = runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items
            .into_iter()
            .map(|s| (s.id, s.created_at))
            .collect();
        #[allow(clippy::cast_precision_loss)]
        let seconds = |ns: i64| ns as f64 / 1e9;
        let mut pods = Vec::new();
        for s in stats {
            let (Some(attributes), Some(linux)) = (s.attributes, s.linux) else {
                continue;
            };
            let label = |k: &str| attributes.labels.get(k).cloned().unwrap_or_default();
            let mut pod = PodUsage {
                namespace: label(labels::POD_NAMESPACE),
                name: label(labels::POD_NAME),
                uid: label(labels::POD_UID),
                start_time: sandboxes.get(&attributes.id).copied().map_or(0.0, seconds),
                ..Default::default()
            };
            for c in linux.containers {
                let Some(attrs) = c.attributes else { continue };
                let known = containers.get(&attrs.id);
                // As upstream: only running containers (not finished init containers).
                if known.is_none_or(|k| k.state != cri::ContainerState::ContainerRunning as i32) {
                    continue;
                }
                let cpu = c.cpu.unwrap_or_default();
                let memory = c.memory.unwrap_or_default();
                let cpu_ns = value(cpu.usage_core_nano_seconds.as_ref());
                pod.containers.push(ContainerUsage {
                    name: attrs.metadata.map(|m| m.name).unwrap_or_default(),
                    image: known
                        .and_then(|k| k.image.as_ref())
                        .map(|i| i.image.clone())
                        .unwrap_or_default(),
                    start_time: known.map_or(0.0, |k| seconds(k.created_at)),
                    cpu_nano_cores: cpu
                        .usage_nano_cores
                        .map(|v| v.value)
                        .or_else(|| self.rate(&attrs.id, cpu_ns, at)),
                    id: attrs.id,
                    cpu_ns,
                    memory_working_set: value(memory.working_set_bytes.as_ref()),
                    memory_rss: value(memory.rss_bytes.as_ref()),
                    memory_usage: value(memory.usage_bytes.as_ref()),
                });
            }
            pod.containers.sort_by(|a, b| a.name.cmp(&b.name));
            if let Some(network) = linux.network {
                // Some runtimes fill only the default interface.
                let mut interfaces = network.interfaces;
                if let Some(default) = network.default_interface
                    && !interfaces.iter().any(|i| i.name == default.name)
                {
                    interfaces.insert(0, default);
                }
                pod.interfaces = interfaces
                    .into_iter()
                    .map(|i| InterfaceUsage {
                        rx_bytes: value(i.rx_bytes.as_ref()),
                        rx_errors: value(i.rx_errors.as_ref()),
                        tx_bytes: value(i.tx_bytes.as_ref()),
                        tx_errors: value(i.tx_errors.as_ref()),
                        name: i.name,
                    })
                    .collect();
            }
            pods.push(pod);
        }
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut node = node_usage()?;
        node.cpu_nano_cores = self.rate("", node.cpu_ns, at);
        Ok(Usage {
            time: at,
            node,
            pods,
        })
    }
}

/// CPU time from `/proc/stat` and memory from `/proc/meminfo`.
fn node_usage() -> Result<NodeUsage, Error> {
    let read = |path: &str| {
        std::fs::read_to_string(path).map_err(|e| Error::Internal(format!("reading {path}: {e}")))
    };
    let stat = read("/proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100);
    let meminfo = read("/proc/meminfo")?;
    let kib = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    let (total, available) = (kib("MemTotal:"), kib("MemAvailable:"));
    Ok(NodeUsage {
        cpu_ns: busy.saturating_mul(1_000_000_000 / hz),
        cpu_nano_cores: None,
        memory_working_set: total.saturating_sub(available),
        memory_available: available,
    })
}

/// RFC 3339 from Unix seconds, as the Summary API's times are.
fn rfc3339(t: f64) -> String {
    #[allow(clippy::cast_possible_truncation)]
    let ns = (t * 1e9) as i128;
    jiff::Timestamp::from_nanosecond(ns)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The Summary API (`stats/v1alpha1` Summary) of a snapshot.
pub fn summary(node_name: &str, u: &Usage) -> Value {
    let time = rfc3339(u.time);
    let cpu = |ns: u64, cores: Option<u64>| json!({"time": time, "usageCoreNanoSeconds": ns, "usageNanoCores": cores});
    let pods: Vec<Value> = u
        .pods
        .iter()
        .map(|p| {
            let containers: Vec<Value> = p
                .containers
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "startTime": rfc3339(c.start_time),
                        "cpu": cpu(c.cpu_ns, c.cpu_nano_cores),
                        "memory": {
                            "time": time,
                            "workingSetBytes": c.memory_working_set,
                            "rssBytes": c.memory_rss,
                            "usageBytes": c.memory_usage,
                        },
                    })
                })
                .collect();
            let interfaces: Vec<Value> = p
                .interfaces
                .iter()
                .map(|i| {
                    json!({
                        "name": i.name,
                        "rxBytes": i.rx_bytes,
                        "rxErrors": i.rx_errors,
                        "txBytes": i.tx_bytes,
                        "txErrors": i.tx_errors,
                    })
                })
                .collect();
            let default = interfaces.first().cloned().unwrap_or_else(|| json!({}));
            let mut network = json!({"time": time, "interfaces": interfaces});
            if let (Some(n), Some(d)) = (network.as_object_mut(), default.as_object()) {
                n.extend(d.clone());
            }
            json!({
                "podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
                "startTime": rfc3339(p.start_time),
                "containers": containers,
                "cpu": cpu(p.cpu_ns(), p.cpu_nano_cores()),
                "memory": {"time": time, "workingSetBytes": p.working_set()},
                "network": network,
            })
        })
        .collect();
    json!({
        "node": {
            "nodeName": node_name,
            "cpu": cpu(u.node.cpu_ns, u.node.cpu_nano_cores),
            "memory": {
                "time": time,
                "workingSetBytes": u.node.memory_working_set,
                "availableBytes": u.node.memory_available,
            },
        },
        "pods": pods,
    })
}

type Labels = Vec<(&'static str, String)>;

#[allow(clippy::cast_precision_loss)]
fn float(v: u64) -> f64 {
    v as f64
}

/// Counters and gauges of one scrape: made fresh for each request, so a counter
/// is set by adding the runtime's cumulative value once.
struct Scrape {
    registry: Registry,
}

impl Scrape {
    fn new() -> Self {
        Self {
            registry: Registry::default(),
        }
    }

    fn counter(&mut self, name: &str, help: &str) -> Family<Labels, Counter<f64>> {
        let family = Family::<Labels, Counter<f64>>::default();
        self.registry.register(name, help, family.clone());
        family
    }

    fn gauge(
        &mut self,
        name: &str,
        help: &str,
    ) -> Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> {
        let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        self.registry.register(name, help, family.clone());
        family
    }

    fn encode(&self) -> Response {
        match sextant_metrics::encode_external(&self.registry) {
            Ok(text) => (
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                text,
            )
                .into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
}

/// `/metrics/resource` of a snapshot.
pub fn resource_metrics(u: &Usage) -> Response {
    let mut s = Scrape::new();
    let node_cpu = Counter::<f64>::default();
    node_cpu.inc_by(float(u.node.cpu_ns) / 1e9);
    s.registry.register(
        "node_cpu_usage_seconds",
        "Cumulative cpu time consumed by the node in core-seconds",
        node_cpu,
    );
    let node_memory = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    node_memory.set(float(u.node.memory_working_set));
    s.registry.register(
        "node_memory_working_set_bytes",
        "Current working set of the node in bytes",
        node_memory,
    );
    let container_cpu = s.counter(
        "container_cpu_usage_seconds",
        "Cumulative cpu time consumed by the container in core-seconds",
    );
    let container_memory = s.gauge(
        "container_memory_working_set_bytes",
        "Current working set of the container in bytes",
    );
    let container_start = s.gauge(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds",
    );
    let pod_cpu = s.counter(
        "pod_cpu_usage_seconds",
        "Cumulative cpu time consumed by the pod in core-seconds",
    );
    let pod_memory = s.gauge(
        "pod_memory_working_set_bytes",
        "Current working set of the pod in bytes",
    );
    for p in &u.pods {
        let pod: Labels = vec![("namespace", p.namespace.clone()), ("pod", p.name.clone())];
        pod_cpu.get_or_create(&pod).inc_by(float(p.cpu_ns()) / 1e9);
        pod_memory.get_or_create(&pod).set(float(p.working_set()));
        for c in &p.containers {
            let mut labels = vec![("container", c.name.clone())];
            labels.extend(pod.iter().cloned());
            container_cpu
                .get_or_create(&labels)
                .inc_by(float(c.cpu_ns) / 1e9);
            container_memory
                .get_or_create(&labels)
                .set(float(c.memory_working_set));
            container_start.get_or_create(&labels).set(c.start_time);
        }
    }
    s.encode()
}

/// `/metrics/cadvisor` of a snapshot, with cAdvisor's names and labels.
pub fn cadvisor_metrics(u: &Usage) -> Response {
    let mut s = Scrape::new();
    let cpu = s.counter(
        "container_cpu_usage_seconds",
        "Cumulative cpu time consumed in seconds.",
    );
    let working_set = s.gauge(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
    );
    let rss = s.gauge("container_memory_rss", "Size of RSS in bytes.");
    let usage = s.gauge(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
    );
    let start = s.gauge(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
    );
    let rx = s.counter(
        "container_network_receive_bytes",
        "Cumulative count of bytes received",
    );
    let rx_errors = s.counter(
        "container_network_receive_errors",
        "Cumulative count of errors encountered while receiving",
    );
    let tx = s.counter(
        "container_network_transmit_bytes",
        "Cumulative count of bytes transmitted",
    );
    let tx_errors = s.counter(
        "container_network_transmit_errors",
        "Cumulative count of errors encountered while transmitting",
    );
    for p in &u.pods {
        for c in &p.containers {
            let labels: Labels = vec![
                ("container", c.name.clone()),
                ("cpu", "total".to_owned()),
                ("id", c.id.clone()),
                ("image", c.image.clone()),
                ("name", c.id.clone()),
                ("namespace", p.namespace.clone()),
                ("pod", p.name.clone()),
            ];
            cpu.get_or_create(&labels).inc_by(float(c.cpu_ns) / 1e9);
            let labels: Labels = labels.into_iter().filter(|(k, _)| *k != "cpu").collect();
            working_set
                .get_or_create(&labels)
                .set(float(c.memory_working_set));
            rss.get_or_create(&labels).set(float(c.memory_rss));
            usage.get_or_create(&labels).set(float(c.memory_usage));
            start.get_or_create(&labels).set(c.start_time);
        }
        // cAdvisor reports pod network on the sandbox ("POD") container.
        for i in &p.interfaces {
            let labels: Labels = vec![
                ("container", "POD".to_owned()),
                ("interface", i.name.clone()),
                ("namespace", p.namespace.clone()),
                ("pod", p.name.clone()),
            ];
            rx.get_or_create(&labels).inc_by(float(i.rx_bytes));
            rx_errors.get_or_create(&labels).inc_by(float(i.rx_errors));
            tx.get_or_create(&labels).inc_by(float(i.tx_bytes));
            tx_errors.get_or_create(&labels).inc_by(float(i.tx_errors));
        }
    }
    s.encode()
}

/// The kubelet API's view: the runtime and the sampler.
#[derive(Clone)]
pub struct StatsState {
    /// The pod runtime.
    pub rt: Arc<PodRuntime>,
    /// The sampler (CPU rates need the previous sample).
    pub sampler: Arc<Sampler>,
}

async fn snapshot(state: &StatsState) -> Result<Usage, Response> {
    state.sampler.sample(&state.rt).await.map_err(|e| {
        tracing::warn!(error = %e, "sampling resource usage");
        (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
    })
}

/// `GET /stats/summary`.
pub(crate) async fn summary_handler(State(state): State<StatsState>) -> Response {
    match snapshot(&state).await {
        Ok(u) => (
            [(header::CONTENT_TYPE, "application/json")],
            summary(&state.rt.config.node_name, &u).to_string(),
        )
            .into_response(),
        Err(r) => r,
    }
}

/// `GET /metrics/resource`.
pub(crate) async fn resource_handler(State(state): State<StatsState>) -> Response {
    match snapshot(&state).await {
        Ok(u) => resource_metrics(&u),
        Err(r) => r,
    }
}

/// `GET /metrics/cadvisor`.
pub(crate) async fn cadvisor_handler(State(state): State<StatsState>) -> Response {
    match snapshot(&state).await {
        Ok(u) => cadvisor_metrics(&u),
        Err(r) => r,
    }
}
