//! ClusterIP load balancing, user side: Services and EndpointSlices, watched
//! through the API, become the frontends and backend slots of
//! `SX_LB4_SERVICES_V1` / `SX_LB4_BACKENDS_V2` (kernel side: `ebpf/programs/src/lb.rs`).
//!
//! Only ready endpoints are backends, so a pod that turns not-ready, or starts
//! terminating, gets no new flows; conntrack keeps its existing ones on it (they
//! drain). Changes are applied incrementally: only frontends whose backends
//! changed are written, backends first and the count last, so the datapath never
//! reads a slot that is not written yet. The time from noticing a change to the
//! maps holding it is `sextant_dataplane_service_programming_seconds`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
    time::Instant,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{Api, ResourceExt, runtime::reflector};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::ConstCounter,
        histogram::{Histogram, exponential_buckets},
    },
};
use sextant_ebpf_common::{
    lb::{Lb4Backend, Lb4BackendKey, Lb4Key, Lb4Service, PROTO_TCP, PROTO_UDP},
    metrics::PacketCount,
};

use crate::{
    Result,
    datapath::{SharedDatapath, TrafficCounters},
    maglev, watch,
};

/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A frontend's key for `vip:port/proto`.
pub fn frontend(vip: Ipv4Addr, port: u16, proto: u8) -> Lb4Key {
    Lb4Key {
        vip: u32::from_ne_bytes(vip.octets()),
        port: port.to_be(),
        proto,
        pad: 0,
    }
}

/// A backend value for `ip:port`.
pub fn backend(ip: Ipv4Addr, port: u16) -> Lb4Backend {
    Lb4Backend {
        ip: u32::from_ne_bytes(ip.octets()),
        port: port.to_be(),
        pad: 0,
    }
}

fn proto_of(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        // SCTP is not balanced yet.
        _ => None,
    }
}

/// What a frontend holds: its ready backends (sorted, no duplicates) and its
/// session affinity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    /// Backends, sorted.
    pub backends: Vec<Lb4Backend>,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 without affinity.
    pub affinity_timeout: u32,
}

/// Upstream's default ClientIP affinity timeout (3 hours).
const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// Every frontend the cluster's Services ask for, as seen from node `node` with
/// address `node_ip`, with its ready backends (sorted, no duplicates): each
/// ClusterIP, `node_ip` on each nodePort (NodePort and LoadBalancer Services)
/// and each external IP. With `internalTrafficPolicy: Local` (ClusterIP) or
/// `externalTrafficPolicy: Local` (nodePorts, external IPs) only endpoints on
/// `node` are backends (none there: new flows are dropped, as upstream).
pub fn desired(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node: &str,
    node_ip: Option<Ipv4Addr>,
) -> BTreeMap<Lb4Key, Frontend> {
    desired_named(services, slices, node, node_ip)
        .into_iter()
        .map(|(k, (_, f))| (k, f))
        .collect()
}

