//! The EndpointSlice controller (and the Endpoints object older clients read):
//! for every Service with a selector, the addresses of the pods it selects, as
//! upstream's `endpointslice-controller.k8s.io` publishes them:
//!
//! - one endpoint per pod with an IP that has not finished, with conditions
//!   `ready` (Ready and not terminating, or `publishNotReadyAddresses`),
//!   `serving` (Ready, even while terminating) and `terminating`, its
//!   `targetRef`, `nodeName` and, for pods whose `subdomain` is the Service,
//!   their `hostname`;
//! - ports resolved per pod (a named `targetPort` may map to different numbers
//!   on different pods), endpoints grouped by resolved ports, at most 100 per
//!   slice;
//! - slices labelled `kubernetes.io/service-name` and
//!   `endpointslice.kubernetes.io/managed-by`, owned by the Service; existing
//!   slices are updated in place, so a change rewrites as little as possible;
//! - the `Endpoints` object of the same name (`subsets` with `addresses` and
//!   `notReadyAddresses`), owned by the Service too so it goes with it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        core::v1::{Endpoints, Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use serde_json::{Value, json};

use crate::{Context, Error, Metrics, pods, retry_soon, selector_matches};

/// The label naming a slice's Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's name in [`MANAGED_BY`].
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// Upstream's default maximum of endpoints per slice.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

fn service_selector(svc: &Service) -> Option<LabelSelector> {
    let selector = svc.spec.as_ref()?.selector.clone()?;
    if selector.is_empty() {
        return None;
    }
    Some(LabelSelector {
        match_labels: Some(selector),
        match_expressions: None,
    })
}

/// Runs the controller until its watches end. A pod change reconciles every
/// Service of its namespace that selects it.
pub async fn run(client: Client, metrics: Metrics) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    controller
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default(),
            move |pod: Pod| {
                let ns = pod.namespace();
                services
                    .state()
                    .iter()
                    .filter(|s| s.namespace() == ns)
                    .filter(|s| {
                        service_selector(s).is_some_and(|sel| selector_matches(&sel, pod.labels()))
                    })
                    .map(|s| ObjectRef::from_obj(&**s))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, retry_soon, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.observe("endpointslice", sync(&svc, &ctx)).await
}

/// A Service port resolved against one pod: (name, protocol, port, appProtocol).
type Port = (String, String, i32, Option<String>);

/// The Service's ports as `pod` serves them; `None` when a named targetPort is
/// not among the pod's container ports (upstream leaves such pods out).
fn resolve_ports(svc: &Service, pod: &Pod) -> Option<Vec<Port>> {
    let spec = svc.spec.as_ref()?;
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        let number = match &p.target_port {
            None => p.port,
            Some(IntOrString::Int(n)) => *n,
            Some(IntOrString::String(name)) => {
                pod.spec
                    .as_ref()?
                    .containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|cp| {
                        cp.name.as_deref() == Some(name)
                            && cp.protocol.as_deref().unwrap_or("TCP") == protocol
                    })?
                    .container_port
            }
        };
        out.push((
            p.name.clone().unwrap_or_default(),
            protocol,
            number,
            p.app_protocol.clone(),
        ));
    }
    Some(out)
}

/// One pod's endpoint, with its ready flag (for Endpoints).
fn endpoint(svc: &Service, pod: &Pod, ip: &str) -> (Value, bool) {
    let spec = svc.spec.as_ref();
    let publish_not_ready = spec
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let pod_ready = pods::is_ready(pod);
    let ready = publish_not_ready || (pod_ready && !terminating);
    let serving = publish_not_ready || pod_ready;
    let pod_spec = pod.spec.as_ref();
    let mut e = json!({
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        "targetRef": {
            "kind": "Pod",
            "namespace": pod.namespace(),
            "name": pod.name_any(),
            "uid": pod.uid(),
        },
    });
    if let Some(node) = pod_spec.and_then(|s| s.node_name.as_ref()) {
        e["nodeName"] = json!(node);
    }
    let hostname = pod_spec.and_then(|s| s.hostname.as_ref());
    let subdomain = pod_spec.and_then(|s| s.subdomain.as_ref());
    if let (Some(h), Some(sub)) = (hostname, subdomain)
        && *sub == svc.name_any()
    {
        e["hostname"] = json!(h);
    }
    (e, ready)
}

fn port_json(ports: &[Port]) -> Vec<Value> {
    ports
        .iter()
        .map(|(name, protocol, port, app)| {
            let mut p = json!({"name": name, "protocol": protocol, "port": port});
            if let Some(a) = app {
                p["appProtocol"] = json!(a);
            }
            p
        })
        .collect()
}

