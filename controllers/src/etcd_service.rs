//! The `kube-system/etcd` Service: a headless Service without a selector whose
//! Endpoints list the etcd members the API server was given (`--etcd-endpoints`),
//! port `http-metrics` (or `https-metrics` for TLS members). It is how
//! kube-prometheus finds etcd on kubeadm clusters, and how the shipped Prometheus
//! configuration's `etcd` job discovers every member through the API (`role:
//! endpoints`); a member that stops answering shows up as a target down, which
//! `EtcdInsufficientMembers` counts.
//!
//! With the embedded store there is no etcd and no Service. Loopback addresses
//! are left out (nothing off the host reaches them); so are members named by a
//! host name that does not resolve.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::{Context, Error, Metrics, kubernetes_service::ensure};

/// The Service's name, in `kube-system`.
pub const NAME: &str = "etcd";
const NAMESPACE: &str = "kube-system";
/// How often the objects are checked.
const PERIOD: Duration = Duration::from_secs(10);

/// One etcd member's client address and whether it speaks TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Address and client port (etcd serves `/metrics` there).
    pub addr: SocketAddr,
    /// `https://` URL.
    pub tls: bool,
}

impl Member {
    fn port_name(&self) -> &'static str {
        if self.tls {
            "https-metrics"
        } else {
            "http-metrics"
        }
    }
}

/// The members named by etcd client URLs (`http://10.0.0.5:2379`), resolving
/// host names; loopback addresses and unusable URLs are skipped with a warning.
pub async fn members(urls: &[String]) -> Vec<Member> {
    let mut out = Vec::new();
    for url in urls {
        let Ok(uri) = url.parse::<http::Uri>() else {
            tracing::warn!(%url, "etcd endpoint is not a URL; not listed in kube-system/etcd");
            continue;
        };
        let tls = uri.scheme_str() == Some("https");
        let Some(host) = uri.host() else {
            continue;
        };
        let port = uri.port_u16().unwrap_or(2379);
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => match tokio::net::lookup_host((host, port)).await {
                Ok(found) => found.collect(),
                Err(e) => {
                    tracing::warn!(%url, error = %e, "etcd endpoint does not resolve");
                    continue;
                }
            },
        };
        out.extend(
            addrs
                .into_iter()
                .filter(|a| a.is_ipv4() && !a.ip().is_loopback())
                .map(|addr| Member { addr, tls }),
        );
    }
    out.sort_by_key(|m| m.addr);
    out.dedup();
    out
}

/// Keeps the Service and its Endpoints until the task ends; does nothing
/// without members.
pub async fn run(client: Client, metrics: Metrics, members: Vec<Member>) {
    if members.is_empty() {
        return;
    }
    let ctx = Context { client, metrics };
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        if let Err(e) = ctx.observe("etcd-service", sync(&ctx, &members)).await {
            tracing::warn!(error = %e, "keeping the etcd Service");
        }
    }
}

/// The Endpoints' subsets: one per (port, port name), addresses sorted.
fn subsets(members: &[Member]) -> Value {
    let mut by_port: BTreeMap<(u16, &str), Vec<String>> = BTreeMap::new();
    for m in members {
        by_port
            .entry((m.addr.port(), m.port_name()))
            .or_default()
            .push(m.addr.ip().to_string());
    }
    by_port
        .into_iter()
        .map(|((port, name), ips)| {
            json!({
                "addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                "ports": [{"name": name, "port": port, "protocol": "TCP"}],
            })
        })
        .collect()
}

async fn sync(ctx: &Context, members: &[Member]) -> Result<(), Error> {
    let client = &ctx.client;
    let mut ports: Vec<(u16, &str)> = members
        .iter()
        .map(|m| (m.addr.port(), m.port_name()))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": NAME, "namespace": NAMESPACE,
                     "labels": {"component": "etcd", "provider": "sextant"}},
        "spec": {"clusterIP": "None", "type": "ClusterIP", "ports": ports.iter()
            .map(|(port, name)| json!({"name": name, "port": port, "protocol": "TCP"}))
            .collect::<Vec<_>>()},
    });
    ensure(
        &Api::<Service>::namespaced(client.clone(), NAMESPACE),
        NAME,
        service,
        |_| false,
    )
    .await?;
    let want = subsets(members);
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": NAME, "namespace": NAMESPACE,
                     "labels": {"component": "etcd", "provider": "sextant"}},
        "subsets": want,
    });
    ensure(
        &Api::<Endpoints>::namespaced(client.clone(), NAMESPACE),
        NAME,
        endpoints,
        |e| serde_json::to_value(&e.subsets).map_or(true, |have| have != want),
    )
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn members_from_urls_skip_loopback_and_garbage() {
        let urls = [
            "http://10.9.0.254:2379",
            "https://10.9.0.253:2380",
            "http://127.0.0.1:2379",
            "not a url at all",
            "http://10.9.0.254:2379",
        ]
        .map(str::to_owned);
        let got = members(&urls).await;
        assert_eq!(
            got,
            vec![
                Member {
                    addr: "10.9.0.253:2380".parse().unwrap(),
                    tls: true
                },
                Member {
                    addr: "10.9.0.254:2379".parse().unwrap(),
                    tls: false
                },
            ]
        );
    }

    #[test]
    fn one_subset_per_port() {
        let m = |a: &str| Member {
            addr: a.parse().unwrap(),
            tls: false,
        };
        let got = subsets(&[m("10.0.0.1:2379"), m("10.0.0.2:2379"), m("10.0.0.3:2479")]);
        assert_eq!(
            got,
            json!([
                {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
                 "ports": [{"name": "http-metrics", "port": 2379, "protocol": "TCP"}]},
                {"addresses": [{"ip": "10.0.0.3"}],
                 "ports": [{"name": "http-metrics", "port": 2479, "protocol": "TCP"}]},
            ])
        );
    }
}
