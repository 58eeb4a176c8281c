//! Upstream's defaulting, applied on create and update before validation, for the
//! fields users touch: pod specs (in pods and in every workload's template),
//! workload strategies and limits, Job selectors, Secret type, Namespace phase.
//!
//! Only what is absent (or, for Go's non-pointer strings, empty) is filled in.
//! Every access is checked: a field of the wrong type is validation's to report,
//! and indexing into it here would panic.

use serde_json::{Value, json};

use crate::resources::ResourceType;

/// Fills upstream's defaults into `obj`, an object of `rt`.
pub fn apply(rt: &ResourceType, obj: &mut Value) {
    match (rt.group, rt.kind) {
        ("", "Namespace") => namespace(obj),
        ("", "Secret") => {
            set(obj, "type", json!("Opaque"));
            string_data(obj);
        }
        ("", "Pod") => {
            if let Some(spec) = object(obj, "spec") {
                pod_spec(spec, "Always");
                default_toleration_seconds(spec);
                // Upstream's ServiceAccount admission: `default` unless named.
                set(spec, "serviceAccountName", json!("default"));
                if let Some(name) = spec.get("serviceAccountName").cloned() {
                    set(spec, "serviceAccount", name);
                }
            }
            // A new pod is Pending until its kubelet says otherwise.
            set(obj, "status", json!({}));
            if let Some(status) = object(obj, "status") {
                set(status, "phase", json!("Pending"));
            }
        }
        ("", "PodTemplate") => template(obj, "Always"),
        ("", "Service") => {
            if let Some(spec) = object(obj, "spec") {
                service_spec(spec);
            }
        }
        ("apps", "Deployment") => {
            let Some(spec) = object(obj, "spec") else {
                return;
            };
            set(spec, "replicas", json!(1));
            set(spec, "revisionHistoryLimit", json!(10));
            set(spec, "progressDeadlineSeconds", json!(600));
            let strategy = spec
                .as_object_mut()
                .map(|s| s.entry("strategy").or_insert_with(|| json!({})));
            if let Some(strategy) = strategy.filter(|s| s.is_object()) {
                set(strategy, "type", json!("RollingUpdate"));
                if strategy["type"] == "RollingUpdate" {
                    rolling_update(strategy, "maxUnavailable", json!("25%"));
                    rolling_update(strategy, "maxSurge", json!("25%"));
                }
            }
            template(spec, "Always");
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = object(obj, "spec") {
                set(spec, "replicas", json!(1));
                template(spec, "Always");
            }
        }
        ("apps", "StatefulSet") => {
            let Some(spec) = object(obj, "spec") else {
                return;
            };
            set(spec, "replicas", json!(1));
            set(spec, "revisionHistoryLimit", json!(10));
            set(spec, "podManagementPolicy", json!("OrderedReady"));
            set(spec, "updateStrategy", json!({}));
            if let Some(strategy) = object(spec, "updateStrategy") {
                set(strategy, "type", json!("RollingUpdate"));
                if strategy["type"] == "RollingUpdate" {
                    rolling_update(strategy, "partition", json!(0));
                }
            }
            set(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            template(spec, "Always");
        }
        ("apps", "DaemonSet") => {
            let Some(spec) = object(obj, "spec") else {
                return;
            };
            set(spec, "revisionHistoryLimit", json!(10));
            set(spec, "updateStrategy", json!({}));
            if let Some(strategy) = object(spec, "updateStrategy") {
                set(strategy, "type", json!("RollingUpdate"));
                if strategy["type"] == "RollingUpdate" {
                    rolling_update(strategy, "maxUnavailable", json!(1));
                    rolling_update(strategy, "maxSurge", json!(0));
                }
            }
            template(spec, "Always");
        }
        ("batch", "Job") => {
            let meta = &obj["metadata"];
            let owner = meta["uid"].as_str().zip(meta["name"].as_str());
            let owner = owner.map(|(u, n)| (u.to_owned(), n.to_owned()));
            if let Some(spec) = object(obj, "spec") {
                job_spec(spec, owner.as_ref().map(|(u, n)| (u.as_str(), n.as_str())));
            }
        }
        ("batch", "CronJob") => {
            let Some(spec) = object(obj, "spec") else {
                return;
            };
            set(spec, "concurrencyPolicy", json!("Allow"));
            set(spec, "suspend", json!(false));
            set(spec, "successfulJobsHistoryLimit", json!(3));
            set(spec, "failedJobsHistoryLimit", json!(1));
            // The selector is generated for each Job the CronJob creates, not here.
            if let Some(job) = spec
                .pointer_mut("/jobTemplate/spec")
                .filter(|j| j.is_object())
            {
                job_spec(job, None);
            }
        }
        _ => {}
    }
}

/// `stringData` is write-only: upstream merges it into `data` (base64), over any
/// key of the same name, and never stores it.
fn string_data(obj: &mut Value) {
    use base64::Engine as _;
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    let Some(Value::Object(strings)) = o.remove("stringData") else {
        return;
    };
    let data = o.entry("data").or_insert_with(|| json!({}));
    if data.is_null() {
        *data = json!({});
    }
    if let Some(data) = data.as_object_mut() {
        for (k, v) in strings {
            if let Some(v) = v.as_str() {
                data.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(v)),
                );
            }
        }
    }
}

