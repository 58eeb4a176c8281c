//! Two real nodes joined to one server: each a `sextant agent` with its own
//! containerd in its own network namespace, driven by kubectl 1.33. A
//! DaemonSet runs one pod on each (and none on a tainted third node); each
//! node has its own pod CIDR; stopping
//! one agent turns its node NotReady within 40 s, and after the pods'
//! (shortened) toleration their owner recreates them on the other node.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use sextant_tests::{
    agent::SextantAgent,
    containerd::Containerd,
    sextant::{Datastore, Kubectl, SextantServer},
};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

const WORKLOADS: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: everywhere}
spec:
  selector: {matchLabels: {app: everywhere}}
  template:
    metadata: {labels: {app: everywhere}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: sextant.local/busybox:v1
        command: [sleep, "3600"]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: roam}
spec:
  replicas: 2
  selector: {matchLabels: {app: roam}}
  template:
    metadata: {labels: {app: roam}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 5}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 5}
      containers:
      - name: main
        image: sextant.local/busybox:v1
        command: [sleep, "3600"]
"#;

/// A Node object that reports Ready but runs nothing, tainted for GPUs only.
const TAINTED: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: gpu-only}
spec:
  taints: [{key: dedicated, value: gpu, effect: NoSchedule}]
"#;

/// Node → Running and Ready pods labelled `app=<app>`, not being deleted.
fn running(k: &Kubectl, app: &str) -> BTreeMap<String, usize> {
    let list: Value = serde_json::from_str(
        &k.ok(&["get", "pods", "-l", &format!("app={app}"), "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    let mut out = BTreeMap::new();
    for p in list["items"].as_array().unwrap() {
        let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if p["metadata"]["deletionTimestamp"].is_null() && ready {
            let node = p["spec"]["nodeName"].as_str().unwrap_or("-").to_owned();
            *out.entry(node).or_insert(0) += 1;
        }
    }
    out
}

async fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        if check() {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("timed out after {within:?} waiting for {what}");
}

fn ready_status(k: &Kubectl, node: &str) -> String {
    k.ok(&[
        "get",
        "node",
        node,
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
    ])
    .unwrap()
}

#[tokio::test]
async fn two_real_nodes_share_daemons_and_take_over_lost_pods() {
    let (ctrd_a, ctrd_b) = (
        Containerd::start().await.expect("containerd a"),
        Containerd::start().await.expect("containerd b"),
    );
    ctrd_a.import_test_images().await.expect("images a");
    ctrd_b.import_test_images().await.expect("images b");
    let server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    let mut a = SextantAgent::start(Path::new(BINARY), &server, &ctrd_a)
        .await
        .expect("agent a");
    let b = SextantAgent::start(Path::new(BINARY), &server, &ctrd_b)
        .await
        .expect("agent b");
    let k = server.kubectl().unwrap();
    k.ok_with(&["apply", "-f", "-"], Some(TAINTED)).unwrap();
    k.ok(&[
        "patch",
        "node",
        "gpu-only",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady"}],"allocatable":{"cpu":"4","memory":"8Gi","pods":"110"}}}"#,
    ])
    .unwrap();

    // Node IPAM: every node gets its own block of the cluster CIDR.
    let mut cidrs: Vec<String> = Vec::new();
    for node in [&a.node_name, &b.node_name, "gpu-only"] {
        until("a pod CIDR on every node", Duration::from_secs(10), || {
            k.ok(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"])
                .is_ok_and(|c| !c.is_empty())
        })
        .await;
        let cidr = k
            .ok(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"])
            .unwrap();
        assert!(
            cidr.starts_with("10.42.") && cidr.ends_with("/24"),
            "{cidr}"
        );
        cidrs.push(cidr);
    }
    cidrs.sort();
    cidrs.dedup();
    assert_eq!(cidrs.len(), 3, "{cidrs:?}");

    // The DaemonSet: one running pod on each real node, none on the tainted one.
    k.ok_with(&["apply", "-f", "-"], Some(WORKLOADS)).unwrap();
    let expected: BTreeMap<String, usize> =
        [(a.node_name.clone(), 1), (b.node_name.clone(), 1)].into();
    until(
        "a daemon pod Running on each real node",
        Duration::from_secs(90),
        || running(&k, "everywhere") == expected,
    )
    .await;
    let ds: Value =
        serde_json::from_str(&k.ok(&["get", "ds", "everywhere", "-o", "json"]).unwrap()).unwrap();
    assert_eq!(
        ds["status"]["desiredNumberScheduled"], 2,
        "{:#}",
        ds["status"]
    );
    assert_eq!(ds["status"]["numberReady"], 2, "{:#}", ds["status"]);
    let on_gpu = k
        .ok(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=gpu-only",
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(on_gpu, "", "nothing runs on the tainted node");
    until(
        "the Deployment's two pods Ready",
        Duration::from_secs(60),
        || running(&k, "roam").values().sum::<usize>() == 2,
    )
    .await;
    // Make sure node a has something to lose.
    if !running(&k, "roam").contains_key(&a.node_name) {
        let pod = k
            .ok(&["get", "pods", "-l", "app=roam", "-o", "name"])
            .unwrap();
        let pod = pod.lines().next().unwrap().to_owned();
        k.ok(&["cordon", &b.node_name]).unwrap();
        k.ok(&["delete", &pod]).unwrap();
        until("a roam pod on node a", Duration::from_secs(60), || {
            running(&k, "roam").contains_key(&a.node_name)
        })
        .await;
        k.ok(&["uncordon", &b.node_name]).unwrap();
    }

    // Node a's agent stops: NotReady (Unknown) within 40 s, then its pods move.
    a.kill();
    let not_ready = until("node a to turn NotReady", Duration::from_secs(40), || {
        ready_status(&k, &a.node_name) == "Unknown"
    })
    .await;
    eprintln!("node a NotReady {not_ready:?} after its agent stopped");
    // The node's story in its events: the kubelet's start-up, then the node
    // controller's verdict.
    let reasons = k
        .ok(&[
            "get",
            "events",
            "-A",
            "--field-selector",
            &format!(
                "involvedObject.kind=Node,involvedObject.name={}",
                a.node_name
            ),
            "-o",
            "jsonpath={.items[*].reason}",
        ])
        .unwrap();
    for reason in [
        "Starting",
        "NodeHasSufficientMemory",
        "NodeReady",
        "NodeNotReady",
    ] {
        assert!(
            reasons.split_whitespace().any(|r| r == reason),
            "{reason} among node a's events: {reasons}"
        );
    }
    let nodes = k.ok(&["get", "nodes"]).unwrap();
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with(&a.node_name) && l.contains("NotReady")),
        "{nodes}"
    );
    let moved = until(
        "both roam pods Running on node b",
        Duration::from_secs(60),
        || running(&k, "roam") == [(b.node_name.clone(), 2)].into(),
    )
    .await;
    eprintln!("pods recreated on node b {moved:?} later");
    let taints = k
        .ok(&[
            "get",
            "node",
            &a.node_name,
            "-o",
            "jsonpath={.spec.taints[*].key}",
        ])
        .unwrap();
    assert!(
        taints.contains("node.kubernetes.io/unreachable"),
        "{taints}"
    );
    assert_eq!(ready_status(&k, &b.node_name), "True");
    // The daemon pod on a stays (daemon pods tolerate unreachable nodes).
    let daemons = k
        .ok(&[
            "get",
            "pods",
            "-l",
            "app=everywhere",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ])
        .unwrap();
    let mut on: Vec<&str> = daemons.lines().map(str::trim).collect();
    on.sort();
    let mut want = vec![a.node_name.as_str(), b.node_name.as_str()];
    want.sort();
    assert_eq!(on, want, "one daemon pod per node, none terminating");
}
