//! Sextant's node network agent: it loads the eBPF programs of `ebpf/programs`,
//! attaches them to interfaces, and programs their maps.
//!
//! Today it holds the build-and-load pipeline ([`ebpf`]) and the per-interface
//! packet counters ([`counters`]); pod networking, services, policy, DNS and flows
//! arrive with issue 6.

pub mod counters;
pub mod ebpf;

pub use counters::InterfaceCounters;

/// Errors of the dataplane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedded eBPF object could not be loaded into the kernel.
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program is missing from the object or failed to load or attach.
    #[error("program {name}: {source}")]
    Program {
        /// Program name in the object.
        name: &'static str,
        /// What the kernel or aya said.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map is missing from the object or its operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// Map name in the object.
        name: &'static str,
        /// What the kernel or aya said.
        #[source]
        source: aya::maps::MapError,
    },
    /// The named interface does not exist in this network namespace.
    #[error("interface {0:?} not found")]
    NoSuchInterface(String),
    /// Every counter slot is in use.
    #[error("no free counter slot: at most {0} interfaces")]
    SlotsExhausted(u32),
    /// The interface is not attached.
    #[error("interface {0:?} is not attached")]
    NotAttached(String),
    /// The number of possible CPUs could not be read (per-CPU maps need it).
    #[error("reading the possible CPUs: {0}")]
    PossibleCpus(#[source] std::io::Error),
    /// Starting the aya-log reader failed.
    #[error("starting the eBPF log reader: {0}")]
    Log(#[from] aya_log::Error),
}

/// Result with the dataplane's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