/// [`desired`], each frontend with its Service's `(namespace, name)`.
pub fn desired_named(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node: &str,
    node_ip: Option<Ipv4Addr>,
) -> BTreeMap<Lb4Key, ((String, String), Frontend)> {
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        if let Some(name) = slice.labels().get(SERVICE_NAME_LABEL) {
            by_service
                .entry((slice.namespace().unwrap_or_default(), name.clone()))
                .or_default()
                .push(slice);
        }
    }
    let mut out = BTreeMap::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        // Headless ("None") and unallocated services have no frontend.
        let Some(vip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let key = (svc.namespace().unwrap_or_default(), svc.name_any());
        let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        let external_ips: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let affinity_timeout = if spec.session_affinity.as_deref() == Some("ClientIP") {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref()?.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        } else {
            0
        };
        for port in spec.ports.iter().flatten() {
            let Some(proto) = proto_of(port.protocol.as_deref()) else {
                continue;
            };
            let Ok(service_port) = u16::try_from(port.port) else {
                continue;
            };
            // Every ready backend, and those on this node.
            let (mut backends, mut local) = (BTreeSet::new(), BTreeSet::new());
            for slice in slices {
                // The slice's port for this service port: same name, same protocol.
                let target = slice.ports.iter().flatten().find(|p| {
                    p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or("")
                        && proto_of(p.protocol.as_deref()) == Some(proto)
                });
                let Some(target) = target
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                else {
                    continue;
                };
                for ep in &slice.endpoints {
                    // Unset means ready, as upstream reads it.
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                    if !ready {
                        continue;
                    }
                    let here = ep.node_name.as_deref() == Some(node);
                    for addr in &ep.addresses {
                        if let Ok(ip) = addr.parse::<Ipv4Addr>() {
                            backends.insert(backend(ip, target));
                            if here {
                                local.insert(backend(ip, target));
                            }
                        }
                    }
                }
            }
            let pick = |local_only: bool| {
                let f = Frontend {
                    backends: if local_only { &local } else { &backends }
                        .iter()
                        .copied()
                        .collect(),
                    affinity_timeout,
                };
                (key.clone(), f)
            };
            out.insert(frontend(vip, service_port, proto), pick(internal_local));
            // Traffic from outside the cluster: the node's own address on the
            // nodePort, and each external IP on the service port.
            let node_port = port.node_port.and_then(|p| u16::try_from(p).ok());
            if let (true, Some(ip), Some(np)) = (node_ports, node_ip, node_port) {
                out.insert(frontend(ip, np, proto), pick(external_local));
            }
            for ip in &external_ips {
                out.insert(frontend(*ip, service_port, proto), pick(external_local));
            }
        }
    }
    out
}

/// Writes desired frontends into the maps, remembering what it wrote.
#[derive(Debug)]
pub struct Programmer {
    datapath: SharedDatapath,
    /// Frontend → (id, what was written: its Maglev table as `backends`).
    written: BTreeMap<Lb4Key, (u32, Frontend)>,
    free_ids: Vec<u32>,
    next_id: u32,
}

impl Programmer {
    /// A programmer that takes over what the maps hold already (pinned by an
    /// earlier agent), so its first [`Programmer::apply`] changes only what the API
    /// no longer asks for: no frontend disappears while the agent restarts.
    pub fn adopt(datapath: SharedDatapath) -> Result<Self> {
        let (services, backends) = {
            let mut dp = datapath
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (dp.services()?, dp.backends()?)
        };
        let slots: BTreeMap<Lb4BackendKey, Lb4Backend> = backends.into_iter().collect();
        let mut written = BTreeMap::new();
        let mut next_id = 0;
        for (key, svc) in services {
            let list: Vec<Lb4Backend> = (0..svc.count)
                .map_while(|slot| slots.get(&Lb4BackendKey { id: svc.id, slot }).copied())
                .collect();
            next_id = next_id.max(svc.id + 1);
            let adopted = Frontend {
                backends: list,
                affinity_timeout: svc.affinity_timeout,
            };
            written.insert(key, (svc.id, adopted));
        }
        Ok(Self {
            datapath,
            written,
            free_ids: Vec::new(),
            next_id,
        })
    }

    /// Each written frontend's id.
    pub fn ids(&self) -> impl Iterator<Item = (&Lb4Key, u32)> {
        self.written.iter().map(|(k, (id, _))| (k, *id))
    }

