//! Cluster DNS, served by every node's agent (hickory-server) from its watch of
//! Services and EndpointSlices, as CoreDNS's kubernetes plugin answers:
//!
//! - `<svc>.<ns>.svc.<domain>`: A → the ClusterIP; for a headless Service, every
//!   ready endpoint's address; ExternalName → CNAME; AAAA → no records (IPv4 only);
//! - `<hostname>.<svc>.<ns>.svc.<domain>`: the endpoint with that hostname (the
//!   pods of a StatefulSet, whose `subdomain` is the Service);
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>`: SRV for a named port;
//! - other names in the domain: NXDOMAIN; names outside it: forwarded to the
//!   node's resolvers (its `/etc/resolv.conf`).
//!
//! Pods reach it through the `kube-dns` Service in kube-system, whose endpoints are
//! the nodes' addresses (port 53); the kubelet writes that ClusterIP and the search
//! path into each pod's resolv.conf.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hickory_server::{
    Server,
    net::runtime::Time,
    proto::{
        op::{Header, HeaderCounts, Message, Metadata, ResponseCode},
        rr::{
            Name, RData, Record, RecordType,
            rdata::{A, CNAME, SRV},
        },
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

/// TTL of cluster answers, as CoreDNS's kubernetes plugin uses.
const TTL: u32 = 5;
/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What a name resolves to in the cluster domain.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    /// The name exists; these are the records of the asked type (maybe none).
    Records(Vec<Record>),
    /// No such name in the cluster domain.
    NxDomain,
    /// Not in the cluster domain.
    NotOurs,
}

/// Labels of `sextant_dataplane_dns_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// `cluster`, `forwarded`.
    pub zone: &'static str,
    /// The response code, e.g. `NoError`, `NXDomain`.
    pub rcode: String,
}

/// The cluster DNS answerer.
#[derive(Clone)]
pub struct ClusterDns {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    domain: Name,
    upstream: Vec<SocketAddr>,
    requests: Family<DnsLabels, Counter>,
}

impl std::fmt::Debug for ClusterDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterDns")
            .field("domain", &self.domain)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// The nameservers of a resolv.conf text, on port 53.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// A ready endpoint: its address, hostname, and ports as (name, protocol, port).
type ReadyEndpoint = (String, Option<String>, Vec<(String, String, u16)>);

fn record(name: &Name, rdata: RData) -> Record {
    Record::from_rdata(name.clone(), TTL, rdata)
}

impl ClusterDns {
    /// An answerer for `domain` (e.g. `cluster.local`) over the given caches,
    /// forwarding other names to `upstream`.
    pub fn new(
        services: Store<Service>,
        slices: Store<EndpointSlice>,
        domain: &str,
        upstream: Vec<SocketAddr>,
        registry: &mut sextant_metrics::Registry,
    ) -> Result<Self, String> {
        let mut domain = Name::from_ascii(domain).map_err(|e| format!("cluster domain: {e}"))?;
        domain.set_fqdn(true);
        let requests = Family::<DnsLabels, Counter>::default();
        registry.register(
            "sextant_dataplane_dns_requests",
            "DNS requests answered by the node's cluster DNS, by zone and response code.",
            requests.clone(),
        );
        Ok(Self {
            services,
            slices,
            domain,
            upstream,
            requests,
        })
    }

    fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(ns))
    }

    /// Ready endpoints of a Service.
    fn endpoints(&self, ns: &str, svc: &str) -> Vec<ReadyEndpoint> {
        let mut out = Vec::new();
        for slice in self.slices.state() {
            if slice.namespace().as_deref() != Some(ns)
                || slice.labels().get(SERVICE_NAME_LABEL).map(String::as_str) != Some(svc)
                || slice.address_type != "IPv4"
            {
                continue;
            }
            let ports: Vec<(String, String, u16)> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some((
                        p.name.clone().unwrap_or_default(),
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        u16::try_from(p.port?).ok()?,
                    ))
                })
                .collect();
            for ep in &slice.endpoints {
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for addr in &ep.addresses {
                    out.push((addr.clone(), ep.hostname.clone(), ports.clone()));
                }
            }
        }
        out
    }

    /// Resolves `name` for `qtype` within the cluster domain.
    pub fn lookup(&self, name: &Name, qtype: RecordType) -> Lookup {
        let mut fqdn = name.to_lowercase();
        fqdn.set_fqdn(true);
        if !self.domain.zone_of(&fqdn) {
            return Lookup::NotOurs;
        }
        let labels: Vec<String> = fqdn
            .iter()
            .take(usize::from(fqdn.num_labels() - self.domain.num_labels()))
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        match labels.as_slice() {
            [svc, ns, "svc"] => self.service_records(&fqdn, ns, svc, qtype),
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv_records(&fqdn, ns, svc, &port[1..], &proto[1..], qtype)
            }
            [host, svc, ns, "svc"] => {
                let found: Vec<String> = self
                    .endpoints(ns, svc)
                    .into_iter()
                    .filter(|(_, h, _)| h.as_deref() == Some(host))
                    .map(|(a, _, _)| a)
                    .collect();
                if found.is_empty() {
                    return Lookup::NxDomain;
                }
                Lookup::Records(self.a_records(&fqdn, &found, qtype))
            }
            // The zone apex and the `svc` / `<ns>.svc` levels exist but hold nothing.
            [] | ["svc"] | [_, "svc"] => Lookup::Records(Vec::new()),
            _ => Lookup::NxDomain,
        }
    }

    fn a_records(&self, name: &Name, addrs: &[String], qtype: RecordType) -> Vec<Record> {
        if qtype != RecordType::A && qtype != RecordType::ANY {
            return Vec::new();
        }
        addrs
            .iter()
            .filter_map(|a| a.parse().ok())
            .map(|ip| record(name, RData::A(A(ip))))
            .collect()
    }

    fn service_records(&self, name: &Name, ns: &str, svc: &str, qtype: RecordType) -> Lookup {
        let Some(service) = self.service(ns, svc) else {
            return Lookup::NxDomain;
        };
        let Some(spec) = service.spec.as_ref() else {
            return Lookup::NxDomain;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            let Some(target) = spec
                .external_name
                .as_deref()
                .and_then(|n| Name::from_ascii(n).ok())
            else {
                return Lookup::NxDomain;
            };
            let mut target = target;
            target.set_fqdn(true);
            return Lookup::Records(vec![record(name, RData::CNAME(CNAME(target)))]);
        }
        let addrs: Vec<String> = match spec.cluster_ip.as_deref() {
            Some("None") | None => self
                .endpoints(ns, svc)
                .into_iter()
                .map(|(a, _, _)| a)
                .collect(),
            Some(ip) => vec![ip.to_owned()],
        };
        Lookup::Records(self.a_records(name, &addrs, qtype))
    }

    fn srv_records(
        &self,
        name: &Name,
        ns: &str,
        svc: &str,
        port: &str,
        proto: &str,
        qtype: RecordType,
    ) -> Lookup {
        let Some(service) = self.service(ns, svc) else {
            return Lookup::NxDomain;
        };
        let proto = proto.to_ascii_uppercase();
        let spec = service.spec.clone().unwrap_or_default();
        let Some(sp) = spec.ports.iter().flatten().find(|p| {
            p.name.as_deref() == Some(port) && p.protocol.as_deref().unwrap_or("TCP") == proto
        }) else {
            return Lookup::NxDomain;
        };
        if qtype != RecordType::SRV && qtype != RecordType::ANY {
            return Lookup::Records(Vec::new());
        }
        let Ok(service_name) = Name::from_ascii(format!("{svc}.{ns}.svc.{}", self.domain)) else {
            return Lookup::NxDomain;
        };
        let headless = spec.cluster_ip.as_deref().is_none_or(|ip| ip == "None");
        if !headless {
            let port = u16::try_from(sp.port).unwrap_or_default();
            return Lookup::Records(vec![record(
                name,
                RData::SRV(SRV::new(0, 100, port, service_name)),
            )]);
        }
        let records = self
            .endpoints(ns, svc)
            .into_iter()
            .filter_map(|(addr, host, ports)| {
                let (_, _, target_port) = ports
                    .iter()
                    .find(|(n, p, _)| n == port && *p == proto)?
                    .clone();
                let host = host.unwrap_or_else(|| addr.replace('.', "-"));
                let target = Name::from_ascii(format!("{host}.{service_name}")).ok()?;
                Some(record(
                    name,
                    RData::SRV(SRV::new(0, 100, target_port, target)),
                ))
            })
            .collect();
        Lookup::Records(records)
    }

    async fn forward(&self, request: &Request) -> Option<Message> {
        let upstream = self.upstream.first()?;
        let bind: SocketAddr = if upstream.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
        socket.send_to(request.as_slice(), upstream).await.ok()?;
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        Message::from_vec(&buf[..n]).ok()
    }

    fn count(&self, zone: &'static str, rcode: ResponseCode) {
        self.requests
            .get_or_create(&DnsLabels {
                zone,
                rcode: format!("{rcode:?}"),
            })
            .inc();
    }
}

