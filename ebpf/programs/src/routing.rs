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
    flows::{FLAG_SERVICE, REASON_NO_BACKEND, REASON_NONE, VERDICT_DROPPED, VERDICT_FORWARDED},
    lb::{CT_CLOSING, CT_DNAT, CT_REVNAT, PROTO_TCP},
    metrics::Counter,
};

use crate::{
    conntrack, flows,
    lb::{self, Balanced},
    metrics::count,
    nat::{self, End},
    packet::{
        ETH_DST, ETH_P_IP, ETH_SRC, ETH_TYPE, IPV4_DST, L4Packet, TCP_ACK, TCP_FIN, TCP_FLAGS,
        TCP_RST, TCP_SYN,
    },
};

/// Pod IPv4 (network byte order) → local endpoint, written by the agent on CNI ADD.
#[map(name = "SX_ENDPOINTS_V1")]
static SX_ENDPOINTS_V1: HashMap<u32, Endpoint> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// What service handling decided for a packet.
enum Verdict {
    /// Deliver (rewritten or not).
    Pass,
    /// Not service traffic: deliver as it is.
    NotService,
    /// Drop.
    Drop,
}

/// DNAT of a client's packet or reverse NAT of a backend's reply; balancing a new
/// flow to a frontend.
#[inline(always)]
fn services(ctx: &TcContext, pkt: &L4Packet) -> Verdict {
    let tcp_flags = if pkt.proto == PROTO_TCP {
        ctx.load::<u8>(TCP_FLAGS).unwrap_or(0)
    } else {
        0
    };
    let new_connection = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if let Some(ct) = conntrack::lookup(pkt)
        // A SYN on a 5-tuple whose connection closed starts a new one: balance it
        // afresh rather than reuse a backend that may be gone.
        && !(new_connection && ct.flags & CT_CLOSING != 0)
    {
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            conntrack::mark_closing(pkt);
        }
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
        Balanced::NotAService => Verdict::NotService,
        Balanced::NoBackend => {
            count(ctx, Counter::DropNoBackend);
            flows::emit(
                ctx,
                pkt,
                VERDICT_DROPPED,
                REASON_NO_BACKEND,
                FLAG_SERVICE,
                (pkt.daddr, pkt.dport),
            );
            Verdict::Drop
        }
        Balanced::Backend(b) => {
            flows::emit(
                ctx,
                pkt,
                VERDICT_FORWARDED,
                REASON_NONE,
                FLAG_SERVICE,
                (b.ip, b.port),
            );
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
    if let Some(pkt) = L4Packet::parse(ctx) {
        match services(ctx, &pkt) {
            Verdict::Drop => return TC_ACT_SHOT,
            Verdict::NotService if pkt.proto == PROTO_TCP => {
                // A new connection: SYN without ACK.
                if let Ok(flags) = ctx.load::<u8>(TCP_FLAGS)
                    && flags & (TCP_SYN | TCP_ACK) == TCP_SYN
                {
                    flows::emit(
                        ctx,
                        &pkt,
                        VERDICT_FORWARDED,
                        REASON_NONE,
                        0,
                        (pkt.daddr, pkt.dport),
                    );
                }
            }
            _ => {}
        }
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
