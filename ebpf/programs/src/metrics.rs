//! The datapath's packet counters (`SX_METRICS_V3`), one per [`Counter`].

use aya_ebpf::{macros::map, maps::PerCpuArray};
use sextant_ebpf_common::metrics::{Counter, PacketCount};

use crate::packet::Frame;

/// Per-CPU packet counters by [`Counter`].
#[map(name = "SX_METRICS_V3")]
static SX_METRICS_V3: PerCpuArray<PacketCount> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Counts one packet under `counter`.
#[inline(always)]
pub(crate) fn count(ctx: &impl Frame, counter: Counter) {
    if let Some(c) = SX_METRICS_V3.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(ctx.bytes());
        }
    }
}
