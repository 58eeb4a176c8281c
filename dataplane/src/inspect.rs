//! What a node's agent shows about its dataplane, for `sextantctl flows` and
//! `sextantctl dataplane`: routes merged into the kubelet's HTTPS port (client
//! certificates from the cluster CA only), which clients reach through the API
//! server's `nodes/<name>/proxy/...`, as Prometheus reaches `/metrics`.
//!
//! - `GET /flows?namespace=&pod=&service=&verdict=&follow=`: flows as JSON
//!   lines, the recent ones first; with `follow=true` new ones as they come.
//! - `GET /dataplane/services`: each frontend in the service map with its
//!   Service's name and the distinct backends of its Maglev table.
//! - `GET /dataplane/endpoints`: the local pods the endpoint map delivers to.
//! - `GET /dataplane/policies`: the local pods' enforced directions and the
//!   policy rules' count per endpoint identity.
//! - `GET /dataplane/ct`: the tracked flows (conntrack map: service DNAT and
//!   its reverse, policy-tracked flows) and XDP's NodePort NAT entries.
//! - `GET /dataplane/status`: the attached programs and each map's entries.

use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf};

use axum::{
    Json, Router,
    body::Body,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::Store;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::{Flow, ObserveRequest},
    datapath::SharedDatapath,
    endpoints::EndpointRecord,
    flows::{self, FlowHub},
};

/// What the routes read.
#[derive(Clone)]
pub struct Inspect {
    /// The flow hub.
    pub hub: FlowHub,
    /// The maps.
    pub datapath: SharedDatapath,
    /// Services, to name frontends.
    pub services: Store<Service>,
    /// The endpoint records, to name local pods.
    pub records_dir: PathBuf,
}

impl Inspect {
    /// Runs `read` on the maps under the lock.
    fn maps<T>(
        &self,
        read: impl FnOnce(&mut crate::datapath::Datapath) -> crate::Result<T>,
    ) -> crate::Result<T> {
        let mut dp = self
            .datapath
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        read(&mut dp)
    }
}

impl std::fmt::Debug for Inspect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspect").finish_non_exhaustive()
    }
}

/// The routes, to merge into the kubelet's router.
pub fn router(inspect: Inspect) -> Router {
    Router::new()
        .route("/flows", get(flows_handler))
        .route("/dataplane/services", get(services_handler))
        .route("/dataplane/endpoints", get(endpoints_handler))
        .route("/dataplane/policies", get(policies_handler))
        .route("/dataplane/ct", get(conntrack_handler))
        .route("/dataplane/status", get(status_handler))
        .with_state(inspect)
}

/// The query of `/flows`.
#[derive(Debug, Default, Deserialize)]
struct FlowQuery {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    pod: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    verdict: String,
    #[serde(default)]
    follow: bool,
}

/// A flow as one JSON object (the Observe message's fields, snake_case).
pub fn flow_json(f: &Flow) -> Value {
    json!({
        "time": f.time,
        "node": f.node,
        "verdict": f.verdict,
        "drop_reason": f.drop_reason,
        "protocol": f.protocol,
        "source": f.source,
        "destination": f.destination,
        "source_pod": f.source_pod,
        "destination_pod": f.destination_pod,
        "service": f.service,
        "service_frontend": f.service_frontend,
        "direction": f.direction,
        "policy": f.policy,
    })
}

fn line(f: &Flow) -> Result<axum::body::Bytes, std::io::Error> {
    let mut text = flow_json(f).to_string();
    text.push('\n');
    Ok(axum::body::Bytes::from(text))
}

async fn flows_handler(State(i): State<Inspect>, Query(q): Query<FlowQuery>) -> Response {
    let filter = ObserveRequest {
        namespace: q.namespace,
        pod: q.pod,
        service: q.service,
        verdict: q.verdict,
    };
    // Subscribe before reading the recent ones so nothing falls between them.
    let live = q.follow.then(|| i.hub.subscribe(filter.clone()));
    let recent = futures::stream::iter(i.hub.recent(&filter)).map(|f| line(&f));
    let body = match live {
        Some(live) => Body::from_stream(recent.chain(live.map(|f| line(&f)))),
        None => Body::from_stream(recent),
    };
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

fn failed(e: &dyn std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("reading the dataplane maps: {e}\n"),
    )
        .into_response()
}

fn proto_name(p: u8) -> &'static str {
    match p {
        sextant_ebpf_common::lb::PROTO_TCP => "TCP",
        sextant_ebpf_common::lb::PROTO_UDP => "UDP",
        _ => "?",
    }
}

