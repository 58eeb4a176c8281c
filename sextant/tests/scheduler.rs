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

const ZONES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: z1-a, labels: {topology.kubernetes.io/zone: z1, kubernetes.io/hostname: z1-a}}
---
apiVersion: v1
kind: Node
metadata: {name: z1-b, labels: {topology.kubernetes.io/zone: z1, kubernetes.io/hostname: z1-b}}
---
apiVersion: v1
kind: Node
metadata: {name: z2-a, labels: {topology.kubernetes.io/zone: z2, kubernetes.io/hostname: z2-a}}
"#;

/// `app=<app>` pods → their nodes (empty for pending ones).
fn placement(k: &Kubectl, app: &str) -> Vec<String> {
    let out = k
        .ok(&[
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
        ])
        .unwrap();
    let mut nodes: Vec<String> = out.lines().map(str::to_owned).collect();
    nodes.sort();
    nodes
}

#[tokio::test]
async fn pods_follow_inter_pod_affinity_and_topology_spread() {
    let server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    let k = server.kubectl().unwrap();
    k.ok_with(&["apply", "-f", "-"], Some(ZONES)).unwrap();
    for n in ["z1-a", "z1-b", "z2-a"] {
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

    // Required anti-affinity per host: three fit, the fourth stays Pending.
    let apart = |i: usize| {
        pod(
            &format!("apart-{i}"),
            "  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - topologyKey: kubernetes.io/hostname\n        labelSelector: {matchLabels: {app: apart}}\n",
        )
        .replace("metadata: {name: apart", "metadata: {labels: {app: apart}, name: apart")
    };
    for i in 0..3 {
        k.ok_with(&["apply", "-f", "-"], Some(&apart(i))).unwrap();
        node_of(&k, &format!("apart-{i}")).await;
    }
    assert_eq!(placement(&k, "apart"), ["z1-a", "z1-b", "z2-a"]);
    k.ok_with(&["apply", "-f", "-"], Some(&apart(3))).unwrap();
    let message = failed_scheduling(&k, "apart-3").await;
    assert!(
        message.starts_with(
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
        ),
        "{message}"
    );

    // Required affinity by zone: next to the z2 pod, so on z2-a.
    let near = pod(
        "near",
        "  affinity:\n    podAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - topologyKey: topology.kubernetes.io/zone\n        labelSelector: {matchLabels: {app: lonely}}\n",
    );
    k.ok_with(
        &["apply", "-f", "-"],
        Some(
            &pod(
                "lonely",
                "  nodeSelector: {topology.kubernetes.io/zone: z2}\n",
            )
            .replace(
                "metadata: {name: lonely",
                "metadata: {labels: {app: lonely}, name: lonely",
            ),
        ),
    )
    .unwrap();
    assert_eq!(node_of(&k, "lonely").await, "z2-a");
    k.ok_with(&["apply", "-f", "-"], Some(&near)).unwrap();
    assert_eq!(node_of(&k, "near").await, "z2-a");

    // Spread over zones with maxSkew 1: four pods go two and two, although
    // zone z1 has twice the nodes.
    let spread = |i: usize| {
        pod(
            &format!("spread-{i}"),
            "  topologySpreadConstraints:\n  - maxSkew: 1\n    topologyKey: topology.kubernetes.io/zone\n    whenUnsatisfiable: DoNotSchedule\n    labelSelector: {matchLabels: {app: spread}}\n",
        )
        .replace("metadata: {name: spread", "metadata: {labels: {app: spread}, name: spread")
    };
    for i in 0..4 {
        k.ok_with(&["apply", "-f", "-"], Some(&spread(i))).unwrap();
        node_of(&k, &format!("spread-{i}")).await;
    }
    let zones: Vec<&str> = placement(&k, "spread")
        .iter()
        .map(|n| if n.starts_with("z1") { "z1" } else { "z2" })
        .collect();
    assert_eq!(zones.iter().filter(|z| **z == "z1").count(), 2, "{zones:?}");
    assert_eq!(zones.iter().filter(|z| **z == "z2").count(), 2, "{zones:?}");
}

const PRIORITIES: &str = r#"
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high}
value: 1000
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: low}
value: 10
globalDefault: true
"#;

#[tokio::test]
async fn higher_priority_pods_preempt_lower_ones() {
    let server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    let k = server.kubectl().unwrap();
    let classes = k.ok(&["get", "priorityclasses", "-o", "name"]).unwrap();
    assert!(
        classes.contains("system-node-critical") && classes.contains("system-cluster-critical"),
        "{classes}"
    );
    k.ok_with(&["apply", "-f", "-"], Some(PRIORITIES)).unwrap();
    k.ok_with(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Node\nmetadata: {name: only}\n"),
    )
    .unwrap();
    k.ok(&[
        "patch",
        "node",
        "only",
        "--subresource=status",
        "--type=merge",
        "-p",
        STATUS,
    ])
    .unwrap();
    let cpu = "  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: sextant.local/busybox:v1\n    resources: {requests: {cpu: \"1\"}}\n";
    let with_cpu = |name: &str, extra: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{extra}{cpu}")
    };
    // The global default class fills the node.
    for name in ["low-0", "low-1"] {
        k.ok_with(&["apply", "-f", "-"], Some(&with_cpu(name, "")))
            .unwrap();
        assert_eq!(node_of(&k, name).await, "only");
    }
    let low = k
        .ok(&[
            "get",
            "pod",
            "low-0",
            "-o",
            "jsonpath={.spec.priorityClassName}/{.spec.priority}",
        ])
        .unwrap();
    assert_eq!(low, "low/10");

    // An unknown class is refused at admission.
    let refused = k
        .fails(
            &["apply", "-f", "-"],
            Some(&with_cpu("nope", "  priorityClassName: nope\n")),
        )
        .unwrap();
    assert!(
        refused.contains("no PriorityClass with name nope was found"),
        "{refused}"
    );

    // A pod of the same priority waits; a higher one evicts one low pod.
    k.ok_with(
        &["apply", "-f", "-"],
        Some(&with_cpu("peer", "  priorityClassName: low\n")),
    )
    .unwrap();
    let message = failed_scheduling(&k, "peer").await;
    assert!(message.contains("Insufficient cpu"), "{message}");
    k.ok_with(
        &["apply", "-f", "-"],
        Some(&with_cpu("vip", "  priorityClassName: high\n")),
    )
    .unwrap();
    assert_eq!(node_of(&k, "vip").await, "only");
    let left = k
        .ok(&["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"])
        .unwrap();
    let lows = left.split(' ').filter(|n| n.starts_with("low-")).count();
    assert_eq!(lows, 1, "one low pod preempted: {left}");
    let preempted = k
        .ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=Preempted",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .unwrap();
    assert!(
        preempted.contains("Preempted by pod") && preempted.contains("on node only"),
        "{preempted}"
    );
    let peer = k
        .ok(&["get", "pod", "peer", "-o", "jsonpath={.spec.nodeName}"])
        .unwrap();
    assert_eq!(peer, "", "equal priority never preempts");
}
