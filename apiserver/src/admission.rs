//! Admission that needs other objects from the store (defaulting that needs
//! none is in `defaults.rs`), run on create in upstream's order:
//!
//! - LimitRanger: container defaults and min/max from `Container` limit ranges;
//! - Priority: a pod's `priorityClassName` resolved to `spec.priority` and
//!   `preemptionPolicy`, the `globalDefault` class (else 0) for pods that name
//!   none, an unknown class refused; the built-in classes
//!   `system-node-critical` and `system-cluster-critical` are made at start,
//!   as upstream's API server does;
//! - ResourceQuota: usage checked against every quota of the namespace and
//!   charged to it atomically.

use serde_json::{Value, json};

use crate::{
    resources,
    status::ApiError,
    storage::{self, ListOptions, Store},
};

/// The classes upstream's API server keeps in existence: (name, value, description).
pub const SYSTEM_PRIORITY_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// Creates the system priority classes that do not exist yet (idempotent).
pub async fn ensure_system_priority_classes(store: &dyn Store) -> Result<(), storage::Error> {
    let rt = resources::find("scheduling.k8s.io", "v1", "priorityclasses")
        .ok_or_else(|| storage::Error::Internal("priorityclasses are not served".into()))?;
    for (name, value, description) in SYSTEM_PRIORITY_CLASSES {
        let key = rt.key(None, name);
        if store.get(&key).await?.is_some() {
            continue;
        }
        let class = json!({
            "kind": "PriorityClass", "apiVersion": "scheduling.k8s.io/v1",
            "metadata": {"name": name, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": crate::rest::now()},
            "value": value, "globalDefault": false, "description": description,
            "preemptionPolicy": "PreemptLowerPriority",
        });
        match store.create(&key, class.to_string().into_bytes()).await {
            Ok(_) | Err(storage::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Upstream's Priority admission for a new pod.
pub async fn pod_priority(store: &dyn Store, pod: &mut Value) -> Result<(), ApiError> {
    let rt = resources::find("scheduling.k8s.io", "v1", "priorityclasses")
        .ok_or_else(|| ApiError::internal("priorityclasses are not served"))?;
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let named = pod["spec"]["priorityClassName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let class = match &named {
        Some(class_name) => {
            let Some(kv) = store.get(&rt.key(None, class_name)).await? else {
                return Err(ApiError::forbidden(format!(
                    "pods \"{name}\" is forbidden: no PriorityClass with name {class_name} was found"
                )));
            };
            Some(parse(&kv.value)?)
        }
        None => {
            let all = store
                .list(&ListOptions {
                    prefix: rt.prefix(None),
                    ..Default::default()
                })
                .await?;
            let mut default = None;
            for kv in &all.items {
                let c = parse(&kv.value)?;
                if c["globalDefault"] == true {
                    default = Some(c);
                    break;
                }
            }
            default
        }
    };
    let value = class
        .as_ref()
        .and_then(|c| c["value"].as_i64())
        .unwrap_or(0);
    if let Some(given) = pod["spec"]["priority"].as_i64()
        && given != value
    {
        return Err(ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
        )));
    }
    let Some(spec) = pod["spec"].as_object_mut() else {
        return Ok(());
    };
    spec.insert("priority".into(), json!(value));
    if let Some(c) = &class {
        if named.is_none() {
            spec.insert("priorityClassName".into(), c["metadata"]["name"].clone());
        }
        let policy = c["preemptionPolicy"]
            .as_str()
            .unwrap_or("PreemptLowerPriority");
        spec.insert("preemptionPolicy".into(), json!(policy));
    } else {
        spec.entry("preemptionPolicy")
            .or_insert_with(|| json!("PreemptLowerPriority"));
    }
    Ok(())
}

fn parse(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::internal(format!("stored PriorityClass: {e}")))
}

/// The objects of `plural` (in `group`) in namespace `ns`, with their keys and
/// mod revisions.
async fn list_in(
    store: &dyn Store,
    group: &str,
    plural: &str,
    ns: &str,
) -> Result<Vec<(storage::KeyValue, Value)>, ApiError> {
    let rt = resources::find(group, "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    let listed = store
        .list(&ListOptions {
            prefix: rt.prefix(Some(ns)),
            ..Default::default()
        })
        .await?;
    listed
        .items
        .into_iter()
        .map(|kv| {
            let v = serde_json::from_slice(&kv.value)
                .map_err(|e| ApiError::internal(format!("stored {plural}: {e}")))?;
            Ok((kv, v))
        })
        .collect()
}

/// Every container of a pod spec (init containers too), mutable.
fn containers_mut(pod: &mut Value) -> Vec<&mut Value> {
    let spec = &mut pod["spec"];
    let mut out = Vec::new();
    if let Some(obj) = spec.as_object_mut() {
        for (field, list) in obj.iter_mut() {
            if field == "containers" || field == "initContainers" {
                out.extend(list.as_array_mut().into_iter().flatten());
            }
        }
    }
    out
}

/// Upstream's LimitRanger for a new pod: each `Container` limit range fills in
/// missing limits (`default`, else `max`) and requests (`defaultRequest`, else
/// the default limit), records what it set in the `kubernetes.io/limit-ranger`
/// annotation, and refuses containers outside `min`/`max`. Then, as upstream's
/// pod defaulting, a limit without a request makes the request.
pub async fn limit_ranges(store: &dyn Store, ns: &str, pod: &mut Value) -> Result<(), ApiError> {
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let ranges = list_in(store, "", "limitranges", ns).await?;
    let mut set = Vec::new();
    let mut problems = Vec::new();
    for (_, range) in &ranges {
        for item in range["spec"]["limits"].as_array().into_iter().flatten() {
            if item["type"] != "Container" {
                continue;
            }
            let default_limit = if item["default"].is_object() {
                &item["default"]
            } else {
                &item["max"]
            };
            let default_request = if item["defaultRequest"].is_object() {
                &item["defaultRequest"]
            } else {
                default_limit
            };
            for c in containers_mut(pod) {
                let cname = c["name"].as_str().unwrap_or_default().to_owned();
                for (field, defaults, word) in [
                    ("limits", default_limit, "limit"),
                    ("requests", default_request, "request"),
                ] {
                    for (res, q) in defaults.as_object().into_iter().flatten() {
                        if c["resources"][field][res].is_null() {
                            if !c["resources"].is_object() {
                                c["resources"] = json!({});
                            }
                            if !c["resources"][field].is_object() {
                                c["resources"][field] = json!({});
                            }
                            c["resources"][field][res] = q.clone();
                            set.push(format!("{res} {word} for container {cname}"));
                        }
                    }
                }
                for (res, min) in item["min"].as_object().into_iter().flatten() {
                    let floor = min
                        .as_str()
                        .and_then(sextant_apimachinery::quantity::milli)
                        .unwrap_or(0);
                    let given = c["resources"]["requests"][res]
                        .as_str()
                        .or(c["resources"]["limits"][res].as_str());
                    match given.and_then(sextant_apimachinery::quantity::milli) {
                        Some(v) if v < floor => problems.push(format!(
                            "minimum {res} usage per Container is {}, but request is {}",
                            min.as_str().unwrap_or_default(),
                            given.unwrap_or_default()
                        )),
                        None => problems.push(format!(
                            "minimum {res} usage per Container is {}.  No request is specified",
                            min.as_str().unwrap_or_default()
                        )),
                        _ => {}
                    }
                }
                for (res, max) in item["max"].as_object().into_iter().flatten() {
                    let ceiling = max
                        .as_str()
                        .and_then(sextant_apimachinery::quantity::milli)
                        .unwrap_or(i64::MAX);
                    let given = c["resources"]["limits"][res].as_str();
                    match given.and_then(sextant_apimachinery::quantity::milli) {
                        Some(v) if v > ceiling => problems.push(format!(
                            "maximum {res} usage per Container is {}, but limit is {}",
                            max.as_str().unwrap_or_default(),
                            given.unwrap_or_default()
                        )),
                        None => problems.push(format!(
                            "maximum {res} usage per Container is {}.  No limit is specified",
                            max.as_str().unwrap_or_default()
                        )),
                        _ => {}
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        let detail = if problems.len() == 1 {
            problems.remove(0)
        } else {
            format!("[{}]", problems.join(", "))
        };
        return Err(ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: {detail}"
        )));
    }
    if !set.is_empty() {
        if !pod["metadata"]["annotations"].is_object() {
            pod["metadata"]["annotations"] = json!({});
        }
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"] =
            json!(format!("LimitRanger plugin set: {}", set.join("; ")));
    }
    for c in containers_mut(pod) {
        let limits = c["resources"]["limits"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (res, q) in limits {
            if c["resources"]["requests"][&res].is_null() {
                if !c["resources"]["requests"].is_object() {
                    c["resources"]["requests"] = json!({});
                }
                c["resources"]["requests"][&res] = q;
            }
        }
    }
    Ok(())
}

/// Upstream's ResourceQuota admission for a new object: against every quota of
/// the namespace that tracks something the object uses, refuse it when it
/// would exceed `hard` (403 "exceeded quota"), or when a quota on compute
/// resources meets a pod that does not say its own; otherwise add it to each
/// quota's `status.used` with a compare-and-swap (retried on conflict), so
/// concurrent creates cannot overshoot. The quota controller recomputes usage
/// from what exists, which also gives back what deletions free.
pub async fn resource_quota(
    store: &dyn Store,
    group: &str,
    plural: &str,
    ns: &str,
    obj: &Value,
) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let resource = if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    };
    let adds = sextant_apimachinery::quota::usage(group, plural, obj);
    for _attempt in 0..5 {
        let quotas = list_in(store, "", "resourcequotas", ns).await?;
        let mut updates = Vec::new();
        for (kv, quota) in &quotas {
            let qname = quota["metadata"]["name"].as_str().unwrap_or_default();
            let hard = quota["spec"]["hard"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let tracked: Vec<(&String, i64)> = hard
                .keys()
                .filter_map(|r| adds.get(r).map(|a| (r, *a)))
                .collect();
            if tracked.is_empty() {
                continue;
            }
            if plural == "pods" && group.is_empty() {
                let missing: Vec<&str> = tracked
                    .iter()
                    .filter(|(r, a)| {
                        *a == 0
                            && [
                                "cpu",
                                "memory",
                                "requests.cpu",
                                "requests.memory",
                                "limits.cpu",
                                "limits.memory",
                            ]
                            .contains(&r.as_str())
                    })
                    .map(|(r, _)| r.as_str())
                    .collect();
                if !missing.is_empty() {
                    return Err(ApiError::forbidden(format!(
                        "{resource} \"{name}\" is forbidden: failed quota: {qname}: must specify {}",
                        missing.join(",")
                    )));
                }
            }
            let used = &quota["status"]["used"];
            let mut requested = Vec::new();
            let mut used_list = Vec::new();
            let mut limited = Vec::new();
            let mut exceeded = false;
            let mut next_used = used.as_object().cloned().unwrap_or_default();
            for (r, add) in &tracked {
                let Some(now) = used[r.as_str()]
                    .as_str()
                    .and_then(sextant_apimachinery::quantity::milli)
                else {
                    return Err(ApiError::forbidden(format!(
                        "{resource} \"{name}\" is forbidden: status unknown for quota: {qname}, resource: {r}"
                    )));
                };
                let limit = hard[r.as_str()]
                    .as_str()
                    .and_then(sextant_apimachinery::quantity::milli)
                    .unwrap_or(0);
                if now + add > limit {
                    exceeded = true;
                    requested.push(format!(
                        "{r}={}",
                        sextant_apimachinery::quantity::format_milli(*add)
                    ));
                    used_list.push(format!(
                        "{r}={}",
                        sextant_apimachinery::quantity::format_milli(now)
                    ));
                    limited.push(format!(
                        "{r}={}",
                        hard[r.as_str()].as_str().unwrap_or_default()
                    ));
                }
                next_used.insert(
                    (*r).clone(),
                    json!(sextant_apimachinery::quantity::format_milli(now + add)),
                );
            }
            if exceeded {
                return Err(ApiError::forbidden(format!(
                    "{resource} \"{name}\" is forbidden: exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                    requested.join(","),
                    used_list.join(","),
                    limited.join(",")
                )));
            }
            let mut next = quota.clone();
            next["status"]["used"] = Value::Object(next_used);
            updates.push((kv, next));
        }
        let mut conflicted = false;
        for (kv, next) in updates {
            let bytes = serde_json::to_vec(&next)
                .map_err(|e| ApiError::internal(format!("encoding a quota: {e}")))?;
            match store.update(&kv.key, bytes, kv.mod_revision).await {
                Ok(_) => {}
                Err(storage::Error::Conflict { .. }) => {
                    conflicted = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !conflicted {
            return Ok(());
        }
    }
    Err(ApiError::too_many_requests(format!(
        "Operation cannot be fulfilled on resourcequotas: the quota was changed by others; please retry creating {resource} \"{name}\""
    )))
}
