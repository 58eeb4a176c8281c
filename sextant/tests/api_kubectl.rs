//! The API server against the real kubectl 1.33 and raw HTTPS, on the embedded
//! store and on a real etcd: apply, get in every output format, label, annotate,
//! patch, delete, refusals of invalid input (and nothing stored), watch, and no
//! acknowledged write lost across `kill -9`.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use sextant_tests::{
    etcd::EtcdCluster,
    sextant::{Datastore, SextantServer},
};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
  labels: {tier: web}
data:
  color: blue
  size: "3"
---
apiVersion: v1
kind: Secret
metadata:
  name: token
  namespace: shop
stringData:
  key: s3cr3t
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {tier: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: demo
        image: sextant.local/demo:v1
        env:
        - {name: MODE, value: fast}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
  namespace: shop
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: migrate
        image: sextant.local/busybox:v1
        command: [sh, -c, "echo migrated"]
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
  namespace: shop
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - name: report
            image: sextant.local/busybox:v1
            command: [sh, -c, "echo report"]
"#;

/// kubectl's typed `create` commands send protobuf bodies (client-go ≥ 1.32).
fn typed_creates(k: &sextant_tests::sextant::Kubectl) {
    let out = k
        .ok(&["create", "namespace", "typed"])
        .expect("create namespace");
    assert_eq!(out.trim(), "namespace/typed created");
    let created = [
        (
            vec![
                "configmap",
                "conf",
                "--from-literal=color=blue",
                "--from-literal=empty=",
            ],
            "configmap/conf created",
        ),
        (
            vec!["secret", "generic", "pw", "--from-literal=password=s3cr3t"],
            "secret/pw created",
        ),
        (
            vec![
                "deployment",
                "web",
                "--image=sextant.local/demo:v1",
                "--replicas=3",
                "--port=8080",
            ],
            "deployment.apps/web created",
        ),
        (
            vec![
                "job",
                "once",
                "--image=sextant.local/busybox:v1",
                "--",
                "echo",
                "hi",
            ],
            "job.batch/once created",
        ),
        (
            vec!["service", "clusterip", "web", "--tcp=80:8080"],
            "service/web created",
        ),
    ];
    for (args, want) in created {
        let args: Vec<&str> = [&["create", "-n", "typed"][..], &args].concat();
        let out = k
            .ok(&args)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"));
        assert_eq!(out.trim(), want);
    }
    let get = |what: &str, path: &str| {
        k.ok(&[
            "get",
            what,
            "-n",
            "typed",
            "-o",
            &format!("jsonpath={path}"),
        ])
        .unwrap()
    };
    assert_eq!(get("cm/conf", "{.data}"), r#"{"color":"blue","empty":""}"#);
    assert_eq!(get("secret/pw", "{.data.password}"), "czNjcjN0");
    assert_eq!(get("deploy/web", "{.spec.replicas}"), "3");
    assert_eq!(
        get(
            "deploy/web",
            "{.spec.template.spec.containers[0].ports[0].containerPort}"
        ),
        "8080"
    );
    assert_eq!(get("deploy/web", "{.spec.selector.matchLabels.app}"), "web");
    assert_eq!(
        get("job/once", "{.spec.template.spec.containers[0].command}"),
        r#"["echo","hi"]"#
    );
    assert_eq!(
        get(
            "svc/web",
            "{.spec.ports[0].port} {.spec.ports[0].targetPort}"
        ),
        "80 8080"
    );
    assert!(!get("svc/web", "{.spec.clusterIP}").is_empty());
    assert!(!get("ns/typed", "{.metadata.creationTimestamp}").is_empty());
    // Validation applies to protobuf bodies as to JSON ones.
    let err = k
        .fails(&["create", "configmap", "Bad_Name", "-n", "typed"], None)
        .unwrap();
    assert!(err.contains("Invalid value: \"Bad_Name\""), "{err}");
}

/// Versions served from another version's storage: events.k8s.io/v1 Events over
/// core Events, autoscaling/v1 HPAs over autoscaling/v2.
fn converted_versions(k: &sextant_tests::sextant::Kubectl) {
    let core_event = r#"
apiVersion: v1
kind: Event
metadata: {name: started.1, namespace: typed}
involvedObject: {kind: Pod, name: web-1, namespace: typed}
reason: Started
message: Started container web
type: Normal
count: 3
source: {component: kubelet, host: node-1}
"#;
    k.ok_with(&["apply", "-f", "-"], Some(core_event)).unwrap();
    let note = k
        .ok(&[
            "get",
            "events.v1.events.k8s.io",
            "started.1",
            "-n",
            "typed",
            "-o",
            "jsonpath={.note} {.regarding.name} {.deprecatedCount} {.deprecatedSource.host}",
        ])
        .unwrap();
    assert_eq!(note, "Started container web web-1 3 node-1");

    let hpa_v1 = r#"
apiVersion: autoscaling/v1
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: typed}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 2
  maxReplicas: 5
  targetCPUUtilizationPercentage: 70
"#;
    k.ok_with(&["apply", "-f", "-"], Some(hpa_v1)).unwrap();
    let v2 = k
        .ok(&["get", "horizontalpodautoscalers.v2.autoscaling", "web", "-n", "typed", "-o", "jsonpath={.spec.metrics[0].resource.name} {.spec.metrics[0].resource.target.averageUtilization}"])
        .unwrap();
    assert_eq!(v2, "cpu 70");
    let v1 = k
        .ok(&[
            "get",
            "horizontalpodautoscalers.v1.autoscaling",
            "web",
            "-n",
            "typed",
            "-o",
            "jsonpath={.spec.targetCPUUtilizationPercentage}",
        ])
        .unwrap();
    assert_eq!(v1, "70");
    // Applying it again changes nothing.
    let out = k.ok_with(&["apply", "-f", "-"], Some(hpa_v1)).unwrap();
    assert!(out.contains("unchanged"), "{out}");
}

async fn scenario(server: &SextantServer) {
    let k = server.kubectl().expect("kubectl");
    typed_creates(&k);
    converted_versions(&k);
    let namespaces = k.ok(&["get", "ns", "-o", "name"]).unwrap();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            namespaces.contains(&format!("namespace/{ns}")),
            "{namespaces}"
        );
    }
    let labels = k
        .ok(&["get", "ns", "default", "-o", "jsonpath={.metadata.labels}"])
        .unwrap();
    assert_eq!(labels, r#"{"kubernetes.io/metadata.name":"default"}"#);

    // apply: created, then unchanged, then configured.
    let out = k
        .ok_with(&["apply", "-f", "-"], Some(MANIFEST))
        .expect("apply");
    for line in [
        "namespace/shop created",
        "configmap/settings created",
        "secret/token created",
        "deployment.apps/web created",
        "service/web created",
        "job.batch/migrate created",
        "cronjob.batch/nightly created",
    ] {
        assert!(out.contains(line), "{out}");
    }
    let out = k
        .ok_with(&["apply", "-f", "-"], Some(MANIFEST))
        .expect("apply again");
    // (A Secret applied with stringData shows "configured" every time, upstream too:
    // stringData is never stored, so the three-way patch always re-adds it.)
    for line in [
        "namespace/shop unchanged",
        "configmap/settings unchanged",
        "deployment.apps/web unchanged",
        "service/web unchanged",
        "job.batch/migrate unchanged",
        "cronjob.batch/nightly unchanged",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    // --sort-by asks for Tables whose rows carry whole objects (includeObject=Object).
    let sorted = k
        .ok(&[
            "get",
            "cm",
            "-n",
            "shop",
            "--sort-by=.data.color",
            "--no-headers",
        ])
        .unwrap();
    assert!(sorted.starts_with("settings"), "{sorted}");
    let changed = MANIFEST
        .replace("color: blue", "color: green")
        .replace("value: fast", "value: slow");
    let out = k
        .ok_with(&["apply", "-f", "-"], Some(&changed))
        .expect("apply a change");
    assert!(
        out.contains("configmap/settings configured")
            && out.contains("deployment.apps/web configured"),
        "{out}"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.color}"
        ])
        .unwrap(),
        "green"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[0].value} {.metadata.generation}"
        ])
        .unwrap(),
        "slow 2"
    );

    // get: upstream columns and every output format.
    let table = k.ok(&["get", "cm", "-n", "shop"]).unwrap();
    assert!(
        table.starts_with("NAME") && table.contains("DATA") && table.contains("AGE"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("settings") && l.split_whitespace().nth(1) == Some("2")),
        "{table}"
    );
    let wide = k
        .ok(&["get", "deploy", "-n", "shop", "-o", "wide"])
        .unwrap();
    assert!(
        wide.contains("CONTAINERS")
            && wide.contains("sextant.local/demo:v1")
            && wide.contains("app=web"),
        "{wide}"
    );
    let secret = k
        .ok(&[
            "get",
            "secret",
            "token",
            "-n",
            "shop",
            "-o",
            "jsonpath={.type}",
        ])
        .unwrap();
    assert_eq!(secret, "Opaque");
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "ns", "shop", "-o", "json"]).unwrap()).unwrap();
    assert_eq!(json["status"]["phase"], "Active");
    assert!(
        json["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36)
    );
    let yaml = k
        .ok(&["get", "cm", "settings", "-n", "shop", "-o", "yaml"])
        .unwrap();
    assert!(
        yaml.contains("kind: ConfigMap") && yaml.contains("resourceVersion:"),
        "{yaml}"
    );
    assert_eq!(
        k.ok(&["get", "cm", "-n", "shop", "-o", "name"])
            .unwrap()
            .trim(),
        "configmap/settings"
    );
    let cols = k
        .ok(&[
            "get",
            "deploy",
            "-n",
            "shop",
            "-o",
            "custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas",
        ])
        .unwrap();
    assert_eq!(
        cols.lines()
            .nth(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["web", "2"])
    );
    let all_ns = k.ok(&["get", "cm", "-A"]).unwrap();
    assert!(
        all_ns.starts_with("NAMESPACE") && all_ns.contains("shop"),
        "{all_ns}"
    );

    // explain reads the server's OpenAPI v3 schemas.
    let explained = k.ok(&["explain", "deployment.spec.strategy"]).unwrap();
    assert!(
        explained.contains("FIELD: strategy <DeploymentStrategy>")
            && explained.contains("rollingUpdate"),
        "{explained}"
    );

    // label and annotate, selectors.
    k.ok(&["label", "cm", "settings", "-n", "shop", "env=prod"])
        .unwrap();
    k.ok(&[
        "label",
        "cm",
        "settings",
        "-n",
        "shop",
        "env=dev",
        "--overwrite",
    ])
    .unwrap();
    assert!(
        k.ok(&["get", "cm", "-n", "shop", "-l", "env=dev", "-o", "name"])
            .unwrap()
            .contains("settings")
    );
    assert!(
        k.ok(&["get", "cm", "-n", "shop", "-l", "env=prod", "-o", "name"])
            .unwrap()
            .trim()
            .is_empty()
    );
    k.ok(&["label", "cm", "settings", "-n", "shop", "env-"])
        .unwrap();
    assert!(
        k.ok(&["get", "cm", "-n", "shop", "-l", "env", "-o", "name"])
            .unwrap()
            .trim()
            .is_empty()
    );
    k.ok(&["annotate", "cm", "settings", "-n", "shop", "owner=team-a"])
        .unwrap();
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.annotations.owner}"
        ])
        .unwrap(),
        "team-a"
    );
    let by_field = k
        .ok(&[
            "get",
            "cm",
            "-n",
            "shop",
            "--field-selector",
            "metadata.name=settings",
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(by_field.trim(), "configmap/settings");

    // patch: merge, JSON and strategic (containers merge by name).
    k.ok(&[
        "patch",
        "cm",
        "settings",
        "-n",
        "shop",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"extra":"1"}}"#,
    ])
    .unwrap();
    k.ok(&[
        "patch",
        "cm",
        "settings",
        "-n",
        "shop",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/data/size"}]"#,
    ])
    .unwrap();
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data}"
        ])
        .unwrap(),
        r#"{"color":"green","extra":"1"}"#
    );
    k.ok(&["patch", "deploy", "web", "-n", "shop", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"demo","image":"sextant.local/demo:v2"}]}}}}"#]).unwrap();
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-n", "shop", "-o", "jsonpath={.spec.template.spec.containers[*].image} {.spec.template.spec.containers[0].env[0].name}"]).unwrap(),
        "sextant.local/demo:v2 MODE"
    );

    // scale, describe, edit (EDITOR is a script), get -w.
    assert!(
        k.ok(&["scale", "deploy", "web", "-n", "shop", "--replicas=5"])
            .unwrap()
            .contains("deployment.apps/web scaled")
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.replicas}"
        ])
        .unwrap(),
        "5"
    );
    let described = k.ok(&["describe", "deploy", "web", "-n", "shop"]).unwrap();
    assert!(
        described.contains("Replicas:               5 desired")
            && described.contains("Selector:               app=web"),
        "{described}"
    );
    let editor = server.data_dir().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/^  color: green$/  color: red/' \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = k
        .ok_env(
            &["edit", "cm", "settings", "-n", "shop"],
            &[("EDITOR", editor.to_str().unwrap())],
        )
        .unwrap();
    assert!(out.contains("configmap/settings edited"), "{out}");
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.color}"
        ])
        .unwrap(),
        "red"
    );
    let watcher = k
        .spawn(&["get", "cm", "-n", "shop", "-w", "--request-timeout=5s"])
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    k.ok_with(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: later, namespace: shop}\n"),
    )
    .unwrap();
    let watched = String::from_utf8_lossy(&watcher.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        watched.lines().any(|l| l.starts_with("settings")),
        "{watched}"
    );
    assert!(
        watched.lines().any(|l| l.starts_with("later")),
        "get -w did not print the later change: {watched}"
    );
    k.ok(&["delete", "cm", "later", "-n", "shop"]).unwrap();

    // Invalid input is refused with upstream's message and field path; nothing is stored.
    let bad_name = MANIFEST
        .split("---")
        .nth(1)
        .unwrap()
        .replace("name: settings", "name: Bad_Name");
    let err = k.fails(&["apply", "-f", "-"], Some(&bad_name)).unwrap();
    assert!(
        err.contains(
            r#"The ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name""#
        ),
        "{err}"
    );
    let mismatch = MANIFEST
        .split("---")
        .nth(3)
        .unwrap()
        .replace("name: web\n  namespace", "name: other\n  namespace")
        .replace(
            "labels: {app: web}\n    spec",
            "labels: {app: nope}\n    spec",
        );
    let err = k.fails(&["apply", "-f", "-"], Some(&mismatch)).unwrap();
    assert!(
        err.contains("spec.template.metadata.labels")
            && err.contains("`selector` does not match template `labels`"),
        "{err}"
    );
    let unknown = MANIFEST
        .split("---")
        .nth(3)
        .unwrap()
        .replace("name: web\n  namespace", "name: third\n  namespace")
        .replace("replicas: 2", "replicas: 2\n  replicaz: 3");
    let err = k.fails(&["apply", "-f", "-"], Some(&unknown)).unwrap();
    assert!(
        err.contains(r#"strict decoding error: unknown field "spec.replicaz""#),
        "{err}"
    );
    // --validate=warn: the object is created without the unknown field, with a warning.
    let warned = unknown.replace("name: third", "name: fourth");
    let out = k
        .run(&["apply", "--validate=warn", "-f", "-"], Some(&warned))
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(r#"Warning: unknown field "spec.replicaz""#),
        "{stderr}"
    );
    // (kubectl's last-applied annotation keeps the manifest as sent; the spec does not.)
    let stored = k
        .ok(&[
            "get",
            "deploy",
            "fourth",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec}",
        ])
        .unwrap();
    assert!(
        !stored.contains("replicaz") && stored.contains("\"replicas\":2"),
        "{stored}"
    );
    k.ok(&["delete", "deploy", "fourth", "-n", "shop"]).unwrap();
    for (kind, name) in [("cm", "Bad_Name"), ("deploy", "other"), ("deploy", "third")] {
        let err = k.fails(&["get", kind, name, "-n", "shop"], None).unwrap();
        assert!(err.contains("NotFound"), "{kind}/{name} was stored: {err}");
    }
    let err = k
        .fails(
            &["create", "-f", "-"],
            Some(
                &MANIFEST
                    .split("---")
                    .nth(2)
                    .unwrap()
                    .replace("shop", "nowhere"),
            ),
        )
        .unwrap();
    assert!(err.contains(r#"namespaces "nowhere" not found"#), "{err}");

    // delete by name, by label, --all.
    k.ok_with(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: shop, labels: {group: one}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b, namespace: shop}\n")).unwrap();
    assert!(
        k.ok(&["delete", "cm", "-n", "shop", "-l", "group=one"])
            .unwrap()
            .contains("configmap \"a\" deleted")
    );
    assert!(
        k.ok(&["delete", "cm", "b", "-n", "shop"])
            .unwrap()
            .contains("configmap \"b\" deleted")
    );
    let out = k.ok(&["delete", "cm", "-n", "shop", "--all"]).unwrap();
    assert!(out.contains("configmap \"settings\" deleted"), "{out}");
    assert!(
        k.ok(&["get", "cm", "-n", "shop", "-o", "name"])
            .unwrap()
            .trim()
            .is_empty()
    );
}

#[tokio::test]
async fn kubectl_scenario_on_the_embedded_store() {
    let server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    scenario(&server).await;
}

#[tokio::test]
async fn kubectl_scenario_on_etcd() {
    let etcd = EtcdCluster::start(1).await.expect("etcd");
    let server = SextantServer::start(Path::new(BINARY), Datastore::Etcd(&etcd))
        .await
        .expect("server");
    scenario(&server).await;
    // The objects are really in etcd, readable under /registry.
    let mut c = etcd.client().await.expect("etcd client");
    let ns = c.get("/registry/namespaces/shop", None).await.expect("get");
    assert_eq!(ns.kvs().len(), 1);
    let d = c
        .get("/registry/apps/deployments/shop/web", None)
        .await
        .expect("get");
    let obj: serde_json::Value = serde_json::from_slice(d.kvs()[0].value()).expect("JSON in etcd");
    assert_eq!(obj["kind"], "Deployment");
}
