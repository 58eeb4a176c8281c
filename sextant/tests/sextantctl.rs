//! `sextantctl` against a real server, step for step beside kubectl 1.33: one
//! scenario table, run with each CLI, must give the same outcomes (exit status,
//! the objects, the table's columns and names, the error text). The table grows
//! with the commands sextantctl learns (issue 8); today: `get` in every output
//! format, across namespaces, by label, the errors for a missing object and an
//! unknown type, the note for an empty list, and `config` reads; and a table of
//! changes each CLI runs in a namespace of its own: `apply` (created, unchanged,
//! configured), `create`, `label`, `annotate`, `scale`, `delete`, their errors;
//! and on a one-node cluster, `logs` of one pod, of a Deployment, by label with
//! `--prefix`, `--tail`, `--since`, `-c`, `rollout status` and `wait --for`;
//! then sextantctl alone: a rollout's progress lines, `logs -f` following new
//! lines. Then what only
//! one side can check: `config use-context`/`set-context` edit a kubeconfig
//! kubectl then reads, completion scripts for three shells, `--help` everywhere.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Output};

use serde_json::Value;
use sextant_tests::{
    agent::OneNodeCluster,
    sextant::{Datastore, Kubectl, SextantServer},
};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");
const CTL: &str = env!("CARGO_BIN_EXE_sextantctl");

/// The objects the scenario reads.
const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: scenario}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: one, namespace: scenario, labels: {app: web}}
data: {a: "1"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: two, namespace: scenario, labels: {app: db}}
data: {b: "2"}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: scenario}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

/// How two outcomes are compared.
#[derive(Clone, Copy, Debug)]
enum Compare {
    /// Standard output byte for byte.
    Exact,
    /// Standard output as JSON values.
    Json,
    /// Standard output as YAML values.
    Yaml,
    /// A table: the header and the first column of every row (ages differ).
    Table,
    /// Failure, standard error byte for byte.
    Fails,
    /// Success with nothing on stdout, standard error byte for byte.
    Note,
    /// The last line of standard output (progress lines before it vary).
    LastLine,
    /// Prefixed log lines, each pod's in order; the pods in any order (kubectl
    /// orders pods by readiness and age, a tie at one-second resolution).
    PerPod,
    /// JSON or YAML objects, without what differs between any two objects
    /// (uid, resourceVersion, creationTimestamp, managedFields) and with the
    /// last-applied annotation compared as JSON.
    Object,
}

/// An object (or a List's items) without what no two objects share.
fn comparable(mut v: Value) -> Value {
    if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
        for item in items.iter_mut() {
            *item = comparable(item.take());
        }
        return v;
    }
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
        ] {
            meta.remove(k);
        }
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            let key = "kubectl.kubernetes.io/last-applied-configuration";
            if let Some(text) = a.get(key).and_then(Value::as_str) {
                let parsed: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                a.insert(key.into(), parsed);
            }
        }
    }
    v
}

/// One step of the scenario.
struct Step {
    args: &'static [&'static str],
    compare: Compare,
}

/// One step of the changing scenario: `{ns}` in the arguments and on stdin is
/// the CLI's own namespace.
struct Change {
    args: &'static [&'static str],
    stdin: Option<&'static str>,
    compare: Compare,
}

const APP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: one, labels: {app: web}}
data: {a: "1"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: two}
data: {b: "2"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: main, image: sextant.local/demo:v1}]
"#;

const APP_CHANGED: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: one, labels: {app: web}}
data: {a: "changed", added: "yes"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: two}
data: {b: "2"}
"#;

const THREE: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: three}\n";