fn namespace(obj: &mut Value) {
    if obj["status"]["phase"].is_null() {
        obj["status"] = json!({"phase": "Active"});
    }
    // The namespace controller removes it once the namespace is emptied.
    if obj["spec"]["finalizers"].is_null() {
        obj["spec"]["finalizers"] = json!(["kubernetes"]);
    }
    // Upstream labels every namespace with its own name (for namespaceSelector).
    if let Some(name) = obj["metadata"]["name"].as_str().map(str::to_owned)
        && let Some(meta) = obj["metadata"].as_object_mut()
    {
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if let Some(l) = labels.as_object_mut() {
            l.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
    }
}

/// Upstream's DefaultTolerationSeconds admission: a pod that does not tolerate
/// the not-ready and unreachable NoExecute taints tolerates them for 300 s, so
/// it is evicted from a lost node after five minutes.
fn default_toleration_seconds(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let covered = list.iter().any(|t| {
            let key_ok = t["key"] == key || (t["key"].is_null() && t["operator"] == "Exists");
            let effect_ok =
                t["effect"].is_null() || t["effect"] == "" || t["effect"] == "NoExecute";
            key_ok && effect_ok
        });
        if !covered {
            list.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }));
        }
    }
}

/// A Job's defaults; with `owner` (the Job's uid and name, for a Job itself), the
/// generated selector and pod labels, unless `manualSelector` is set.
fn job_spec(spec: &mut Value, owner: Option<(&str, &str)>) {
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        set(spec, "completions", json!(1));
    }
    set(spec, "parallelism", json!(1));
    set(spec, "backoffLimit", json!(6));
    set(spec, "completionMode", json!("NonIndexed"));
    set(spec, "suspend", json!(false));
    set(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if let Some((uid, name)) = owner
        && spec["manualSelector"] != json!(true)
    {
        set(
            spec,
            "selector",
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
        let labels = json!({
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        });
        if let Some(t) = object(spec, "template") {
            set(t, "metadata", json!({}));
            if let Some(meta) = object(t, "metadata") {
                merge_labels(meta, &labels);
            }
        }
    }
    template(spec, "");
}

fn merge_labels(meta: &mut Value, labels: &Value) {
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let existing = meta.entry("labels").or_insert_with(|| json!({}));
    if let (Some(existing), Some(labels)) = (existing.as_object_mut(), labels.as_object()) {
        for (k, v) in labels {
            existing.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// The pod spec inside `spec.template`; `restart_policy` "" leaves it to validation
/// (a Job's pods must choose OnFailure or Never).
fn template(spec: &mut Value, restart_policy: &str) {
    if let Some(pod) = spec.pointer_mut("/template/spec").filter(|p| p.is_object()) {
        pod_spec(pod, restart_policy);
    }
}

fn pod_spec(pod: &mut Value, restart_policy: &str) {
    if !restart_policy.is_empty() {
        set(pod, "restartPolicy", json!(restart_policy));
    }
    set(pod, "terminationGracePeriodSeconds", json!(30));
    set(pod, "dnsPolicy", json!("ClusterFirst"));
    set(pod, "schedulerName", json!("default-scheduler"));
    set(pod, "securityContext", json!({}));
    set(pod, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers"] {
        let Some(containers) = pod.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers.iter_mut().filter(|c| c.is_object()) {
            container(c);
        }
    }
}

fn container(c: &mut Value) {
    set(c, "terminationMessagePath", json!("/dev/termination-log"));
    set(c, "terminationMessagePolicy", json!("File"));
    set(c, "resources", json!({}));
    let latest = c.get("image").and_then(Value::as_str).is_some_and(|i| {
        i.ends_with(":latest") || !i.rsplit('/').next().unwrap_or(i).contains(':')
    });
    set(
        c,
        "imagePullPolicy",
        json!(if latest { "Always" } else { "IfNotPresent" }),
    );
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter(|p| p.is_object()) {
            set(p, "protocol", json!("TCP"));
        }
    }
    for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = object(c, kind) {
            probe(p);
        }
    }
}

/// Upstream's `SetDefaults_Service`: the type, session affinity, traffic
/// policies, and each port's protocol and target port.
fn service_spec(spec: &mut Value) {
    set(spec, "type", json!("ClusterIP"));
    set(spec, "sessionAffinity", json!("None"));
    let kind = spec["type"].as_str().unwrap_or_default().to_owned();
    if kind != "ExternalName" {
        set(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        set(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter(|p| p.is_object()) {
            set(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set(p, "targetPort", port);
            }
        }
    }
}

/// Upstream's `SetDefaults_Probe` and `SetDefaults_HTTPGetAction`.
fn probe(p: &mut Value) {
    for (field, value) in [
        ("timeoutSeconds", 1),
        ("periodSeconds", 10),
        ("successThreshold", 1),
        ("failureThreshold", 3),
    ] {
        if p.get(field).and_then(Value::as_i64).is_none_or(|v| v == 0)
            && let Some(o) = p.as_object_mut()
        {
            o.insert(field.to_owned(), json!(value));
        }
    }
    if let Some(h) = object(p, "httpGet") {
        set(h, "path", json!("/"));
        set(h, "scheme", json!("HTTP"));
    }
}

/// `strategy.rollingUpdate.<field>`, when absent.
fn rolling_update(strategy: &mut Value, field: &str, value: Value) {
    set(strategy, "rollingUpdate", json!({}));
    if let Some(r) = object(strategy, "rollingUpdate") {
        set(r, field, value);
    }
}

/// `obj[field]` when it is an object.
fn object<'a>(obj: &'a mut Value, field: &str) -> Option<&'a mut Value> {
    obj.get_mut(field).filter(|v| v.is_object())
}

/// Sets `obj[field]` when it is absent, null or an empty string (Go's "unset").
fn set(obj: &mut Value, field: &str, value: Value) {
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    match o.get(field) {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(_) => return,
    }
    if !value.is_null() {
        o.insert(field.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    fn defaulted(group: &str, plural: &str, mut obj: Value) -> Value {
        apply(find(group, "v1", plural).unwrap(), &mut obj);
        obj
    }

    #[test]
    fn services_get_upstreams_type_affinity_and_ports() {
        let svc = defaulted(
            "",
            "services",
            json!({"spec": {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}]}}),
        );
        assert_eq!(
            svc["spec"],
            json!({"type": "ClusterIP", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80},
                          {"port": 53, "protocol": "UDP", "targetPort": "dns"}]})
        );
    }

    #[test]
    fn probes_get_upstreams_timings_and_http_scheme() {
        let pod = defaulted(
            "",
            "pods",
            json!({"spec": {"containers": [{"name": "c", "image": "i:1",
                "readinessProbe": {"httpGet": {"port": 80}, "periodSeconds": 2},
                "livenessProbe": {"exec": {"command": ["true"]}}}]}}),
        );
        let c = &pod["spec"]["containers"][0];
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "periodSeconds": 2,
                "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3})
        );
        assert_eq!(c["livenessProbe"]["periodSeconds"], 10);
    }

    #[test]
    fn an_empty_deployment_strategy_becomes_a_rolling_update() {
        let d = defaulted(
            "apps",
            "deployments",
            json!({"spec": {"strategy": {}, "template": {"spec": {"containers": [{"name": "c", "image": "nginx", "imagePullPolicy": "", "ports": [{"containerPort": 80}]}]}}}}),
        );
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(d["spec"]["replicas"], 1);
        // Recreate gets no rollingUpdate.
        let d = defaulted(
            "apps",
            "deployments",
            json!({"spec": {"strategy": {"type": "Recreate"}}}),
        );
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn a_job_gets_its_selector_and_pod_labels() {
        let j = defaulted(
            "batch",
            "jobs",
            json!({"metadata": {"name": "once", "uid": "u1"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1"}]}}}}),
        );
        assert_eq!(
            j["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}})
        );
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/job-name"],
            "once"
        );
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(
            j["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        // A manual selector is left alone.
        let j = defaulted(
            "batch",
            "jobs",
            json!({"metadata": {"name": "m", "uid": "u2"}, "spec": {"manualSelector": true, "selector": {"matchLabels": {"a": "b"}}}}),
        );
        assert_eq!(j["spec"]["selector"], json!({"matchLabels": {"a": "b"}}));
    }

    #[test]
    fn string_data_is_merged_into_data() {
        let s = defaulted(
            "",
            "secrets",
            json!({"data": {"a": "eA==", "b": "eQ=="}, "stringData": {"b": "s3cr3t"}}),
        );
        assert_eq!(
            s,
            json!({"type": "Opaque", "data": {"a": "eA==", "b": "czNjcjN0"}})
        );
    }

    #[test]
    fn wrong_types_are_left_for_validation() {
        for obj in [
            json!({"spec": 3}),
            json!({"spec": {"strategy": "x", "template": []}}),
            json!([]),
        ] {
            for (g, p) in [
                ("apps", "deployments"),
                ("apps", "statefulsets"),
                ("apps", "daemonsets"),
                ("batch", "jobs"),
                ("", "pods"),
            ] {
                defaulted(g, p, obj.clone());
            }
        }
    }
}
