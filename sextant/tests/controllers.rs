//! The controllers inside a real `sextant server`, with the real kubectl and
//! simulated nodes (Node objects only, so pods are scheduled but never run; their
//! readiness is written by the test as a kubelet would): a ReplicaSet keeps its
//! replica count through deletions and scaling, adopts a matching orphan, counts
//! ready pods, and its pods are garbage collected with it.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use sextant_tests::sextant::{Datastore, Kubectl, SextantServer};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

const NODE: &str = r#"{"status":{"allocatable":{"cpu":"8","memory":"16Gi","pods":"110"},"conditions":[{"type":"Ready","status":"True"}]}}"#;

const RS: &str = r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: c
        image: sextant.local/busybox:v1
"#;

/// The pods labelled app=web that are not being deleted (with no kubelet, a
/// gracefully deleted pod stays Terminating, as upstream's would).
fn pods(k: &Kubectl) -> Vec<String> {
    let list: serde_json::Value = serde_json::from_str(
        &k.ok(&["get", "pods", "-l", "app=web", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..150 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen in 15 s");
}

#[tokio::test]
async fn replicasets_keep_their_pods() {
    let server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    let k = server.kubectl().unwrap();
    k.ok_with(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Node\nmetadata: {name: sim-1}\n"),
    )
    .unwrap();
    k.ok(&[
        "patch",
        "node",
        "sim-1",
        "--subresource=status",
        "--type=merge",
        "-p",
        NODE,
    ])
    .unwrap();

    // An orphan that matches is adopted rather than a fourth pod created.
    k.ok_with(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: Pod\nmetadata: {name: orphan, labels: {app: web}}\nspec:\n  containers: [{name: c, image: sextant.local/busybox:v1}]\n")).unwrap();
    k.ok_with(&["apply", "-f", "-"], Some(RS)).unwrap();
    until("3 pods", || pods(&k).len() == 3).await;
    let owner = k
        .ok(&[
            "get",
            "pod",
            "orphan",
            "-o",
            "jsonpath={.metadata.ownerReferences[0].name}",
        ])
        .unwrap();
    assert_eq!(owner, "web");
    let names = pods(&k);
    assert!(
        names.iter().filter(|n| n.starts_with("web-")).count() == 2,
        "{names:?}"
    );

    // A deleted pod is replaced.
    k.ok(&["delete", "pod", "orphan", "--wait=false"]).unwrap();
    until("a replacement", || {
        let p = pods(&k);
        p.len() == 3 && !p.contains(&"orphan".to_owned())
    })
    .await;

    // Status counts ready pods, as the kubelet reports them.
    for p in pods(&k) {
        k.ok(&[
            "patch",
            "pod",
            &p,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#,
        ])
        .unwrap();
    }
    until("readyReplicas 3", || {
        k.ok(&[
            "get",
            "rs",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}/{.status.availableReplicas}/{.status.replicas}",
        ])
        .unwrap()
            == "3/3/3"
    })
    .await;

    // Scaling down deletes, scaling up creates.
    k.ok(&["scale", "rs", "web", "--replicas=1"]).unwrap();
    until("1 pod", || pods(&k).len() == 1).await;
    k.ok(&["scale", "rs", "web", "--replicas=2"]).unwrap();
    until("2 pods", || pods(&k).len() == 2).await;
    let table = k.ok(&["get", "rs", "web", "--no-headers"]).unwrap();
    let events = k.events().unwrap();
    assert!(
        events.contains("SuccessfulCreate: Created pod: web-"),
        "{events}"
    );
    assert!(
        events.contains("SuccessfulDelete: Deleted pod: web-"),
        "{events}"
    );
    assert!(table.starts_with("web"), "{table}");

    // Deleting the ReplicaSet collects its pods.
    k.ok(&["delete", "rs", "web"]).unwrap();
    until("pods collected", || pods(&k).is_empty()).await;

    // --cascade=orphan on a Deployment leaves its ReplicaSet and pods, unowned.
    k.ok(&[
        "create",
        "deployment",
        "kept",
        "--image=sextant.local/busybox:v1",
        "--replicas=2",
    ])
    .unwrap();
    let kept_pods = |k: &Kubectl| {
        k.ok(&["get", "pods", "-l", "app=kept", "-o", "name"])
            .unwrap()
            .lines()
            .count()
    };
    until("2 pods of the deployment", || kept_pods(&k) == 2).await;
    k.ok(&[
        "delete",
        "deployment",
        "kept",
        "--cascade=orphan",
        "--wait=true",
        "--timeout=30s",
    ])
    .unwrap();
    assert!(
        k.fails(&["get", "deployment", "kept"], None)
            .unwrap()
            .contains("NotFound")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rs = k
        .ok(&[
            "get",
            "rs",
            "-l",
            "app=kept",
            "-o",
            "jsonpath={.items[*].metadata.ownerReferences}",
        ])
        .unwrap();
    assert_eq!(rs, "", "the ReplicaSet is no longer owned");
    assert_eq!(
        k.ok(&["get", "rs", "-l", "app=kept", "-o", "name"])
            .unwrap()
            .lines()
            .count(),
        1
    );
    assert_eq!(kept_pods(&k), 2, "the pods stay");

    let lease = k
        .ok(&[
            "get",
            "lease",
            "kube-controller-manager",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap();
    assert!(!lease.is_empty());
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
    assert!(
        metrics.contains(r#"workqueue_adds_total{name="replicaset"}"#),
        "{metrics}"
    );
}

const DS: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      containers:
      - name: c
        image: sextant.local/busybox:v1
"#;

/// Creates a simulated node (a Node object that reports Ready).
fn sim_node(k: &Kubectl, name: &str, extra: &str) {
    let manifest = format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n{extra}");
    k.ok_with(&["apply", "-f", "-"], Some(&manifest)).unwrap();
    k.ok(&[
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        NODE,
    ])
    .unwrap();
}

/// Node → image of the DaemonSet's live pods, for bound pods.
fn daemon_pods(k: &Kubectl) -> std::collections::BTreeMap<String, Vec<String>> {
    let list: serde_json::Value = serde_json::from_str(
        &k.ok(&["get", "pods", "-l", "app=agent", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    let mut out = std::collections::BTreeMap::<String, Vec<String>>::new();
    for p in list["items"].as_array().unwrap() {
        if !p["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let node = p["spec"]["nodeName"].as_str().unwrap_or("-").to_owned();
        let image = p["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_owned();
        out.entry(node).or_default().push(image);
    }
    out
}

#[tokio::test]
async fn daemonsets_run_one_pod_per_eligible_node() {
    let server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    let k = server.kubectl().unwrap();
    sim_node(&k, "ds-1", "");
    sim_node(&k, "ds-2", "");
    sim_node(
        &k,
        "ds-gpu",
        "spec:\n  taints: [{key: dedicated, value: gpu, effect: NoSchedule}]\n",
    );
    k.ok_with(&["apply", "-f", "-"], Some(DS)).unwrap();
    let v1 = "sextant.local/busybox:v1".to_owned();
    until("one pod on each untainted node", || {
        let pods = daemon_pods(&k);
        pods.get("ds-1") == Some(&vec![v1.clone()])
            && pods.get("ds-2") == Some(&vec![v1.clone()])
            && pods.len() == 2
    })
    .await;

    // A new node gets its pod (the controller watches nodes).
    sim_node(&k, "ds-3", "");
    until("a pod on the new node", || {
        daemon_pods(&k).get("ds-3") == Some(&vec![v1.clone()])
    })
    .await;
    let status: serde_json::Value = serde_json::from_str(
        &k.ok(&["get", "ds", "agent", "-o", "jsonpath={.status}"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["desiredNumberScheduled"], 3, "{status}");
    assert_eq!(status["currentNumberScheduled"], 3, "{status}");

    // A rolling update replaces every pod; the revisions are recorded.
    k.ok(&["set", "image", "ds/agent", "c=sextant.local/busybox:v2"])
        .unwrap();
    let v2 = "sextant.local/busybox:v2".to_owned();
    until("every pod on the new template", || {
        let pods = daemon_pods(&k);
        ["ds-1", "ds-2", "ds-3"]
            .iter()
            .all(|n| pods.get(*n) == Some(&vec![v2.clone()]))
            && pods.len() == 3
    })
    .await;
    let history = k.ok(&["rollout", "history", "ds/agent"]).unwrap();
    let revisions: Vec<&str> = history
        .lines()
        .filter(|l| l.trim_start().starts_with(char::is_numeric))
        .collect();
    assert_eq!(revisions.len(), 2, "{history}");

    // Tolerating the taint adds the tainted node.
    k.ok(&[
        "patch",
        "ds",
        "agent",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"spec":{"tolerations":[{"key":"dedicated","operator":"Exists"}]}}}}"#,
    ])
    .unwrap();
    until("a pod on the tainted node", || {
        daemon_pods(&k)
            .get("ds-gpu")
            .is_some_and(|images| images.len() == 1)
    })
    .await;
}

const TEAM: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: team}
data: {a: b}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: team}
stringData: {p: q}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: team}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: c
        image: sextant.local/busybox:v1
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: team}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"#;

#[tokio::test]
async fn deleting_a_namespace_deletes_its_content() {
    // No nodes: pods stay unscheduled, so their deletion is immediate.
    let server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    let k = server.kubectl().unwrap();
    k.ok(&["create", "namespace", "team"]).unwrap();
    let finalizers = k
        .ok(&["get", "ns", "team", "-o", "jsonpath={.spec.finalizers}"])
        .unwrap();
    assert_eq!(finalizers, r#"["kubernetes"]"#);
    // Every namespace gets a `default` ServiceAccount, which pods run as.
    until("the default ServiceAccount", || {
        k.run(&["get", "serviceaccount", "default", "-n", "team"], None)
            .is_ok_and(|o| o.status.success())
    })
    .await;
    k.ok_with(&["apply", "-f", "-"], Some(TEAM)).unwrap();
    until("the deployment's pods", || {
        k.ok(&["get", "pods", "-n", "team", "-o", "name"])
            .unwrap()
            .lines()
            .count()
            == 2
    })
    .await;

    let account = k
        .ok(&[
            "get",
            "pods",
            "-n",
            "team",
            "-o",
            "jsonpath={.items[0].spec.serviceAccountName}",
        ])
        .unwrap();
    assert_eq!(account, "default");
    k.ok(&["delete", "namespace", "team", "--timeout=60s"])
        .unwrap();
    let err = k.fails(&["get", "namespace", "team"], None).unwrap();
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    for kind in [
        "configmaps",
        "secrets",
        "deployments",
        "replicasets",
        "pods",
        "services",
    ] {
        let left = k.ok(&["get", kind, "-n", "team", "-o", "name"]).unwrap();
        assert!(left.trim().is_empty(), "{kind} left: {left}");
    }

    // The system namespaces cannot be deleted.
    let err = k.fails(&["delete", "namespace", "default"], None).unwrap();
    assert!(
        err.contains("namespaces \"default\" is forbidden: this namespace may not be deleted"),
        "{err}"
    );
}

const SERVICE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 3
  selector:
    matchLabels: {app: api}
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
      - name: c
        image: sextant.local/busybox:v1
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  selector: {app: api}
  ports: [{name: web, port: 80, targetPort: http}]
"#;

/// Writes a pod's status as its kubelet would: Running, an IP, Ready or not.
fn report(k: &Kubectl, pod: &str, ip: &str, ready: bool) {
    let status = if ready { "True" } else { "False" };
    k.ok(&[
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(
            r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"{status}"}}]}}}}"#
        ),
    ])
    .unwrap();
}

fn slice_endpoints(k: &Kubectl) -> Vec<(String, bool)> {
    let list: serde_json::Value = serde_json::from_str(
        &k.ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=api",
            "-o",
            "json",
        ])
        .unwrap(),
    )
    .unwrap();
    let mut out: Vec<(String, bool)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["addresses"][0].as_str().unwrap().to_owned(),
                e["conditions"]["ready"] == true,
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn endpointslices_follow_pod_readiness() {
    let server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    let k = server.kubectl().unwrap();
    sim_node(&k, "ep-1", "");
    k.ok_with(&["apply", "-f", "-"], Some(SERVICE)).unwrap();
    let pod_names = || -> Vec<String> {
        k.ok(&["get", "pods", "-l", "app=api", "-o", "name"])
            .unwrap()
            .lines()
            .map(|l| l.trim_start_matches("pod/").to_owned())
            .collect()
    };
    until("3 pods", || pod_names().len() == 3).await;
    let names = pod_names();
    for (i, name) in names.iter().enumerate() {
        report(&k, name, &format!("10.99.0.{}", i + 1), i != 2);
    }
    until("three endpoints, two ready", || {
        slice_endpoints(&k)
            == [
                ("10.99.0.1".to_owned(), true),
                ("10.99.0.2".to_owned(), true),
                ("10.99.0.3".to_owned(), false),
            ]
    })
    .await;
    let ports = k
        .ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=api",
            "-o",
            "jsonpath={.items[0].ports[0].name}:{.items[0].ports[0].port}",
        ])
        .unwrap();
    assert_eq!(ports, "web:8080");
    // The Endpoints object lists ready and not-ready addresses apart.
    let ep = k
        .ok(&[
            "get",
            "endpoints",
            "api",
            "-o",
            "jsonpath={.subsets[0].addresses[*].ip} / {.subsets[0].notReadyAddresses[*].ip}",
        ])
        .unwrap();
    assert_eq!(ep, "10.99.0.1 10.99.0.2 / 10.99.0.3");

    // Readiness changes and scale-downs show up.
    report(&k, &names[2], "10.99.0.3", true);
    until("all ready", || slice_endpoints(&k).iter().all(|(_, r)| *r)).await;
    // The Service goes, and its slices and Endpoints with it.
    k.ok(&["delete", "service", "api"]).unwrap();
    until("slices garbage collected", || {
        slice_endpoints(&k).is_empty()
    })
    .await;
    until("endpoints garbage collected", || {
        k.run(&["get", "endpoints", "api"], None)
            .is_ok_and(|o| !o.status.success())
    })
    .await;

    // A slice the controller cannot write (a quota allows none) is told on the
    // Service with upstream's reason, and the quota's message.
    k.ok_with(&["apply", "-f", "-"], Some(CAPPED)).unwrap();
    let mut told = String::new();
    until("a FailedToUpdateEndpointSlices event", || {
        told = k
            .ok(&[
                "get",
                "events",
                "-n",
                "capped",
                "--field-selector",
                "involvedObject.kind=Service,involvedObject.name=web,reason=FailedToUpdateEndpointSlices",
                "-o",
                r#"jsonpath={range .items[*]}{.type} {.message}{"\n"}{end}"#,
            ])
            .unwrap();
        told.lines().any(|l| l.contains("exceeded quota: no-slices"))
    })
    .await;
    assert!(
        told.lines()
            .all(|l| l
                .starts_with("Warning Error updating Endpoint Slices for Service capped/web: ")),
        "{told}"
    );
}

