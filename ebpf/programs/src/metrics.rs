//! The datapath's packet counters (`SX_METRICS_V2`), one per [`Counter`].

use aya_ebpf::{macros::map, maps::PerCpuArray, programs::TcContext};
use sextant_ebpf_common::metrics::{Counter, PacketCount};

/// Per-CPU packet counters by [`Counter`].
#[map(name = "SX_METRICS_V2")]
static SX_METRICS_V2: PerCpuArray<PacketCount> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Counts one packet under `counter`.
#[inline(always)]
pub(crate) fn count(ctx: &TcContext, counter: Counter) {
    if let Some(c) = SX_METRICS_V2.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(ctx.len());
        }
    }
}
