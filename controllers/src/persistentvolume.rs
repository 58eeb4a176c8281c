//! The PersistentVolume controller: binds claims to volumes and provisions
//! volumes for the `local-path` StorageClass, as upstream's binder and
//! Rancher's local-path provisioner (which k3s ships) do together:
//!
//! - a claim without `storageClassName` gets the default class (upstream's
//!   retroactive default assignment);
//! - a claim binds to the smallest Available volume of its class whose access
//!   modes and capacity cover it (and, once a node is selected, whose node
//!   affinity admits that node); a volume pre-bound by `claimRef` binds to its
//!   claim only;
//! - classes with `WaitForFirstConsumer` wait until the scheduler has put a
//!   consuming pod on a node (`volume.kubernetes.io/selected-node` on the claim);
//! - `local-path` volumes are directories under the selected node's storage
//!   root (published by the node on its Node, `sextant.io/local-path-root`), as
//!   `hostPath` volumes with a node affinity for that node; the kubelet creates
//!   the directory on first mount and removes it when the volume is Released
//!   with reclaim policy Delete;
//! - a volume whose claim is gone is Released; with `Retain` it stays so until
//!   an administrator acts.

use std::{collections::BTreeMap, sync::Arc};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        core::v1::{Node, ObjectReference, PersistentVolume, PersistentVolumeClaim},
        storage::v1::StorageClass,
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use serde_json::json;
use sextant_apimachinery::{
    local_path::{
        NODE_ANNOTATION as LOCAL_PATH_NODE, PROVISIONER as LOCAL_PATH_PROVISIONER,
        ROOT_ANNOTATION as LOCAL_PATH_ROOT,
    },
    quantity, scheduling,
};

use crate::{Context, Error, Metrics, retry_soon};

/// The default StorageClass created at start.
pub const LOCAL_PATH_CLASS: &str = "local-path";
/// Set on a claim by the scheduler: the node its first consumer was put on.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Upstream's mark of which provisioner made a volume.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// Runs the claim binder and the volume phase keeper until their watches end,
/// after making sure the `local-path` StorageClass exists.
pub async fn run(client: Client, metrics: Metrics) {
    if let Err(e) = ensure_local_path_class(&client).await {
        tracing::warn!(error = %e, "creating the local-path StorageClass failed");
    }
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    // A volume changing (created, released) re-checks the claim it names, and
    // every unbound claim (a new volume may fit one).
    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = claims.store();
    let claims = claims
        .watches(
            Api::<PersistentVolume>::all(client.clone()),
            watcher::Config::default(),
            move |pv: PersistentVolume| {
                store
                    .state()
                    .iter()
                    .filter(|c| {
                        let named = pv
                            .spec
                            .as_ref()
                            .and_then(|s| s.claim_ref.as_ref())
                            .is_some_and(|r| {
                                r.name.as_deref() == Some(&c.name_any())
                                    && r.namespace == c.namespace()
                            });
                        named
                            || c.spec
                                .as_ref()
                                .and_then(|s| s.volume_name.as_ref())
                                .is_none()
                    })
                    .map(|c| ObjectRef::from_obj(&**c))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile_claim, retry_soon, ctx.clone())
        .for_each(|_| std::future::ready(()));
    let volumes = Controller::new(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<PersistentVolumeClaim>::all(client),
        watcher::Config::default(),
        |c: PersistentVolumeClaim| {
            c.spec
                .and_then(|s| s.volume_name)
                .map(|v| ObjectRef::<PersistentVolume>::new(&v))
        },
    )
    .run(reconcile_volume, retry_soon, ctx)
    .for_each(|_| std::future::ready(()));
    tokio::join!(claims, volumes);
}

async fn ensure_local_path_class(client: &Client) -> Result<(), Error> {
    let class: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": LOCAL_PATH_CLASS, "annotations": {DEFAULT_CLASS: "true"}},
        "provisioner": LOCAL_PATH_PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    }))
    .map_err(|e| Error::Invalid(e.to_string()))?;
    match Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile_claim(
    pvc: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.observe("persistentvolume-binder", sync_claim(&pvc, &ctx.client))
        .await
}

async fn reconcile_volume(pv: Arc<PersistentVolume>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.observe("persistentvolume-phase", sync_volume(&pv, &ctx.client))
        .await
}

/// The bytes a claim asks for.
fn requested(pvc: &PersistentVolumeClaim) -> i64 {
    pvc.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| quantity::bytes(&q.0))
        .unwrap_or(0)
}

/// The bytes a volume holds.
fn capacity(pv: &PersistentVolume) -> i64 {
    pv.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| quantity::bytes(&q.0))
        .unwrap_or(0)
}

