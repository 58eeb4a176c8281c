//! A real Prometheus with the shipped configuration, written by `sextant
//! prometheus-config` from the admin kubeconfig, discovers a two-node cluster
//! through the Sextant API server (HTTP SD with kubernetes_sd's labels) and
//! scrapes it: the API server, its etcd, every node's kubelet endpoint (kubelet
//! and dataplane metrics), cAdvisor and resource endpoints and containerd (relayed
//! by the kubelet), and a demo pod that asks for it by annotation, with
//! namespace/pod/node labels, within 30 s of starting. Then a
//! crash-looping pod makes the shipped KubePodCrashLooping alert fire in that
//! Prometheus (its `for` shortened: the 15 minutes are promtool's to test), and
//! after a little traffic (a DNS lookup and requests through a Service) every
//! query of every shipped dashboard panel and template variable returns data.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use sextant_tests::{agent::NetworkCluster, dashboards, prometheus::Prometheus};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

/// A demo Deployment whose pods ask to be scraped.
const DEMO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: demo}}
  template:
    metadata:
      labels: {app: demo}
      annotations: {prometheus.io/scrape: "true", prometheus.io/port: "8080"}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: sextant.local/demo:v1
---
apiVersion: v1
kind: Service
metadata: {name: demo}
spec:
  selector: {app: demo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
"#;

/// A pod whose container exits at once.
const CRASH: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: sextant.local/demo:v1
    command: [sh, -c, "exit 1"]
"#;

/// Every job of the shipped configuration and how many targets it should find.
const JOBS: [(&str, usize); 7] = [
    ("apiserver", 1),
    ("etcd", 1),
    ("kubelet", 2),
    ("containerd", 2),
    ("kubelet-cadvisor", 2),
    ("kubelet-resource", 2),
    ("kubernetes-pods", 1),
];

/// The active targets of `job`, once all `count` of them are up.
async fn targets_up(prom: &Prometheus, job: &str, count: usize) -> Option<Vec<Value>> {
    let data = prom.api("/api/v1/targets?state=active").await.ok()?;
    let targets: Vec<Value> = data["activeTargets"]
        .as_array()?
        .iter()
        .filter(|t| t["labels"]["job"] == job)
        .cloned()
        .collect();
    (targets.len() == count && targets.iter().all(|t| t["health"] == "up")).then_some(targets)
}

/// Every panel query and template variable of every shipped dashboard returns
/// at least one series (retried while rate windows fill).
async fn dashboards_have_data(prom: &Prometheus) {
    let mut pending: Vec<(String, String)> = Vec::new();
    let mut variables: Vec<(String, String, String)> = Vec::new();
    for (path, d) in dashboards::load_all().unwrap() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for (title, expr) in dashboards::panel_queries(&d) {
            pending.push((format!("{file}: {title}"), expr));
        }
        for (label, metric) in dashboards::variable_queries(&d) {
            variables.push((file.clone(), label, metric));
        }
    }
    let started = std::time::Instant::now();
    while !pending.is_empty() && started.elapsed() < Duration::from_secs(60) {
        let mut still = Vec::new();
        for (what, expr) in pending {
            if prom.query(&expr).await.map_or(true, |r| r.is_empty()) {
                still.push((what, expr));
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    assert!(
        pending.is_empty(),
        "panel queries without data: {pending:#?}"
    );
    for (file, label, metric) in variables {
        let values = prom
            .api(&format!("/api/v1/label/{label}/values?match[]={metric}"))
            .await
            .unwrap();
        assert!(
            values.as_array().is_some_and(|v| !v.is_empty()),
            "{file}: label_values({metric}, {label}): {values}"
        );
    }
}

#[tokio::test]
async fn prometheus_discovers_and_scrapes_the_cluster_through_its_api() {
    let cluster = NetworkCluster::start_on_etcd(Path::new(BINARY), 2)
        .await
        .expect("two-node cluster on etcd");
    let k = cluster.server.kubectl().unwrap();
    k.ok_with(&["apply", "-f", "-"], Some(DEMO)).unwrap();
    k.ok(&["rollout", "status", "deploy/demo", "--timeout=90s"])
        .unwrap();

    let out = tempfile::tempdir().unwrap();
    let written = Command::new(BINARY)
        .args(["prometheus-config", "--kubeconfig"])
        .arg(cluster.server.kubeconfig())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        written.status.success(),
        "sextant prometheus-config: {}",
        String::from_utf8_lossy(&written.stderr)
    );
    // The shipped rules, with KubePodCrashLooping's `for: 15m` cut to 0 s.
    let rules = out.path().join("rules/sextant.rules.yml");
    let text = std::fs::read_to_string(&rules).unwrap();
    let at = text.find("alert: KubePodCrashLooping").unwrap();
    let hold = at + text[at..].find("for: 15m").unwrap();
    let text = format!(
        "{}for: 0s{}",
        &text[..hold],
        &text[hold + "for: 15m".len()..]
    );
    std::fs::write(&rules, text).unwrap();
    // Prometheus on node a's network, as one deployed on a node runs: it reaches
    // the API server, every node and the pods.
    let prom = Prometheus::start_in(
        cluster.containerds[0].netns(),
        cluster.fabric.addr(1),
        &out.path().join("prometheus.yml"),
    )
    .await
    .unwrap();
    for (job, count) in JOBS {
        let targets = sextant_tests::wait_for(
            &format!("{count} target(s) of job {job} up"),
            Duration::from_secs(30),
            Duration::from_millis(500),
            || targets_up(&prom, job, count),
        )
        .await;
        let targets = match targets {
            Ok(t) => t,
            Err(e) => {
                let all = prom.api("/api/v1/targets").await.unwrap_or_default();
                panic!("{e}\ntargets: {all:#}");
            }
        };
        if job == "kubernetes-pods" {
            let labels = &targets[0]["labels"];
            assert_eq!(labels["namespace"], "default", "{labels}");
            assert!(
                labels["pod"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("demo-")),
                "{labels}"
            );
            assert!(labels["node"].as_str().is_some_and(|n| !n.is_empty()));
        }
    }

    // Each job's own series arrived, labelled as the dashboards expect.
    for (query, what) in [
        (r#"apiserver_request_total{job="apiserver"}"#, "API server"),
        (r#"etcd_server_has_leader{job="etcd"} == 1"#, "etcd"),
        (
            r#"grpc_server_handled_total{job="containerd",node!=""}"#,
            "containerd",
        ),
        (
            r#"sextant_dataplane_forwarded_packets_total{job="kubelet",node!=""}"#,
            "dataplane on the kubelet endpoint",
        ),
        (
            r#"container_cpu_usage_seconds_total{job="kubelet-cadvisor",namespace="default"}"#,
            "cAdvisor",
        ),
        (
            r#"demo_requests_total{job="kubernetes-pods",namespace="default"}"#,
            "the demo pod",
        ),
    ] {
        let series = sextant_tests::wait_for(
            &format!("series of {what}"),
            Duration::from_secs(20),
            Duration::from_millis(500),
            || async { prom.query(query).await.ok().filter(|r| !r.is_empty()) },
        )
        .await;
        assert!(series.is_ok(), "{query}: {series:?}");
    }

    // A little traffic: a lookup in cluster DNS and requests through a Service.
    let _ = k.ok(&[
        "exec",
        "deploy/demo",
        "--",
        "/demo",
        "--http-get",
        "demo.default.svc.cluster.local:80",
        "--count",
        "5",
    ]);
    dashboards_have_data(&prom).await;

    // A container that exits at once: CrashLoopBackOff, and the alert fires.
    k.ok_with(&["apply", "-f", "-"], Some(CRASH)).unwrap();
    let firing = sextant_tests::wait_for(
        "KubePodCrashLooping firing for pod crash",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || async {
            prom.query(r#"ALERTS{alertname="KubePodCrashLooping",alertstate="firing",pod="crash"}"#)
                .await
                .ok()
                .filter(|r| !r.is_empty())
        },
    )
    .await;
    assert!(
        firing.is_ok(),
        "{firing:?}\npod: {}\nseries: {:?}",
        k.ok(&[
            "get",
            "pod",
            "crash",
            "-o",
            "jsonpath={.status.containerStatuses}"
        ])
        .unwrap_or_default(),
        prom.query(r#"kube_pod_container_status_waiting_reason{pod="crash"}"#)
            .await
    );
    // The demo pod, healthy all along, does not.
    let others = prom
        .query(r#"ALERTS{alertname="KubePodCrashLooping",pod!="crash"}"#)
        .await
        .unwrap();
    assert!(others.is_empty(), "{others:?}");
}
