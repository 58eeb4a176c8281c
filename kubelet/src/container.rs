//! From a pod's container spec to the CRI's `ContainerConfig`: the environment
//! (values, ConfigMap and Secret keys, pod fields, resource fields, `envFrom`),
//! `$(VAR)` expansion in env, command and args, and resources as
//! `LinuxContainerResources`.

use std::collections::BTreeMap;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service, ServicePort};
use kube::{Api, Client};

use crate::{Error, labels, quantity};

/// CFS period the CPU quota is expressed in (upstream's 100 ms).
const CPU_PERIOD_US: i64 = 100_000;
/// `cpu.shares` for a container without a CPU request (upstream's minimum).
const MIN_SHARES: i64 = 2;

/// A problem with the pod's own configuration: shown as the container's waiting
/// reason `CreateContainerConfigError` and retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

/// Resolves the container's environment in the order upstream does: `envFrom`
/// first, then `env` (later entries win), with `$(VAR)` expanded against what
/// precedes.
pub async fn environment(
    client: &Client,
    pod: &Pod,
    c: &Container,
) -> Result<Result<Vec<(String, String)>, ConfigError>, Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };
    // Service variables first: envFrom and env override them.
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut services = Vec::new();
    if links {
        services = Api::<Service>::namespaced(client.clone(), ns)
            .list(&Default::default())
            .await?
            .items;
    }
    if let Some(master) = Api::<Service>::namespaced(client.clone(), "default")
        .get_opt("kubernetes")
        .await?
        && !(links && ns == "default")
    {
        services.push(master);
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in service_env(&services) {
        set(&mut env, k, v);
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let optional = r.optional.unwrap_or(false);
            match config_map(client, ns, &r.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if optional => {}
                None => {
                    return Ok(Err(ConfigError(format!(
                        "configmap \"{}\" not found",
                        r.name
                    ))));
                }
            }
        }
        if let Some(r) = &from.secret_ref {
            let optional = r.optional.unwrap_or(false);
            match secret(client, ns, &r.name).await? {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if optional => {}
                None => return Ok(Err(ConfigError(format!("secret \"{}\" not found", r.name)))),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (_, Some(from)) => {
                if let Some(r) = &from.config_map_key_ref {
                    let value = config_map(client, ns, &r.name)
                        .await?
                        .and_then(|cm| cm.data.unwrap_or_default().remove(&r.key));
                    match value {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Ok(Err(ConfigError(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            ))));
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let value = secret(client, ns, &r.name)
                        .await?
                        .and_then(|s| s.data.unwrap_or_default().remove(&r.key));
                    match value {
                        Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Ok(Err(ConfigError(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            ))));
                        }
                    }
                } else if let Some(f) = &from.field_ref {
                    match field(pod, &f.field_path) {
                        Some(v) => v,
                        None => {
                            return Ok(Err(ConfigError(format!(
                                "unsupported fieldPath {}",
                                f.field_path
                            ))));
                        }
                    }
                } else if let Some(r) = &from.resource_field_ref {
                    resource_field(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()))
                } else {
                    String::new()
                }
            }
            (Some(v), None) => expand(v, &env),
            (None, None) => String::new(),
        };
        set(&mut env, e.name.clone(), value);
    }
    Ok(Ok(env))
}

/// Upstream's service environment variables (the docker-links form) for each
/// Service with a ClusterIP: `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<PORT
/// NAME>]`, `<NAME>_PORT` and `<NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]`.
pub fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let upper = |s: &str| s.to_uppercase().replace('-', "_");
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let name = upper(svc.metadata.name.as_deref().unwrap_or_default());
        out.push((format!("{name}_SERVICE_HOST"), ip.to_owned()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in ports {
            if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{name}_SERVICE_PORT_{}", upper(port_name)),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &ServicePort| p.protocol.clone().unwrap_or_else(|| "TCP".into());
        out.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
        ));
        for p in ports {
            let (proto, port) = (proto(p), p.port);
            let prefix = format!("{name}_PORT_{port}_{}", proto.to_uppercase());
            out.push((
                prefix.clone(),
                format!("{}://{ip}:{port}", proto.to_lowercase()),
            ));
            out.push((format!("{prefix}_PROTO"), proto.to_lowercase()));
            out.push((format!("{prefix}_PORT"), port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.to_owned()));
        }
    }
    out
}

