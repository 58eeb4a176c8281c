//! A [`Store`] decorator that times every call under upstream's metric name,
//! `etcd_request_duration_seconds{operation,type}` (for the embedded store too, so
//! dashboards work on both), with `type` the resource the key belongs to.

use std::{sync::Arc, time::Instant};

use async_trait::async_trait;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, histogram::Histogram},
};
use sextant_metrics::Registry;

use super::{EventStream, KeyValue, ListOptions, ListResult, Result, Revision, Store, resource_of};

/// Labels of `etcd_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    // `&'static str` labels: the operation names are fixed.
    operation: &'static str,
    r#type: String,
}

/// Upstream's buckets for store latency.
const BUCKETS: [f64; 18] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0,
    30.0,
];

/// The decorated store.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    durations: Family<Labels, Histogram>,
}

impl MeteredStore {
    /// Wraps `inner`, registering the metric on `registry`.
    pub fn new(inner: Arc<dyn Store>, registry: &mut Registry) -> Self {
        let durations =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(BUCKETS));
        registry.register(
            "etcd_request_duration_seconds",
            "Store request latency in seconds for each operation and object type",
            durations.clone(),
        );
        Self { inner, durations }
    }

    fn observe(&self, operation: &'static str, key: &str, start: Instant) {
        self.durations
            .get_or_create(&Labels {
                operation,
                r#type: resource_of(key),
            })
            .observe(start.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let start = Instant::now();
        let r = self.inner.get(key).await;
        self.observe("get", key, start);
        r
    }

    async fn list(&self, options: &ListOptions) -> Result<ListResult> {
        let start = Instant::now();
        let r = self.inner.list(options).await;
        self.observe("list", &options.prefix, start);
        r
    }

    async fn count(&self, prefix: &str) -> Result<usize> {
        let start = Instant::now();
        let r = self.inner.count(prefix).await;
        self.observe("count", prefix, start);
        r
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let start = Instant::now();
        let r = self.inner.create(key, value).await;
        self.observe("create", key, start);
        r
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue> {
        let start = Instant::now();
        let r = self.inner.update(key, value, expected).await;
        self.observe("update", key, start);
        r
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        let start = Instant::now();
        let r = self.inner.delete(key, expected).await;
        self.observe("delete", key, start);
        r
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<EventStream> {
        let start = Instant::now();
        let r = self.inner.watch(prefix, after).await;
        self.observe("watch", prefix, start);
        r
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let start = Instant::now();
        let r = self.inner.compact(revision).await;
        self.observe("compact", "", start);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::resource_of;

    #[test]
    fn keys_map_to_resources() {
        assert_eq!(resource_of("/registry/configmaps/default/x"), "configmaps");
        assert_eq!(
            resource_of("/registry/apps/deployments/a/b"),
            "deployments.apps"
        );
        assert_eq!(
            resource_of("/registry/networking.k8s.io/ingresses/"),
            "ingresses.networking.k8s.io"
        );
        assert_eq!(
            resource_of("/registry/ranges/serviceips/10.0.0.1"),
            "ranges"
        );
    }
}
