//! Jobs end to end: a real `sextant server` (scheduler, Job controller) and a
//! real agent running the pods through containerd, driven by kubectl 1.33:
//! completions with bounded parallelism, backoffLimit, Indexed completion,
//! podFailurePolicy and ttlSecondsAfterFinished.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use serde_json::Value;
use sextant_tests::{agent::OneNodeCluster, sextant::Kubectl};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

const JOBS: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: count}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: sextant.local/busybox:v1
        command: [sh, -c, "sleep 1; echo counted"]
---
apiVersion: batch/v1
kind: Job
metadata: {name: fails}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: sextant.local/busybox:v1
        command: [sh, -c, "exit 1"]
---
apiVersion: batch/v1
kind: Job
metadata: {name: indexed}
spec:
  completions: 3
  parallelism: 3
  completionMode: Indexed
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: sextant.local/busybox:v1
        command: [sh, -c, "echo index=$JOB_COMPLETION_INDEX host=$(hostname)"]
"#;

const POLICY: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: policy}
spec:
  backoffLimit: 6
  ttlSecondsAfterFinished: 5
  podFailurePolicy:
    rules:
    - action: FailJob
      onExitCodes: {containerName: main, operator: In, values: [42]}
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: sextant.local/busybox:v1
        command: [sh, -c, "exit 42"]
"#;

fn job(k: &Kubectl, name: &str) -> Value {
    serde_json::from_str(&k.ok(&["get", "job", name, "-o", "json"]).unwrap()).unwrap()
}

fn condition<'a>(job: &'a Value, kind: &str) -> Option<&'a Value> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
}

#[tokio::test]
async fn jobs_complete_fail_and_expire() {
    let OneNodeCluster {
        containerd: _ctrd,
        server,
        agent,
    } = OneNodeCluster::start(Path::new(BINARY))
        .await
        .expect("cluster");
    let k = server.kubectl().unwrap();
    k.ok_with(&["apply", "-f", "-"], Some(JOBS)).unwrap();

    // completions=3, parallelism=2: never more than two pods at once.
    let mut most_active = 0;
    for _ in 0..600 {
        let j = job(&k, "count");
        most_active = most_active.max(j["status"]["active"].as_i64().unwrap_or(0));
        if condition(&j, "Complete").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count = job(&k, "count");
    assert!(
        condition(&count, "Complete").is_some(),
        "{:#}\nagent log:\n{}",
        count["status"],
        agent.log_tail(30)
    );
    assert_eq!(count["status"]["succeeded"], 3, "{:#}", count["status"]);
    assert!((1..=2).contains(&most_active), "{most_active}");
    assert!(count["status"]["completionTime"].is_string());
    let events = k.events().unwrap();
    assert!(events.contains("Completed: Job completed"), "{events}");
    assert!(
        events.contains("SuccessfulCreate: Created pod: count-"),
        "{events}"
    );
    let table = k.ok(&["get", "job", "count", "--no-headers"]).unwrap();
    assert!(table.contains("3/3"), "{table}");
    let logs = k.ok(&["logs", "job/count"]).unwrap();
    assert_eq!(logs, "counted\n");

    // Indexed: each index once, with its env var and hostname.
    k.ok(&[
        "wait",
        "--for=condition=complete",
        "job/indexed",
        "--timeout=60s",
    ])
    .unwrap();
    let indexed = job(&k, "indexed");
    assert_eq!(indexed["status"]["completedIndexes"], "0-2");
    let mut lines: Vec<String> = (0..3)
        .map(|i| {
            let pods = k
                .ok(&[
                    "get",
                    "pods",
                    "-l",
                    &format!("batch.kubernetes.io/job-completion-index={i},job-name=indexed"),
                    "-o",
                    "name",
                ])
                .unwrap();
            let pod = pods.lines().next().unwrap().to_owned();
            k.ok(&["logs", &pod]).unwrap().trim().to_owned()
        })
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "index=0 host=indexed-0",
            "index=1 host=indexed-1",
            "index=2 host=indexed-2"
        ]
    );

    // podFailurePolicy FailJob: the first exit 42 fails the Job; then its TTL
    // deletes it.
    k.ok_with(&["apply", "-f", "-"], Some(POLICY)).unwrap();
    k.ok(&[
        "wait",
        "--for=condition=failed",
        "job/policy",
        "--timeout=60s",
    ])
    .unwrap();
    let policy = job(&k, "policy");
    let failed = condition(&policy, "Failed").unwrap();
    assert_eq!(failed["reason"], "PodFailurePolicy", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("failed with exit code 42 matching FailJob rule at index 0"),
        "{failed}"
    );
    assert_eq!(policy["status"]["failed"], 1);
    k.ok(&["wait", "--for=delete", "job/policy", "--timeout=30s"])
        .unwrap();

    // backoffLimit 1: the second failure (after a 10 s back-off) fails the Job.
    k.ok(&[
        "wait",
        "--for=condition=failed",
        "job/fails",
        "--timeout=90s",
    ])
    .unwrap();
    let fails = job(&k, "fails");
    assert_eq!(
        condition(&fails, "Failed").unwrap()["reason"],
        "BackoffLimitExceeded"
    );
    assert_eq!(fails["status"]["failed"], 2, "{:#}", fails["status"]);
    assert_eq!(fails["status"]["active"], 0);
}

