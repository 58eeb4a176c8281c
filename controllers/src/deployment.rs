//! The Deployment controller: one ReplicaSet per pod template (named
//! `<deployment>-<pod-template-hash>`, carrying `deployment.kubernetes.io/revision`),
//! rolled out with the Recreate or RollingUpdate strategy (maxSurge rounded up,
//! maxUnavailable rounded down, as upstream), paused and resumed, old ReplicaSets
//! pruned beyond `revisionHistoryLimit`, and the status — replicas, updated, ready,
//! available, unavailable, the Available and Progressing conditions — that
//! `kubectl rollout status` reads. `kubectl rollout undo` works client-side on the
//! revision annotations.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::apps::v1::{Deployment, ReplicaSet},
    apimachinery::pkg::{apis::meta::v1::OwnerReference, util::intstr::IntOrString},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{Controller, controller::Action, watcher},
};
use serde_json::{Value, json};

use crate::{Context, Error, Metrics, retry_soon};

/// The label that ties a ReplicaSet and its pods to one template.
pub const HASH_LABEL: &str = "pod-template-hash";
/// The revision annotation on ReplicaSets and the Deployment.
pub const REVISION: &str = "deployment.kubernetes.io/revision";

/// Runs the controller until its watches end.
pub async fn run(client: Client, metrics: Metrics) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<ReplicaSet>::all(client), watcher::Config::default())
    .run(reconcile, retry_soon, ctx)
    .for_each(|_| std::future::ready(()))
    .await;
}

/// FNV-1a (32 bit) of the template, in the alphabet upstream uses for
/// generated names (no vowels, no look-alike characters).
pub fn template_hash(template: &Value) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in template.to_string().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    for d in h.to_string().bytes() {
        out.push(char::from(ALPHABET[usize::from(d - b'0') % ALPHABET.len()]));
    }
    out
}

/// An int-or-percent against `total`: percentages round up for surge, down for
/// unavailability.
pub(crate) fn resolve(v: Option<&IntOrString>, total: i32, round_up: bool, default: i32) -> i32 {
    match v {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let exact = pct * f64::from(total) / 100.0;
            (if round_up {
                exact.ceil()
            } else {
                exact.floor()
            }) as i32
        }
        None => default,
    }
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// Available pods, never more than the ReplicaSet is being scaled to.
fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        .min(replicas(rs))
}

/// Whether the ReplicaSet's status reflects its latest spec (else its counts
/// are stale and must not drive a scale-down).
fn synced(rs: &ReplicaSet) -> bool {
    let observed = rs
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .unwrap_or(0);
    observed >= rs.metadata.generation.unwrap_or(0)
}

/// The template without the hash label, to compare ReplicaSets with the Deployment.
fn bare_template(rs_template: &Value) -> Value {
    let mut t = rs_template.clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
    }
    t
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.observe("deployment", sync(&d, &ctx)).await
}

/// Where a rollout's scaling is done and reported.
struct Scaling<'a> {
    api: &'a Api<ReplicaSet>,
    ctx: &'a Context,
    deployment: &'a Deployment,
}