async fn config_map(client: &Client, ns: &str, name: &str) -> Result<Option<ConfigMap>, Error> {
    Ok(Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?)
}

async fn secret(client: &Client, ns: &str, name: &str) -> Result<Option<Secret>, Error> {
    Ok(Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?)
}

/// The downward API's `fieldRef` paths.
pub fn field(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let map_key = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.as_ref()?.get(key).cloned().unwrap_or_default())
    };
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.podIPs" => status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| {
                ips.iter()
                    .map(|i| i.ip.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        p if p.starts_with("metadata.labels['") => map_key("metadata.labels['", &meta.labels)?,
        p if p.starts_with("metadata.annotations['") => {
            map_key("metadata.annotations['", &meta.annotations)?
        }
        _ => return None,
    })
}

/// `resourceFieldRef`: a container's request or limit in units of `divisor`;
/// an unset limit is reported as the node's capacity upstream — here as 0 for
/// requests and the empty string for limits, which users do not rely on.
fn resource_field(c: &Container, resource: &str, divisor: Option<&str>) -> String {
    let Some((kind, name)) = resource.split_once('.') else {
        return String::new();
    };
    let res = c.resources.as_ref();
    let map = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => None,
    };
    let Some(q) = map.and_then(|m| m.get(name)) else {
        return if kind == "requests" {
            "0".into()
        } else {
            String::new()
        };
    };
    let (value, unit) = if name == "cpu" {
        (
            quantity::millicores(&q.0),
            divisor.and_then(quantity::millicores).unwrap_or(1000),
        )
    } else {
        (
            quantity::bytes(&q.0),
            divisor.and_then(quantity::bytes).unwrap_or(1),
        )
    };
    match value {
        // Rounded up, as upstream's ExtractContainerResourceValue.
        Some(v) if unit > 0 => (v.saturating_add(unit - 1) / unit).to_string(),
        _ => String::new(),
    }
}

/// Expands `$(VAR)` with the variables defined so far; `$$(VAR)` escapes to a
/// literal `$(VAR)`; unknown references stay as they are (upstream's rules).
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// CPU and memory limits and CPU request → cgroup settings, as upstream computes them.
pub fn resources(c: &Container) -> cri::LinuxContainerResources {
    let res = c.resources.as_ref();
    let get = |limits: bool, name: &str| {
        let map = if limits {
            res.and_then(|r| r.limits.as_ref())
        } else {
            res.and_then(|r| r.requests.as_ref())
        };
        map.and_then(|m| m.get(name)).map(|q| q.0.clone())
    };
    // A limit without a request requests the limit (upstream's defaulting).
    let cpu_request = get(false, "cpu").or_else(|| get(true, "cpu"));
    let shares = cpu_request
        .as_deref()
        .and_then(quantity::millicores)
        .map_or(MIN_SHARES, |m| (m * 1024 / 1000).max(MIN_SHARES));
    let quota = get(true, "cpu")
        .as_deref()
        .and_then(quantity::millicores)
        .map_or(0, |m| (m * CPU_PERIOD_US / 1000).max(1000));
    let memory = get(true, "memory")
        .as_deref()
        .and_then(quantity::bytes)
        .unwrap_or(0);
    cri::LinuxContainerResources {
        cpu_period: if quota > 0 { CPU_PERIOD_US } else { 0 },
        cpu_quota: quota,
        cpu_shares: shares,
        memory_limit_in_bytes: memory,
        ..Default::default()
    }
}

/// Where the container writes its termination message (upstream's default).
pub fn termination_message_path(c: &Container) -> &str {
    c.termination_message_path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or("/dev/termination-log")
}

