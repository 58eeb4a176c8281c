//! The garbage collector, for what Sextant's controllers own: a Pod or a
//! ReplicaSet whose owner (by uid) is gone is deleted in the background, as
//! upstream's garbage collector does with `propagationPolicy: Background`.
//! Not honoured yet: `propagationPolicy: Orphan` (`kubectl delete --cascade=orphan`)
//! and `Foreground` — the API server deletes the owner at once and its dependents
//! are collected here in the background either way.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet},
        batch::v1::Job,
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::DeleteParams,
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use serde::de::DeserializeOwned;

use crate::{Error, Metrics};

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Reconcile metrics.
    pub metrics: Metrics,
}

/// Runs the collector for Pods and ReplicaSets until the watches end.
pub async fn run(client: Client, metrics: Metrics) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    // A dependent is looked at when it changes and when any owner of its kind
    // changes or goes away (the owner's watch maps to its dependents).
    let pods = Controller::new(Api::<Pod>::all(client.clone()), watcher::Config::default());
    let pod_store = pods.store();
    let job_pod_store = pods.store();
    let pods = pods
        .watches(
            Api::<ReplicaSet>::all(client.clone()),
            watcher::Config::default(),
            move |rs| dependents(&pod_store, &rs),
        )
        .watches(
            Api::<Job>::all(client.clone()),
            watcher::Config::default(),
            move |job| dependents(&job_pod_store, &job),
        )
        .run(reconcile::<Pod>, error_policy, ctx.clone())
        .for_each(|_| std::future::ready(()));
    let replicasets = Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let rs_store = replicasets.store();
    let replicasets = replicasets
        .watches(
            Api::<Deployment>::all(client),
            watcher::Config::default(),
            move |d| dependents(&rs_store, &d),
        )
        .run(reconcile::<ReplicaSet>, error_policy, ctx)
        .for_each(|_| std::future::ready(()));
    tokio::join!(pods, replicasets);
}

/// The objects in `store` that name `owner` (by uid) among their owners.
fn dependents<D, O>(store: &kube::runtime::reflector::Store<D>, owner: &O) -> Vec<ObjectRef<D>>
where
    D: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    O: Resource,
{
    let Some(uid) = owner.meta().uid.clone() else {
        return Vec::new();
    };
    store
        .state()
        .iter()
        .filter(|d| d.owner_references().iter().any(|o| o.uid == uid))
        .map(|d| ObjectRef::from_obj(&**d))
        .collect()
}

/// Whether `owner` still exists with the same uid (owners of unknown kinds count
/// as existing: this collector does not know how to look them up).
async fn owner_exists(client: &Client, ns: &str, owner: &OwnerReference) -> Result<bool, Error> {
    async fn exists<K>(api: Api<K>, owner: &OwnerReference) -> Result<bool, Error>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        Ok(api
            .get_opt(&owner.name)
            .await?
            .is_some_and(|o| o.meta().uid.as_deref() == Some(owner.uid.as_str())))
    }
    match (owner.api_version.as_str(), owner.kind.as_str()) {
        ("apps/v1", "ReplicaSet") => {
            exists(Api::<ReplicaSet>::namespaced(client.clone(), ns), owner).await
        }
        ("apps/v1", "Deployment") => {
            exists(Api::<Deployment>::namespaced(client.clone(), ns), owner).await
        }
        ("batch/v1", "Job") => exists(Api::<Job>::namespaced(client.clone(), ns), owner).await,
        _ => Ok(true),
    }
}

async fn reconcile<K>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let started = std::time::Instant::now();
    let result = collect(&*obj, &ctx).await;
    ctx.metrics
        .observe("garbagecollector", started.elapsed(), result.is_err());
    result
}

async fn collect<K>(obj: &K, ctx: &Context) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let owners = obj.owner_references();
    if owners.is_empty() || obj.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    // Upstream deletes a dependent once none of its owners exist.
    for owner in owners {
        if owner_exists(&ctx.client, &ns, owner).await? {
            return Ok(Action::await_change());
        }
    }
    tracing::info!(kind = %K::kind(&()), name = %obj.name_any(), "deleting a dependent whose owner is gone");
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let params = DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(&obj.name_any(), &params).await {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

fn error_policy<K>(_obj: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "garbage collection failed");
    Action::requeue(Duration::from_secs(5))
}
