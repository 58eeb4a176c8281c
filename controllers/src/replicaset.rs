//! The ReplicaSet controller: keeps `spec.replicas` pods from the template,
//! adopting matching orphans and releasing pods that no longer match, deleting
//! the pods upstream would delete first when scaling down, and reporting
//! replicas, ready and available counts in the status.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{apps::v1::ReplicaSet, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{Controller, controller::Action, watcher},
};
use serde_json::{Value, json};

use crate::{
    Context, Error, Metrics,
    pods::{self, is_active, is_available, is_ready},
    retry_soon, selector_string,
};

/// The name events are reported under, as upstream.
const CONTROLLER: &str = "replicaset-controller";

/// Runs the controller until its watches end.
pub async fn run(client: Client, metrics: Metrics) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client), watcher::Config::default())
    .run(reconcile, retry_soon, ctx)
    .for_each(|_| std::future::ready(()))
    .await;
}

/// Upstream's deletion ranking when scaling down: the pod deleted first sorts
/// first (unscheduled, then pending, then not ready, then more restarts, then newer).
fn deletion_rank(p: &Pod) -> (u8, u8, u8, i64, i64) {
    let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let restarts: i32 = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    (
        u8::from(scheduled),
        phase,
        u8::from(is_ready(p)),
        -i64::from(restarts),
        -created,
    )
}

fn owner_ref(rs: &ReplicaSet) -> OwnerReference {
    pods::controller_ref(
        "apps/v1",
        "ReplicaSet",
        &rs.name_any(),
        &rs.uid().unwrap_or_default(),
    )
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.observe("replicaset", sync(&rs, &ctx)).await
}

async fn sync(rs: &ReplicaSet, ctx: &Context) -> Result<Action, Error> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = rs.namespace().unwrap_or_else(|| "default".into());
    let spec = rs.spec.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = selector_string(&spec.selector);
    let owned = pods::claim(&pods_api, &owner_ref(rs), &spec.selector).await?;
    let mut active: Vec<Pod> = owned.iter().filter(|p| is_active(p)).cloned().collect();
    let want = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    if active.len() < want {
        let template = spec.template.clone().unwrap_or_default();
        for _ in active.len()..want {
            let pod = pods::from_template(
                &template,
                &ns,
                &format!("{}-", rs.name_any()),
                &owner_ref(rs),
            );
            let created = pods_api.create(&PostParams::default(), &pod).await?;
            let note = format!("Created pod: {}", created.name_any());
            ctx.event(CONTROLLER, rs, false, "SuccessfulCreate", note)
                .await;
            active.push(created);
        }
    } else if active.len() > want {
        active.sort_by_key(deletion_rank);
        let extra = active.len() - want;
        for p in active.drain(..extra) {
            match pods_api
                .delete(&p.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {
                    let note = format!("Deleted pod: {}", p.name_any());
                    ctx.event(CONTROLLER, rs, false, "SuccessfulDelete", note)
                        .await;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let available = active.iter().filter(|p| is_available(p, min_ready)).count();
    let labeled = active
        .iter()
        .filter(|p| {
            let tl = spec
                .template
                .as_ref()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            tl.iter().all(|(k, v)| p.labels().get(k) == Some(v))
        })
        .count();
    let status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs.metadata.generation,
        "selector": selector,
    });
    let current: Value = serde_json::to_value(&rs.status).unwrap_or(Value::Null);
    let changed = [
        "replicas",
        "fullyLabeledReplicas",
        "readyReplicas",
        "availableReplicas",
        "observedGeneration",
    ]
    .iter()
    .any(|f| current[f].as_i64().unwrap_or(0) != status[f].as_i64().unwrap_or(0));
    if changed {
        let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        let mut patch = status.clone();
        if let Some(o) = patch.as_object_mut() {
            o.remove("selector");
        }
        rs_api
            .patch_status(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": patch})),
            )
            .await?;
    }
    // Pods that are ready but not yet available need another look later.
    if ready > available && min_ready > 0 {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}
