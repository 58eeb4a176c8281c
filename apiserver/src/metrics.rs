//! The API server's metrics, under upstream's names so existing dashboards work:
//! `apiserver_request_total` and `apiserver_request_duration_seconds`.

use std::time::Instant;

use axum::{extract::Request, middleware::Next, response::Response};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use sextant_metrics::{
    Registry,
    traces::{TraceExemplar, TracedHistogram},
};

use crate::request_info::RequestInfo;

/// Labels of `apiserver_request_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Kubernetes verb, upper case as upstream (`GET`, `LIST`, `WATCH`, `POST`, ...).
    pub verb: String,
    /// API group (empty for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Resource (plural).
    pub resource: String,
    /// Subresource, or empty.
    pub subresource: String,
    /// HTTP status code.
    pub code: String,
}

/// Labels of `apiserver_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    /// As in [`RequestLabels`].
    pub verb: String,
    /// As in [`RequestLabels`].
    pub group: String,
    /// As in [`RequestLabels`].
    pub version: String,
    /// As in [`RequestLabels`].
    pub resource: String,
    /// As in [`RequestLabels`].
    pub subresource: String,
}

/// Upstream's buckets for request latency.
const DURATION_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// Labels naming a resource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// `configmaps`, `deployments.apps`, ... as upstream's `resource` label.
    pub resource: String,
}

/// Labels of `apiserver_registered_watchers`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatcherLabels {
    /// API group.
    pub group: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
}

/// The server's own metrics, registered on its registry.
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<DurationLabels, TracedHistogram>,
    /// `apiserver_storage_objects`: objects stored, per resource.
    pub storage_objects: Family<ResourceLabels, Gauge>,
    /// `apiserver_registered_watchers`: open watches, per kind.
    pub watchers: Family<WatcherLabels, Gauge>,
}

impl ApiMetrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<DurationLabels, TracedHistogram>::new_with_constructor(|| {
            TracedHistogram::new(DURATION_BUCKETS.into_iter())
        });
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, group, version, resource and HTTP response code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, group, version, resource and subresource",
            durations.clone(),
        );
        let storage_objects = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "apiserver_storage_objects",
            "Number of stored objects at the time of last check split by kind",
            storage_objects.clone(),
        );
        let watchers = Family::<WatcherLabels, Gauge>::default();
        registry.register(
            "apiserver_registered_watchers",
            "Number of currently registered watchers for a given resources",
            watchers.clone(),
        );
        Self {
            requests,
            durations,
            storage_objects,
            watchers,
        }
    }

    /// Counts a new watch of `rt`; dropping the guard uncounts it.
    pub fn watch_started(&self, rt: &crate::resources::ResourceType) -> WatchGuard {
        let labels = WatcherLabels {
            group: rt.group.into(),
            version: rt.version.into(),
            kind: rt.kind.into(),
        };
        let gauge = self.watchers.get_or_create(&labels).clone();
        gauge.inc();
        WatchGuard(gauge)
    }
}

/// Keeps one watch counted in `apiserver_registered_watchers` while alive.
#[derive(Debug)]
pub struct WatchGuard(Gauge);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Upstream's metric verb: `LIST`, `WATCH`, `GET`, `POST`, `PUT`, `PATCH`, `DELETE`.
fn metric_verb(info: &RequestInfo, method: &str) -> String {
    match info.verb.as_str() {
        "list" => "LIST".into(),
        "watch" => "WATCH".into(),
        "deletecollection" => "DELETE".into(),
        _ => method.to_owned(),
    }
}

/// Axum middleware that counts and times every request.
pub async fn track(
    metrics: axum::extract::State<ApiMetrics>,
    req: Request,
    next: Next,
) -> Response {
    let watch = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let info = RequestInfo::parse(req.method().as_str(), req.uri().path(), watch);
    let verb = metric_verb(&info, req.method().as_str());
    let start = Instant::now();
    let response = next.run(req).await;
    let (resource, subresource) = if info.is_resource_request {
        (
            info.resource.clone(),
            info.subresource.clone().unwrap_or_default(),
        )
    } else {
        (String::new(), String::new())
    };
    metrics
        .requests
        .get_or_create(&RequestLabels {
            verb: verb.clone(),
            group: info.group.clone(),
            version: info.version.clone(),
            resource: resource.clone(),
            subresource: subresource.clone(),
            code: response.status().as_u16().to_string(),
        })
        .inc();
    // A watch lasts as long as the client wants; its duration says nothing.
    if verb != "WATCH" {
        metrics
            .durations
            .get_or_create(&DurationLabels {
                verb,
                group: info.group,
                version: info.version,
                resource,
                subresource,
            })
            .observe(
                start.elapsed().as_secs_f64(),
                response.extensions().get::<TraceExemplar>().cloned(),
                None,
            );
    }
    response
}
