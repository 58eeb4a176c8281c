//! StatefulSets and local-path volumes end to end: a real `sextant server`
//! (scheduler, StatefulSet and PersistentVolume controllers) and a real agent
//! running the pods through containerd, driven by kubectl 1.33: ordered
//! creation, PVCs that outlive their pods (a recreated pod finds its data),
//! a reverse-ordered rolling update, scale down, and the Delete and Retain
//! reclaim policies.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use serde_json::Value;
use sextant_tests::{agent::OneNodeCluster, sextant::Kubectl};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: sextant.local/busybox:v1
        command: [sh, -c, "echo started $(hostname) >> /data/log; exec sleep 3600"]
        volumeMounts: [{name: data, mountPath: /data}]
        readinessProbe:
          exec: {command: [cat, /data/log]}
          initialDelaySeconds: 1
          periodSeconds: 1
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 16Mi}}
"#;

const RETAINED: &str = r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: keep}
provisioner: sextant.io/local-path
reclaimPolicy: Retain
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: kept}
spec:
  storageClassName: keep
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: main
    image: sextant.local/busybox:v1
    command: [sh, -c, "echo kept > /data/file"]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: kept}
"#;

fn json(k: &Kubectl, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&k.ok(&all).unwrap()).unwrap()
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..600 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