/// A namespace whose quota allows no EndpointSlices, and a Service in it.
const CAPPED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: capped}
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: no-slices, namespace: capped}
spec:
  hard: {count/endpointslices.discovery.k8s.io: "0"}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: capped}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"#;

const STUCK: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: stuck}
spec:
  replicas: 1
  progressDeadlineSeconds: 3
  selector:
    matchLabels: {app: stuck}
  template:
    metadata:
      labels: {app: stuck}
    spec:
      containers:
      - name: c
        image: sextant.local/busybox:v1
"#;

#[tokio::test]
async fn a_rollout_without_progress_exceeds_its_deadline() {
    // The simulated node never runs the pod, so it never becomes ready.
    let server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    let k = server.kubectl().unwrap();
    sim_node(&k, "slow", "");
    k.ok_with(&["apply", "-f", "-"], Some(STUCK)).unwrap();
    let out = k
        .run(
            &["rollout", "status", "deploy/stuck", "--timeout=40s"],
            None,
        )
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("deployment \"stuck\" exceeded its progress deadline"),
        "{stderr}"
    );
    let reason = k
        .ok(&[
            "get",
            "deploy",
            "stuck",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Progressing")].reason}"#,
        ])
        .unwrap();
    assert_eq!(reason, "ProgressDeadlineExceeded");
}