/// What the server records when no response could be sent.
fn serve_failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[tonic::async_trait]
impl RequestHandler for ClusterDns {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        let Ok(info) = request.request_info() else {
            meta.response_code = ResponseCode::FormErr;
            let response = builder.build_no_records(meta);
            return response_handle
                .send_response(response)
                .await
                .unwrap_or_else(|_| serve_failed(request));
        };
        let name: Name = info.query.name().into();
        let lookup = self.lookup(&name, info.query.query_type());
        let sent = match lookup {
            Lookup::Records(records) => {
                meta.authoritative = true;
                self.count("cluster", ResponseCode::NoError);
                let response = builder.build(
                    meta,
                    records.iter(),
                    std::iter::empty(),
                    std::iter::empty(),
                    std::iter::empty(),
                );
                response_handle.send_response(response).await
            }
            Lookup::NxDomain => {
                meta.authoritative = true;
                meta.response_code = ResponseCode::NXDomain;
                self.count("cluster", ResponseCode::NXDomain);
                response_handle
                    .send_response(builder.build_no_records(meta))
                    .await
            }
            Lookup::NotOurs => match self.forward(request).await {
                Some(reply) => {
                    meta.response_code = reply.metadata.response_code;
                    self.count("forwarded", reply.metadata.response_code);
                    let response = builder.build(
                        meta,
                        reply.answers.iter(),
                        reply.authorities.iter(),
                        std::iter::empty(),
                        reply.additionals.iter(),
                    );
                    response_handle.send_response(response).await
                }
                None => {
                    meta.response_code = ResponseCode::ServFail;
                    self.count("forwarded", ResponseCode::ServFail);
                    response_handle
                        .send_response(builder.build_no_records(meta))
                        .await
                }
            },
        };
        sent.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "sending a DNS response");
            serve_failed(request)
        })
    }
}

