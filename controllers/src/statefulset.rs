//! The StatefulSet controller: pods with stable names and storage, as upstream's:
//!
//! - pods are `<sts>-<ordinal>` (from `spec.ordinals.start`), with
//!   `hostname` = the pod name and `subdomain` = `serviceName`, so the headless
//!   Service gives each a DNS name; labels `statefulset.kubernetes.io/pod-name`,
//!   `apps.kubernetes.io/pod-index` and `controller-revision-hash`;
//! - each `volumeClaimTemplate` becomes a PVC `<template>-<sts>-<ordinal>`
//!   created before its pod and kept when the pod goes (and, by default, when
//!   the set is scaled down or deleted: `persistentVolumeClaimRetentionPolicy`);
//!   a recreated pod mounts the same claim, so it finds its data;
//! - `OrderedReady`: one ordinal at a time, each Running and Ready before the
//!   next is created; scaling down removes the highest ordinal first, one at a
//!   time. `Parallel`: all at once;
//! - failed pods are deleted and recreated under the same name;
//! - `RollingUpdate` replaces pods from the highest ordinal down to
//!   `partition`, one at a time, each waiting for the set to be Ready;
//!   `OnDelete` waits for deletions;
//! - ControllerRevisions record each template; status carries
//!   `currentRevision`/`updateRevision` for `kubectl rollout status`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume},
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{Controller, controller::Action, watcher},
};
use serde_json::{Value, json};

use crate::{
    Context, Error, Metrics,
    deployment::template_hash,
    pods::{self, is_available, is_ready},
    retry_soon,
    revisions::{self, REVISION_HASH},
};

/// The label naming a StatefulSet pod (upstream's, for per-pod Services).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label carrying a pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Runs the controller until its watches end.
pub async fn run(client: Client, metrics: Metrics) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    Controller::new(
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client), watcher::Config::default())
    .run(reconcile, retry_soon, ctx)
    .for_each(|_| std::future::ready(()))
    .await;
}

async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.observe("statefulset", sync(&sts, &ctx)).await
}

fn owner_ref(sts: &StatefulSet) -> OwnerReference {
    pods::controller_ref(
        "apps/v1",
        "StatefulSet",
        &sts.name_any(),
        &sts.uid().unwrap_or_default(),
    )
}

/// The ordinal a pod's name gives it, if it is one of `set`'s.
fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// The PVC name of `template` for `ordinal`.
fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// The pod for `ordinal` at the template revision `hash`.
fn pod_for(sts: &StatefulSet, ns: &str, ordinal: i32, hash: &str) -> Pod {
    let spec = sts.spec.clone().unwrap_or_default();
    let set = sts.name_any();
    let mut pod = pods::from_template(&spec.template, ns, "", &owner_ref(sts));
    let name = format!("{set}-{ordinal}");
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_HASH.into(), hash.into());
    if let Some(ps) = pod.spec.as_mut() {
        ps.hostname = Some(name);
        if !spec.service_name.clone().unwrap_or_default().is_empty() {
            ps.subdomain = spec.service_name.clone();
        }
        let volumes = ps.volumes.get_or_insert_with(Vec::new);
        for t in spec.volume_claim_templates.iter().flatten() {
            let template = t.name_any();
            volumes.retain(|v| v.name != template);
            volumes.push(Volume {
                name: template.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&template, &set, ordinal),
                    read_only: None,
                }),
                ..Default::default()
            });
        }
    }
    pod
}

