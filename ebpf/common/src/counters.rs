//! Per-interface packet and byte counters, kept by the XDP and TC counting programs.

/// Name of the map from interface index to counter slot (`HashMap<u32, u32>`).
///
/// The user side assigns a slot when it attaches to an interface, so interface
/// indexes (which grow without bound on a busy host) never index the array directly.
pub const IFACE_SLOTS_MAP: &str = "SX_IFACE_SLOTS_V1";

/// Name of the per-CPU array of [`IfaceStats`], indexed by slot.
pub const IFACE_STATS_MAP: &str = "SX_IFACE_STATS_V1";

/// How many interfaces one loaded counter object can track.
pub const MAX_IFACES: u32 = 1024;

/// Name of the global (`u32`, 0 or 1) that turns the programs' aya-log lines on.
pub const DEBUG_GLOBAL: &str = "SX_DEBUG";

/// Packets and bytes seen on one interface by each hook, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceStats {
    /// Packets seen by the XDP program (ingress, before the stack).
    pub xdp_packets: u64,
    /// Bytes of those packets, from the start of the Ethernet header.
    pub xdp_bytes: u64,
    /// Packets seen by the TC program.
    pub tc_packets: u64,
    /// Bytes of those packets (`skb->len`).
    pub tc_bytes: u64,
}

impl IfaceStats {
    /// Sums per-CPU values into one.
    pub fn sum<'a>(values: impl IntoIterator<Item = &'a IfaceStats>) -> IfaceStats {
        values
            .into_iter()
            .fold(IfaceStats::default(), |acc, v| IfaceStats {
                xdp_packets: acc.xdp_packets + v.xdp_packets,
                xdp_bytes: acc.xdp_bytes + v.xdp_bytes,
                tc_packets: acc.tc_packets + v.tc_packets,
                tc_bytes: acc.tc_bytes + v.tc_bytes,
            })
    }
}

// SAFETY: `IfaceStats` is `repr(C)`, made only of `u64`s, with no padding.
#[cfg(feature = "user")]
#[allow(unsafe_code)]
unsafe impl aya::Pod for IfaceStats {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn iface_stats_layout() {
        assert_eq!(size_of::<IfaceStats>(), 32);
        assert_eq!(offset_of!(IfaceStats, xdp_packets), 0);
        assert_eq!(offset_of!(IfaceStats, xdp_bytes), 8);
        assert_eq!(offset_of!(IfaceStats, tc_packets), 16);
        assert_eq!(offset_of!(IfaceStats, tc_bytes), 24);
    }

    #[test]
    fn sum_adds_every_field() {
        let a = IfaceStats {
            xdp_packets: 1,
            xdp_bytes: 2,
            tc_packets: 3,
            tc_bytes: 4,
        };
        let s = IfaceStats::sum([&a, &a]);
        assert_eq!(
            s,
            IfaceStats {
                xdp_packets: 2,
                xdp_bytes: 4,
                tc_packets: 6,
                tc_bytes: 8
            }
        );
    }
}
