//! The node's own objects: its Node (registered once, status refreshed) and its
//! Lease in `kube-node-lease`, renewed every 10 s — the heartbeat the node
//! lifecycle controller watches.

use std::time::Duration;

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use crate::{Config, Error, host::HostFacts};

/// Seconds a lease is valid without renewal (upstream's default).
const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the lease is renewed.
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// How often the Node's status is refreshed (conditions' heartbeat times).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(60);
/// Pods per node, upstream's default.
const MAX_PODS: u64 = 110;

/// The kubelet version reported in `nodeInfo`: the API version served, plus ours.
pub fn kubelet_version() -> String {
    format!("v1.33.0-sextant.{}", env!("CARGO_PKG_VERSION"))
}

/// Creates the Node if it is missing, then writes its status.
pub async fn register(
    client: &Client,
    config: &Config,
    facts: &HostFacts,
    runtime_version: &str,
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": config.node_name,
            "labels": {
                "kubernetes.io/hostname": config.node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": facts.architecture,
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": facts.architecture,
            },
        },
    }))
    .map_err(|e| Error::Internal(e.to_string()))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => tracing::info!(node = %config.node_name, "node registered"),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::info!(node = %config.node_name, "node already registered")
        }
        Err(e) => return Err(Error::Api(e)),
    }
    // Where this node's local-path volumes go (the data dir may have moved).
    let root = crate::local_path::root(&config.data_dir);
    let patch = json!({"metadata": {"annotations": {
        crate::local_path::ROOT_ANNOTATION: root.to_string_lossy(),
    }}});
    nodes
        .patch(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    update_status(client, config, facts, runtime_version).await
}

/// The Node's status: addresses, capacity, nodeInfo and conditions (Ready, and the
/// pressure conditions false).
pub fn status(config: &Config, facts: &HostFacts, runtime_version: &str) -> Value {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    };
    let capacity = json!({
        "cpu": facts.cpus.to_string(),
        "memory": format!("{}Ki", facts.memory_bytes / 1024),
        "ephemeral-storage": format!("{}Ki", facts.ephemeral_storage_bytes / 1024),
        "pods": MAX_PODS.to_string(),
    });
    json!({
        "addresses": [
            {"type": "InternalIP", "address": config.node_ip.to_string()},
            {"type": "Hostname", "address": config.node_name},
        ],
        "capacity": capacity,
        "allocatable": capacity,
                "daemonEndpoints": {"kubeletEndpoint": {"Port": config.kubelet_listen.port()}},
        "nodeInfo": {
            "machineID": facts.machine_id,
            "systemUUID": facts.machine_id,
            "bootID": facts.boot_id,
            "kernelVersion": facts.kernel_version,
            "osImage": facts.os_image,
            "containerRuntimeVersion": runtime_version,
            "kubeletVersion": kubelet_version(),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": facts.architecture,
        },
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
    })
}

async fn update_status(
    client: &Client,
    config: &Config,
    facts: &HostFacts,
    runtime_version: &str,
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({"status": status(config, facts, runtime_version)});
    nodes
        .patch_status(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Refreshes the Node's status every [`STATUS_INTERVAL`], and at once (checked
/// every [`LEASE_RENEW_INTERVAL`]) when the API shows it other than Ready — as when
/// the node lifecycle controller marked it Unknown from a stale Lease just before
/// this kubelet's first heartbeat; upstream's kubelet likewise re-posts a status
/// that differs from its own. Errors are logged and retried.
pub async fn keep_status(
    client: Client,
    config: Config,
    facts: HostFacts,
    runtime_version: String,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut last_post = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(LEASE_RENEW_INTERVAL).await;
        let shown_ready = match nodes.get_opt(&config.node_name).await {
            Ok(node) => node.is_some_and(|n| {
                n.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            }),
            Err(e) => {
                tracing::warn!(error = %e, "reading the Node");
                continue;
            }
        };
        if shown_ready && last_post.elapsed() < STATUS_INTERVAL {
            continue;
        }
        if !shown_ready {
            tracing::info!(node = %config.node_name, "the API shows this node not Ready; posting its status");
        }
        match update_status(&client, &config, &facts, &runtime_version).await {
            Ok(()) => last_post = tokio::time::Instant::now(),
            Err(e) => tracing::warn!(error = %e, "updating the node status failed"),
        }
    }
}

/// Renews the node's Lease once, creating it when missing; a failure is logged.
pub async fn renew_lease(client: &Client, node_name: &str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    if let Err(e) = renew(&leases, node_name).await {
        tracing::warn!(error = %e, "renewing the node lease failed");
    }
}

/// Renews the node's Lease every [`LEASE_RENEW_INTERVAL`], creating it when missing.
pub async fn keep_lease(client: Client, node_name: String) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        if let Err(e) = renew(&leases, &node_name).await {
            tracing::warn!(error = %e, "renewing the node lease failed");
        }
        tokio::time::sleep(LEASE_RENEW_INTERVAL).await;
    }
}

async fn renew(leases: &Api<Lease>, node_name: &str) -> Result<(), kube::Error> {
    let now = MicroTime(jiff::Timestamp::now());
    let spec = json!({
        "holderIdentity": node_name,
        "leaseDurationSeconds": LEASE_DURATION_SECONDS,
        "renewTime": now,
    });
    let patch = json!({"spec": spec});
    match leases
        .patch(node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": node_name, "namespace": "kube-node-lease"},
                "spec": spec,
            }))
            .map_err(kube::Error::SerdeError)?;
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}
