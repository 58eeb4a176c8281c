//! Flow events into the ring buffer `SX_FLOWS_V1`: a new connection leaving a pod
//! (a service flow's first packet, or a TCP SYN), and every dropped packet. A full
//! ring drops the event, never the packet.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::RingBuf, programs::TcContext};
use sextant_ebpf_common::flows::{FLOWS_BYTES, FlowEvent};

use crate::packet::L4Packet;

/// Flow events for the agent.
#[map(name = "SX_FLOWS_V1")]
static SX_FLOWS_V1: RingBuf = RingBuf::with_byte_size(FLOWS_BYTES, 0);

/// Emits one event for `pkt` (as it was before any rewrite); `to` is where it went.
#[inline(always)]
pub(crate) fn emit(
    ctx: &TcContext,
    pkt: &L4Packet,
    verdict: u8,
    reason: u8,
    flags: u8,
    to: (u32, u16),
) {
    // SAFETY: `skb` is the context pointer the kernel handed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let event = FlowEvent {
        saddr: pkt.saddr,
        daddr: to.0,
        sport: pkt.sport,
        dport: to.1,
        proto: pkt.proto,
        verdict,
        reason,
        flags,
        vip: pkt.daddr,
        vport: pkt.dport,
        pad: 0,
        ifindex,
        pad2: 0,
        // SAFETY: a helper call without arguments.
        time_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = SX_FLOWS_V1.output::<FlowEvent>(&event, 0);
}
