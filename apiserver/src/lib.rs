//! The Kubernetes REST API of Sextant: generic resource handlers over a revisioned
//! store (etcd or embedded), a watch cache, admission, and authentication.
//!
//! Built so far: [`storage`], the store trait and its two backends. Every other
//! component reaches the store only through this API, with the kube-rs client.

pub mod bootstrap;
pub mod discovery;
pub mod kinds;
pub mod metrics;
pub mod openapi;
pub mod pki;
pub mod request_info;
pub mod resources;
pub mod rest;
pub mod selectors;
pub mod server;
pub mod service_allocation;
pub mod smp;
pub mod status;
pub mod storage;
pub mod table;
pub mod validation;
