//! The table of served resource types: adding a kind is one entry here (plus its
//! validation in [`crate::validation`] and its table columns in [`crate::table`]).
//! Discovery, routing, storage keys and printing all read this table.

/// One served resource type.
#[derive(Debug)]
pub struct ResourceType {
    /// API group; empty for core.
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind, e.g. `ConfigMap`.
    pub kind: &'static str,
    /// Plural resource name, e.g. `configmaps`.
    pub plural: &'static str,
    /// Singular resource name.
    pub singular: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names kubectl accepts (`cm`).
    pub short_names: &'static [&'static str],
    /// Categories (`all` makes `kubectl get all` include it).
    pub categories: &'static [&'static str],
    /// Whether it has a `status` subresource (spec and status written separately).
    pub has_status: bool,
    /// Whether changes to `spec` bump `metadata.generation`.
    pub has_spec: bool,
    /// The group and version objects are stored in, when another version's
    /// (`conversion.rs` converts on the way in and out).
    pub stored_as: Option<(&'static str, &'static str)>,
}

impl ResourceType {
    /// Whether it has a `scale` subresource (`kubectl scale`).
    pub fn has_scale(&self) -> bool {
        matches!(
            (self.group, self.kind),
            ("apps", "Deployment" | "ReplicaSet" | "StatefulSet")
        )
    }

    /// The field selectors upstream supports for this kind, besides
    /// `metadata.name` and `metadata.namespace`.
    pub fn field_selectors(&self) -> &'static [&'static str] {
        match (self.group, self.kind) {
            ("", "Pod") => &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            ("", "Event") => &[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
            ("", "Secret") => &["type"],
            ("", "Node") => &["spec.unschedulable"],
            ("", "Namespace") => &["status.phase"],
            ("", "PersistentVolumeClaim") => &["spec.volumeName"],
            ("apps", "ReplicaSet") => &["status.replicas"],
            ("batch", "Job") => &["status.successful"],
            _ => &[],
        }
    }
}

/// Verbs every resource supports.
pub const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceType {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key of one object: `/registry/[<group>/]<plural>/[<ns>/]<name>`.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }

    /// The store prefix of a list: every namespace when `namespace` is `None`.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let group = self.stored_as.map_or(self.group, |(g, _)| g);
        let base = if group.is_empty() {
            format!("/registry/{}/", self.plural)
        } else {
            format!("/registry/{group}/{}/", self.plural)
        };
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{base}{ns}/"),
            _ => base,
        }
    }
}

macro_rules! resource {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, $namespaced:expr,
     short: [$($short:expr),*], categories: [$($cat:expr),*], status: $status:expr, spec: $spec:expr) => {
        ResourceType {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $namespaced,
            short_names: &[$($short),*],
            categories: &[$($cat),*],
            has_status: $status,
            has_spec: $spec,
            stored_as: None,
        }
    };
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, $namespaced:expr,
     short: [$($short:expr),*], categories: [$($cat:expr),*], status: $status:expr, spec: $spec:expr,
     stored_as: ($sg:expr, $sv:expr)) => {
        ResourceType {
            stored_as: Some(($sg, $sv)),
            ..resource!($group, $version, $kind, $plural, $singular, $namespaced,
                short: [$($short),*], categories: [$($cat),*], status: $status, spec: $spec)
        }
    };
}

