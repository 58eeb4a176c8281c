//! The node lifecycle controller, as upstream's:
//!
//! - a node whose Lease (`kube-node-lease/<node>`, renewed every 10 s by its
//!   kubelet) is older than [`GRACE_PERIOD`] gets its conditions set to
//!   `Unknown` ("Kubelet stopped posting node status."), and its pods are
//!   marked not Ready so Services stop sending them traffic;
//! - taints follow the Ready condition: `node.kubernetes.io/unreachable`
//!   (Unknown) or `node.kubernetes.io/not-ready` (False), each NoSchedule and
//!   NoExecute, removed when the node is Ready again;
//! - NoExecute taints evict pods (taint-based eviction): at once when the pod
//!   does not tolerate the taint, else after its `tolerationSeconds` (the API
//!   server gives every pod 300 s for these two taints); their owners then
//!   recreate them elsewhere.
//!
//! Every node is looked at every [`MONITOR_PERIOD`], so a node stops being
//! Ready at most `GRACE_PERIOD + MONITOR_PERIOD` (40 s) after its last heartbeat.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, Pod, Taint},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{Controller, controller::Action, watcher},
};
use serde_json::json;
use sextant_apimachinery::scheduling::tolerates;

use crate::{Context, Error, Metrics, retry_soon};

/// How old a node's Lease may get before the node is considered lost.
pub const GRACE_PERIOD: Duration = Duration::from_secs(35);
/// How often every node is looked at.
pub const MONITOR_PERIOD: Duration = Duration::from_secs(5);
/// The taint of a node whose kubelet stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node that reports not Ready.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// Runs the controller until its watch ends.
pub async fn run(client: Client, metrics: Metrics) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    Controller::new(Api::<Node>::all(client), watcher::Config::default())
        .run(reconcile, retry_soon, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.observe("nodelifecycle", sync(&node, &ctx)).await
}

fn ready_status(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

fn stamp(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The node's taints with the readiness taints set for `ready`.
fn readiness_taints(node: &Node, ready: Option<&str>, now: jiff::Timestamp) -> Vec<Taint> {
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let key = match ready {
        Some("Unknown") => Some(UNREACHABLE),
        Some("False") => Some(NOT_READY),
        _ => None,
    };
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| (t.key != UNREACHABLE && t.key != NOT_READY) || Some(t.key.as_str()) == key)
        .cloned()
        .collect();
    if let Some(key) = key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !out.iter().any(|t| t.key == key && t.effect == effect) {
                out.push(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    time_added: (effect == "NoExecute").then_some(Time(now)),
                    value: None,
                });
            }
        }
    }
    out
}

async fn sync(node: &Node, ctx: &Context) -> Result<Action, Error> {
    let name = node.name_any();
    let now = jiff::Timestamp::now();
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let lease = Api::<Lease>::namespaced(ctx.client.clone(), "kube-node-lease")
        .get_opt(&name)
        .await?;
    let renewed = lease
        .as_ref()
        .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0))
        .or_else(|| node.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let grace = jiff::SignedDuration::try_from(GRACE_PERIOD).unwrap_or_default();
    let lost = renewed.is_none_or(|t| now.duration_since(t) > grace);
    let mut ready = ready_status(node);
    if lost && ready.as_deref() != Some("Unknown") {
        let conditions: Vec<serde_json::Value> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let mut v = serde_json::to_value(&c).unwrap_or_default();
                v["status"] = json!("Unknown");
                v["reason"] = json!("NodeStatusUnknown");
                v["message"] = json!("Kubelet stopped posting node status.");
                v["lastTransitionTime"] = json!(stamp(now));
                v
            })
            .collect();
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"conditions": conditions}})),
            )
            .await?;
        tracing::info!(node = %name, "node stopped posting status: Ready=Unknown");
        ctx.event(
            "node-controller",
            node,
            false,
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
        )
        .await;
        ready = Some("Unknown".into());
    }

    let taints = readiness_taints(node, ready.as_deref(), now);
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let keys = |ts: &[Taint]| -> Vec<(String, String)> {
        ts.iter()
            .map(|t| (t.key.clone(), t.effect.clone()))
            .collect()
    };
    if keys(&taints) != keys(&current) {
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"taints": taints}})),
            )
            .await?;
    }

    // Pods on the node: not Ready while it is lost; evicted by NoExecute taints.
    let pods_api: Api<Pod> = Api::all(ctx.client.clone());
    let on_node = pods_api
        .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
        .await?
        .items;
    let no_execute: Vec<&Taint> = taints.iter().filter(|t| t.effect == "NoExecute").collect();
    let mut next_check = MONITOR_PERIOD;
    for pod in &on_node {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        if ready.as_deref() == Some("Unknown") {
            let marked = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "False"));
            if !marked {
                let patch = json!({"status": {"conditions": [
                    {"type": "Ready", "status": "False", "lastTransitionTime": stamp(now)},
                    {"type": "ContainersReady", "status": "False", "lastTransitionTime": stamp(now)},
                ]}});
                // A strategic merge keyed by type keeps the other conditions.
                match api
                    .patch_status(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await
                {
                    Ok(_) | Err(kube::Error::Api(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if no_execute.is_empty() {
            continue;
        }
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        // When the pod must go: now if a taint is not tolerated, else when the
        // shortest tolerationSeconds since the taint was added runs out.
        let mut deadline: Option<jiff::Timestamp> = None;
        let mut evict_now = false;
        for taint in &no_execute {
            if !tolerates(&tolerations, taint) {
                evict_now = true;
                break;
            }
            let seconds = tolerations
                .iter()
                .filter(|t| tolerates(std::slice::from_ref(t), taint))
                .filter_map(|t| t.toleration_seconds)
                .min();
            if let Some(s) = seconds {
                let added = taint.time_added.as_ref().map_or(now, |t| t.0);
                let at = added + jiff::SignedDuration::from_secs(s.max(0));
                deadline = Some(deadline.map_or(at, |d| d.min(at)));
            }
        }
        let due = evict_now || deadline.is_some_and(|d| d <= now);
        if due {
            tracing::info!(node = %name, pod = %pod.name_any(), "evicting a pod from a tainted node");
            match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e.into()),
            }
        } else if let Some(d) = deadline {
            let left = now.duration_until(d).unsigned_abs();
            next_check = next_check.min(left + Duration::from_millis(100));
        }
    }
    Ok(Action::requeue(next_check))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_follow_readiness() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"taints": [
                {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                {"key": NOT_READY, "effect": "NoSchedule"},
            ]},
        }))
        .unwrap();
        let now = jiff::Timestamp::now();
        let keys = |ts: Vec<Taint>| -> Vec<(String, String)> {
            ts.into_iter().map(|t| (t.key, t.effect)).collect()
        };
        assert_eq!(
            keys(readiness_taints(&node, Some("Unknown"), now)),
            vec![
                ("dedicated".into(), "NoSchedule".into()),
                (UNREACHABLE.into(), "NoSchedule".into()),
                (UNREACHABLE.into(), "NoExecute".into()),
            ]
        );
        assert_eq!(
            keys(readiness_taints(&node, Some("True"), now)),
            vec![("dedicated".into(), "NoSchedule".into())]
        );
        let not_ready = readiness_taints(&node, Some("False"), now);
        assert_eq!(not_ready.len(), 3);
        assert!(
            not_ready
                .iter()
                .any(|t| t.key == NOT_READY && t.effect == "NoExecute" && t.time_added.is_some())
        );
    }
}
