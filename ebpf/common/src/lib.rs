//! `#[repr(C)]` keys and values of the maps shared by Sextant's eBPF programs
//! (`ebpf/programs`) and their user side (`dataplane`).
//!
//! Every type here has a fixed layout with explicit padding; the tests at the bottom
//! pin sizes and offsets so the kernel and user sides cannot drift apart. When a
//! layout changes, the map's version suffix changes with it (`..._V2`) so an
//! upgraded agent never reads an old pinned map with a new layout.
#![no_std]

pub mod checksum;
pub mod counters;
pub mod endpoints;
pub mod flows;
pub mod lb;
pub mod metrics;
pub mod policy;

pub use counters::IfaceStats;
pub use endpoints::Endpoint;
pub use metrics::{Counter, PacketCount};