const CHANGES: &[Change] = &[
    Change {
        args: &["apply", "-n", "{ns}", "-f", "-"],
        stdin: Some(APP),
        compare: Compare::Exact,
    },
    Change {
        args: &["apply", "-n", "{ns}", "-f", "-"],
        stdin: Some(APP),
        compare: Compare::Exact,
    },
    Change {
        args: &["apply", "-n", "{ns}", "-f", "-"],
        stdin: Some(APP_CHANGED),
        compare: Compare::Exact,
    },
    Change {
        args: &["get", "cm", "one", "-n", "{ns}", "-o", "json"],
        stdin: None,
        compare: Compare::Object,
    },
    Change {
        args: &["create", "-n", "{ns}", "-f", "-"],
        stdin: Some(THREE),
        compare: Compare::Exact,
    },
    Change {
        args: &["create", "-n", "{ns}", "-f", "-"],
        stdin: Some(THREE),
        compare: Compare::Fails,
    },
    Change {
        args: &["label", "-n", "{ns}", "cm", "one", "tier=front"],
        stdin: None,
        compare: Compare::Exact,
    },
    Change {
        args: &["label", "-n", "{ns}", "cm", "one", "tier=back"],
        stdin: None,
        compare: Compare::Fails,
    },
    Change {
        args: &["label", "-n", "{ns}", "cm/one", "tier=back", "--overwrite"],
        stdin: None,
        compare: Compare::Exact,
    },
    Change {
        args: &["label", "-n", "{ns}", "cm", "one", "tier-"],
        stdin: None,
        compare: Compare::Exact,
    },
    Change {
        args: &["annotate", "-n", "{ns}", "configmap", "two", "note=hello"],
        stdin: None,
        compare: Compare::Exact,
    },
    Change {
        args: &["get", "cm", "-n", "{ns}", "-l", "app=web", "-o", "yaml"],
        stdin: None,
        compare: Compare::Object,
    },
    Change {
        args: &["scale", "-n", "{ns}", "deployment", "web", "--replicas=3"],
        stdin: None,
        compare: Compare::Exact,
    },
    Change {
        args: &["delete", "-n", "{ns}", "cm", "two", "three"],
        stdin: None,
        compare: Compare::Exact,
    },
    Change {
        args: &["get", "cm", "two", "-n", "{ns}"],
        stdin: None,
        compare: Compare::Fails,
    },
    Change {
        args: &["delete", "-n", "{ns}", "-f", "-"],
        stdin: Some(REST),
        compare: Compare::Exact,
    },
];

/// What is left of the app after `delete cm two three`.
const REST: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: one}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
"#;

const SCENARIO: &[Step] = &[
    Step {
        args: &["get", "namespaces"],
        compare: Compare::Table,
    },
    Step {
        args: &["get", "configmaps", "-n", "scenario"],
        compare: Compare::Table,
    },
    Step {
        args: &["get", "cm", "one", "two", "-n", "scenario"],
        compare: Compare::Table,
    },
    Step {
        args: &[
            "get",
            "cm",
            "-n",
            "scenario",
            "-l",
            "app=web",
            "--no-headers",
        ],
        compare: Compare::Table,
    },
    Step {
        args: &["get", "svc", "-A"],
        compare: Compare::Table,
    },
    Step {
        args: &["get", "services", "-n", "scenario", "-o", "wide"],
        compare: Compare::Table,
    },
    Step {
        args: &["get", "configmap", "one", "-n", "scenario", "-o", "json"],
        compare: Compare::Json,
    },
    Step {
        args: &["get", "configmaps", "-n", "scenario", "-o", "json"],
        compare: Compare::Json,
    },
    Step {
        args: &["get", "cm", "one", "-n", "scenario", "-o", "yaml"],
        compare: Compare::Yaml,
    },
    Step {
        args: &["get", "cm", "-n", "scenario", "-o", "name"],
        compare: Compare::Exact,
    },
    Step {
        args: &["get", "svc", "web", "-n", "scenario", "-o", "name"],
        compare: Compare::Exact,
    },
    Step {
        args: &["get", "cm", "missing", "-n", "scenario"],
        compare: Compare::Fails,
    },
    Step {
        args: &["get", "widgets"],
        compare: Compare::Fails,
    },
    Step {
        args: &["get", "deployments", "-n", "scenario"],
        compare: Compare::Note,
    },
    Step {
        args: &["config", "current-context"],
        compare: Compare::Exact,
    },
    Step {
        args: &["config", "get-contexts"],
        compare: Compare::Exact,
    },
];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The header and each row's first cell.
fn table_shape(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .chain(
            out.lines()
                .take(1)
                .map(|h| h.split_whitespace().collect::<Vec<_>>().join(" ")),
        )
        .collect()
}

