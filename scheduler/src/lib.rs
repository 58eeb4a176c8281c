//! The pod scheduler: a kube-runtime controller over unscheduled pods (one pod
//! at a time, as kube-scheduler's cycle is), which filters the nodes
//! ([`filters`]), scores the feasible ones, and binds the pod through the API
//! (`pods/binding`). An unschedulable pod gets a FailedScheduling event worded as
//! upstream's and is retried with backoff (1 s doubling to 10 s, as upstream's
//! pod backoff).
//!
//! Scores: least allocated and balanced allocation of CPU and memory, spreading
//! pods of one owner across nodes, and preferred node affinity. Pods with
//! PersistentVolumeClaims go through [`volume_binding`]; inter-pod
//! (anti-)affinity and topology spread constraints through [`topology`]. A pod
//! that fits nowhere may evict pods of lower priority ([`preemption`]; the API
//! server resolves priority classes at admission).
//!
//! It runs inside `sextant server` with its own identity (`system:kube-scheduler`)
//! and behind leader election on the `kube-system/kube-scheduler` Lease.

pub mod filters;
pub mod preemption;
pub mod topology;
pub mod volume_binding;

use sextant_metrics::traces;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PostParams,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, Store},
        watcher,
    },
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use serde_json::json;
use sextant_metrics::{Registry, traces::TracedHistogram};

use crate::filters::NodeInfo;

/// The scheduler's name, as pods name it in `spec.schedulerName`.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// Errors of a scheduling cycle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed (retried with backoff).
    #[error("API server: {0}")]
    Api(#[from] kube::Error),
}

/// Labels of `scheduler_schedule_attempts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    result: &'static str,
    profile: &'static str,
}

/// The scheduler's metrics, under upstream's names.
#[derive(Clone, Debug)]
pub struct SchedulerMetrics {
    attempts: Family<AttemptLabels, Counter>,
    duration: TracedHistogram,
    pending: Gauge,
}

impl SchedulerMetrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            attempts: Family::default(),
            duration: TracedHistogram::new(
                [
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
                ]
                .into_iter(),
            ),
            pending: Gauge::default(),
        };
        registry.register(
            "scheduler_schedule_attempts",
            "Attempts to schedule pods, by result",
            m.attempts.clone(),
        );
        registry.register(
            "scheduler_pod_scheduling_duration_seconds",
            "Seconds from a pod's first scheduling attempt to its binding",
            m.duration.clone(),
        );
        registry.register(
            "scheduler_pending_pods",
            "Pods waiting to be scheduled",
            m.pending.clone(),
        );
        m
    }

    fn attempt(&self, result: &'static str) {
        self.attempts
            .get_or_create(&AttemptLabels {
                result,
                profile: SCHEDULER_NAME,
            })
            .inc();
    }
}

/// A pod bound by this scheduler whose binding the pod cache has not shown yet.
#[derive(Clone, Debug)]
struct Assumed {
    pod: Arc<Pod>,
    node: String,
    cpu: i64,
    memory: i64,
    at: Instant,
}

/// What every scheduling cycle shares.
pub struct Context {
    /// The API client (the scheduler's own identity).
    client: Client,
    /// Every Node.
    nodes: Store<Node>,
    /// Every Pod (for what each node already runs).
    pods: Store<Pod>,
    /// Scheduled and FailedScheduling events.
    recorder: Recorder,
    /// Metrics.
    metrics: SchedulerMetrics,
    /// Bindings not yet seen in `pods`, so one cycle's choice counts in the next.
    assumed: Mutex<HashMap<String, Assumed>>,
    /// When each pending pod was first tried, and how often.
    attempts: Mutex<HashMap<String, (Instant, u32)>>,
    /// Where the next cycle starts looking at nodes.
    next_start: std::sync::atomic::AtomicUsize,
}

/// Runs the scheduler until its watches end, as the leader of `kube-scheduler`.
pub async fn run(client: Client, metrics: SchedulerMetrics, identity: String) {
    let lease_client = client.clone();
    let id = identity.clone();
    sextant_controllers::leader::run_as_leader(lease_client, "kube-scheduler", &id, || {
        schedule(client.clone(), metrics.clone(), identity.clone())
    })
    .await;
}

