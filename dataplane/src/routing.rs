//! Routing between nodes and out of the cluster, done by the kernel and kept in
//! step with the API: a route to each other node's podCIDR via its InternalIP
//! (native routing, no tunnel), IPv4 forwarding on, and masquerade to the node's
//! address for pod traffic leaving the cluster CIDR (an nftables rule, as
//! kube-proxy and the reference bridge plugin use; see docs/architecture.md).

use std::{collections::BTreeMap, net::Ipv4Addr, process::Stdio, sync::Arc};

use futures::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    runtime::{WatchStreamExt, reflector, watcher},
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::RouteMessageBuilder;
use sextant_ebpf_common::lb::{MASQUERADE_MARK, SNAT_PORT_MIN};
use tokio::{io::AsyncWriteExt, sync::watch};

/// The route protocol number marking Sextant's routes (`ip route show proto 115`),
/// so reconciliation touches no one else's.
pub const ROUTE_PROTOCOL: u8 = 115;

/// The nftables table holding the masquerade rule.
pub const NFT_TABLE: &str = "sextant";

/// Errors of node routing.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// The request.
        what: String,
        /// What the kernel said.
        #[source]
        source: rtnetlink::Error,
    },
    /// `nft` failed or is missing.
    #[error("nft: {0}")]
    Nft(String),
    /// A sysctl could not be written.
    #[error("writing {path}: {source}")]
    Sysctl {
        /// Its /proc/sys path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Turns on IPv4 forwarding in this network namespace.
pub fn enable_forwarding() -> Result<(), RoutingError> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    std::fs::write(path, "1").map_err(|source| RoutingError::Sysctl {
        path: path.to_owned(),
        source,
    })
}

/// The nftables script for masquerading `pod_cidr` traffic that leaves
/// `cluster_cidr`, and NodePort traffic the uplink program sends to another
/// node's backend (marked [`MASQUERADE_MARK`]). TCP and UDP ports are mapped
/// below [`SNAT_PORT_MIN`]: the ports above belong to the uplink's XDP program.
pub fn masquerade_script(pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net) -> String {
    let ports = format!("1-{}", SNAT_PORT_MIN - 1);
    // `add` then `delete` makes the script idempotent on nft versions without
    // `destroy`; the table is rebuilt atomically in one transaction.
    format!(
        "add table ip {NFT_TABLE}\n\
         delete table ip {NFT_TABLE}\n\
         table ip {NFT_TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta l4proto {{ tcp, udp }} ip saddr {pod_cidr} ip daddr != {cluster_cidr} masquerade to :{ports}\n\
         \t\tip saddr {pod_cidr} ip daddr != {cluster_cidr} masquerade\n\
         \t\tmeta l4proto {{ tcp, udp }} meta mark & {MASQUERADE_MARK:#x} == {MASQUERADE_MARK:#x} masquerade to :{ports}\n\
         \t\tmeta mark & {MASQUERADE_MARK:#x} == {MASQUERADE_MARK:#x} masquerade\n\
         \t}}\n\
         }}\n"
    )
}

async fn nft(script: &str) -> Result<(), RoutingError> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RoutingError::Nft(format!("running nft (Debian package nftables): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| RoutingError::Nft(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| RoutingError::Nft(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RoutingError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// Installs (or replaces) the masquerade rule.
pub async fn install_masquerade(
    pod_cidr: Ipv4Net,
    cluster_cidr: Ipv4Net,
) -> Result<(), RoutingError> {
    nft(&masquerade_script(pod_cidr, cluster_cidr)).await
}

/// Removes the masquerade table; absent is not an error.
pub async fn remove_masquerade() -> Result<(), RoutingError> {
    nft(&format!(
        "add table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n"
    ))
    .await
}

/// The interface holding `ip`: the node's uplink, where NodePort traffic arrives.
pub fn interface_with(ip: Ipv4Addr) -> Option<String> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .find(|a| {
            a.address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in())
                .is_some_and(|s| s.ip() == ip)
        })
        .map(|a| a.interface_name)
}

/// Each other node's podCIDR and the address to reach it through.
pub fn desired_routes(nodes: &[Arc<Node>], own_name: &str) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for node in nodes {
        if node.metadata.name.as_deref() == Some(own_name) {
            continue;
        }
        let Some(spec) = node.spec.as_ref() else {
            continue;
        };
        let Some(cidr) = spec
            .pod_cidr
            .as_deref()
            .and_then(|c| c.parse::<Ipv4Net>().ok())
        else {
            continue;
        };
        let internal = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<Ipv4Addr>().ok());
        if let Some(via) = internal
            && !via.is_loopback()
        {
            out.insert(cidr.trunc(), via);
        }
    }
    out
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> RoutingError {
    let what = what.into();
    move |source| RoutingError::Netlink { what, source }
}

