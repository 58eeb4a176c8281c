//! The filters and scores that look at where other pods are, by topology
//! domain (the nodes sharing a value of a label such as
//! `kubernetes.io/hostname` or `topology.kubernetes.io/zone`), as upstream's
//! InterPodAffinity and PodTopologySpread plugins:
//!
//! - required pod affinity: the node's domain must hold a pod matching each
//!   term (or no pod matches anywhere and the pod matches its own term: the
//!   first of a group may go anywhere);
//! - required pod anti-affinity: the node's domain must hold no pod matching
//!   a term, and no pod already there may have an anti-affinity term matching
//!   the incoming pod (upstream's symmetry);
//! - topology spread (`DoNotSchedule`): placing the pod must keep
//!   `count(domain) + 1 - min(count over domains) <= maxSkew`, domains being
//!   those of the nodes the pod's node affinity admits; a node without the key
//!   is rejected;
//! - scores: preferred (anti-)affinity weights, and fewer matching pods in the
//!   domain for `ScheduleAnyway` spread constraints.
//!
//! Terms select pods in the pod's own namespace, in `namespaces`, or in every
//! namespace with an empty `namespaceSelector` (a non-empty one is matched
//! against nothing: the scheduler has no namespace labels at hand).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Pod, PodAffinityTerm, TopologySpreadConstraint},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::ResourceExt;
use sextant_apimachinery::scheduling::affinity_matches;

use crate::filters::NodeInfo;

/// Whether the pod or any placed pod has terms that this module evaluates
/// (most pods have none, and the cycle skips the work).
pub fn applies(pod: &Pod, nodes: &[NodeInfo]) -> bool {
    let spec = pod.spec.as_ref();
    let own = spec.is_some_and(|s| {
        s.affinity
            .as_ref()
            .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
            || s.topology_spread_constraints
                .as_ref()
                .is_some_and(|c| !c.is_empty())
    });
    own || nodes
        .iter()
        .flat_map(|n| n.placed.iter())
        .any(|p| !required_anti_affinity(p).is_empty())
}

/// A term's or constraint's selector; a missing one matches nothing, as upstream.
fn selector_matches(s: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    s.is_some_and(|s| sextant_apimachinery::labels::matches(s, labels))
}

/// Whether `other` is selected by `term` of a pod in namespace `ns`.
fn term_selects(term: &PodAffinityTerm, ns: &str, other: &Pod) -> bool {
    let other_ns = other.namespace().unwrap_or_default();
    let in_scope = match (&term.namespaces, &term.namespace_selector) {
        (_, Some(sel))
            if sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                && sel.match_expressions.as_ref().is_none_or(Vec::is_empty) =>
        {
            true
        }
        (Some(list), _) if !list.is_empty() => list.contains(&other_ns),
        (_, Some(_)) => false,
        _ => other_ns == ns,
    };
    in_scope && selector_matches(term.label_selector.as_ref(), other.labels())
}

fn domain<'a>(info: &'a NodeInfo, key: &str) -> Option<&'a String> {
    info.node.metadata.labels.as_ref()?.get(key)
}

fn required_affinity(p: &Pod) -> Vec<PodAffinityTerm> {
    p.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .clone()
        })
        .unwrap_or_default()
}

fn required_anti_affinity(p: &Pod) -> Vec<PodAffinityTerm> {
    p.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .clone()
        })
        .unwrap_or_default()
}

/// The pods in `info`'s domain of `key` (every node with the same value).
fn in_domain<'a>(info: &NodeInfo, key: &str, nodes: &'a [NodeInfo]) -> Vec<&'a Pod> {
    let Some(value) = domain(info, key) else {
        return Vec::new();
    };
    nodes
        .iter()
        .filter(|n| domain(n, key) == Some(value))
        .flat_map(|n| n.placed.iter().map(|p| &**p))
        .collect()
}

