//! Flows, user side: the reader of `SX_FLOWS_V1` turns kernel events into
//! [`Flow`]s named with pods (this node's endpoint records) and Services (the
//! agent's Service cache), counts them in `sextant_dataplane_flows_total{direction,
//! verdict}`, and fans them out to `Observe` streams (gRPC, on the agent's socket),
//! each with its own filter. A slow watcher loses flows (it is told nothing, as
//! Hubble's ring drops), never slows the reader.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use kube::{ResourceExt, runtime::reflector::Store};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use sextant_ebpf_common::flows::{
    DIRECTION_INGRESS, FLAG_SERVICE, FlowEvent, REASON_NO_BACKEND, REASON_POLICY_DENIED,
    VERDICT_DROPPED, VERDICT_FORWARDED,
};
use tokio::{io::unix::AsyncFd, sync::broadcast};
use tonic::{Request, Response, Status};

use crate::{
    api::{Flow, ObserveRequest, observer_server::Observer},
    endpoints::EndpointRecord,
    policy::PolicyNames,
};

/// Labels of `sextant_dataplane_flows_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// `egress` (leaving a pod) or `ingress` (entering a pod from the host stack).
    pub direction: &'static str,
    /// `forwarded` or `dropped`.
    pub verdict: &'static str,
}

/// Names the addresses in flows.
struct Names {
    node: String,
    records_dir: PathBuf,
    pods: Mutex<(HashMap<Ipv4Addr, String>, Option<Instant>)>,
    services: Store<Service>,
    policies: PolicyNames,
}

impl Names {
    /// `namespace/name` of a pod on this node, from the endpoint records (re-read
    /// at most once a second when an address is unknown).
    fn pod(&self, ip: Ipv4Addr) -> String {
        let mut cache = self
            .pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = cache.0.get(&ip) {
            return p.clone();
        }
        if cache.1.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            cache.1 = Some(Instant::now());
            cache.0.clear();
            for entry in std::fs::read_dir(&self.records_dir)
                .into_iter()
                .flatten()
                .flatten()
            {
                let Ok(text) = std::fs::read_to_string(entry.path()) else {
                    continue;
                };
                if let Ok(r) = serde_json::from_str::<EndpointRecord>(&text) {
                    cache
                        .0
                        .insert(r.ip, format!("{}/{}", r.pod_namespace, r.pod_name));
                }
            }
        }
        cache.0.get(&ip).cloned().unwrap_or_default()
    }

    /// `namespace/name` of the NetworkPolicy with id `id`.
    fn policy(&self, id: u32) -> String {
        if id == 0 {
            return String::new();
        }
        let names = self
            .policies
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"))
    }

    /// `namespace/name` of the Service with the frontend `vip:port`.
    fn service(&self, vip: Ipv4Addr, port: u16) -> String {
        service_name(&self.services.state(), vip, port)
    }
}

/// `namespace/name` of the Service with the frontend `vip:port`: its ClusterIP
/// or an external IP, else (the node's address) its nodePort; empty if none.
pub fn service_name(services: &[Arc<Service>], vip: Ipv4Addr, port: u16) -> String {
    let vip = vip.to_string();
    let by_ip = services.iter().find(|s| {
        s.spec.as_ref().is_some_and(|spec| {
            spec.cluster_ip.as_deref() == Some(vip.as_str())
                || spec.external_ips.iter().flatten().any(|ip| *ip == vip)
        })
    });
    let by_node_port = || {
        services.iter().find(|s| {
            s.spec.as_ref().is_some_and(|spec| {
                spec.ports
                    .iter()
                    .flatten()
                    .any(|p| p.node_port == Some(i32::from(port)))
            })
        })
    };
    by_ip
        .or_else(by_node_port)
        .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
        .unwrap_or_default()
}

fn addr(ip: u32) -> Ipv4Addr {
    Ipv4Addr::from(ip.to_ne_bytes())
}

fn rfc3339_now() -> String {
    jiff::Timestamp::now().to_string()
}

fn direction(e: &FlowEvent) -> &'static str {
    if e.direction == DIRECTION_INGRESS {
        "ingress"
    } else {
        "egress"
    }
}

