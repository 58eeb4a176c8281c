//! ClusterIP and NodePort allocation for Services, kept in the store as upstream's
//! API server does: one key per allocated address
//! (`/registry/ranges/serviceips/<ip>`) or port
//! (`/registry/ranges/servicenodeports/<port>`), claimed with an atomic create, so
//! nothing is handed out twice — not across restarts, not across several API servers
//! on one etcd.
//!
//! # Guarantees and limits
//! An allocation is released when its Service is deleted or stops needing it. A
//! crash between claiming an address and storing the Service leaks the address until
//! a repair loop exists (upstream runs one; Sextant does not yet).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::{
    status::{ApiError, Cause},
    storage::{self, ListOptions, Store},
};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";
/// Random tries before falling back to a scan of what is taken.
const RANDOM_TRIES: usize = 16;

/// The ranges Services draw from (`--service-cluster-ip-range`,
/// `--service-node-port-range`).
#[derive(Clone, Debug)]
pub struct Ranges {
    /// ClusterIP range; its first address is kept for the `kubernetes` Service.
    pub cluster_ips: Ipv4Net,
    /// NodePort range, inclusive.
    pub node_ports: (u16, u16),
}

impl Default for Ranges {
    fn default() -> Self {
        // kubeadm's defaults.
        Self {
            cluster_ips: Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12).unwrap_or_default(),
            node_ports: (30000, 32767),
        }
    }
}

fn invalid(field: &str, value: &Value, message: &str) -> ApiError {
    ApiError::invalid(
        "",
        "Service",
        "",
        vec![Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {message}"),
            field: field.into(),
        }],
    )
}

/// What a Service needs: a ClusterIP unless headless or ExternalName, node ports
/// for NodePort and LoadBalancer types.
fn needs(svc: &Value) -> (bool, bool) {
    let kind = svc["spec"]["type"].as_str().unwrap_or("ClusterIP");
    let headless = svc["spec"]["clusterIP"].as_str() == Some("None");
    (
        kind != "ExternalName" && !headless,
        matches!(kind, "NodePort" | "LoadBalancer"),
    )
}

