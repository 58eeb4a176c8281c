//! Pod networking: a packet leaving a pod is first matched against conntrack (a
//! known flow: DNAT to its backend, reverse NAT of a backend's reply, or nothing);
//! a new flow is given to service load balancing, judged by network policy (the
//! source's egress rules, a local destination's ingress rules) and tracked. Then
//! it is handed straight to another pod on this node (`bpf_redirect_peer`,
//! skipping the host stack) or passed to the host stack, which routes it to
//! another node (native routing) or outside (masqueraded by the agent's nat rule).
//! A packet the host stack hands to a pod gets the same conntrack and ingress
//! policy treatment.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect_peer,
    macros::map,
    maps::HashMap,
    programs::TcContext,
};
use sextant_ebpf_common::{
    endpoints::{Endpoint, MAX_ENDPOINTS},
    flows::{
        FLAG_SERVICE, REASON_NO_BACKEND, REASON_NONE, REASON_POLICY_DENIED, VERDICT_DROPPED,
        VERDICT_FORWARDED,
    },
    lb::{CT_CLOSING, CT_DNAT, CT_HAIRPIN, CT_REVNAT, HAIRPIN_IP, PROTO_TCP},
    metrics::Counter,
    policy::{DIRECTION_EGRESS, DIRECTION_INGRESS},
};

use crate::{
    conntrack,
    flows::{self, Outcome},
    lb::{self, Balanced},
    metrics::count,
    nat::{self, End},
    packet::{
        ETH_DST, ETH_SRC, IPV4_DST, L4Packet, TCP_ACK, TCP_FIN, TCP_FLAGS, TCP_RST, TCP_SYN,
        is_ipv4,
    },
    policy::{self, Decision},
};

/// Pod IPv4 (network byte order) → local endpoint, written by the agent on CNI ADD.
#[map(name = "SX_ENDPOINTS_V1")]
static SX_ENDPOINTS_V1: HashMap<u32, Endpoint> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Whether `ip` (packet byte order) is a pod on this node.
#[inline(always)]
pub(crate) fn is_local_endpoint(ip: u32) -> bool {
    // SAFETY: only the presence of the value is read.
    unsafe { SX_ENDPOINTS_V1.get(&ip) }.is_some()
}

/// Where a packet stands with conntrack and load balancing.
enum Flow {
    /// A tracked flow (rewritten as its entry says): not judged again.
    Known,
    /// A flow conntrack does not know, going to `to` (a service's backend, or
    /// the packet's own destination).
    New { to: (u32, u16), service: bool },
    /// Drop.
    Drop,
}

/// The packet's TCP flags, 0 for UDP.
#[inline(always)]
fn tcp_flags(ctx: &TcContext, pkt: &L4Packet) -> u8 {
    if pkt.proto == PROTO_TCP {
        ctx.load::<u8>(TCP_FLAGS).unwrap_or(0)
    } else {
        0
    }
}

/// Conntrack first: a known flow is rewritten as tracked. A SYN on a 5-tuple
/// whose connection closed starts a new flow (balanced and judged afresh: its old
/// backend may be gone, the policy may have changed).
#[inline(always)]
fn known(ctx: &TcContext, pkt: &L4Packet) -> Option<Flow> {
    let flags = tcp_flags(ctx, pkt);
    let ct = conntrack::lookup(pkt)?;
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN && ct.flags & CT_CLOSING != 0 {
        return None;
    }
    if flags & (TCP_FIN | TCP_RST) != 0 {
        conntrack::mark_closing(pkt);
    }
    let (end, other) = match ct.action {
        CT_DNAT => {
            lb::account(ctx, pkt.daddr, pkt.dport, pkt.proto);
            // Hairpin: the pod sees itself as reached from HAIRPIN_IP.
            (End::Destination, (End::Source, HAIRPIN_IP, pkt.sport))
        }
        CT_REVNAT => {
            lb::account(ctx, ct.addr, ct.port, pkt.proto);
            // Hairpin: the reply goes back to the pod itself.
            (End::Source, (End::Destination, pkt.saddr, pkt.dport))
        }
        _ => return Some(Flow::Known),
    };
    if nat::rewrite(ctx, pkt, end, ct.addr, ct.port).is_err()
        || (ct.flags & CT_HAIRPIN != 0
            && nat::rewrite(ctx, pkt, other.0, other.1, other.2).is_err())
    {
        return Some(Flow::Drop);
    }
    count(ctx, Counter::ServiceNat);
    Some(Flow::Known)
}

/// A packet leaving a pod: known flow, or a new one (balanced if to a frontend).
#[inline(always)]
fn classify(ctx: &TcContext, pkt: &L4Packet) -> Flow {
    if let Some(flow) = known(ctx, pkt) {
        return flow;
    }
    match lb::select(pkt) {
        Balanced::NotAService => Flow::New {
            to: (pkt.daddr, pkt.dport),
            service: false,
        },
        Balanced::NoBackend => {
            count(ctx, Counter::DropNoBackend);
            let o = Outcome {
                verdict: VERDICT_DROPPED,
                reason: REASON_NO_BACKEND,
                flags: FLAG_SERVICE,
                direction: flows::EGRESS,
                policy: 0,
            };
            flows::emit(ctx, pkt, (pkt.daddr, pkt.dport), o);
            Flow::Drop
        }
        Balanced::Backend(b) => Flow::New {
            to: (b.ip, b.port),
            service: true,
        },
    }
}

