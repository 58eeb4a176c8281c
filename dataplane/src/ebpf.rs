//! The eBPF object built from `ebpf/programs` by `build.rs`, embedded in this crate.

/// The ELF object holding every Sextant eBPF program and map, 8-byte aligned as the
/// loader requires.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sextant-ebpf"));