fn class_of_claim(pvc: &PersistentVolumeClaim) -> String {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

fn class_of_volume(pv: &PersistentVolume) -> String {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

fn claim_ref(pv: &PersistentVolume) -> Option<&ObjectReference> {
    pv.spec.as_ref()?.claim_ref.as_ref()
}

/// Whether `pv` can hold `pvc` on `node` (when one is selected).
fn fits(pv: &PersistentVolume, pvc: &PersistentVolumeClaim, node: Option<&Node>) -> bool {
    let phase_ok = pv
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Available" || p == "Pending");
    let claim_ok = claim_ref(pv).is_none_or(|r| {
        r.name.as_deref() == Some(&pvc.name_any())
            && r.namespace == pvc.namespace()
            && r.uid
                .as_ref()
                .is_none_or(|u| Some(u) == pvc.metadata.uid.as_ref())
    });
    let wanted_modes = pvc
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default();
    let modes = pv
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default();
    let node_ok = node.is_none_or(|n| {
        pv.spec
            .as_ref()
            .and_then(|s| s.node_affinity.as_ref())
            .and_then(|a| a.required.as_ref())
            .is_none_or(|r| scheduling::node_selector_matches(r, n))
    });
    phase_ok
        && claim_ok
        && pv.metadata.deletion_timestamp.is_none()
        && class_of_volume(pv) == class_of_claim(pvc)
        && wanted_modes.iter().all(|m| modes.contains(m))
        && capacity(pv) >= requested(pvc)
        && node_ok
}

async fn sync_claim(pvc: &PersistentVolumeClaim, client: &Client) -> Result<Action, Error> {
    if pvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pvc.namespace().unwrap_or_else(|| "default".into());
    let name = pvc.name_any();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let classes: Api<StorageClass> = Api::all(client.clone());
    let spec = pvc.spec.clone().unwrap_or_default();

    if let Some(volume) = spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
        let phase = match volumes.get_opt(volume).await? {
            None => "Lost",
            Some(pv) => {
                if claim_ref(&pv).is_none() {
                    bind_volume(&volumes, &pv, pvc).await?;
                }
                "Bound"
            }
        };
        let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase);
        if !bound {
            let pv = volumes.get_opt(volume).await?;
            let capacity = pv
                .as_ref()
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.capacity.clone());
            let status = json!({"status": {
                "phase": phase,
                "accessModes": spec.access_modes,
                "capacity": capacity,
            }});
            claims
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
        }
        return Ok(Action::await_change());
    }

    // Retroactive default class.
    if spec.storage_class_name.is_none() {
        let all = classes.list(&ListParams::default()).await?.items;
        if let Some(default) = all.iter().find(|c| {
            c.annotations()
                .get(DEFAULT_CLASS)
                .is_some_and(|v| v == "true")
        }) {
            let patch = json!({"spec": {"storageClassName": default.name_any()}});
            claims
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(Action::await_change());
        }
    }
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Pending") {
        claims
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"phase": "Pending"}})),
            )
            .await?;
    }
    let class_name = class_of_claim(pvc);
    let class = if class_name.is_empty() {
        None
    } else {
        classes.get_opt(&class_name).await?
    };
    let wait_for_consumer = class
        .as_ref()
        .and_then(|c| c.volume_binding_mode.as_deref())
        == Some("WaitForFirstConsumer");
    let selected = pvc.annotations().get(SELECTED_NODE).cloned();
    if wait_for_consumer && selected.is_none() {
        return Ok(Action::await_change());
    }
    let node = match &selected {
        Some(n) => Api::<Node>::all(client.clone()).get_opt(n).await?,
        None => None,
    };

    let mut candidates: Vec<PersistentVolume> = volumes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|pv| fits(pv, pvc, node.as_ref()))
        .collect();
    // Pre-bound volumes first, then the smallest that fits.
    candidates.sort_by_key(|pv| (claim_ref(pv).is_none(), capacity(pv)));
    if let Some(pv) = candidates.first() {
        bind_volume(&volumes, pv, pvc).await?;
        let patch = json!({"metadata": {"annotations": {
                "pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes",
            }},
            "spec": {"volumeName": pv.name_any()}});
        claims
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        return Ok(Action::await_change());
    }

    let Some(class) = class.filter(|c| c.provisioner == LOCAL_PATH_PROVISIONER) else {
        return Ok(Action::await_change());
    };
    let Some(node) = node else {
        // local-path needs a node; an Immediate class cannot say which.
        tracing::warn!(claim = %name, "local-path claims need a WaitForFirstConsumer class and a consumer");
        return Ok(Action::await_change());
    };
    provision(&volumes, pvc, &class, &node).await?;
    Ok(Action::await_change())
}

