//! The ResourceQuota controller: each quota's `status.hard` (its spec) and
//! `status.used`, recomputed from the objects that exist, as upstream's — which
//! gives back what deletions free and corrects what the API server charged at
//! admission for creates that then failed. Terminal pods do not count.
//! Recomputed when pods change in the quota's namespace, and every 10 s for
//! the other kinds.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams},
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use serde_json::{Value, json};
use sextant_apimachinery::{quantity, quota};

use crate::{Context, Error, Metrics, retry_soon};

/// How often usage of kinds without a watch here is recomputed.
const RESYNC: Duration = Duration::from_secs(10);

/// Runs the controller until its watches end.
pub async fn run(client: Client, metrics: Metrics) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    let controller = Controller::new(
        Api::<ResourceQuota>::all(client.clone()),
        watcher::Config::default(),
    );
    let quotas = controller.store();
    controller
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default(),
            move |pod: Pod| {
                quotas
                    .state()
                    .iter()
                    .filter(|q| q.namespace() == pod.namespace())
                    .map(|q| ObjectRef::from_obj(&**q))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, retry_soon, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

async fn reconcile(q: Arc<ResourceQuota>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.observe("resourcequota", sync(&q, &ctx.client)).await
}

async fn sync(q: &ResourceQuota, client: &Client) -> Result<Action, Error> {
    let ns = q.namespace().unwrap_or_else(|| "default".into());
    let hard = q
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    // List each source kind once.
    let mut sources: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for key in hard.keys() {
        let Some(source) = quota::source_of(key) else {
            continue;
        };
        if sources.contains_key(&source) {
            continue;
        }
        let (group, plural) = &source;
        let api_version = if group.is_empty() {
            "v1".to_owned()
        } else {
            format!("{group}/v1")
        };
        let resource = ApiResource {
            group: group.clone(),
            version: "v1".into(),
            api_version,
            kind: String::new(),
            plural: plural.clone(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
        let items = match api.list(&ListParams::default()).await {
            Ok(list) => list
                .items
                .into_iter()
                .map(|o| serde_json::to_value(o).unwrap_or(Value::Null))
                .collect(),
            // A kind this server does not serve counts nothing.
            Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        sources.insert(source, items);
    }
    let mut used = BTreeMap::new();
    for key in hard.keys() {
        let total: i64 = quota::source_of(key)
            .and_then(|s| {
                let (group, plural) = s.clone();
                sources.get(&s).map(|items| {
                    items
                        .iter()
                        .filter(|o| !(plural == "pods" && quota::is_terminal_pod(o)))
                        .map(|o| {
                            quota::usage(&group, &plural, o)
                                .get(key)
                                .copied()
                                .unwrap_or(0)
                        })
                        .sum()
                })
            })
            .unwrap_or(0);
        used.insert(key.clone(), quantity::format_milli(total));
    }
    let status = json!({"hard": hard, "used": used});
    let current = serde_json::to_value(&q.status).unwrap_or(Value::Null);
    if current != status {
        Api::<ResourceQuota>::namespaced(client.clone(), &ns)
            .patch_status(
                &q.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await?;
    }
    Ok(Action::requeue(RESYNC))
}
