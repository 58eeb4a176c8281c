//! What objects count against a ResourceQuota, one definition for the API
//! server's admission (which charges a new object) and the quota controller
//! (which recomputes usage from what exists).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::quantity::milli;

/// What a new object adds to the resources a quota can track, in thousandths
/// (`sextant_apimachinery::quantity::milli`).
pub fn usage(group: &str, plural: &str, obj: &Value) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let qualified = if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    };
    out.insert(format!("count/{qualified}"), 1000);
    if group.is_empty()
        && matches!(
            plural,
            "pods"
                | "services"
                | "configmaps"
                | "secrets"
                | "persistentvolumeclaims"
                | "replicationcontrollers"
                | "resourcequotas"
        )
    {
        out.insert(plural.to_owned(), 1000);
    }
    if group.is_empty() && plural == "pods" {
        for field in ["requests", "limits"] {
            for res in ["cpu", "memory", "ephemeral-storage"] {
                // Init containers run one at a time: the pod needs their maximum.
                let sum: i64 = obj["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["resources"][field][res].as_str().and_then(milli))
                    .sum();
                let init = obj["spec"]["initContainers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["resources"][field][res].as_str().and_then(milli))
                    .max()
                    .unwrap_or(0);
                let total = sum.max(init);
                out.insert(format!("{field}.{res}"), total);
                if field == "requests" {
                    out.insert(res.to_owned(), total);
                }
            }
        }
    }
    if group.is_empty() && plural == "persistentvolumeclaims" {
        let storage = obj["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .and_then(milli)
            .unwrap_or(0);
        out.insert("requests.storage".into(), storage);
    }
    if group.is_empty() && plural == "services" {
        let kind = obj["spec"]["type"].as_str().unwrap_or("ClusterIP");
        out.insert(
            "services.nodeports".into(),
            if kind == "NodePort" || kind == "LoadBalancer" {
                1000
            } else {
                0
            },
        );
        out.insert(
            "services.loadbalancers".into(),
            if kind == "LoadBalancer" { 1000 } else { 0 },
        );
    }
    out
}

/// The objects (group, plural) whose usage makes up the quota resource `key`
/// (`pods`, `requests.cpu`, `count/deployments.apps`, ...).
pub fn source_of(key: &str) -> Option<(String, String)> {
    let core = |p: &str| Some((String::new(), p.to_owned()));
    match key {
        "pods" | "cpu" | "memory" | "ephemeral-storage" => core("pods"),
        k if k.starts_with("requests.") && k != "requests.storage" => core("pods"),
        k if k.starts_with("limits.") => core("pods"),
        "requests.storage" => core("persistentvolumeclaims"),
        "services.nodeports" | "services.loadbalancers" => core("services"),
        "services"
        | "configmaps"
        | "secrets"
        | "persistentvolumeclaims"
        | "replicationcontrollers"
        | "resourcequotas" => core(key),
        k => {
            let counted = k.strip_prefix("count/")?;
            match counted.split_once('.') {
                Some((plural, group)) => Some((group.to_owned(), plural.to_owned())),
                None => core(counted),
            }
        }
    }
}

/// Whether a pod no longer counts (it finished).
pub fn is_terminal_pod(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pods_count_their_containers_and_the_largest_init_container() {
        let pod = json!({"spec": {
            "containers": [{"resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "1"}}},
                           {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}],
            "initContainers": [{"resources": {"requests": {"cpu": "2"}}}],
        }});
        let u = usage("", "pods", &pod);
        assert_eq!(u["pods"], 1000);
        assert_eq!(u["count/pods"], 1000);
        assert_eq!(u["requests.cpu"], 2000);
        assert_eq!(u["cpu"], 2000);
        assert_eq!(u["limits.cpu"], 1000);
        assert_eq!(u["requests.memory"], 64 * 1024 * 1024 * 1000);
        assert_eq!(
            source_of("count/deployments.apps"),
            Some(("apps".into(), "deployments".into()))
        );
        assert_eq!(
            source_of("requests.storage"),
            Some((String::new(), "persistentvolumeclaims".into()))
        );
        assert_eq!(
            source_of("limits.memory"),
            Some((String::new(), "pods".into()))
        );
    }
}
