//! What every component reads from API objects the same way, with no
//! dependency on any of them (decision 0006): resource quantities as numbers
//! ([`quantity`]), what counts against a ResourceQuota ([`quota`]), whether a
//! pod may run on a node ([`scheduling`]: node selectors, affinity, taints)
//! label selectors ([`labels`]), ages as kubectl prints them ([`duration`]),
//! strategic merge patch keys and kubectl's three-way patch ([`strategic`]) and the names of the `local-path` volume
//! protocol ([`local_path`]).

pub mod duration;
pub mod labels;
pub mod local_path;
pub mod quantity;
pub mod quota;
pub mod scheduling;
pub mod strategic;
