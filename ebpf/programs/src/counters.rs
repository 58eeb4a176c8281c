//! Per-interface packet and byte counters (maps `SX_IFACE_SLOTS_V1`, `SX_IFACE_STATS_V1`).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use sextant_ebpf_common::counters::{IfaceStats, MAX_IFACES};

/// Interface index → slot in `SX_IFACE_STATS_V1`, written by the user side on attach.
#[map(name = "SX_IFACE_SLOTS_V1")]
static SX_IFACE_SLOTS_V1: HashMap<u32, u32> = HashMap::with_max_entries(MAX_IFACES, 0);

/// Per-CPU counters by slot; no atomics needed since each CPU owns its copy.
#[map(name = "SX_IFACE_STATS_V1")]
static SX_IFACE_STATS_V1: PerCpuArray<IfaceStats> = PerCpuArray::with_max_entries(MAX_IFACES, 0);

/// Set to 1 by the loader to emit aya-log lines; read volatile so the compiler keeps the load.
#[unsafe(no_mangle)]
static SX_DEBUG: u32 = 0;

#[inline(always)]
fn debug_enabled() -> bool {
    // SAFETY: a plain read of a global the loader may have rewritten before load.
    unsafe { core::ptr::read_volatile(&SX_DEBUG) != 0 }
}

#[inline(always)]
fn stats_of(ifindex: u32) -> Option<*mut IfaceStats> {
    // SAFETY: the value is a plain u32 owned by the map.
    let slot = unsafe { SX_IFACE_SLOTS_V1.get(&ifindex) }?;
    SX_IFACE_STATS_V1.get_ptr_mut(*slot)
}

/// Counts one packet seen by TC.
#[inline(always)]
pub(crate) fn count_tc(ctx: &TcContext) {
    // SAFETY: `skb` is the context pointer the kernel handed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = ctx.len();
    if let Some(stats) = stats_of(ifindex) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            (*stats).tc_packets += 1;
            (*stats).tc_bytes += u64::from(len);
        }
    }
    if debug_enabled() {
        debug!(ctx, "tc: ifindex {} len {}", ifindex, len);
    }
}

/// Counts one packet seen by XDP.
#[inline(always)]
pub(crate) fn count_xdp(ctx: &XdpContext) {
    // SAFETY: `ctx.ctx` is the context pointer the kernel handed to this program.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let len = (ctx.data_end() - ctx.data()) as u64;
    if let Some(stats) = stats_of(ifindex) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            (*stats).xdp_packets += 1;
            (*stats).xdp_bytes += len;
        }
    }
    if debug_enabled() {
        debug!(ctx, "xdp: ifindex {} len {}", ifindex, len);
    }
}
