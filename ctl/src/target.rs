//! The pod a command acts on: `NAME`, `pod/NAME`, or one pod of a Deployment,
//! ReplicaSet, StatefulSet, DaemonSet or Service (`deploy/web`, `svc/web`), chosen
//! the way kubectl chooses for `logs`, `exec`, `attach` and `port-forward`.

use std::{cmp::Ordering, collections::BTreeMap, io::Write};

use k8s_openapi::{
    api::core::v1::{Pod, Service},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{Api, ResourceExt as _, api::ListParams};
use serde_json::Value;

use crate::{Error, Result, session::Session};

/// The pods `selector` matches, in kubectl's "by logging" order (see [`by_logging`]).
pub async fn pods_matching(session: &Session, selector: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(session.client.clone(), &session.namespace);
    let mut list = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| Error::from_kube(e, &session.server))?
        .items;
    list.sort_by_key(|p| p.name_any());
    list.sort_by(by_logging);
    Ok(list)
}

/// kubectl's `ByLogging` order: scheduled pods first, then running, then ready,
/// ready longest, most restarts, oldest.
pub fn by_logging(a: &Pod, b: &Pod) -> Ordering {
    fn node(p: &Pod) -> bool {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    }
    fn running(p: &Pod) -> bool {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    }
    fn ready_since(p: &Pod) -> Option<Option<Time>> {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .filter(|c| c.status == "True")
            .map(|c| c.last_transition_time.clone())
    }
    fn restarts(p: &Pod) -> i32 {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum())
    }
    let (ra, rb) = (ready_since(a), ready_since(b));
    node(b)
        .cmp(&node(a))
        .then(running(b).cmp(&running(a)))
        .then(rb.is_some().cmp(&ra.is_some()))
        .then_with(|| match (ra, rb) {
            (Some(Some(x)), Some(Some(y))) => x.0.cmp(&y.0),
            _ => Ordering::Equal,
        })
        .then(restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        })
}

/// The label selector of a workload or Service object, as `k=v,...`.
fn selector_of(kind: &str, object: &Value) -> Option<String> {
    let labels = if kind == "services" {
        object["spec"]["selector"].as_object()
    } else {
        object["spec"]["selector"]["matchLabels"].as_object()
    }?;
    let pairs: BTreeMap<&str, &str> = labels
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
        .collect();
    (!pairs.is_empty()).then(|| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// The pod `target` names (`NAME`, `pod/NAME`, `deploy/NAME`, `rs/NAME`,
/// `sts/NAME`, `ds/NAME`, `svc/NAME`); for a set of pods the first "by
/// logging", with kubectl's note on `note` (as `logs` prints) when there were several.
pub async fn pod(
    session: &Session,
    target: &str,
    note: Option<&mut (dyn Write + Send)>,
) -> Result<Pod> {
    let (kind, name) = target.split_once('/').unwrap_or(("pod", target));
    let path = match kind {
        "pod" | "pods" | "po" => {
            let api: Api<Pod> = Api::namespaced(session.client.clone(), &session.namespace);
            return match api.get(name).await {
                Ok(p) => Ok(p),
                Err(e) => Err(Error::from_kube(e, &session.server)),
            };
        }
        "deploy" | "deployment" | "deployments" => ("apps/v1", "deployments"),
        "rs" | "replicaset" | "replicasets" => ("apps/v1", "replicasets"),
        "sts" | "statefulset" | "statefulsets" => ("apps/v1", "statefulsets"),
        "ds" | "daemonset" | "daemonsets" => ("apps/v1", "daemonsets"),
        "svc" | "service" | "services" => ("v1", "services"),
        other => {
            return Err(Error::Usage(format!(
                "cannot find the pods of a {other}: give a pod, pod/NAME, or deploy|rs|sts|ds|svc/NAME"
            )));
        }
    };
    let (group_version, plural) = path;
    let prefix = if group_version == "v1" {
        "/api"
    } else {
        "/apis"
    };
    let object: Value = session
        .get(
            &format!(
                "{prefix}/{group_version}/namespaces/{}/{plural}/{name}",
                session.namespace
            ),
            None,
        )
        .await?;
    let selector = selector_of(plural, &object)
        .ok_or_else(|| Error::Usage(format!("{kind}/{name} has no pod selector")))?;
    let list = pods_matching(session, &selector).await?;
    let first = list
        .first()
        .cloned()
        .ok_or_else(|| Error::Usage(format!("no pods of {kind}/{name} found")))?;
    if list.len() > 1
        && let Some(err) = note
    {
        let _ = writeln!(
            err,
            "Found {} pods, using pod/{}",
            list.len(),
            first.name_any()
        );
    }
    Ok(first)
}

/// The container a command reaches: `-c`, else the
/// `kubectl.kubernetes.io/default-container` annotation, else the first.
pub fn container(pod: &Pod, wanted: Option<&str>) -> String {
    if let Some(c) = wanted {
        return c.to_owned();
    }
    if let Some(c) = pod
        .annotations()
        .get("kubectl.kubernetes.io/default-container")
    {
        return c.clone();
    }
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

/// The pod port a Service port maps to (`targetPort`, by number or by the
/// container port's name), for `port-forward svc/NAME`.
pub fn service_target_port(service: &Service, pod: &Pod, port: u16) -> Option<u16> {
    let sp = service
        .spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.port == i32::from(port))?;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match &sp.target_port {
        None => Some(port),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: bool, ready_at: Option<&str>, restarts: i32) -> Pod {
        let mut status = json!({"phase": "Running", "containerStatuses": [{
            "name": "c", "image": "i", "imageID": "", "ready": ready_at.is_some(),
            "restartCount": restarts}]});
        if let Some(at) = ready_at {
            status["conditions"] =
                json!([{"type": "Ready", "status": "True", "lastTransitionTime": at}]);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": if node { "n" } else { "" }, "containers": []},
            "status": status,
        }))
        .unwrap_or_default()
    }

    #[test]
    fn pods_are_ordered_as_kubectl_orders_them_for_logs() {
        let mut pods = [
            pod("unscheduled", false, None, 0),
            pod("not-ready", true, None, 5),
            pod("ready-late", true, Some("2026-01-01T00:10:00Z"), 0),
            pod("ready-early", true, Some("2026-01-01T00:01:00Z"), 0),
        ];
        pods.sort_by(by_logging);
        let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        assert_eq!(
            names,
            ["ready-early", "ready-late", "not-ready", "unscheduled"]
        );
    }
}
