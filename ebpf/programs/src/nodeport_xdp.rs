//! NodePort and external IPs in XDP, on the node's uplink: a flow to a frontend
//! whose backend is on another node is rewritten at the driver and sent straight
//! back out (`XDP_TX`, or `XDP_REDIRECT` to another interface), both ways, never
//! touching this node's host stack: the client's packets get this node's address
//! and a port from the SNAT table as their source and the backend as their
//! destination; the backend's replies get the frontend back as their source and
//! the client as their destination. MACs come from the kernel's FIB and
//! neighbour table.
//!
//! Everything else passes to the TC program on the same uplink, which owns: flows
//! to local backends, frontends without backends (dropped and reported there),
//! flows it started itself (conntrack), and packets whose next hop's MAC the
//! kernel does not know yet (it applies the SNAT table's rewrite and lets the
//! kernel resolve the neighbour).

use aya_ebpf::{
    bindings::{BPF_FIB_LOOKUP_SRC, xdp_action},
    cty::c_void,
    helpers::bpf_redirect,
    programs::XdpContext,
};
use sextant_ebpf_common::{
    checksum,
    flows::{FLAG_SERVICE, REASON_NONE, VERDICT_FORWARDED},
    lb::{CT_CLOSING, NAT_REPLY, Nat4Entry, PROTO_TCP, PROTO_UDP},
    metrics::Counter,
};

use crate::{
    conntrack,
    fib::{self, Query, Route},
    flows::{self, Outcome},
    lb::{self, Balanced},
    metrics::count,
    packet::{
        ETH_DST, ETH_SRC, Frame, IPV4_CSUM, IPV4_DST, IPV4_SRC, IPV4_TOT_LEN, IPV4_TTL, L4_DPORT,
        L4_SPORT, L4Packet, TCP_ACK, TCP_CSUM, TCP_FIN, TCP_RST, TCP_SYN, UDP_CSUM, xdp_load,
        xdp_ptr,
    },
    routing::is_local_endpoint,
    snat,
};

const PASS: u32 = xdp_action::XDP_PASS;

/// XDP on the uplink: every frame reaching the node from its network.
#[inline(always)]
pub(crate) fn from_uplink(ctx: &XdpContext) -> u32 {
    let Some((pkt, tcp)) = L4Packet::parse_xdp(ctx) else {
        return PASS;
    };
    if let Some(nat) = snat::lookup(&pkt) {
        let reopened = tcp & (TCP_SYN | TCP_ACK) == TCP_SYN && nat.flags & CT_CLOSING != 0;
        if !reopened {
            if tcp & (TCP_FIN | TCP_RST) != 0 && nat.flags & NAT_REPLY == 0 {
                snat::mark_closing(&pkt);
            }
            let frontend = snat::frontend(&pkt, &nat);
            return match route(ctx, &pkt, &nat, 0) {
                Some(r) => {
                    lb::account(ctx, frontend.0, frontend.1, pkt.proto);
                    transmit(ctx, &pkt, &nat, &r)
                }
                None => PASS,
            };
        }
        // A new connection on a closed one's 5-tuple: balanced afresh.
        snat::forget(&pkt, &nat);
    }
    // A flow the TC program started is its own to the end.
    if conntrack::lookup(&pkt).is_some() {
        return PASS;
    }
    let Balanced::Backend(b) = lb::select(&pkt) else {
        return PASS;
    };
    if is_local_endpoint(b.ip) {
        return PASS;
    }
    // The route to the backend names the address this node sends from.
    let to_backend = Nat4Entry {
        saddr: 0,
        daddr: b.ip,
        sport: pkt.sport,
        dport: b.port,
        flags: 0,
        pad: [0; 3],
    };
    let Some(r) = route(ctx, &pkt, &to_backend, BPF_FIB_LOOKUP_SRC) else {
        return PASS;
    };
    let Some(nat) = snat::create(&pkt, r.src, (b.ip, b.port)) else {
        return PASS;
    };
    let o = Outcome {
        verdict: VERDICT_FORWARDED,
        reason: REASON_NONE,
        flags: FLAG_SERVICE,
        direction: flows::INGRESS,
        policy: 0,
    };
    flows::emit(ctx, &pkt, (b.ip, b.port), o);
    lb::account(ctx, pkt.daddr, pkt.dport, pkt.proto);
    count(ctx, Counter::ServiceNewFlow);
    transmit(ctx, &pkt, &nat, &r)
}

