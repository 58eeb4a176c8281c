//! The node side of pods: a CRI client to containerd, pod workers, probes, volumes,
//! log and exec streaming, node status and stats.
//!
//! Today it holds the CRI connection ([`cri`]); pod workers arrive with issue 4.

pub mod cri;