async fn scale(
    s: &Scaling<'_>,
    rs: &ReplicaSet,
    to: i32,
    desired: i32,
    max_surge: i32,
) -> Result<(), Error> {
    let from = replicas(rs);
    if from == to {
        return Ok(());
    }
    let api = s.api;
    let patch = json!({
        "metadata": {"annotations": {
            "deployment.kubernetes.io/desired-replicas": desired.to_string(),
            "deployment.kubernetes.io/max-replicas": (desired + max_surge).to_string(),
        }},
        "spec": {"replicas": to},
    });
    api.patch(
        &rs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    let direction = if to > from { "up" } else { "down" };
    let note = format!(
        "Scaled {direction} replica set {} from {from} to {to}",
        rs.name_any()
    );
    s.ctx
        .event(
            "deployment-controller",
            s.deployment,
            false,
            "ScalingReplicaSet",
            note,
        )
        .await;
    Ok(())
}

async fn sync(d: &Deployment, ctx: &Context) -> Result<Action, Error> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_else(|| "default".into());
    let uid = d.uid().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let mut owned: Vec<ReplicaSet> = rs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|rs| {
            rs.owner_references()
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true))
        })
        .collect();
    owned.sort_by_key(|rs| {
        (
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            rs.name_any(),
        )
    });
    let template = serde_json::to_value(&spec.template).unwrap_or(Value::Null);
    let hash = template_hash(&template);
    let max_revision = owned.iter().map(revision).max().unwrap_or(0);
    let existing = owned.iter().position(|rs| {
        let t = serde_json::to_value(rs.spec.as_ref().and_then(|s| s.template.as_ref()))
            .unwrap_or(Value::Null);
        bare_template(&t) == template
    });
    let rolling = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) != Some("Recreate");
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let (mut max_surge, mut max_unavailable) = if rolling {
        (
            resolve(
                ru.and_then(|r| r.max_surge.as_ref()),
                desired,
                true,
                (desired + 3) / 4,
            ),
            resolve(
                ru.and_then(|r| r.max_unavailable.as_ref()),
                desired,
                false,
                desired / 4,
            ),
        )
    } else {
        (0, desired)
    };
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    max_surge = max_surge.max(0);
    let paused = spec.paused == Some(true);
    let new_rs = match existing {
        Some(i) => {
            let rs = owned.remove(i);
            // A template rolled back to becomes the newest revision again.
            if revision(&rs) < max_revision || revision(&rs) == 0 {
                let patch = json!({"metadata": {"annotations": {REVISION: (max_revision + 1).to_string()}}});
                rs_api
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?
            } else {
                rs
            }
        }
        None if paused => {
            update_status(d, ctx, &owned, None, desired, max_unavailable).await?;
            return Ok(Action::await_change());
        }
        None => {
            let mut labels: BTreeMap<String, String> = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(HASH_LABEL.into(), hash.clone());
            let mut rs_template = template.clone();
            rs_template["metadata"]["labels"] = json!(labels);
            let mut selector = serde_json::to_value(&spec.selector).unwrap_or(json!({}));
            selector["matchLabels"][HASH_LABEL] = json!(hash);
            let owner = OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: d.name_any(),
                uid: uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            };
            // Recreate and a first rollout start at full size once nothing old runs.
            let start = if owned.iter().all(|rs| replicas(rs) == 0) {
                desired
            } else {
                0
            };
            let rs: ReplicaSet = serde_json::from_value(json!({
                "metadata": {
                    "name": format!("{}-{hash}", d.name_any()),
                    "namespace": ns,
                    "labels": labels,
                    "annotations": {
                        REVISION: (max_revision + 1).to_string(),
                        "deployment.kubernetes.io/desired-replicas": desired.to_string(),
                        "deployment.kubernetes.io/max-replicas": (desired + max_surge).to_string(),
                    },
                    "ownerReferences": [owner],
                },
                "spec": {
                    "replicas": start,
                    "minReadySeconds": spec.min_ready_seconds.unwrap_or(0),
                    "selector": selector,
                    "template": rs_template,
                },
            }))
            .map_err(|e| Error::Api(kube::Error::SerdeError(e)))?;
            match rs_api.create(&PostParams::default(), &rs).await {
                Ok(rs) => rs,
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    // The Deployment carries its current revision, as upstream's does.
    let rev = revision(&new_rs).to_string();
    if d.annotations().get(REVISION) != Some(&rev) {
        let d_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
        d_api
            .patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
    }
    let scaling = Scaling {
        api: &rs_api,
        ctx,
        deployment: d,
    };
    if !paused {
        if rolling {
            roll(
                &scaling,
                &new_rs,
                &owned,
                desired,
                max_surge,
                max_unavailable,
            )
            .await?;
        } else {
            // Recreate: everything old goes first, then the new ReplicaSet grows.
            for old in &owned {
                scale(&scaling, old, 0, desired, 0).await?;
            }
            let old_running: i32 = owned
                .iter()
                .map(|rs| rs.status.as_ref().map_or(0, |s| s.replicas))
                .sum();
            if old_running == 0 {
                scale(&scaling, &new_rs, desired, desired, 0).await?;
            }
        }
    } else if replicas(&new_rs) > 0
        && replicas(&new_rs) != desired
        && owned.iter().all(|rs| replicas(rs) == 0)
    {
        // Paused, but `kubectl scale` still applies.
        scale(&scaling, &new_rs, desired, desired, max_surge).await?;
    }
    // History beyond revisionHistoryLimit: the oldest empty ReplicaSets go.
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10)).unwrap_or(10);
    let empty: Vec<&ReplicaSet> = owned
        .iter()
        .filter(|rs| replicas(rs) == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0))
        .collect();
    if empty.len() > limit {
        for rs in &empty[..empty.len() - limit] {
            let _ = rs_api
                .delete(&rs.name_any(), &DeleteParams::background())
                .await;
        }
    }
    let check = update_status(d, ctx, &owned, Some(&new_rs), desired, max_unavailable).await?;
    Ok(Action::requeue(check.min(Duration::from_secs(30))))
}

