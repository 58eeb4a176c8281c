//! Pod networking: a packet leaving a pod either goes straight to another pod on
//! this node (`bpf_redirect_peer`, skipping the host stack) or is handed to the
//! host stack, which routes it to another node (native routing) or outside
//! (masqueraded by the agent's nat rule).

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::bpf_redirect_peer,
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use sextant_ebpf_common::{
    endpoints::{Endpoint, MAX_ENDPOINTS},
    metrics::{Counter, PacketCount},
};

use crate::packet::{ETH_DST, ETH_P_IP, ETH_SRC, ETH_TYPE, IPV4_DST};

/// Pod IPv4 (network byte order) → local endpoint, written by the agent on CNI ADD.
#[map(name = "SX_ENDPOINTS_V1")]
static SX_ENDPOINTS_V1: HashMap<u32, Endpoint> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Per-CPU packet counters by [`Counter`].
#[map(name = "SX_METRICS_V1")]
static SX_METRICS_V1: PerCpuArray<PacketCount> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[inline(always)]
fn count(ctx: &TcContext, counter: Counter) {
    if let Some(c) = SX_METRICS_V1.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(ctx.len());
        }
    }
}

/// Delivers a packet that left a pod: to a local pod by redirect, else to the stack.
#[inline(always)]
pub(crate) fn from_pod(ctx: &TcContext) -> i32 {
    let Ok(ethertype) = ctx.load::<u16>(ETH_TYPE) else {
        return TC_ACT_OK;
    };
    if u16::from_be(ethertype) != ETH_P_IP {
        count(ctx, Counter::PassedNonIpv4);
        return TC_ACT_OK;
    }
    let Ok(daddr) = ctx.load::<u32>(IPV4_DST) else {
        return TC_ACT_OK;
    };
    // SAFETY: a plain read of a value owned by the map.
    let Some(ep) = (unsafe { SX_ENDPOINTS_V1.get(&daddr) }) else {
        count(ctx, Counter::ForwardedHostStack);
        return TC_ACT_OK;
    };
    let (ifindex, pod_mac, host_mac) = (ep.ifindex, ep.pod_mac, ep.host_mac);
    // Rewrite the frame as the host's router would have: from the destination's
    // host-side MAC to the destination pod's MAC.
    if ctx.store(ETH_DST, &pod_mac, 0).is_err() || ctx.store(ETH_SRC, &host_mac, 0).is_err() {
        count(ctx, Counter::ForwardedHostStack);
        return TC_ACT_OK;
    }
    count(ctx, Counter::ForwardedLocalPeer);
    // SAFETY: a helper call with plain integer arguments.
    unsafe { bpf_redirect_peer(ifindex, 0) as i32 }
}
