//! Datapath counters by what happened to a packet (map `SX_METRICS_V3`).

/// Name of the per-CPU array of [`PacketCount`], indexed by a [`Counter`].
/// (V2: the policy drop counter was added; V3: the XDP counter.)
pub const METRICS_MAP: &str = "SX_METRICS_V3";

/// What the datapath did with a packet; the index into `SX_METRICS_V3`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Handed from one pod straight to another pod on the same node
    /// (`bpf_redirect_peer`), skipping the host's network stack.
    ForwardedLocalPeer = 0,
    /// Passed to the host stack: routed to another node, to the host, or outside.
    ForwardedHostStack = 1,
    /// Not IPv4 (ARP, IPv6): left to the kernel untouched.
    PassedNonIpv4 = 2,
    /// A new flow to a service frontend, sent to one of its backends.
    ServiceNewFlow = 3,
    /// Dropped: a new flow to a service frontend with no ready backend.
    DropNoBackend = 4,
    /// A packet of a tracked service flow rewritten (either direction).
    ServiceNat = 5,
    /// Dropped: a new flow no network policy rule allows.
    DropPolicyDenied = 6,
    /// A NodePort or external-IP packet rewritten by the uplink's XDP program
    /// and sent straight back out to another node or to the client
    /// (`XDP_TX`/`XDP_REDIRECT`), never reaching the host stack.
    ForwardedXdp = 7,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 8] = [
        Counter::ForwardedLocalPeer,
        Counter::ForwardedHostStack,
        Counter::PassedNonIpv4,
        Counter::ServiceNewFlow,
        Counter::DropNoBackend,
        Counter::ServiceNat,
        Counter::DropPolicyDenied,
        Counter::ForwardedXdp,
    ];

    /// Size of the map.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// The counter's label value in `sextant_dataplane_*` metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Counter::ForwardedLocalPeer => "local_peer",
            Counter::ForwardedHostStack => "host_stack",
            Counter::PassedNonIpv4 => "non_ipv4",
            Counter::ServiceNewFlow => "new_flow",
            Counter::DropNoBackend => "no_backend",
            Counter::ServiceNat => "nat",
            Counter::DropPolicyDenied => "policy_denied",
            Counter::ForwardedXdp => "xdp",
        }
    }
}

/// Which exported metric a [`Counter`] belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `sextant_dataplane_forwarded_{packets,bytes}_total{path}`.
    Forwarded,
    /// `sextant_dataplane_drops_total{reason}`.
    Dropped,
    /// `sextant_dataplane_service_packets_total{event}`.
    Service,
}

impl Counter {
    /// The metric this counter is exported under.
    pub const fn family(self) -> Family {
        match self {
            Counter::ForwardedLocalPeer
            | Counter::ForwardedHostStack
            | Counter::PassedNonIpv4
            | Counter::ForwardedXdp => Family::Forwarded,
            Counter::DropNoBackend | Counter::DropPolicyDenied => Family::Dropped,
            Counter::ServiceNewFlow | Counter::ServiceNat => Family::Service,
        }
    }
}

/// Packets and bytes counted under one [`Counter`], per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCount {
    /// Packets.
    pub packets: u64,
    /// Bytes (`skb->len`).
    pub bytes: u64,
}

// SAFETY: `PacketCount` is `repr(C)`, two `u64`s, no padding.
#[cfg(feature = "user")]
#[allow(unsafe_code)]
unsafe impl aya::Pod for PacketCount {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_match_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        assert_eq!(core::mem::size_of::<PacketCount>(), 16);
    }
}
