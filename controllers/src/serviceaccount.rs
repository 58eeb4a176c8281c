//! The ServiceAccount controller: every active namespace has a `default`
//! ServiceAccount (recreated if deleted), which pods without a
//! `serviceAccountName` run as, as upstream's `serviceaccounts-controller`
//! ensures.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api, Client, ResourceExt,
    api::PostParams,
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};

use crate::{Context, Error, Metrics, retry_soon};

/// The ServiceAccount every namespace has.
pub const DEFAULT: &str = "default";

/// Runs the controller until its watches end; a deleted `default`
/// ServiceAccount brings its namespace back for a look.
pub async fn run(client: Client, metrics: Metrics) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<ServiceAccount>::all(client),
        watcher::Config::default(),
        |sa: ServiceAccount| {
            (sa.name_any() == DEFAULT)
                .then(|| sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)))
                .flatten()
        },
    )
    .run(reconcile, retry_soon, ctx)
    .for_each(|_| std::future::ready(()))
    .await;
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.observe("serviceaccount", sync(&ns, &ctx)).await
}

async fn sync(ns: &Namespace, ctx: &Context) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns.name_any());
    if api.get_opt(DEFAULT).await?.is_none() {
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some(DEFAULT.into());
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            // Created meanwhile, or the namespace is going away.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::await_change())
}
