//! `Table` responses (`meta.k8s.io/v1`) for `kubectl get`: upstream's columns per
//! kind, ages as upstream's human durations, and each row's object as
//! `PartialObjectMetadata`.

use serde_json::{Value, json};

use crate::resources::ResourceType;
use sextant_apimachinery::duration::human_duration;

struct Column {
    name: &'static str,
    kind: &'static str,
    description: &'static str,
    /// 0 = always shown; 1 = only with `-o wide`.
    priority: u8,
    cell: fn(&Value) -> Value,
}

fn name(o: &Value) -> Value {
    o["metadata"]["name"].clone()
}

fn age(o: &Value) -> Value {
    let Some(ts) = o["metadata"]["creationTimestamp"].as_str() else {
        return json!("<unknown>");
    };
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => json!(human_duration(
            jiff::Timestamp::now().as_second() - t.as_second()
        )),
        Err(_) => json!("<unknown>"),
    }
}

fn count(v: &Value) -> usize {
    v.as_object().map(serde_json::Map::len).unwrap_or(0)
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    description: "Name must be unique within a namespace.",
    priority: 0,
    cell: name,
};
const AGE: Column = Column {
    name: "Age",
    kind: "string",
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    priority: 0,
    cell: age,
};

/// A column described by its name only (kubectl shows no descriptions).
fn column(
    name: &'static str,
    kind: &'static str,
    priority: u8,
    cell: fn(&Value) -> Value,
) -> Column {
    Column {
        name,
        kind,
        description: "",
        priority,
        cell,
    }
}

/// Access modes as kubectl abbreviates them (`RWO,ROX`).
fn access_modes(modes: &Value) -> Value {
    let short: Vec<&str> = modes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect();
    json!(short.join(","))
}