/// The slices the Service should have: endpoints grouped by resolved ports,
/// sorted by pod name, at most [`MAX_ENDPOINTS_PER_SLICE`] per slice.
fn desired_slices(svc: &Service, selected: &[&Pod]) -> Vec<(Vec<Port>, Vec<Value>)> {
    let mut groups: BTreeMap<Vec<Port>, Vec<(String, Value)>> = BTreeMap::new();
    for pod in selected {
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        let Some(ports) = resolve_ports(svc, pod) else {
            continue;
        };
        let (e, _) = endpoint(svc, pod, &ip);
        groups.entry(ports).or_default().push((pod.name_any(), e));
    }
    let mut out = Vec::new();
    for (ports, mut endpoints) in groups {
        endpoints.sort_by(|a, b| a.0.cmp(&b.0));
        let endpoints: Vec<Value> = endpoints.into_iter().map(|(_, e)| e).collect();
        for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push((ports.clone(), chunk.to_vec()));
        }
    }
    if out.is_empty() {
        // A Service with no endpoints still gets one (empty) slice, as upstream.
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(|ps| {
                ps.iter()
                    .filter(|p| !matches!(p.target_port, Some(IntOrString::String(_))))
                    .map(|p| {
                        let number = match &p.target_port {
                            Some(IntOrString::Int(n)) => *n,
                            _ => p.port,
                        };
                        (
                            p.name.clone().unwrap_or_default(),
                            p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            number,
                            p.app_protocol.clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((ports, Vec::new()));
    }
    out
}

/// The legacy Endpoints `subsets`, one per port group.
fn subsets(svc: &Service, selected: &[&Pod]) -> Vec<Value> {
    let mut groups: BTreeMap<Vec<Port>, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut sorted: Vec<&&Pod> = selected.iter().collect();
    sorted.sort_by_key(|p| p.name_any());
    for pod in sorted {
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        let Some(ports) = resolve_ports(svc, pod) else {
            continue;
        };
        let (e, ready) = endpoint(svc, pod, &ip);
        // Terminating pods are not in Endpoints.
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let mut address = json!({"ip": ip, "targetRef": e["targetRef"]});
        if let Some(node) = e.get("nodeName") {
            address["nodeName"] = node.clone();
        }
        if let Some(h) = e.get("hostname") {
            address["hostname"] = h.clone();
        }
        let entry = groups.entry(ports).or_default();
        if ready {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| {
            let mut s = json!({"ports": port_json(&ports)});
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            s
        })
        .collect()
}

fn owner_ref(svc: &Service) -> OwnerReference {
    pods::controller_ref(
        "v1",
        "Service",
        &svc.name_any(),
        &svc.uid().unwrap_or_default(),
    )
}

async fn sync(svc: &Service, ctx: &Context) -> Result<Action, Error> {
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Services without a selector have endpoints their users manage.
    let Some(selector) = service_selector(svc) else {
        return Ok(Action::await_change());
    };
    let ns = svc.namespace().unwrap_or_else(|| "default".into());
    let name = svc.name_any();
    let all = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let selected: Vec<&Pod> = all
        .iter()
        .filter(|p| selector_matches(&selector, p.labels()))
        .filter(|p| !matches!(pods::phase(p), "Succeeded" | "Failed"))
        .collect();

    // Failures are told on the Service, with upstream's reasons and messages.
    if let Err(e) = sync_slices(svc, ctx, &selected).await {
        let note = format!("Error updating Endpoint Slices for Service {ns}/{name}: {e}");
        ctx.event(
            "endpointslice-controller",
            svc,
            true,
            "FailedToUpdateEndpointSlices",
            note,
        )
        .await;
        return Err(e);
    }
    if let Err(e) = sync_endpoints(svc, ctx, &selected).await {
        let note = format!("Failed to update endpoint {ns}/{name}: {e}");
        ctx.event(
            "endpoint-controller",
            svc,
            true,
            "FailedToUpdateEndpoint",
            note,
        )
        .await;
        return Err(e);
    }
    Ok(Action::await_change())
}

/// Makes the Service's EndpointSlices list `selected`.
async fn sync_slices(svc: &Service, ctx: &Context, selected: &[&Pod]) -> Result<(), Error> {
    let ns = svc.namespace().unwrap_or_else(|| "default".into());
    let name = svc.name_any();
    let slices_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let mut existing: Vec<EndpointSlice> = slices_api
        .list(&ListParams::default().labels(&format!(
            "{SERVICE_NAME}={name},{MANAGED_BY}={CONTROLLER_NAME}"
        )))
        .await?
        .items;
    existing.sort_by_key(|s| s.name_any());
    let desired = desired_slices(svc, selected);
    let mut labels: BTreeMap<String, String> = svc.labels().clone();
    labels.insert(SERVICE_NAME.into(), name.clone());
    labels.insert(MANAGED_BY.into(), CONTROLLER_NAME.into());
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert("service.kubernetes.io/headless".into(), String::new());
    }
    let mut existing_iter = existing.iter();
    for (ports, endpoints) in &desired {
        let body = json!({
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": port_json(ports),
        });
        match existing_iter.next() {
            Some(slice) => {
                let current = serde_json::to_value(slice).unwrap_or(Value::Null);
                let same = current["endpoints"]
                    .as_array()
                    .map_or(endpoints.is_empty(), |e| e == endpoints)
                    && current["ports"] == json!(port_json(ports))
                    && labels.iter().all(|(k, v)| slice.labels().get(k) == Some(v));
                if !same {
                    let mut patch = body.clone();
                    patch["metadata"] = json!({"labels": labels});
                    // The whole lists replace the old ones (JSON merge patch).
                    slices_api
                        .patch(
                            &slice.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await?;
                }
            }
            None => {
                let mut slice: EndpointSlice = serde_json::from_value(body)
                    .map_err(|e| Error::Api(kube::Error::SerdeError(e)))?;
                slice.metadata.generate_name = Some(format!("{name}-"));
                slice.metadata.namespace = Some(ns.clone());
                slice.metadata.labels = Some(labels.clone());
                slice.metadata.owner_references = Some(vec![owner_ref(svc)]);
                slices_api.create(&PostParams::default(), &slice).await?;
            }
        }
    }
    for extra in existing_iter {
        match slices_api
            .delete(&extra.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Makes the Service's Endpoints object (for clients that predate
/// EndpointSlices) list `selected`.
async fn sync_endpoints(svc: &Service, ctx: &Context, selected: &[&Pod]) -> Result<(), Error> {
    let ns = svc.namespace().unwrap_or_else(|| "default".into());
    let name = svc.name_any();
    let endpoints_api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let subsets = subsets(svc, selected);
    let mut ep_labels: HashMap<String, String> = svc.labels().clone().into_iter().collect();
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        ep_labels.insert("service.kubernetes.io/headless".into(), String::new());
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": ep_labels,
            "ownerReferences": [owner_ref(svc)],
        },
        "subsets": subsets,
    });
    match endpoints_api.get_opt(&name).await? {
        Some(current) => {
            let now = serde_json::to_value(&current.subsets).unwrap_or(Value::Null);
            let want = if subsets.is_empty() {
                Value::Null
            } else {
                json!(subsets)
            };
            if now != want && !(now.is_null() && subsets.is_empty()) {
                let mut patch = body.clone();
                if subsets.is_empty() {
                    patch["subsets"] = Value::Null;
                }
                endpoints_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
        }
        None => {
            let ep: Endpoints =
                serde_json::from_value(body).map_err(|e| Error::Api(kube::Error::SerdeError(e)))?;
            match endpoints_api.create(&PostParams::default(), &ep).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, terminating: bool) -> Pod {
        let mut meta = json!({"name": name, "namespace": "ns", "uid": format!("u-{name}"), "labels": {"app": "web"}});
        if terminating {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"nodeName": "n1", "hostname": name, "subdomain": "web", "containers": [
                {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}
            ]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    #[test]
    fn endpoints_carry_upstream_conditions_and_named_ports() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"selector": {"app": "web"}, "ports": [
                {"name": "web", "port": 80, "targetPort": "http"},
            ]},
        }))
        .unwrap();
        let (a, b, c) = (
            pod("a", "10.0.0.1", true, false),
            pod("b", "10.0.0.2", false, false),
            pod("c", "10.0.0.3", true, true),
        );
        let slices = desired_slices(&svc, &[&c, &a, &b]);
        assert_eq!(slices.len(), 1);
        let (ports, endpoints) = &slices[0];
        assert_eq!(ports, &vec![("web".into(), "TCP".into(), 8080, None)]);
        let conditions: Vec<(Value, Value)> = endpoints
            .iter()
            .map(|e| (e["addresses"][0].clone(), e["conditions"].clone()))
            .collect();
        assert_eq!(
            conditions,
            vec![
                (
                    json!("10.0.0.1"),
                    json!({"ready": true, "serving": true, "terminating": false})
                ),
                (
                    json!("10.0.0.2"),
                    json!({"ready": false, "serving": false, "terminating": false})
                ),
                (
                    json!("10.0.0.3"),
                    json!({"ready": false, "serving": true, "terminating": true})
                ),
            ]
        );
        assert_eq!(endpoints[0]["hostname"], "a");
        let subsets = subsets(&svc, &[&a, &b, &c]);
        assert_eq!(subsets[0]["addresses"][0]["ip"], "10.0.0.1");
        assert_eq!(subsets[0]["notReadyAddresses"][0]["ip"], "10.0.0.2");
        assert_eq!(subsets[0]["addresses"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn slices_hold_at_most_a_hundred_endpoints() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        }))
        .unwrap();
        let pods: Vec<Pod> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    &format!("10.0.{}.{}", i / 200, i % 200),
                    true,
                    false,
                )
            })
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let sizes: Vec<usize> = desired_slices(&svc, &refs)
            .iter()
            .map(|(_, e)| e.len())
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
    }
}
