//! `sextantctl` against a real server, step for step beside kubectl 1.33: one
//! scenario table, run with each CLI, must give the same outcomes (exit status,
//! the objects, the table's columns and names, the error text). Read steps:
//! `get` in every output format (tables, `-o wide|json|yaml|name|jsonpath|
//! custom-columns`), across namespaces, by label, `describe` of ConfigMaps,
//! Services, a Namespace and a Lease (generic describer), the errors for a
//! missing object and an unknown type, `config` reads. Changes, each CLI in a
//! namespace of its own: `apply` (created, unchanged, configured), `create`,
//! `label`, `annotate`, `patch` (strategic, merge, JSON, YAML, errors), `edit`
//! (`EDITOR`), `scale`, `delete`. On a one-node cluster (real containerd):
//! `logs`, `describe pod|deploy|node`, `exec` (streams, exit code, stdin),
//! `top`, `rollout status`, `wait`, and `rollout` from release through
//! restart, history, undo, pause and resume. Then sextantctl alone: a rollout's
//! progress lines, `logs -f`, `attach`, `port-forward` to a pod and a Service,
//! `cluster status`, `debug pod`, and in a real terminal (tmux) `exec -it`
//! (TTY size, resize, exit code) and the rollout progress display. Then what
//! only one side can check: `config use-context`/`set-context` edit a
//! kubeconfig kubectl then reads, completion scripts for three shells,
//! `--help` everywhere.
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
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: static, namespace: scenario, labels: {app: web}}
spec: {holderIdentity: someone, leaseDurationSeconds: 15}
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
    /// `describe` output with ages and clock times masked and runs of spaces
    /// folded (column widths follow the ages).
    Describe,
    /// Standard output and standard error, each byte for byte.
    Streams,
    /// Failure with the same exit code, standard error byte for byte.
    ExitCode,
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

/// Whether `token` is an age as kubectl prints one (`5s`, `3h20m`, `(x2`).
fn is_age(token: &str) -> bool {
    let t = token.trim_matches(|c| c == '(' || c == ')');
    let mut digits = 0;
    let mut pairs = 0;
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits += 1;
        } else if "smhdy".contains(c) && digits > 0 {
            digits = 0;
            pairs += 1;
        } else {
            return false;
        }
    }
    pairs > 0 && digits == 0
}

/// `describe` text as compared: ages and times masked, spacing folded.
fn describe_shape(out: &str) -> String {
    out.lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| {
                    if is_age(t) {
                        "<age>"
                    } else if t.matches(':').count() >= 2
                        && t.starts_with(|c: char| c.is_ascii_digit())
                    {
                        "<time>"
                    } else {
                        t
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One step of a scenario: `{ns}` in the arguments is the CLI's own namespace
/// (tables run per namespace), `{pod}` a pod's name.
struct Change {
    args: &'static [&'static str],
    stdin: Option<&'static str>,
    env: &'static [(&'static str, &'static str)],
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

/// The app's Deployment with a new image: its container list merges by name.
const WEB_V2: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: main, image: sextant.local/demo:v2}]
"#;

/// Three objects, the middle one invalid: the other two are still written.
const ONE_BAD: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x1}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x2}\n";