/// Drops a new flow no policy allows, with its event and counter.
#[inline(always)]
fn deny(ctx: &TcContext, pkt: &L4Packet, to: (u32, u16), flags: u8, direction: u8, policy: u32) {
    count(ctx, Counter::DropPolicyDenied);
    let o = Outcome {
        verdict: VERDICT_DROPPED,
        reason: REASON_POLICY_DENIED,
        flags,
        direction,
        policy,
    };
    flows::emit(ctx, pkt, to, o);
}

/// A new flow leaving a pod for `to`: the source's egress rules, then (for a pod
/// on this node, which the packet reaches without passing `to_pod`) the
/// destination's ingress rules. Allowed: tracked (and DNATed to a backend).
#[inline(always)]
fn admit(ctx: &TcContext, pkt: &L4Packet, to: (u32, u16), service: bool) -> bool {
    let flags = if service { FLAG_SERVICE } else { 0 };
    let mut decided = 0;
    // A pod reaching itself through a service is not judged (upstream: a pod
    // cannot be cut off from itself).
    let hairpin = to.0 == pkt.saddr;
    match policy::check(pkt.saddr, DIRECTION_EGRESS, to.0, pkt.proto, to.1) {
        _ if hairpin => {}
        Decision::Denied(p) => {
            deny(ctx, pkt, to, flags, flows::EGRESS, p);
            return false;
        }
        Decision::Allowed(p) => decided = p,
        Decision::NotEnforced => {}
    }
    match policy::check(to.0, DIRECTION_INGRESS, pkt.saddr, pkt.proto, to.1) {
        _ if hairpin => {}
        Decision::Denied(p) => {
            deny(ctx, pkt, to, flags, flows::EGRESS, p);
            return false;
        }
        Decision::Allowed(p) if p != 0 => decided = p,
        _ => {}
    }
    let o = Outcome {
        verdict: VERDICT_FORWARDED,
        reason: REASON_NONE,
        flags,
        direction: flows::EGRESS,
        policy: decided,
    };
    flows::emit(ctx, pkt, to, o);
    if service {
        lb::account(ctx, pkt.daddr, pkt.dport, pkt.proto);
        conntrack::create(pkt, to.0, to.1);
        if nat::rewrite(ctx, pkt, End::Destination, to.0, to.1).is_err()
            || (hairpin && nat::rewrite(ctx, pkt, End::Source, HAIRPIN_IP, pkt.sport).is_err())
        {
            return false;
        }
        count(ctx, Counter::ServiceNewFlow);
    } else {
        conntrack::track(pkt);
    }
    true
}

/// Delivers a packet that left a pod: to a local pod by redirect, else to the stack.
#[inline(always)]
pub(crate) fn from_pod(ctx: &TcContext) -> i32 {
    if !is_ipv4(ctx) {
        count(ctx, Counter::PassedNonIpv4);
        return TC_ACT_OK;
    }
    if let Some(pkt) = L4Packet::parse(ctx) {
        match classify(ctx, &pkt) {
            Flow::Drop => return TC_ACT_SHOT,
            Flow::New { to, service } => {
                if !admit(ctx, &pkt, to, service) {
                    return TC_ACT_SHOT;
                }
            }
            Flow::Known => {}
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

/// A packet the host stack hands to a pod (from another node, the host, or
/// outside): known flows pass (replies of service flows balanced here to a
/// backend elsewhere get their VIP back); a new flow is judged by the pod's
/// ingress rules and tracked.
#[inline(always)]
pub(crate) fn to_pod(ctx: &TcContext) -> i32 {
    let Some(pkt) = L4Packet::parse(ctx) else {
        return TC_ACT_OK;
    };
    match known(ctx, &pkt) {
        Some(Flow::Drop) => return TC_ACT_SHOT,
        Some(_) => return TC_ACT_OK,
        None => {}
    }
    let to = (pkt.daddr, pkt.dport);
    let policy = match policy::check(
        pkt.daddr,
        DIRECTION_INGRESS,
        pkt.saddr,
        pkt.proto,
        pkt.dport,
    ) {
        Decision::Denied(p) => {
            deny(ctx, &pkt, to, 0, flows::INGRESS, p);
            return TC_ACT_SHOT;
        }
        Decision::Allowed(p) => p,
        Decision::NotEnforced => 0,
    };
    let o = Outcome {
        verdict: VERDICT_FORWARDED,
        reason: REASON_NONE,
        flags: 0,
        direction: flows::INGRESS,
        policy,
    };
    flows::emit(ctx, &pkt, to, o);
    conntrack::track(&pkt);
    TC_ACT_OK
}
