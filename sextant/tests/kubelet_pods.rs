//! The kubelet end to end: a real `sextant agent` joined to a real `sextant server`,
//! running pods through a real containerd + runc, driven by the real kubectl 1.33.
//! Node registration and heartbeat, init containers, env from ConfigMaps, Secrets
//! and the downward API, restart policies and crash-loop backoff, graceful deletion
//! leaving nothing in containerd, and an agent `kill -9` that pods survive.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use k8s_cri::v1 as cri;
use serde_json::Value;
use sextant_tests::{agent::OneNodeCluster, containerd::Containerd, sextant::Kubectl};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

const APP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {color: blue}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cr3t}
---
apiVersion: v1
kind: Pod
metadata: {name: app, labels: {app: demo}}
spec:
  nodeName: NODE
  initContainers:
  - name: prepare
    image: sextant.local/busybox:v1
    command: [sh, -c, "echo written-by-init > /shared/note"]
    volumeMounts:
    - {name: shared, mountPath: /shared}
  containers:
  - name: shell
    image: sextant.local/busybox:v1
    command: [sh, -c, "echo color=$COLOR password=$PASSWORD pod=$POD_NAME greeting=$(GREETING); while true; do echo file=$(cat /etc/config/color) secret=$(cat /etc/secret/password) name=$(cat /etc/info/name) shared=$(cat /shared/note); sleep 1; done"]
    env:
    - {name: GREETING, value: hello}
    - name: COLOR
      valueFrom: {configMapKeyRef: {name: settings, key: color}}
    - name: PASSWORD
      valueFrom: {secretKeyRef: {name: creds, key: password}}
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    lifecycle:
      postStart:
        exec: {command: [sh, -c, "echo started > /hooks/post-start"]}
      preStop:
        exec: {command: [sh, -c, "echo stopping > /hooks/pre-stop"]}
    volumeMounts:
    - {name: hooks, mountPath: /hooks}
    - {name: config, mountPath: /etc/config}
    - {name: secret, mountPath: /etc/secret, readOnly: true}
    - {name: info, mountPath: /etc/info}
    - {name: shared, mountPath: /shared}
  - name: web
    image: sextant.local/demo:v1
    args: [--listen, "0.0.0.0:8080"]
    resources:
      limits: {cpu: 200m, memory: 64Mi}
  volumes:
  - name: config
    configMap: {name: settings}
  - name: secret
    secret: {secretName: creds, defaultMode: 0400}
  - name: info
    downwardAPI:
      items:
      - {path: name, fieldRef: {fieldPath: metadata.name}}
  - name: shared
    emptyDir: {}
  - name: hooks
    hostPath: {path: HOOKDIR, type: DirectoryOrCreate}
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  nodeName: NODE
  restartPolicy: Never
  containers:
  - name: main
    image: sextant.local/busybox:v1
    command: [sh, -c, "head -c 200m /dev/zero | tail"]
    resources:
      limits: {memory: 32Mi}
"#;

fn pod_json(k: &Kubectl, name: &str) -> Value {
    serde_json::from_str(&k.ok(&["get", "pod", name, "-o", "json"]).unwrap()).unwrap()
}

