//! The labels and annotations the kubelet puts on CRI sandboxes and containers —
//! upstream's names, so `crictl` users see what they expect — and how it finds
//! a pod's sandboxes and containers again after a restart.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;

/// The pod's name.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
/// The pod's namespace.
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// The pod's uid: how a pod's sandboxes and containers are found.
pub const POD_UID: &str = "io.kubernetes.pod.uid";
/// The container's name in the pod spec.
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Annotation: where the container writes its termination message.
pub const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
/// Annotation: `File` or `FallbackToLogsOnError`.
pub const TERMINATION_MESSAGE_POLICY: &str = "io.kubernetes.container.terminationMessagePolicy";
/// Annotation: the restart count the container was created for.
pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";

/// Labels of a pod's sandbox.
pub fn sandbox(pod: &Pod) -> HashMap<String, String> {
    let m = &pod.metadata;
    [
        (POD_NAME, m.name.clone()),
        (POD_NAMESPACE, m.namespace.clone()),
        (POD_UID, m.uid.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.unwrap_or_default()))
    .collect()
}

/// Labels of one of a pod's containers.
pub fn container(pod: &Pod, name: &str) -> HashMap<String, String> {
    let mut l = sandbox(pod);
    l.insert(CONTAINER_NAME.to_owned(), name.to_owned());
    l
}

/// The selector for everything of the pod with `uid`.
pub fn of_pod(uid: &str) -> HashMap<String, String> {
    [(POD_UID.to_owned(), uid.to_owned())].into()
}
