//! Reconcile loops that drive the cluster towards its declared state, and what
//! they share: [`leader`] election on a Lease, the [`Metrics`] every controller
//! reports, label selector helpers, pod ownership ([`pods`]). Built so far: the
//! Deployment ([`deployment`]), ReplicaSet ([`replicaset`]), Job ([`job`]),
//! CronJob ([`cronjob`]), DaemonSet ([`daemonset`]), StatefulSet
//! ([`statefulset`]), PodDisruptionBudget ([`disruption`]), ResourceQuota
//! ([`resourcequota`]), PersistentVolume binding and local-path provisioning
//! ([`persistentvolume`]), Namespace ([`namespace`]),
//! EndpointSlice ([`endpointslice`]), node lifecycle ([`node_lifecycle`]), node
//! IPAM ([`node_ipam`]) and
//! ServiceAccount ([`serviceaccount`]), HorizontalPodAutoscaler ([`horizontal`])
//! controllers and the garbage collector
//! ([`garbage_collector`]). Each has the one shape of STYLE.md, driven by
//! kube-runtime's `Controller`: a `reconcile` timed by [`Context::observe`] and
//! the shared [`retry_soon`] error policy over the one [`Context`].
//!
//! They run inside `sextant server` as `system:kube-controller-manager`, while
//! holding the `kube-system/kube-controller-manager` Lease.

pub mod cluster_dns;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpointslice;
pub mod etcd_service;
pub mod garbage_collector;
pub mod horizontal;
pub mod job;
pub mod kubernetes_service;
pub mod leader;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod persistentvolume;
pub mod pods;
pub mod replicaset;
pub mod resourcequota;
pub mod revisions;
pub mod serviceaccount;
pub mod state_metrics;
pub mod statefulset;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{Client, runtime::controller::Action};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};
use sextant_metrics::Registry;

/// What every controller's reconcile shares.
pub struct Context {
    /// The API client (the controller manager's identity).
    pub client: Client,
    /// Reconcile metrics.
    pub metrics: Metrics,
}

impl Context {
    /// Publishes an event about `obj` as `controller` (upstream's reporting
    /// component, e.g. `replicaset-controller`), for `kubectl describe` and
    /// `kubectl get events`. A failed publish is logged, never fatal.
    pub async fn event<K>(
        &self,
        controller: &str,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) where
        K: kube::Resource<DynamicType = ()>,
    {
        use kube::runtime::events::{Event, EventType, Recorder, Reporter};
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: controller.into(),
                instance: None,
            },
        );
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::debug!(error = %e, %reason, "publishing an event failed");
        }
    }

    /// Runs one reconcile of `controller`, recording its duration and failure.
    pub async fn observe<T>(
        &self,
        controller: &'static str,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let started = std::time::Instant::now();
        let result = work.await;
        self.metrics
            .observe(controller, started.elapsed(), result.is_err());
        result
    }
}

/// Every controller's error policy: log and look again in two seconds.
pub fn retry_soon<K, C>(obj: std::sync::Arc<K>, error: &Error, _ctx: std::sync::Arc<C>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
{
    tracing::warn!(
        kind = %K::kind(&()),
        name = obj.meta().name.as_deref().unwrap_or_default(),
        %error,
        "reconcile failed"
    );
    Action::requeue(Duration::from_secs(2))
}

/// Errors of a reconcile (all retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("API server: {0}")]
    Api(#[from] kube::Error),
    /// An object could not be built or used as it is.
    #[error("{0}")]
    Invalid(String),
}

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: &'static str,
}

/// What every controller reports, under kube-controller-manager's workqueue names.
#[derive(Clone, Debug)]
pub struct Metrics {
    adds: Family<NameLabel, Counter>,
    duration: Family<NameLabel, Histogram>,
    errors: Family<NameLabel, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            adds: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0])
            }),
            errors: Family::default(),
        };
        registry.register(
            "workqueue_adds",
            "Reconciles started, per controller",
            m.adds.clone(),
        );
        registry.register(
            "workqueue_work_duration_seconds",
            "Seconds one reconcile took, per controller",
            m.duration.clone(),
        );
        registry.register(
            "controller_reconcile_errors",
            "Reconciles that failed, per controller",
            m.errors.clone(),
        );
        m
    }

    /// Counts one reconcile of `controller`.
    pub fn observe(&self, controller: &'static str, took: Duration, failed: bool) {
        let l = NameLabel { name: controller };
        self.adds.get_or_create(&l).inc();
        self.duration.get_or_create(&l).observe(took.as_secs_f64());
        if failed {
            self.errors.get_or_create(&l).inc();
        }
    }
}

/// Where the control plane itself is reached, for the Services that point at it.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// The `kubernetes` Service's ClusterIP.
    pub api_service_ip: std::net::Ipv4Addr,
    /// The API server's address pods can reach (`None` when only loopback).
    pub api_address: Option<std::net::SocketAddr>,
    /// The etcd members (none with the embedded store).
    pub etcd: Vec<etcd_service::Member>,
}

/// Runs every controller, as the leader of `kube-controller-manager`.
pub async fn run(
    client: Client,
    metrics: Metrics,
    identity: String,
    ipam: node_ipam::Config,
    dns_ip: std::net::Ipv4Addr,
    control_plane: ControlPlane,
) {
    let c = client.clone();
    leader::run_as_leader(c, "kube-controller-manager", &identity, || {
        let (client, metrics, cp) = (client.clone(), metrics.clone(), control_plane.clone());
        async move {
            tracing::info!("controllers started");
            tokio::join!(
                deployment::run(client.clone(), metrics.clone()),
                replicaset::run(client.clone(), metrics.clone()),
                job::run(client.clone(), metrics.clone()),
                cronjob::run(client.clone(), metrics.clone()),
                daemonset::run(client.clone(), metrics.clone()),
                statefulset::run(client.clone(), metrics.clone()),
                disruption::run(client.clone(), metrics.clone()),
                resourcequota::run(client.clone(), metrics.clone()),
                persistentvolume::run(client.clone(), metrics.clone()),
                namespace::run(client.clone(), metrics.clone()),
                endpointslice::run(client.clone(), metrics.clone()),
                node_lifecycle::run(client.clone(), metrics.clone()),
                node_ipam::run(client.clone(), metrics.clone(), ipam),
                cluster_dns::run(client.clone(), metrics.clone(), dns_ip),
                kubernetes_service::run(
                    client.clone(),
                    metrics.clone(),
                    cp.api_service_ip,
                    cp.api_address
                ),
                etcd_service::run(client.clone(), metrics.clone(), cp.etcd),
                serviceaccount::run(client.clone(), metrics.clone()),
                horizontal::run(client.clone(), metrics.clone()),
                garbage_collector::run(client, metrics),
            );
        }
    })
    .await;
}

/// A label selector as a query string (`a=b,c in (d)`), as ReplicaSet status shows it.
pub fn selector_string(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// Whether `labels` match the selector (an empty selector matches nothing, as
/// upstream's controllers treat it).
pub fn selector_matches(s: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    !sextant_apimachinery::labels::is_empty(s) && sextant_apimachinery::labels::matches(s, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let s: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}],
        }))
        .unwrap_or_default();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(selector_matches(
            &s,
            &labels(&[("app", "web"), ("tier", "a")])
        ));
        assert!(!selector_matches(&s, &labels(&[("app", "web")])));
        assert!(!selector_matches(
            &LabelSelector::default(),
            &labels(&[("app", "web")])
        ));
        assert_eq!(selector_string(&s), "app=web,tier in (a,b)");
    }
}