#[tokio::test]
async fn disruption_budgets_gate_evictions() {
    let server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    let k = server.kubectl().unwrap();
    sim_node(&k, "sim-pdb", "");
    for i in 0..3 {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: guard-{i}, labels: {{app: guard}}}}\nspec:\n  containers: [{{name: c, image: sextant.local/busybox:v1}}]\n"
        );
        k.ok_with(&["apply", "-f", "-"], Some(&pod)).unwrap();
    }
    until("the pods bound", || {
        k.ok(&[
            "get",
            "pods",
            "-l",
            "app=guard",
            "-o",
            "jsonpath={.items[*].spec.nodeName}",
        ])
        .is_ok_and(|o| o.split(' ').filter(|n| *n == "sim-pdb").count() == 3)
    })
    .await;
    for i in 0..3 {
        report(
            &k,
            &format!("guard-{i}"),
            &format!("10.0.0.{}", i + 1),
            true,
        );
    }
    k.ok_with(
        &["apply", "-f", "-"],
        Some("apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: guard}\nspec:\n  minAvailable: 2\n  selector: {matchLabels: {app: guard}}\n"),
    )
    .unwrap();
    until("the budget computed", || {
        k.ok(&[
            "get",
            "pdb",
            "guard",
            "-o",
            "jsonpath={.status.expectedPods}/{.status.currentHealthy}/{.status.disruptionsAllowed}",
        ])
        .is_ok_and(|o| o == "3/3/1")
    })
    .await;
    let table = k.ok(&["get", "pdb", "guard", "--no-headers"]).unwrap();
    assert!(
        table.split_whitespace().collect::<Vec<_>>()[..4] == ["guard", "2", "N/A", "1"],
        "{table}"
    );

    let c = server.http_client().unwrap();
    let evict = |name: &str| {
        let url = format!(
            "{}/api/v1/namespaces/default/pods/{name}/eviction",
            server.url()
        );
        let body = serde_json::json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}});
        c.post(url).json(&body).send()
    };
    // One disruption allowed: the first eviction is granted, the second (before
    // the controller has seen anything) is refused.
    assert_eq!(evict("guard-0").await.unwrap().status(), 201);
    let refused = evict("guard-1").await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(
        body["details"]["causes"][0]["reason"], "DisruptionBudget",
        "{body}"
    );
    until("the budget to count the evicted pod out", || {
        k.ok(&[
            "get",
            "pdb",
            "guard",
            "-o",
            "jsonpath={.status.currentHealthy}/{.status.disruptionsAllowed}",
        ])
        .is_ok_and(|o| o == "2/0")
    })
    .await;
}