async fn claim(store: &dyn Store, key: String, owner: &str) -> Result<bool, ApiError> {
    match store
        .create(&key, json!({"owner": owner}).to_string().into_bytes())
        .await
    {
        Ok(_) => Ok(true),
        Err(storage::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn release(store: &dyn Store, key: &str) {
    match store.delete(key, None).await {
        Ok(_) | Err(storage::Error::NotFound { .. }) => {}
        Err(e) => tracing::warn!(key, error = %e, "releasing a service allocation"),
    }
}

async fn taken(store: &dyn Store, prefix: &str) -> Result<Vec<String>, ApiError> {
    let page = store
        .list(&ListOptions {
            prefix: prefix.to_owned(),
            ..Default::default()
        })
        .await?;
    Ok(page
        .items
        .into_iter()
        .filter_map(|kv| kv.key.strip_prefix(prefix).map(str::to_owned))
        .collect())
}

impl Ranges {
    async fn allocate_ip(&self, store: &dyn Store, owner: &str) -> Result<Ipv4Addr, ApiError> {
        let base = u32::from(self.cluster_ips.network());
        // Skip the network address and the first host (the `kubernetes` Service).
        let size = 1u64 << (32 - u32::from(self.cluster_ips.prefix_len()));
        let usable = size.saturating_sub(3).max(1);
        let at = |offset: u64| {
            Ipv4Addr::from(base.wrapping_add(u32::try_from(offset + 2).unwrap_or(u32::MAX)))
        };
        for _ in 0..RANDOM_TRIES {
            let ip = at(rand::random_range(0..usable));
            if claim(store, format!("{IP_PREFIX}{ip}"), owner).await? {
                return Ok(ip);
            }
        }
        let used = taken(store, IP_PREFIX).await?;
        for offset in 0..usable {
            let ip = at(offset);
            if !used.contains(&ip.to_string())
                && claim(store, format!("{IP_PREFIX}{ip}"), owner).await?
            {
                return Ok(ip);
            }
        }
        Err(ApiError::internal(format!(
            "no ClusterIP left in {}",
            self.cluster_ips
        )))
    }

    async fn allocate_port(&self, store: &dyn Store, owner: &str) -> Result<u16, ApiError> {
        let (lo, hi) = self.node_ports;
        for _ in 0..RANDOM_TRIES {
            let port = rand::random_range(lo..=hi);
            if claim(store, format!("{PORT_PREFIX}{port}"), owner).await? {
                return Ok(port);
            }
        }
        let used = taken(store, PORT_PREFIX).await?;
        for port in lo..=hi {
            if !used.contains(&port.to_string())
                && claim(store, format!("{PORT_PREFIX}{port}"), owner).await?
            {
                return Ok(port);
            }
        }
        Err(ApiError::internal(format!("no NodePort left in {lo}-{hi}")))
    }

    /// Allocates what a new Service needs and fills `spec.clusterIP(s)` and the
    /// ports' `nodePort`; returns the keys claimed, to release if the create fails.
    pub async fn on_create(
        &self,
        store: &dyn Store,
        svc: &mut Value,
        owner: &str,
    ) -> Result<Vec<String>, ApiError> {
        let mut claimed = Vec::new();
        let result = self.fill(store, svc, None, owner, &mut claimed).await;
        if result.is_err() {
            for k in &claimed {
                release(store, k).await;
            }
        }
        result.map(|()| claimed)
    }

    /// Keeps the old Service's allocations on update (the ClusterIP may not change),
    /// allocates what the new one needs, and releases what it no longer uses.
    pub async fn on_update(
        &self,
        store: &dyn Store,
        old: &Value,
        svc: &mut Value,
        owner: &str,
    ) -> Result<Vec<String>, ApiError> {
        let mut claimed = Vec::new();
        let result = self.fill(store, svc, Some(old), owner, &mut claimed).await;
        if result.is_err() {
            for k in &claimed {
                release(store, k).await;
            }
        }
        result.map(|()| claimed)
    }

    /// Keys of what `old` holds and `new` no longer does; release them after the
    /// update is stored.
    pub fn no_longer_used(old: &Value, new: &Value) -> Vec<String> {
        let keep = Self::keys_of(new);
        Self::keys_of(old)
            .into_iter()
            .filter(|k| !keep.contains(k))
            .collect()
    }

    /// Releases everything a deleted Service held.
    pub async fn on_delete(store: &dyn Store, svc: &Value) {
        for k in Self::keys_of(svc) {
            release(store, &k).await;
        }
    }

    /// Releases keys claimed for a write that then failed.
    pub async fn release_all(store: &dyn Store, keys: &[String]) {
        for k in keys {
            release(store, k).await;
        }
    }

    fn keys_of(svc: &Value) -> Vec<String> {
        let mut keys = Vec::new();
        if let Some(ip) = svc["spec"]["clusterIP"]
            .as_str()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        {
            keys.push(format!("{IP_PREFIX}{ip}"));
        }
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(n) = p["nodePort"].as_u64().filter(|n| *n > 0) {
                keys.push(format!("{PORT_PREFIX}{n}"));
            }
        }
        keys
    }

    async fn fill(
        &self,
        store: &dyn Store,
        svc: &mut Value,
        old: Option<&Value>,
        owner: &str,
        claimed: &mut Vec<String>,
    ) -> Result<(), ApiError> {
        let (wants_ip, wants_ports) = needs(svc);
        let old_ip = old
            .and_then(|o| o["spec"]["clusterIP"].as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let asked = svc["spec"]["clusterIP"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if wants_ip {
            let ip = match (&old_ip, &asked) {
                (Some(old), Some(new)) if old != new && old != "None" => {
                    return Err(invalid(
                        "spec.clusterIPs[0]",
                        &json!(new),
                        "may not change once set",
                    ));
                }
                (Some(old), _) if old != "None" => old.clone(),
                (_, Some(new)) => {
                    let addr: Ipv4Addr = new.parse().map_err(|_| {
                        invalid(
                            "spec.clusterIPs[0]",
                            &json!(new),
                            "must be a valid IP address",
                        )
                    })?;
                    if !self.cluster_ips.contains(&addr) {
                        return Err(invalid(
                            "spec.clusterIPs[0]",
                            &json!(new),
                            &format!(
                                "failed to allocate IP {new}: the provided IP ({new}) is not in the valid range. The range of valid IPs is {}",
                                self.cluster_ips
                            ),
                        ));
                    }
                    let key = format!("{IP_PREFIX}{addr}");
                    if !claim(store, key.clone(), owner).await? {
                        return Err(invalid(
                            "spec.clusterIPs",
                            &json!([new]),
                            &format!(
                                "failed to allocate IP {new}: provided IP is already allocated"
                            ),
                        ));
                    }
                    claimed.push(key);
                    new.clone()
                }
                (_, None) => {
                    let ip = self.allocate_ip(store, owner).await?;
                    claimed.push(format!("{IP_PREFIX}{ip}"));
                    ip.to_string()
                }
            };
            svc["spec"]["clusterIP"] = json!(ip);
            svc["spec"]["clusterIPs"] = json!([ip]);
            svc["spec"]["ipFamilies"] = json!(["IPv4"]);
            svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
        } else if svc["spec"]["type"].as_str() == Some("ExternalName") {
            if let Some(spec) = svc["spec"].as_object_mut() {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        } else {
            svc["spec"]["clusterIPs"] = json!(["None"]);
        }

        let old_ports: Vec<Value> = old
            .and_then(|o| o["spec"]["ports"].as_array().cloned())
            .unwrap_or_default();
        let Some(ports) = svc["spec"]["ports"].as_array_mut() else {
            return Ok(());
        };
        for (i, p) in ports.iter_mut().enumerate() {
            if !p.is_object() {
                continue;
            }
            let protocol = p["protocol"].as_str().unwrap_or("TCP").to_owned();
            p["protocol"] = json!(protocol);
            if p["targetPort"].is_null() && !p["port"].is_null() {
                p["targetPort"] = p["port"].clone();
            }
            if !wants_ports {
                if let Some(o) = p.as_object_mut() {
                    o.remove("nodePort");
                }
                continue;
            }
            let asked = p["nodePort"].as_u64().filter(|n| *n > 0);
            let previous = old_ports
                .iter()
                .find(|o| {
                    o["port"] == p["port"] && o["protocol"].as_str().unwrap_or("TCP") == protocol
                })
                .and_then(|o| o["nodePort"].as_u64())
                .filter(|n| *n > 0);
            let port = match (asked, previous) {
                (Some(a), Some(prev)) if a == prev => a,
                (None, Some(prev)) => prev,
                (Some(a), _) => {
                    let (lo, hi) = self.node_ports;
                    let in_range = u16::try_from(a).ok().filter(|a| (lo..=hi).contains(a));
                    let Some(a16) = in_range else {
                        return Err(invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            &json!(a),
                            &format!(
                                "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                            ),
                        ));
                    };
                    let key = format!("{PORT_PREFIX}{a16}");
                    if !claim(store, key.clone(), owner).await? {
                        return Err(invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            &json!(a),
                            "provided port is already allocated",
                        ));
                    }
                    claimed.push(key);
                    a
                }
                (None, None) => {
                    let port = self.allocate_port(store, owner).await?;
                    claimed.push(format!("{PORT_PREFIX}{port}"));
                    u64::from(port)
                }
            };
            p["nodePort"] = json!(port);
        }
        Ok(())
    }
}
