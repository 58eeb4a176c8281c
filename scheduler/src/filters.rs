//! The filters of a scheduling cycle — which nodes can take a pod — with
//! upstream's wording for each reason a node is rejected, so FailedScheduling
//! reads like kube-scheduler's ("0/3 nodes are available: 3 Insufficient cpu.").

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use sextant_apimachinery::{
    quantity,
    scheduling::{affinity_matches, tolerates},
};

pub use sextant_apimachinery::scheduling::{preferred_affinity, tolerates_taints};

/// A node with what is already placed on it.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    /// The Node (shared with the cache: a cycle looks at every node).
    pub node: std::sync::Arc<Node>,
    /// CPU requested by its pods, in millicores.
    pub cpu_requested: i64,
    /// Memory requested by its pods, in bytes.
    pub memory_requested: i64,
    /// How many pods it runs.
    pub pods: i64,
    /// Host ports in use: (protocol, port).
    pub host_ports: HashSet<(String, i32)>,
    /// Pods on it per owner uid (for spreading).
    pub by_owner: BTreeMap<String, i64>,
    /// The pods on it (bound or assumed), for inter-pod affinity and spreading.
    pub placed: Vec<std::sync::Arc<Pod>>,
}

/// A pod's total requests: (millicores, bytes). Init containers count by their
/// maximum, as upstream computes effective requests.
pub fn requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = &pod.spec else {
        return (0, 0);
    };
    let of =
        |c: &k8s_openapi::api::core::v1::Container, name: &str, parse: fn(&str) -> Option<i64>| {
            c.resources
                .as_ref()
                .and_then(|r| {
                    r.requests
                        .as_ref()
                        .and_then(|m| m.get(name))
                        .or(r.limits.as_ref().and_then(|m| m.get(name)))
                })
                .and_then(|q| parse(&q.0))
                .unwrap_or(0)
        };
    let sum = |name: &str, parse: fn(&str) -> Option<i64>| -> i64 {
        spec.containers.iter().map(|c| of(c, name, parse)).sum()
    };
    let max_init = |name: &str, parse: fn(&str) -> Option<i64>| -> i64 {
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| of(c, name, parse))
            .max()
            .unwrap_or(0)
    };
    (
        sum("cpu", quantity::millicores).max(max_init("cpu", quantity::millicores)),
        sum("memory", quantity::bytes).max(max_init("memory", quantity::bytes)),
    )
}

/// A node's allocatable (millicores, bytes, pods).
pub fn allocatable(node: &Node) -> (i64, i64, i64) {
    let a = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let get = |name: &str, parse: fn(&str) -> Option<i64>| {
        a.and_then(|m| m.get(name))
            .and_then(|q| parse(&q.0))
            .unwrap_or(0)
    };
    (
        get("cpu", quantity::millicores),
        get("memory", quantity::bytes),
        get("pods", |s| s.parse().ok()),
    )
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why `info`'s node cannot take `pod`, in upstream's words (empty when it fits).
/// As kube-scheduler, the filters run in its plugin order (NodeUnschedulable,
/// TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit) and the first
/// that rejects the node gives the reasons.
pub fn reasons(pod: &Pod, info: &NodeInfo) -> Vec<String> {
    let node = &info.node;
    // Borrowed, not cloned: this runs for every node in every cycle.
    let no_spec = k8s_openapi::api::core::v1::PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&no_spec);
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerates(tolerations, &taint) {
            return vec!["node(s) were unschedulable".to_owned()];
        }
    }
    let mut taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    if !ready(node) {
        taints.push(Taint {
            key: "node.kubernetes.io/not-ready".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
    }
    if let Some(t) = taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerates(tolerations, t))
    {
        return vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or("")
        )];
    }
    if !affinity_matches(pod, node) {
        return vec!["node(s) didn't match Pod's node affinity/selector".to_owned()];
    }
    let wanted: Vec<(String, i32)> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            p.host_port
                .filter(|hp| *hp > 0)
                .map(|hp| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), hp))
        })
        .collect();
    if wanted.iter().any(|p| info.host_ports.contains(p)) {
        return vec!["node(s) didn't have free ports for the requested pod ports".to_owned()];
    }
    // NodeResourcesFit reports every resource that is short.
    let mut out = Vec::new();
    let (cpu, memory) = requests(pod);
    let (cpu_alloc, memory_alloc, pods_alloc) = allocatable(node);
    if info.pods + 1 > pods_alloc {
        out.push("Too many pods".to_owned());
    }
    if cpu > 0 && info.cpu_requested + cpu > cpu_alloc {
        out.push("Insufficient cpu".to_owned());
    }
    if memory > 0 && info.memory_requested + memory > memory_alloc {
        out.push("Insufficient memory".to_owned());
    }
    out
}