const CHANGES: &[Change] = &[
    Change {
        args: &["apply", "-n", "{ns}", "-f", "-"],
        stdin: Some(APP),
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["apply", "-n", "{ns}", "-f", "-"],
        stdin: Some(APP),
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["apply", "-n", "{ns}", "-f", "-"],
        stdin: Some(APP_CHANGED),
        env: &[],
        compare: Compare::Exact,
    },
    // Another client adds a container; re-applying the file with a new image
    // keeps it (a strategic merge patch, containers merged by name).
    Change {
        args: &[
            "patch",
            "-n",
            "{ns}",
            "deploy",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/template/spec/containers/-","value":{"name":"sidecar","image":"sextant.local/demo:v1"}}]"#,
        ],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["apply", "-n", "{ns}", "-f", "-"],
        stdin: Some(WEB_V2),
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &[
            "get",
            "deploy",
            "web",
            "-n",
            "{ns}",
            "-o",
            "jsonpath={range .spec.template.spec.containers[*]}{.name}={.image} {end}",
        ],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["get", "cm", "one", "-n", "{ns}", "-o", "json"],
        stdin: None,
        env: &[],
        compare: Compare::Object,
    },
    Change {
        args: &["create", "-n", "{ns}", "-f", "-"],
        stdin: Some(THREE),
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["create", "-n", "{ns}", "-f", "-"],
        stdin: Some(THREE),
        env: &[],
        compare: Compare::Fails,
    },
    Change {
        args: &["label", "-n", "{ns}", "cm", "one", "tier=front"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["label", "-n", "{ns}", "cm", "one", "tier=back"],
        stdin: None,
        env: &[],
        compare: Compare::Fails,
    },
    Change {
        args: &["label", "-n", "{ns}", "cm/one", "tier=back", "--overwrite"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["label", "-n", "{ns}", "cm", "one", "tier-"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["annotate", "-n", "{ns}", "configmap", "two", "note=hello"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["get", "cm", "-n", "{ns}", "-l", "app=web", "-o", "yaml"],
        stdin: None,
        env: &[],
        compare: Compare::Object,
    },
    Change {
        args: &[
            "patch",
            "-n",
            "{ns}",
            "cm",
            "one",
            "-p",
            r#"{"data":{"p":"1"}}"#,
        ],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["patch", "-n", "{ns}", "cm/one", "-p", "data: {p: '1'}"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &[
            "patch",
            "-n",
            "{ns}",
            "cm",
            "one",
            "--type=merge",
            "-p",
            r#"{"data":{"p":null,"m":"2"}}"#,
        ],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &[
            "patch",
            "-n",
            "{ns}",
            "cm",
            "one",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/data/m"}]"#,
        ],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &[
            "patch",
            "-n",
            "{ns}",
            "cm",
            "one",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/data/nothing"}]"#,
        ],
        stdin: None,
        env: &[],
        compare: Compare::Fails,
    },
    Change {
        args: &["patch", "-n", "{ns}", "cm", "missing", "-p", "{}"],
        stdin: None,
        env: &[],
        compare: Compare::Fails,
    },
    Change {
        args: &["edit", "-n", "{ns}", "cm", "one"],
        stdin: None,
        env: &[("EDITOR", "sed -i s/changed/edited/")],
        compare: Compare::Exact,
    },
    Change {
        args: &["edit", "-n", "{ns}", "configmap/one"],
        stdin: None,
        env: &[("EDITOR", "true")],
        compare: Compare::Streams,
    },
    Change {
        args: &["get", "cm", "one", "-n", "{ns}", "-o", "jsonpath={.data}"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["scale", "-n", "{ns}", "deployment", "web", "--replicas=3"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["delete", "-n", "{ns}", "cm", "two", "three"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["get", "cm", "two", "-n", "{ns}"],
        stdin: None,
        env: &[],
        compare: Compare::Fails,
    },
    // Several objects: a failure is reported at the end, the others are done.
    Change {
        args: &["apply", "-n", "{ns}", "-f", "-"],
        stdin: Some(ONE_BAD),
        env: &[],
        compare: Compare::ExitCode,
    },
    Change {
        args: &["delete", "-n", "{ns}", "cm", "x1", "missing", "x2", "gone"],
        stdin: None,
        env: &[],
        compare: Compare::ExitCode,
    },
    Change {
        args: &["delete", "-n", "{ns}", "-f", "-"],
        stdin: Some(REST),
        env: &[],
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

const SCENARIO: &[Change] = &[
    Change {
        args: &["get", "namespaces"],
        stdin: None,
        env: &[],
        compare: Compare::Table,
    },
    Change {
        args: &["get", "configmaps", "-n", "scenario"],
        stdin: None,
        env: &[],
        compare: Compare::Table,
    },
    Change {
        args: &["get", "cm", "one", "two", "-n", "scenario"],
        stdin: None,
        env: &[],
        compare: Compare::Table,
    },
    Change {
        args: &[
            "get",
            "cm",
            "-n",
            "scenario",
            "-l",
            "app=web",
            "--no-headers",
        ],
        stdin: None,
        env: &[],
        compare: Compare::Table,
    },
    Change {
        args: &["get", "svc", "-A"],
        stdin: None,
        env: &[],
        compare: Compare::Table,
    },
    Change {
        args: &["get", "services", "-n", "scenario", "-o", "wide"],
        stdin: None,
        env: &[],
        compare: Compare::Table,
    },
    Change {
        args: &["get", "configmap", "one", "-n", "scenario", "-o", "json"],
        stdin: None,
        env: &[],
        compare: Compare::Json,
    },
    Change {
        args: &["get", "configmaps", "-n", "scenario", "-o", "json"],
        stdin: None,
        env: &[],
        compare: Compare::Json,
    },
    Change {
        args: &["get", "cm", "one", "-n", "scenario", "-o", "yaml"],
        stdin: None,
        env: &[],
        compare: Compare::Yaml,
    },
    Change {
        args: &["get", "cm", "-n", "scenario", "-o", "name"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["get", "svc", "web", "-n", "scenario", "-o", "name"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["get", "cm", "missing", "-n", "scenario"],
        stdin: None,
        env: &[],
        compare: Compare::Fails,
    },
    Change {
        args: &["get", "widgets"],
        stdin: None,
        env: &[],
        compare: Compare::Fails,
    },
    Change {
        args: &["get", "deployments", "-n", "scenario"],
        stdin: None,
        env: &[],
        compare: Compare::Note,
    },
    Change {
        args: &[
            "get",
            "cm",
            "-n",
            "scenario",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &[
            "get",
            "cm",
            "one",
            "-n",
            "scenario",
            "-o",
            "jsonpath=a is {.data.a}, labels {.metadata.labels}",
        ],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &[
            "get",
            "cm",
            "-n",
            "scenario",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}{"\t"}{.metadata.labels.app}{"\n"}{end}"#,
        ],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &[
            "get",
            "svc",
            "-n",
            "scenario",
            "-o",
            "custom-columns=NAME:.metadata.name,PORT:.spec.ports[*].port,APP:.spec.selector.app,NONE:.spec.nope",
        ],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["describe", "cm", "one", "-n", "scenario"],
        stdin: None,
        env: &[],
        compare: Compare::Describe,
    },
    Change {
        args: &["describe", "svc/web", "-n", "scenario"],
        stdin: None,
        env: &[],
        compare: Compare::Describe,
    },
    Change {
        args: &["describe", "configmaps", "-n", "scenario", "-l", "app"],
        stdin: None,
        env: &[],
        compare: Compare::Describe,
    },
    Change {
        args: &["describe", "namespace", "scenario"],
        stdin: None,
        env: &[],
        compare: Compare::Describe,
    },
    Change {
        args: &["describe", "lease", "static", "-n", "scenario"],
        stdin: None,
        env: &[],
        compare: Compare::Describe,
    },
    Change {
        args: &["describe", "cm", "missing", "-n", "scenario"],
        stdin: None,
        env: &[],
        compare: Compare::Fails,
    },
    Change {
        args: &["config", "current-context"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["config", "get-contexts"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Each row's first cell, and the header line whole (without `--no-headers`:
/// a header is all capitals; the other cells hold ages that differ).
fn table_shape(out: &str) -> Vec<String> {
    let header = out
        .lines()
        .next()
        .filter(|h| !h.chars().any(|c| c.is_lowercase()))
        .map(|h| h.split_whitespace().collect::<Vec<_>>().join(" "));
    out.lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .chain(header)
        .collect()
}

/// Whether the step is expected to fail.
fn fails(compare: Compare) -> bool {
    matches!(compare, Compare::Fails | Compare::ExitCode)
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
        Compare::Describe => describe_shape(&stdout),
        Compare::Streams => format!("stdout:{stdout}|stderr:{stderr}"),
        Compare::ExitCode => format!("exit {:?}: {stdout}{stderr}", out.status.code()),
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

    let differences = same_outcomes(&kubectl, &ctl, SCENARIO, &[]);
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

    // An unreachable server and rejected credentials, as kubectl words them.
    let text = std::fs::read_to_string(server.kubeconfig()).unwrap();
    let closed = sextant_tests::free_port().unwrap();
    let unreachable = dir.path().join("unreachable");
    std::fs::write(
        &unreachable,
        text.replace(&server.addr.to_string(), &format!("127.0.0.1:{closed}")),
    )
    .unwrap();
    let e = Kubectl::with_binary(Path::new(CTL), &unreachable)
        .unwrap()
        .fails(&["get", "pods"], None)
        .unwrap();
    assert!(
        e.starts_with(&format!(
            "The connection to the server https://127.0.0.1:{closed}"
        )) && e.contains("was refused - did you specify the right host or port?"),
        "{e}"
    );
    let mut config: Value = serde_saphyr::from_str(&text).unwrap();
    if let Some(user) = config
        .get_mut("users")
        .and_then(|u| u.get_mut(0))
        .and_then(|u| u.get_mut("user"))
    {
        *user = serde_json::json!({"token": "not-a-valid-token"});
    }
    let rejected = dir.path().join("rejected");
    std::fs::write(&rejected, serde_json::to_string(&config).unwrap()).unwrap();
    let theirs = Kubectl::with_binary(Path::new(sextant_tests::sextant::KUBECTL_1_33), &rejected)
        .unwrap()
        .fails(&["get", "pods"], None)
        .unwrap();
    let ours = Kubectl::with_binary(Path::new(CTL), &rejected)
        .unwrap()
        .fails(&["get", "pods"], None)
        .unwrap();
    // kubectl logs its failed discovery attempts first; its verdict is the last line.
    assert_eq!(
        Some(ours.trim_end()),
        theirs.lines().last(),
        "kubectl said: {theirs}"
    );
    assert!(
        ours.starts_with("error: You must be logged in to the server"),
        "{ours}"
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
        &["describe", "--help"],
        &["exec", "--help"],
        &["attach", "--help"],
        &["port-forward", "--help"],
        &["patch", "--help"],
        &["edit", "--help"],
        &["top", "pods", "--help"],
        &["top", "nodes", "--help"],
        &["rollout", "history", "--help"],
        &["rollout", "undo", "--help"],
        &["rollout", "pause", "--help"],
        &["rollout", "resume", "--help"],
        &["rollout", "restart", "--help"],
        &["rollout", "status", "--help"],
        &["dataplane", "--help"],
        &["flows", "--help"],
        &["cluster", "status", "--help"],
        &["debug", "pod", "--help"],
        &["logs", "--help"],
        &["wait", "--help"],
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
    let differences = per_namespace(&kubectl, &ctl, CHANGES);
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// Runs each step with kubectl, then with sextantctl, on the same objects
/// (`replace` fills placeholders in the arguments); the steps whose outcomes differ.
fn same_outcomes(
    kubectl: &Kubectl,
    ctl: &Kubectl,
    steps: &[Change],
    replace: &[(&str, &str)],
) -> Vec<String> {
    let mut differences = Vec::new();
    for step in steps {
        let args: Vec<String> = step
            .args
            .iter()
            .map(|a| {
                replace
                    .iter()
                    .fold((*a).to_owned(), |a, (from, to)| a.replace(from, to))
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let theirs = kubectl.run_env(&args, step.stdin, step.env).unwrap();
        let ours = ctl.run_env(&args, step.stdin, step.env).unwrap();
        let (theirs_ok, theirs_what) = essence(step.compare, &theirs);
        let (ours_ok, ours_what) = essence(step.compare, &ours);
        assert_eq!(
            theirs_ok,
            !fails(step.compare),
            "kubectl {args:?} itself: {theirs_what}"
        );
        if (theirs_ok, &theirs_what) != (ours_ok, &ours_what) {
            differences.push(format!(
                "{args:?}:\n  kubectl    ({theirs_ok}): {theirs_what:?}\n  sextantctl ({ours_ok}): {ours_what:?}"
            ));
        }
    }
    differences
}

/// Runs `table` with each CLI in a namespace of its own (`{ns}`, created
/// here as `by-kubectl` and `by-sextantctl`); the steps whose outcomes differ.
fn per_namespace(kubectl: &Kubectl, ctl: &Kubectl, table: &[Change]) -> Vec<String> {
    let mut outcomes: Vec<Vec<(bool, String)>> = Vec::new();
    for (who, cli) in [("by-kubectl", kubectl), ("by-sextantctl", ctl)] {
        let ns = who.to_owned();
        kubectl.ok(&["create", "namespace", &ns]).unwrap();
        let mut seen = Vec::new();
        for step in table {
            let args: Vec<String> = step.args.iter().map(|a| a.replace("{ns}", &ns)).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = cli.run_env(&args, step.stdin, step.env).unwrap();
            let (ok, what) = essence(step.compare, &out);
            seen.push((ok, what.replace(&ns, "NS")));
        }
        outcomes.push(seen);
    }
    let mut differences = Vec::new();
    for (i, step) in table.iter().enumerate() {
        let (theirs, ours) = (&outcomes[0][i], &outcomes[1][i]);
        assert_eq!(
            theirs.0,
            !fails(step.compare),
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
    differences
}

/// A Deployment whose rollouts each CLI drives in its own namespace.
const RELEASED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: 1
  selector: {matchLabels: {app: released}}
  template:
    metadata: {labels: {app: released}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: sextant.local/demo:v1
        command: [sleep, "3600"]
"#;

/// `rollout` from first release to restart, undo, pause and resume.
const ROLLOUTS: &[Change] = &[
    Change {
        args: &["apply", "-n", "{ns}", "-f", "-"],
        stdin: Some(RELEASED),
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &[
            "rollout",
            "status",
            "-n",
            "{ns}",
            "deploy/app",
            "--timeout=60s",
        ],
        stdin: None,
        env: &[],
        compare: Compare::LastLine,
    },
    Change {
        args: &["rollout", "history", "-n", "{ns}", "deploy/app"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["rollout", "restart", "-n", "{ns}", "deployment/app"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &[
            "rollout",
            "status",
            "-n",
            "{ns}",
            "deploy/app",
            "--timeout=60s",
        ],
        stdin: None,
        env: &[],
        compare: Compare::LastLine,
    },
    Change {
        args: &["rollout", "history", "-n", "{ns}", "deployment", "app"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["rollout", "undo", "-n", "{ns}", "deploy/app"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &[
            "rollout",
            "status",
            "-n",
            "{ns}",
            "deploy/app",
            "--timeout=60s",
        ],
        stdin: None,
        env: &[],
        compare: Compare::LastLine,
    },
    Change {
        args: &["rollout", "history", "-n", "{ns}", "deploy/app"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &[
            "rollout",
            "history",
            "-n",
            "{ns}",
            "deploy/app",
            "--revision=3",
        ],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &[
            "rollout",
            "undo",
            "-n",
            "{ns}",
            "deploy/app",
            "--to-revision=9",
        ],
        stdin: None,
        env: &[],
        compare: Compare::Fails,
    },
    Change {
        args: &["rollout", "pause", "-n", "{ns}", "deploy/app"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["rollout", "pause", "-n", "{ns}", "deploy/app"],
        stdin: None,
        env: &[],
        compare: Compare::Fails,
    },
    Change {
        args: &["rollout", "resume", "-n", "{ns}", "deploy/app"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["rollout", "resume", "-n", "{ns}", "deploy/app"],
        stdin: None,
        env: &[],
        compare: Compare::Fails,
    },
    Change {
        args: &["exec", "-n", "{ns}", "deploy/app", "--", "echo", "released"],
        stdin: None,
        env: &[],
        compare: Compare::Streams,
    },
    Change {
        args: &["delete", "-n", "{ns}", "deploy/app"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
];

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

const LIVE: &[Change] = &[
    Change {
        args: &["logs", "{pod}"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["logs", "pod/{pod}", "-c", "main", "--tail=2"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["logs", "{pod}", "--since=1h"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["logs", "-l", "app=printer", "--prefix"],
        stdin: None,
        env: &[],
        compare: Compare::PerPod,
    },
    Change {
        args: &["logs", "deploy/printer", "--tail=1"],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &["logs", "missing"],
        stdin: None,
        env: &[],
        compare: Compare::Fails,
    },
    Change {
        args: &["rollout", "status", "deploy/printer", "--timeout=60s"],
        stdin: None,
        env: &[],
        compare: Compare::LastLine,
    },
    Change {
        args: &["rollout", "status", "deployment", "printer"],
        stdin: None,
        env: &[],
        compare: Compare::LastLine,
    },
    Change {
        args: &[
            "wait",
            "--for=condition=Ready",
            "pod/{pod}",
            "--timeout=30s",
        ],
        stdin: None,
        env: &[],
        compare: Compare::Exact,
    },
    Change {
        args: &[
            "wait",
            "--for=condition=Ready",
            "pod/missing",
            "--timeout=5s",
        ],
        stdin: None,
        env: &[],
        compare: Compare::Fails,
    },
    Change {
        args: &["describe", "pod", "{pod}"],
        stdin: None,
        env: &[],
        compare: Compare::Describe,
    },
    Change {
        args: &["describe", "deploy", "printer"],
        stdin: None,
        env: &[],
        compare: Compare::Describe,
    },
    Change {
        args: &["describe", "node"],
        stdin: None,
        env: &[],
        compare: Compare::Describe,
    },
    Change {
        args: &["exec", "{pod}", "--", "sh", "-c", "echo out; echo err >&2"],
        stdin: None,
        env: &[],
        compare: Compare::Streams,
    },
    Change {
        args: &["exec", "{pod}", "-c", "main", "--", "sh", "-c", "exit 3"],
        stdin: None,
        env: &[],
        compare: Compare::ExitCode,
    },
    Change {
        args: &["exec", "-i", "{pod}", "--", "sh", "-c", "cat; echo end"],
        stdin: Some("one\ntwo\n"),
        env: &[],
        compare: Compare::Streams,
    },
    Change {
        args: &["exec", "deploy/printer", "--", "echo", "hi"],
        stdin: None,
        env: &[],
        compare: Compare::Streams,
    },
    Change {
        args: &["exec", "missing", "--", "true"],
        stdin: None,
        env: &[],
        compare: Compare::Fails,
    },
    Change {
        args: &["top", "pods", "-l", "app=printer"],
        stdin: None,
        env: &[],
        compare: Compare::Table,
    },
    Change {
        args: &["top", "node"],
        stdin: None,
        env: &[],
        compare: Compare::Table,
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

    let differences = same_outcomes(&kubectl, &ctl, LIVE, &[("{pod}", &pod)]);
    assert!(differences.is_empty(), "{}", differences.join("\n"));

    // Rollouts, each CLI in its own namespace.
    let differences = per_namespace(&kubectl, &ctl, ROLLOUTS);
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

    // attach: the main process's output as it comes.
    let mut attached = ctl.spawn(&["attach", "ticker", "-q"]).unwrap();
    let rx = sextant_tests::lines_of(attached.stdout.take().unwrap());
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match rx.recv_timeout(std::time::Duration::from_secs(15)) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = attached.kill();
    let _ = attached.wait();
    assert!(
        seen.len() == 2 && seen.iter().all(|l| l.starts_with("tick ")),
        "attach shows the ticks: {seen:?}"
    );

    sextantctl_only(&cluster, &kubectl, &ctl).await;
}

/// A web server pod and its Service, for port-forward and the dataplane views.
const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: sextant.local/demo:v1
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// A pod that becomes Ready only after its probe's initial delay.
const SLOW_READY: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: slow}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: sextant.local/demo:v1
    readinessProbe:
      httpGet: {path: /readyz, port: 8080}
      initialDelaySeconds: 4
      periodSeconds: 1
"#;

/// An HTTP GET to `addr` (through a port-forward); the response.
fn http_get(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /env HTTP/1.0\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer
}

/// What sextantctl has beyond kubectl, and the terminal: port-forward (pod and
/// Service), cluster status, debug pod, `exec -it` and the rollout progress
/// display in tmux.
async fn sextantctl_only(cluster: &OneNodeCluster, kubectl: &Kubectl, ctl: &Kubectl) {
    kubectl.ok_with(&["apply", "-f", "-"], Some(WEB)).unwrap();
    kubectl
        .ok(&["wait", "--for=condition=Ready", "pod/web", "--timeout=60s"])
        .unwrap();

    // port-forward: a free local port each, to the pod's port and via the Service.
    for target in [["pod/web", ":8080"], ["svc/web", ":80"]] {
        let mut forward = ctl.spawn(&["port-forward", target[0], target[1]]).unwrap();
        let rx = sextant_tests::lines_of(forward.stdout.take().unwrap());
        let first = rx
            .recv_timeout(std::time::Duration::from_secs(15))
            .unwrap_or_default();
        let addr = first
            .strip_prefix("Forwarding from ")
            .and_then(|r| r.split(' ').next())
            .unwrap_or_default()
            .to_owned();
        assert!(first.ends_with(" -> 8080"), "{target:?}: {first}");
        // Two connections in a row: each gets its own stream.
        for _ in 0..2 {
            let answer = http_get(&addr);
            assert!(
                answer.starts_with("HTTP/1.") && answer.contains("\"HOSTNAME\":\"web\""),
                "{target:?} through {addr}: {answer}"
            );
        }
        let handled = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap_or_default();
        let _ = forward.kill();
        let _ = forward.wait();
        assert!(handled.starts_with("Handling connection for "), "{handled}");
    }

    // cluster status: the server, its datastore, the leaders, the node (this
    // node runs the reference CNI plugins; `network_policy` checks the eBPF
    // programs' column on dataplane nodes).
    let status = ctl.ok(&["cluster", "status"]).unwrap();
    let node = &cluster.agent.node_name;
    for want in [
        "readyz check passed",
        "[+]datastore ok",
        "Datastore:    embedded",
        "Controllers:  leader ",
        "Scheduler:    leader ",
    ] {
        assert!(status.contains(want), "{want:?} in:\n{status}");
    }
    let row = status
        .lines()
        .find(|l| l.starts_with(&format!("{node} ")))
        .unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    // The reference CNI plugins here: no eBPF dataplane on this node.
    assert!(
        cells.get(1) == Some(&"True") && cells.get(5) == Some(&"off"),
        "node {node} ready, without the eBPF dataplane:\n{status}"
    );

    // debug pod: state, probes, events, log lines and flows on one screen.
    let debug = ctl.ok(&["debug", "pod", "web", "--lines", "5"]).unwrap();
    for want in [
        "Pod:    default/web",
        "Phase:  Running",
        "Containers:",
        "Probe failures: 0 Unhealthy event(s)",
        "Events:",
        "Started",
        "Log of main (last 5 lines):",
        "Flows (last 5):",
    ] {
        assert!(debug.contains(want), "{want:?} in:\n{debug}");
    }

    // exec -it in a real terminal: a TTY of the terminal's size, resized with
    // it, and the shell's exit code as sextantctl's.
    let command = format!(
        "KUBECONFIG={} {CTL} exec -it web -- sh; echo exit=$?",
        cluster.server.kubeconfig().display()
    );
    let term = sextant_tests::terminal::Terminal::start(&command, 120, 30).unwrap();
    let wait = std::time::Duration::from_secs(20);
    term.wait_for("/ #", wait).unwrap();
    term.type_line("stty size; tty; echo hello-$((6*7))")
        .unwrap();
    let screen = term.wait_for("hello-42", wait).unwrap();
    assert!(
        screen.contains("30 120") && screen.contains("/dev/pts/"),
        "a 120x30 TTY:\n{screen}"
    );
    // The new size reaches the container a moment after the window changes.
    term.resize(100, 20).unwrap();
    let resized = (0..20).any(|_| {
        term.type_line("stty size").unwrap();
        term.wait_for("20 100", std::time::Duration::from_secs(1))
            .is_ok()
    });
    assert!(resized, "resized to 100x20:\n{}", term.screen().unwrap());
    term.type_line("exit 4").unwrap();
    term.wait_for("exit=4", wait).unwrap();
    drop(term);

    // wait's progress line in a terminal: what it waits for and for how long,
    // until the pod's readiness probe passes.
    kubectl
        .ok_with(&["apply", "-f", "-"], Some(SLOW_READY))
        .unwrap();
    let command = format!(
        "KUBECONFIG={} {CTL} wait --for=condition=Ready pod/slow --timeout=60s; echo exit=$?",
        cluster.server.kubeconfig().display()
    );
    let term = sextant_tests::terminal::Terminal::start(&command, 120, 30).unwrap();
    term.wait_for(
        "waiting for pod/slow: condition=Ready (",
        std::time::Duration::from_secs(20),
    )
    .unwrap();
    let screen = term
        .wait_for("exit=0", std::time::Duration::from_secs(60))
        .unwrap();
    assert!(
        screen.contains("pod/slow condition met") && !screen.contains("waiting for pod/slow"),
        "the progress line is erased once the condition is met:\n{screen}"
    );
    drop(term);

    // The rollout progress display in a terminal: pods count as available
    // only after minReadySeconds, so there is progress to show.
    kubectl
        .ok_with(
            &["apply", "-f", "-"],
            Some(&PRINTERS.replace("replicas: 2", "replicas: 2\n  minReadySeconds: 3")),
        )
        .unwrap();
    kubectl
        .ok(&["rollout", "status", "deploy/printer", "--timeout=90s"])
        .unwrap();
    kubectl
        .ok(&["scale", "deploy/printer", "--replicas=4"])
        .unwrap();
    let command = format!(
        "KUBECONFIG={} {CTL} rollout status deploy/printer --timeout=90s; echo exit=$?",
        cluster.server.kubeconfig().display()
    );
    let term = sextant_tests::terminal::Terminal::start(&command, 160, 40).unwrap();
    let screen = term
        .wait_for("exit=0", std::time::Duration::from_secs(90))
        .unwrap();
    assert!(
        screen.contains("Waiting for deployment \"printer\" rollout to finish: ")
            && screen.contains("deployment \"printer\" successfully rolled out"),
        "progress, then done:\n{screen}"
    );
}
