//! The HorizontalPodAutoscaler controller (`autoscaling/v2`), as upstream's
//! `horizontal-pod-autoscaler` with its defaults: every 15 s, for each HPA with a
//! CPU `Utilization` target on a Deployment, ReplicaSet or StatefulSet, the
//! pods' CPU usage (from `metrics.k8s.io`) over their CPU requests gives the
//! utilization; `desired = ceil(ready pods × utilization / target)` unless within
//! the 10 % tolerance. Pods without metrics count as idle when scaling up and as
//! at target when scaling down. Scale-ups are limited to max(+4 pods, ×2) per
//! period; scale-downs take the highest recommendation of the stabilization
//! window (`behavior.scaleDown.stabilizationWindowSeconds`, default 300 s).
//! The result is clamped to min/max replicas and written through the target's
//! `scale` subresource, with a SuccessfulRescale event and the HPA's status.
//! Other metric types are reported as not supported in the status.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet, StatefulSet},
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{Controller, controller::Action, watcher},
};
use serde_json::{Value, json};
use sextant_apimachinery::quantity;

use crate::{Context, Error, Metrics, retry_soon, selector_string};

/// How often each HPA is evaluated (upstream's `--horizontal-pod-autoscaler-sync-period`).
const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// No change while the ratio is within this of 1 (upstream's tolerance).
const TOLERANCE: f64 = 0.1;
/// Default scale-down stabilization window.
const SCALE_DOWN_WINDOW: Duration = Duration::from_secs(300);
/// The field manager of status and scale writes.
const MANAGER: &str = "horizontal-pod-autoscaler";

/// The controller's state: the shared context and each HPA's recent
/// recommendations (upstream keeps them in memory too).
struct State {
    ctx: Context,
    recommendations: Mutex<HashMap<String, Vec<(Instant, i32)>>>,
}

/// Runs the controller until its watch ends.
pub async fn run(client: Client, metrics: Metrics) {
    let state = Arc::new(State {
        ctx: Context {
            client: client.clone(),
            metrics,
        },
        recommendations: Mutex::default(),
    });
    Controller::new(
        Api::<HorizontalPodAutoscaler>::all(client),
        watcher::Config::default(),
    )
    .run(reconcile, retry_soon, state)
    .for_each(|_| std::future::ready(()))
    .await;
}

async fn reconcile(hpa: Arc<HorizontalPodAutoscaler>, state: Arc<State>) -> Result<Action, Error> {
    state
        .ctx
        .observe("horizontal-pod-autoscaler", sync(&hpa, &state))
        .await
}

/// The scale target's current replicas and pod selector.
async fn target(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
) -> Result<(i32, LabelSelector), String> {
    let missing = |e: kube::Error| {
        format!("the HPA controller was unable to get the target's current scale: {e}")
    };
    match kind {
        "Deployment" => {
            let d = Api::<Deployment>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .map_err(missing)?;
            let spec = d.spec.unwrap_or_default();
            Ok((spec.replicas.unwrap_or(1), spec.selector))
        }
        "ReplicaSet" => {
            let r = Api::<ReplicaSet>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .map_err(missing)?;
            let spec = r.spec.unwrap_or_default();
            Ok((spec.replicas.unwrap_or(1), spec.selector))
        }
        "StatefulSet" => {
            let s = Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .map_err(missing)?;
            let spec = s.spec.unwrap_or_default();
            Ok((spec.replicas.unwrap_or(1), spec.selector))
        }
        other => Err(format!("the HPA controller cannot scale a {other}")),
    }
}

/// Writes `replicas` through the target's scale subresource.
async fn set_scale(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    replicas: i32,
) -> Result<(), Error> {
    let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
    let pp = PatchParams::default();
    match kind {
        "Deployment" => {
            Api::<Deployment>::namespaced(client.clone(), ns)
                .patch_scale(name, &pp, &patch)
                .await?;
        }
        "ReplicaSet" => {
            Api::<ReplicaSet>::namespaced(client.clone(), ns)
                .patch_scale(name, &pp, &patch)
                .await?;
        }
        _ => {
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .patch_scale(name, &pp, &patch)
                .await?;
        }
    }
    Ok(())
}

/// One pod's CPU: its request and, when metrics have it, its usage (millicores).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodCpu {
    /// Sum of the containers' CPU requests.
    pub request: i64,
    /// Sum of the containers' CPU usage, if known.
    pub usage: Option<i64>,
}