async fn schedule(client: Client, metrics: SchedulerMetrics, identity: String) {
    let (nodes, node_writer) = reflector::store();
    let node_watch = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .for_each(|_| std::future::ready(()));
    let (pods, pod_writer) = reflector::store();
    let pod_watch = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer)
        .for_each(|_| std::future::ready(()));
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: SCHEDULER_NAME.into(),
            instance: Some(identity),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        nodes: nodes.clone(),
        pods: pods.clone(),
        recorder,
        metrics,
        assumed: Mutex::new(HashMap::new()),
        attempts: Mutex::new(HashMap::new()),
        next_start: std::sync::atomic::AtomicUsize::new(0),
    });
    let unscheduled = watcher::Config::default().fields("spec.nodeName=");
    let controller = Controller::new(Api::<Pod>::all(client), unscheduled)
        // One pod at a time: each cycle sees the previous one's binding.
        .with_config(kube::runtime::controller::Config::default().concurrency(1))
        .run(reconcile, error_policy, ctx)
        .for_each(|_| std::future::ready(()));
    tracing::info!("scheduler started");
    tokio::select! {
        () = node_watch => {}
        () = pod_watch => {}
        () = async { nodes.wait_until_ready().await.ok(); pods.wait_until_ready().await.ok(); controller.await } => {}
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What each node runs now (bound pods that are not finished, plus assumed ones).
fn node_infos(ctx: &Context) -> Vec<NodeInfo> {
    let mut infos: HashMap<String, NodeInfo> = ctx
        .nodes
        .state()
        .iter()
        .map(|n| {
            (
                n.name_any(),
                NodeInfo {
                    node: n.clone(),
                    ..Default::default()
                },
            )
        })
        .collect();
    let mut bound = std::collections::HashSet::new();
    for p in ctx.pods.state() {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        bound.insert(p.uid().unwrap_or_default());
        let Some(info) = infos.get_mut(&node) else {
            continue;
        };
        let (cpu, memory) = filters::requests(&p);
        info.cpu_requested += cpu;
        info.memory_requested += memory;
        info.pods += 1;
        for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
            for port in c
                .ports
                .iter()
                .flatten()
                .filter(|port| port.host_port.is_some_and(|h| h > 0))
            {
                let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
                info.host_ports
                    .insert((protocol, port.host_port.unwrap_or(0)));
            }
        }
        for owner in p.owner_references() {
            *info.by_owner.entry(owner.uid.clone()).or_default() += 1;
        }
        info.placed.push(p);
    }
    let mut assumed = lock(&ctx.assumed);
    // Forget assumptions the cache has caught up with (or that are old).
    assumed.retain(|uid, a| !bound.contains(uid) && a.at.elapsed() < Duration::from_secs(30));
    for a in assumed.values() {
        if let Some(info) = infos.get_mut(&a.node) {
            info.cpu_requested += a.cpu;
            info.memory_requested += a.memory;
            info.pods += 1;
            for owner in a.pod.owner_references() {
                *info.by_owner.entry(owner.uid.clone()).or_default() += 1;
            }
            info.placed.push(a.pod.clone());
        }
    }
    let mut out: Vec<NodeInfo> = infos.into_values().collect();
    out.sort_by_key(|i| i.node.name_any());
    out
}

/// How many feasible nodes a cycle looks for before it stops filtering:
/// kube-scheduler's adaptive `percentageOfNodesToScore` (50% less 1% per 125
/// nodes, at least 5%, and never fewer than 100 nodes).
pub fn feasible_nodes_to_find(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes;
    }
    let percent = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percent / 100).max(100)
}

