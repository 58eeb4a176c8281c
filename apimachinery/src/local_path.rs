//! The names the `local-path` provisioner (in the controller manager) and the
//! node that holds the volumes (the kubelet) agree on.

/// The provisioner name of the built-in `local-path` StorageClass.
pub const PROVISIONER: &str = "sextant.io/local-path";
/// The Node annotation naming the directory local-path volumes live under.
pub const ROOT_ANNOTATION: &str = "sextant.io/local-path-root";
/// The PersistentVolume annotation naming the node a local-path volume is on.
pub const NODE_ANNOTATION: &str = "sextant.io/local-path-node";