/// The next hop of `pkt` once rewritten by `nat`.
#[inline(always)]
fn route(ctx: &XdpContext, pkt: &L4Packet, nat: &Nat4Entry, flags: u32) -> Option<Route> {
    let q = Query::rewritten(nat, pkt.proto, xdp_load(ctx, IPV4_TOT_LEN)?, ctx.ifindex());
    fib::lookup(ctx.ctx as *mut c_void, &q, flags)
}

/// Rewrites `pkt` by `nat`, gives it `r`'s MACs and sends it out of `r`'s interface.
#[inline(always)]
fn transmit(ctx: &XdpContext, pkt: &L4Packet, nat: &Nat4Entry, r: &Route) -> u32 {
    if rewrite(ctx, pkt, nat).is_none() {
        return PASS;
    }
    let (Some(dst), Some(src)) = (
        xdp_ptr::<[u8; 6]>(ctx, ETH_DST),
        xdp_ptr::<[u8; 6]>(ctx, ETH_SRC),
    ) else {
        return PASS;
    };
    // SAFETY: both pointers were bounds-checked against the frame.
    unsafe {
        core::ptr::write_unaligned(dst, r.dmac);
        core::ptr::write_unaligned(src, r.smac);
    }
    count(ctx, Counter::ServiceNat);
    count(ctx, Counter::ForwardedXdp);
    if r.ifindex == ctx.ifindex() {
        xdp_action::XDP_TX
    } else {
        // SAFETY: a helper call with plain integer arguments.
        unsafe { bpf_redirect(r.ifindex, 0) as u32 }
    }
}

/// Writes `nat`'s addresses and ports into the frame, decrements the TTL (as a
/// router does), and updates the IPv4 and L4 checksums to match. `None` (frame
/// untouched) when the frame is too short or the TTL would run out: the host
/// stack then answers with ICMP time exceeded.
#[inline(always)]
fn rewrite(ctx: &XdpContext, pkt: &L4Packet, nat: &Nat4Entry) -> Option<()> {
    let ttl_word = xdp_ptr::<u16>(ctx, IPV4_TTL)?;
    let ttl = xdp_ptr::<u8>(ctx, IPV4_TTL)?;
    let ip_csum = xdp_ptr::<u16>(ctx, IPV4_CSUM)?;
    let l4_csum = xdp_ptr::<u16>(
        ctx,
        if pkt.proto == PROTO_TCP {
            TCP_CSUM
        } else {
            UDP_CSUM
        },
    )?;
    let saddr = xdp_ptr::<u32>(ctx, IPV4_SRC)?;
    let daddr = xdp_ptr::<u32>(ctx, IPV4_DST)?;
    let sport = xdp_ptr::<u16>(ctx, L4_SPORT)?;
    let dport = xdp_ptr::<u16>(ctx, L4_DPORT)?;
    // SAFETY: every pointer was bounds-checked against the frame by `xdp_ptr`;
    // packet data has no alignment guarantee, hence the unaligned accesses.
    unsafe {
        use core::ptr::{read_unaligned as read, write_unaligned as write};
        if read(ttl) <= 1 {
            return None;
        }
        let old_word = read(ttl_word);
        write(ttl, read(ttl) - 1);
        let mut ip = checksum::replace2(read(ip_csum), old_word, read(ttl_word));
        ip = checksum::replace4(ip, pkt.saddr, nat.saddr);
        ip = checksum::replace4(ip, pkt.daddr, nat.daddr);
        write(ip_csum, ip);
        // The L4 checksum covers the addresses (pseudo-header) and the ports; a
        // UDP checksum of 0 means "none" and stays so, and a computed 0 is sent
        // as 0xffff (RFC 768).
        let old_l4 = read(l4_csum);
        if pkt.proto == PROTO_TCP || old_l4 != 0 {
            let mut l4 = checksum::replace4(old_l4, pkt.saddr, nat.saddr);
            l4 = checksum::replace4(l4, pkt.daddr, nat.daddr);
            l4 = checksum::replace2(l4, pkt.sport, nat.sport);
            l4 = checksum::replace2(l4, pkt.dport, nat.dport);
            if pkt.proto == PROTO_UDP && l4 == 0 {
                l4 = 0xffff;
            }
            write(l4_csum, l4);
        }
        write(saddr, nat.saddr);
        write(daddr, nat.daddr);
        write(sport, nat.sport);
        write(dport, nat.dport);
    }
    Some(())
}
