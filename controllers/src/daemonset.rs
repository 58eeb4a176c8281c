//! The DaemonSet controller: one pod on every node the template admits, as
//! upstream's does:
//!
//! - a node is eligible when the pod's nodeSelector and required node affinity
//!   match it and the pod tolerates its NoSchedule/NoExecute taints (with the
//!   tolerations upstream adds to every daemon pod: not-ready, unreachable,
//!   pressure, unschedulable), judged by the scheduler's own filters;
//! - pods are placed by the scheduler through a required node affinity on
//!   `metadata.name` (upstream's way since 1.12), so resources are still checked;
//! - extra pods on a node and pods on ineligible nodes are deleted;
//! - `RollingUpdate` replaces pods of an old template at most `maxUnavailable`
//!   at a time (not-ready old pods first); `OnDelete` waits for deletions;
//! - ControllerRevisions record each template (`kubectl rollout history|undo ds`),
//!   pods carry `controller-revision-hash`; `revisionHistoryLimit` prunes them;
//! - status: desired/current/misscheduled/ready/updated/available/unavailable.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{
            Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
            Pod, Toleration,
        },
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use serde_json::{Value, json};
use sextant_apimachinery::scheduling as filters;

use crate::{
    Context, Error, Metrics,
    deployment::{resolve, template_hash},
    pods::{self, is_active, is_available, is_ready},
    retry_soon,
    revisions::{self, REVISION_HASH},
};

/// Runs the controller until its watches end. Node changes re-check every
/// DaemonSet (a node appearing, being labelled or tainted).
pub async fn run(client: Client, metrics: Metrics) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    let controller = Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client.clone()), watcher::Config::default());
    let daemonsets = controller.store();
    controller
        .watches(
            Api::<Node>::all(client),
            watcher::Config::default(),
            move |_node: Node| {
                daemonsets
                    .state()
                    .iter()
                    .map(|ds| ObjectRef::from_obj(&**ds))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, retry_soon, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.observe("daemonset", sync(&ds, &ctx)).await
}

/// The tolerations upstream's controller adds to every daemon pod.
fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// The pod the DaemonSet would run on `node` (without metadata it gets later).
fn pod_for_node(ds: &DaemonSet, ns: &str, node: &str, hash: &str) -> Pod {
    let spec = ds.spec.clone().unwrap_or_default();
    let owner = owner_ref(ds);
    let mut pod = pods::from_template(&spec.template, ns, &format!("{}-", ds.name_any()), &owner);
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_HASH.into(), hash.into());
    if let Some(ps) = pod.spec.as_mut() {
        let tolerations = ps.tolerations.get_or_insert_with(Vec::new);
        for t in daemon_tolerations() {
            if !tolerations
                .iter()
                .any(|x| x.key == t.key && x.effect == t.effect)
            {
                tolerations.push(t);
            }
        }
        // Replace any node-name term with this node, keep the rest of the affinity.
        let affinity = ps.affinity.get_or_insert_with(Affinity::default);
        let na = affinity
            .node_affinity
            .get_or_insert_with(NodeAffinity::default);
        let required = na
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_with(NodeSelector::default);
        let by_name = NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        };
        if required.node_selector_terms.is_empty() {
            required
                .node_selector_terms
                .push(NodeSelectorTerm::default());
        }
        for term in &mut required.node_selector_terms {
            term.match_fields = Some(vec![by_name.clone()]);
        }
    }
    pod
}

/// Whether a daemon pod should be placed on the node, and whether one already
/// there may stay. As upstream, only NoExecute taints remove a running pod: a
/// lost node is also tainted unreachable:NoSchedule, and its daemon pods stay.
fn placement(pod: &Pod, node: &Node) -> (bool, bool) {
    if !filters::affinity_matches(pod, node) {
        return (false, false);
    }
    (
        filters::tolerates_taints(pod, node),
        filters::tolerates_taints_with_effect(pod, node, &["NoExecute"]),
    )
}

