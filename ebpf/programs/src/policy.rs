//! Network policy: a new flow is judged once, when conntrack does not know it
//! yet — by the egress rules of the pod it leaves and the ingress rules of the
//! pod it enters. Replies and later packets of an allowed flow find their
//! conntrack entry and are not judged again, so a policy change applies to new
//! connections only. The peer is judged by its identity (`SX_IPCACHE_V1`, longest
//! prefix), the rules are allow entries per endpoint (`SX_POLICY_V1`), and an
//! endpoint no policy selects in a direction (`SX_POLICY_EP_V1`) allows everything.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
};
use sextant_ebpf_common::policy::{
    DIRECTION_INGRESS, IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD, IpKey, MAX_IPCACHE, MAX_POLICY,
    MAX_POLICY_ENDPOINTS, PREFIX_FULL, PolicyEndpoint, PolicyKey, PolicyValue,
};

/// Address prefix → identity.
#[map(name = "SX_IPCACHE_V1")]
static SX_IPCACHE_V1: LpmTrie<IpKey, u32> = LpmTrie::with_max_entries(MAX_IPCACHE, 0);

/// (endpoint, peer identity, direction, protocol, port prefix) → the allowing policy.
#[map(name = "SX_POLICY_V1")]
static SX_POLICY_V1: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::with_max_entries(MAX_POLICY, 0);

/// Local pod → which of its directions are enforced.
#[map(name = "SX_POLICY_EP_V1")]
static SX_POLICY_EP_V1: HashMap<u32, PolicyEndpoint> =
    HashMap::with_max_entries(MAX_POLICY_ENDPOINTS, 0);

/// What policy says about a new flow in one direction.
#[derive(Clone, Copy)]
pub(crate) enum Decision {
    /// No policy selects the endpoint in this direction.
    NotEnforced,
    /// A rule of this policy allows it.
    Allowed(u32),
    /// Nothing allows it; this policy selects the endpoint.
    Denied(u32),
}

/// The identity of `addr`, [`IDENTITY_WORLD`] when no prefix holds it.
#[inline(always)]
fn identity_of(addr: u32) -> u32 {
    let key = Key::new(32, IpKey { addr });
    SX_IPCACHE_V1.get(&key).copied().unwrap_or(IDENTITY_WORLD)
}

/// Judges a new flow of local pod `endpoint` with `peer` in `direction`, to
/// destination port `port` (packet byte order) over `proto`.
#[inline(always)]
pub(crate) fn check(endpoint: u32, direction: u8, peer: u32, proto: u8, port: u16) -> Decision {
    // SAFETY: the value is copied out at once.
    let Some(ep) = (unsafe { SX_POLICY_EP_V1.get(&endpoint) }).copied() else {
        return Decision::NotEnforced;
    };
    let selecting = if direction == DIRECTION_INGRESS {
        ep.ingress
    } else {
        ep.egress
    };
    if selecting == 0 {
        return Decision::NotEnforced;
    }
    let identity = identity_of(peer);
    if direction == DIRECTION_INGRESS && identity == IDENTITY_HOST {
        return Decision::Allowed(0);
    }
    for id in [identity, IDENTITY_ANY] {
        let key = Key::new(
            PREFIX_FULL,
            PolicyKey {
                endpoint,
                identity: id,
                direction,
                proto,
                port,
            },
        );
        if let Some(v) = SX_POLICY_V1.get(&key) {
            return Decision::Allowed(v.policy);
        }
    }
    Decision::Denied(selecting)
}
