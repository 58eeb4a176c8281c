//! The one mapping from a served kind to its `k8s-openapi` type. Whatever needs the
//! typed form of a kind (decoding for validation, schemas for OpenAPI) visits it
//! through [`visit`] instead of keeping its own match.

use k8s_openapi::{
    api::{
        apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet},
        autoscaling::{v1 as autoscaling_v1, v2::HorizontalPodAutoscaler},
        batch::v1::{CronJob, Job},
        coordination::v1::Lease,
        core::v1::{
            ConfigMap, Endpoints, Event, LimitRange, Namespace, Node, PersistentVolume,
            PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service, ServiceAccount,
        },
        discovery::v1::EndpointSlice,
        networking::v1::{Ingress, IngressClass, NetworkPolicy},
        policy::v1::PodDisruptionBudget,
        scheduling::v1::PriorityClass,
        storage::v1::StorageClass,
    },
    schemars::JsonSchema,
    serde::{Serialize, de::DeserializeOwned},
};

use crate::resources::ResourceType;

/// Something done with a kind's typed form.
pub trait Visitor {
    /// What the visit produces.
    type Output;
    /// Called with the kind's `k8s-openapi` type.
    fn visit<T: DeserializeOwned + Serialize + JsonSchema>(self) -> Self::Output;
}

/// Visits `rt`'s type; `None` for a kind without one.
pub fn visit<V: Visitor>(rt: &ResourceType, v: V) -> Option<V::Output> {
    Some(match (rt.group, rt.kind) {
        ("autoscaling", "HorizontalPodAutoscaler") if rt.version == "v1" => {
            v.visit::<autoscaling_v1::HorizontalPodAutoscaler>()
        }
        ("events.k8s.io", "Event") => v.visit::<k8s_openapi::api::events::v1::Event>(),
        ("", "Namespace") => v.visit::<Namespace>(),
        ("", "Pod") => v.visit::<Pod>(),
        ("", "Service") => v.visit::<Service>(),
        ("", "Endpoints") => v.visit::<Endpoints>(),
        ("", "ConfigMap") => v.visit::<ConfigMap>(),
        ("", "Secret") => v.visit::<Secret>(),
        ("", "ServiceAccount") => v.visit::<ServiceAccount>(),
        ("", "Node") => v.visit::<Node>(),
        ("", "Event") => v.visit::<Event>(),
        ("", "LimitRange") => v.visit::<LimitRange>(),
        ("", "ResourceQuota") => v.visit::<ResourceQuota>(),
        ("", "PersistentVolume") => v.visit::<PersistentVolume>(),
        ("", "PersistentVolumeClaim") => v.visit::<PersistentVolumeClaim>(),
        ("apps", "Deployment") => v.visit::<Deployment>(),
        ("apps", "ReplicaSet") => v.visit::<ReplicaSet>(),
        ("apps", "StatefulSet") => v.visit::<StatefulSet>(),
        ("apps", "DaemonSet") => v.visit::<DaemonSet>(),
        ("apps", "ControllerRevision") => v.visit::<ControllerRevision>(),
        ("batch", "Job") => v.visit::<Job>(),
        ("batch", "CronJob") => v.visit::<CronJob>(),
        ("autoscaling", "HorizontalPodAutoscaler") => v.visit::<HorizontalPodAutoscaler>(),
        ("discovery.k8s.io", "EndpointSlice") => v.visit::<EndpointSlice>(),
        ("networking.k8s.io", "NetworkPolicy") => v.visit::<NetworkPolicy>(),
        ("networking.k8s.io", "Ingress") => v.visit::<Ingress>(),
        ("networking.k8s.io", "IngressClass") => v.visit::<IngressClass>(),
        ("coordination.k8s.io", "Lease") => v.visit::<Lease>(),
        ("storage.k8s.io", "StorageClass") => v.visit::<StorageClass>(),
        ("policy", "PodDisruptionBudget") => v.visit::<PodDisruptionBudget>(),
        ("scheduling.k8s.io", "PriorityClass") => v.visit::<PriorityClass>(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Name;
    impl Visitor for Name {
        type Output = String;
        fn visit<T: DeserializeOwned + Serialize + JsonSchema>(self) -> String {
            T::schema_name().into_owned()
        }
    }

    #[test]
    fn every_served_kind_has_its_type() {
        for rt in crate::resources::RESOURCES {
            let name = visit(rt, Name).unwrap_or_else(|| panic!("{} has no type", rt.kind));
            assert!(
                name.ends_with(&format!(".{}.{}", rt.version, rt.kind)),
                "{} → {name}",
                rt.kind
            );
        }
    }
}