/// kube-scheduler's FailedScheduling message from each rejected node's reasons.
pub fn failed_message(total: usize, rejected: &[Vec<String>]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for reasons in rejected {
        for r in reasons {
            *counts.entry(r.as_str()).or_default() += 1;
        }
    }
    // Sorted as whole "<count> <reason>" strings, as upstream sorts them.
    let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    let detail = if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join(", "))
    };
    format!(
        "0/{total} nodes are available{detail}. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling."
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(v: serde_json::Value) -> NodeInfo {
        let mut n = json!({
            "metadata": {"name": "n1", "labels": {"disk": "ssd"}},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]},
        });
        if let (Some(base), Some(extra)) = (n.as_object_mut(), v.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        NodeInfo {
            node: std::sync::Arc::new(serde_json::from_value(n).unwrap()),
            ..Default::default()
        }
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn resources_taints_selectors_and_ports() {
        let small = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]}),
        );
        assert!(reasons(&small, &node(json!({}))).is_empty());
        let big =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "3"}}}]}));
        assert_eq!(reasons(&big, &node(json!({}))), ["Insufficient cpu"]);
        let mut busy = node(json!({}));
        busy.memory_requested = 4 * 1024 * 1024 * 1024;
        assert_eq!(reasons(&small, &busy), ["Insufficient memory"]);

        let tainted = node(
            json!({"spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            reasons(&small, &tainted),
            ["node(s) had untolerated taint {gpu: yes}"]
        );
        let tolerant = pod(
            json!({"containers": [{"name": "c"}], "tolerations": [{"key": "gpu", "operator": "Exists"}]}),
        );
        assert!(reasons(&tolerant, &tainted).is_empty());

        let cordoned = node(json!({"spec": {"unschedulable": true}}));
        assert_eq!(reasons(&small, &cordoned), ["node(s) were unschedulable"]);

        let picky = pod(json!({"containers": [{"name": "c"}], "nodeSelector": {"disk": "hdd"}}));
        assert_eq!(
            reasons(&picky, &node(json!({}))),
            ["node(s) didn't match Pod's node affinity/selector"]
        );
        let affine = pod(
            json!({"containers": [{"name": "c"}], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}}}),
        );
        assert!(reasons(&affine, &node(json!({}))).is_empty());

        let ported = pod(
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
        );
        let mut taken = node(json!({}));
        taken.host_ports.insert(("TCP".into(), 8080));
        assert_eq!(
            reasons(&ported, &taken),
            ["node(s) didn't have free ports for the requested pod ports"]
        );

        let not_ready = node(
            json!({"status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "False"}]}}),
        );
        assert_eq!(
            reasons(&small, &not_ready),
            ["node(s) had untolerated taint {node.kubernetes.io/not-ready: }"]
        );
    }

    #[test]
    fn the_failed_message_reads_like_upstream() {
        let r = vec![vec!["Insufficient cpu".to_owned()]; 3];
        assert_eq!(
            failed_message(3, &r),
            "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
    }
}
