//! Service ClusterIP and NodePort allocation against the real server: addresses and
//! ports come from the configured ranges, are never handed out twice (also under
//! concurrent creates and across `kill -9`), are released with their Service, and a
//! ClusterIP cannot change.

// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

use serde_json::{Value, json};
use sextant_tests::{
    etcd::EtcdCluster,
    sextant::{Datastore, SextantServer},
};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");
/// 16 addresses: network, the `kubernetes` Service's, broadcast → 13 usable.
const RANGE: &str = "10.97.0.0/28";

fn svc(name: &str, kind: &str, extra: Value) -> Value {
    let mut s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"type": kind, "selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}});
    if let (Some(spec), Some(extra)) = (s["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    s
}

async fn post(c: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = c.post(url).json(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn scenario(server: &mut SextantServer) {
    let c = server.http_client().unwrap();
    let svcs = format!("{}/api/v1/namespaces/default/services", server.url());
    let range: ipnet::Ipv4Net = RANGE.parse().unwrap();

    // ClusterIP from the range, NodePort from the port range, defaults filled in.
    let (code, web) = post(&c, &svcs, &svc("web", "ClusterIP", json!({}))).await;
    assert_eq!(code, 201, "{web}");
    let ip: Ipv4Addr = web["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    assert!(
        range.contains(&ip) && ip != Ipv4Addr::new(10, 97, 0, 1),
        "{ip}"
    );
    assert_eq!(web["spec"]["clusterIPs"], json!([ip.to_string()]));
    assert_eq!(web["spec"]["ports"][0]["protocol"], "TCP");
    let (code, np) = post(&c, &svcs, &svc("np", "NodePort", json!({}))).await;
    assert_eq!(code, 201, "{np}");
    let port = np["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&port), "{port}");
    // Headless and ExternalName get no address.
    let (_, headless) = post(
        &c,
        &svcs,
        &svc("headless", "ClusterIP", json!({"clusterIP": "None"})),
    )
    .await;
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let (code, ext) = post(&c, &svcs, &json!({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "example.com"}})).await;
    assert_eq!(code, 201, "{ext}");
    assert!(ext["spec"]["clusterIP"].is_null());

    // Taken address and port are refused with upstream's messages.
    let (code, body) = post(
        &c,
        &svcs,
        &svc("dup", "ClusterIP", json!({"clusterIP": ip.to_string()})),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("provided IP is already allocated"),
        "{body}"
    );
    let (code, body) = post(
        &c,
        &svcs,
        &svc(
            "dup",
            "NodePort",
            json!({"ports": [{"port": 80, "nodePort": port}]}),
        ),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("provided port is already allocated"),
        "{body}"
    );
    let (code, body) = post(
        &c,
        &svcs,
        &svc("out", "ClusterIP", json!({"clusterIP": "10.1.2.3"})),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    // Nothing was stored for the refused ones.
    let r = c.get(format!("{svcs}/dup")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // The ClusterIP cannot change (to an address other than the one allocated,
    // which the random allocator may have picked from anywhere in the range).
    let other = if ip == Ipv4Addr::new(10, 97, 0, 14) {
        "10.97.0.13"
    } else {
        "10.97.0.14"
    };
    let r = c
        .patch(format!("{svcs}/web"))
        .header("content-type", "application/merge-patch+json")
        .body(format!(
            r#"{{"spec":{{"clusterIP":"{other}","clusterIPs":["{other}"]}}}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("may not change once set"),
        "{body}"
    );

    // Allocations survive kill -9.
    server.kill();
    server.restart().await.unwrap();
    let c = server.http_client().unwrap();
    let (code, _) = post(
        &c,
        &svcs,
        &svc("dup2", "ClusterIP", json!({"clusterIP": ip.to_string()})),
    )
    .await;
    assert_eq!(
        code, 422,
        "an allocated ClusterIP was forgotten across a restart"
    );

    // Concurrent creates fill the range with distinct addresses, then it is full.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (c, url) = (c.clone(), svcs.clone());
        tasks.push(tokio::spawn(async move {
            post(&c, &url, &svc(&format!("many-{i}"), "ClusterIP", json!({}))).await
        }));
    }
    let mut ips = BTreeSet::from([ip.to_string()]);
    for t in tasks {
        let (code, body) = t.await.unwrap();
        assert_eq!(code, 201, "{body}");
        assert!(
            ips.insert(body["spec"]["clusterIP"].as_str().unwrap().to_owned()),
            "an address was handed out twice"
        );
    }
    // web + np (a NodePort Service has a ClusterIP too) + 10 = 12 of 13: the 13th
    // fits, the 14th does not.
    let (code, last) = post(&c, &svcs, &svc("last", "ClusterIP", json!({}))).await;
    assert_eq!(code, 201, "{last}");
    let (code, full) = post(&c, &svcs, &svc("full", "ClusterIP", json!({}))).await;
    assert_eq!(code, 500, "{full}");

    // Deleting a Service releases its address and port.
    assert_eq!(
        c.delete(format!("{svcs}/web"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        c.delete(format!("{svcs}/np"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let (code, again) = post(
        &c,
        &svcs,
        &svc("again", "ClusterIP", json!({"clusterIP": ip.to_string()})),
    )
    .await;
    assert_eq!(code, 201, "{again}");
    let (code, again) = post(
        &c,
        &svcs,
        &svc(
            "np2",
            "NodePort",
            json!({"ports": [{"port": 80, "nodePort": port}]}),
        ),
    )
    .await;
    assert_eq!(code, 201, "{again}");

    // kubectl shows upstream's columns.
    let k = server.kubectl().unwrap();
    let out = k.ok(&["get", "svc", "np2"]).unwrap();
    assert!(
        out.starts_with("NAME")
            && out.contains("CLUSTER-IP")
            && out.contains(&format!("80:{port}/TCP")),
        "{out}"
    );
}

#[tokio::test]
async fn service_allocation_on_the_embedded_store() {
    let mut server = SextantServer::start_with(
        Path::new(BINARY),
        Datastore::Embedded,
        &["--service-cluster-ip-range", RANGE],
    )
    .await
    .unwrap();
    scenario(&mut server).await;
}

#[tokio::test]
async fn service_allocation_on_etcd() {
    let etcd = EtcdCluster::start(1).await.unwrap();
    let mut server = SextantServer::start_with(
        Path::new(BINARY),
        Datastore::Etcd(&etcd),
        &["--service-cluster-ip-range", RANGE],
    )
    .await
    .unwrap();
    scenario(&mut server).await;
}
