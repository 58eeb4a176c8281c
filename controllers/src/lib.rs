//! Reconcile loops that drive the cluster towards its declared state, and what
//! they share. So far: leader election on a Lease ([`leader`]), used by the
//! scheduler; the Deployment, ReplicaSet, EndpointSlice, Job, garbage collection
//! and node lifecycle controllers are still to come (issue 5). Each controller
//! will have the one shape described in STYLE.md (`reconcile` + `error_policy`
//! over a documented `Context`).

pub mod leader;