/// The recommendation for `current` replicas from the pods' figures and a
/// target utilization (percent): (replicas, utilization now in percent).
pub fn recommend(current: i32, pods: &[PodCpu], target: i32) -> Option<(i32, i64)> {
    let measured: Vec<&PodCpu> = pods.iter().filter(|p| p.usage.is_some()).collect();
    let request: i64 = measured.iter().map(|p| p.request).sum();
    if measured.is_empty() || request == 0 || target <= 0 {
        return None;
    }
    let usage: i64 = measured.iter().filter_map(|p| p.usage).sum();
    let utilization = usage * 100 / request;
    let ratio = utilization as f64 / f64::from(target);
    let missing: Vec<&PodCpu> = pods.iter().filter(|p| p.usage.is_none()).collect();
    if missing.is_empty() {
        if (ratio - 1.0).abs() <= TOLERANCE {
            return Some((current, utilization));
        }
        return Some(((ratio * measured.len() as f64).ceil() as i32, utilization));
    }
    // Pods without metrics: idle when scaling up, at target when scaling down.
    let assumed: i64 = if ratio > 1.0 {
        0
    } else {
        missing
            .iter()
            .map(|p| p.request * i64::from(target) / 100)
            .sum()
    };
    let all_request = request + missing.iter().map(|p| p.request).sum::<i64>();
    let new_ratio = (usage + assumed) as f64 * 100.0 / all_request as f64 / f64::from(target);
    if (new_ratio - 1.0).abs() <= TOLERANCE || (ratio > 1.0) != (new_ratio > 1.0) {
        return Some((current, utilization));
    }
    Some(((new_ratio * pods.len() as f64).ceil() as i32, utilization))
}

async fn sync(hpa: &HorizontalPodAutoscaler, state: &State) -> Result<Action, Error> {
    let client = &state.ctx.client;
    let ns = hpa.namespace().unwrap_or_default();
    let name = hpa.name_any();
    let Some(spec) = hpa.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let target_ref = &spec.scale_target_ref;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let (current, selector) = match target(client, &ns, &target_ref.kind, &target_ref.name).await {
        Ok(t) => t,
        Err(message) => {
            write_status(
                &hpas,
                &name,
                hpa,
                None,
                None,
                &[("AbleToScale", "False", "FailedGetScale", &message)],
            )
            .await?;
            return Ok(Action::requeue(SYNC_PERIOD));
        }
    };
    let cpu_target = spec.metrics.iter().flatten().find_map(|m| {
        let r = m.resource.as_ref()?;
        (m.type_ == "Resource" && r.name == "cpu" && r.target.type_ == "Utilization")
            .then_some(r.target.average_utilization)
            .flatten()
    });
    // Upstream's default when no metrics are given: 80 % CPU.
    let cpu_target = match (&spec.metrics, cpu_target) {
        (_, Some(t)) => t,
        (None, None) => 80,
        (Some(m), None) if m.is_empty() => 80,
        (Some(_), None) => {
            let message = "only Resource cpu Utilization targets are supported";
            write_status(
                &hpas,
                &name,
                hpa,
                Some(current),
                None,
                &[("ScalingActive", "False", "InvalidMetricSourceType", message)],
            )
            .await?;
            return Ok(Action::requeue(SYNC_PERIOD));
        }
    };
    let pods = pod_cpu(client, &ns, &selector).await?;
    let Some((recommended, utilization)) = recommend(current, &pods, cpu_target) else {
        let message = "did not receive metrics for any ready pods, or a pod has no CPU request";
        write_status(
            &hpas,
            &name,
            hpa,
            Some(current),
            None,
            &[("ScalingActive", "False", "FailedGetResourceMetric", message)],
        )
        .await?;
        return Ok(Action::requeue(SYNC_PERIOD));
    };
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let desired = stabilize(state, hpa, current, recommended).clamp(min, max.max(min));
    if desired != current {
        set_scale(client, &ns, &target_ref.kind, &target_ref.name, desired).await?;
        let direction = if desired > current { "above" } else { "below" };
        state
            .ctx
            .event(
                MANAGER,
                hpa,
                false,
                "SuccessfulRescale",
                format!("New size: {desired}; reason: cpu resource utilization (percentage of request) {direction} target"),
            )
            .await;
    }
    let limited = recommended != desired;
    write_status(
        &hpas,
        &name,
        hpa,
        Some(current),
        Some((desired, utilization, desired != current)),
        &[
            ("AbleToScale", "True", "SucceededRescale", "the HPA controller was able to update the target scale"),
            ("ScalingActive", "True", "ValidMetricFound", "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)"),
            if limited {
                ("ScalingLimited", "True", "ScaleLimited", "the desired replica count is limited by the bounds or the rate of change")
            } else {
                ("ScalingLimited", "False", "DesiredWithinRange", "the desired count is within the acceptable range")
            },
        ],
    )
    .await?;
    Ok(Action::requeue(SYNC_PERIOD))
}

