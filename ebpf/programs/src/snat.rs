//! The NodePort SNAT table (`SX_NODEPORT_NAT4_V1`, LRU): NodePort and
//! external-IP flows that the uplink's XDP program sends to a backend on another
//! node. Each flow gets a source port of this node (from `SNAT_PORT_MIN` on) so
//! the backend's replies come back here, and two entries: the client's direction
//! (rewritten to node:port → backend) and the backend's (rewritten to frontend →
//! client). The TC program on the uplink reads the same table for the packets
//! XDP hands it (a next hop whose MAC the kernel does not know yet).

use aya_ebpf::{bindings::BPF_NOEXIST, macros::map, maps::LruHashMap};
use sextant_ebpf_common::lb::{
    CT_CLOSING, Ct4Key, MAX_NODEPORT_FLOWS, NAT_REPLY, Nat4Entry, SNAT_PORT_MIN, SNAT_PORTS,
    SNAT_RETRIES,
};

use crate::{lb::flow_hash, packet::L4Packet};

/// A flow's 5-tuple in one direction → the rewrite of its packets.
#[map(name = "SX_NODEPORT_NAT4_V1")]
static SX_NODEPORT_NAT4_V1: LruHashMap<Ct4Key, Nat4Entry> =
    LruHashMap::with_max_entries(MAX_NODEPORT_FLOWS, 0);

#[inline(always)]
fn key_of(pkt: &L4Packet) -> Ct4Key {
    Ct4Key {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        pad: [0; 3],
    }
}

/// The key of the packets that carry the rewrite `e` (the other direction's
/// packets once rewritten, seen from their receiver: reversed).
#[inline(always)]
fn reverse_of(e: &Nat4Entry, proto: u8) -> Ct4Key {
    Ct4Key {
        saddr: e.daddr,
        daddr: e.saddr,
        sport: e.dport,
        dport: e.sport,
        proto,
        pad: [0; 3],
    }
}

/// The frontend (`address, port`) of the flow `pkt` belongs to, rewritten by
/// `e`: the reply direction's new source, or the client's destination.
#[inline(always)]
pub(crate) fn frontend(pkt: &L4Packet, e: &Nat4Entry) -> (u32, u16) {
    if e.flags & NAT_REPLY != 0 {
        (e.saddr, e.sport)
    } else {
        (pkt.daddr, pkt.dport)
    }
}

/// The rewrite for `pkt`, if its flow is in the table.
#[inline(always)]
pub(crate) fn lookup(pkt: &L4Packet) -> Option<Nat4Entry> {
    // SAFETY: the value is copied out at once.
    unsafe { SX_NODEPORT_NAT4_V1.get(&key_of(pkt)) }.copied()
}

/// Marks `pkt`'s direction as closing (the client sent FIN or RST).
#[inline(always)]
pub(crate) fn mark_closing(pkt: &L4Packet) {
    if let Some(e) = SX_NODEPORT_NAT4_V1.get_ptr_mut(&key_of(pkt)) {
        // SAFETY: a byte of a map value; concurrent writers all write the same bit.
        unsafe { (*e).flags |= CT_CLOSING };
    }
}

/// Forgets the flow of `pkt` (client's direction, rewritten by `e`): a closed
/// connection whose 5-tuple is reused.
#[inline(always)]
pub(crate) fn forget(pkt: &L4Packet, e: &Nat4Entry) {
    let _ = SX_NODEPORT_NAT4_V1.remove(&reverse_of(e, pkt.proto));
    let _ = SX_NODEPORT_NAT4_V1.remove(&key_of(pkt));
}

/// Records the new flow `pkt` (client → frontend) to `backend`, from `node` on a
/// free port. Returns the client's direction's rewrite, or `None` when every
/// port tried is taken for this backend (the TC path takes the flow then).
#[inline(always)]
pub(crate) fn create(pkt: &L4Packet, node: u32, backend: (u32, u16)) -> Option<Nat4Entry> {
    let reply = Nat4Entry {
        saddr: pkt.daddr,
        daddr: pkt.saddr,
        sport: pkt.dport,
        dport: pkt.sport,
        flags: NAT_REPLY,
        pad: [0; 3],
    };
    let start = flow_hash(pkt);
    for i in 0..SNAT_RETRIES {
        // Candidates spread over the range (Fibonacci hashing steps); the
        // reply entry's insert with NOEXIST claims the port atomically.
        let offset = start.wrapping_add(i.wrapping_mul(0x9e37_79b9)) % u32::from(SNAT_PORTS);
        let port = (SNAT_PORT_MIN + offset as u16).to_be();
        let forward = Nat4Entry {
            saddr: node,
            daddr: backend.0,
            sport: port,
            dport: backend.1,
            flags: 0,
            pad: [0; 3],
        };
        let reply_key = reverse_of(&forward, pkt.proto);
        if SX_NODEPORT_NAT4_V1
            .insert(&reply_key, &reply, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            if SX_NODEPORT_NAT4_V1
                .insert(&key_of(pkt), &forward, 0)
                .is_err()
            {
                let _ = SX_NODEPORT_NAT4_V1.remove(&reply_key);
                return None;
            }
            return Some(forward);
        }
    }
    None
}