/// Higher is better: least allocated + balanced allocation + spread of the pod's
/// owner + preferred node affinity.
pub fn score(pod: &Pod, info: &NodeInfo) -> i64 {
    let (cpu, memory) = filters::requests(pod);
    let (cpu_alloc, memory_alloc, _) = filters::allocatable(&info.node);
    let fraction = |used: i64, total: i64| {
        if total > 0 {
            used as f64 / total as f64
        } else {
            1.0
        }
    };
    let cpu_used = fraction(info.cpu_requested + cpu, cpu_alloc).min(1.0);
    let memory_used = fraction(info.memory_requested + memory, memory_alloc).min(1.0);
    let least_allocated = ((1.0 - cpu_used) + (1.0 - memory_used)) / 2.0 * 100.0;
    let balanced = (1.0 - (cpu_used - memory_used).abs()) * 100.0;
    let same_owner: i64 = pod
        .owner_references()
        .iter()
        .map(|o| info.by_owner.get(&o.uid).copied().unwrap_or(0))
        .sum();
    let spread = 100.0 / (1.0 + same_owner as f64);
    (least_allocated + balanced + spread) as i64 + filters::preferred_affinity(pod, &info.node)
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, Error> {
    let spec = pod.spec.clone().unwrap_or_default();
    let mine = spec.scheduler_name.as_deref().unwrap_or(SCHEDULER_NAME) == SCHEDULER_NAME;
    let uid = pod.uid().unwrap_or_default();
    if spec.node_name.is_some() || pod.metadata.deletion_timestamp.is_some() || !mine {
        lock(&ctx.attempts).remove(&uid);
        return Ok(Action::await_change());
    }
    let (first, tries) = {
        let mut attempts = lock(&ctx.attempts);
        let e = attempts.entry(uid.clone()).or_insert((Instant::now(), 0));
        e.1 += 1;
        *e
    };
    ctx.metrics.pending.set(lock(&ctx.attempts).len() as i64);
    let mut infos = node_infos(&ctx);
    reserve_for_nominated(&ctx, &pod, &mut infos);
    let claims = volume_binding::claims(&ctx.client, &pod).await?;
    let by_topology = topology::applies(&pod, &infos);
    let mut rejected = Vec::new();
    let mut feasible = Vec::new();
    // As kube-scheduler: stop once enough feasible nodes are found, starting
    // where the previous cycle stopped so every node gets its turn.
    let wanted = feasible_nodes_to_find(infos.len());
    let start = ctx.next_start.load(std::sync::atomic::Ordering::Relaxed) % infos.len().max(1);
    let mut examined = 0;
    for index in (start..infos.len()).chain(0..start) {
        if feasible.len() >= wanted {
            break;
        }
        examined += 1;
        let info = &infos[index];
        let mut reasons = filters::reasons(&pod, info);
        if let (true, Ok(claims)) = (reasons.is_empty(), &claims) {
            reasons.extend(claims.reason(&info.node));
        }
        if reasons.is_empty() && by_topology {
            reasons.extend(topology::spread_reason(&pod, info, &infos));
            if reasons.is_empty() {
                reasons.extend(topology::affinity_reason(&pod, info, &infos));
            }
        }
        if let Err(message) = &claims {
            // Upstream's PreFilter: no node can help, one reason for all.
            reasons = vec![message.clone()];
        }
        if reasons.is_empty() {
            feasible.push(info);
        } else {
            rejected.push((index, reasons));
        }
    }
    ctx.next_start.store(
        (start + examined) % infos.len().max(1),
        std::sync::atomic::Ordering::Relaxed,
    );
    let reference = pod.object_ref(&());
    let Some(best) = feasible.iter().max_by_key(|i| {
        let placement = if by_topology {
            topology::score(&pod, i, &infos)
        } else {
            0
        };
        score(&pod, i) + placement
    }) else {
        ctx.metrics.attempt("unschedulable");
        let message = match &claims {
            Err(message) => {
                let n = infos.len();
                format!(
                    "0/{n} nodes are available: {message}. preemption: 0/{n} nodes are available: {n} Preemption is not helpful for scheduling."
                )
            }
            Ok(_) => {
                let reasons: Vec<Vec<String>> = rejected.iter().map(|(_, r)| r.clone()).collect();
                filters::failed_message(infos.len(), &reasons)
            }
        };
        tracing::info!(pod = %pod.name_any(), %message, "unschedulable");
        let event = Event {
            type_: EventType::Warning,
            reason: "FailedScheduling".into(),
            note: Some(message),
            action: "Scheduling".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, "recording FailedScheduling failed");
        }
        if claims.is_ok() && preempt(&ctx, &pod, &infos, &rejected).await? {
            // Room is being made: look again as soon as the victims are gone.
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        let backoff = Duration::from_secs(1 << tries.min(4)).min(Duration::from_secs(10));
        return Ok(Action::requeue(backoff));
    };
    let node = best.node.name_any();
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod.name_any(), "namespace": ns, "uid": uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    if let Ok(claims) = &claims {
        volume_binding::select_node(&ctx.client, &ns, claims, &node).await?;
    }
    // The binding, as a span of the pod's trace.
    let span = traces::from_annotations(pod.metadata.annotations.as_ref()).map(|parent| {
        traces::start(
            "scheduler: bind pod",
            Some(&parent),
            vec![
                traces::KeyValue::new("k8s.pod.name", pod.name_any()),
                traces::KeyValue::new("k8s.node.name", node.clone()),
            ],
        )
    });
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let bound = pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &pod.name_any(),
            &PostParams::default(),
            &binding,
        )
        .await;
    if let Some(cx) = &span {
        traces::end(cx);
    }
    match bound {
        Ok(_) => {}
        // Bound meanwhile (or gone): nothing left to do.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
            lock(&ctx.attempts).remove(&uid);
            return Ok(Action::await_change());
        }
        Err(e) => {
            ctx.metrics.attempt("error");
            return Err(e.into());
        }
    }
    let (cpu, memory) = filters::requests(&pod);
    lock(&ctx.assumed).insert(
        uid.clone(),
        Assumed {
            pod: pod.clone(),
            node: node.clone(),
            cpu,
            memory,
            at: Instant::now(),
        },
    );
    lock(&ctx.attempts).remove(&uid);
    ctx.metrics.pending.set(lock(&ctx.attempts).len() as i64);
    ctx.metrics.attempt("scheduled");
    ctx.metrics.duration.observe(
        first.elapsed().as_secs_f64(),
        span.as_ref().and_then(traces::TraceExemplar::of),
        None,
    );
    tracing::info!(pod = %pod.name_any(), %node, "scheduled");
    let event = Event {
        type_: EventType::Normal,
        reason: "Scheduled".into(),
        note: Some(format!(
            "Successfully assigned {ns}/{} to {node}",
            pod.name_any()
        )),
        action: "Binding".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::debug!(error = %e, "recording Scheduled failed");
    }
    Ok(Action::await_change())
}

