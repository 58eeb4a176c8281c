//! Preemption, as upstream's DefaultPreemption plugin in short: when a pod fits
//! nowhere, find a node where evicting pods of lower priority makes room, and
//! evict as few and as unimportant ones as possible.
//!
//! Only nodes rejected for resources (`Insufficient cpu|memory`, `Too many
//! pods`) are candidates — taints, affinity or ports do not go away by
//! evicting. On each, all lower-priority pods are taken away, then each is
//! given back (highest priority first) if the pod still fits without evicting
//! it (upstream's reprieve). The node whose most
//! important victim is least important wins, then the one with fewest victims.
//! Pods with `preemptionPolicy: Never` never preempt.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::filters::{self, NodeInfo};

/// A pod's priority (0 when admission gave it none).
pub fn priority(p: &Pod) -> i32 {
    p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Whether `pod` may preempt others at all.
pub fn may_preempt(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        != Some("Never")
}

/// Where to preempt, and whom.
#[derive(Debug)]
pub struct Candidate {
    /// The node's name.
    pub node: String,
    /// The pods to evict.
    pub victims: Vec<Arc<Pod>>,
}

fn resource_reason(r: &str) -> bool {
    r.starts_with("Insufficient ") || r == "Too many pods"
}

/// `info` without `gone`'s requests and pods.
fn without(info: &NodeInfo, gone: &[Arc<Pod>]) -> NodeInfo {
    let mut out = info.clone();
    for p in gone {
        let (cpu, memory) = filters::requests(p);
        out.cpu_requested -= cpu;
        out.memory_requested -= memory;
        out.pods -= 1;
        out.placed.retain(|x| x.metadata.uid != p.metadata.uid);
    }
    out
}

/// The victims on one node, if evicting some lower-priority pods there lets
/// `pod` fit: all of them removed, then each given back, most important first,
/// while the pod still fits (upstream's reprieve).
fn victims_on(pod: &Pod, info: &NodeInfo) -> Option<Vec<Arc<Pod>>> {
    let mine = priority(pod);
    let mut lower: Vec<Arc<Pod>> = info
        .placed
        .iter()
        .filter(|p| priority(p) < mine && p.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();
    if lower.is_empty() || !filters::reasons(pod, &without(info, &lower)).is_empty() {
        return None;
    }
    lower.sort_by_key(|p| std::cmp::Reverse(priority(p)));
    let mut victims = lower.clone();
    for candidate in &lower {
        let fewer: Vec<Arc<Pod>> = victims
            .iter()
            .filter(|v| v.metadata.uid != candidate.metadata.uid)
            .cloned()
            .collect();
        if filters::reasons(pod, &without(info, &fewer)).is_empty() {
            victims = fewer;
        }
    }
    Some(victims)
}

/// The best node to preempt on, among `rejected` (index into `infos`, reasons).
pub fn find(pod: &Pod, infos: &[NodeInfo], rejected: &[(usize, Vec<String>)]) -> Option<Candidate> {
    if !may_preempt(pod) {
        return None;
    }
    rejected
        .iter()
        .filter(|(_, reasons)| !reasons.is_empty() && reasons.iter().all(|r| resource_reason(r)))
        .filter_map(|(i, _)| {
            let info = infos.get(*i)?;
            let victims = victims_on(pod, info)?;
            Some(Candidate {
                node: info.node.name_any(),
                victims,
            })
        })
        .min_by_key(|c| {
            let top = c
                .victims
                .iter()
                .map(|v| priority(v))
                .max()
                .unwrap_or(i32::MIN);
            (top, c.victims.len())
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, cpu: &str, priority: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": name},
            "spec": {"priority": priority, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
        }))
        .unwrap()
    }

    fn node(name: &str, placed: &[Pod]) -> NodeInfo {
        let placed: Vec<Arc<Pod>> = placed.iter().cloned().map(Arc::new).collect();
        let cpu = placed.iter().map(|p| filters::requests(p).0).sum();
        NodeInfo {
            node: Arc::new(
                serde_json::from_value::<k8s_openapi::api::core::v1::Node>(json!({
                    "metadata": {"name": name},
                    "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                               "conditions": [{"type": "Ready", "status": "True"}]},
                }))
                .unwrap(),
            ),
            cpu_requested: cpu,
            pods: i64::try_from(placed.len()).unwrap(),
            placed,
            ..Default::default()
        }
    }

    #[test]
    fn the_least_important_fewest_victims_are_chosen() {
        let infos = vec![
            node("a", &[pod("a1", "1", 100), pod("a2", "1", 5)]),
            node(
                "b",
                &[
                    pod("b1", "500m", 1),
                    pod("b2", "500m", 1),
                    pod("b3", "1", 1),
                ],
            ),
            node("c", &[pod("c1", "2", 2000)]),
        ];
        let rejected: Vec<(usize, Vec<String>)> = (0..3)
            .map(|i| (i, vec!["Insufficient cpu".to_owned()]))
            .collect();
        let incoming = pod("new", "1", 1000);
        let c = find(&incoming, &infos, &rejected).unwrap();
        // b's victims have priority 1 (a's would be 5); one 1-CPU pod is enough.
        assert_eq!(c.node, "b");
        let names: Vec<String> = c.victims.iter().map(|v| v.name_any()).collect();
        assert_eq!(names, ["b3"]);
        // Nothing of lower priority to make room with.
        assert!(find(&pod("low", "1", 0), &infos, &rejected).is_none());
        // Taints are not preempted away.
        let tainted = vec![(1, vec!["node(s) had untolerated taint {gpu: }".to_owned()])];
        assert!(find(&incoming, &infos, &tainted).is_none());
    }
}
