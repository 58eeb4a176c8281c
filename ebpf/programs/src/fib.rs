//! Routes from the kernel's FIB (`bpf_fib_lookup`): where a rewritten packet goes
//! next, for the programs that send it themselves instead of handing it to the
//! host stack.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    cty::c_void,
    helpers::bpf_fib_lookup as fib_lookup,
};
use sextant_ebpf_common::lb::Nat4Entry;

/// `AF_INET`.
const AF_INET: u8 = 2;

/// The next hop of a packet.
pub(crate) struct Route {
    /// The interface to send it out of.
    pub(crate) ifindex: u32,
    /// That interface's MAC.
    pub(crate) smac: [u8; 6],
    /// The next hop's MAC (zero when the lookup skipped the neighbour table).
    pub(crate) dmac: [u8; 6],
    /// The source address the kernel would pick (with `BPF_FIB_LOOKUP_SRC`).
    pub(crate) src: u32,
}

/// The addresses, ports and size of the packet to route (packet byte order).
pub(crate) struct Query {
    pub(crate) saddr: u32,
    pub(crate) daddr: u32,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) proto: u8,
    /// IPv4 total length, for the MTU check.
    pub(crate) tot_len: u16,
    /// The interface the packet arrived on.
    pub(crate) ifindex: u32,
}

impl Query {
    /// A packet of `proto` (`tot_len`, arrived on `ifindex`) once rewritten by
    /// `nat`: the addresses and ports it will carry.
    #[inline(always)]
    pub(crate) fn rewritten(nat: &Nat4Entry, proto: u8, tot_len: u16, ifindex: u32) -> Self {
        Self {
            saddr: nat.saddr,
            daddr: nat.daddr,
            sport: nat.sport,
            dport: nat.dport,
            proto,
            tot_len,
            ifindex,
        }
    }
}

/// Looks `q` up in the FIB of the namespace `ctx` runs in; `None` unless the
/// route exists, fits the MTU and (without `BPF_FIB_LOOKUP_SKIP_NEIGH`) its next
/// hop's MAC is known.
#[inline(always)]
pub(crate) fn lookup(ctx: *mut c_void, q: &Query, flags: u32) -> Option<Route> {
    // SAFETY: an all-zero `bpf_fib_lookup` is a valid value (plain integers and
    // unions of them).
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = q.proto;
    p.sport = q.sport;
    p.dport = q.dport;
    p.__bindgen_anon_1.tot_len = u16::from_be(q.tot_len);
    p.ifindex = q.ifindex;
    p.__bindgen_anon_3.ipv4_src = q.saddr;
    p.__bindgen_anon_4.ipv4_dst = q.daddr;
    // SAFETY: `ctx` is the program's context and `p` a live, writable parameter
    // block of the size passed.
    let ret = unsafe {
        fib_lookup(
            ctx,
            &mut p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return None;
    }
    Some(Route {
        ifindex: p.ifindex,
        smac: p.smac,
        dmac: p.dmac,
        // SAFETY: the kernel filled the IPv4 member of the union.
        src: unsafe { p.__bindgen_anon_3.ipv4_src },
    })
}
