//! The garbage collector, for what Sextant's controllers own — Pods (of
//! ReplicaSets, Jobs, DaemonSets), ReplicaSets (of Deployments), Jobs (of
//! CronJobs), ControllerRevisions (of DaemonSets), EndpointSlices and Endpoints
//! (of Services): a dependent none of whose owners (by uid, of any kind, looked
//! up through discovery) exists any more is deleted in the background, as
//! upstream's garbage collector does with `propagationPolicy: Background`.
//!
//! `propagationPolicy: Orphan` (`kubectl delete --cascade=orphan`): the API server
//! puts an `orphan` finalizer on the owner; the collector removes the owner's
//! references from its dependents (ReplicaSets, Jobs, Pods, ControllerRevisions),
//! then the finalizer, and the owner goes while its dependents stay.
//!
//! `propagationPolicy: Foreground` (`--cascade=foreground`): the API server puts
//! a `foregroundDeletion` finalizer on the owner; the collector deletes the
//! dependents (in the foreground themselves) and removes the finalizer once the
//! last is gone, so the owner is visible, with its deletionTimestamp, until
//! then. Both apply to the workload kinds (Deployment, ReplicaSet,
//! StatefulSet, DaemonSet, Job, CronJob).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet},
        batch::v1::{CronJob, Job},
        core::v1::{Endpoints, Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind},
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use serde::de::DeserializeOwned;

use crate::{Error, Metrics};

/// An owner kind's API resource and whether it is namespaced.
type OwnerKind = (ApiResource, bool);

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Reconcile metrics.
    pub metrics: Metrics,
    /// Owner kinds resolved through discovery: (apiVersion, kind) → resource.
    kinds: Mutex<HashMap<(String, String), Option<OwnerKind>>>,
}

/// Makes `controller` (of dependents `D`) look at the dependents of an owner of
/// kind `O` when that owner changes or goes away.
fn on_owner<D, O>(controller: Controller<D>, client: &Client) -> Controller<D>
where
    D: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    O: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let store = controller.store();
    controller.watches(
        Api::<O>::all(client.clone()),
        watcher::Config::default(),
        move |owner| dependents(&store, &owner),
    )
}

/// Runs the collector until the watches end.
pub async fn run(client: Client, metrics: Metrics) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
        kinds: Default::default(),
    });
    let c = &client;
    let config = watcher::Config::default;
    let pods = Controller::new(Api::<Pod>::all(c.clone()), config());
    let pods = on_owner::<_, ReplicaSet>(pods, c);
    let pods = on_owner::<_, Job>(pods, c);
    let pods = on_owner::<_, DaemonSet>(pods, c);
    let replicasets = on_owner::<_, Deployment>(
        Controller::new(Api::<ReplicaSet>::all(c.clone()), config()),
        c,
    );
    let jobs = on_owner::<_, CronJob>(Controller::new(Api::<Job>::all(c.clone()), config()), c);
    let revisions = on_owner::<_, DaemonSet>(
        Controller::new(Api::<ControllerRevision>::all(c.clone()), config()),
        c,
    );
    let slices = on_owner::<_, Service>(
        Controller::new(Api::<EndpointSlice>::all(c.clone()), config()),
        c,
    );
    let endpoints = on_owner::<_, Service>(
        Controller::new(Api::<Endpoints>::all(c.clone()), config()),
        c,
    );
    let collectors = async {
        tokio::join!(
            pods.run(reconcile::<Pod>, error_policy, ctx.clone())
                .for_each(|_| std::future::ready(())),
            replicasets
                .run(reconcile::<ReplicaSet>, error_policy, ctx.clone())
                .for_each(|_| std::future::ready(())),
            jobs.run(reconcile::<Job>, error_policy, ctx.clone())
                .for_each(|_| std::future::ready(())),
            revisions
                .run(reconcile::<ControllerRevision>, error_policy, ctx.clone())
                .for_each(|_| std::future::ready(())),
            slices
                .run(reconcile::<EndpointSlice>, error_policy, ctx.clone())
                .for_each(|_| std::future::ready(())),
            endpoints
                .run(reconcile::<Endpoints>, error_policy, ctx.clone())
                .for_each(|_| std::future::ready(())),
        )
    };
    let finalizing = async {
        tokio::join!(
            finalizer_controller::<Deployment>(ctx.client.clone(), ctx.clone()),
            finalizer_controller::<ReplicaSet>(ctx.client.clone(), ctx.clone()),
            finalizer_controller::<StatefulSet>(ctx.client.clone(), ctx.clone()),
            finalizer_controller::<DaemonSet>(ctx.client.clone(), ctx.clone()),
            finalizer_controller::<Job>(ctx.client.clone(), ctx.clone()),
            finalizer_controller::<CronJob>(ctx.client.clone(), ctx.clone()),
        )
    };
    tokio::join!(collectors, finalizing);
}

/// The finalizer `propagationPolicy: Orphan` puts on an owner.
pub const ORPHAN: &str = "orphan";
/// The finalizer `propagationPolicy: Foreground` puts on an owner.
pub const FOREGROUND: &str = "foregroundDeletion";

