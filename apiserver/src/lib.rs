//! The Kubernetes REST API of Sextant: generic resource handlers over a revisioned
//! store (etcd or embedded), a watch cache, admission, and authentication.
//!
//! Not built yet: see issue 3. Every other component reaches the store only through
//! this API, with the kube-rs client.