/// One step of a rolling update, as upstream's rolloutRolling: grow the new
/// ReplicaSet within maxSurge, shrink old ones within maxUnavailable.
async fn roll(
    api: &Scaling<'_>,
    new_rs: &ReplicaSet,
    old: &[ReplicaSet],
    desired: i32,
    max_surge: i32,
    max_unavailable: i32,
) -> Result<(), Error> {
    let new_replicas = replicas(new_rs);
    let old_total: i32 = old.iter().map(replicas).sum();
    let total = new_replicas + old_total;
    if new_replicas > desired {
        scale(api, new_rs, desired, desired, max_surge).await?;
    } else if new_replicas < desired {
        let room = (desired + max_surge - total).max(0);
        let up = room.min(desired - new_replicas);
        if up > 0 {
            scale(api, new_rs, new_replicas + up, desired, max_surge).await?;
        }
    }
    if old_total == 0 || !synced(new_rs) || !old.iter().all(synced) {
        return Ok(());
    }
    // How many old pods may go without falling below desired - maxUnavailable.
    let min_available = desired - max_unavailable;
    let available_total: i32 = available(new_rs) + old.iter().map(available).sum::<i32>();
    // Old pods that are not available can always go first.
    let mut budget = (available_total - min_available).max(0);
    for rs in old {
        let unhealthy = (replicas(rs) - available(rs)).max(0);
        let cut = if unhealthy > 0 {
            unhealthy
        } else {
            budget.min(replicas(rs))
        };
        if cut > 0 {
            scale(api, rs, replicas(rs) - cut, desired, max_surge).await?;
            if unhealthy == 0 {
                budget -= cut;
            }
        }
        if budget <= 0 {
            break;
        }
    }
    Ok(())
}

