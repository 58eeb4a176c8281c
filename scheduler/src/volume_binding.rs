//! The scheduler's view of a pod's PersistentVolumeClaims, as upstream's
//! VolumeBinding plugin: a claim that does not exist, or is unbound in an
//! `Immediate` class, makes the pod unschedulable; a bound claim's volume
//! limits the pod to the nodes its node affinity admits; an unbound claim of a
//! `WaitForFirstConsumer` class is told the chosen node
//! (`volume.kubernetes.io/selected-node`), which is where its volume is then
//! provisioned or bound.

use k8s_openapi::api::{
    core::v1::{Node, NodeSelector, PersistentVolume, PersistentVolumeClaim, Pod},
    storage::v1::StorageClass,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;
use sextant_apimachinery::scheduling;

/// Set on a claim: the node its first consumer was put on.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// What a pod's claims ask of its node.
#[derive(Debug, Default)]
pub struct Claims {
    /// Node affinities of the volumes already bound: the node must match each.
    pub affinities: Vec<NodeSelector>,
    /// Unbound claims that wait for this pod to choose a node.
    pub waiting: Vec<String>,
}

impl Claims {
    /// Upstream's filter reason when the node does not suit the bound volumes.
    pub fn reason(&self, node: &Node) -> Option<String> {
        self.affinities
            .iter()
            .any(|a| !scheduling::node_selector_matches(a, node))
            .then(|| "node(s) had volume node affinity conflict".to_owned())
    }
}

/// Looks up the pod's claims: `Ok(Err(message))` when the pod cannot be
/// scheduled anywhere yet.
pub async fn claims(client: &Client, pod: &Pod) -> Result<Result<Claims, String>, kube::Error> {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let names: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.clone())
        })
        .collect();
    let mut out = Claims::default();
    if names.is_empty() {
        return Ok(Ok(out));
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    for name in names {
        let Some(pvc) = pvcs.get_opt(&name).await? else {
            return Ok(Err(format!("persistentvolumeclaim \"{name}\" not found")));
        };
        if pvc.metadata.deletion_timestamp.is_some() {
            return Ok(Err(format!(
                "persistentvolumeclaim \"{name}\" is being deleted"
            )));
        }
        let spec = pvc.spec.clone().unwrap_or_default();
        if let Some(volume) = spec.volume_name.filter(|v| !v.is_empty()) {
            let Some(pv) = Api::<PersistentVolume>::all(client.clone())
                .get_opt(&volume)
                .await?
            else {
                return Ok(Err(format!("persistentvolume \"{volume}\" not found")));
            };
            if let Some(required) = pv
                .spec
                .and_then(|s| s.node_affinity)
                .and_then(|a| a.required)
            {
                out.affinities.push(required);
            }
            continue;
        }
        let class = match spec.storage_class_name.as_deref() {
            Some(c) if !c.is_empty() => Api::<StorageClass>::all(client.clone()).get_opt(c).await?,
            _ => None,
        };
        let waits =
            class.and_then(|c| c.volume_binding_mode).as_deref() == Some("WaitForFirstConsumer");
        if !waits {
            return Ok(Err(
                "pod has unbound immediate PersistentVolumeClaims".to_owned()
            ));
        }
        out.waiting.push(name);
    }
    Ok(Ok(out))
}

/// Tells each waiting claim the chosen node.
pub async fn select_node(
    client: &Client,
    ns: &str,
    claims: &Claims,
    node: &str,
) -> Result<(), kube::Error> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    for name in &claims.waiting {
        let patch = json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
        pvcs.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}
