//! The store conformance suite against both backends, the embedded redb file and a
//! real etcd, bare and behind the watch cache (which must not change semantics).

use std::sync::Arc;

use sextant_apiserver::storage::{
    Store, conformance, embedded::EmbeddedStore, etcd::EtcdStore, watch_cache::WatchCache,
};
use sextant_tests::etcd::EtcdCluster;

#[tokio::test]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("open");
    conformance::run_all(Arc::new(store)).await;
}

#[tokio::test]
async fn etcd_store_conforms() {
    let etcd = EtcdCluster::start(1).await.expect("etcd");
    let store = EtcdStore::connect(&etcd.endpoints())
        .await
        .expect("connect");
    conformance::run_all(Arc::new(store)).await;
}

/// `store` behind a watch cache covering every key the suite uses.
fn cached(store: Arc<dyn Store>) -> Arc<dyn Store> {
    let cache = WatchCache::new(
        store,
        vec!["/c/".into()],
        16,
        &mut sextant_metrics::Registry::default(),
    );
    Arc::new(Arc::new(cache))
}

#[tokio::test]
async fn embedded_store_conforms_through_the_watch_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("open");
    conformance::run_all(cached(Arc::new(store))).await;
}

#[tokio::test]
async fn etcd_store_conforms_through_the_watch_cache() {
    let etcd = EtcdCluster::start(1).await.expect("etcd");
    let store = EtcdStore::connect(&etcd.endpoints())
        .await
        .expect("connect");
    conformance::run_all(cached(Arc::new(store))).await;
}
