//! Network policy (maps `SX_IPCACHE_V1`, `SX_POLICY_V1`, `SX_POLICY_EP_V1`).
//!
//! Every address the agent knows gets a numeric *identity*: a pod's is derived
//! from its namespace and labels, an ipBlock's from its prefix. The policy map
//! then says, per local endpoint and direction, which identities may talk on
//! which protocol and port. Ports are matched by prefix, so a port range
//! (`endPort`) is a handful of entries and "any port" one.

/// Name of the LPM trie from an address prefix ([`IpKey`]) to its identity (`u32`).
pub const IPCACHE_MAP: &str = "SX_IPCACHE_V1";
/// Name of the LPM trie from [`PolicyKey`] to [`PolicyValue`]: what is allowed.
pub const POLICY_MAP: &str = "SX_POLICY_V1";
/// Name of the map from a local pod's IPv4 to its [`PolicyEndpoint`]: which of
/// its directions policies select (absent: none, everything is allowed).
pub const POLICY_ENDPOINTS_MAP: &str = "SX_POLICY_EP_V1";

/// Prefixes (pod addresses, ipBlocks, node addresses) the ipcache holds.
pub const MAX_IPCACHE: u32 = 65_536;
/// Allow entries across all local endpoints.
pub const MAX_POLICY: u32 = 131_072;
/// Local endpoints with a policy (as many as pods on a node).
pub const MAX_POLICY_ENDPOINTS: u32 = 16_384;

/// In a [`PolicyKey`]: any peer at all (a rule without `from`/`to`).
pub const IDENTITY_ANY: u32 = 0;
/// An address the ipcache does not hold (outside the cluster, no ipBlock covers it).
pub const IDENTITY_WORLD: u32 = 1;
/// This node's own address: always let in (kubelet probes), as Cilium does.
pub const IDENTITY_HOST: u32 = 2;
/// Identities below this are reserved.
pub const FIRST_IDENTITY: u32 = 256;

/// Traffic into the endpoint.
pub const DIRECTION_INGRESS: u8 = 0;
/// Traffic out of the endpoint.
pub const DIRECTION_EGRESS: u8 = 1;

/// Bits of a [`PolicyKey`] up to and including the direction: a rule for any
/// protocol and port.
pub const PREFIX_ANY_PROTOCOL: u32 = 72;
/// Bits up to and including the protocol: a rule for any port of one protocol.
pub const PREFIX_ANY_PORT: u32 = 80;
/// Every bit: one port.
pub const PREFIX_FULL: u32 = 96;

/// LPM data of the ipcache: an IPv4 address in packet byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey {
    /// The address (network byte order in memory).
    pub addr: u32,
}

/// LPM data of the policy map. Field order is match order: endpoint, peer
/// identity and direction must match exactly, then protocol and port by prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// The local pod's IPv4, packet byte order.
    pub endpoint: u32,
    /// The peer's identity, or [`IDENTITY_ANY`].
    pub identity: u32,
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u8,
    /// IP protocol.
    pub proto: u8,
    /// Destination port, packet (big-endian) byte order, so prefixes are ranges.
    pub port: u16,
}

/// What an allow entry says: which policy allowed it (for flows).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// Id of the NetworkPolicy whose rule this is.
    pub policy: u32,
}

/// A local endpoint's enforcement: per direction, the id of a policy that
/// selects it (the one a denial is reported under), or 0 when none does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEndpoint {
    /// A policy selecting the pod for ingress; 0: ingress is not enforced.
    pub ingress: u32,
    /// A policy selecting the pod for egress; 0: egress is not enforced.
    pub egress: u32,
}

// SAFETY: every type here is `repr(C)` with no implicit padding (pinned below).
#[cfg(feature = "user")]
#[allow(unsafe_code)]
mod pod {
    unsafe impl aya::Pod for super::IpKey {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::PolicyEndpoint {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<IpKey>(), 4);
        assert_eq!(size_of::<PolicyKey>() * 8, PREFIX_FULL as usize);
        assert_eq!(
            offset_of!(PolicyKey, direction) * 8 + 8,
            PREFIX_ANY_PROTOCOL as usize
        );
        assert_eq!(
            offset_of!(PolicyKey, proto) * 8 + 8,
            PREFIX_ANY_PORT as usize
        );
        assert_eq!(offset_of!(PolicyKey, port), 10);
        assert_eq!(size_of::<PolicyEndpoint>(), 8);
    }
}
