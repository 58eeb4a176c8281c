//! The `default/kubernetes` Service, as upstream's API server keeps it: on the
//! first address of the service CIDR (10.96.0.1), port 443 (`https`), with an
//! EndpointSlice and an Endpoints object listing the API server's address. In-
//! cluster clients (client-go's in-cluster config) and Prometheus's
//! `kubernetes-apiservers` job find the API server through it.
//!
//! Upstream's apiservers each add themselves; here the controllers' leader
//! writes the address of the server it runs in (one address per cluster).
//! Loopback addresses are left out, as pods cannot reach them.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Endpoints, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use crate::{Context, Error, Metrics, endpointslice::MANAGED_BY};

/// The Service's name, in `default`.
pub const NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";
/// The manager named on the slice (not the EndpointSlice controller: it owns
/// only the slices of Services with a selector).
const MANAGER: &str = "kubernetes-service.sextant.io";
/// How often the objects are checked (upstream's reconciler interval).
const PERIOD: Duration = Duration::from_secs(10);

/// The `kubernetes` Service's address: the first of the service CIDR.
pub fn service_ip(service_cidr: ipnet::Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(service_cidr.network()) + 1)
}

/// The address pods should use for the API server listening on `listen`: that
/// address, or when it listens on every address, the host's first non-loopback
/// IPv4 address; `None` when only loopback is left.
pub fn advertise(listen: SocketAddr) -> Option<SocketAddr> {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => nix::ifaddrs::getifaddrs()
            .ok()?
            .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
            .find(|ip| !ip.is_loopback() && !ip.is_link_local())?,
        std::net::IpAddr::V4(ip) => ip,
        std::net::IpAddr::V6(_) => return None,
    };
    (!ip.is_loopback()).then_some(SocketAddr::new(ip.into(), listen.port()))
}

/// Keeps the Service, its EndpointSlice and its Endpoints until the task ends.
pub async fn run(client: Client, metrics: Metrics, ip: Ipv4Addr, server: Option<SocketAddr>) {
    let ctx = Context { client, metrics };
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        if let Err(e) = ctx
            .observe("kubernetes-service", sync(&ctx, ip, server))
            .await
        {
            tracing::warn!(error = %e, "keeping the kubernetes Service");
        }
    }
}

/// Creates `obj` if missing, else merge-patches it when `differs` says so.
pub(crate) async fn ensure<K>(
    api: &Api<K>,
    name: &str,
    obj: Value,
    differs: impl Fn(&K) -> bool,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
{
    match api.get_opt(name).await? {
        None => {
            let k: K = serde_json::from_value(obj).map_err(|e| Error::Invalid(e.to_string()))?;
            match api.create(&PostParams::default(), &k).await {
                Ok(_) => tracing::info!(name, kind = K::kind(&()).as_ref(), "created"),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Some(current) if differs(&current) => {
            api.patch(name, &PatchParams::default(), &Patch::Merge(&obj))
                .await?;
        }
        Some(_) => {}
    }
    Ok(())
}

async fn sync(ctx: &Context, ip: Ipv4Addr, server: Option<SocketAddr>) -> Result<(), Error> {
    let client = &ctx.client;
    let port = server.map_or(6443, |s| s.port());
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": NAME, "namespace": NAMESPACE,
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": ip.to_string(), "type": "ClusterIP", "ports": [
            {"name": "https", "port": 443, "protocol": "TCP", "targetPort": port},
        ]},
    });
    ensure(
        &Api::<Service>::namespaced(client.clone(), NAMESPACE),
        NAME,
        service,
        |_| false,
    )
    .await?;
    let addresses: Vec<String> = server.iter().map(|s| s.ip().to_string()).collect();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": {
            "kubernetes.io/service-name": NAME, MANAGED_BY: MANAGER,
        }},
        "addressType": "IPv4",
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        "endpoints": addresses.iter()
            .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
            .collect::<Vec<_>>(),
    });
    let want = addresses.clone();
    ensure(
        &Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE),
        NAME,
        slice,
        |s| {
            let have: Vec<String> = s
                .endpoints
                .iter()
                .flat_map(|e| e.addresses.clone())
                .collect();
            have != want
                || s.ports.iter().flatten().map(|p| p.port).collect::<Vec<_>>()
                    != vec![Some(i32::from(port))]
        },
    )
    .await?;
    let subsets = if addresses.is_empty() {
        json!([])
    } else {
        json!([{
            "addresses": addresses.iter().map(|a| json!({"ip": a})).collect::<Vec<_>>(),
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }])
    };
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "subsets": subsets,
    });
    let want = addresses;
    ensure(
        &Api::<Endpoints>::namespaced(client.clone(), NAMESPACE),
        NAME,
        endpoints,
        |e| {
            let have: Vec<String> = e
                .subsets
                .iter()
                .flatten()
                .flat_map(|s| s.addresses.iter().flatten().map(|a| a.ip.clone()))
                .collect();
            have != want
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn first_address_and_reachable_advertise_address() {
        assert_eq!(
            service_ip("10.96.0.0/12".parse().unwrap()),
            Ipv4Addr::new(10, 96, 0, 1)
        );
        let on = |s: &str| advertise(s.parse().unwrap());
        assert_eq!(
            on("10.9.0.254:6443"),
            Some("10.9.0.254:6443".parse().unwrap())
        );
        assert_eq!(on("127.0.0.1:6443"), None, "pods cannot reach loopback");
        if let Some(any) = on("0.0.0.0:6443") {
            assert!(!any.ip().is_loopback());
            assert_eq!(any.port(), 6443);
        }
    }
}
