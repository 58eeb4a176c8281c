//! The scheduler end to end, inside a real `sextant server`, with simulated nodes
//! (Node objects only): resources, taints and tolerations, node selectors,
//! cordoned nodes, spreading, FailedScheduling events worded as upstream, the
//! leader Lease and the scheduler's metrics.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use sextant_tests::sextant::{Datastore, Kubectl, SextantServer};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {disk: ssd}}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
spec:
  taints: [{key: gpu, value: "yes", effect: NoSchedule}]
"#;

const STATUS: &str = r#"{"status":{"allocatable":{"cpu":"2","memory":"4Gi","pods":"110"},"capacity":{"cpu":"2","memory":"4Gi","pods":"110"},"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"simulated"}]}}"#;

fn pod(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: sextant.local/busybox:v1\n{extra}"
    )
}

const TOLERATE_GPU: &str = "  tolerations: [{key: gpu, operator: Exists}]\n";

async fn node_of(k: &Kubectl, pod: &str) -> String {
    for _ in 0..100 {
        let node = k
            .ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"])
            .unwrap();
        if !node.is_empty() {
            return node;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pod {pod} was not scheduled");
}

async fn failed_scheduling(k: &Kubectl, pod: &str) -> String {
    for _ in 0..100 {
        let messages = k
            .ok(&[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={pod},reason=FailedScheduling"),
                "-o",
                "jsonpath={.items[*].message}",
            ])
            .unwrap();
        if !messages.is_empty() {
            return messages;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no FailedScheduling event for {pod}");
}

#[tokio::test]
async fn pods_are_placed_like_kube_scheduler_would() {
    let server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    let k = server.kubectl().unwrap();
    k.ok_with(&["apply", "-f", "-"], Some(NODES)).unwrap();
    for n in ["node-a", "node-b"] {
        k.ok(&[
            "patch",
            "node",
            n,
            "--subresource=status",
            "--type=merge",
            "-p",
            STATUS,
        ])
        .unwrap();
    }

    // The taint keeps an ordinary pod off node-b.
    k.ok_with(
        &["apply", "-f", "-"],
        Some(&pod("fits", "    resources: {requests: {cpu: 500m}}\n")),
    )
    .unwrap();
    assert_eq!(node_of(&k, "fits").await, "node-a");

    // Too big for any node, or a selector no node matches: Pending, with upstream's words.
    k.ok_with(
        &["apply", "-f", "-"],
        Some(&pod(
            "huge",
            &format!("    resources: {{requests: {{cpu: \"100\"}}}}\n{TOLERATE_GPU}"),
        )),
    )
    .unwrap();
    let message = failed_scheduling(&k, "huge").await;
    assert!(
        message.starts_with("0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."),
        "{message}"
    );
    k.ok_with(
        &["apply", "-f", "-"],
        Some(&pod("picky", "  nodeSelector: {disk: hdd}\n")),
    )
    .unwrap();
    let message = failed_scheduling(&k, "picky").await;
    assert!(
        message.starts_with("0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {gpu: yes}."),
        "{message}"
    );
    assert_eq!(
        k.ok(&["get", "pod", "huge", "-o", "jsonpath={.status.phase}"])
            .unwrap(),
        "Pending"
    );

    // Pods of one owner spread over both nodes. (The owner is a real object no
    // controller manages, so the garbage collector leaves the pods alone.)
    k.ok(&["create", "configmap", "spread-owner"]).unwrap();
    let owner_uid = k
        .ok(&[
            "get",
            "configmap",
            "spread-owner",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .unwrap();
    for i in 0..4 {
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: spread-{i}\n  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: spread-owner, uid: {owner_uid}}}]\nspec:\n  containers: [{{name: c, image: sextant.local/busybox:v1, resources: {{requests: {{cpu: 100m}}}}}}]\n{TOLERATE_GPU}"
        );
        k.ok_with(&["apply", "-f", "-"], Some(&manifest)).unwrap();
    }
    let mut placed = Vec::new();
    for i in 0..4 {
        placed.push(node_of(&k, &format!("spread-{i}")).await);
    }
    assert!(
        placed.contains(&"node-a".to_owned()) && placed.contains(&"node-b".to_owned()),
        "{placed:?}"
    );

    // A cordoned node takes nothing new.
    k.ok(&["cordon", "node-a"]).unwrap();
    k.ok_with(
        &["apply", "-f", "-"],
        Some(&pod("after-cordon", TOLERATE_GPU)),
    )
    .unwrap();
    assert_eq!(node_of(&k, "after-cordon").await, "node-b");
    let events = k
        .ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=after-cordon",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .unwrap();
    assert!(
        events.contains("Successfully assigned default/after-cordon to node-b"),
        "{events}"
    );

    // One leader holds the scheduler's Lease; its metrics are on the server's /metrics.
    let holder = k
        .ok(&[
            "get",
            "lease",
            "kube-scheduler",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap();
    assert!(!holder.is_empty());
    let metrics = server
        .http_client()
        .unwrap()
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for m in [
        r#"scheduler_schedule_attempts_total{result="scheduled",profile="default-scheduler"}"#,
        r#"scheduler_schedule_attempts_total{result="unschedulable",profile="default-scheduler"}"#,
        "scheduler_pod_scheduling_duration_seconds_count",
        "scheduler_pending_pods",
    ] {
        assert!(metrics.contains(m), "{m} missing");
    }
}