/// The CRI config for attempt `attempt` of container `c` of `pod`.
pub fn config(
    pod: &Pod,
    c: &Container,
    attempt: u32,
    env: &[(String, String)],
) -> cri::ContainerConfig {
    let expand_all = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter().flatten().map(|s| expand(s, env)).collect()
    };
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: expand_all(&c.command),
        args: expand_all(&c.args),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: env
            .iter()
            .map(|(k, v)| cri::KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        labels: labels::container(pod, &c.name),
        annotations: [
            (labels::RESTART_COUNT.to_owned(), attempt.to_string()),
            (
                labels::TERMINATION_MESSAGE_PATH.to_owned(),
                termination_message_path(c).to_owned(),
            ),
            (
                labels::TERMINATION_MESSAGE_POLICY.to_owned(),
                c.termination_message_policy
                    .clone()
                    .unwrap_or_else(|| "File".into()),
            ),
        ]
        .into(),
        // Relative to the sandbox's log directory, as upstream lays logs out.
        log_path: format!("{}/{attempt}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources(c)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use serde_json::json;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn services_become_upstreams_variables() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "my-web"},
            "spec": {"clusterIP": "10.96.0.7", "ports": [
                {"name": "http", "port": 80},
                {"port": 53, "protocol": "UDP"},
            ]},
        }))
        .unwrap();
        let headless: Service = serde_json::from_value(json!({
            "metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]},
        }))
        .unwrap();
        let e: std::collections::BTreeMap<String, String> =
            service_env(&[svc, headless]).into_iter().collect();
        assert_eq!(e["MY_WEB_SERVICE_HOST"], "10.96.0.7");
        assert_eq!(e["MY_WEB_SERVICE_PORT"], "80");
        assert_eq!(e["MY_WEB_SERVICE_PORT_HTTP"], "80");
        assert_eq!(e["MY_WEB_PORT"], "tcp://10.96.0.7:80");
        assert_eq!(e["MY_WEB_PORT_53_UDP"], "udp://10.96.0.7:53");
        assert_eq!(e["MY_WEB_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(e["MY_WEB_PORT_80_TCP_ADDR"], "10.96.0.7");
        assert!(!e.keys().any(|k| k.starts_with("DB_")), "headless: none");
    }

    #[test]
    fn expansion_follows_upstream() {
        let e = env(&[("A", "x"), ("B", "y")]);
        assert_eq!(expand("$(A)-$(B)", &e), "x-y");
        assert_eq!(expand("$$(A)", &e), "$(A)");
        assert_eq!(expand("$(C) $A $", &e), "$(C) $A $");
        assert_eq!(expand("$(A", &e), "$(A");
    }

    #[test]
    fn limits_become_cgroup_settings() {
        let c: Container = serde_json::from_value(json!({
            "name": "c",
            "resources": {"limits": {"cpu": "500m", "memory": "32Mi"}},
        }))
        .unwrap();
        let r = resources(&c);
        assert_eq!(
            (r.cpu_period, r.cpu_quota, r.cpu_shares),
            (100_000, 50_000, 512)
        );
        assert_eq!(r.memory_limit_in_bytes, 32 * 1024 * 1024);
        let none = resources(&Container::default());
        assert_eq!(
            (none.cpu_quota, none.cpu_shares, none.memory_limit_in_bytes),
            (0, 2, 0)
        );
    }

    #[test]
    fn downward_api_fields() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"podIP": "10.0.0.5"},
        }))
        .unwrap();
        assert_eq!(field(&pod, "metadata.name").as_deref(), Some("p"));
        assert_eq!(field(&pod, "status.podIP").as_deref(), Some("10.0.0.5"));
        assert_eq!(
            field(&pod, "metadata.labels['app']").as_deref(),
            Some("web")
        );
        assert_eq!(field(&pod, "spec.nope"), None);
        let c: Container = serde_json::from_value(
            json!({"name": "c", "resources": {"limits": {"memory": "64Mi"}}}),
        )
        .unwrap();
        assert_eq!(resource_field(&c, "limits.memory", Some("1Mi")), "64");
        let _ = Quantity("1".into());
    }
}
