//! ControllerRevisions, as the DaemonSet and StatefulSet controllers keep them:
//! one per pod template, named `<owner>-<hash>`, holding the template as the
//! strategic merge patch `kubectl rollout undo` applies, numbered so the
//! newest is the current one, pruned beyond `revisionHistoryLimit`.

use k8s_openapi::{
    api::{apps::v1::ControllerRevision, core::v1::PodTemplateSpec},
    apimachinery::pkg::{apis::meta::v1::OwnerReference, runtime::RawExtension},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use crate::Error;

/// The label naming the template revision a pod or ControllerRevision has.
pub const REVISION_HASH: &str = "controller-revision-hash";

/// The ControllerRevision name of `owner`'s template with `hash`.
pub fn name(owner: &OwnerReference, hash: &str) -> String {
    format!("{}-{hash}", owner.name)
}

/// Makes sure a ControllerRevision records `template` (with `hash`) and is the
/// newest of `owner`'s; prunes older ones beyond `limit`. Returns its number.
pub async fn record(
    client: &Client,
    ns: &str,
    owner: &OwnerReference,
    template: &PodTemplateSpec,
    hash: &str,
    limit: i32,
) -> Result<i64, Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let mut owned: Vec<ControllerRevision> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|cr| cr.owner_references().iter().any(|o| o.uid == owner.uid))
        .collect();
    owned.sort_by_key(|cr| cr.revision);
    let newest = owned.last().map_or(0, |cr| cr.revision);
    let name = name(owner, hash);
    let current = match owned.iter().find(|cr| cr.name_any() == name) {
        Some(cr) if cr.revision == newest => newest,
        Some(_) => {
            // Rolled back to an old template: it becomes the newest revision.
            let patch = json!({"revision": newest + 1});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            newest + 1
        }
        None => {
            let mut patch_template = serde_json::to_value(template).unwrap_or(Value::Null);
            if let Some(o) = patch_template.as_object_mut() {
                o.insert("$patch".into(), json!("replace"));
            }
            let mut labels = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(REVISION_HASH.into(), hash.into());
            let mut cr = ControllerRevision {
                data: Some(RawExtension(json!({"spec": {"template": patch_template}}))),
                revision: newest + 1,
                ..Default::default()
            };
            cr.metadata.name = Some(name);
            cr.metadata.namespace = Some(ns.into());
            cr.metadata.labels = Some(labels);
            cr.metadata.owner_references = Some(vec![owner.clone()]);
            match api.create(&PostParams::default(), &cr).await {
                Ok(created) => owned.push(created),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            newest + 1
        }
    };
    let old: Vec<&ControllerRevision> = owned.iter().filter(|cr| cr.revision < current).collect();
    let extra = old
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(0));
    for cr in old.into_iter().take(extra) {
        match api.delete(&cr.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(current)
}