/// Polls `pod` until `check` holds, for up to `secs`.
async fn wait_pod(
    k: &Kubectl,
    name: &str,
    secs: u64,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let pod = pod_json(k, name);
        if check(&pod) {
            return pod;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "pod {name}: {what} not reached in {secs}s; last status: {:#}",
                pod["status"]
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The pod's CRI containers (all attempts), by name.
async fn containers_of(ctrd: &Containerd, uid: &str) -> Vec<cri::Container> {
    let mut c = ctrd.cri().await.unwrap();
    c.runtime
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: [("io.kubernetes.pod.uid".to_owned(), uid.to_owned())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers
}

async fn sandboxes_of(ctrd: &Containerd, uid: &str) -> usize {
    let mut c = ctrd.cri().await.unwrap();
    c.runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: [("io.kubernetes.pod.uid".to_owned(), uid.to_owned())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items
        .len()
}

/// Waits until the container log at `path` contains `text`.
async fn wait_log(path: &Path, text: &str, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(text) {
            return;
        }
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "{text:?} not in the container log; last lines: {tail:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn phase_is(p: &'static str) -> impl Fn(&Value) -> bool {
    move |pod| pod["status"]["phase"] == p
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Two pods that print a numbered line every half second.
const TICKERS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: ticker}
spec:
  replicas: 2
  selector: {matchLabels: {app: ticker}}
  template:
    metadata: {labels: {app: ticker}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: sextant.local/demo:v1
        command: [sh, -c, "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done"]
"#;

#[tokio::test]
async fn pods_run_through_containerd() {
    let OneNodeCluster {
        containerd: ctrd,
        server,
        mut agent,
    } = OneNodeCluster::start(Path::new(BINARY))
        .await
        .expect("cluster");
    let k = server.kubectl().unwrap();
    let node = agent.node_name.clone();

    // The Node describes the real machine; its Lease is renewed.
    let row = k
        .ok(&["get", "nodes", &node, "--no-headers", "-o", "custom-columns=NAME:.metadata.name,ARCH:.status.nodeInfo.architecture,KERNEL:.status.nodeInfo.kernelVersion,RUNTIME:.status.nodeInfo.containerRuntimeVersion"])
        .unwrap();
    let kernel = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        fields[..3],
        [node.as_str(), "amd64", kernel.as_str()],
        "{row}"
    );
    assert!(fields[3].starts_with("containerd://"), "{row}");
    let holder = k
        .ok(&[
            "get",
            "lease",
            &node,
            "-n",
            "kube-node-lease",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap();
    assert_eq!(holder, node);

    // A pod with an init container, two containers and env from everywhere.
    let hooks = tempfile::Builder::new()
        .prefix("sextant-hooks-")
        .tempdir()
        .unwrap();
    let app = APP
        .replace("NODE", &node)
        .replace("HOOKDIR", &hooks.path().to_string_lossy());
    k.ok_with(&["apply", "-f", "-"], Some(&app)).unwrap();
    let pod = wait_pod(&k, "app", 90, "Running and Ready", |p| {
        p["status"]["phase"] == "Running" && ready(p)
    })
    .await;
    let status = &pod["status"];
    assert_eq!(
        status["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    assert!(
        status["podIP"].as_str().is_some_and(|ip| !ip.is_empty()),
        "{status:#}"
    );
    assert_eq!(status["hostIP"], "127.0.0.1");
    assert_eq!(status["qosClass"], "Burstable");
    for c in status["containerStatuses"].as_array().unwrap() {
        assert_eq!(c["restartCount"], 0, "{c}");
        assert!(
            c["containerID"]
                .as_str()
                .unwrap()
                .starts_with("containerd://"),
            "{c}"
        );
        assert!(c["state"]["running"]["startedAt"].is_string(), "{c}");
    }
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let log = agent
        .data_dir()
        .join("pods")
        .join(format!("default_app_{uid}"))
        .join("shell/0.log");
    wait_log(
        &log,
        "color=blue password=s3cr3t pod=app greeting=hello",
        10,
    )
    .await;
    // Volumes: configMap, secret, downwardAPI files and an emptyDir the init
    // container wrote to; a ConfigMap change reaches the file.
    wait_log(
        &log,
        "file=blue secret=s3cr3t name=app shared=written-by-init",
        10,
    )
    .await;
    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"color":"green"}}"#,
    ])
    .unwrap();
    wait_log(&log, "file=green", 40).await;

    // The CPU limit is in the container's cgroup; a memory hog is OOMKilled.
    let cpu_quota = std::fs::read_dir(format!(
        "/sys/fs/cgroup/cpu/{}/pod{uid}",
        ctrd.cgroup_parent()
    ))
    .unwrap()
    .flatten()
    .filter_map(|e| std::fs::read_to_string(e.path().join("cpu.cfs_quota_us")).ok())
    .map(|q| q.trim().to_owned())
    .collect::<Vec<_>>();
    assert!(cpu_quota.contains(&"20000".to_owned()), "{cpu_quota:?}");
    let hog = wait_pod(&k, "hog", 60, "Failed", phase_is("Failed")).await;
    assert_eq!(
        hog["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
        "OOMKilled"
    );

    // kubectl logs, through the API server's proxy to the kubelet API.
    let out = k.ok(&["logs", "app", "-c", "shell"]).unwrap();
    assert!(
        out.starts_with("color=blue password=s3cr3t pod=app greeting=hello\n"),
        "{out}"
    );
    let out = k
        .ok(&["logs", "app", "-c", "shell", "--tail=1", "--timestamps"])
        .unwrap();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("20") && out.contains(" file="), "{out}");
    let err = k.fails(&["logs", "app", "-c", "nope"], None).unwrap();
    assert!(
        err.contains("container nope is not valid for pod app"),
        "{err}"
    );
    let mut follow = k
        .spawn(&["logs", "-f", "app", "-c", "shell", "--tail=0"])
        .unwrap();
    let rx = sextant_tests::lines_of(follow.stdout.take().unwrap());
    for _ in 0..2 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a streamed line");
        assert!(line.starts_with("file="), "{line}");
    }
    let _ = follow.kill();
    let _ = follow.wait();

    // Several pods at once: kubectl follows each (one request per pod) and
    // prefixes every line with its source.
    k.ok_with(&["apply", "-f", "-"], Some(TICKERS)).unwrap();
    k.ok(&["rollout", "status", "deploy/ticker", "--timeout=60s"])
        .unwrap();
    let mut follow = k
        .spawn(&["logs", "-f", "-l", "app=ticker", "--prefix", "--tail=1"])
        .unwrap();
    let rx = sextant_tests::lines_of(follow.stdout.take().unwrap());
    let mut sources = std::collections::BTreeSet::new();
    let mut seen = Vec::new();
    while sources.len() < 2 {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(15)) else {
            panic!("lines from both tickers: {seen:?}");
        };
        // `[pod/<name>/<container>] tick N`
        if let Some((prefix, rest)) = line.split_once("] ")
            && prefix.starts_with("[pod/ticker-")
            && prefix.ends_with("/main")
            && rest.starts_with("tick ")
        {
            sources.insert(prefix.to_owned());
        }
        seen.push(line);
    }
    let _ = follow.kill();
    let _ = follow.wait();
    k.ok(&["delete", "deploy/ticker", "--wait=false"]).unwrap();

    // kubectl exec: WebSocket (v5.channel.k8s.io) through the API server's
    // upgrade proxy to the kubelet and containerd's streaming server.
    let out = k
        .ok(&[
            "exec", "app", "-c", "shell", "--", "sh", "-c",
            "echo $COLOR $PASSWORD; cat /etc/config/color; echo; cat /etc/secret/password; echo oops >&2",
        ])
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail(30)));
    assert_eq!(out, "blue s3cr3t\ngreen\ns3cr3t", "{out}");
    // stdin reaches the command and its end is passed on (v5's close message).
    let out = k
        .ok_with(
            &[
                "exec",
                "-i",
                "app",
                "-c",
                "shell",
                "--",
                "sh",
                "-c",
                "tr a-z A-Z; echo done",
            ],
            Some("from stdin\nsecond line\n"),
        )
        .unwrap();
    assert_eq!(out, "FROM STDIN\nSECOND LINE\ndone\n");
    let failed = k
        .run(
            &["exec", "app", "-c", "shell", "--", "sh", "-c", "exit 7"],
            None,
        )
        .unwrap();
    assert_eq!(failed.status.code(), Some(7), "{failed:?}");
    let err = k
        .fails(
            &["exec", "app", "-c", "shell", "--", "no-such-binary"],
            None,
        )
        .unwrap();
    assert!(err.contains("no-such-binary"), "{err}");

    // kubectl cp streams a tar archive into `tar x` on stdin.
    let local = hooks.path().join("copied.txt");
    std::fs::write(&local, "copied through exec\n").unwrap();
    k.ok(&[
        "cp",
        &local.to_string_lossy(),
        "app:/tmp/copied.txt",
        "-c",
        "shell",
    ])
    .unwrap();
    let out = k
        .ok(&["exec", "app", "-c", "shell", "--", "cat", "/tmp/copied.txt"])
        .unwrap();
    assert_eq!(out, "copied through exec\n");

    // kubectl attach: the running container's output, live.
    let mut attach = k.spawn(&["attach", "app", "-c", "shell"]).unwrap();
    let stdout = attach.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let line = lines.next().unwrap().unwrap();
    assert!(line.starts_with("file="), "{line}");
    let _ = attach.kill();
    let _ = attach.wait();

    // kubectl port-forward: SPDY tunnelled in WebSocket, to the demo server.
    let mut forward = k.spawn(&["port-forward", "pod/app", ":8080"]).unwrap();
    let stdout = forward.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let line = lines.next().unwrap().unwrap();
    // "Forwarding from 127.0.0.1:PORT -> 8080"
    let port: u16 = line
        .split_once("127.0.0.1:")
        .and_then(|(_, rest)| rest.split_once(' '))
        .and_then(|(p, _)| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected port-forward output: {line}"));
    for i in 0..3 {
        let body = reqwest::get(format!("http://127.0.0.1:{port}/through-forward?n={i}"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("/through-forward"), "{body}");
    }
    let _ = forward.kill();
    let _ = forward.wait();

    // Stats through the API server's node proxy: the Summary API, the resource
    // metrics and cAdvisor's container metrics, from the runtime's cgroup and
    // network figures.
    let summary: Value = serde_json::from_str(
        &k.ok(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/stats/summary"),
        ])
        .unwrap(),
    )
    .unwrap();
    assert!(
        summary["node"]["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        summary["node"]["memory"]["workingSetBytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let app = summary["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == "app")
        .unwrap_or_else(|| panic!("no app pod in {summary:#}"));
    assert_eq!(app["podRef"]["uid"], uid.as_str());
    let names: Vec<&str> = app["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shell", "web"], "{app:#}");
    for c in app["containers"].as_array().unwrap() {
        assert!(
            c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0,
            "{c}"
        );
        assert!(c["memory"]["workingSetBytes"].as_u64().unwrap() > 0, "{c}");
    }
    let resource = k
        .ok(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/metrics/resource"),
        ])
        .unwrap();
    for needle in [
        "node_cpu_usage_seconds_total ",
        "node_memory_working_set_bytes ",
        r#"container_cpu_usage_seconds_total{container="web",namespace="default",pod="app"}"#,
        r#"pod_memory_working_set_bytes{namespace="default",pod="app"}"#,
    ] {
        assert!(
            resource.contains(needle),
            "{needle} missing from:\n{resource}"
        );
    }
    let cadvisor = k
        .ok(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/metrics/cadvisor"),
        ])
        .unwrap();
    for needle in [
        r#"container_memory_working_set_bytes{container="shell""#,
        r#"container_memory_rss{container="web""#,
        r#"container_cpu_usage_seconds_total{container="web",cpu="total""#,
        r#"container_network_receive_bytes_total{container="POD",interface="eth0",namespace="default",pod="app"}"#,
    ] {
        assert!(
            cadvisor.contains(needle),
            "{needle} missing from:\n{cadvisor}"
        );
    }

    // kubectl top, through metrics.k8s.io served from the kubelets' Summary API
    // (a container's CPU rate needs two samples: retried until it has them).
    let mut top_pod = String::new();
    for _ in 0..30 {
        match k.ok(&["top", "pod", "app", "--containers", "--no-headers"]) {
            Ok(out) => {
                top_pod = out;
                break;
            }
            Err(e) => top_pod = e.to_string(),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // "app   web     1m   3Mi" per container (small containers round to 0Mi).
    let rows: Vec<Vec<&str>> = top_pod
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let mut containers: Vec<&str> = rows.iter().filter_map(|r| r.get(1).copied()).collect();
    containers.sort_unstable();
    assert_eq!(containers, ["shell", "web"], "{top_pod}");
    for r in &rows {
        assert_eq!(r.len(), 4, "{top_pod}");
        assert!(
            r[2].ends_with('m') && r[2][..r[2].len() - 1].parse::<u64>().is_ok(),
            "{top_pod}"
        );
        assert!(
            r[3].ends_with("Mi") && r[3].trim_end_matches("Mi").parse::<u64>().is_ok(),
            "{top_pod}"
        );
    }
    // The figures behind it are real: each container's working set above zero.
    let metrics: Value = serde_json::from_str(
        &k.ok(&[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/app",
        ])
        .unwrap(),
    )
    .unwrap();
    for c in metrics["containers"].as_array().unwrap() {
        let ki: u64 = c["usage"]["memory"]
            .as_str()
            .and_then(|m| m.strip_suffix("Ki"))
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        assert!(ki > 0, "{metrics}");
    }
    let top_node = k.ok(&["top", "node", "--no-headers"]).unwrap();
    let row: Vec<&str> = top_node
        .lines()
        .find(|l| l.starts_with(node.as_str()))
        .unwrap_or_else(|| panic!("{node} in {top_node}"))
        .split_whitespace()
        .collect();
    // NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%)
    assert_eq!(row.len(), 5, "{top_node}");
    assert!(row[1].ends_with('m') && row[2].ends_with('%'), "{top_node}");
    let node_mib: u64 = row[3].trim_end_matches("Mi").parse().unwrap_or(0);
    assert!(node_mib > 0, "{top_node}");

    // Restart policies.
    // The "never" pod leaves a termination message; "fallback" has none, so its
    // log's tail stands in (terminationMessagePolicy: FallbackToLogsOnError).
    let failing = |name: &str, policy: &str, code: u8, script: &str, message_policy: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  restartPolicy: {policy}\n  containers:\n  - name: main\n    image: sextant.local/busybox:v1\n    terminationMessagePolicy: {message_policy}\n    command: [sh, -c, \"echo run; {script} exit {code}\"]\n"
        )
    };
    for (name, policy, code, script, message_policy) in [
        ("crash", "Always", 1, "", "File"),
        (
            "never",
            "Never",
            3,
            "echo last words > /dev/termination-log;",
            "File",
        ),
        ("fallback", "Never", 2, "", "FallbackToLogsOnError"),
        ("onfailure-ok", "OnFailure", 0, "", "File"),
    ] {
        let manifest = failing(name, policy, code, script, message_policy);
        k.ok_with(&["apply", "-f", "-"], Some(&manifest)).unwrap();
    }
    let never = wait_pod(&k, "never", 60, "Failed", phase_is("Failed")).await;
    let t = &never["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (t["exitCode"].as_i64(), t["reason"].as_str()),
        (Some(3), Some("Error")),
        "{t}"
    );
    assert_eq!(t["message"], "last words\n", "{t}");
    let err = k.fails(&["exec", "never", "--", "true"], None).unwrap();
    assert!(
        err.contains("cannot exec into a container in a completed pod; current phase is Failed"),
        "{err}"
    );
    let fallback = wait_pod(&k, "fallback", 60, "Failed", phase_is("Failed")).await;
    let t = &fallback["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["message"], "run\n", "{t}");
    assert_eq!(never["status"]["containerStatuses"][0]["restartCount"], 0);
    wait_pod(&k, "onfailure-ok", 60, "Succeeded", phase_is("Succeeded")).await;
    let crash = wait_pod(&k, "crash", 60, "CrashLoopBackOff after a restart", |p| {
        let c = &p["status"]["containerStatuses"][0];
        c["restartCount"].as_i64().unwrap_or(0) >= 1
            && c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    let c = &crash["status"]["containerStatuses"][0];
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1, "{c}");
    assert!(
        c["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .starts_with("back-off 10s restarting failed container=main"),
        "{c}"
    );
    assert_eq!(crash["status"]["phase"], "Running");
    let previous = k.ok(&["logs", "crash", "--previous"]).unwrap();
    assert_eq!(previous, "run\n");
    let table = k.ok(&["get", "pod", "crash", "--no-headers"]).unwrap();
    assert!(table.contains("CrashLoopBackOff"), "{table}");

    // kill -9 of the agent: pods keep running; after restart nothing is duplicated.
    let before = containers_of(&ctrd, &uid).await.len();
    agent.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let running = containers_of(&ctrd, &uid)
        .await
        .iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
        .count();
    assert_eq!(
        running, 2,
        "the pod's containers keep running without the agent"
    );
    agent.restart(&server).await.expect("agent restart");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pod = pod_json(&k, "app");
    assert!(ready(&pod), "{:#}", pod["status"]);
    for c in pod["status"]["containerStatuses"].as_array().unwrap() {
        assert_eq!(c["restartCount"], 0, "{c}");
    }
    assert_eq!(
        containers_of(&ctrd, &uid).await.len(),
        before,
        "no container was duplicated"
    );
    assert_eq!(sandboxes_of(&ctrd, &uid).await, 1);

    let metrics = agent.metrics().await.unwrap();
    for needle in [
        "kubelet_pod_start_duration_seconds_count",
        r#"kubelet_runtime_operations_duration_seconds_count{operation_type="container_status"}"#,
        r#"kubelet_runtime_operations_duration_seconds_count{operation_type="list_podsandbox"}"#,
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    let running_pods: i64 = metrics
        .lines()
        .find(|l| l.starts_with("kubelet_running_pods "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(running_pods >= 1, "{metrics}");

    // Deletion: the pod goes away and leaves nothing in containerd.
    k.ok(&[
        "delete",
        "pod",
        "app",
        "--grace-period=5",
        "--wait=true",
        "--timeout=60s",
    ])
    .unwrap();
    assert!(
        k.fails(&["get", "pod", "app"], None)
            .unwrap()
            .contains("NotFound")
    );
    assert_eq!(containers_of(&ctrd, &uid).await.len(), 0);
    assert_eq!(sandboxes_of(&ctrd, &uid).await, 0);
    // Both lifecycle hooks ran in the container.
    let read = |f: &str| std::fs::read_to_string(hooks.path().join(f)).unwrap_or_default();
    assert_eq!(read("post-start"), "started\n");
    assert_eq!(read("pre-stop"), "stopping\n");
}

const PROBED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: live-fail}
spec:
  nodeName: NODE
  containers:
  - name: web
    image: sextant.local/demo:v1
    args: [--listen, "0.0.0.0:8080", --fail-liveness]
    livenessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata: {name: not-ready}
spec:
  nodeName: NODE
  containers:
  - name: web
    image: sextant.local/demo:v1
    args: [--listen, "0.0.0.0:8080", --fail-readiness]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /readyz, port: http}
      periodSeconds: 1
    livenessProbe:
      tcpSocket: {port: http}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {name: slow-start}
spec:
  nodeName: NODE
  containers:
  - name: web
    image: sextant.local/demo:v1
    args: [--listen, "0.0.0.0:8080", --startup-delay-seconds, "5"]
    startupProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
      failureThreshold: 30
    livenessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {name: exec-ready}
spec:
  nodeName: NODE
  containers:
  - name: main
    image: sextant.local/busybox:v1
    command: [sh, -c, "sleep 3; touch /tmp/ready; sleep 3600"]
    readinessProbe:
      exec: {command: [cat, /tmp/ready]}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {name: scheduled}
spec:
  containers:
  - name: main
    image: sextant.local/busybox:v1
    command: [sleep, "3600"]
"#;

#[tokio::test]
async fn probes_restart_and_gate_readiness() {
    let OneNodeCluster {
        containerd: _ctrd,
        server,
        agent,
    } = OneNodeCluster::start(Path::new(BINARY))
        .await
        .expect("cluster");
    let k = server.kubectl().unwrap();
    k.ok_with(
        &["apply", "-f", "-"],
        Some(&PROBED.replace("NODE", &agent.node_name)),
    )
    .unwrap();

    // A failing liveness probe restarts the container, with events saying why.
    wait_pod(&k, "live-fail", 60, "a liveness restart", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    let described = k.ok(&["describe", "pod", "live-fail"]).unwrap();
    for line in [
        "Liveness probe failed: HTTP probe failed with statuscode: 503",
        "Container web failed liveness probe, will be restarted",
        "Started container web",
    ] {
        assert!(described.contains(line), "{described}");
    }

    // The startup probe holds liveness off until the app is up; exec readiness
    // turns Ready once the file exists.
    let slow = wait_pod(&k, "slow-start", 60, "Ready", ready).await;
    assert_eq!(slow["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(slow["status"]["containerStatuses"][0]["started"], true);
    wait_pod(&k, "exec-ready", 60, "Ready", ready).await;
    // Without a nodeName, the scheduler in the server binds it to the only node.
    let scheduled = wait_pod(&k, "scheduled", 60, "Running", phase_is("Running")).await;
    assert_eq!(scheduled["spec"]["nodeName"], agent.node_name.as_str());

    // A failing readiness probe: Running, never Ready, never restarted (its TCP
    // liveness probe passes).
    let pod = wait_pod(&k, "not-ready", 60, "Running", phase_is("Running")).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pod = if ready(&pod) {
        pod
    } else {
        pod_json(&k, "not-ready")
    };
    assert!(!ready(&pod), "{:#}", pod["status"]);
    let c = &pod["status"]["containerStatuses"][0];
    assert_eq!(
        (c["ready"].as_bool(), c["restartCount"].as_i64()),
        (Some(false), Some(0)),
        "{c}"
    );

    let metrics = agent.metrics().await.unwrap();
    for m in [
        r#"prober_probe_total{probe_type="Liveness",result="failed"}"#,
        r#"prober_probe_total{probe_type="Readiness",result="successful"}"#,
        r#"prober_probe_total{probe_type="Startup",result="successful"}"#,
    ] {
        assert!(metrics.contains(m), "{m} missing:\n{metrics}");
    }
}
