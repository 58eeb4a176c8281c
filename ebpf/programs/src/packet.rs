//! Offsets of the header fields the programs read and write (untagged Ethernet,
//! IPv4).

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
/// IPv4 destination address.
pub(crate) const IPV4_DST: usize = ETH_HLEN + 16;