/// Turns one kernel event into a [`Flow`].
fn flow(e: &FlowEvent, names: &Names) -> Flow {
    let (src, dst) = (addr(e.saddr), addr(e.daddr));
    let service = e.flags & FLAG_SERVICE != 0;
    Flow {
        time: rfc3339_now(),
        node: names.node.clone(),
        verdict: match e.verdict {
            VERDICT_FORWARDED => "forwarded",
            VERDICT_DROPPED => "dropped",
            _ => "unknown",
        }
        .to_owned(),
        drop_reason: match e.reason {
            REASON_NO_BACKEND => "no_backend",
            REASON_POLICY_DENIED => "policy_denied",
            _ => "",
        }
        .to_owned(),
        protocol: match e.proto {
            1 => "ICMP",
            6 => "TCP",
            17 => "UDP",
            _ => "other",
        }
        .to_owned(),
        source: format!("{src}:{}", u16::from_be(e.sport)),
        destination: format!("{dst}:{}", u16::from_be(e.dport)),
        source_pod: names.pod(src),
        destination_pod: names.pod(dst),
        service: if service {
            names.service(addr(e.vip), u16::from_be(e.vport))
        } else {
            String::new()
        },
        service_frontend: if service {
            format!("{}:{}", addr(e.vip), u16::from_be(e.vport))
        } else {
            String::new()
        },
        direction: direction(e).to_owned(),
        policy: names.policy(e.policy),
    }
}

/// Whether `f` passes the filter of `req` (empty fields match everything).
pub fn matches(req: &ObserveRequest, f: &Flow) -> bool {
    let pod_of = |p: &str| {
        p.split_once('/')
            .map(|(ns, name)| (ns.to_owned(), name.to_owned()))
    };
    let pods = [pod_of(&f.source_pod), pod_of(&f.destination_pod)];
    let ns_ok = req.namespace.is_empty()
        || pods.iter().flatten().any(|(ns, _)| *ns == req.namespace)
        || f.service.split('/').next() == Some(req.namespace.as_str());
    let pod_ok = req.pod.is_empty()
        || pods
            .iter()
            .flatten()
            .any(|(ns, name)| *name == req.pod || format!("{ns}/{name}") == req.pod);
    let svc_ok = req.service.is_empty()
        || f.service == req.service
        || f.service.split('/').nth(1) == Some(req.service.as_str());
    let verdict_ok = req.verdict.is_empty() || f.verdict == req.verdict;
    ns_ok && pod_ok && svc_ok && verdict_ok
}

/// How many recent flows the hub keeps for `flows` without `--follow`.
const RECENT: usize = 1000;

/// The flow hub: the reader publishes, Observe streams subscribe; the last
/// [`RECENT`] flows are kept for readers that ask what just happened.
#[derive(Clone)]
pub struct FlowHub {
    tx: broadcast::Sender<Flow>,
    recent: Arc<Mutex<std::collections::VecDeque<Flow>>>,
}

impl std::fmt::Debug for FlowHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowHub")
    }
}

impl FlowHub {
    /// A hub keeping up to 4096 flows for each slow subscriber.
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(4096).0,
            recent: Arc::default(),
        }
    }

    /// Hands a flow to every subscriber and keeps it among the recent ones.
    pub fn publish(&self, f: Flow) {
        {
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(f.clone());
        }
        // No subscriber is fine.
        let _ = self.tx.send(f);
    }

    /// The recent flows passing `filter`, oldest first.
    pub fn recent(&self, filter: &ObserveRequest) -> Vec<Flow> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|f| matches(filter, f))
            .cloned()
            .collect()
    }

    /// New flows passing `filter`, as they come.
    pub fn subscribe(
        &self,
        filter: ObserveRequest,
    ) -> impl futures::Stream<Item = Flow> + Send + 'static {
        futures::stream::unfold(self.tx.subscribe(), move |mut rx| {
            let filter = filter.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(f) if matches(&filter, &f) => return Some((f, rx)),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
    }
}