    /// Makes the maps hold exactly `desired`; returns how many frontends changed.
    pub fn apply(&mut self, desired: &BTreeMap<Lb4Key, Frontend>) -> Result<usize> {
        let mut dp = self
            .datapath
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut changed = 0;
        let stale: Vec<Lb4Key> = self
            .written
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            if let Some((id, old)) = self.written.remove(&key) {
                dp.remove_service(key)?;
                for slot in 0..old.backends.len() {
                    dp.remove_backend(Lb4BackendKey {
                        id,
                        slot: slot as u32,
                    })?;
                }
                self.free_ids.push(id);
                changed += 1;
            }
        }
        for (key, want) in desired {
            // What the slots hold: the backends' Maglev table.
            let want = &Frontend {
                backends: maglev::table(&want.backends),
                affinity_timeout: want.affinity_timeout,
            };
            let backends = &want.backends;
            let (id, old) = match self.written.get(key) {
                Some((_, old)) if old == want => continue,
                Some((id, old)) => (*id, old.backends.clone()),
                None => {
                    let id = self.free_ids.pop().unwrap_or_else(|| {
                        self.next_id += 1;
                        self.next_id - 1
                    });
                    // A reused id's traffic belonged to another frontend.
                    dp.traffic().reset(id)?;
                    (id, Vec::new())
                }
            };
            // Shrinking: lower the count before freeing slots; growing: fill slots
            // before raising it. Either way the datapath reads only written slots.
            let service = Lb4Service {
                id,
                count: backends.len() as u32,
                affinity_timeout: want.affinity_timeout,
                pad: 0,
            };
            if backends.len() < old.len() {
                dp.set_service(*key, service)?;
            }
            for (slot, b) in backends.iter().enumerate() {
                if old.get(slot) != Some(b) {
                    dp.set_backend(
                        Lb4BackendKey {
                            id,
                            slot: slot as u32,
                        },
                        *b,
                    )?;
                }
            }
            dp.set_service(*key, service)?;
            for slot in backends.len()..old.len() {
                dp.remove_backend(Lb4BackendKey {
                    id,
                    slot: slot as u32,
                })?;
            }
            self.written.insert(*key, (id, want.clone()));
            changed += 1;
        }
        Ok(changed)
    }
}

/// `sextant_dataplane_service_programming_seconds`, and each frontend's traffic
/// (`sextant_dataplane_service_frontend_{packets,bytes}_total`).
#[derive(Clone, Debug)]
pub struct ServiceMetrics {
    programming: Histogram,
    frontends: FrontendNames,
}

/// Frontend id → (namespace, service, `ip:port/proto`).
type FrontendNames = Arc<std::sync::RwLock<BTreeMap<u32, (String, String, String)>>>;

impl ServiceMetrics {
    /// Registers the metrics on `registry`; traffic is read from `traffic`.
    pub fn register(registry: &mut sextant_metrics::Registry, traffic: TrafficCounters) -> Self {
        let programming = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "sextant_dataplane_service_programming_seconds",
            "Time from a Service or EndpointSlice change reaching the agent to the eBPF maps holding it.",
            programming.clone(),
        );
        let frontends = FrontendNames::default();
        registry.register_collector(Box::new(FrontendTraffic {
            traffic,
            frontends: frontends.clone(),
        }));
        Self {
            programming,
            frontends,
        }
    }
}

/// Reads each frontend's packets and bytes from the datapath at every scrape.
#[derive(Debug)]
struct FrontendTraffic {
    traffic: TrafficCounters,
    frontends: FrontendNames,
}

