//! Address and port rewriting with incremental checksum updates: the IPv4 header
//! checksum, and the TCP/UDP checksum over the pseudo-header and the port.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use sextant_ebpf_common::lb::PROTO_UDP;

use crate::packet::{IPV4_CSUM, IPV4_DST, IPV4_SRC, L4_DPORT, L4_SPORT, L4Packet};

/// Which end of the packet to rewrite.
#[derive(Clone, Copy)]
pub(crate) enum End {
    /// Destination (DNAT: a client's packet to a backend).
    Destination,
    /// Source (reverse NAT: a backend's reply shown as from the VIP).
    Source,
}

/// Rewrites one end of `pkt` to `addr:port`; `Err` when the kernel refused a write.
#[inline(always)]
pub(crate) fn rewrite(
    ctx: &TcContext,
    pkt: &L4Packet,
    end: End,
    addr: u32,
    port: u16,
) -> Result<(), i64> {
    let (addr_off, port_off, old_addr, old_port) = match end {
        End::Destination => (IPV4_DST, L4_DPORT, pkt.daddr, pkt.dport),
        End::Source => (IPV4_SRC, L4_SPORT, pkt.saddr, pkt.sport),
    };
    let csum = pkt.csum_offset();
    // A UDP checksum of 0 means "none" and must stay 0.
    let mangled = if pkt.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    if old_addr != addr {
        ctx.l4_csum_replace(
            csum,
            u64::from(old_addr),
            u64::from(addr),
            u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
        )?;
        ctx.l3_csum_replace(IPV4_CSUM, u64::from(old_addr), u64::from(addr), 4)?;
        ctx.store(addr_off, &addr, 0)?;
    }
    if old_port != port {
        ctx.l4_csum_replace(csum, u64::from(old_port), u64::from(port), mangled | 2)?;
        ctx.store(port_off, &port, 0)?;
    }
    Ok(())
}
