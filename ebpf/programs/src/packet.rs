//! Offsets of the header fields the programs read and write (untagged Ethernet,
//! IPv4 without options), and the parsed view of an L4 packet.

use aya_ebpf::programs::{TcContext, XdpContext};
use sextant_ebpf_common::lb::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// Destination MAC.
pub(crate) const ETH_DST: usize = 0;
/// Source MAC.
pub(crate) const ETH_SRC: usize = 6;
/// EtherType (big endian).
pub(crate) const ETH_TYPE: usize = 12;
/// Length of the Ethernet header.
pub(crate) const ETH_HLEN: usize = 14;
/// EtherType of IPv4.
pub(crate) const ETH_P_IP: u16 = 0x0800;
/// IPv4 version and header length.
pub(crate) const IPV4_VIHL: usize = ETH_HLEN;
/// IPv4 protocol.
pub(crate) const IPV4_PROTO: usize = ETH_HLEN + 9;
/// IPv4 header checksum.
pub(crate) const IPV4_CSUM: usize = ETH_HLEN + 10;
/// IPv4 source address.
pub(crate) const IPV4_SRC: usize = ETH_HLEN + 12;
/// IPv4 destination address.
pub(crate) const IPV4_DST: usize = ETH_HLEN + 16;
/// Start of the L4 header when the IPv4 header has no options.
pub(crate) const L4: usize = ETH_HLEN + 20;
/// L4 source port (TCP and UDP).
pub(crate) const L4_SPORT: usize = L4;
/// L4 destination port (TCP and UDP).
pub(crate) const L4_DPORT: usize = L4 + 2;
/// ICMP type.
pub(crate) const ICMP_TYPE: usize = L4;
/// ICMP echo identifier.
pub(crate) const ICMP_ID: usize = L4 + 4;
/// ICMP echo request.
const ICMP_ECHO_REQUEST: u8 = 8;
/// ICMP echo reply.
const ICMP_ECHO_REPLY: u8 = 0;
/// TCP flags.
pub(crate) const TCP_FLAGS: usize = L4 + 13;
/// TCP FIN flag.
pub(crate) const TCP_FIN: u8 = 0x01;
/// TCP RST flag.
pub(crate) const TCP_RST: u8 = 0x04;
/// TCP SYN flag.
pub(crate) const TCP_SYN: u8 = 0x02;
/// TCP ACK flag.
pub(crate) const TCP_ACK: u8 = 0x10;
/// TCP checksum.
pub(crate) const TCP_CSUM: usize = L4 + 16;
/// UDP checksum.
pub(crate) const UDP_CSUM: usize = L4 + 6;

/// What the counters and flow events need of a frame, in TC or XDP.
pub(crate) trait Frame {
    /// The frame's length in bytes.
    fn bytes(&self) -> u32;
    /// The interface it arrived on (TC: the interface the program runs on).
    fn ifindex(&self) -> u32;
}

impl Frame for TcContext {
    #[inline(always)]
    fn bytes(&self) -> u32 {
        self.len()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: `skb` is the context pointer the kernel handed to this program.
        unsafe { (*self.skb.skb).ifindex }
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn bytes(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: `ctx` is the context pointer the kernel handed to this program.
        unsafe { (*self.ctx).ingress_ifindex }
    }
}

/// IPv4 total length.
pub(crate) const IPV4_TOT_LEN: usize = ETH_HLEN + 2;
/// IPv4 flags and fragment offset.
pub(crate) const IPV4_FRAG: usize = ETH_HLEN + 6;
/// IPv4 time to live (followed by the protocol: one 16-bit checksum word).
pub(crate) const IPV4_TTL: usize = ETH_HLEN + 8;

/// A pointer to the `T` at `offset` in an XDP frame, if the frame holds all of it.
#[inline(always)]
pub(crate) fn xdp_ptr<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Reads the `T` at `offset` in an XDP frame.
#[inline(always)]
pub(crate) fn xdp_load<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: `xdp_ptr` checked the frame holds the value; packet data has no
    // alignment guarantee, hence the unaligned read.
    xdp_ptr::<T>(ctx, offset).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

/// Whether the frame carries IPv4.
#[inline(always)]
pub(crate) fn is_ipv4(ctx: &TcContext) -> bool {
    ctx.load::<u16>(ETH_TYPE)
        .is_ok_and(|t| u16::from_be(t) == ETH_P_IP)
}

/// A TCP, UDP or ICMP echo packet over IPv4 without options, fields in packet
/// byte order.
#[derive(Clone, Copy)]
pub(crate) struct L4Packet {
    pub(crate) saddr: u32,
    pub(crate) daddr: u32,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) proto: u8,
}

impl L4Packet {
    /// Parses an IPv4 frame; `None` for other frames, IP options, and protocols other than
    /// TCP, UDP and ICMP echo. An echo carries its identifier as the source "port"
    /// of a request and the destination "port" of a reply, so a reply's tuple is
    /// its request's reversed, as for TCP and UDP.
    #[inline(always)]
    pub(crate) fn parse(ctx: &TcContext) -> Option<Self> {
        if !is_ipv4(ctx) {
            return None;
        }
        let vihl: u8 = ctx.load(IPV4_VIHL).ok()?;
        if vihl != 0x45 {
            return None;
        }
        let proto: u8 = ctx.load(IPV4_PROTO).ok()?;
        let (sport, dport) = match proto {
            PROTO_TCP | PROTO_UDP => (ctx.load(L4_SPORT).ok()?, ctx.load(L4_DPORT).ok()?),
            PROTO_ICMP => {
                let id: u16 = ctx.load(ICMP_ID).ok()?;
                match ctx.load::<u8>(ICMP_TYPE).ok()? {
                    ICMP_ECHO_REQUEST => (id, 0),
                    ICMP_ECHO_REPLY => (0, id),
                    _ => return None,
                }
            }
            _ => return None,
        };
        Some(Self {
            saddr: ctx.load(IPV4_SRC).ok()?,
            daddr: ctx.load(IPV4_DST).ok()?,
            sport,
            dport,
            proto,
        })
    }

    /// Parses an XDP frame: a TCP or UDP packet over IPv4 without options, not a
    /// fragment. Returns it with its TCP flags (0 for UDP).
    #[inline(always)]
    pub(crate) fn parse_xdp(ctx: &XdpContext) -> Option<(Self, u8)> {
        if u16::from_be(xdp_load::<u16>(ctx, ETH_TYPE)?) != ETH_P_IP
            || xdp_load::<u8>(ctx, IPV4_VIHL)? != 0x45
            // More-fragments or an offset: no ports to read.
            || u16::from_be(xdp_load::<u16>(ctx, IPV4_FRAG)?) & 0x3fff != 0
        {
            return None;
        }
        let proto: u8 = xdp_load(ctx, IPV4_PROTO)?;
        let flags = match proto {
            PROTO_TCP => xdp_load(ctx, TCP_FLAGS)?,
            PROTO_UDP => 0,
            _ => return None,
        };
        let pkt = Self {
            saddr: xdp_load(ctx, IPV4_SRC)?,
            daddr: xdp_load(ctx, IPV4_DST)?,
            sport: xdp_load(ctx, L4_SPORT)?,
            dport: xdp_load(ctx, L4_DPORT)?,
            proto,
        };
        Some((pkt, flags))
    }

    /// Offset of this packet's L4 checksum.
    #[inline(always)]
    pub(crate) fn csum_offset(&self) -> usize {
        if self.proto == PROTO_TCP {
            TCP_CSUM
        } else {
            UDP_CSUM
        }
    }
}
