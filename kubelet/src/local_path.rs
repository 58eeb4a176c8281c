//! The node's half of `local-path` volumes: where their directories live (a
//! directory under the data dir, published on the Node so the provisioner in
//! the controller manager can name paths on this node), and the deleter that
//! removes a Released volume's directory and then the volume, when its reclaim
//! policy is Delete. (Upstream's local-path provisioner runs a helper pod for
//! this; the kubelet is already on the node.)

use std::path::{Path, PathBuf};

use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::{
    Api, Client, ResourceExt,
    api::DeleteParams,
    runtime::{WatchStreamExt, watcher},
};

pub use sextant_apimachinery::local_path::{NODE_ANNOTATION, PROVISIONER, ROOT_ANNOTATION};

/// Where this node keeps local-path volumes.
pub fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("storage")
}

/// Removes the directories of this node's Released local-path volumes whose
/// reclaim policy is Delete, then the volumes; runs until the watch ends.
pub async fn run_deleter(client: Client, node: String, data_dir: PathBuf) {
    let root = root(&data_dir);
    let volumes: Api<PersistentVolume> = Api::all(client);
    let watch = watcher(volumes.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(watch);
    while let Some(event) = watch.next().await {
        let Ok(pv) = event else {
            continue;
        };
        let mine = pv.annotations().get(NODE_ANNOTATION) == Some(&node);
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let spec = pv.spec.clone().unwrap_or_default();
        let delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
        if !(mine && released && delete) || pv.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(path) = spec.host_path.map(|h| PathBuf::from(h.path)) else {
            continue;
        };
        // Only ever remove what the provisioner put under this node's root.
        if !path.starts_with(&root) || path.parent() != Some(root.as_path()) {
            tracing::warn!(volume = %pv.name_any(), path = %path.display(), "not under the local-path root; left alone");
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(volume = %pv.name_any(), error = %e, "removing the volume's directory failed");
                continue;
            }
        }
        match volumes
            .delete(&pv.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => tracing::info!(volume = %pv.name_any(), "released local-path volume deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(volume = %pv.name_any(), error = %e, "deleting the volume failed")
            }
        }
    }
}
