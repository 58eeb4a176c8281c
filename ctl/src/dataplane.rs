//! `sextantctl dataplane services|endpoints|policies|ct`: what each node's eBPF
//! maps hold, read from its agent through the API server's node proxy
//! (`/api/v1/nodes/<node>/proxy/dataplane/<what>`).

use serde_json::Value;

use crate::{Error, Result, flows::nodes, output, session::Session};

/// What `dataplane` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Table {
    /// Each Service frontend (VIP, nodePort, external IP) and its backends.
    Services,
    /// The local pods the node delivers to.
    Endpoints,
    /// The local pods' enforced policy directions.
    Policies,
    /// The tracked flows: service DNAT and reverse NAT, policy-tracked flows,
    /// and XDP's NodePort NAT.
    Ct,
}

/// The arguments of `dataplane`.
#[derive(Clone, Debug, clap::Args)]
pub struct DataplaneArgs {
    /// Which map.
    #[arg(value_enum)]
    pub table: Table,
    /// Only this node (default: every node).
    #[arg(long)]
    pub node: Option<String>,
    /// The rows as JSON.
    #[arg(short = 'o', long, value_parser = ["json"])]
    pub output: Option<String>,
}

/// Runs `dataplane`: one table (or JSON) of every asked node's map.
pub async fn run(session: &Session, args: &DataplaneArgs) -> Result<String> {
    let path = match args.table {
        Table::Services => "services",
        Table::Endpoints => "endpoints",
        Table::Policies => "policies",
        Table::Ct => "ct",
    };
    let mut rows: Vec<Value> = Vec::new();
    for node in nodes(session, args.node.as_deref()).await? {
        let v: Value = session
            .get(
                &format!("/api/v1/nodes/{node}/proxy/dataplane/{path}"),
                None,
            )
            .await?;
        let items = match args.table {
            Table::Policies => v["endpoints"].as_array().cloned().unwrap_or_default(),
            _ => v.as_array().cloned().unwrap_or_default(),
        };
        for mut item in items {
            item["node"] = Value::String(node.clone());
            rows.push(item);
        }
    }
    if args.output.is_some() {
        return serde_json::to_string_pretty(&rows)
            .map(|s| s + "\n")
            .map_err(|e| Error::Client(e.to_string()));
    }
    let s = |v: &Value, k: &str| match &v[k] {
        Value::String(s) if s.is_empty() => "<none>".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "<none>".to_owned(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(","),
        Value::Bool(b) => if *b { "enforced" } else { "-" }.to_owned(),
        other => other.to_string(),
    };
    let (header, keys): (&[&str], &[&str]) = match args.table {
        Table::Services => (
            &["NODE", "SERVICE", "FRONTEND", "BACKENDS"],
            &["node", "service", "frontend", "backends"],
        ),
        Table::Endpoints => (
            &["NODE", "IP", "POD", "IFINDEX"],
            &["node", "ip", "pod", "ifindex"],
        ),
        Table::Policies => (
            &["NODE", "IP", "POD", "INGRESS", "EGRESS"],
            &["node", "ip", "pod", "ingress", "egress"],
        ),
        Table::Ct => (
            &[
                "NODE",
                "PROTO",
                "SOURCE",
                "DESTINATION",
                "ACTION",
                "REWRITE",
                "FLAGS",
                "SOURCE-POD",
                "DESTINATION-POD",
            ],
            &[
                "node",
                "protocol",
                "source",
                "destination",
                "action",
                "rewrite",
                "flags",
                "source_pod",
                "destination_pod",
            ],
        ),
    };
    let mut table = vec![header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()];
    table.extend(rows.iter().map(|r| keys.iter().map(|k| s(r, k)).collect()));
    Ok(output::columns(&table))
}
