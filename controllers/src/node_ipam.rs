//! Node IPAM: every Node gets `spec.podCIDR` (and `podCIDRs`) from the
//! cluster CIDR, as kube-controller-manager's range allocator does with
//! `--allocate-node-cidrs`: the lowest free block of `--node-cidr-mask-size`
//! bits, never one another Node holds. A Node that already has a podCIDR keeps
//! it (it is immutable upstream); a deleted Node's block becomes free again.
//!
//! Allocation is serialized (one lock around read-all-then-write) and reads
//! the Nodes from the API rather than a cache, so two Nodes registering at
//! once cannot get the same block; the controller runs only on the leader.

use std::{collections::BTreeSet, sync::Arc};

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{Controller, controller::Action, watcher},
};
use serde_json::json;
use tokio::sync::Mutex;

use crate::{Context, Error, Metrics, retry_soon};

/// The range pod CIDRs come from.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The cluster CIDR (`--cluster-cidr`).
    pub cluster_cidr: Ipv4Net,
    /// The prefix length of each node's block (`--node-cidr-mask-size`).
    pub node_mask: u8,
}

impl Config {
    /// Checks that node blocks fit in the cluster CIDR.
    pub fn new(cluster_cidr: Ipv4Net, node_mask: u8) -> Result<Self, Error> {
        if node_mask < cluster_cidr.prefix_len() || node_mask > 30 {
            return Err(Error::Invalid(format!(
                "--node-cidr-mask-size {node_mask} does not fit in --cluster-cidr {cluster_cidr} (must be between {} and 30)",
                cluster_cidr.prefix_len()
            )));
        }
        Ok(Self {
            cluster_cidr,
            node_mask,
        })
    }

    /// The lowest block not in `taken`.
    pub fn first_free(&self, taken: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
        self.cluster_cidr
            .subnets(self.node_mask)
            .ok()?
            .find(|block| !taken.iter().any(|t| t.contains(block) || block.contains(t)))
    }
}

struct Ipam {
    ctx: Context,
    config: Config,
    lock: Mutex<()>,
}

/// Runs the allocator until its watch ends.
pub async fn run(client: Client, metrics: Metrics, config: Config) {
    let ipam = Arc::new(Ipam {
        ctx: Context {
            client: client.clone(),
            metrics,
        },
        config,
        lock: Mutex::new(()),
    });
    Controller::new(Api::<Node>::all(client), watcher::Config::default())
        .run(reconcile, retry_soon, ipam)
        .for_each(|_| std::future::ready(()))
        .await;
}

async fn reconcile(node: Arc<Node>, ipam: Arc<Ipam>) -> Result<Action, Error> {
    ipam.ctx.observe("nodeipam", allocate(&node, &ipam)).await
}

fn pod_cidrs(node: &Node) -> Vec<Ipv4Net> {
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.pod_cidrs.clone())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect()
}

async fn allocate(node: &Node, ipam: &Ipam) -> Result<Action, Error> {
    if !pod_cidrs(node).is_empty() || node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _serialized = ipam.lock.lock().await;
    let nodes: Api<Node> = Api::all(ipam.ctx.client.clone());
    let all = nodes.list(&ListParams::default()).await?.items;
    // Read again under the lock: another reconcile may have just given it one.
    if all
        .iter()
        .any(|n| n.name_any() == node.name_any() && !pod_cidrs(n).is_empty())
    {
        return Ok(Action::await_change());
    }
    let taken: BTreeSet<Ipv4Net> = all.iter().flat_map(pod_cidrs).collect();
    let Some(block) = ipam.config.first_free(&taken) else {
        tracing::warn!(node = %node.name_any(), cidr = %ipam.config.cluster_cidr, "the cluster CIDR is exhausted");
        return Err(Error::Invalid(format!(
            "no /{} left in the cluster CIDR {}",
            ipam.config.node_mask, ipam.config.cluster_cidr
        )));
    };
    let patch = json!({"spec": {"podCIDR": block.to_string(), "podCIDRs": [block.to_string()]}});
    nodes
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    tracing::info!(node = %node.name_any(), pod_cidr = %block, "pod CIDR allocated");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_the_lowest_free_and_never_overlap() {
        let config = Config::new("10.42.0.0/16".parse().unwrap(), 24).unwrap();
        let mut taken = BTreeSet::new();
        let first = config.first_free(&taken).unwrap();
        assert_eq!(first.to_string(), "10.42.0.0/24");
        taken.insert(first);
        taken.insert("10.42.2.0/23".parse().unwrap());
        assert_eq!(
            config.first_free(&taken).unwrap().to_string(),
            "10.42.1.0/24"
        );
        taken.insert("10.42.1.0/24".parse().unwrap());
        assert_eq!(
            config.first_free(&taken).unwrap().to_string(),
            "10.42.4.0/24"
        );
        let tiny = Config::new("10.0.0.0/23".parse().unwrap(), 24).unwrap();
        let full: BTreeSet<Ipv4Net> = ["10.0.0.0/24", "10.0.1.0/24"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        assert_eq!(tiny.first_free(&full), None);
        assert!(Config::new("10.0.0.0/16".parse().unwrap(), 8).is_err());
    }
}
