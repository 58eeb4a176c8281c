//! The Kubernetes REST API of Sextant (`sextant server`): one generic REST handler
//! ([`rest`]) for every kind in [`resources`], over a revisioned [`storage::Store`]
//! (etcd or the embedded redb file), behind HTTPS with client-certificate
//! authentication ([`server`], [`pki`], [`bootstrap`]).
//!
//! Every other component reaches the store only through this API, with the kube-rs
//! client. Not built yet: authorization; see docs/architecture.md.

pub mod admission;
pub mod bootstrap;
pub mod conversion;
pub mod defaults;
pub mod discovery;
pub mod kinds;
pub mod kubelet_proxy;
pub mod metrics;
pub mod openapi;
pub mod pki;
pub mod prometheus_sd;
pub mod protobuf;
pub mod request_info;
pub mod resource_metrics;
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
