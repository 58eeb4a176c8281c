//! A pod's veth pair, made over rtnetlink: the host side stays in the agent's
//! network namespace (the programs attach there), the other side moves into the
//! pod's namespace and gets the pod's /32 address.
//!
//! Pods route through a link-local gateway, [`GATEWAY`], whose MAC is written as a
//! permanent neighbour inside the pod (the host side's MAC), as Calico and Cilium
//! do: the host side needs no address and no ARP answers, and every node can use
//! the same gateway.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
};

use futures::TryStreamExt;
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    neighbour::NeighbourState,
    route::RouteScope,
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The pods' default gateway: link-local, never on the wire.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Errors of link plumbing.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// The request.
        what: String,
        /// What the kernel said.
        #[source]
        source: rtnetlink::Error,
    },
    /// Opening a socket or a namespace failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A link the kernel just made is not there.
    #[error("link {0:?} not found")]
    Missing(String),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError::Netlink { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError::Io { what, source }
}

/// A pod's veth pair as made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLink {
    /// Name of the host side.
    pub host_ifname: String,
    /// Index of the host side.
    pub host_ifindex: u32,
    /// MAC of the host side.
    pub host_mac: [u8; 6],
    /// MAC of the pod side.
    pub pod_mac: [u8; 6],
}

/// The host-side name for a container: `sx` and the first 12 hex digits of its id,
/// stable so a retried ADD or a DEL finds the same link.
pub fn host_ifname(container_id: &str) -> String {
    let id: String = container_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!("sx{id}")
}

/// A netlink handle for the namespace the calling thread is in.
pub fn connect() -> Result<Handle, LinkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(io("opening netlink"))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// A link's index and MAC, if it exists.
pub async fn find(handle: &Handle, name: &str) -> Result<Option<(u32, [u8; 6])>, LinkError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some((msg.header.index, mac_of(&msg)))),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => Ok(None),
        Err(e) => Err(nl(format!("looking up {name}"))(e)),
    }
}

fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}

fn mac_of(msg: &LinkMessage) -> [u8; 6] {
    let mut mac = [0; 6];
    for attr in &msg.attributes {
        if let LinkAttribute::Address(a) = attr
            && a.len() == 6
        {
            mac.copy_from_slice(a);
        }
    }
    mac
}

/// Makes the veth pair for `container_id`, moves one side into the namespace at
/// `netns` as `ifname` with `ip`/32, and routes `ip` to the host side. A pair left
/// by an earlier, failed attempt is replaced.
pub async fn create(
    handle: &Handle,
    container_id: &str,
    netns: &str,
    ifname: &str,
    ip: Ipv4Addr,
) -> Result<PodLink, LinkError> {
    let host = host_ifname(container_id);
    let peer = format!("sp{}", &host[2..]);
    for stale in [&host, &peer] {
        if let Some((index, _)) = find(handle, stale).await? {
            handle
                .link()
                .del(index)
                .execute()
                .await
                .map_err(nl(format!("deleting stale {stale}")))?;
        }
    }
    handle
        .link()
        .add(LinkVeth::new(&host, &peer).build())
        .execute()
        .await
        .map_err(nl(format!("creating veth {host}")))?;
    let (host_ifindex, host_mac) = find(handle, &host)
        .await?
        .ok_or_else(|| LinkError::Missing(host.clone()))?;
    let (peer_index, pod_mac) = find(handle, &peer)
        .await?
        .ok_or_else(|| LinkError::Missing(peer.clone()))?;

    let ns = File::open(netns).map_err(io(format!("opening {netns}")))?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(peer_index)
                .setns_by_fd(ns.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("moving {peer} into {netns}")))?;
    let (peer_name, ifname_owned) = (peer.clone(), ifname.to_owned());
    crate::netns::run_in(&ns, move || {
        configure_pod_side(peer_name, ifname_owned, ip, host_mac)
    })
    .await??;

    // A reply of a NodePort flow leaves the pod with the node's own address as
    // its source (the datapath's reverse NAT); the kernel drops such packets as
    // martians unless the interface accepts local sources.
    let accept_local = format!("/proc/sys/net/ipv4/conf/{host}/accept_local");
    std::fs::write(&accept_local, "1").map_err(io(format!("writing {accept_local}")))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(host_ifindex).up().build())
        .execute()
        .await
        .map_err(nl(format!("setting {host} up")))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(ip, 32)
        .output_interface(host_ifindex)
        .scope(RouteScope::Link)
        .build();
    replace_route(handle, route)
        .await
        .map_err(nl(format!("routing {ip} to {host}")))?;
    handle
        .neighbours()
        .add(host_ifindex, IpAddr::V4(ip))
        .link_layer_address(&pod_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("neighbour {ip} on {host}")))?;
    Ok(PodLink {
        host_ifname: host,
        host_ifindex,
        host_mac,
        pod_mac,
    })
}

/// Inside the pod's namespace: name, address, gateway neighbour and routes.
async fn configure_pod_side(
    peer: String,
    ifname: String,
    ip: Ipv4Addr,
    host_mac: [u8; 6],
) -> Result<(), LinkError> {
    let handle = connect()?;
    let (index, _) = find(&handle, &peer)
        .await?
        .ok_or_else(|| LinkError::Missing(peer.clone()))?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .name(ifname.clone())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("renaming {peer} to {ifname}")))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(format!("setting {ifname} up")))?;
    handle
        .address()
        .add(index, IpAddr::V4(ip), 32)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("adding {ip}/32 to {ifname}")))?;
    handle
        .neighbours()
        .add(index, IpAddr::V4(GATEWAY))
        .link_layer_address(&host_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(nl("the gateway's neighbour entry"))?;
    let to_gateway = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(GATEWAY, 32)
        .output_interface(index)
        .scope(RouteScope::Link)
        .build();
    replace_route(&handle, to_gateway)
        .await
        .map_err(nl("the route to the gateway"))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(GATEWAY)
        .output_interface(index)
        .build();
    replace_route(&handle, default)
        .await
        .map_err(nl("the default route"))?;
    Ok(())
}

/// Adds `route`, replacing one to the same destination (`ip route replace`).
pub async fn replace_route(
    handle: &Handle,
    route: netlink_packet_route::route::RouteMessage,
) -> Result<(), rtnetlink::Error> {
    handle.route().add(route).replace().execute().await
}

/// Deletes the host side of a pod's pair (the kernel deletes the other side with
/// it, and with it the pod's route); a missing link is not an error.
pub async fn delete(handle: &Handle, host_ifname: &str) -> Result<(), LinkError> {
    if let Some((index, _)) = find(handle, host_ifname).await? {
        match handle.link().del(index).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => {}
            Err(e) => return Err(nl(format!("deleting {host_ifname}"))(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_ifnamsiz_and_are_stable() {
        let id = "3f5c0a9e1b2d4c6e8f00112233445566778899aabbccddeeff00112233445566";
        assert_eq!(host_ifname(id), "sx3f5c0a9e1b2d");
        assert!(host_ifname(id).len() <= 15);
        assert_eq!(host_ifname(id), host_ifname(id));
    }
}