const QUOTA: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: v1
kind: LimitRange
metadata: {name: cpu, namespace: team}
spec:
  limits:
  - type: Container
    default: {cpu: 200m}
    defaultRequest: {cpu: 100m}
    max: {cpu: "1"}
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: compute, namespace: team}
spec:
  hard: {pods: "2", requests.cpu: 250m}
"#;

#[tokio::test]
async fn quotas_and_limit_ranges_admit_pods() {
    let server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    let k = server.kubectl().unwrap();
    k.ok_with(&["apply", "-f", "-"], Some(QUOTA)).unwrap();
    let used = |k: &Kubectl| {
        k.ok(&[
            "get",
            "quota",
            "compute",
            "-n",
            "team",
            "-o",
            "jsonpath={.status.used.pods}/{.status.used.requests\\.cpu}",
        ])
        .unwrap()
    };
    until("the quota's usage computed", || used(&k) == "0/0").await;
    let pod = |name: &str, resources: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: team}}\nspec:\n  containers:\n  - name: c\n    image: sextant.local/busybox:v1\n{resources}"
        )
    };

    // The limit range fills in what the container does not say, and says so.
    k.ok_with(&["apply", "-f", "-"], Some(&pod("p1", "")))
        .unwrap();
    let resources = k
        .ok(&["get", "pod", "p1", "-n", "team", "-o", "jsonpath={.spec.containers[0].resources.requests.cpu}/{.spec.containers[0].resources.limits.cpu}"])
        .unwrap();
    assert_eq!(resources, "100m/200m");
    let note = k
        .ok(&[
            "get",
            "pod",
            "p1",
            "-n",
            "team",
            "-o",
            "jsonpath={.metadata.annotations.kubernetes\\.io/limit-ranger}",
        ])
        .unwrap();
    assert_eq!(
        note,
        "LimitRanger plugin set: cpu limit for container c; cpu request for container c"
    );
    // ... and refuses what exceeds its max.
    let refused = k
        .fails(
            &["apply", "-f", "-"],
            Some(&pod("big", "    resources: {limits: {cpu: \"2\"}}\n")),
        )
        .unwrap();
    assert!(refused.contains("(Forbidden)"), "{refused}");
    assert!(
        refused.contains("maximum cpu usage per Container is 1, but limit is 2"),
        "{refused}"
    );

    // The quota: two pods of 100m fit, a third exceeds both limits.
    k.ok_with(&["apply", "-f", "-"], Some(&pod("p2", "")))
        .unwrap();
    assert_eq!(used(&k), "2/200m");
    let refused = k
        .fails(&["apply", "-f", "-"], Some(&pod("p3", "")))
        .unwrap();
    assert!(
        refused.contains("pods \"p3\" is forbidden: exceeded quota: compute, requested: pods=1,requests.cpu=100m, used: pods=2,requests.cpu=200m, limited: pods=2,requests.cpu=250m"),
        "{refused}"
    );
    // Deleting a pod gives its share back.
    k.ok(&[
        "delete",
        "pod",
        "p1",
        "-n",
        "team",
        "--grace-period=0",
        "--force",
    ])
    .unwrap();
    until("the quota to count one pod", || used(&k) == "1/100m").await;
    k.ok_with(&["apply", "-f", "-"], Some(&pod("p3", "")))
        .unwrap();
}
