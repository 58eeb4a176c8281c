//! The store conformance suite against both backends: the embedded redb file and a
//! real etcd.

use std::sync::Arc;

use sextant_apiserver::storage::{conformance, embedded::EmbeddedStore, etcd::EtcdStore};
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
