//! The API server used by kube-rs, the Rust ecosystem's Kubernetes client: a
//! reflector stays in sync under concurrent writes, a conflicting replace gets 409,
//! and a watch resumes from its last resourceVersion after `kill -9` and restart
//! with no event missed or repeated.

// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, path::Path, time::Duration};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, reflector, watcher},
};
use sextant_tests::{
    etcd::EtcdCluster,
    sextant::{Datastore, SextantServer},
};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

async fn client(server: &SextantServer) -> Client {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn cm(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".to_owned(), value.to_owned())])),
        ..Default::default()
    }
}

async fn namespace(client: &Client, name: &str) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

async fn reflector_and_conflicts(server: &SextantServer) {
    let client = client(server).await;
    namespace(&client, "kube").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "kube");

    let (reader, writer) = reflector::store();
    let stream =
        reflector(writer, watcher(api.clone(), watcher::Config::default())).applied_objects();
    let driver = tokio::spawn(async move { stream.try_for_each(|_| async { Ok(()) }).await });
    reader.wait_until_ready().await.unwrap();

    // 4 writers, each creating 10 objects and updating each twice.
    let mut writers = Vec::new();
    for w in 0..4 {
        let api = api.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..10 {
                let name = format!("w{w}-{i}");
                api.create(&PostParams::default(), &cm(&name, "0"))
                    .await
                    .unwrap();
                for v in 1..=2 {
                    let mut cur = api.get(&name).await.unwrap();
                    cur.data = Some(BTreeMap::from([("v".to_owned(), v.to_string())]));
                    api.replace(&name, &PostParams::default(), &cur)
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    // The reflector converges on exactly what the server holds.
    let want: BTreeMap<String, String> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| {
            (
                c.metadata.name.unwrap(),
                c.metadata.resource_version.unwrap(),
            )
        })
        .collect();
    assert_eq!(want.len(), 40);
    let mut seen = BTreeMap::new();
    for _ in 0..100 {
        seen = reader
            .state()
            .iter()
            .map(|c| {
                (
                    c.metadata.name.clone().unwrap(),
                    c.metadata.resource_version.clone().unwrap(),
                )
            })
            .collect();
        if seen == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, want, "reflector out of sync");
    assert!(
        reader
            .state()
            .iter()
            .all(|c| c.data.as_ref().unwrap()["v"] == "2")
    );
    driver.abort();

    // A replace carrying a stale resourceVersion gets 409 Conflict.
    let stale = api.get("w0-0").await.unwrap();
    let mut fresh = stale.clone();
    fresh.data = Some(BTreeMap::from([("v".to_owned(), "3".to_owned())]));
    api.replace("w0-0", &PostParams::default(), &fresh)
        .await
        .unwrap();
    match api.replace("w0-0", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 409);
            assert_eq!(status.reason, "Conflict");
        }
        other => panic!("a stale replace must be refused with 409, got {other:?}"),
    }
}

async fn watch_resumes_across_kill(server: &mut SextantServer) {
    let c = client(server).await;
    namespace(&c, "resume").await;
    let api: Api<ConfigMap> = Api::namespaced(c, "resume");
    let start = api
        .list(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default().timeout(20), &start)
        .await
        .unwrap()
        .boxed();
    let mut names = Vec::new();
    let mut last_rv = start;
    for i in 0..3 {
        api.create(&PostParams::default(), &cm(&format!("before-{i}"), "x"))
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Added(o)) => {
                last_rv = o.metadata.resource_version.clone().unwrap();
                names.push(o.metadata.name.unwrap());
            }
            other => panic!("expected ADDED, got {other:?}"),
        }
    }
    drop(stream);
    server.kill();
    server.restart().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(server).await, "resume");
    for i in 0..3 {
        api.create(&PostParams::default(), &cm(&format!("after-{i}"), "y"))
            .await
            .unwrap();
    }
    let mut stream = api
        .watch(&WatchParams::default().timeout(2), &last_rv)
        .await
        .unwrap()
        .boxed();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        match e {
            WatchEvent::Added(o) => names.push(o.metadata.name.unwrap()),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(
        names,
        [
            "before-0", "before-1", "before-2", "after-0", "after-1", "after-2"
        ]
    );
}

#[tokio::test]
async fn kube_client_on_the_embedded_store() {
    let mut server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .unwrap();
    reflector_and_conflicts(&server).await;
    watch_resumes_across_kill(&mut server).await;
}

#[tokio::test]
async fn kube_client_on_etcd() {
    let etcd = EtcdCluster::start(1).await.unwrap();
    let mut server = SextantServer::start(Path::new(BINARY), Datastore::Etcd(&etcd))
        .await
        .unwrap();
    reflector_and_conflicts(&server).await;
    watch_resumes_across_kill(&mut server).await;
}
