//! Local endpoints: the pods on this node, by IPv4 address (map `SX_ENDPOINTS_V1`).

/// Name of the map from pod IPv4 address (network byte order, as in the packet) to
/// [`Endpoint`].
pub const ENDPOINTS_MAP: &str = "SX_ENDPOINTS_V1";

/// How many pods one node can hold.
pub const MAX_ENDPOINTS: u32 = 16_384;

/// What the datapath needs to hand a packet straight to a local pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Index of the host side of the pod's veth pair (the `bpf_redirect_peer` target).
    pub ifindex: u32,
    /// Reserved for flags (identity comes with network policy).
    pub flags: u32,
    /// MAC address of the pod's interface: the destination of delivered frames.
    pub pod_mac: [u8; 6],
    /// MAC address of the host side: the source of delivered frames, as if routed.
    pub host_mac: [u8; 6],
}

// SAFETY: `Endpoint` is `repr(C)`, integers and byte arrays only, with no padding.
#[cfg(feature = "user")]
#[allow(unsafe_code)]
unsafe impl aya::Pod for Endpoint {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn endpoint_layout() {
        assert_eq!(size_of::<Endpoint>(), 20);
        assert_eq!(offset_of!(Endpoint, ifindex), 0);
        assert_eq!(offset_of!(Endpoint, flags), 4);
        assert_eq!(offset_of!(Endpoint, pod_mac), 8);
        assert_eq!(offset_of!(Endpoint, host_mac), 14);
    }
}
