//! The rules by which a pod fits a node, shared by the scheduler, the DaemonSet
//! controller and (later) kubelet admission, as upstream keeps them in
//! `component-helpers/scheduling`: nodeSelector and node affinity (with
//! `matchFields` on `metadata.name`), and taint tolerations.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};

/// Whether `tolerations` tolerate `taint` (key, value by operator, effect).
pub fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == taint.key,
        };
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        };
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        key_ok && value_ok && effect_ok
    })
}

/// `matchExpressions` of a node selector term against the node's labels, and
/// its `matchFields` (only `metadata.name` exists) against the node's name —
/// how DaemonSet pods name their node.
fn term_matches(
    term: &k8s_openapi::api::core::v1::NodeSelectorTerm,
    labels: &BTreeMap<String, String>,
    node_name: &str,
) -> bool {
    let fields_ok = term.match_fields.iter().flatten().all(|f| {
        let values = f.values.as_deref().unwrap_or_default();
        let listed = f.key == "metadata.name" && values.iter().any(|v| v == node_name);
        match f.operator.as_str() {
            "In" => listed,
            "NotIn" => !listed,
            _ => false,
        }
    });
    fields_ok
        && term.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            crate::labels::requirement_matches(&e.operator, labels.get(&e.key), values)
        })
}

/// The node's labels, borrowed (these rules run for every node in every
/// scheduling cycle).
fn labels_of(node: &Node) -> &BTreeMap<String, String> {
    static NONE: BTreeMap<String, String> = BTreeMap::new();
    node.metadata.labels.as_ref().unwrap_or(&NONE)
}

/// Whether the pod tolerates every NoSchedule and NoExecute taint of the node.
pub fn tolerates_taints(pod: &Pod, node: &Node) -> bool {
    tolerates_taints_with_effect(pod, node, &["NoSchedule", "NoExecute"])
}

/// Whether the pod tolerates every taint of the node with one of `effects`;
/// NoExecute alone decides whether a pod already bound may keep running.
pub fn tolerates_taints_with_effect(pod: &Pod, node: &Node, effects: &[&str]) -> bool {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .all(|t| tolerates(tolerations, t))
}

/// Whether the pod's nodeSelector and required node affinity admit the node.
pub fn affinity_matches(pod: &Pod, node: &Node) -> bool {
    let labels = labels_of(node);
    let Some(spec) = &pod.spec else {
        return true;
    };
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok = required.is_none_or(|r| node_selector_matches(r, node));
    selector_ok && affinity_ok
}

/// Whether any term of a required node selector (a pod's node affinity, a
/// PersistentVolume's nodeAffinity) admits the node.
pub fn node_selector_matches(
    selector: &k8s_openapi::api::core::v1::NodeSelector,
    node: &Node,
) -> bool {
    let labels = labels_of(node);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    selector
        .node_selector_terms
        .iter()
        .any(|t| term_matches(t, labels, name))
}

/// The weight of the preferred node affinity terms the node matches.
pub fn preferred_affinity(pod: &Pod, node: &Node) -> i64 {
    let labels = labels_of(node);
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|terms| {
            terms
                .iter()
                .filter(|t| {
                    term_matches(
                        &t.preference,
                        labels,
                        node.metadata.name.as_deref().unwrap_or_default(),
                    )
                })
                .map(|t| i64::from(t.weight))
                .sum()
        })
        .unwrap_or(0)
}