/// Points `pv` at `pvc` (the first half of a bind; the claim's `volumeName` is
/// the second). The resourceVersion makes two claims racing for one volume safe.
async fn bind_volume(
    volumes: &Api<PersistentVolume>,
    pv: &PersistentVolume,
    pvc: &PersistentVolumeClaim,
) -> Result<(), Error> {
    let patch = json!({"metadata": {"resourceVersion": pv.resource_version()},
    "spec": {"claimRef": {
        "kind": "PersistentVolumeClaim", "apiVersion": "v1",
        "namespace": pvc.namespace(), "name": pvc.name_any(),
        "uid": pvc.metadata.uid, "resourceVersion": pvc.resource_version(),
    }}});
    volumes
        .patch(
            &pv.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Creates the local-path volume for `pvc` on `node`, already claimed by it.
async fn provision(
    volumes: &Api<PersistentVolume>,
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &Node,
) -> Result<(), Error> {
    let node_name = node.name_any();
    let Some(root) = node.annotations().get(LOCAL_PATH_ROOT) else {
        return Err(Error::Invalid(format!(
            "node {node_name} does not publish {LOCAL_PATH_ROOT}: its agent cannot hold local-path volumes"
        )));
    };
    let uid = pvc.metadata.uid.clone().unwrap_or_default();
    let pv_name = format!("pvc-{uid}");
    let ns = pvc.namespace().unwrap_or_default();
    let path = format!(
        "{}/{pv_name}_{ns}_{}",
        root.trim_end_matches('/'),
        pvc.name_any()
    );
    let spec = pvc.spec.clone().unwrap_or_default();
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .unwrap_or_else(|| Quantity("0".into()));
    let capacity: BTreeMap<String, Quantity> = [("storage".to_owned(), storage)].into();
    let pv: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name,
            "annotations": {PROVISIONED_BY: LOCAL_PATH_PROVISIONER, LOCAL_PATH_NODE: node_name},
        },
        "spec": {
            "capacity": capacity,
            "accessModes": spec.access_modes,
            "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            "storageClassName": class.name_any(),
            "volumeMode": "Filesystem",
            "hostPath": {"path": path, "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node_name]},
            ]}]}},
            "claimRef": {
                "kind": "PersistentVolumeClaim", "apiVersion": "v1",
                "namespace": ns, "name": pvc.name_any(), "uid": uid,
            },
        },
    }))
    .map_err(|e| Error::Invalid(e.to_string()))?;
    match volumes.create(&PostParams::default(), &pv).await {
        Ok(_) => {
            tracing::info!(claim = %pvc.name_any(), volume = %pv.name_any(), node = %node_name, "provisioned");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Keeps a volume's phase: Available without a claim, Bound to an existing
/// claim, Released once that claim is gone.
async fn sync_volume(pv: &PersistentVolume, client: &Client) -> Result<Action, Error> {
    if pv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let phase = match claim_ref(pv) {
        None => "Available",
        Some(r) => {
            let ns = r.namespace.clone().unwrap_or_default();
            let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
                .get_opt(r.name.as_deref().unwrap_or_default())
                .await?;
            match claim {
                Some(c) if r.uid.is_some() && c.metadata.uid != r.uid => "Released",
                Some(c)
                    if c.spec.as_ref().and_then(|s| s.volume_name.as_deref())
                        == Some(&pv.name_any()) =>
                {
                    "Bound"
                }
                // Claimed, the claim's half of the bind not yet written.
                Some(_) => "Available",
                None if r.uid.is_none() => "Available",
                None => "Released",
            }
        }
    };
    let current = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    // Released never goes back to Available by itself (the data is still there).
    if current != Some(phase) && !(current == Some("Released") && phase == "Available") {
        Api::<PersistentVolume>::all(client.clone())
            .patch_status(
                &pv.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"phase": phase}})),
            )
            .await?;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_fit_claims_by_class_modes_size_node_and_claim_ref() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "ns", "uid": "c1"},
            "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}},
        }))
        .unwrap();
        let pv = |extra: serde_json::Value| -> PersistentVolume {
            let mut spec = json!({"storageClassName": "fast", "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                                  "capacity": {"storage": "2Gi"}, "hostPath": {"path": "/x"}});
            for (k, v) in extra.as_object().unwrap() {
                spec[k] = v.clone();
            }
            serde_json::from_value(json!({"metadata": {"name": "v"}, "spec": spec})).unwrap()
        };
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
        }))
        .unwrap();
        assert!(fits(&pv(json!({})), &pvc, Some(&node)));
        assert!(!fits(
            &pv(json!({"capacity": {"storage": "512Mi"}})),
            &pvc,
            None
        ));
        assert!(!fits(&pv(json!({"storageClassName": "slow"})), &pvc, None));
        assert!(!fits(
            &pv(json!({"accessModes": ["ReadOnlyMany"]})),
            &pvc,
            None
        ));
        assert!(!fits(
            &pv(json!({"claimRef": {"namespace": "ns", "name": "other"}})),
            &pvc,
            None
        ));
        assert!(fits(
            &pv(json!({"claimRef": {"namespace": "ns", "name": "data"}})),
            &pvc,
            None
        ));
        let elsewhere = json!({"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n2"]}]}]}}});
        assert!(!fits(&pv(elsewhere.clone()), &pvc, Some(&node)));
        assert!(fits(&pv(elsewhere), &pvc, None));
    }
}
