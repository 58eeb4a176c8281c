//! The disruption controller: each PodDisruptionBudget's status, which the
//! API server's eviction subresource checks (and decrements) before deleting a
//! pod, as upstream's:
//!
//! - `expectedPods`: the pods the budget selects (upstream reads the owners'
//!   scale; counting selected, not-deleted pods is the same for pods that have
//!   one and what upstream does for bare pods);
//! - `currentHealthy`: those that are Ready;
//! - `desiredHealthy`: `minAvailable` (a number, or a percentage of expected
//!   rounded up), or expected minus `maxUnavailable` (percentage rounded up);
//! - `disruptionsAllowed`: currentHealthy − desiredHealthy, never below 0, less
//!   evictions the API server granted whose pods are not gone yet
//!   (`disruptedPods`, forgotten after 2 minutes as upstream);
//! - the `DisruptionAllowed` condition.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{core::v1::Pod, policy::v1::PodDisruptionBudget},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use serde_json::{Value, json};

use crate::{Context, Error, Metrics, pods::is_ready, retry_soon};

/// How long an eviction the API server granted counts against the budget
/// while its pod has not gone.
const DISRUPTED_POD_TIMEOUT_SECONDS: i64 = 120;

/// Runs the controller until its watches end; pod changes re-check the
/// budgets of their namespace.
pub async fn run(client: Client, metrics: Metrics) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    let controller = Controller::new(
        Api::<PodDisruptionBudget>::all(client.clone()),
        watcher::Config::default(),
    );
    let budgets = controller.store();
    controller
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default(),
            move |pod: Pod| {
                budgets
                    .state()
                    .iter()
                    .filter(|b| b.namespace() == pod.namespace())
                    .map(|b| ObjectRef::from_obj(&**b))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, retry_soon, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.observe("disruption", sync(&pdb, &ctx)).await
}

/// desiredHealthy for `expected` selected pods.
pub fn desired_healthy(
    min_available: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    expected: i32,
) -> i32 {
    let amount = |v: &IntOrString| match v {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            (pct * f64::from(expected) / 100.0).ceil() as i32
        }
    };
    match (min_available, max_unavailable) {
        (Some(min), _) => amount(min),
        (None, Some(max)) => (expected - amount(max)).max(0),
        (None, None) => 1,
    }
}

async fn sync(pdb: &PodDisruptionBudget, ctx: &Context) -> Result<Action, Error> {
    let ns = pdb.namespace().unwrap_or_else(|| "default".into());
    let spec = pdb.spec.clone().unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    let pods: Vec<Pod> = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| {
            // policy/v1: an empty selector selects every pod of the namespace.
            sextant_apimachinery::labels::matches(&selector, p.labels())
                && p.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let expected = i32::try_from(pods.len()).unwrap_or(i32::MAX);
    let healthy = i32::try_from(pods.iter().filter(|p| is_ready(p)).count()).unwrap_or(i32::MAX);
    let desired = desired_healthy(
        spec.min_available.as_ref(),
        spec.max_unavailable.as_ref(),
        expected,
    );

    // Evictions granted whose pods still exist, not yet timed out.
    let now = jiff::Timestamp::now();
    let granted: BTreeMap<String, String> = pdb
        .status
        .as_ref()
        .and_then(|s| s.disrupted_pods.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, at)| {
            let fresh = now.duration_since(at.0).as_secs() < DISRUPTED_POD_TIMEOUT_SECONDS;
            fresh && pods.iter().any(|p| &p.name_any() == name)
        })
        .map(|(name, at)| (name, at.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
        .collect();
    let in_flight = i32::try_from(granted.len()).unwrap_or(i32::MAX);
    let allowed = (healthy - desired - in_flight).max(0);
    let condition = if allowed > 0 {
        json!({"type": "DisruptionAllowed", "status": "True", "reason": "SufficientPods", "message": ""})
    } else {
        json!({"type": "DisruptionAllowed", "status": "False", "reason": "InsufficientPods", "message": ""})
    };
    let status = json!({
        "observedGeneration": pdb.metadata.generation,
        "expectedPods": expected,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "disruptionsAllowed": allowed,
        "disruptedPods": granted,
    });
    let old = serde_json::to_value(&pdb.status).unwrap_or(Value::Null);
    let old_condition = old["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionAllowed"))
        .map(|c| c["status"].clone());
    let changed = status.as_object().into_iter().flatten().any(|(k, v)| {
        let before = old.get(k).cloned().unwrap_or(Value::Null);
        // An empty map and a missing one are the same.
        !(before == *v
            || (v.as_object().is_some_and(serde_json::Map::is_empty) && before.is_null()))
    }) || old_condition.as_ref() != Some(&condition["status"]);
    if changed {
        let mut status = status;
        let mut condition = condition;
        condition["lastTransitionTime"] = json!(now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        status["conditions"] = json!([condition]);
        Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &pdb.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await?;
    }
    if in_flight > 0 {
        // Granted evictions time out without a watch event.
        return Ok(Action::requeue(Duration::from_secs(10)));
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_healthy_reads_numbers_and_percentages_as_upstream() {
        let int = IntOrString::Int;
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(desired_healthy(Some(&int(2)), None, 3), 2);
        assert_eq!(desired_healthy(Some(&pct("50%")), None, 3), 2);
        assert_eq!(desired_healthy(None, Some(&int(1)), 3), 2);
        assert_eq!(desired_healthy(None, Some(&pct("50%")), 3), 1);
        assert_eq!(desired_healthy(None, Some(&int(5)), 3), 0);
    }
}