/// Creates the PVCs of `ordinal` that do not exist yet.
async fn ensure_claims(
    sts: &StatefulSet,
    ns: &str,
    ordinal: i32,
    ctx: &Context,
) -> Result<(), Error> {
    let client = &ctx.client;
    let spec = sts.spec.clone().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let delete_with_set = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    for t in spec.volume_claim_templates.iter().flatten() {
        let name = claim_name(&t.name_any(), &sts.name_any(), ordinal);
        if api.get_opt(&name).await?.is_some() {
            continue;
        }
        let mut claim = t.clone();
        claim.status = None;
        claim.metadata = Default::default();
        claim.metadata.name = Some(name);
        claim.metadata.namespace = Some(ns.into());
        let mut labels = t.metadata.labels.clone().unwrap_or_default();
        labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
        claim.metadata.labels = Some(labels);
        claim.metadata.annotations = t.metadata.annotations.clone();
        if delete_with_set {
            let mut owner = owner_ref(sts);
            owner.controller = None;
            claim.metadata.owner_references = Some(vec![owner]);
        }
        match api.create(&PostParams::default(), &claim).await {
            Ok(created) => {
                let set = sts.name_any();
                let note = format!(
                    "create Claim {} Pod {set}-{ordinal} in StatefulSet {set} success",
                    created.name_any()
                );
                ctx.event(CONTROLLER, sts, false, "SuccessfulCreate", note)
                    .await;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The name events are reported under, as upstream.
const CONTROLLER: &str = "statefulset-controller";

/// Deletes a pod of the set and says so.
async fn delete_pod(
    ctx: &Context,
    sts: &StatefulSet,
    api: &Api<Pod>,
    name: &str,
) -> Result<(), Error> {
    if pods::delete(api, name).await? {
        let note = format!(
            "delete Pod {name} in StatefulSet {} successful",
            sts.name_any()
        );
        ctx.event(CONTROLLER, sts, false, "SuccessfulDelete", note)
            .await;
    }
    Ok(())
}

/// Running with its Ready condition true: the bar `OrderedReady` waits for.
fn running_and_ready(p: &Pod) -> bool {
    pods::phase(p) == "Running" && is_ready(p)
}

async fn sync(sts: &StatefulSet, ctx: &Context) -> Result<Action, Error> {
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = sts.namespace().unwrap_or_else(|| "default".into());
    let set = sts.name_any();
    let spec = sts.spec.clone().unwrap_or_default();
    let template = serde_json::to_value(&spec.template).unwrap_or(Value::Null);
    let hash = template_hash(&template);
    let owner = owner_ref(sts);
    let limit = spec.revision_history_limit.unwrap_or(10);
    revisions::record(&ctx.client, &ns, &owner, &spec.template, &hash, limit).await?;
    let update_revision = revisions::name(&owner, &hash);

    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let owned = pods::claim(&pods_api, &owner, &spec.selector).await?;
    let mut by_ordinal: BTreeMap<i32, &Pod> = BTreeMap::new();
    for p in &owned {
        if let Some(i) = ordinal_of(&set, &p.name_any()) {
            by_ordinal.insert(i, p);
        }
    }
    let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let wanted = start..start + replicas;
    let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
    let min_ready = spec.min_ready_seconds.unwrap_or(0);

    // Create what is missing and replace what failed, in ordinal order.
    let mut blocked = false;
    for ordinal in wanted.clone() {
        match by_ordinal.get(&ordinal) {
            None => {
                ensure_claims(sts, &ns, ordinal, ctx).await?;
                let pod = pod_for(sts, &ns, ordinal, &hash);
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(_) => {
                        let note =
                            format!("create Pod {set}-{ordinal} in StatefulSet {set} successful");
                        ctx.event(CONTROLLER, sts, false, "SuccessfulCreate", note)
                            .await;
                    }
                    // The old pod of this name is still terminating.
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
                if ordered {
                    blocked = true;
                    break;
                }
            }
            Some(p) if matches!(pods::phase(p), "Failed" | "Succeeded") => {
                if p.metadata.deletion_timestamp.is_none() {
                    delete_pod(ctx, sts, &pods_api, &p.name_any()).await?;
                }
                if ordered {
                    blocked = true;
                    break;
                }
            }
            Some(p)
                if ordered
                    && (p.metadata.deletion_timestamp.is_some() || !running_and_ready(p)) =>
            {
                blocked = true;
                break;
            }
            Some(_) => {}
        }
    }

    // Scale down: the highest ordinal first; one at a time when ordered, and
    // only once every wanted pod is Running and Ready.
    let condemned: Vec<&Pod> = by_ordinal
        .iter()
        .rev()
        .filter(|(i, _)| !wanted.contains(i))
        .map(|(_, p)| *p)
        .collect();
    if !blocked {
        for p in condemned {
            if p.metadata.deletion_timestamp.is_none() {
                delete_pod(ctx, sts, &pods_api, &p.name_any()).await?;
            }
            if ordered {
                blocked = true;
                break;
            }
        }
    }

    // Rolling update, from the highest ordinal down to the partition.
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let all_ready = wanted.clone().all(|i| {
        by_ordinal
            .get(&i)
            .is_some_and(|p| running_and_ready(p) && p.metadata.deletion_timestamp.is_none())
    });
    if !blocked && all_ready && strategy.type_.as_deref() != Some("OnDelete") {
        let partition = strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.partition)
            .unwrap_or(0);
        let stale = wanted
            .clone()
            .rev()
            .filter(|i| *i - start >= partition)
            .filter_map(|i| by_ordinal.get(&i))
            .find(|p| p.labels().get(REVISION_HASH) != Some(&hash));
        if let Some(p) = stale {
            delete_pod(ctx, sts, &pods_api, &p.name_any()).await?;
        }
    }

    // Status, counting the wanted ordinals' pods.
    let in_range: Vec<&Pod> = wanted
        .clone()
        .filter_map(|i| by_ordinal.get(&i).copied())
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(in_range.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let existing = by_ordinal
        .values()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count();
    let updated = count(&|p| p.labels().get(REVISION_HASH) == Some(&hash));
    let previous_current = sts
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .unwrap_or_else(|| update_revision.clone());
    // Once every pod is at the new revision it is the current one.
    let current_revision = if updated == replicas && in_range.len() == existing {
        update_revision.clone()
    } else {
        previous_current
    };
    let current_hash = current_revision
        .strip_prefix(&format!("{set}-"))
        .unwrap_or_default()
        .to_owned();
    let status = json!({
        "replicas": i32::try_from(existing).unwrap_or(i32::MAX),
        "readyReplicas": count(&|p| is_ready(p)),
        "availableReplicas": count(&|p| is_available(p, min_ready)),
        "currentReplicas": count(&|p| p.labels().get(REVISION_HASH) == Some(&current_hash)),
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": update_revision,
        "observedGeneration": sts.metadata.generation,
        "collisionCount": 0,
    });
    let old = serde_json::to_value(&sts.status).unwrap_or(Value::Null);
    let changed = status
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| old.get(k) != Some(v));
    if changed {
        Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &set,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await?;
    }
    // Readiness that needs minReadySeconds to pass is not a watch event.
    if min_ready > 0 && count(&|p| is_ready(p)) > count(&|p| is_available(p, min_ready)) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_stable_names_claims_and_dns_identity() {
        let sts: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "uid": "u1"},
            "spec": {
                "serviceName": "nginx",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "i",
                             "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]},
                },
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}],
            },
        }))
        .unwrap();
        let pod = pod_for(&sts, "ns", 2, "h1");
        assert_eq!(pod.name_any(), "web-2");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let claim = spec.volumes.unwrap()[0]
            .persistent_volume_claim
            .clone()
            .unwrap();
        assert_eq!(claim.claim_name, "data-web-2");
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels[POD_NAME_LABEL], "web-2");
        assert_eq!(labels[POD_INDEX_LABEL], "2");
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(ordinal_of("web", "web-1a"), None);
    }
}
