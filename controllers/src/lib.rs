//! Reconcile loops that drive the cluster towards its declared state: Deployments,
//! ReplicaSets, EndpointSlices, Jobs, garbage collection, node lifecycle.
//!
//! Not built yet: see issue 5. Each controller will have the one shape described in
//! STYLE.md (`reconcile` + `error_policy` over a documented `Context`).
