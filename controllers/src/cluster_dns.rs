//! The cluster DNS Service: `kube-dns` in kube-system (the name kubeadm and every
//! DNS add-on use, so tools that look for it find it) on the tenth address of the
//! service CIDR, as upstream's convention has it, with one EndpointSlice listing
//! every Ready node's InternalIP on port 53: each node's agent answers cluster DNS
//! there, and the datapath balances `kube-dns` like any other Service.
//!
//! Loopback node addresses are left out (a pod cannot reach a node's loopback).

use std::{net::Ipv4Addr, sync::Arc};

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::{Controller, controller::Action, reflector::Store, watcher},
};
use serde_json::json;

use crate::{Context, Error, Metrics, endpointslice::MANAGED_BY, retry_soon};

/// The Service's namespace and name.
pub const NAMESPACE: &str = "kube-system";
/// The Service's name.
pub const NAME: &str = "kube-dns";
/// The slice this controller owns.
const SLICE: &str = "kube-dns-nodes";
/// This controller's name in `endpointslice.kubernetes.io/managed-by`.
const MANAGER: &str = "cluster-dns.sextant.io";

/// The cluster DNS address: the tenth address of the service CIDR (10.96.0.10 for
/// the default 10.96.0.0/12).
pub fn service_ip(service_cidr: Ipv4Net) -> Ipv4Addr {
    let base = u32::from(service_cidr.network());
    Ipv4Addr::from(base + 10)
}

struct Data {
    ctx: Context,
    nodes: Store<Node>,
    ip: Ipv4Addr,
}

/// Keeps the Service and its node endpoints until the watch ends.
pub async fn run(client: Client, metrics: Metrics, ip: Ipv4Addr) {
    let controller = Controller::new(Api::<Node>::all(client.clone()), watcher::Config::default());
    let data = Arc::new(Data {
        ctx: Context { client, metrics },
        nodes: controller.store(),
        ip,
    });
    controller
        .run(reconcile, retry_soon, data)
        .for_each(|_| std::future::ready(()))
        .await;
}

async fn reconcile(_node: Arc<Node>, data: Arc<Data>) -> Result<Action, Error> {
    data.ctx.observe("clusterdns", sync(&data)).await
}

/// InternalIPs of Ready nodes that pods can reach, sorted.
pub fn dns_endpoints(nodes: &[Arc<Node>]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = nodes
        .iter()
        .filter(|n| {
            n.metadata.deletion_timestamp.is_none()
                && n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| {
            n.status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP")?
                .address
                .parse::<Ipv4Addr>()
                .ok()
        })
        .filter(|ip| !ip.is_loopback())
        .collect();
    out.sort();
    out.dedup();
    out
}

async fn sync(data: &Data) -> Result<Action, Error> {
    let client = &data.ctx.client;
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    if services.get_opt(NAME).await?.is_none() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": NAME, "namespace": NAMESPACE,
                         "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
            "spec": {"clusterIP": data.ip.to_string(), "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ]},
        }))
        .map_err(|e| Error::Invalid(e.to_string()))?;
        match services.create(&PostParams::default(), &svc).await {
            Ok(_) => tracing::info!(ip = %data.ip, "created the kube-dns Service"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let endpoints: Vec<serde_json::Value> = dns_endpoints(&data.nodes.state())
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
        .collect();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": SLICE, "namespace": NAMESPACE, "labels": {
            "kubernetes.io/service-name": NAME,
            MANAGED_BY: MANAGER,
        }},
        "addressType": "IPv4",
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ],
        "endpoints": endpoints,
    });
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    match slices.get_opt(SLICE).await? {
        None => {
            let s: EndpointSlice =
                serde_json::from_value(slice).map_err(|e| Error::Invalid(e.to_string()))?;
            match slices.create(&PostParams::default(), &s).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Some(current) => {
            let want: Vec<Vec<String>> = endpoints
                .iter()
                .map(|e| vec![e["addresses"][0].as_str().unwrap_or_default().to_owned()])
                .collect();
            let have: Vec<Vec<String>> = current
                .endpoints
                .iter()
                .map(|e| e.addresses.clone())
                .collect();
            if want != have {
                slices
                    .patch(SLICE, &PatchParams::default(), &Patch::Merge(&slice))
                    .await?;
                tracing::info!(nodes = want.len(), "cluster DNS endpoints updated");
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_tenth_address_of_the_service_cidr() {
        assert_eq!(
            service_ip("10.96.0.0/12".parse().unwrap()),
            Ipv4Addr::new(10, 96, 0, 10)
        );
    }

    #[test]
    fn ready_reachable_nodes_only() {
        let node = |name: &str, ip: &str, ready: &str| -> Arc<Node> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                               "conditions": [{"type": "Ready", "status": ready}]},
                }))
                .unwrap(),
            )
        };
        let nodes = [
            node("b", "10.9.0.2", "True"),
            node("a", "10.9.0.1", "True"),
            node("c", "10.9.0.3", "Unknown"),
            node("d", "127.0.0.1", "True"),
        ];
        assert_eq!(
            dns_endpoints(&nodes),
            [Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(10, 9, 0, 2)]
        );
    }
}
