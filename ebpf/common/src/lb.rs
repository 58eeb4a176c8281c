//! Service load balancing and connection tracking (maps `SX_LB4_SERVICES_V1`,
//! `SX_LB4_BACKENDS_V2`, `SX_CT4_V1`). Addresses and ports are kept in packet
//! byte order, exactly as the programs read them.

/// Name of the map from [`Lb4Key`] (VIP, port, protocol) to [`Lb4Service`]
/// (V2: the value gained the affinity timeout).
pub const SERVICES_MAP: &str = "SX_LB4_SERVICES_V2";
/// Name of the LRU map from [`Lb4AffinityKey`] (client, frontend) to [`Lb4Affinity`].
pub const AFFINITY_MAP: &str = "SX_LB4_AFFINITY_V1";
/// Client-frontend pairs remembered for session affinity.
pub const MAX_AFFINITY: u32 = 65_536;
/// How many backend slots the datapath checks to confirm an affine backend is
/// still one of the frontend's (frontends with more are trusted as they are).
pub const AFFINITY_CHECK_SLOTS: u32 = 32;
/// Name of the map from [`Lb4BackendKey`] (service id, slot) to [`Lb4Backend`].
/// (V2: allocated on demand, four times as many slots, holding Maglev tables.)
pub const BACKENDS_MAP: &str = "SX_LB4_BACKENDS_V2";
/// Name of the per-CPU array of `metrics::PacketCount` by frontend id
/// ([`Lb4Service::id`]): every packet of a service flow, both directions.
pub const TRAFFIC_MAP: &str = "SX_LB4_TRAFFIC_V1";
/// Name of the LRU map from [`Ct4Key`] (a flow's 5-tuple) to [`Ct4Entry`].
pub const CT_MAP: &str = "SX_CT4_V1";

/// Name of the LRU map from [`Ct4Key`] to [`Nat4Entry`]: NodePort and
/// external-IP flows the uplink's XDP program sends to a backend on another node,
/// both directions (client → frontend, backend → node's SNAT port).
pub const NODEPORT_NAT_MAP: &str = "SX_NODEPORT_NAT4_V1";
/// NodePort flows XDP can carry at once; the oldest are evicted first when full.
pub const MAX_NODEPORT_FLOWS: u32 = 131_072;
/// First source port XDP gives a NodePort flow it sends to another node. The
/// range sits above Linux's default ephemeral ports (32768–60999), and the
/// agent's masquerade rule maps below it, so the host never hands these out.
pub const SNAT_PORT_MIN: u16 = 61_000;
/// How many SNAT ports there are (61000–65535), per backend and protocol.
pub const SNAT_PORTS: u16 = 4_536;
/// Ports tried for a new flow before XDP gives it to the TC path.
pub const SNAT_RETRIES: u32 = 8;

/// Service frontends one node can hold (VIP × port × protocol).
pub const MAX_SERVICES: u32 = 65_536;
/// Backend slots across all services.
pub const MAX_BACKENDS: u32 = 1_048_576;
/// Tracked flows; the oldest are evicted first when full.
pub const MAX_FLOWS: u32 = 262_144;

/// `skb->mark` bit the uplink program sets on NodePort and external-IP flows it
/// sends to a backend on another node: the agent's nftables rule masquerades
/// them to the node's address, so the backend's replies come back through this
/// node for reverse NAT (kube-proxy's `KUBE-MARK-MASQ` does the same).
pub const MASQUERADE_MARK: u32 = 0x0053_0000;

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// A service frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4Key {
    /// The virtual IP (ClusterIP).
    pub vip: u32,
    /// The service port.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Zero.
    pub pad: u8,
}

/// A frontend's backends: slots `0..count` of `SX_LB4_BACKENDS_V2` under `id`,
/// its Maglev lookup table (a new flow takes slot `hash(5-tuple) % count`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4Service {
    /// The frontend's id, stable while it exists.
    pub id: u32,
    /// How many slots the table has; 0 drops new flows (no endpoints).
    pub count: u32,
    /// `sessionAffinity: ClientIP`: seconds a client keeps its backend; 0 = none.
    pub affinity_timeout: u32,
    /// Zero.
    pub pad: u32,
}

/// A client's affinity to a frontend's backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4AffinityKey {
    /// Client address.
    pub client: u32,
    /// [`Lb4Service::id`].
    pub id: u32,
}

/// The backend a client was given, and when it last opened a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4Affinity {
    /// The backend.
    pub backend: Lb4Backend,
    /// `bpf_ktime_get_ns` of the client's last new flow.
    pub last_seen_ns: u64,
}

