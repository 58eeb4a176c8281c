//! NodePort and external IPs, on the node's uplink (TC). A new flow from outside
//! to one of this node's frontends (the node's address on a nodePort, or an
//! external IP on the service port) is balanced as a ClusterIP flow is: a
//! backend picked, conntrack entries both ways, DNAT. Then the host stack routes
//! it: to a local backend's veth (its `from_pod` reverse-NATs the replies), or to
//! another node, marked so the agent's nftables rule masquerades it to this
//! node's address; the backend's replies come back here, the kernel undoes the
//! masquerade, and `to_uplink` gives them the frontend's address back on the way
//! out.
//!
//! Flows to another node's backend are normally the uplink's XDP program's
//! (`nodeport_xdp`), which rewrites them before this program sees them; it hands
//! over the packets whose next hop's MAC the kernel does not know yet, and they
//! are rewritten here from the same SNAT table and sent with
//! `bpf_redirect_neigh`, which resolves the neighbour.

use aya_ebpf::{
    bindings::{BPF_FIB_LOOKUP_SKIP_NEIGH, TC_ACT_OK, TC_ACT_SHOT},
    cty::c_void,
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use sextant_ebpf_common::{
    flows::{FLAG_SERVICE, REASON_NO_BACKEND, REASON_NONE, VERDICT_DROPPED, VERDICT_FORWARDED},
    lb::{CT_CLOSING, CT_DNAT, CT_REVNAT, MASQUERADE_MARK, NAT_REPLY, Nat4Entry, PROTO_TCP},
    metrics::Counter,
};

use crate::{
    conntrack,
    fib::{self, Query},
    flows::{self, Outcome},
    lb::{self, Balanced},
    metrics::count,
    nat::{self, End},
    packet::{Frame, IPV4_TOT_LEN, L4Packet, TCP_ACK, TCP_FIN, TCP_FLAGS, TCP_RST, TCP_SYN},
    routing::is_local_endpoint,
    snat,
};

/// DNATs to `backend`, marking the packet for masquerade when the backend is on
/// another node.
#[inline(always)]
fn to_backend(ctx: &TcContext, pkt: &L4Packet, backend: (u32, u16)) -> bool {
    if nat::rewrite(ctx, pkt, End::Destination, backend.0, backend.1).is_err() {
        return false;
    }
    if !is_local_endpoint(backend.0) {
        ctx.set_mark(MASQUERADE_MARK);
    }
    true
}

/// TC ingress on the uplink: every packet reaching the node from its network.
#[inline(always)]
pub(crate) fn from_uplink(ctx: &TcContext) -> i32 {
    let Some(pkt) = L4Packet::parse(ctx) else {
        return TC_ACT_OK;
    };
    let flags = if pkt.proto == PROTO_TCP {
        ctx.load::<u8>(TCP_FLAGS).unwrap_or(0)
    } else {
        0
    };
    if let Some(nat) = snat::lookup(&pkt) {
        return from_snat_table(ctx, &pkt, &nat, flags);
    }
    if let Some(ct) = conntrack::lookup(&pkt)
        && !(flags & (TCP_SYN | TCP_ACK) == TCP_SYN && ct.flags & CT_CLOSING != 0)
    {
        // Only this program's own flows are rewritten here; other entries belong
        // to pods' flows, handled on their veths.
        if ct.action != CT_DNAT {
            return TC_ACT_OK;
        }
        if flags & (TCP_FIN | TCP_RST) != 0 {
            conntrack::mark_closing(&pkt);
        }
        lb::account(ctx, pkt.daddr, pkt.dport, pkt.proto);
        if !to_backend(ctx, &pkt, (ct.addr, ct.port)) {
            return TC_ACT_SHOT;
        }
        count(ctx, Counter::ServiceNat);
        return TC_ACT_OK;
    }
    let mut o = Outcome {
        verdict: VERDICT_FORWARDED,
        reason: REASON_NONE,
        flags: FLAG_SERVICE,
        direction: flows::INGRESS,
        policy: 0,
    };
    match lb::select(&pkt) {
        Balanced::NotAService => TC_ACT_OK,
        Balanced::NoBackend => {
            count(ctx, Counter::DropNoBackend);
            o.verdict = VERDICT_DROPPED;
            o.reason = REASON_NO_BACKEND;
            flows::emit(ctx, &pkt, (pkt.daddr, pkt.dport), o);
            TC_ACT_SHOT
        }
        Balanced::Backend(b) => {
            flows::emit(ctx, &pkt, (b.ip, b.port), o);
            lb::account(ctx, pkt.daddr, pkt.dport, pkt.proto);
            conntrack::create(&pkt, b.ip, b.port);
            if !to_backend(ctx, &pkt, (b.ip, b.port)) {
                return TC_ACT_SHOT;
            }
            count(ctx, Counter::ServiceNewFlow);
            TC_ACT_OK
        }
    }
}

/// A packet of a flow in XDP's SNAT table that XDP handed over: rewritten as
/// the table says and sent out by `bpf_redirect_neigh`.
#[inline(always)]
fn from_snat_table(ctx: &TcContext, pkt: &L4Packet, nat: &Nat4Entry, tcp: u8) -> i32 {
    if tcp & (TCP_FIN | TCP_RST) != 0 && nat.flags & NAT_REPLY == 0 {
        snat::mark_closing(pkt);
    }
    let frontend = snat::frontend(pkt, nat);
    let q = Query::rewritten(
        nat,
        pkt.proto,
        ctx.load(IPV4_TOT_LEN).unwrap_or(0),
        ctx.ifindex(),
    );
    let Some(r) = fib::lookup(ctx.skb.skb as *mut c_void, &q, BPF_FIB_LOOKUP_SKIP_NEIGH) else {
        return TC_ACT_SHOT;
    };
    if nat::rewrite(ctx, pkt, End::Destination, nat.daddr, nat.dport).is_err()
        || nat::rewrite(ctx, pkt, End::Source, nat.saddr, nat.sport).is_err()
    {
        return TC_ACT_SHOT;
    }
    lb::account(ctx, frontend.0, frontend.1, pkt.proto);
    count(ctx, Counter::ServiceNat);
    // SAFETY: a helper call without a parameter block (the kernel looks the
    // neighbour up itself).
    unsafe { bpf_redirect_neigh(r.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// TC egress on the uplink: replies of NodePort flows served by another node's
/// backend (the kernel has undone the masquerade) get the frontend's address.
#[inline(always)]
pub(crate) fn to_uplink(ctx: &TcContext) -> i32 {
    if let Some(pkt) = L4Packet::parse(ctx)
        && let Some(ct) = conntrack::lookup(&pkt)
        && ct.action == CT_REVNAT
    {
        lb::account(ctx, ct.addr, ct.port, pkt.proto);
        if nat::rewrite(ctx, &pkt, End::Source, ct.addr, ct.port).is_err() {
            return TC_ACT_SHOT;
        }
        count(ctx, Counter::ServiceNat);
    }
    TC_ACT_OK
}