/// What of an outcome must be equal.
fn essence(compare: Compare, out: &Output) -> (bool, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let ok = out.status.success();
    let what = match compare {
        Compare::Exact => stdout,
        Compare::LastLine => stdout.lines().last().unwrap_or_default().to_owned(),
        Compare::PerPod => {
            let mut by_pod: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
            for line in stdout.lines() {
                let pod = line.split(']').next().unwrap_or_default();
                by_pod.entry(pod).or_default().push(line);
            }
            format!("{by_pod:?}")
        }
        Compare::Json => serde_json::from_str::<Value>(&stdout)
            .map_or_else(|e| format!("not JSON ({e}): {stdout}"), |v| v.to_string()),
        Compare::Yaml => serde_saphyr::from_str::<Value>(&stdout)
            .map_or_else(|e| format!("not YAML ({e}): {stdout}"), |v| v.to_string()),
        Compare::Table => table_shape(&stdout).join("|"),
        Compare::Fails | Compare::Note => format!("{stdout}{stderr}"),
        Compare::Object => serde_saphyr::from_str::<Value>(&stdout).map_or_else(
            |e| format!("not JSON/YAML ({e}): {stdout}"),
            |v| comparable(v).to_string(),
        ),
    };
    (ok, what)
}

#[tokio::test]
async fn sextantctl_and_kubectl_agree_step_for_step() {
    let server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    let kubectl = server.kubectl().unwrap();
    kubectl
        .ok_with(&["apply", "-f", "-"], Some(OBJECTS))
        .unwrap();
    let ctl = Kubectl::with_binary(Path::new(CTL), &server.kubeconfig()).unwrap();

    let mut differences = Vec::new();
    for step in SCENARIO {
        let theirs = kubectl.run(step.args, None).unwrap();
        let ours = ctl.run(step.args, None).unwrap();
        let (theirs_ok, theirs_what) = essence(step.compare, &theirs);
        let (ours_ok, ours_what) = essence(step.compare, &ours);
        let expected_ok = !matches!(step.compare, Compare::Fails);
        assert_eq!(
            theirs_ok,
            expected_ok,
            "kubectl {:?} itself: {}{}",
            step.args,
            text(&theirs.stdout),
            text(&theirs.stderr)
        );
        if (theirs_ok, &theirs_what) != (ours_ok, &ours_what) {
            differences.push(format!(
                "{:?}:\n  kubectl    ({theirs_ok}): {theirs_what}\n  sextantctl ({ours_ok}): {ours_what}",
                step.args
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));

    // Editing contexts: sextantctl writes, kubectl reads it back.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("config");
    std::fs::copy(server.kubeconfig(), &copy).unwrap();
    let ctl2 = Kubectl::with_binary(Path::new(CTL), &copy).unwrap();
    let kubectl2 =
        Kubectl::with_binary(Path::new(sextant_tests::sextant::KUBECTL_1_33), &copy).unwrap();
    let current = ctl2.ok(&["config", "current-context"]).unwrap();
    let cluster = kubectl2
        .ok(&[
            "config",
            "view",
            "-o",
            "jsonpath={.contexts[0].context.cluster}",
        ])
        .unwrap();
    let user = kubectl2
        .ok(&[
            "config",
            "view",
            "-o",
            "jsonpath={.contexts[0].context.user}",
        ])
        .unwrap();
    assert_eq!(
        ctl2.ok(&[
            "config",
            "set-context",
            "scenario",
            "--namespace",
            "scenario",
            "--cluster",
            &cluster,
            "--user",
            &user
        ])
        .unwrap(),
        "Context \"scenario\" created.\n"
    );
    ctl2.ok(&["config", "use-context", "scenario"]).unwrap();
    assert_eq!(
        kubectl2.ok(&["config", "current-context"]).unwrap(),
        "scenario\n"
    );
    // The context's namespace applies to both, and the credentials still work.
    let listed = ctl2.ok(&["get", "cm", "-o", "name"]).unwrap();
    assert!(
        listed.contains("configmap/one\n") && listed.contains("configmap/two\n"),
        "{listed}"
    );
    assert_eq!(listed, kubectl2.ok(&["get", "cm", "-o", "name"]).unwrap());
    ctl2.ok(&["config", "use-context", current.trim()]).unwrap();
    let e = ctl2
        .fails(&["--context", "nope", "get", "pods"], None)
        .unwrap();
    assert_eq!(
        e,
        "error loading kubeconfig: context \"nope\" does not exist\n"
    );

    // Completion scripts and help.
    for shell in ["bash", "zsh", "fish"] {
        let script = ctl.ok(&["completion", shell]).unwrap();
        assert!(
            script.contains("sextantctl") && script.len() > 500,
            "{shell}: {script}"
        );
    }
    for args in [
        &["--help"][..],
        &["get", "--help"],
        &["config", "--help"],
        &["config", "use-context", "--help"],
        &["config", "set-context", "--help"],
        &["config", "get-contexts", "--help"],
        &["config", "current-context", "--help"],
        &["completion", "--help"],
    ] {
        let help = ctl.ok(args).unwrap();
        assert!(help.contains("Usage: sextantctl"), "{args:?}: {help}");
    }
}

#[tokio::test]
async fn sextantctl_and_kubectl_change_objects_alike() {
    let server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    let kubectl = server.kubectl().unwrap();
    let ctl = Kubectl::with_binary(Path::new(CTL), &server.kubeconfig()).unwrap();
    let runs = [("by-kubectl", &kubectl), ("by-sextantctl", &ctl)];
    let mut outcomes: Vec<Vec<(bool, String)>> = Vec::new();
    for (ns, cli) in runs {
        kubectl.ok(&["create", "namespace", ns]).unwrap();
        let mut seen = Vec::new();
        for step in CHANGES {
            let args: Vec<String> = step.args.iter().map(|a| a.replace("{ns}", ns)).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = cli.run(&args, step.stdin).unwrap();
            let (ok, what) = essence(step.compare, &out);
            seen.push((ok, what.replace(ns, "NS")));
        }
        outcomes.push(seen);
    }
    let mut differences = Vec::new();
    for (i, step) in CHANGES.iter().enumerate() {
        let (theirs, ours) = (&outcomes[0][i], &outcomes[1][i]);
        assert_eq!(
            theirs.0,
            !matches!(step.compare, Compare::Fails),
            "kubectl {:?} itself: {}",
            step.args,
            theirs.1
        );
        if theirs != ours {
            differences.push(format!(
                "{:?}:\n  kubectl    ({}): {:?}\n  sextantctl ({}): {:?}",
                step.args, theirs.0, theirs.1, ours.0, ours.1
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// Two pods that print three lines, then one more a second later.
const PRINTERS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: printer}
spec:
  replicas: 2
  selector: {matchLabels: {app: printer}}
  template:
    metadata: {labels: {app: printer}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: sextant.local/demo:v1
        command: [sh, -c, "echo one; echo two; echo three; sleep 1; echo later; sleep 3600"]
"#;

const LOGS: &[Step] = &[
    Step {
        args: &["logs", "{pod}"],
        compare: Compare::Exact,
    },
    Step {
        args: &["logs", "pod/{pod}", "-c", "main", "--tail=2"],
        compare: Compare::Exact,
    },
    Step {
        args: &["logs", "{pod}", "--since=1h"],
        compare: Compare::Exact,
    },
    Step {
        args: &["logs", "-l", "app=printer", "--prefix"],
        compare: Compare::PerPod,
    },
    Step {
        args: &["logs", "deploy/printer", "--tail=1"],
        compare: Compare::Exact,
    },
    Step {
        args: &["logs", "missing"],
        compare: Compare::Fails,
    },
    Step {
        args: &["rollout", "status", "deploy/printer", "--timeout=60s"],
        compare: Compare::LastLine,
    },
    Step {
        args: &["rollout", "status", "deployment", "printer"],
        compare: Compare::LastLine,
    },
    Step {
        args: &[
            "wait",
            "--for=condition=Ready",
            "pod/{pod}",
            "--timeout=30s",
        ],
        compare: Compare::Exact,
    },
    Step {
        args: &[
            "wait",
            "--for=condition=Ready",
            "pod/missing",
            "--timeout=5s",
        ],
        compare: Compare::Fails,
    },
];

#[tokio::test]
async fn sextantctl_and_kubectl_read_logs_alike() {
    let cluster = OneNodeCluster::start(Path::new(BINARY))
        .await
        .expect("one-node cluster");
    let kubectl = cluster.server.kubectl().unwrap();
    let ctl = Kubectl::with_binary(Path::new(CTL), &cluster.server.kubeconfig()).unwrap();
    kubectl
        .ok_with(&["apply", "-f", "-"], Some(PRINTERS))
        .unwrap();
    kubectl
        .ok(&["rollout", "status", "deploy/printer", "--timeout=60s"])
        .unwrap();
    let pods = kubectl
        .ok(&[
            "get",
            "pods",
            "-l",
            "app=printer",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .unwrap();
    let pod = pods.split_whitespace().next().unwrap().to_owned();
    // Every pod has printed all it will for an hour.
    sextant_tests::wait_for(
        "four lines from both pods",
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(200),
        || {
            let out = kubectl.run(&["logs", "-l", "app=printer"], None).ok();
            async move {
                out.filter(|o| String::from_utf8_lossy(&o.stdout).lines().count() == 8)
                    .map(|_| ())
            }
        },
    )
    .await
    .unwrap();

    let mut differences = Vec::new();
    for step in LOGS {
        let args: Vec<String> = step.args.iter().map(|a| a.replace("{pod}", &pod)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let theirs = kubectl.run(&args, None).unwrap();
        let ours = ctl.run(&args, None).unwrap();
        let (theirs_ok, theirs_what) = essence(step.compare, &theirs);
        let (ours_ok, ours_what) = essence(step.compare, &ours);
        assert_eq!(
            theirs_ok,
            !matches!(step.compare, Compare::Fails),
            "kubectl {args:?} itself: {theirs_what}"
        );
        if (theirs_ok, &theirs_what) != (ours_ok, &ours_what) {
            differences.push(format!(
                "{args:?}:\n  kubectl    ({theirs_ok}): {theirs_what:?}\n  sextantctl ({ours_ok}): {ours_what:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));

    // A rollout in progress: kubectl's progress lines, one per change, then done.
    kubectl
        .ok(&["scale", "deploy/printer", "--replicas=3"])
        .unwrap();
    let progress = ctl
        .ok(&["rollout", "status", "deploy/printer", "--timeout=60s"])
        .unwrap();
    let lines: Vec<&str> = progress.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"deployment \"printer\" successfully rolled out"),
        "{progress}"
    );
    for l in &lines[..lines.len() - 1] {
        assert!(
            l.starts_with("Waiting for deployment \"printer\" rollout to finish: ")
                || *l == "Waiting for deployment spec update to be observed...",
            "{progress}"
        );
    }

    // Following: one old line (--tail=1), then new ones as the pod prints them.
    kubectl
        .ok(&[
            "run",
            "ticker",
            "--image=sextant.local/demo:v1",
            "--restart=Never",
            "--command",
            "--",
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done",
        ])
        .unwrap();
    kubectl
        .ok(&[
            "wait",
            "--for=condition=Ready",
            "pod/ticker",
            "--timeout=60s",
        ])
        .unwrap();
    let mut follow = ctl
        .spawn(&["logs", "-f", "ticker", "--prefix", "--tail=1"])
        .unwrap();
    let rx = sextant_tests::lines_of(follow.stdout.take().unwrap());
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match rx.recv_timeout(std::time::Duration::from_secs(15)) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let ticks: Vec<u64> = seen
        .iter()
        .filter_map(|l| l.strip_prefix("[pod/ticker/ticker] tick "))
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        ticks.len() == 4 && ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "one old line, then each new one in order: {seen:?}"
    );
}
