//! Deployments end to end: the real kubectl 1.33 against `sextant server` (API,
//! scheduler, controllers) with a real `sextant agent` running the pods through
//! containerd. Create, roll out a new image without ever dropping below
//! `replicas - maxUnavailable` ready pods, history, undo to a revision, pause and
//! resume, restart, scale, and a deleted pod replaced.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use sextant_tests::{agent::OneNodeCluster, sextant::Kubectl};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

/// Ready, not-terminating pods of the deployment and their images.
fn ready_pods(k: &Kubectl) -> Vec<String> {
    let Ok(out) = k.ok(&["get", "pods", "-l", "app=web", "-o", "json"]) else {
        return Vec::new();
    };
    let list: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

fn rollout_ok(k: &Kubectl) {
    let out = k
        .ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .unwrap();
    assert!(out.contains("successfully rolled out"), "{out}");
}

async fn until(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen in {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn deployments_roll_out_and_back() {
    let OneNodeCluster {
        containerd: _ctrd,
        server,
        agent: _agent,
    } = OneNodeCluster::start(Path::new(BINARY))
        .await
        .expect("cluster");
    let k = server.kubectl().unwrap();

    k.ok(&[
        "create",
        "deployment",
        "web",
        "--image=sextant.local/demo:v1",
        "--replicas=3",
    ])
    .unwrap();
    rollout_ok(&k);
    assert_eq!(ready_pods(&k).len(), 3);

    // A new image rolls out; with maxUnavailable 25% of 3 (rounded down: 0), a
    // watcher never sees fewer than 3 ready pods.
    let watching = Arc::new(AtomicBool::new(true));
    let min_ready = Arc::new(AtomicUsize::new(usize::MAX));
    let watcher = {
        let (watching, min_ready) = (watching.clone(), min_ready.clone());
        let kubeconfig = server.kubeconfig();
        std::thread::spawn(move || {
            let k = Kubectl::new(&kubeconfig).unwrap();
            while watching.load(Ordering::SeqCst) {
                min_ready.fetch_min(ready_pods(&k).len(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    k.ok(&[
        "set",
        "image",
        "deployment/web",
        "demo=sextant.local/pause:v1",
    ])
    .unwrap();
    rollout_ok(&k);
    watching.store(false, Ordering::SeqCst);
    watcher.join().unwrap();
    assert!(
        min_ready.load(Ordering::SeqCst) >= 3,
        "ready pods fell to {}",
        min_ready.load(Ordering::SeqCst)
    );
    until("3 pods on the new image", 60, || {
        let pods = ready_pods(&k);
        pods.len() == 3 && pods.iter().all(|i| i == "sextant.local/pause:v1")
    })
    .await;

    // History and undo to revision 1.
    let history = k.ok(&["rollout", "history", "deployment/web"]).unwrap();
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );
    k.ok(&["rollout", "undo", "deployment/web", "--to-revision=1"])
        .unwrap();
    rollout_ok(&k);
    let image = k
        .ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .unwrap();
    assert_eq!(image, "sextant.local/demo:v1");
    until("3 pods back on the old image", 60, || {
        let pods = ready_pods(&k);
        pods.len() == 3 && pods.iter().all(|i| i == "sextant.local/demo:v1")
    })
    .await;

    // Pause: a template change waits; resume: it rolls out.
    k.ok(&["rollout", "pause", "deployment/web"]).unwrap();
    let before = k
        .ok(&["get", "rs", "-l", "app=web", "-o", "name"])
        .unwrap()
        .lines()
        .count();
    k.ok(&["set", "env", "deployment/web", "MODE=paused"])
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = k
        .ok(&["get", "rs", "-l", "app=web", "-o", "name"])
        .unwrap()
        .lines()
        .count();
    assert_eq!(before, during, "no new ReplicaSet while paused");
    k.ok(&["rollout", "resume", "deployment/web"]).unwrap();
    rollout_ok(&k);

    // Restart makes a new ReplicaSet; scale grows it; a deleted pod comes back.
    k.ok(&["rollout", "restart", "deployment/web"]).unwrap();
    rollout_ok(&k);
    k.ok(&["scale", "deployment", "web", "--replicas=4"])
        .unwrap();
    rollout_ok(&k);
    until("4 ready pods", 60, || ready_pods(&k).len() == 4).await;
    let victim = k
        .ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .unwrap();
    k.ok(&["delete", "pod", &victim, "--wait=false"]).unwrap();
    until("the deleted pod replaced", 60, || ready_pods(&k).len() == 4).await;
    let table = k.ok(&["get", "deployment", "web", "--no-headers"]).unwrap();
    assert!(table.split_whitespace().nth(1) == Some("4/4"), "{table}");
    let events = k.events().unwrap();
    assert!(
        events.contains("ScalingReplicaSet: Scaled up replica set web-"),
        "{events}"
    );
    assert!(
        events.contains("ScalingReplicaSet: Scaled down replica set web-"),
        "{events}"
    );
}