/// Why inter-pod (anti-)affinity keeps `pod` off `info`'s node, in upstream's words.
pub fn affinity_reason(pod: &Pod, info: &NodeInfo, nodes: &[NodeInfo]) -> Option<String> {
    let ns = pod.namespace().unwrap_or_default();
    // Upstream's order: affinity, the pod's anti-affinity, then existing
    // pods' anti-affinity against it.
    for term in required_affinity(pod) {
        let here = in_domain(info, &term.topology_key, nodes)
            .iter()
            .any(|p| term_selects(&term, &ns, p));
        if here {
            continue;
        }
        let anywhere = nodes
            .iter()
            .flat_map(|n| n.placed.iter())
            .any(|p| term_selects(&term, &ns, p));
        let first_of_group = !anywhere
            && term_selects(&term, &ns, pod)
            && domain(info, &term.topology_key).is_some();
        if !first_of_group {
            return Some("node(s) didn't match pod affinity rules".into());
        }
    }
    for term in required_anti_affinity(pod) {
        if in_domain(info, &term.topology_key, nodes)
            .iter()
            .any(|p| term_selects(&term, &ns, p))
        {
            return Some("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    // Existing pods' anti-affinity against this pod.
    for other in nodes.iter().flat_map(|n| n.placed.iter()) {
        let other_ns = other.namespace().unwrap_or_default();
        for term in required_anti_affinity(other) {
            if !term_selects(&term, &other_ns, pod) {
                continue;
            }
            let home = nodes.iter().find(|n| {
                n.placed
                    .iter()
                    .any(|p| p.metadata.uid == other.metadata.uid)
            });
            let same = home.and_then(|h| domain(h, &term.topology_key));
            if same.is_some() && same == domain(info, &term.topology_key) {
                return Some("node(s) didn't satisfy existing pods anti-affinity rules".into());
            }
        }
    }
    None
}

fn constraints(pod: &Pod) -> Vec<TopologySpreadConstraint> {
    pod.spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.clone())
        .unwrap_or_default()
}

/// Matching pods per domain of `c.topologyKey`, over the nodes the pod's node
/// affinity admits (upstream's default `nodeAffinityPolicy: Honor`).
fn counts(pod: &Pod, c: &TopologySpreadConstraint, nodes: &[NodeInfo]) -> BTreeMap<String, i64> {
    let ns = pod.namespace().unwrap_or_default();
    let mut out = BTreeMap::new();
    for n in nodes.iter().filter(|n| affinity_matches(pod, &n.node)) {
        let Some(value) = domain(n, &c.topology_key) else {
            continue;
        };
        let matching = n
            .placed
            .iter()
            .filter(|p| {
                p.namespace().unwrap_or_default() == ns
                    && p.metadata.deletion_timestamp.is_none()
                    && selector_matches(c.label_selector.as_ref(), p.labels())
            })
            .count();
        *out.entry(value.clone()).or_insert(0) += i64::try_from(matching).unwrap_or(i64::MAX);
    }
    out
}

/// Why `DoNotSchedule` spread constraints keep `pod` off `info`'s node.
pub fn spread_reason(pod: &Pod, info: &NodeInfo, nodes: &[NodeInfo]) -> Option<String> {
    for c in constraints(pod)
        .iter()
        .filter(|c| c.when_unsatisfiable == "DoNotSchedule")
    {
        let Some(value) = domain(info, &c.topology_key) else {
            return Some(
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .into(),
            );
        };
        let counts = counts(pod, c, nodes);
        let min = counts.values().copied().min().unwrap_or(0);
        let here = counts.get(value).copied().unwrap_or(0);
        if here + 1 - min > i64::from(c.max_skew) {
            return Some("node(s) didn't match pod topology spread constraints".into());
        }
    }
    None
}

/// Higher is better: preferred (anti-)affinity weights met in the node's
/// domain, and fewer matching pods there for `ScheduleAnyway` constraints.
pub fn score(pod: &Pod, info: &NodeInfo, nodes: &[NodeInfo]) -> i64 {
    let ns = pod.namespace().unwrap_or_default();
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let mut total = 0;
    let preferred = affinity
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .clone()
        })
        .unwrap_or_default();
    for w in preferred {
        let t = &w.pod_affinity_term;
        if in_domain(info, &t.topology_key, nodes)
            .iter()
            .any(|p| term_selects(t, &ns, p))
        {
            total += i64::from(w.weight);
        }
    }
    let avoided = affinity
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .clone()
        })
        .unwrap_or_default();
    for w in avoided {
        let t = &w.pod_affinity_term;
        if in_domain(info, &t.topology_key, nodes)
            .iter()
            .any(|p| term_selects(t, &ns, p))
        {
            total -= i64::from(w.weight);
        }
    }
    for c in constraints(pod)
        .iter()
        .filter(|c| c.when_unsatisfiable == "ScheduleAnyway")
    {
        if let Some(value) = domain(info, &c.topology_key) {
            total -= 10 * counts(pod, c, nodes).get(value).copied().unwrap_or(0);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn node(name: &str, zone: &str, placed: &[Pod]) -> NodeInfo {
        NodeInfo {
            node: Arc::new(
                serde_json::from_value::<k8s_openapi::api::core::v1::Node>(
                    json!({"metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}}}),
                )
                .unwrap(),
            ),
            placed: placed.iter().cloned().map(Arc::new).collect(),
            ..Default::default()
        }
    }

    fn pod(name: &str, labels: serde_json::Value, spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c"}]);
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": name, "labels": labels},
            "spec": spec,
        }))
        .unwrap()
    }

    fn term(key: &str, app: &str) -> serde_json::Value {
        json!({"topologyKey": key, "labelSelector": {"matchLabels": {"app": app}}})
    }

    #[test]
    fn anti_affinity_keeps_replicas_apart_both_ways() {
        let web = |n: &str| {
            pod(
                n,
                json!({"app": "web"}),
                json!({"affinity": {"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [term("kubernetes.io/hostname", "web")]}}}),
            )
        };
        let nodes = vec![node("a", "z1", &[web("w1")]), node("b", "z1", &[])];
        assert!(affinity_reason(&web("w2"), &nodes[0], &nodes).is_some());
        assert!(affinity_reason(&web("w2"), &nodes[1], &nodes).is_none());
        // Symmetry: a plain pod labelled app=web may not join w1 either.
        let plain = pod("p", json!({"app": "web"}), json!({}));
        assert_eq!(
            affinity_reason(&plain, &nodes[0], &nodes).as_deref(),
            Some("node(s) didn't satisfy existing pods anti-affinity rules")
        );
    }

    #[test]
    fn affinity_follows_the_group_but_lets_the_first_go_anywhere() {
        let cache = pod("c1", json!({"app": "cache"}), json!({}));
        let nodes = vec![
            node("a", "z1", &[cache]),
            node("b", "z2", &[]),
            node("c", "z1", &[]),
        ];
        let near = pod(
            "n",
            json!({}),
            json!({"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [term("topology.kubernetes.io/zone", "cache")]}}}),
        );
        assert!(affinity_reason(&near, &nodes[0], &nodes).is_none());
        assert!(
            affinity_reason(&near, &nodes[2], &nodes).is_none(),
            "same zone"
        );
        assert!(affinity_reason(&near, &nodes[1], &nodes).is_some());
        let first = pod(
            "f",
            json!({"app": "db"}),
            json!({"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [term("kubernetes.io/hostname", "db")]}}}),
        );
        assert!(affinity_reason(&first, &nodes[1], &nodes).is_none());
    }

    #[test]
    fn spread_limits_the_skew_between_domains() {
        let spread = |max_skew: i32, when: &str| {
            pod(
                "s",
                json!({"app": "s"}),
                json!({"topologySpreadConstraints": [{
                "maxSkew": max_skew, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": when, "labelSelector": {"matchLabels": {"app": "s"}}}]}),
            )
        };
        let s = |n: &str| pod(n, json!({"app": "s"}), json!({}));
        let nodes = vec![
            node("a", "z1", &[s("1"), s("2")]),
            node("b", "z2", &[s("3")]),
        ];
        assert!(spread_reason(&spread(1, "DoNotSchedule"), &nodes[0], &nodes).is_some());
        assert!(spread_reason(&spread(1, "DoNotSchedule"), &nodes[1], &nodes).is_none());
        assert!(spread_reason(&spread(2, "DoNotSchedule"), &nodes[0], &nodes).is_none());
        assert!(spread_reason(&spread(1, "ScheduleAnyway"), &nodes[0], &nodes).is_none());
        assert!(
            score(&spread(1, "ScheduleAnyway"), &nodes[1], &nodes)
                > score(&spread(1, "ScheduleAnyway"), &nodes[0], &nodes)
        );
        let bare: NodeInfo = NodeInfo {
            node: Arc::new(
                serde_json::from_value::<k8s_openapi::api::core::v1::Node>(
                    json!({"metadata": {"name": "x"}}),
                )
                .unwrap(),
            ),
            ..Default::default()
        };
        assert!(
            spread_reason(&spread(1, "DoNotSchedule"), &bare, &nodes)
                .unwrap()
                .contains("missing required label")
        );
    }
}