async fn update_status(
    d: &Deployment,
    ctx: &Context,
    old: &[ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    desired: i32,
    max_unavailable: i32,
) -> Result<Duration, Error> {
    let all: Vec<&ReplicaSet> = old.iter().chain(new_rs).collect();
    let sum = |f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> i32| -> i32 {
        all.iter().filter_map(|rs| rs.status.as_ref()).map(f).sum()
    };
    let replicas_now = sum(|s| s.replicas);
    let ready = sum(|s| s.ready_replicas.unwrap_or(0));
    let available_now = sum(|s| s.available_replicas.unwrap_or(0));
    let updated = new_rs
        .and_then(|rs| rs.status.as_ref())
        .map_or(0, |s| s.replicas);
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let old_conditions = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let prev = old_conditions.iter().find(|c| c.type_ == type_);
        let same = prev.is_some_and(|c| c.status == status && c.reason.as_deref() == Some(reason));
        let since = prev
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| now.clone());
        let updated_at = if same {
            prev.and_then(|c| c.last_update_time.as_ref())
                .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_else(|| now.clone())
        } else {
            now.clone()
        };
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastUpdateTime": updated_at, "lastTransitionTime": since})
    };
    let is_available = available_now >= desired - max_unavailable;
    let new_name = new_rs.map(ResourceExt::name_any).unwrap_or_default();
    let complete = new_rs.is_some()
        && updated == desired
        && replicas_now == desired
        && available_now == desired
        && new_rs.map(replicas) == Some(desired);
    // Progress is any change in the rollout's counts; without any for
    // progressDeadlineSeconds (default 600) the rollout has failed.
    let previous = d.status.clone().unwrap_or_default();
    let progressed = previous.updated_replicas.unwrap_or(0) != updated
        || previous.replicas.unwrap_or(0) != replicas_now
        || previous.available_replicas.unwrap_or(0) != available_now
        || previous.ready_replicas.unwrap_or(0) != ready;
    let last_progress = old_conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .and_then(|c| c.last_update_time.as_ref())
        .map(|t| t.0);
    let deadline = d
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(600);
    let already_timed_out = old_conditions.iter().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    let timed_out = !progressed
        && (already_timed_out
            || last_progress.is_some_and(|t| {
                jiff::Timestamp::now().duration_since(t).as_secs() > i64::from(deadline)
            }));
    let mut progressing = if complete {
        condition(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else if d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
        condition(
            "Progressing",
            false,
            "DeploymentPaused",
            "Deployment is paused".into(),
        )
    } else if timed_out {
        condition(
            "Progressing",
            false,
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{new_name}\" has timed out progressing."),
        )
    } else {
        condition(
            "Progressing",
            true,
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
        )
    };
    if progressed && !complete {
        progressing["lastUpdateTime"] = json!(now);
    }
    let available_condition = if is_available {
        condition(
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        condition(
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    let status = json!({
        "observedGeneration": d.metadata.generation,
        "replicas": replicas_now,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available_now,
        "unavailableReplicas": (desired - available_now).max(0),
        "conditions": [available_condition, progressing],
    });
    let current = serde_json::to_value(&d.status).unwrap_or(Value::Null);
    let changed = [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    ]
    .iter()
    .any(|f| current[f].as_i64().unwrap_or(0) != status[f].as_i64().unwrap_or(0))
        || old_conditions.len() != 2
        || old_conditions
            .iter()
            .zip(status["conditions"].as_array().into_iter().flatten())
            .any(|(o, n)| {
                Some(o.status.as_str()) != n["status"].as_str()
                    || o.reason.as_deref() != n["reason"].as_str()
            });
    if changed {
        let api: Api<Deployment> =
            Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
        api.patch_status(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    // Look again when the progress deadline would run out.
    let since = if progressed {
        Some(jiff::Timestamp::now())
    } else {
        last_progress
    };
    let check = match since {
        Some(t) if !complete && !timed_out => {
            let at = t + jiff::SignedDuration::from_secs(i64::from(deadline) + 1);
            jiff::Timestamp::now().duration_until(at).unsigned_abs()
        }
        _ => Duration::from_secs(30),
    };
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_rounding() {
        let a = template_hash(&json!({"spec": {"containers": [{"name": "a"}]}}));
        let b = template_hash(&json!({"spec": {"containers": [{"name": "b"}]}}));
        assert_ne!(a, b);
        assert!(a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        let pct = IntOrString::String("25%".into());
        assert_eq!(resolve(Some(&pct), 3, true, 0), 1);
        assert_eq!(resolve(Some(&pct), 3, false, 0), 0);
        assert_eq!(resolve(Some(&IntOrString::Int(2)), 3, false, 0), 2);
    }
}
