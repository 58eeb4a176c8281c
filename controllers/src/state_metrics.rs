//! The cluster's objects as metrics, under kube-state-metrics' names and labels,
//! so its alerts and community dashboards work unchanged: pods (phase, container
//! waiting reason, restarts, readiness, placement), deployments (desired,
//! available and updated replicas, generations), nodes (conditions) and jobs
//! (succeeded, failed, the Failed condition). The subset the shipped rules and
//! dashboards use; `docs/operations.md` lists it.
//!
//! Reflector caches fed by watches hold the objects; the collector reads them at
//! scrape time, so a scrape costs no API request. Every `sextant server` exports
//! them (not only the leader); rules aggregate with `max`.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job, core::v1::Node, core::v1::Pod};
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store, store::Writer},
        watcher,
    },
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use sextant_metrics::Registry;

/// The caches the collector reads.
#[derive(Debug, Clone)]
struct Caches {
    pods: Store<Pod>,
    deployments: Store<Deployment>,
    nodes: Store<Node>,
    jobs: Store<Job>,
}

/// The write halves of the caches, to run once a client exists.
pub struct Feeds {
    pods: Writer<Pod>,
    deployments: Writer<Deployment>,
    nodes: Writer<Node>,
    jobs: Writer<Job>,
}

impl std::fmt::Debug for Feeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeds").finish_non_exhaustive()
    }
}

/// Registers the collector on `registry`; its caches fill once [`Feeds::run`] runs.
pub fn register(registry: &mut Registry) -> Feeds {
    let (pods, pods_w) = reflector::store();
    let (deployments, deployments_w) = reflector::store();
    let (nodes, nodes_w) = reflector::store();
    let (jobs, jobs_w) = reflector::store();
    registry.register_collector(Box::new(Caches {
        pods,
        deployments,
        nodes,
        jobs,
    }));
    Feeds {
        pods: pods_w,
        deployments: deployments_w,
        nodes: nodes_w,
        jobs: jobs_w,
    }
}

impl Feeds {
    /// Watches pods, deployments, nodes and jobs into the caches until the client
    /// goes away (the watcher retries with backoff on errors).
    pub async fn run(self, client: Client) {
        tokio::join!(
            feed(Api::<Pod>::all(client.clone()), self.pods),
            feed(Api::<Deployment>::all(client.clone()), self.deployments),
            feed(Api::<Node>::all(client.clone()), self.nodes),
            feed(Api::<Job>::all(client), self.jobs),
        );
    }
}

async fn feed<K>(api: Api<K>, writer: Writer<K>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            tracing::debug!(error = %e, "state metrics watch");
        }
    }
}

/// One sample: label pairs and a value.
type Sample = (Vec<(&'static str, String)>, f64);

/// One metric family to encode.
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    samples: Vec<Sample>,
}

impl Family {
    fn gauge(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            counter: false,
            samples: Vec::new(),
        }
    }

    fn counter(name: &'static str, help: &'static str) -> Self {
        Self {
            counter: true,
            ..Self::gauge(name, help)
        }
    }

    fn push(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.samples.push((labels, value));
    }
}

