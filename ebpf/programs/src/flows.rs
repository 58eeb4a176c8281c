//! Flow events into the ring buffer `SX_FLOWS_V1`: a new flow into or out of a pod
//! (its first packet conntrack did not know), and every dropped packet. A full
//! ring drops the event, never the packet.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::RingBuf};
pub(crate) use sextant_ebpf_common::flows::{
    DIRECTION_EGRESS as EGRESS, DIRECTION_INGRESS as INGRESS,
};
use sextant_ebpf_common::flows::{FLOWS_BYTES, FlowEvent};

use crate::packet::{Frame, L4Packet};

/// Flow events for the agent.
#[map(name = "SX_FLOWS_V1")]
static SX_FLOWS_V1: RingBuf = RingBuf::with_byte_size(FLOWS_BYTES, 0);

/// What happened to a flow, for its event.
#[derive(Clone, Copy)]
pub(crate) struct Outcome {
    /// `VERDICT_*`.
    pub(crate) verdict: u8,
    /// `REASON_*`.
    pub(crate) reason: u8,
    /// `FLAG_*`.
    pub(crate) flags: u8,
    /// `DIRECTION_*`.
    pub(crate) direction: u8,
    /// The deciding NetworkPolicy's id, or 0.
    pub(crate) policy: u32,
}

/// Emits one event for `pkt` (as it was before any rewrite); `to` is where it went.
#[inline(always)]
pub(crate) fn emit(ctx: &impl Frame, pkt: &L4Packet, to: (u32, u16), o: Outcome) {
    let ifindex = ctx.ifindex();
    let event = FlowEvent {
        saddr: pkt.saddr,
        daddr: to.0,
        sport: pkt.sport,
        dport: to.1,
        proto: pkt.proto,
        verdict: o.verdict,
        reason: o.reason,
        flags: o.flags,
        vip: pkt.daddr,
        vport: pkt.dport,
        direction: o.direction,
        pad: 0,
        ifindex,
        policy: o.policy,
        // SAFETY: a helper call without arguments.
        time_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = SX_FLOWS_V1.output::<FlowEvent>(&event, 0);
}