fn ready_since(pod: &Value) -> String {
    pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()["lastTransitionTime"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn statefulsets_keep_names_order_and_storage() {
    let OneNodeCluster {
        containerd: _ctrd,
        server,
        agent,
    } = OneNodeCluster::start(Path::new(BINARY))
        .await
        .expect("cluster");
    let k = server.kubectl().unwrap();

    // The default class exists from the start.
    let classes = k.ok(&["get", "storageclass"]).unwrap();
    assert!(classes.contains("local-path (default)"), "{classes}");

    k.ok_with(&["apply", "-f", "-"], Some(WEB)).unwrap();
    let status = k
        .ok(&["rollout", "status", "statefulset/web", "--timeout=120s"])
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail(40)));
    // With the defaulted partition 0, kubectl reports as it does upstream.
    assert!(
        status.contains("partitioned roll out complete: 3 new pods have been updated"),
        "{status}"
    );

    // OrderedReady: each pod was created only once the one before was Ready.
    let pods: Vec<Value> = (0..3)
        .map(|i| json(&k, &["get", "pod", &format!("web-{i}")]))
        .collect();
    for i in 1..3 {
        let created = pods[i]["metadata"]["creationTimestamp"].as_str().unwrap();
        let before = ready_since(&pods[i - 1]);
        assert!(
            created >= before.as_str(),
            "web-{i} created {created}, web-{} Ready {before}",
            i - 1
        );
    }
    assert_eq!(pods[1]["spec"]["hostname"], "web-1");
    assert_eq!(pods[1]["spec"]["subdomain"], "web");
    assert_eq!(
        pods[1]["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
        "web-1"
    );
    assert_eq!(
        k.ok(&["exec", "web-1", "--", "hostname"]).unwrap().trim(),
        "web-1"
    );
    let events = k.events().unwrap();
    assert!(
        events.contains("SuccessfulCreate: create Pod web-0 in StatefulSet web successful"),
        "{events}"
    );
    assert!(
        events.contains(
            "SuccessfulCreate: create Claim data-web-0 Pod web-0 in StatefulSet web success"
        ),
        "{events}"
    );

    // Each pod has its own bound claim on a local-path volume in the agent's
    // data dir.
    let claims = json(&k, &["get", "pvc"]);
    let mut names: Vec<&str> = claims["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["status"]["phase"], "Bound", "{c:#}");
            assert_eq!(c["spec"]["storageClassName"], "local-path");
            c["metadata"]["name"].as_str().unwrap()
        })
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["data-web-0", "data-web-1", "data-web-2"]);
    let claim = json(&k, &["get", "pvc", "data-web-1"]);
    let volume = claim["spec"]["volumeName"].as_str().unwrap().to_owned();
    let pv = json(&k, &["get", "pv", &volume]);
    assert_eq!(pv["status"]["phase"], "Bound");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    let dir = pv["spec"]["hostPath"]["path"].as_str().unwrap().to_owned();
    assert!(
        dir.starts_with(&agent.data_dir().to_string_lossy().into_owned()),
        "{dir}"
    );

    // A deleted pod comes back under its name, with its claim and its data.
    k.ok(&[
        "exec",
        "web-1",
        "--",
        "sh",
        "-c",
        "echo hello > /data/marker",
    ])
    .unwrap();
    let old_uid = pods[1]["metadata"]["uid"].as_str().unwrap().to_owned();
    k.ok(&["delete", "pod", "web-1"]).unwrap();
    until("web-1 to come back Ready", || {
        let p = k.ok(&["get", "pod", "web-1", "-o", "json"]).ok();
        p.and_then(|p| serde_json::from_str::<Value>(&p).ok())
            .is_some_and(|p| {
                p["metadata"]["uid"] != old_uid.as_str()
                    && p["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
    })
    .await;
    assert_eq!(
        k.ok(&["exec", "web-1", "--", "cat", "/data/marker"])
            .unwrap(),
        "hello\n"
    );
    let log = k.ok(&["exec", "web-1", "--", "cat", "/data/log"]).unwrap();
    assert_eq!(log, "started web-1\nstarted web-1\n");
    assert_eq!(
        json(&k, &["get", "pvc", "data-web-1"])["spec"]["volumeName"],
        volume.as_str()
    );

    // A rolling update replaces pods from the highest ordinal down.
    k.ok(&["set", "env", "statefulset/web", "ROUND=2"]).unwrap();
    let status = k
        .ok(&["rollout", "status", "statefulset/web", "--timeout=120s"])
        .unwrap();
    assert!(
        status.contains("complete: 3 new pods have been updated"),
        "{status}"
    );
    let created: Vec<String> = (0..3)
        .map(|i| {
            let p = json(&k, &["get", "pod", &format!("web-{i}")]);
            assert_eq!(p["spec"]["containers"][0]["env"][0]["value"], "2");
            p["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        created[2] <= created[1] && created[1] <= created[0],
        "{created:?}"
    );
    let history = k.ok(&["rollout", "history", "statefulset/web"]).unwrap();
    assert!(
        history.contains("\n1 ") && history.contains("\n2 "),
        "{history}"
    );

    // Scaling down removes the highest ordinals; their claims stay.
    k.ok(&["scale", "statefulset/web", "--replicas=1"]).unwrap();
    until("web-1 and web-2 to be gone", || {
        k.ok(&["get", "pods", "-l", "app=web", "-o", "name"])
            .is_ok_and(|o| o.trim() == "pod/web-0")
    })
    .await;
    assert_eq!(
        json(&k, &["get", "pvc"])["items"].as_array().unwrap().len(),
        3
    );

    // Reclaim Delete: the released volume and its directory go.
    let pv2 = json(&k, &["get", "pvc", "data-web-2"])["spec"]["volumeName"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir2 = json(&k, &["get", "pv", &pv2])["spec"]["hostPath"]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(Path::new(&dir2).is_dir(), "{dir2}");
    k.ok(&["delete", "pvc", "data-web-2"]).unwrap();
    k.ok(&[
        "wait",
        "--for=delete",
        &format!("pv/{pv2}"),
        "--timeout=30s",
    ])
    .unwrap();
    assert!(!Path::new(&dir2).exists(), "{dir2} is left");

    // Reclaim Retain: the volume is Released and keeps its data.
    k.ok_with(&["apply", "-f", "-"], Some(RETAINED)).unwrap();
    k.ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Succeeded",
        "pod/writer",
        "--timeout=60s",
    ])
    .unwrap();
    let kept = json(&k, &["get", "pvc", "kept"])["spec"]["volumeName"]
        .as_str()
        .unwrap()
        .to_owned();
    k.ok(&["delete", "pod", "writer"]).unwrap();
    k.ok(&["delete", "pvc", "kept"]).unwrap();
    k.ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Released",
        &format!("pv/{kept}"),
        "--timeout=30s",
    ])
    .unwrap();
    let kept_dir = json(&k, &["get", "pv", &kept])["spec"]["hostPath"]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        std::fs::read_to_string(Path::new(&kept_dir).join("file")).unwrap(),
        "kept\n"
    );

    // A claim that does not exist keeps its pod Pending, worded as upstream.
    k.ok_with(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: orphan}\nspec:\n  containers: [{name: c, image: sextant.local/busybox:v1}]\n  volumes: [{name: d, persistentVolumeClaim: {claimName: missing}}]\n",
        ),
    )
    .unwrap();
    until("a FailedScheduling event for the missing claim", || {
        k.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=orphan",
            "-o",
            "json",
        ])
        .is_ok_and(|o| o.contains("persistentvolumeclaim \\\"missing\\\" not found"))
    })
    .await;
    // --cascade=foreground: the set stays, marked, until its pods are gone.
    k.ok(&[
        "delete",
        "statefulset",
        "web",
        "--cascade=foreground",
        "--wait=false",
    ])
    .unwrap();
    let finalizers = k
        .ok(&[
            "get",
            "statefulset",
            "web",
            "-o",
            "jsonpath={.metadata.finalizers}",
        ])
        .unwrap();
    assert!(finalizers.contains("foregroundDeletion"), "{finalizers}");
    k.ok(&["wait", "--for=delete", "statefulset/web", "--timeout=60s"])
        .unwrap();
    let left = k
        .ok(&[
            "get",
            "pods,controllerrevisions",
            "-l",
            "app=web",
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(
        left, "",
        "dependents outlived their foreground-deleted owner"
    );
    // Claims outlive the set (persistentVolumeClaimRetentionPolicy Retain).
    assert_eq!(
        json(&k, &["get", "pvc", "-l", "app=web"])["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
