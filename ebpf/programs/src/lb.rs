//! Service load balancing (ClusterIP): frontends (`SX_LB4_SERVICES_V2`) and their
//! backend slots (`SX_LB4_BACKENDS_V2`), written by the agent from Services and
//! EndpointSlices. The slots are the frontend's Maglev lookup table: a new flow
//! takes the slot its 5-tuple hashes to; conntrack keeps it there.
//! With `sessionAffinity: ClientIP`, a client's new flows go to the backend it had
//! while it keeps coming back within the timeout and that backend is still one of
//! the frontend's (`SX_LB4_AFFINITY_V1`).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use sextant_ebpf_common::{
    lb::{
        AFFINITY_CHECK_SLOTS, Lb4Affinity, Lb4AffinityKey, Lb4Backend, Lb4BackendKey, Lb4Key,
        Lb4Service, MAX_AFFINITY, MAX_BACKENDS, MAX_SERVICES,
    },
    metrics::PacketCount,
};

use crate::packet::{Frame, L4Packet};

/// (VIP, port, protocol) → frontend.
#[map(name = "SX_LB4_SERVICES_V2")]
static SX_LB4_SERVICES_V2: HashMap<Lb4Key, Lb4Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// (client, frontend id) → its backend, for session affinity.
#[map(name = "SX_LB4_AFFINITY_V1")]
static SX_LB4_AFFINITY_V1: LruHashMap<Lb4AffinityKey, Lb4Affinity> =
    LruHashMap::with_max_entries(MAX_AFFINITY, 0);

/// (frontend id, slot) → backend.
#[map(name = "SX_LB4_BACKENDS_V2")]
static SX_LB4_BACKENDS_V2: HashMap<Lb4BackendKey, Lb4Backend> =
    HashMap::with_max_entries(MAX_BACKENDS, BPF_F_NO_PREALLOC);

/// Packets and bytes of each frontend's flows, by frontend id.
#[map(name = "SX_LB4_TRAFFIC_V1")]
static SX_LB4_TRAFFIC_V1: PerCpuArray<PacketCount> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Counts one packet of a flow of the frontend `vip:port/proto` (packet byte
/// order), if it is one.
#[inline(always)]
pub(crate) fn account(ctx: &impl Frame, vip: u32, port: u16, proto: u8) {
    let key = Lb4Key {
        vip,
        port,
        proto,
        pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let Some(id) = (unsafe { SX_LB4_SERVICES_V2.get(&key) }).map(|s| s.id) else {
        return;
    };
    if let Some(c) = SX_LB4_TRAFFIC_V1.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(ctx.bytes());
        }
    }
}

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
    let Some(svc) = (unsafe { SX_LB4_SERVICES_V2.get(&key) }).copied() else {
        return Balanced::NotAService;
    };
    if svc.count == 0 {
        return Balanced::NoBackend;
    }
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let affinity_key = Lb4AffinityKey {
        client: pkt.saddr,
        id: svc.id,
    };
    if svc.affinity_timeout != 0
        && let Some(b) = affine_backend(&svc, &affinity_key, now)
    {
        remember(&affinity_key, b, now);
        return Balanced::Backend(b);
    }
    // The frontend's Maglev table: every node picks the same backend for a flow,
    // and a backend change moves few flows that conntrack does not hold.
    let slot = flow_hash(pkt) % svc.count;
    let bkey = Lb4BackendKey { id: svc.id, slot };
    // SAFETY: the value is copied out at once.
    match unsafe { SX_LB4_BACKENDS_V2.get(&bkey) } {
        Some(b) => {
            if svc.affinity_timeout != 0 {
                remember(&affinity_key, *b, now);
            }
            Balanced::Backend(*b)
        }
        // The agent shrinks `count` before freeing slots; a miss is a race with it.
        None => Balanced::NoBackend,
    }
}

/// murmur3's 32-bit finalizer: every input bit affects every output bit.
#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// A hash of the flow's 5-tuple (the same on every node).
#[inline(always)]
pub(crate) fn flow_hash(pkt: &L4Packet) -> u32 {
    let ports = (u32::from(pkt.sport) << 16) | u32::from(pkt.dport);
    mix(mix(mix(pkt.saddr ^ u32::from(pkt.proto)) ^ pkt.daddr) ^ ports)
}

#[inline(always)]
fn remember(key: &Lb4AffinityKey, backend: Lb4Backend, now: u64) {
    let value = Lb4Affinity {
        backend,
        last_seen_ns: now,
    };
    // A full LRU forgets the oldest client; a failed insert only costs affinity.
    let _ = SX_LB4_AFFINITY_V1.insert(key, &value, 0);
}

/// The client's backend, if it came back within the timeout and the backend is
/// still in the frontend's first `AFFINITY_CHECK_SLOTS` slots (or the frontend has
/// more than that, which is trusted as it is).
#[inline(always)]
fn affine_backend(svc: &Lb4Service, key: &Lb4AffinityKey, now: u64) -> Option<Lb4Backend> {
    // SAFETY: the value is copied out at once.
    let a = unsafe { SX_LB4_AFFINITY_V1.get(key) }.copied()?;
    if now.saturating_sub(a.last_seen_ns) > u64::from(svc.affinity_timeout) * 1_000_000_000 {
        return None;
    }
    if svc.count > AFFINITY_CHECK_SLOTS {
        return Some(a.backend);
    }
    for slot in 0..AFFINITY_CHECK_SLOTS {
        if slot >= svc.count {
            break;
        }
        let bkey = Lb4BackendKey { id: svc.id, slot };
        // SAFETY: the value is compared at once.
        if let Some(b) = unsafe { SX_LB4_BACKENDS_V2.get(&bkey) }
            && *b == a.backend
        {
            return Some(a.backend);
        }
    }
    None
}