/// One backend slot of a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4BackendKey {
    /// [`Lb4Service::id`].
    pub id: u32,
    /// 0-based slot.
    pub slot: u32,
}

/// A backend: a pod address and its target port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4Backend {
    /// Pod IPv4.
    pub ip: u32,
    /// Target port.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}

/// A flow in one direction, as seen in the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ct4Key {
    /// Source address.
    pub saddr: u32,
    /// Destination address.
    pub daddr: u32,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Zero.
    pub pad: [u8; 3],
}

/// Rewrite the destination to `addr:port` (a client's packet to a VIP).
pub const CT_DNAT: u8 = 1;
/// Rewrite the source to `addr:port` (a backend's reply, back to the VIP).
pub const CT_REVNAT: u8 = 2;
/// No rewrite: a flow tracked so its replies pass network policy (either direction).
pub const CT_TRACKED: u8 = 3;

/// [`Ct4Entry::flags`]: the client sent FIN or RST; a later SYN on the same
/// 5-tuple is a new connection and is balanced afresh (its old backend may be gone).
pub const CT_CLOSING: u8 = 1;

/// [`Ct4Entry::flags`]: a pod reached itself through a service (hairpin). Its
/// packets also get [`HAIRPIN_IP`] as their source, so the pod's reply leaves
/// through its veth (and is reverse-NATed) instead of looping back inside it.
pub const CT_HAIRPIN: u8 = 2;

/// The source a hairpinned flow shows to the pod (Cilium's loopback address).
pub const HAIRPIN_IP: u32 = u32::from_ne_bytes([169, 254, 42, 1]);

/// What to do with the packets of a tracked flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ct4Entry {
    /// The address written into the packet.
    pub addr: u32,
    /// The port written into the packet.
    pub port: u16,
    /// [`CT_DNAT`], [`CT_REVNAT`] or [`CT_TRACKED`].
    pub action: u8,
    /// [`CT_CLOSING`], [`CT_HAIRPIN`].
    pub flags: u8,
}

/// [`Nat4Entry::flags`]: the entry is the backend's direction (its rewrite
/// restores the frontend as the source and the client as the destination).
pub const NAT_REPLY: u8 = 2;

/// A NodePort flow's packets in one direction, as XDP rewrites them: the whole
/// new address and port pair (both ends change, unlike [`Ct4Entry`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nat4Entry {
    /// New source address.
    pub saddr: u32,
    /// New destination address.
    pub daddr: u32,
    /// New source port.
    pub sport: u16,
    /// New destination port.
    pub dport: u16,
    /// [`CT_CLOSING`] (set on the client's direction only), [`NAT_REPLY`].
    pub flags: u8,
    /// Zero.
    pub pad: [u8; 3],
}

// SAFETY: every type here is `repr(C)` with explicit padding fields and no
// implicit padding (pinned by the tests below).
#[cfg(feature = "user")]
#[allow(unsafe_code)]
mod pod {
    unsafe impl aya::Pod for super::Lb4Key {}
    unsafe impl aya::Pod for super::Lb4Service {}
    unsafe impl aya::Pod for super::Lb4BackendKey {}
    unsafe impl aya::Pod for super::Lb4Backend {}
    unsafe impl aya::Pod for super::Ct4Key {}
    unsafe impl aya::Pod for super::Ct4Entry {}
    unsafe impl aya::Pod for super::Lb4AffinityKey {}
    unsafe impl aya::Pod for super::Lb4Affinity {}
    unsafe impl aya::Pod for super::Nat4Entry {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Lb4Key>(), 8);
        assert_eq!(offset_of!(Lb4Key, proto), 6);
        assert_eq!(size_of::<Lb4Service>(), 16);
        assert_eq!(size_of::<Lb4AffinityKey>(), 8);
        assert_eq!(size_of::<Lb4Affinity>(), 16);
        assert_eq!(size_of::<Lb4BackendKey>(), 8);
        assert_eq!(size_of::<Lb4Backend>(), 8);
        assert_eq!(size_of::<Ct4Key>(), 16);
        assert_eq!(offset_of!(Ct4Key, proto), 12);
        assert_eq!(size_of::<Ct4Entry>(), 8);
        assert_eq!(offset_of!(Ct4Entry, action), 6);
        assert_eq!(size_of::<Nat4Entry>(), 16);
        assert_eq!(offset_of!(Nat4Entry, flags), 12);
        assert_eq!(u32::from(SNAT_PORT_MIN) + u32::from(SNAT_PORTS), 65_536);
    }
}
