//! What every controller that owns pods shares, as upstream's `controller_utils`
//! and `ControllerRefManager` do: pod state predicates, the controller
//! ownerReference, claiming pods by selector (adopting matching orphans,
//! releasing owned pods that stopped matching) and pods from a template.

use k8s_openapi::{
    api::core::v1::{Pod, PodTemplateSpec},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;

use crate::{Error, selector_matches};

/// Not being deleted and not finished.
pub fn is_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The pod's phase, `Pending` when it has none yet.
pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Its Ready condition is True.
pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready for at least `min_ready` seconds.
pub fn is_available(p: &Pod, min_ready: i32) -> bool {
    if !is_ready(p) {
        return false;
    }
    if min_ready <= 0 {
        return true;
    }
    let since = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .and_then(|c| c.last_transition_time.as_ref());
    since.is_some_and(|t| {
        jiff::Timestamp::now().duration_since(t.0).as_secs() >= i64::from(min_ready)
    })
}

/// The ownerReference a controller puts on what it creates.
pub fn controller_ref(api_version: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The pods of `api`'s namespace that `owner` controls after claiming: pods it
/// controls that still match `selector`, plus active matching orphans, which
/// are adopted. Owned pods that no longer match are released.
pub async fn claim(
    api: &Api<Pod>,
    owner: &OwnerReference,
    selector: &LabelSelector,
) -> Result<Vec<Pod>, Error> {
    let all = api.list(&ListParams::default()).await?.items;
    let mut owned = Vec::new();
    for p in all {
        let matches = selector_matches(selector, p.labels());
        let controller = p
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        match controller {
            Some(uid) if uid == owner.uid => {
                if matches {
                    owned.push(p);
                    continue;
                }
                let refs: Vec<&OwnerReference> = p
                    .owner_references()
                    .iter()
                    .filter(|o| o.uid != owner.uid)
                    .collect();
                let patch = json!({"metadata": {"ownerReferences": refs}});
                api.patch(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            }
            None if matches && is_active(&p) => {
                let mut refs = p.owner_references().to_vec();
                refs.push(owner.clone());
                // The resourceVersion makes adoption lose against a concurrent change.
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": p.resource_version()}});
                match api
                    .patch(
                        &p.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(adopted) => owned.push(adopted),
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            _ => {}
        }
    }
    Ok(owned)
}

/// A pod from `template`, owned by `owner`, named `<prefix>` + a random suffix.
pub fn from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    generate_name: &str,
    owner: &OwnerReference,
) -> Pod {
    let mut meta = template.metadata.clone().unwrap_or_default();
    meta.generate_name = Some(generate_name.to_owned());
    meta.namespace = Some(namespace.to_owned());
    meta.owner_references = Some(vec![owner.clone()]);
    Pod {
        metadata: meta,
        spec: template.spec.clone(),
        status: None,
    }
}

/// Deletes a pod (gracefully); `true` if this call deleted it, `false` if it
/// was already gone.
pub async fn delete(api: &Api<Pod>, name: &str) -> Result<bool, Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}