fn columns(rt: &ResourceType) -> Vec<Column> {
    match (rt.group, rt.kind) {
        ("", "Namespace") => vec![
            NAME,
            Column {
                name: "Status",
                kind: "string",
                description: "The status of the namespace",
                priority: 0,
                cell: |o| json!(o["status"]["phase"].as_str().unwrap_or("Active")),
            },
            AGE,
        ],
        ("", "ConfigMap") => vec![
            NAME,
            Column {
                name: "Data",
                kind: "string",
                description: "Data contains the configuration data.",
                priority: 0,
                cell: |o| json!(count(&o["data"]) + count(&o["binaryData"])),
            },
            AGE,
        ],
        ("", "Secret") => vec![
            NAME,
            Column {
                name: "Type",
                kind: "string",
                description: "The type of secret",
                priority: 0,
                cell: |o| json!(o["type"].as_str().unwrap_or("Opaque")),
            },
            Column {
                name: "Data",
                kind: "string",
                description: "Data contains the secret data.",
                priority: 0,
                cell: |o| json!(count(&o["data"])),
            },
            AGE,
        ],
        ("", "Service") => vec![
            NAME,
            Column {
                name: "Type",
                kind: "string",
                description: "type determines how the Service is exposed.",
                priority: 0,
                cell: |o| json!(o["spec"]["type"].as_str().unwrap_or("ClusterIP")),
            },
            Column {
                name: "Cluster-IP",
                kind: "string",
                description: "clusterIP is the IP address of the service.",
                priority: 0,
                cell: |o| json!(o["spec"]["clusterIP"].as_str().unwrap_or("<none>")),
            },
            Column {
                name: "External-IP",
                kind: "string",
                description: "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
                priority: 0,
                cell: |o| {
                    let ips: Vec<&str> = o["spec"]["externalIPs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    match (o["spec"]["type"].as_str(), ips.is_empty()) {
                        (Some("ExternalName"), _) => {
                            json!(o["spec"]["externalName"].as_str().unwrap_or("<none>"))
                        }
                        (Some("LoadBalancer"), true) => json!("<pending>"),
                        (_, true) => json!("<none>"),
                        (_, false) => json!(ips.join(",")),
                    }
                },
            },
            Column {
                name: "Port(s)",
                kind: "string",
                description: "The list of ports that are exposed by this service.",
                priority: 0,
                cell: |o| {
                    let ports: Vec<String> = o["spec"]["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            let proto = p["protocol"].as_str().unwrap_or("TCP");
                            match p["nodePort"].as_u64() {
                                Some(n) => format!("{}:{n}/{proto}", p["port"]),
                                None => format!("{}/{proto}", p["port"]),
                            }
                        })
                        .collect();
                    json!(if ports.is_empty() {
                        "<none>".to_owned()
                    } else {
                        ports.join(",")
                    })
                },
            },
            AGE,
            Column {
                name: "Selector",
                kind: "string",
                description: "Route service traffic to pods with label keys and values matching this selector.",
                priority: 1,
                cell: |o| {
                    let s = label_string(&o["spec"]["selector"]);
                    json!(if s.is_empty() { "<none>".to_owned() } else { s })
                },
            },
        ],
        ("", "Pod") => vec![
            NAME,
            Column {
                name: "Ready",
                kind: "string",
                description: "The aggregate readiness state of this pod for accepting traffic.",
                priority: 0,
                cell: |o| {
                    let statuses = o["status"]["containerStatuses"].as_array();
                    let ready = statuses
                        .map(|s| s.iter().filter(|c| c["ready"] == true).count())
                        .unwrap_or(0);
                    let total = o["spec"]["containers"]
                        .as_array()
                        .map(Vec::len)
                        .unwrap_or(0);
                    json!(format!("{ready}/{total}"))
                },
            },
            Column {
                name: "Status",
                kind: "string",
                description: "The aggregate status of the containers in this pod.",
                priority: 0,
                cell: |o| {
                    if !o["metadata"]["deletionTimestamp"].is_null() {
                        return json!("Terminating");
                    }
                    let waiting = o["status"]["containerStatuses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find_map(|c| {
                            c["state"]["waiting"]["reason"]
                                .as_str()
                                .or(c["state"]["terminated"]["reason"].as_str())
                        });
                    json!(
                        waiting
                            .or(o["status"]["reason"].as_str())
                            .or(o["status"]["phase"].as_str())
                            .unwrap_or("Pending")
                    )
                },
            },
            Column {
                name: "Restarts",
                kind: "string",
                description: "The number of times the containers in this pod have been restarted.",
                priority: 0,
                cell: |o| {
                    json!(
                        o["status"]["containerStatuses"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                            .sum::<i64>()
                    )
                },
            },
            AGE,
            Column {
                name: "IP",
                kind: "string",
                description: "IP address allocated to the pod.",
                priority: 1,
                cell: |o| json!(o["status"]["podIP"].as_str().unwrap_or("<none>")),
            },
            Column {
                name: "Node",
                kind: "string",
                description: "Name of the node the pod is assigned to.",
                priority: 1,
                cell: |o| json!(o["spec"]["nodeName"].as_str().unwrap_or("<none>")),
            },
        ],
        ("", "Node") => vec![
            NAME,
            Column {
                name: "Status",
                kind: "string",
                description: "The status of the node",
                priority: 0,
                cell: |o| {
                    let ready = o["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|c| c["type"] == "Ready");
                    let mut s = match ready.and_then(|c| c["status"].as_str()) {
                        Some("True") => "Ready".to_owned(),
                        Some(_) => "NotReady".to_owned(),
                        None => "Unknown".to_owned(),
                    };
                    if o["spec"]["unschedulable"] == true {
                        s.push_str(",SchedulingDisabled");
                    }
                    json!(s)
                },
            },
            Column {
                name: "Roles",
                kind: "string",
                description: "The roles of the node",
                priority: 0,
                cell: |o| {
                    let roles: Vec<&str> = o["metadata"]["labels"]
                        .as_object()
                        .map(|m| {
                            m.keys()
                                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                                .collect()
                        })
                        .unwrap_or_default();
                    json!(if roles.is_empty() {
                        "<none>".to_owned()
                    } else {
                        roles.join(",")
                    })
                },
            },
            AGE,
            Column {
                name: "Version",
                kind: "string",
                description: "Kubelet Version reported by the node.",
                priority: 0,
                cell: |o| {
                    json!(
                        o["status"]["nodeInfo"]["kubeletVersion"]
                            .as_str()
                            .unwrap_or("")
                    )
                },
            },
        ],
        ("apps", "ReplicaSet") => vec![
            NAME,
            Column {
                name: "Desired",
                kind: "integer",
                description: "Number of desired pods.",
                priority: 0,
                cell: |o| json!(o["spec"]["replicas"].as_i64().unwrap_or(1)),
            },
            Column {
                name: "Current",
                kind: "integer",
                description: "Number of actual replicas.",
                priority: 0,
                cell: |o| json!(o["status"]["replicas"].as_i64().unwrap_or(0)),
            },
            Column {
                name: "Ready",
                kind: "integer",
                description: "Number of ready replicas.",
                priority: 0,
                cell: |o| json!(o["status"]["readyReplicas"].as_i64().unwrap_or(0)),
            },
            AGE,
        ],
        ("batch", "Job") => vec![
            NAME,
            Column {
                name: "Status",
                kind: "string",
                description: "Status of the job.",
                priority: 0,
                cell: |o| {
                    let done = |t: &str| {
                        o["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == t && c["status"] == "True")
                    };
                    json!(if done("Complete") {
                        "Complete"
                    } else if done("Failed") {
                        "Failed"
                    } else {
                        "Running"
                    })
                },
            },
            Column {
                name: "Completions",
                kind: "string",
                description: "The desired number of successfully finished pods the job should be run with.",
                priority: 0,
                cell: |o| {
                    json!(format!(
                        "{}/{}",
                        o["status"]["succeeded"].as_i64().unwrap_or(0),
                        o["spec"]["completions"].as_i64().unwrap_or(1)
                    ))
                },
            },
            AGE,
        ],
        ("", "Event") => vec![
            Column {
                name: "Last Seen",
                kind: "string",
                description: "The time since the last occurrence.",
                priority: 0,
                cell: |o| {
                    let ts = o["lastTimestamp"]
                        .as_str()
                        .or(o["eventTime"].as_str())
                        .or(o["metadata"]["creationTimestamp"].as_str());
                    match ts.and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
                        Some(t) => json!(human_duration(
                            jiff::Timestamp::now().as_second() - t.as_second()
                        )),
                        None => json!("<unknown>"),
                    }
                },
            },
            Column {
                name: "Type",
                kind: "string",
                description: "Type of this event.",
                priority: 0,
                cell: |o| json!(o["type"].as_str().unwrap_or("")),
            },
            Column {
                name: "Reason",
                kind: "string",
                description: "Short, machine understandable reason.",
                priority: 0,
                cell: |o| json!(o["reason"].as_str().unwrap_or("")),
            },
            Column {
                name: "Object",
                kind: "string",
                description: "The object this event is about.",
                priority: 0,
                cell: |o| {
                    let kind = o["involvedObject"]["kind"]
                        .as_str()
                        .unwrap_or("")
                        .to_lowercase();
                    json!(format!(
                        "{kind}/{}",
                        o["involvedObject"]["name"].as_str().unwrap_or("")
                    ))
                },
            },
            Column {
                name: "Message",
                kind: "string",
                description: "A human-readable description.",
                priority: 0,
                cell: |o| json!(o["message"].as_str().unwrap_or("")),
            },
        ],
        ("", "ServiceAccount") => vec![
            NAME,
            Column {
                name: "Secrets",
                kind: "string",
                description: "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
                priority: 0,
                cell: |o| json!(o["secrets"].as_array().map(Vec::len).unwrap_or(0)),
            },
            AGE,
        ],
        ("apps", "Deployment") => vec![
            NAME,
            Column {
                name: "Ready",
                kind: "string",
                description: "Number of the pod with ready state",
                priority: 0,
                cell: |o| {
                    json!(format!(
                        "{}/{}",
                        o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                        o["spec"]["replicas"].as_i64().unwrap_or(1)
                    ))
                },
            },
            Column {
                name: "Up-to-date",
                kind: "string",
                description: "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
                priority: 0,
                cell: |o| json!(o["status"]["updatedReplicas"].as_i64().unwrap_or(0)),
            },
            Column {
                name: "Available",
                kind: "string",
                description: "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
                priority: 0,
                cell: |o| json!(o["status"]["availableReplicas"].as_i64().unwrap_or(0)),
            },
            AGE,
            Column {
                name: "Containers",
                kind: "string",
                description: "Names of each container in the template.",
                priority: 1,
                cell: |o| json!(containers(o, "name")),
            },
            Column {
                name: "Images",
                kind: "string",
                description: "Images referenced by each container in the template.",
                priority: 1,
                cell: |o| json!(containers(o, "image")),
            },
            Column {
                name: "Selector",
                kind: "string",
                description: "Label selector for pods.",
                priority: 1,
                cell: |o| json!(label_string(&o["spec"]["selector"]["matchLabels"])),
            },
        ],
        ("storage.k8s.io", "StorageClass") => vec![
            column("Name", "string", 0, |o| {
                let default = o["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]
                    == "true";
                let name = o["metadata"]["name"].as_str().unwrap_or_default();
                json!(if default {
                    format!("{name} (default)")
                } else {
                    name.to_owned()
                })
            }),
            column("Provisioner", "string", 0, |o| o["provisioner"].clone()),
            column("ReclaimPolicy", "string", 0, |o| {
                json!(o["reclaimPolicy"].as_str().unwrap_or("Delete"))
            }),
            column("VolumeBindingMode", "string", 0, |o| {
                json!(o["volumeBindingMode"].as_str().unwrap_or("Immediate"))
            }),
            column("AllowVolumeExpansion", "string", 0, |o| {
                json!(
                    o["allowVolumeExpansion"]
                        .as_bool()
                        .unwrap_or(false)
                        .to_string()
                )
            }),
            AGE,
        ],
        ("", "PersistentVolume") => vec![
            NAME,
            column("Capacity", "string", 0, |o| {
                o["spec"]["capacity"]["storage"].clone()
            }),
            column("Access Modes", "string", 0, |o| {
                access_modes(&o["spec"]["accessModes"])
            }),
            column("Reclaim Policy", "string", 0, |o| {
                o["spec"]["persistentVolumeReclaimPolicy"].clone()
            }),
            column("Status", "string", 0, |o| o["status"]["phase"].clone()),
            column("Claim", "string", 0, |o| {
                let r = &o["spec"]["claimRef"];
                match (r["namespace"].as_str(), r["name"].as_str()) {
                    (Some(ns), Some(n)) => json!(format!("{ns}/{n}")),
                    _ => json!(""),
                }
            }),
            column("StorageClass", "string", 0, |o| {
                json!(o["spec"]["storageClassName"].as_str().unwrap_or("<unset>"))
            }),
            column("VolumeAttributesClass", "string", 0, |_| json!("<unset>")),
            column("Reason", "string", 0, |o| {
                json!(o["status"]["reason"].as_str().unwrap_or(""))
            }),
            AGE,
            column("VolumeMode", "string", 1, |o| {
                json!(o["spec"]["volumeMode"].as_str().unwrap_or("Filesystem"))
            }),
        ],
        ("", "PersistentVolumeClaim") => vec![
            NAME,
            column("Status", "string", 0, |o| o["status"]["phase"].clone()),
            column("Volume", "string", 0, |o| {
                json!(o["spec"]["volumeName"].as_str().unwrap_or(""))
            }),
            column("Capacity", "string", 0, |o| {
                json!(o["status"]["capacity"]["storage"].as_str().unwrap_or(""))
            }),
            column("Access Modes", "string", 0, |o| {
                access_modes(&o["status"]["accessModes"])
            }),
            column("StorageClass", "string", 0, |o| {
                json!(o["spec"]["storageClassName"].as_str().unwrap_or("<unset>"))
            }),
            column("VolumeAttributesClass", "string", 0, |_| json!("<unset>")),
            AGE,
            column("VolumeMode", "string", 1, |o| {
                json!(o["spec"]["volumeMode"].as_str().unwrap_or("Filesystem"))
            }),
        ],
        ("apps", "StatefulSet") => vec![
            NAME,
            column("Ready", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                    o["spec"]["replicas"].as_i64().unwrap_or(1)
                ))
            }),
            AGE,
            column("Containers", "string", 1, |o| json!(containers(o, "name"))),
            column("Images", "string", 1, |o| json!(containers(o, "image"))),
        ],
        ("apps", "DaemonSet") => vec![
            NAME,
            column("Desired", "integer", 0, |o| {
                json!(o["status"]["desiredNumberScheduled"].as_i64().unwrap_or(0))
            }),
            column("Current", "integer", 0, |o| {
                json!(o["status"]["currentNumberScheduled"].as_i64().unwrap_or(0))
            }),
            column("Ready", "integer", 0, |o| {
                json!(o["status"]["numberReady"].as_i64().unwrap_or(0))
            }),
            column("Up-to-date", "integer", 0, |o| {
                json!(o["status"]["updatedNumberScheduled"].as_i64().unwrap_or(0))
            }),
            column("Available", "integer", 0, |o| {
                json!(o["status"]["numberAvailable"].as_i64().unwrap_or(0))
            }),
            column("Node Selector", "string", 0, |o| {
                let selector = &o["spec"]["template"]["spec"]["nodeSelector"];
                let s = label_string(selector);
                json!(if s.is_empty() { "<none>".to_owned() } else { s })
            }),
            AGE,
            column("Containers", "string", 1, |o| json!(containers(o, "name"))),
            column("Images", "string", 1, |o| json!(containers(o, "image"))),
        ],
        ("policy", "PodDisruptionBudget") => vec![
            NAME,
            column("Min Available", "string", 0, |o| {
                let v = &o["spec"]["minAvailable"];
                json!(if v.is_null() {
                    "N/A".to_owned()
                } else {
                    v.to_string().trim_matches('"').to_owned()
                })
            }),
            column("Max Unavailable", "string", 0, |o| {
                let v = &o["spec"]["maxUnavailable"];
                json!(if v.is_null() {
                    "N/A".to_owned()
                } else {
                    v.to_string().trim_matches('"').to_owned()
                })
            }),
            column("Allowed Disruptions", "integer", 0, |o| {
                json!(o["status"]["disruptionsAllowed"].as_i64().unwrap_or(0))
            }),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

/// A label map as `k=v,k2=v2` (how kubectl prints selectors).
pub(crate) fn label_string(labels: &Value) -> String {
    let parts: Vec<String> = labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    parts.join(",")
}

fn containers(o: &Value, field: &str) -> String {
    o["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c[field].as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// What each row of a Table carries in `object` (the `includeObject` parameter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Include {
    /// Nothing.
    None,
    /// A `PartialObjectMetadata` (the default).
    #[default]
    Metadata,
    /// The whole object (what `kubectl get --sort-by` asks for).
    Object,
}

impl Include {
    /// From the query parameter's value.
    pub fn from_param(p: Option<&str>) -> Self {
        match p {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// A `Table` of `items`, with list metadata when given.
pub fn table_of(
    rt: &ResourceType,
    items: &[Value],
    resource_version: Option<&str>,
    continue_token: Option<&str>,
    include: Include,
) -> Value {
    let cols = columns(rt);
    let defs: Vec<Value> = cols
        .iter()
        .map(|c| {
            let mut d = json!({"name": c.name, "type": c.kind, "format": "", "description": c.description, "priority": c.priority});
            if c.name == "Name" {
                d["format"] = json!("name");
            }
            d
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let object = match include {
                Include::None => Value::Null,
                Include::Metadata => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}),
                Include::Object => o.clone(),
            };
            json!({
                "cells": cols.iter().map(|c| (c.cell)(o)).collect::<Vec<_>>(),
                "object": object,
            })
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_show_ready_status_and_restarts() {
        let rt = crate::resources::find("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"ready": true, "restartCount": 2, "state": {"running": {}}},
                {"ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let t = table_of(rt, &[pod], None, None, Include::Metadata);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(
            (cells[1].as_str(), cells[2].as_str(), cells[3].as_i64()),
            (Some("1/2"), Some("CrashLoopBackOff"), Some(3))
        );
        assert_eq!(
            (cells[5].as_str(), cells[6].as_str()),
            (Some("10.0.0.5"), Some("n1"))
        );
    }

    #[test]
    fn rows_carry_partial_object_metadata() {
        let rt = crate::resources::find("", "v1", "configmaps").unwrap();
        let cm = json!({"metadata": {"name": "x", "creationTimestamp": "2020-01-01T00:00:00Z"}, "data": {"a": "1", "b": "2"}});
        let t = table_of(
            rt,
            std::slice::from_ref(&cm),
            Some("7"),
            None,
            Include::Metadata,
        );
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["rows"][0]["cells"][0], "x");
        assert_eq!(t["rows"][0]["cells"][1], 2);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        // includeObject=Object (kubectl get --sort-by) and None.
        let t = table_of(rt, std::slice::from_ref(&cm), None, None, Include::Object);
        assert_eq!(t["rows"][0]["object"], cm);
        let t = table_of(rt, std::slice::from_ref(&cm), None, None, Include::None);
        assert!(t["rows"][0]["object"].is_null());
    }
}