/// Every served resource type, in discovery order (group order sets kubectl's
/// mapping priority: core first, then apps, ...).
pub static RESOURCES: &[ResourceType] = &[
    // core/v1
    resource!("", "v1", "Namespace", "namespaces", "namespace", false, short: ["ns"], categories: [], status: true, spec: false),
    resource!("", "v1", "Pod", "pods", "pod", true, short: ["po"], categories: ["all"], status: true, spec: false),
    resource!("", "v1", "Service", "services", "service", true, short: ["svc"], categories: ["all"], status: true, spec: false),
    resource!("", "v1", "Endpoints", "endpoints", "endpoints", true, short: ["ep"], categories: [], status: false, spec: false),
    resource!("", "v1", "ConfigMap", "configmaps", "configmap", true, short: ["cm"], categories: [], status: false, spec: false),
    resource!("", "v1", "Secret", "secrets", "secret", true, short: [], categories: [], status: false, spec: false),
    resource!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", true, short: ["sa"], categories: [], status: false, spec: false),
    resource!("", "v1", "Node", "nodes", "node", false, short: ["no"], categories: [], status: true, spec: false),
    resource!("", "v1", "Event", "events", "event", true, short: ["ev"], categories: [], status: false, spec: false),
    resource!("", "v1", "LimitRange", "limitranges", "limitrange", true, short: ["limits"], categories: [], status: false, spec: false),
    resource!("", "v1", "ResourceQuota", "resourcequotas", "resourcequota", true, short: ["quota"], categories: [], status: true, spec: false),
    resource!("", "v1", "PersistentVolume", "persistentvolumes", "persistentvolume", false, short: ["pv"], categories: [], status: true, spec: false),
    resource!("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", true, short: ["pvc"], categories: [], status: true, spec: false),
    // apps/v1
    resource!("apps", "v1", "Deployment", "deployments", "deployment", true, short: ["deploy"], categories: ["all"], status: true, spec: true),
    resource!("apps", "v1", "ReplicaSet", "replicasets", "replicaset", true, short: ["rs"], categories: ["all"], status: true, spec: true),
    resource!("apps", "v1", "StatefulSet", "statefulsets", "statefulset", true, short: ["sts"], categories: ["all"], status: true, spec: true),
    resource!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", true, short: ["ds"], categories: ["all"], status: true, spec: true),
    resource!("apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", true, short: [], categories: [], status: false, spec: false),
    // batch/v1
    resource!("batch", "v1", "Job", "jobs", "job", true, short: [], categories: ["all"], status: true, spec: true),
    resource!("batch", "v1", "CronJob", "cronjobs", "cronjob", true, short: ["cj"], categories: ["all"], status: true, spec: true),
    // autoscaling/v2
    resource!("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", true, short: ["hpa"], categories: ["all"], status: true, spec: true),
    // autoscaling/v1, stored as v2
    resource!("autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", true, short: ["hpa"], categories: ["all"], status: true, spec: true, stored_as: ("autoscaling", "v2")),
    // discovery.k8s.io/v1
    resource!("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", true, short: [], categories: [], status: false, spec: false),
    // networking.k8s.io/v1
    resource!("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", "networkpolicy", true, short: ["netpol"], categories: [], status: false, spec: true),
    resource!("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", true, short: ["ing"], categories: [], status: true, spec: true),
    resource!("networking.k8s.io", "v1", "IngressClass", "ingressclasses", "ingressclass", false, short: [], categories: [], status: false, spec: false),
    // coordination.k8s.io/v1
    resource!("coordination.k8s.io", "v1", "Lease", "leases", "lease", true, short: [], categories: [], status: false, spec: false),
    // storage.k8s.io/v1
    resource!("storage.k8s.io", "v1", "StorageClass", "storageclasses", "storageclass", false, short: ["sc"], categories: [], status: false, spec: false),
    // policy/v1
    resource!("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", true, short: ["pdb"], categories: [], status: true, spec: true),
    // scheduling.k8s.io/v1
    resource!("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", "priorityclass", false, short: ["pc"], categories: [], status: false, spec: false),
    // events.k8s.io/v1, stored as core/v1 Events
    resource!("events.k8s.io", "v1", "Event", "events", "event", true, short: ["ev"], categories: [], status: false, spec: false, stored_as: ("", "v1")),
];

/// The resource type served at `group`/`version`/`plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The groups with their versions, in discovery order (core first).
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in RESOURCES {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
            Some(_) => {}
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_registry_layout() {
        let cm = find("", "v1", "configmaps").unwrap();
        assert_eq!(
            cm.key(Some("default"), "x"),
            "/registry/configmaps/default/x"
        );
        assert_eq!(cm.prefix(None), "/registry/configmaps/");
        let ns = find("", "v1", "namespaces").unwrap();
        assert_eq!(
            ns.key(None, "kube-system"),
            "/registry/namespaces/kube-system"
        );
        let d = find("apps", "v1", "deployments").unwrap();
        assert_eq!(d.key(Some("a"), "web"), "/registry/apps/deployments/a/web");
        assert_eq!(d.api_version(), "apps/v1");
    }

    #[test]
    fn names_and_short_names_are_unique() {
        let mut seen = std::collections::HashSet::new();
        let mut shorts = std::collections::HashMap::new();
        for r in RESOURCES {
            assert!(
                seen.insert((r.group, r.version, r.plural)),
                "{} twice",
                r.plural
            );
            // A short name names one resource (in any of its versions and groups,
            // as `ev` does for core and events.k8s.io Events).
            for s in r.short_names {
                let plural = shorts.entry(*s).or_insert(r.plural);
                assert_eq!(*plural, r.plural, "short name {s} for two resources");
            }
        }
    }

    #[test]
    fn converted_versions_share_their_storage() {
        let v1 = find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let v2 = find("autoscaling", "v2", "horizontalpodautoscalers").unwrap();
        assert_eq!(v1.key(Some("a"), "x"), v2.key(Some("a"), "x"));
        let events = find("events.k8s.io", "v1", "events").unwrap();
        assert_eq!(events.key(Some("a"), "x"), "/registry/events/a/x");
    }
}