/// Evicts lower-priority pods so `pod` fits on a node next time, and nominates
/// that node (`status.nominatedNodeName`). While victims of an earlier
/// preemption are still terminating on the nominated node, nothing more is
/// evicted.
async fn preempt(
    ctx: &Context,
    pod: &Pod,
    infos: &[NodeInfo],
    rejected: &[(usize, Vec<String>)],
) -> Result<bool, Error> {
    let nominated = pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref());
    let waiting = infos
        .iter()
        .filter(|i| Some(i.node.name_any().as_str()) == nominated)
        .flat_map(|i| i.placed.iter())
        .any(|p| {
            p.metadata.deletion_timestamp.is_some()
                && preemption::priority(p) < preemption::priority(pod)
        });
    if waiting {
        return Ok(true);
    }
    let Some(candidate) = preemption::find(pod, infos, rejected) else {
        return Ok(false);
    };
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    for victim in &candidate.victims {
        let victim_ns = victim.namespace().unwrap_or_else(|| "default".into());
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &victim_ns);
        match api.delete(&victim.name_any(), &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
        tracing::info!(victim = %victim.name_any(), preemptor = %pod.name_any(), node = %candidate.node, "preempted");
        let event = Event {
            type_: EventType::Normal,
            reason: "Preempted".into(),
            note: Some(format!(
                "Preempted by pod {} on node {}",
                pod.uid().unwrap_or_default(),
                candidate.node
            )),
            action: "Preempting".into(),
            secondary: Some(pod.object_ref(&())),
        };
        if let Err(e) = ctx.recorder.publish(&event, &victim.object_ref(&())).await {
            tracing::debug!(error = %e, "recording Preempted failed");
        }
    }
    let patch = json!({"status": {"nominatedNodeName": candidate.node}});
    Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .patch_status(
            &pod.name_any(),
            &Default::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    Ok(true)
}

/// Counts pending pods nominated to a node (after preempting there) as if they
/// ran on it, when they are at least as important as `pod`, so the room made
/// for them is not taken by another (upstream's nominated pods).
fn reserve_for_nominated(ctx: &Context, pod: &Pod, infos: &mut [NodeInfo]) {
    let mine = preemption::priority(pod);
    for other in ctx.pods.state() {
        let Some(node) = other
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
        else {
            continue;
        };
        let unbound = other.spec.as_ref().is_none_or(|s| s.node_name.is_none());
        if !unbound
            || other.metadata.uid == pod.metadata.uid
            || other.metadata.deletion_timestamp.is_some()
            || preemption::priority(&other) < mine
        {
            continue;
        }
        if let Some(info) = infos.iter_mut().find(|i| i.node.name_any() == node) {
            let (cpu, memory) = filters::requests(&other);
            info.cpu_requested += cpu;
            info.memory_requested += memory;
            info.pods += 1;
        }
    }
}

fn error_policy(_pod: Arc<Pod>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "scheduling cycle failed");
    Action::requeue(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, cpu_requested: i64) -> NodeInfo {
        NodeInfo {
            node: Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}},
                }))
                .unwrap(),
            ),
            cpu_requested,
            ..Default::default()
        }
    }

    #[test]
    fn big_clusters_are_sampled_as_upstream() {
        assert_eq!(feasible_nodes_to_find(3), 3);
        assert_eq!(feasible_nodes_to_find(100), 100);
        assert_eq!(feasible_nodes_to_find(1000), 420);
        assert_eq!(feasible_nodes_to_find(5000), 500);
    }

    #[test]
    fn the_emptier_node_and_the_owners_spread_win() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-1"}]},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]},
        }))
        .unwrap();
        assert!(score(&pod, &info("a", 0)) > score(&pod, &info("b", 2000)));
        let mut crowded = info("c", 0);
        crowded.by_owner.insert("rs-1".into(), 3);
        assert!(score(&pod, &info("d", 0)) > score(&pod, &crowded));
    }
}