/// Finishes the deletion of owners of kind `K` that carry the `orphan` or
/// `foregroundDeletion` finalizer.
async fn finalizer_controller<K>(client: Client, ctx: Arc<Context>)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    Controller::new(Api::<K>::all(client), watcher::Config::default())
        .run(finalize::<K>, error_policy, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

/// `orphan`: strips the owner's references from its dependents, then the
/// finalizer. `foregroundDeletion`: deletes the dependents (owners among them
/// in the foreground too, so the wait reaches down to the pods), and removes
/// the finalizer once none is left — the owner is the last to go.
async fn finalize<K>(owner: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let meta = owner.meta();
    let finalizers = meta.finalizers.clone().unwrap_or_default();
    let orphan = finalizers.iter().any(|f| f == ORPHAN);
    let foreground = finalizers.iter().any(|f| f == FOREGROUND);
    if meta.deletion_timestamp.is_none() || !(orphan || foreground) {
        return Ok(Action::await_change());
    }
    let started = std::time::Instant::now();
    let ns = owner.namespace().unwrap_or_else(|| "default".into());
    let uid = meta.uid.clone().unwrap_or_default();
    let result = async {
        let done = if orphan {
            release::<ReplicaSet>(&ctx.client, &ns, &uid).await?;
            release::<Pod>(&ctx.client, &ns, &uid).await?;
            release::<Job>(&ctx.client, &ns, &uid).await?;
            release::<ControllerRevision>(&ctx.client, &ns, &uid).await?;
            tracing::info!(kind = %K::kind(&()), name = %owner.name_any(), "orphaned the dependents");
            ORPHAN
        } else {
            let left = delete_dependents::<ReplicaSet>(&ctx.client, &ns, &uid).await?
                + delete_dependents::<Job>(&ctx.client, &ns, &uid).await?
                + delete_dependents::<Pod>(&ctx.client, &ns, &uid).await?
                + delete_dependents::<ControllerRevision>(&ctx.client, &ns, &uid).await?;
            if left > 0 {
                return Ok(false);
            }
            tracing::info!(kind = %K::kind(&()), name = %owner.name_any(), "dependents deleted in the foreground");
            FOREGROUND
        };
        let rest: Vec<&String> = finalizers.iter().filter(|f| *f != done).collect();
        let patch = serde_json::json!({"metadata": {"finalizers": rest}});
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        match api
            .patch(
                &owner.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(true),
            Err(e) => Err(Error::from(e)),
        }
    }
    .await;
    ctx.metrics
        .observe("garbagecollector", started.elapsed(), result.is_err());
    match result? {
        true => Ok(Action::await_change()),
        // Dependents still terminating: look again soon.
        false => Ok(Action::requeue(Duration::from_secs(1))),
    }
}

/// Deletes (in the foreground) every `D` in `ns` that `uid` owns and is not yet
/// being deleted; returns how many of them still exist.
async fn delete_dependents<D>(client: &Client, ns: &str, uid: &str) -> Result<usize, Error>
where
    D: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<D> = Api::namespaced(client.clone(), ns);
    let params = DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
        ..Default::default()
    };
    let mut left = 0;
    for d in api.list(&kube::api::ListParams::default()).await?.items {
        if !d.owner_references().iter().any(|o| o.uid == uid) {
            continue;
        }
        left += 1;
        if d.meta().deletion_timestamp.is_some() {
            continue;
        }
        match api.delete(&d.name_any(), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => left -= 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(left)
}

/// Removes owner `uid` from the owner references of every `D` in `ns`.
async fn release<D>(client: &Client, ns: &str, uid: &str) -> Result<(), Error>
where
    D: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<D> = Api::namespaced(client.clone(), ns);
    for d in api.list(&kube::api::ListParams::default()).await?.items {
        if !d.owner_references().iter().any(|o| o.uid == uid) {
            continue;
        }
        let rest: Vec<&OwnerReference> = d
            .owner_references()
            .iter()
            .filter(|o| o.uid != uid)
            .collect();
        // No owner left: drop the field, as upstream's objects show it.
        let refs = if rest.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!(rest)
        };
        let patch = serde_json::json!({"metadata": {"ownerReferences": refs}});
        match api
            .patch(
                &d.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
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

/// The API resource of an owner's kind and whether it is namespaced (cached;
/// `None` for a kind the API server does not serve).
async fn resource_of(ctx: &Context, owner: &OwnerReference) -> Result<Option<OwnerKind>, Error> {
    let key = (owner.api_version.clone(), owner.kind.clone());
    if let Some(known) = ctx.kinds.lock().ok().and_then(|k| k.get(&key).cloned()) {
        return Ok(known);
    }
    let (group, version) = match owner.api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", owner.api_version.as_str()),
    };
    let gvk = GroupVersionKind::gvk(group, version, &owner.kind);
    let resource = match kube::discovery::pinned_kind(&ctx.client, &gvk).await {
        Ok((ar, caps)) => Some((ar, caps.scope == kube::discovery::Scope::Namespaced)),
        Err(kube::Error::Discovery(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if let Ok(mut kinds) = ctx.kinds.lock() {
        kinds.insert(key, resource.clone());
    }
    Ok(resource)
}

/// Whether `owner` still exists with the same uid (owners of kinds the API
/// server does not serve count as existing: nothing is deleted on a guess).
async fn owner_exists(ctx: &Context, ns: &str, owner: &OwnerReference) -> Result<bool, Error> {
    let Some((ar, namespaced)) = resource_of(ctx, owner).await? else {
        return Ok(true);
    };
    let api: Api<DynamicObject> = if namespaced {
        Api::namespaced_with(ctx.client.clone(), ns, &ar)
    } else {
        Api::all_with(ctx.client.clone(), &ar)
    };
    Ok(api
        .get_opt(&owner.name)
        .await?
        .is_some_and(|o| o.metadata.uid.as_deref() == Some(owner.uid.as_str())))
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
        if owner_exists(ctx, &ns, owner).await? {
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
