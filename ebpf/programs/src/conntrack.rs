//! Connection tracking (`SX_CT4_V1`, LRU). The first packet of a flow to a
//! frontend records the backend it was given (for the client's later packets) and
//! the VIP to show in replies (for the backend's packets back); every other flow
//! into or out of a pod is tracked both ways without a rewrite, so its replies
//! pass network policy.
//! Flows keep their backend while they live, so removing a backend from a
//! service moves no established flow: terminating endpoints drain.

use aya_ebpf::bindings::BPF_NOEXIST;
use aya_ebpf::{macros::map, maps::LruHashMap};
use sextant_ebpf_common::lb::{
    CT_CLOSING, CT_DNAT, CT_HAIRPIN, CT_REVNAT, CT_TRACKED, Ct4Entry, Ct4Key, HAIRPIN_IP, MAX_FLOWS,
};

use crate::packet::L4Packet;

/// Flow 5-tuple → what to rewrite; the oldest flows go first when full.
#[map(name = "SX_CT4_V1")]
static SX_CT4_V1: LruHashMap<Ct4Key, Ct4Entry> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[inline(always)]
fn key(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> Ct4Key {
    Ct4Key {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        pad: [0; 3],
    }
}

/// The tracked rewrite for `pkt`'s direction, if its flow is tracked.
#[inline(always)]
pub(crate) fn lookup(pkt: &L4Packet) -> Option<Ct4Entry> {
    let k = key(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport, pkt.proto);
    // SAFETY: the value is copied out at once.
    unsafe { SX_CT4_V1.get(&k) }.copied()
}

/// Marks `pkt`'s direction of its flow as closing (FIN or RST seen).
#[inline(always)]
pub(crate) fn mark_closing(pkt: &L4Packet) {
    let k = key(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport, pkt.proto);
    if let Some(e) = SX_CT4_V1.get_ptr_mut(&k) {
        // SAFETY: a byte of a map value; concurrent writers all write the same bit.
        unsafe { (*e).flags |= CT_CLOSING };
    }
}

/// Tracks a new flow from `pkt` (client → VIP) to `backend:port` both ways. A
/// hairpinned flow (the client is the backend) is seen by it as from
/// [`HAIRPIN_IP`], so its replies are tracked as sent there.
#[inline(always)]
pub(crate) fn create(pkt: &L4Packet, backend: u32, port: u16) {
    let hairpin = backend == pkt.saddr;
    let flags = if hairpin { CT_HAIRPIN } else { 0 };
    let forward = key(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport, pkt.proto);
    let dnat = Ct4Entry {
        addr: backend,
        port,
        action: CT_DNAT,
        flags,
    };
    let client = if hairpin { HAIRPIN_IP } else { pkt.saddr };
    let reply = key(backend, client, port, pkt.sport, pkt.proto);
    let revnat = Ct4Entry {
        addr: pkt.daddr,
        port: pkt.dport,
        action: CT_REVNAT,
        flags,
    };
    // A full LRU evicts; an insert fails only on kernel errors, and then the
    // flow is simply balanced again on its next packet.
    let _ = SX_CT4_V1.insert(&forward, &dnat, 0);
    let _ = SX_CT4_V1.insert(&reply, &revnat, 0);
}

/// Tracks a flow from `pkt` both ways, without a rewrite. An existing entry for
/// the reply direction (a service flow's reverse NAT) is kept.
#[inline(always)]
pub(crate) fn track(pkt: &L4Packet) {
    let tracked = Ct4Entry {
        addr: 0,
        port: 0,
        action: CT_TRACKED,
        flags: 0,
    };
    let forward = key(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport, pkt.proto);
    let reply = key(pkt.daddr, pkt.saddr, pkt.dport, pkt.sport, pkt.proto);
    let _ = SX_CT4_V1.insert(&forward, &tracked, 0);
    let _ = SX_CT4_V1.insert(&reply, &tracked, u64::from(BPF_NOEXIST));
}
