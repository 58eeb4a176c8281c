//! Service load balancing (ClusterIP): frontends (`SX_LB4_SERVICES_V1`) and their
//! backend slots (`SX_LB4_BACKENDS_V1`), written by the agent from Services and
//! EndpointSlices. A new flow picks a slot at random; conntrack keeps it there.

use aya_ebpf::{helpers::bpf_get_prandom_u32, macros::map, maps::HashMap};
use sextant_ebpf_common::lb::{
    Lb4Backend, Lb4BackendKey, Lb4Key, Lb4Service, MAX_BACKENDS, MAX_SERVICES,
};

use crate::packet::L4Packet;

/// (VIP, port, protocol) → frontend.
#[map(name = "SX_LB4_SERVICES_V1")]
static SX_LB4_SERVICES_V1: HashMap<Lb4Key, Lb4Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// (frontend id, slot) → backend.
#[map(name = "SX_LB4_BACKENDS_V1")]
static SX_LB4_BACKENDS_V1: HashMap<Lb4BackendKey, Lb4Backend> =
    HashMap::with_max_entries(MAX_BACKENDS, 0);

/// What a packet to a frontend gets.
pub(crate) enum Balanced {
    /// Not a frontend.
    NotAService,
    /// A frontend without ready backends.
    NoBackend,
    /// This backend.
    Backend(Lb4Backend),
}

/// Picks a backend for a new flow from `pkt`.
#[inline(always)]
pub(crate) fn select(pkt: &L4Packet) -> Balanced {
    let key = Lb4Key {
        vip: pkt.daddr,
        port: pkt.dport,
        proto: pkt.proto,
        pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let Some(svc) = (unsafe { SX_LB4_SERVICES_V1.get(&key) }).copied() else {
        return Balanced::NotAService;
    };
    if svc.count == 0 {
        return Balanced::NoBackend;
    }
    // SAFETY: a helper call without arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % svc.count;
    let bkey = Lb4BackendKey { id: svc.id, slot };
    // SAFETY: the value is copied out at once.
    match unsafe { SX_LB4_BACKENDS_V1.get(&bkey) } {
        Some(b) => Balanced::Backend(*b),
        // The agent shrinks `count` before freeing slots; a miss is a race with it.
        None => Balanced::NoBackend,
    }
}