async fn services_handler(State(i): State<Inspect>) -> Response {
    let (frontends, backends) = match i.maps(|dp| Ok((dp.services()?, dp.backends()?))) {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    let services = i.services.state();
    let mut out: Vec<Value> = frontends
        .iter()
        .map(|(key, svc)| {
            let vip = Ipv4Addr::from(key.vip.to_ne_bytes());
            let port = u16::from_be(key.port);
            let distinct: BTreeSet<(Ipv4Addr, u16)> = backends
                .iter()
                .filter(|(k, _)| k.id == svc.id && k.slot < svc.count)
                .map(|(_, b)| (Ipv4Addr::from(b.ip.to_ne_bytes()), u16::from_be(b.port)))
                .collect();
            json!({
                "service": flows::service_name(&services, vip, port),
                "frontend": format!("{vip}:{port}/{}", proto_name(key.proto)),
                "backends": distinct.iter().map(|(ip, p)| format!("{ip}:{p}")).collect::<Vec<_>>(),
                "slots": svc.count,
                "affinity_seconds": svc.affinity_timeout,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (a["service"].as_str(), a["frontend"].as_str())
            .cmp(&(b["service"].as_str(), b["frontend"].as_str()))
    });
    Json(out).into_response()
}

fn addr(ip: u32, port: u16) -> String {
    format!(
        "{}:{}",
        Ipv4Addr::from(ip.to_ne_bytes()),
        u16::from_be(port)
    )
}

async fn conntrack_handler(State(i): State<Inspect>) -> Response {
    use sextant_ebpf_common::lb::{CT_CLOSING, CT_DNAT, CT_HAIRPIN, CT_REVNAT, NAT_REPLY};
    let (ct, nat) = match i.maps(|dp| Ok((dp.conntrack()?, dp.nodeport_nat()?))) {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    let pods = pods_by_ip(&i.records_dir);
    let pod = |ip: u32| {
        pods.get(&Ipv4Addr::from(ip.to_ne_bytes()))
            .cloned()
            .unwrap_or_default()
    };
    let flags = |f: u8, names: &[(u8, &'static str)]| -> Vec<&'static str> {
        names
            .iter()
            .filter(|(bit, _)| f & bit != 0)
            .map(|(_, n)| *n)
            .collect()
    };
    // One row per tracked direction, the same columns for both maps.
    let row =
        |k: &sextant_ebpf_common::lb::Ct4Key, action: &str, rewrite: String, flags: Vec<&str>| {
            json!({
                "protocol": proto_name(k.proto),
                "source": addr(k.saddr, k.sport),
                "destination": addr(k.daddr, k.dport),
                "source_pod": pod(k.saddr),
                "destination_pod": pod(k.daddr),
                "action": action,
                "rewrite": rewrite,
                "flags": flags,
            })
        };
    let mut out: Vec<Value> = ct
        .iter()
        .map(|(k, e)| {
            let (action, rewrite) = match e.action {
                CT_DNAT => ("dnat", format!("dst={}", addr(e.addr, e.port))),
                CT_REVNAT => ("revnat", format!("src={}", addr(e.addr, e.port))),
                _ => ("tracked", String::new()),
            };
            row(
                k,
                action,
                rewrite,
                flags(e.flags, &[(CT_CLOSING, "closing"), (CT_HAIRPIN, "hairpin")]),
            )
        })
        .chain(nat.iter().map(|(k, e)| {
            let rewrite = format!(
                "src={} dst={}",
                addr(e.saddr, e.sport),
                addr(e.daddr, e.dport)
            );
            row(
                k,
                "nodeport-nat",
                rewrite,
                flags(e.flags, &[(CT_CLOSING, "closing"), (NAT_REPLY, "reply")]),
            )
        }))
        .collect();
    out.sort_by(|a, b| {
        (
            a["protocol"].as_str(),
            a["source"].as_str(),
            a["destination"].as_str(),
        )
            .cmp(&(
                b["protocol"].as_str(),
                b["source"].as_str(),
                b["destination"].as_str(),
            ))
    });
    Json(out).into_response()
}

async fn status_handler(State(i): State<Inspect>) -> Response {
    // A map that cannot be read shows as null; the others still count.
    let read = i.maps(|dp| {
        let counts = (
            dp.services().map(|v| v.len()),
            dp.backends().map(|v| v.len()),
            dp.endpoints().map(|v| v.len()),
            dp.conntrack().map(|v| v.len()),
            dp.policy_endpoints().map(|v| v.len()),
        );
        Ok((dp.attachments(), counts))
    });
    let (attached, counts) = match read {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    let n = |r: crate::Result<usize>| r.map_or(Value::Null, |n| json!(n));
    let mut programs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (ifname, program) in attached {
        programs.entry(program).or_default().push(ifname);
    }
    Json(json!({
        "programs": programs,
        "maps": {
            "services": n(counts.0),
            "backends": n(counts.1),
            "endpoints": n(counts.2),
            "conntrack": n(counts.3),
            "policy_endpoints": n(counts.4),
        },
    }))
    .into_response()
}

/// Local pods by address, from the endpoint records.
fn pods_by_ip(records_dir: &PathBuf) -> std::collections::HashMap<Ipv4Addr, String> {
    std::fs::read_dir(records_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<EndpointRecord>(&t).ok())
        .map(|r| (r.ip, format!("{}/{}", r.pod_namespace, r.pod_name)))
        .collect()
}

async fn endpoints_handler(State(i): State<Inspect>) -> Response {
    let endpoints = match i.maps(|dp| dp.endpoints()) {
        Ok(e) => e,
        Err(e) => return failed(&e),
    };
    let pods = pods_by_ip(&i.records_dir);
    let mut out: Vec<Value> = endpoints
        .iter()
        .map(|(ip, e)| {
            json!({
                "ip": ip.to_string(),
                "pod": pods.get(ip).cloned().unwrap_or_default(),
                "ifindex": e.ifindex,
            })
        })
        .collect();
    out.sort_by(|a, b| a["ip"].as_str().cmp(&b["ip"].as_str()));
    Json(out).into_response()
}

async fn policies_handler(State(i): State<Inspect>) -> Response {
    let (endpoints, rules) =
        match i.maps(|dp| Ok((dp.policy_endpoints()?, dp.policy_rules()?.len()))) {
            Ok(r) => r,
            Err(e) => return failed(&e),
        };
    let pods = pods_by_ip(&i.records_dir);
    let mut out: Vec<Value> = endpoints
        .iter()
        .map(|(ip, e)| {
            json!({
                "ip": ip.to_string(),
                "pod": pods.get(ip).cloned().unwrap_or_default(),
                "ingress": e.ingress != 0,
                "egress": e.egress != 0,
            })
        })
        .collect();
    out.sort_by(|a, b| a["ip"].as_str().cmp(&b["ip"].as_str()));
    Json(json!({"endpoints": out, "rules": rules})).into_response()
}