impl Collector for FrontendTraffic {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        let frontends = self
            .frontends
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let counts: Vec<_> = frontends
            .iter()
            .filter_map(|(id, names)| Some((names, self.traffic.get(*id).ok()?)))
            .collect();
        type Pick = fn(&PacketCount) -> u64;
        let families: [(&str, &str, Pick); 2] = [
            (
                "sextant_dataplane_service_frontend_packets",
                "Packets of each service frontend's flows, both directions, handled on this node.",
                |c| c.packets,
            ),
            (
                "sextant_dataplane_service_frontend_bytes",
                "Bytes of each service frontend's flows, both directions, handled on this node.",
                |c| c.bytes,
            ),
        ];
        for (name, help, pick) in families {
            let mut metric = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for ((namespace, service, frontend), count) in &counts {
                let labels = [
                    ("namespace", namespace.as_str()),
                    ("service", service.as_str()),
                    ("frontend", frontend.as_str()),
                ];
                ConstCounter::new(pick(count)).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// `ip:port/proto` of a frontend key.
fn frontend_label(k: &Lb4Key) -> String {
    let proto = if k.proto == PROTO_UDP { "UDP" } else { "TCP" };
    format!(
        "{}:{}/{proto}",
        Ipv4Addr::from(k.vip.to_ne_bytes()),
        u16::from_be(k.port)
    )
}

/// The agent's one watch of Services and EndpointSlices, shared by the service
/// programmer and cluster DNS: two reflector caches and a coalescing "something
/// changed" signal.
pub struct Caches {
    /// Services, all namespaces.
    pub services: reflector::Store<Service>,
    /// EndpointSlices, all namespaces.
    pub slices: reflector::Store<EndpointSlice>,
    changed: tokio::sync::mpsc::Receiver<()>,
    _drivers: watch::Drivers,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Caches")
    }
}

impl Caches {
    /// Starts the watches.
    pub fn start(client: kube::Client) -> Self {
        let (changed, notified) = watch::changes();
        let (services, svc_driver) =
            watch::cache(Api::<Service>::all(client.clone()), changed.clone());
        let (slices, slice_driver) = watch::cache(Api::<EndpointSlice>::all(client), changed);
        Self {
            services,
            slices,
            changed: notified,
            _drivers: watch::Drivers(vec![svc_driver, slice_driver]),
        }
    }
}

/// Keeps the maps equal to the Services and EndpointSlices in `caches`. Nothing is
/// written before both caches hold a full list: a half-filled cache would remove
/// frontends an earlier agent left in the pinned maps.
pub async fn run(
    mut caches: Caches,
    datapath: SharedDatapath,
    metrics: ServiceMetrics,
    node: String,
    node_ip: Option<Ipv4Addr>,
) {
    if caches.services.wait_until_ready().await.is_err()
        || caches.slices.wait_until_ready().await.is_err()
    {
        return;
    }
    let mut programmer = match Programmer::adopt(datapath) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "reading the service maps; services are not programmed");
            return;
        }
    };
    let mut noticed = Instant::now();
    loop {
        let named = desired_named(
            &caches.services.state(),
            &caches.slices.state(),
            &node,
            node_ip,
        );
        let desired: BTreeMap<Lb4Key, Frontend> =
            named.iter().map(|(k, (_, f))| (*k, f.clone())).collect();
        match programmer.apply(&desired) {
            Ok(0) => {}
            Ok(changed) => {
                metrics.programming.observe(noticed.elapsed().as_secs_f64());
                tracing::debug!(changed, frontends = desired.len(), "programmed services");
            }
            Err(e) => tracing::error!(error = %e, "programming services"),
        }
        let names = programmer
            .ids()
            .filter_map(|(k, id)| {
                let ((ns, name), _) = named.get(k)?;
                Some((id, (ns.clone(), name.clone(), frontend_label(k))))
            })
            .collect();
        *metrics
            .frontends
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = names;
        if caches.changed.recv().await.is_none() {
            return;
        }
        noticed = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn service(name: &str, ip: &str, ports: serde_json::Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "ports": ports},
            }))
            .unwrap(),
        )
    }

    fn slice(svc: &str, ports: serde_json::Value, eps: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("{svc}-x"), "namespace": "default",
                             "labels": {SERVICE_NAME_LABEL: svc}},
                "addressType": "IPv4",
                "ports": ports,
                "endpoints": eps,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn ready_endpoints_become_backends_per_port_and_protocol() {
        let svcs = [
            service(
                "web",
                "10.96.0.10",
                serde_json::json!([
                    {"name": "http", "port": 80, "protocol": "TCP"},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                ]),
            ),
            service("headless", "None", serde_json::json!([{"port": 80}])),
        ];
        let slices = [slice(
            "web",
            serde_json::json!([
                {"name": "http", "port": 8080, "protocol": "TCP"},
                {"name": "dns", "port": 5353, "protocol": "UDP"},
            ]),
            serde_json::json!([
                {"addresses": ["10.42.0.5"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.6"]},
                {"addresses": ["10.42.0.7"], "conditions": {"ready": false, "terminating": true}},
            ]),
        )];
        let d = desired(&svcs, &slices, "n1", None);
        assert_eq!(d.len(), 2, "the headless service has no frontend");
        let http = &d[&frontend(Ipv4Addr::new(10, 96, 0, 10), 80, PROTO_TCP)].backends;
        assert_eq!(
            http,
            &vec![
                backend(Ipv4Addr::new(10, 42, 0, 5), 8080),
                backend(Ipv4Addr::new(10, 42, 0, 6), 8080)
            ]
        );
        let dns = &d[&frontend(Ipv4Addr::new(10, 96, 0, 10), 53, PROTO_UDP)].backends;
        assert_eq!(dns[0].port, 5353u16.to_be());
    }

    #[test]
    fn internal_traffic_policy_local_keeps_this_nodes_endpoints() {
        let mut svc = (*service("web", "10.96.0.10", serde_json::json!([{"port": 80}]))).clone();
        if let Some(spec) = svc.spec.as_mut() {
            spec.internal_traffic_policy = Some("Local".into());
        }
        let slices = [slice(
            "web",
            serde_json::json!([{"port": 8080}]),
            serde_json::json!([
                {"addresses": ["10.42.0.5"], "nodeName": "n1"},
                {"addresses": ["10.42.1.6"], "nodeName": "n2"},
            ]),
        )];
        let svcs = [Arc::new(svc)];
        let on_n1 = desired(&svcs, &slices, "n1", None);
        assert_eq!(
            on_n1.values().next().unwrap().backends,
            vec![backend(Ipv4Addr::new(10, 42, 0, 5), 8080)]
        );
        let on_n3 = desired(&svcs, &slices, "n3", None);
        assert!(on_n3.values().next().unwrap().backends.is_empty());
    }

    #[test]
    fn client_ip_affinity_carries_its_timeout() {
        let mut svc = (*service("web", "10.96.0.10", serde_json::json!([{"port": 80}]))).clone();
        if let Some(spec) = svc.spec.as_mut() {
            spec.session_affinity = Some("ClientIP".into());
        }
        let d = desired(&[Arc::new(svc.clone())], &[], "n1", None);
        assert_eq!(
            d.values().next().unwrap().affinity_timeout,
            10_800,
            "upstream's default"
        );
        if let Some(spec) = svc.spec.as_mut() {
            spec.session_affinity_config =
                serde_json::from_value(serde_json::json!({"clientIP": {"timeoutSeconds": 60}}))
                    .ok();
        }
        let d = desired(&[Arc::new(svc)], &[], "n1", None);
        assert_eq!(d.values().next().unwrap().affinity_timeout, 60);
    }

    #[test]
    fn node_ports_and_external_ips_follow_external_traffic_policy() {
        let mut svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
                     "externalIPs": ["203.0.113.7"],
                     "ports": [{"port": 80, "nodePort": 30080}]},
        }))
        .unwrap();
        let slices = [slice(
            "web",
            serde_json::json!([{"port": 8080}]),
            serde_json::json!([
                {"addresses": ["10.42.0.5"], "nodeName": "n1"},
                {"addresses": ["10.42.1.6"], "nodeName": "n2"},
            ]),
        )];
        let node_ip = Ipv4Addr::new(192, 168, 0, 1);
        let both = vec![
            backend(Ipv4Addr::new(10, 42, 0, 5), 8080),
            backend(Ipv4Addr::new(10, 42, 1, 6), 8080),
        ];
        let d = desired(&[Arc::new(svc.clone())], &slices, "n1", Some(node_ip));
        assert_eq!(d.len(), 3, "ClusterIP, nodePort, external IP");
        assert_eq!(d[&frontend(node_ip, 30080, PROTO_TCP)].backends, both);
        assert_eq!(
            d[&frontend(Ipv4Addr::new(203, 0, 113, 7), 80, PROTO_TCP)].backends,
            both
        );
        if let Some(spec) = svc.spec.as_mut() {
            spec.external_traffic_policy = Some("Local".into());
        }
        let d = desired(&[Arc::new(svc)], &slices, "n1", Some(node_ip));
        assert_eq!(
            d[&frontend(node_ip, 30080, PROTO_TCP)].backends,
            vec![backend(Ipv4Addr::new(10, 42, 0, 5), 8080)],
            "only this node's endpoint"
        );
        assert_eq!(
            d[&frontend(Ipv4Addr::new(10, 96, 0, 10), 80, PROTO_TCP)].backends,
            both,
            "the ClusterIP keeps every endpoint"
        );
    }

    #[test]
    fn a_service_without_endpoints_has_an_empty_frontend() {
        let svcs = [service(
            "web",
            "10.96.0.10",
            serde_json::json!([{"port": 80}]),
        )];
        let d = desired(&svcs, &[], "n1", None);
        assert_eq!(d.values().next().unwrap().backends.len(), 0);
        assert_eq!(d.values().next().unwrap().affinity_timeout, 0);
    }
}
