//! `sextantctl top pods|nodes`: CPU and memory from the Metrics API
//! (`metrics.k8s.io/v1beta1`, which the API server answers from the kubelets'
//! summaries), printed as kubectl prints them.

use serde_json::Value;
use sextant_apimachinery::quantity;

use crate::{Error, Result, output, session::Session};

/// What `top` shows.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum TopCommand {
    /// CPU and memory of pods.
    #[command(alias = "pod", alias = "po")]
    Pods {
        /// One pod.
        name: Option<String>,
        /// Pods of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only pods matching this label selector.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// A line per container.
        #[arg(long)]
        containers: bool,
        /// No header line.
        #[arg(long)]
        no_headers: bool,
    },
    /// CPU and memory of nodes, and their share of what is allocatable.
    #[command(alias = "node", alias = "no")]
    Nodes {
        /// One node.
        name: Option<String>,
        /// No header line.
        #[arg(long)]
        no_headers: bool,
    },
}

const METRICS: &str = "/apis/metrics.k8s.io/v1beta1";

fn cpu(usage: &Value) -> i64 {
    usage["cpu"]
        .as_str()
        .and_then(quantity::millicores)
        .unwrap_or(0)
}

fn memory(usage: &Value) -> i64 {
    usage["memory"]
        .as_str()
        .and_then(quantity::bytes)
        .unwrap_or(0)
}

/// Runs `top`.
pub async fn run(session: &Session, command: &TopCommand) -> Result<String> {
    let unavailable = |e: Error| match e {
        Error::Server { code: 404, .. } => Error::Usage("Metrics API not available".into()),
        other => other,
    };
    match command {
        TopCommand::Pods {
            name,
            all_namespaces,
            selector,
            containers,
            no_headers,
        } => {
            let base = if *all_namespaces {
                format!("{METRICS}/pods")
            } else {
                format!("{METRICS}/namespaces/{}/pods", session.namespace)
            };
            let items: Vec<Value> = match name {
                Some(n) => vec![
                    session
                        .get(&format!("{base}/{n}"), None)
                        .await
                        .map_err(unavailable)?,
                ],
                None => session
                    .items(
                        &base,
                        &[("labelSelector", selector.as_deref().unwrap_or_default())],
                    )
                    .await
                    .map_err(unavailable)?,
            };
            if items.is_empty() {
                return Err(Error::Usage(if *all_namespaces {
                    "No resources found".into()
                } else {
                    format!("No resources found in {} namespace.", session.namespace)
                }));
            }
            let mut rows = Vec::new();
            if !no_headers {
                let mut h = Vec::new();
                if *all_namespaces {
                    h.push("NAMESPACE".to_owned());
                }
                if *containers {
                    h.push("POD".to_owned());
                }
                h.extend(["NAME", "CPU(cores)", "MEMORY(bytes)"].map(String::from));
                rows.push(h);
            }
            let mut items = items;
            items.sort_by_key(|m| {
                (
                    m["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    m["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            });
            for m in &items {
                let ns = m["metadata"]["namespace"].as_str().unwrap_or_default();
                let pod = m["metadata"]["name"].as_str().unwrap_or_default();
                let cs = m["containers"].as_array().cloned().unwrap_or_default();
                let mut lines = Vec::new();
                if *containers {
                    let mut cs = cs.clone();
                    cs.sort_by_key(|c| c["name"].as_str().unwrap_or_default().to_owned());
                    for c in cs {
                        lines.push((
                            Some(pod),
                            c["name"].as_str().unwrap_or_default().to_owned(),
                            cpu(&c["usage"]),
                            memory(&c["usage"]),
                        ));
                    }
                } else {
                    lines.push((
                        None,
                        pod.to_owned(),
                        cs.iter().map(|c| cpu(&c["usage"])).sum(),
                        cs.iter().map(|c| memory(&c["usage"])).sum(),
                    ));
                }
                for (p, n, c, mem) in lines {
                    let mut row = Vec::new();
                    if *all_namespaces {
                        row.push(ns.to_owned());
                    }
                    if let Some(p) = p {
                        row.push(p.to_owned());
                    }
                    row.extend([n, format!("{c}m"), format!("{}Mi", mem / (1024 * 1024))]);
                    rows.push(row);
                }
            }
            Ok(output::columns(&rows))
        }
        TopCommand::Nodes { name, no_headers } => {
            let items: Vec<Value> = match name {
                Some(n) => vec![
                    session
                        .get(&format!("{METRICS}/nodes/{n}"), None)
                        .await
                        .map_err(unavailable)?,
                ],
                None => session
                    .items(&format!("{METRICS}/nodes"), &[])
                    .await
                    .map_err(unavailable)?,
            };
            let nodes = session.items("/api/v1/nodes", &[]).await?;
            let allocatable = |node: &str| {
                nodes
                    .iter()
                    .find(|n| n["metadata"]["name"].as_str() == Some(node))
                    .map(|n| n["status"]["allocatable"].clone())
                    .unwrap_or(Value::Null)
            };
            let mut rows = Vec::new();
            if !no_headers {
                rows.push(
                    ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]
                        .map(String::from)
                        .to_vec(),
                );
            }
            let mut items = items;
            items.sort_by_key(|m| {
                m["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            });
            for m in &items {
                let node = m["metadata"]["name"].as_str().unwrap_or_default();
                let a = allocatable(node);
                let (c, mem) = (cpu(&m["usage"]), memory(&m["usage"]));
                let share = |used: i64, total: i64| {
                    if total > 0 {
                        format!("{}%", used * 100 / total)
                    } else {
                        "<unknown>".to_owned()
                    }
                };
                rows.push(vec![
                    node.to_owned(),
                    format!("{c}m"),
                    share(c, cpu(&a)),
                    format!("{}Mi", mem / (1024 * 1024)),
                    share(mem, memory(&a)),
                ]);
            }
            Ok(output::columns(&rows))
        }
    }
}