/// Sextant's routes in the main table: destination → gateway.
pub async fn current_routes(
    handle: &rtnetlink::Handle,
) -> Result<Vec<(Ipv4Net, Option<Ipv4Addr>, RouteMessage)>, RoutingError> {
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut out = Vec::new();
    while let Some(msg) = routes.try_next().await.map_err(nl("listing routes"))? {
        if msg.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
            continue;
        }
        let mut dst = None;
        let mut via = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => via = Some(*a),
                _ => {}
            }
        }
        if let Some(d) = dst
            && let Ok(net) = Ipv4Net::new(d, msg.header.destination_prefix_length)
        {
            out.push((net, via, msg));
        }
    }
    Ok(out)
}

/// Makes the kernel's Sextant routes equal `desired`: replaces what differs,
/// deletes what no node needs any more.
pub async fn reconcile_routes(
    handle: &rtnetlink::Handle,
    desired: &BTreeMap<Ipv4Net, Ipv4Addr>,
) -> Result<(), RoutingError> {
    for (net, via, msg) in current_routes(handle).await? {
        if desired.get(&net).copied() != via {
            handle
                .route()
                .del(msg)
                .execute()
                .await
                .map_err(nl(format!("deleting the route to {net}")))?;
            tracing::info!(%net, "removed node route");
        }
    }
    let present: Vec<(Ipv4Net, Option<Ipv4Addr>)> = current_routes(handle)
        .await?
        .into_iter()
        .map(|(n, v, _)| (n, v))
        .collect();
    for (net, via) in desired {
        if present.contains(&(*net, Some(*via))) {
            continue;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .gateway(*via)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        crate::veth::replace_route(handle, route)
            .await
            .map_err(nl(format!("routing {net} via {via}")))?;
        tracing::info!(%net, %via, "added node route");
    }
    Ok(())
}

/// Watches Nodes: publishes this node's podCIDR on `own_cidr`, and keeps a route
/// to every other node's podCIDR. Runs until the watch ends.
pub async fn run_node_routes(
    client: kube::Client,
    handle: rtnetlink::Handle,
    own_name: String,
    own_cidr: watch::Sender<Option<Ipv4Net>>,
) {
    let (reader, writer) = reflector::store::<Node>();
    let stream = watcher(Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    futures::pin_mut!(stream);
    let mut last: Option<BTreeMap<Ipv4Net, Ipv4Addr>> = None;
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watching Nodes");
            continue;
        }
        let nodes = reader.state();
        let own = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(&own_name))
            .and_then(|n| {
                n.spec
                    .as_ref()?
                    .pod_cidr
                    .as_deref()?
                    .parse::<Ipv4Net>()
                    .ok()
            });
        if own.is_some() && *own_cidr.borrow() != own {
            tracing::info!(pod_cidr = ?own, "this node's podCIDR");
            own_cidr.send_replace(own);
        }
        let desired = desired_routes(&nodes, &own_name);
        if last.as_ref() == Some(&desired) {
            continue;
        }
        match reconcile_routes(&handle, &desired).await {
            Ok(()) => last = Some(desired),
            Err(e) => tracing::warn!(error = %e, "programming node routes"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn node(name: &str, cidr: Option<&str>, ip: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"podCIDR": cidr},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn routes_go_to_other_nodes_with_a_cidr_and_a_reachable_address() {
        let nodes = [
            node("a", Some("10.42.0.0/24"), "10.9.0.1"),
            node("b", Some("10.42.1.0/24"), "10.9.0.2"),
            node("c", None, "10.9.0.3"),
            node("d", Some("10.42.3.0/24"), "127.0.0.1"),
        ];
        let routes = desired_routes(&nodes, "a");
        assert_eq!(routes.len(), 1);
        assert_eq!(
            routes.get(&"10.42.1.0/24".parse().unwrap()),
            Some(&Ipv4Addr::new(10, 9, 0, 2))
        );
    }

    #[test]
    fn masquerade_excludes_the_cluster() {
        let s = masquerade_script(
            "10.42.1.0/24".parse().unwrap(),
            "10.42.0.0/16".parse().unwrap(),
        );
        assert!(
            s.contains("ip saddr 10.42.1.0/24 ip daddr != 10.42.0.0/16 masquerade"),
            "{s}"
        );
        assert!(
            s.contains("meta mark & 0x530000 == 0x530000 masquerade"),
            "{s}"
        );
        // XDP's SNAT ports (61000 on) are never handed out by the kernel.
        assert!(
            s.contains(
                "meta l4proto { tcp, udp } meta mark & 0x530000 == 0x530000 masquerade to :1-60999"
            ),
            "{s}"
        );
        assert!(s.starts_with("add table ip sextant\ndelete table ip sextant\n"));
    }
}
