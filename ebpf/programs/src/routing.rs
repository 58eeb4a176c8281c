//! Pod networking: a packet leaving a pod is first given to service load balancing
//! (DNAT to a backend, or reverse NAT of a backend's reply), then either handed
//! straight to another pod on this node (`bpf_redirect_peer`, skipping the host
//! stack) or passed to the host stack, which routes it to another node (native
//! routing) or outside (masqueraded by the agent's nat rule).

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect_peer,
    macros::map,
    maps::HashMap,
    programs::TcContext,
};
use sextant_ebpf_common::{
    endpoints::{Endpoint, MAX_ENDPOINTS},
    lb::{CT_DNAT, CT_REVNAT},
    metrics::Counter,
};

use crate::{
    conntrack,
    lb::{self, Balanced},
    metrics::count,
    nat::{self, End},
    packet::{ETH_DST, ETH_P_IP, ETH_SRC, ETH_TYPE, IPV4_DST, L4Packet},
};

/// Pod IPv4 (network byte order) → local endpoint, written by the agent on CNI ADD.
#[map(name = "SX_ENDPOINTS_V1")]
static SX_ENDPOINTS_V1: HashMap<u32, Endpoint> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// What service handling decided for a packet.
enum Verdict {
    /// Deliver (rewritten or not).
    Pass,
    /// Drop.
    Drop,
}

/// DNAT of a client's packet or reverse NAT of a backend's reply; balancing a new
/// flow to a frontend.
#[inline(always)]
fn services(ctx: &TcContext, pkt: &L4Packet) -> Verdict {
    if let Some(ct) = conntrack::lookup(pkt) {
        let end = match ct.action {
            CT_DNAT => End::Destination,
            CT_REVNAT => End::Source,
            _ => return Verdict::Pass,
        };
        if nat::rewrite(ctx, pkt, end, ct.addr, ct.port).is_err() {
            return Verdict::Drop;
        }
        count(ctx, Counter::ServiceNat);
        return Verdict::Pass;
    }
    match lb::select(pkt) {
        Balanced::NotAService => Verdict::Pass,
        Balanced::NoBackend => {
            count(ctx, Counter::DropNoBackend);
            Verdict::Drop
        }
        Balanced::Backend(b) => {
            conntrack::create(pkt, b.ip, b.port);
            if nat::rewrite(ctx, pkt, End::Destination, b.ip, b.port).is_err() {
                return Verdict::Drop;
            }
            count(ctx, Counter::ServiceNewFlow);
            Verdict::Pass
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
    if let Some(pkt) = L4Packet::parse(ctx)
        && let Verdict::Drop = services(ctx, &pkt)
    {
        return TC_ACT_SHOT;
    }
    // Read again: service handling may have rewritten it.
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

/// A packet the host stack hands to a pod (from another node, or the host):
/// replies of service flows balanced on this node to a backend elsewhere get
/// their VIP back.
#[inline(always)]
pub(crate) fn to_pod(ctx: &TcContext) -> i32 {
    let Ok(ethertype) = ctx.load::<u16>(ETH_TYPE) else {
        return TC_ACT_OK;
    };
    if u16::from_be(ethertype) != ETH_P_IP {
        return TC_ACT_OK;
    }
    if let Some(pkt) = L4Packet::parse(ctx)
        && let Some(ct) = conntrack::lookup(&pkt)
        && ct.action == CT_REVNAT
    {
        if nat::rewrite(ctx, &pkt, End::Source, ct.addr, ct.port).is_err() {
            return TC_ACT_SHOT;
        }
        count(ctx, Counter::ServiceNat);
    }
    TC_ACT_OK
}