/// Applies the scale-up rate limit and the scale-down stabilization window.
fn stabilize(state: &State, hpa: &HorizontalPodAutoscaler, current: i32, recommended: i32) -> i32 {
    let behavior = hpa.spec.as_ref().and_then(|s| s.behavior.as_ref());
    let down_window = behavior
        .and_then(|b| b.scale_down.as_ref())
        .and_then(|r| r.stabilization_window_seconds)
        .map_or(SCALE_DOWN_WINDOW, |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        });
    let key = format!("{}/{}", hpa.namespace().unwrap_or_default(), hpa.name_any());
    let now = Instant::now();
    let mut all = state
        .recommendations
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let history = all.entry(key).or_default();
    history.retain(|(at, _)| now.duration_since(*at) <= down_window);
    history.push((now, recommended));
    let mut desired = recommended;
    if desired < current {
        // The highest recommendation of the window: no flapping down.
        desired = history
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(recommended)
            .min(current);
    }
    if desired > current {
        desired = desired.min((current + 4).max(current * 2));
    }
    desired
}

/// Every live pod of the selector with its CPU request and usage.
async fn pod_cpu(
    client: &Client,
    ns: &str,
    selector: &LabelSelector,
) -> Result<Vec<PodCpu>, Error> {
    let selector = selector_string(selector);
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await?;
    let url = format!(
        "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector={}",
        form_urlencoded::byte_serialize(selector.as_bytes()).collect::<String>()
    );
    let request = http::Request::get(url)
        .body(Vec::new())
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let metrics: Value = client.request(request).await?;
    let usage: BTreeMap<String, i64> = metrics["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let name = m["metadata"]["name"].as_str()?.to_owned();
            let total = m["containers"]
                .as_array()?
                .iter()
                .filter_map(|c| c["usage"]["cpu"].as_str().and_then(quantity::millicores))
                .sum();
            Some((name, total))
        })
        .collect();
    Ok(pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|ph| ph == "Running" || ph == "Pending")
        })
        .map(|p| {
            let request = p
                .spec
                .as_ref()
                .map(|s| {
                    s.containers
                        .iter()
                        .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get("cpu"))
                        .filter_map(|q| quantity::millicores(&q.0))
                        .sum()
                })
                .unwrap_or(0);
            PodCpu {
                request,
                usage: usage.get(&p.name_any()).copied(),
            }
        })
        .collect())
}

/// Writes the HPA's status: replicas, the current CPU utilization and conditions.
async fn write_status(
    api: &Api<HorizontalPodAutoscaler>,
    name: &str,
    hpa: &HorizontalPodAutoscaler,
    current: Option<i32>,
    result: Option<(i32, i64, bool)>,
    conditions: &[(&str, &str, &str, &str)],
) -> Result<(), Error> {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let old = hpa.status.as_ref();
    let conditions: Vec<Value> = conditions
        .iter()
        .map(|(type_, status, reason, message)| {
            let since = old
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == *type_ && c.status == *status))
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| now.clone());
            json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": since})
        })
        .collect();
    let mut status = json!({
        "currentReplicas": current.unwrap_or(0),
        "desiredReplicas": result.map_or(current.unwrap_or(0), |r| r.0),
        "conditions": conditions,
    });
    if let Some(last) = old.and_then(|s| s.last_scale_time.as_ref()) {
        status["lastScaleTime"] = json!(last.0.to_string());
    }
    if let Some((_, utilization, rescaled)) = result {
        status["currentMetrics"] = json!([{"type": "Resource", "resource": {"name": "cpu",
            "current": {"averageUtilization": utilization}}}]);
        if rescaled {
            status["lastScaleTime"] = json!(now);
        }
    }
    if let Some(generation) = hpa.metadata.generation {
        status["observedGeneration"] = json!(generation);
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(usages: &[Option<i64>]) -> Vec<PodCpu> {
        usages
            .iter()
            .map(|u| PodCpu {
                request: 100,
                usage: *u,
            })
            .collect()
    }

    #[test]
    fn replicas_follow_utilization_outside_the_tolerance() {
        // 1 pod at 400 % of its request, target 80 % → 5 pods.
        assert_eq!(recommend(1, &pods(&[Some(400)]), 80), Some((5, 400)));
        // 85 % against 80 %: within 10 %, no change.
        assert_eq!(
            recommend(3, &pods(&[Some(85), Some(85), Some(85)]), 80),
            Some((3, 85))
        );
        // Idle pods: down to ceil(3 × 0.1 / 0.8) = 1.
        assert_eq!(
            recommend(3, &pods(&[Some(10), Some(10), Some(10)]), 80),
            Some((1, 10))
        );
        // No metrics at all: no recommendation.
        assert_eq!(recommend(2, &pods(&[None, None]), 80), None);
    }

    #[test]
    fn pods_without_metrics_damp_both_directions() {
        // Scaling up: the new pod counts as idle → (200+0)/200 = 100 % / 80 % → 3.
        assert_eq!(recommend(2, &pods(&[Some(200), None]), 80), Some((3, 200)));
        // Scaling down: the unknown pod counts as at target → (10+80)/200 = 45 %.
        assert_eq!(recommend(2, &pods(&[Some(10), None]), 80), Some((2, 10)));
    }
}