fn name_of<K: kube::Resource>(o: &K) -> (String, String) {
    let m = o.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

fn bool_value(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// `condition="true|false|unknown"` samples of a condition with `status`,
/// upstream's three-way encoding.
fn three_way(
    family: &mut Family,
    labels: &[(&'static str, String)],
    cond_label: &'static str,
    status: &str,
) {
    for s in ["true", "false", "unknown"] {
        let mut l = labels.to_vec();
        l.push((cond_label, s.to_owned()));
        family.push(l, bool_value(status.eq_ignore_ascii_case(s)));
    }
}

fn pods(pods: &[Arc<Pod>]) -> Vec<Family> {
    let mut phase = Family::gauge("kube_pod_status_phase", "The pod's current phase.");
    let mut info = Family::gauge("kube_pod_info", "Information about the pod.");
    let mut waiting = Family::gauge(
        "kube_pod_container_status_waiting_reason",
        "Why a container is waiting.",
    );
    let mut restarts = Family::counter(
        "kube_pod_container_status_restarts",
        "Restarts of a container.",
    );
    let mut ready = Family::gauge(
        "kube_pod_container_status_ready",
        "Whether a container passes its readiness probe.",
    );
    for p in pods {
        let (namespace, pod) = name_of(p.as_ref());
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let base = vec![("namespace", namespace), ("pod", pod), ("uid", uid)];
        let status = p.status.as_ref();
        let current = status.and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
        for ph in ["Pending", "Running", "Succeeded", "Failed", "Unknown"] {
            let mut l = base.clone();
            l.push(("phase", ph.to_owned()));
            phase.push(l, bool_value(ph == current));
        }
        let owner = p
            .metadata
            .owner_references
            .as_ref()
            .and_then(|os| os.iter().find(|o| o.controller == Some(true)));
        let mut l = base.clone();
        l.extend([
            (
                "node",
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
            ),
            (
                "host_ip",
                status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
            ),
            (
                "pod_ip",
                status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
            ),
            (
                "created_by_kind",
                owner.map(|o| o.kind.clone()).unwrap_or_default(),
            ),
            (
                "created_by_name",
                owner.map(|o| o.name.clone()).unwrap_or_default(),
            ),
        ]);
        info.push(l, 1.0);
        for c in status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
        {
            let mut l = base.clone();
            l.push(("container", c.name.clone()));
            restarts.push(l.clone(), f64::from(c.restart_count));
            ready.push(l.clone(), bool_value(c.ready));
            if let Some(reason) = c
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone())
            {
                l.push(("reason", reason));
                waiting.push(l, 1.0);
            }
        }
    }
    vec![phase, info, waiting, restarts, ready]
}

fn deployments(deployments: &[Arc<Deployment>]) -> Vec<Family> {
    let mut spec = Family::gauge(
        "kube_deployment_spec_replicas",
        "Desired replicas of a deployment.",
    );
    let mut available = Family::gauge(
        "kube_deployment_status_replicas_available",
        "Available replicas of a deployment.",
    );
    let mut updated = Family::gauge(
        "kube_deployment_status_replicas_updated",
        "Replicas of a deployment at its current template.",
    );
    let mut generation = Family::gauge(
        "kube_deployment_metadata_generation",
        "The deployment's generation.",
    );
    let mut observed = Family::gauge(
        "kube_deployment_status_observed_generation",
        "The generation the deployment controller last acted on.",
    );
    for d in deployments {
        let (namespace, name) = name_of(d.as_ref());
        let l = vec![("namespace", namespace), ("deployment", name)];
        let status = d.status.as_ref();
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        spec.push(l.clone(), f64::from(desired));
        available.push(
            l.clone(),
            f64::from(status.and_then(|s| s.available_replicas).unwrap_or(0)),
        );
        updated.push(
            l.clone(),
            f64::from(status.and_then(|s| s.updated_replicas).unwrap_or(0)),
        );
        generation.push(l.clone(), d.metadata.generation.unwrap_or(0) as f64);
        observed.push(
            l,
            status.and_then(|s| s.observed_generation).unwrap_or(0) as f64,
        );
    }
    vec![spec, available, updated, generation, observed]
}

fn nodes(nodes: &[Arc<Node>]) -> Vec<Family> {
    let mut condition = Family::gauge(
        "kube_node_status_condition",
        "The node's conditions, one series per status.",
    );
    let mut info = Family::gauge("kube_node_info", "Information about the node.");
    for n in nodes {
        let node = n.metadata.name.clone().unwrap_or_default();
        let status = n.status.as_ref();
        for c in status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
        {
            three_way(
                &mut condition,
                &[("node", node.clone()), ("condition", c.type_.clone())],
                "status",
                &c.status,
            );
        }
        let ni = status.and_then(|s| s.node_info.as_ref());
        let internal_ip = status
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone())
            .unwrap_or_default();
        info.push(
            vec![
                ("node", node),
                (
                    "kernel_version",
                    ni.map(|i| i.kernel_version.clone()).unwrap_or_default(),
                ),
                (
                    "os_image",
                    ni.map(|i| i.os_image.clone()).unwrap_or_default(),
                ),
                (
                    "container_runtime_version",
                    ni.map(|i| i.container_runtime_version.clone())
                        .unwrap_or_default(),
                ),
                (
                    "kubelet_version",
                    ni.map(|i| i.kubelet_version.clone()).unwrap_or_default(),
                ),
                ("internal_ip", internal_ip),
            ],
            1.0,
        );
    }
    vec![condition, info]
}

fn jobs(jobs: &[Arc<Job>]) -> Vec<Family> {
    let mut succeeded = Family::gauge(
        "kube_job_status_succeeded",
        "Pods of the job that succeeded.",
    );
    let mut failed_pods = Family::gauge("kube_job_status_failed", "Pods of the job that failed.");
    let mut failed = Family::gauge(
        "kube_job_failed",
        "The job's Failed condition, one series per status.",
    );
    for j in jobs {
        let (namespace, name) = name_of(j.as_ref());
        let l = vec![("namespace", namespace), ("job_name", name)];
        let status = j.status.as_ref();
        succeeded.push(
            l.clone(),
            f64::from(status.and_then(|s| s.succeeded).unwrap_or(0)),
        );
        failed_pods.push(
            l.clone(),
            f64::from(status.and_then(|s| s.failed).unwrap_or(0)),
        );
        let condition = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Failed"))
            .map(|c| c.status.clone());
        if let Some(s) = condition {
            three_way(&mut failed, &l, "condition", &s);
        }
    }
    vec![succeeded, failed_pods, failed]
}

impl Collector for Caches {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let families = pods(&self.pods.state())
            .into_iter()
            .chain(deployments(&self.deployments.state()))
            .chain(nodes(&self.nodes.state()))
            .chain(jobs(&self.jobs.state()));
        for f in families {
            let metric_type = if f.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, metric_type)?;
            for (labels, value) in &f.samples {
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let sample = metric.encode_family(&labels)?;
                if f.counter {
                    ConstCounter::new(*value).encode(sample)?;
                } else {
                    ConstGauge::new(*value).encode(sample)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encode(c: &Caches) -> String {
        let mut r = Registry::default();
        r.register_collector(Box::new(c.clone()));
        sextant_metrics::encode(&r).unwrap()
    }

    #[test]
    fn a_crash_looping_container_and_a_not_ready_node_are_exported_as_upstream() {
        let (pods, mut pw) = reflector::store::<Pod>();
        let (deployments, _dw) = reflector::store::<Deployment>();
        let (nodes, mut nw) = reflector::store::<Node>();
        let (jobs, mut jw) = reflector::store::<Job>();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "crash", "namespace": "default", "uid": "u1"},
            "spec": {"nodeName": "n1", "containers": [{"name": "main"}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "main", "ready": false, "restartCount": 4, "image": "x", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}
            }]}
        }))
        .unwrap();
        pw.apply_watcher_event(&watcher::Event::Apply(pod));
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}
        }))
        .unwrap();
        nw.apply_watcher_event(&watcher::Event::Apply(node));
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "default"},
            "status": {"failed": 2, "conditions": [{"type": "Failed", "status": "True"}]}
        }))
        .unwrap();
        jw.apply_watcher_event(&watcher::Event::Apply(job));
        let text = encode(&Caches {
            pods,
            deployments,
            nodes,
            jobs,
        });
        for line in [
            r#"kube_pod_container_status_waiting_reason{namespace="default",pod="crash",uid="u1",container="main",reason="CrashLoopBackOff"} 1"#,
            r#"kube_pod_container_status_restarts_total{namespace="default",pod="crash",uid="u1",container="main"} 4"#,
            r#"kube_pod_status_phase{namespace="default",pod="crash",uid="u1",phase="Running"} 1"#,
            r#"kube_node_status_condition{node="n1",condition="Ready",status="true"} 0"#,
            r#"kube_node_status_condition{node="n1",condition="Ready",status="unknown"} 1"#,
            r#"kube_job_failed{namespace="default",job_name="j",condition="true"} 1"#,
        ] {
            assert!(text.contains(line), "{line}\nin\n{text}");
        }
    }
}
