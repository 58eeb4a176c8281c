//! The namespace controller: when a namespace is deleted (Terminating, its
//! `spec.finalizers` holding `kubernetes`), deletes everything in it — every
//! namespaced resource the API server's discovery lists — and, once nothing is
//! left, removes the `kubernetes` finalizer through `namespaces/<name>/finalize`,
//! which lets the API server remove the namespace, as upstream's does.
//!
//! Content that takes time to go (pods shutting down gracefully, objects with
//! finalizers) is waited for; the namespace's `NamespaceContentRemaining`
//! condition says what is left meanwhile.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    discovery::{Discovery, Scope, verbs},
    runtime::{Controller, controller::Action, watcher},
};
use serde_json::json;

use crate::{Context, Error, Metrics, retry_soon};

/// The finalizer the namespace controller owns.
pub const FINALIZER: &str = "kubernetes";

/// Runs the controller until its watch ends.
pub async fn run(client: Client, metrics: Metrics) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    Controller::new(Api::<Namespace>::all(client), watcher::Config::default())
        .run(reconcile, retry_soon, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.observe("namespace", sync(&ns, &ctx)).await
}

async fn sync(ns: &Namespace, ctx: &Context) -> Result<Action, Error> {
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if ns.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let discovery = Discovery::new(ctx.client.clone()).run().await?;
    let mut remaining: Vec<String> = Vec::new();
    for group in discovery.groups() {
        // The preferred version of each resource, so nothing is deleted twice.
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::DELETE_COLLECTION)
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &name, &ar);
            let left = match api
                .delete_collection(&DeleteParams::background(), &ListParams::default())
                .await
            {
                Ok(_) => api.list(&ListParams::default()).await?.items.len(),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 405 => 0,
                Err(e) => return Err(e.into()),
            };
            if left > 0 {
                let plural = if ar.group.is_empty() {
                    ar.plural.clone()
                } else {
                    format!("{}.{}", ar.plural, ar.group)
                };
                remaining.push(format!("{plural} has {left} resource instances"));
            }
        }
    }
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    if !remaining.is_empty() {
        let condition = json!({
            "type": "NamespaceContentRemaining",
            "status": "True",
            "reason": "SomeResourcesRemain",
            "message": format!("Some resources are remaining: {}", remaining.join(", ")),
            "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        });
        namespaces
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"conditions": [condition]}})),
            )
            .await?;
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    // Empty: hand the namespace back without our finalizer.
    let mut finalized = ns.clone();
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    }
    match namespaces
        .replace_subresource::<Namespace>("finalize", &name, &PostParams::default(), &finalized)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(namespace = %name, "namespace emptied and finalized");
    Ok(Action::await_change())
}