impl Default for FlowHub {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `sextant_dataplane_flows_total`.
pub fn register(registry: &mut sextant_metrics::Registry) -> Family<FlowLabels, Counter> {
    let flows = Family::<FlowLabels, Counter>::default();
    registry.register(
        "sextant_dataplane_flows",
        "Flows the datapath reported: new connections into and out of pods, and dropped packets.",
        flows.clone(),
    );
    flows
}

/// Reads the ring until the process ends.
pub async fn run(
    ring: RingBuf<MapData>,
    hub: FlowHub,
    counter: Family<FlowLabels, Counter>,
    node: String,
    records_dir: PathBuf,
    services: Store<Service>,
    policies: PolicyNames,
) {
    let names = Names {
        node,
        records_dir,
        pods: Mutex::new((HashMap::new(), None)),
        services,
        policies,
    };
    // `new` is deprecated for types that may close their fd while registered; the
    // ring owns its fd and lives inside the AsyncFd, so that cannot happen here, and
    // the replacement (`register`) is `unsafe`, which this crate forbids.
    #[allow(deprecated)]
    let registered = AsyncFd::new(ring);
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "watching the flow ring; no flows");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "reading the flow ring; no more flows");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(event) = FlowEvent::from_bytes(&item) else {
                continue;
            };
            let f = flow(&event, &names);
            counter
                .get_or_create(&FlowLabels {
                    direction: direction(&event),
                    verdict: if event.verdict == VERDICT_DROPPED {
                        "dropped"
                    } else {
                        "forwarded"
                    },
                })
                .inc();
            hub.publish(f);
        }
        guard.clear_ready();
    }
}

type FlowStream = Pin<Box<dyn futures::Stream<Item = Result<Flow, Status>> + Send>>;

#[tonic::async_trait]
impl Observer for FlowHub {
    type ObserveStream = FlowStream;

    async fn observe(
        &self,
        req: Request<ObserveRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let stream = self.subscribe(req.into_inner()).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(src_pod: &str, dst_pod: &str, service: &str, verdict: &str) -> Flow {
        Flow {
            source_pod: src_pod.into(),
            destination_pod: dst_pod.into(),
            service: service.into(),
            verdict: verdict.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_hub_keeps_recent_flows_and_streams_new_ones() {
        let hub = FlowHub::new();
        for i in 0..(RECENT + 5) {
            let verdict = if i % 2 == 0 { "dropped" } else { "forwarded" };
            hub.publish(Flow {
                time: format!("{i:06}"),
                ..f("default/client", "", "", verdict)
            });
        }
        let all = hub.recent(&ObserveRequest::default());
        assert_eq!(all.len(), RECENT, "bounded");
        assert_eq!(all[0].time, "000005", "the oldest were let go");
        let dropped = ObserveRequest {
            verdict: "dropped".into(),
            ..Default::default()
        };
        assert!(hub.recent(&dropped).iter().all(|f| f.verdict == "dropped"));
        let mut live = Box::pin(hub.subscribe(dropped));
        hub.publish(f("default/client", "", "", "forwarded"));
        hub.publish(f("default/other", "", "", "dropped"));
        let next = live.next().await.unwrap();
        assert_eq!(next.source_pod, "default/other", "filtered, in order");
    }

    #[test]
    fn filters_by_namespace_pod_service_and_verdict() {
        let flow = f("default/client", "", "default/web", "dropped");
        let all = ObserveRequest::default();
        assert!(matches(&all, &flow));
        let by = |ns: &str, pod: &str, svc: &str, v: &str| ObserveRequest {
            namespace: ns.into(),
            pod: pod.into(),
            service: svc.into(),
            verdict: v.into(),
        };
        assert!(matches(&by("default", "", "", ""), &flow));
        assert!(!matches(&by("kube-system", "", "", ""), &flow));
        assert!(matches(&by("", "client", "", ""), &flow));
        assert!(matches(&by("", "default/client", "", ""), &flow));
        assert!(!matches(&by("", "web-1", "", ""), &flow));
        assert!(matches(&by("", "", "web", "dropped"), &flow));
        assert!(matches(&by("", "", "default/web", ""), &flow));
        assert!(!matches(&by("", "", "", "forwarded"), &flow));
    }
}