/// Serves `dns` on UDP and TCP at `listen` until the process ends; a bind failure
/// is logged (the node then has no cluster DNS) rather than fatal.
pub async fn serve(dns: ClusterDns, listen: SocketAddr) {
    let udp = match tokio::net::UdpSocket::bind(listen).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%listen, error = %e, "cluster DNS cannot listen (UDP)");
            return;
        }
    };
    let tcp = match tokio::net::TcpListener::bind(listen).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%listen, error = %e, "cluster DNS cannot listen (TCP)");
            return;
        }
    };
    let mut server = Server::new(dns);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 64);
    tracing::info!(%listen, "serving cluster DNS");
    if let Err(e) = server.block_until_done().await {
        tracing::error!(error = %e, "cluster DNS stopped");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use kube::runtime::{reflector, watcher};

    fn dns(services: Vec<serde_json::Value>, slices: Vec<serde_json::Value>) -> ClusterDns {
        let (svc_store, mut svc_writer) = reflector::store::<Service>();
        for s in services {
            svc_writer
                .apply_watcher_event(&watcher::Event::Apply(serde_json::from_value(s).unwrap()));
        }
        let (slice_store, mut slice_writer) = reflector::store::<EndpointSlice>();
        for s in slices {
            slice_writer
                .apply_watcher_event(&watcher::Event::Apply(serde_json::from_value(s).unwrap()));
        }
        let mut registry = sextant_metrics::Registry::default();
        ClusterDns::new(
            svc_store,
            slice_store,
            "cluster.local",
            Vec::new(),
            &mut registry,
        )
        .unwrap()
    }

    fn answers(d: &ClusterDns, name: &str, t: RecordType) -> Vec<String> {
        match d.lookup(&Name::from_ascii(name).unwrap(), t) {
            Lookup::Records(r) => r.iter().map(|r| r.data.to_string()).collect(),
            other => vec![format!("{other:?}")],
        }
    }

    fn cluster() -> ClusterDns {
        dns(
            vec![
                serde_json::json!({"metadata": {"name": "web", "namespace": "default"},
                    "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
                serde_json::json!({"metadata": {"name": "db", "namespace": "default"},
                    "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
                serde_json::json!({"metadata": {"name": "ext", "namespace": "default"},
                    "spec": {"type": "ExternalName", "externalName": "example.org"}}),
            ],
            vec![serde_json::json!({
                "metadata": {"name": "db-1", "namespace": "default", "labels": {SERVICE_NAME_LABEL: "db"}},
                "addressType": "IPv4",
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                    {"addresses": ["10.42.1.6"], "hostname": "db-1"},
                    {"addresses": ["10.42.1.7"], "hostname": "db-2", "conditions": {"ready": false}},
                ],
            })],
        )
    }

    #[test]
    fn services_headless_pods_and_external_names() {
        let d = cluster();
        assert_eq!(
            answers(&d, "web.default.svc.cluster.local.", RecordType::A),
            ["10.96.0.20"]
        );
        assert_eq!(
            answers(&d, "WEB.default.svc.cluster.local", RecordType::A),
            ["10.96.0.20"]
        );
        assert!(answers(&d, "web.default.svc.cluster.local.", RecordType::AAAA).is_empty());
        let mut db = answers(&d, "db.default.svc.cluster.local.", RecordType::A);
        db.sort();
        assert_eq!(db, ["10.42.0.5", "10.42.1.6"], "ready endpoints only");
        assert_eq!(
            answers(&d, "db-1.db.default.svc.cluster.local.", RecordType::A),
            ["10.42.1.6"]
        );
        assert_eq!(
            answers(&d, "ext.default.svc.cluster.local.", RecordType::A),
            ["example.org."]
        );
    }

    #[test]
    fn srv_for_named_ports() {
        let d = cluster();
        assert_eq!(
            answers(
                &d,
                "_http._tcp.web.default.svc.cluster.local.",
                RecordType::SRV
            ),
            ["0 100 80 web.default.svc.cluster.local."]
        );
        let mut pg = answers(
            &d,
            "_pg._tcp.db.default.svc.cluster.local.",
            RecordType::SRV,
        );
        pg.sort();
        assert_eq!(
            pg,
            [
                "0 100 5432 db-0.db.default.svc.cluster.local.",
                "0 100 5432 db-1.db.default.svc.cluster.local."
            ]
        );
    }

    #[test]
    fn unknown_names_are_nxdomain_and_others_are_forwarded() {
        let d = cluster();
        assert_eq!(
            d.lookup(
                &Name::from_ascii("nope.default.svc.cluster.local.").unwrap(),
                RecordType::A
            ),
            Lookup::NxDomain
        );
        assert_eq!(
            d.lookup(
                &Name::from_ascii("a.b.c.d.e.cluster.local.").unwrap(),
                RecordType::A
            ),
            Lookup::NxDomain
        );
        assert_eq!(
            d.lookup(&Name::from_ascii("example.org.").unwrap(), RecordType::A),
            Lookup::NotOurs
        );
    }

    #[test]
    fn resolv_conf_nameservers() {
        assert_eq!(
            nameservers("search x\nnameserver 10.0.0.2\n# c\nnameserver ::1\n"),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