const CRON: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  successfulJobsHistoryLimit: 1
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: main
            image: sextant.local/busybox:v1
            command: [sh, -c, "echo tick"]
"#;

/// The CronJob's Jobs, oldest first.
fn cron_jobs(k: &Kubectl) -> Vec<Value> {
    let list: Value = serde_json::from_str(&k.ok(&["get", "jobs", "-o", "json"]).unwrap()).unwrap();
    let mut jobs: Vec<Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["metadata"]["ownerReferences"][0]["name"] == "tick")
        .cloned()
        .collect();
    jobs.sort_by_key(|j| j["metadata"]["name"].as_str().unwrap().to_owned());
    jobs
}

#[tokio::test]
async fn cronjobs_run_every_minute_and_keep_their_history() {
    let OneNodeCluster {
        containerd: _ctrd,
        server,
        agent: _agent,
    } = OneNodeCluster::start(Path::new(BINARY))
        .await
        .expect("cluster");
    let k = server.kubectl().unwrap();
    k.ok_with(&["apply", "-f", "-"], Some(CRON)).unwrap();

    // Two scheduled runs (at most ~2 minutes): each Job is named after its
    // minute, completes, and only the newest successful one is kept.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..1500 {
        for j in cron_jobs(&k) {
            seen.insert(j["metadata"]["name"].as_str().unwrap().to_owned());
        }
        let done = cron_jobs(&k).iter().any(|j| j["status"]["succeeded"] == 1) && seen.len() >= 2;
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.len() >= 2, "runs seen: {seen:?}");
    for name in &seen {
        let minutes: i64 = name.strip_prefix("tick-").unwrap().parse().unwrap();
        assert!(minutes > 29_000_000, "{name}");
    }
    // The history limit removes the older Job once the newer one succeeded.
    let mut kept = Vec::new();
    for _ in 0..300 {
        kept = cron_jobs(&k)
            .iter()
            .filter(|j| j["status"]["succeeded"] == 1)
            .map(|j| j["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        if kept.len() == 1 && seen.iter().filter(|n| kept.contains(n)).count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(kept.len(), 1, "{kept:?}");
    let cj: Value =
        serde_json::from_str(&k.ok(&["get", "cronjob", "tick", "-o", "json"]).unwrap()).unwrap();
    assert!(
        cj["status"]["lastScheduleTime"].is_string(),
        "{:#}",
        cj["status"]
    );
    assert!(
        cj["status"]["lastSuccessfulTime"].is_string(),
        "{:#}",
        cj["status"]
    );
    let logs = k.ok(&["logs", &format!("job/{}", kept[0])]).unwrap();
    assert_eq!(logs, "tick\n");
}
