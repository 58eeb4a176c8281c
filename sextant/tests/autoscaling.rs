//! The HorizontalPodAutoscaler on a real node: `kubectl autoscale` on a
//! Deployment whose pods burn CPU for their first 40 s (each held to 200m, with a
//! 100m request) scales it up from 1 on the utilization `metrics.k8s.io` reports,
//! and back down to 1 once the burning stops. The scale-down stabilization
//! window is patched to 0 s (its 300 s default is the unit tests' to check).
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use sextant_tests::{agent::OneNodeCluster, sextant::Kubectl};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

/// Pods that spin for 40 s after they start, then idle.
const BURNER: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: burner}
spec:
  replicas: 1
  selector: {matchLabels: {app: burner}}
  template:
    metadata: {labels: {app: burner}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: sextant.local/demo:v1
        command: [sh, -c, "end=$(( $(date +%s) + 40 )); while [ $(date +%s) -lt $end ]; do :; done; exec sleep 3600"]
        resources:
          requests: {cpu: 100m}
          limits: {cpu: 200m}
"#;

fn replicas(k: &Kubectl) -> i64 {
    k.ok(&["get", "deploy", "burner", "-o", "jsonpath={.spec.replicas}"])
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

async fn until(k: &Kubectl, what: &str, within: Duration, check: impl Fn(i64) -> bool) -> i64 {
    let started = std::time::Instant::now();
    loop {
        let n = replicas(k);
        if check(n) {
            return n;
        }
        if started.elapsed() > within {
            let hpa = k
                .ok(&["get", "hpa", "burner", "-o", "yaml"])
                .unwrap_or_default();
            let top = k
                .ok(&["top", "pods", "-l", "app=burner"])
                .unwrap_or_default();
            panic!("timed out waiting for {what} (replicas {n})\n{hpa}\n{top}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn hpa_scales_a_cpu_burning_deployment_up_and_back_down() {
    let OneNodeCluster {
        containerd: _ctrd,
        server,
        agent: _agent,
    } = OneNodeCluster::start(Path::new(BINARY))
        .await
        .expect("cluster");
    let k = server.kubectl().unwrap();
    k.ok_with(&["apply", "-f", "-"], Some(BURNER)).unwrap();
    k.ok(&["rollout", "status", "deploy/burner", "--timeout=60s"])
        .unwrap();
    k.ok(&[
        "autoscale",
        "deploy/burner",
        "--min=1",
        "--max=3",
        "--cpu-percent=80",
    ])
    .unwrap();
    k.ok(&[
        "patch",
        "hpa",
        "burner",
        "--type=merge",
        "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":0}}}}"#,
    ])
    .unwrap();

    // ~200 % of the request against an 80 % target: up, to the maximum of 3.
    let up = until(&k, "a scale-up", Duration::from_secs(60), |n| n > 1).await;
    assert!(up <= 3, "never above --max: {up}");
    let events = k
        .ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=HorizontalPodAutoscaler,reason=SuccessfulRescale",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .unwrap();
    assert!(events.contains("New size: "), "{events}");
    let utilization = k
        .ok(&[
            "get",
            "hpa",
            "burner",
            "-o",
            "jsonpath={.status.currentMetrics[0].resource.current.averageUtilization}",
        ])
        .unwrap();
    assert!(
        utilization.parse::<i64>().is_ok_and(|u| u > 80),
        "utilization {utilization}"
    );

    // Every pod stops burning within 40 s of starting: back down to 1.
    until(&k, "the scale-down to 1", Duration::from_secs(120), |n| {
        n == 1
    })
    .await;
}