/// The node a daemon pod is bound to, or the one its affinity names.
fn node_of(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

fn owner_ref(ds: &DaemonSet) -> OwnerReference {
    pods::controller_ref(
        "apps/v1",
        "DaemonSet",
        &ds.name_any(),
        &ds.uid().unwrap_or_default(),
    )
}

/// The name events are reported under, as upstream.
const CONTROLLER: &str = "daemonset-controller";

/// Deletes a daemon pod and says so.
async fn delete_pod(
    ctx: &Context,
    ds: &DaemonSet,
    api: &Api<Pod>,
    name: &str,
) -> Result<(), Error> {
    if pods::delete(api, name).await? {
        let note = format!("Deleted pod: {name}");
        ctx.event(CONTROLLER, ds, false, "SuccessfulDelete", note)
            .await;
    }
    Ok(())
}

async fn sync(ds: &DaemonSet, ctx: &Context) -> Result<Action, Error> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_else(|| "default".into());
    let spec = ds.spec.clone().unwrap_or_default();
    let template = serde_json::to_value(&spec.template).unwrap_or(Value::Null);
    let hash = template_hash(&template);
    let limit = spec.revision_history_limit.unwrap_or(10);
    revisions::record(
        &ctx.client,
        &ns,
        &owner_ref(ds),
        &spec.template,
        &hash,
        limit,
    )
    .await?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let owned = pods::claim(&pods_api, &owner_ref(ds), &spec.selector).await?;
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let min_ready = spec.min_ready_seconds.unwrap_or(0);

    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in owned.iter().filter(|p| is_active(p)) {
        if let Some(n) = node_of(p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let (mut desired, mut current, mut misscheduled) = (0i32, 0i32, 0i32);
    let (mut ready, mut available, mut updated) = (0i32, 0i32, 0i32);
    let mut old_pods: Vec<&Pod> = Vec::new();
    for node in &nodes {
        let name = node.name_any();
        let candidate = pod_for_node(ds, &ns, &name, &hash);
        let (eligible, may_stay) = placement(&candidate, node);
        let mut here = by_node.remove(&name).unwrap_or_default();
        if !eligible && may_stay && !here.is_empty() {
            misscheduled += 1;
            continue;
        }
        if !eligible {
            let bound = here
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                .count();
            misscheduled += i32::try_from(bound).unwrap_or(i32::MAX);
            for p in here {
                delete_pod(ctx, ds, &pods_api, &p.name_any()).await?;
            }
            continue;
        }
        desired += 1;
        if here.is_empty() {
            let created = pods_api.create(&PostParams::default(), &candidate).await?;
            let note = format!("Created pod: {}", created.name_any());
            ctx.event(CONTROLLER, ds, false, "SuccessfulCreate", note)
                .await;
            continue;
        }
        current += 1;
        // One pod per node: keep the oldest.
        here.sort_by_key(|p| p.meta().creation_timestamp.as_ref().map(|t| t.0));
        for extra in here.drain(1..) {
            delete_pod(ctx, ds, &pods_api, &extra.name_any()).await?;
        }
        let p = here[0];
        ready += i32::from(is_ready(p));
        available += i32::from(is_available(p, min_ready));
        if p.labels().get(REVISION_HASH) == Some(&hash) {
            updated += 1;
        } else {
            old_pods.push(p);
        }
    }
    // Pods on nodes that no longer exist.
    for p in by_node.values().flatten() {
        delete_pod(ctx, ds, &pods_api, &p.name_any()).await?;
    }

    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref() != Some("OnDelete") && !old_pods.is_empty() {
        let max_unavailable = resolve(
            strategy
                .rolling_update
                .as_ref()
                .and_then(|r| r.max_unavailable.as_ref()),
            desired,
            false,
            1,
        )
        .max(1);
        let mut unavailable = desired - available.min(desired);
        // Old pods that are not available anyway go first, then as many as the
        // budget allows.
        old_pods.sort_by_key(|p| is_available(p, min_ready));
        for p in old_pods {
            let counts = is_available(p, min_ready);
            if counts && unavailable >= max_unavailable {
                break;
            }
            delete_pod(ctx, ds, &pods_api, &p.name_any()).await?;
            if counts {
                unavailable += 1;
            }
        }
    }

    let status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "updatedNumberScheduled": updated,
        "numberAvailable": available,
        "numberUnavailable": desired - available.min(desired),
        "observedGeneration": ds.metadata.generation,
    });
    let existing = serde_json::to_value(&ds.status).unwrap_or(Value::Null);
    let changed = status
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| existing[k].as_i64().unwrap_or(0) != v.as_i64().unwrap_or(0));
    if changed {
        Api::<DaemonSet>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &ds.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await?;
    }
    // Readiness that needs minReadySeconds to pass is not a watch event.
    if ready > available && min_ready > 0 {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_pods_name_their_node_and_tolerate_node_conditions() {
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent", "uid": "u1"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}],
                             "nodeSelector": {"role": "edge"}},
                },
            },
        }))
        .unwrap();
        let pod = pod_for_node(&ds, "ns", "n1", "h1");
        assert_eq!(node_of(&pod).as_deref(), Some("n1"));
        assert_eq!(
            pod.labels().get(REVISION_HASH).map(String::as_str),
            Some("h1")
        );
        let node = |name: &str, labels: Value, taints: Value| -> Node {
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"taints": taints},
            }))
            .unwrap()
        };
        let edge = node(
            "n1",
            json!({"role": "edge"}),
            json!([
                {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}
            ]),
        );
        assert!(filters::affinity_matches(&pod, &edge) && filters::tolerates_taints(&pod, &edge));
        let other = node("n2", json!({"role": "edge"}), json!([]));
        assert!(!filters::affinity_matches(&pod, &other), "the pod names n1");
        let tainted = node(
            "n1",
            json!({"role": "edge"}),
            json!([
                {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
            ]),
        );
        assert_eq!(
            placement(&pod, &tainted),
            (false, true),
            "stays, not placed"
        );
        let lost = node(
            "n1",
            json!({"role": "edge"}),
            json!([
                {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
            ]),
        );
        assert_eq!(
            placement(&pod, &lost),
            (false, true),
            "a lost node keeps its daemon pod"
        );
        let evicting = node(
            "n1",
            json!({"role": "edge"}),
            json!([{"key": "dedicated", "effect": "NoExecute"}]),
        );
        assert_eq!(placement(&pod, &evicting), (false, false));
        assert_eq!(placement(&pod, &other), (false, false));
    }
}
