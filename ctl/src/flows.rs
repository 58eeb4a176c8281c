//! `sextantctl flows`: the dataplane's flows, read from each node's agent
//! through the API server's node proxy (`/api/v1/nodes/<node>/proxy/flows`),
//! which the agent serves on its kubelet port.

use std::io::Write;

use futures::{AsyncBufReadExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Node;
use kube::{Api, ResourceExt as _, api::ListParams};
use serde_json::Value;

use crate::{Error, Result, session::Session};

/// `--verdict`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Verdict {
    /// Delivered.
    Forwarded,
    /// Dropped (no backend, or a NetworkPolicy).
    Dropped,
}

/// The arguments of `flows`.
#[derive(Clone, Debug, clap::Args)]
pub struct FlowsArgs {
    /// Keep printing new flows until interrupted.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only flows from or to this pod (`name` or `namespace/name`).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only flows sent to this Service (`name` or `namespace/name`).
    #[arg(long)]
    pub service: Option<String>,
    /// Only forwarded or only dropped flows.
    #[arg(long, value_enum)]
    pub verdict: Option<Verdict>,
    /// Only this node's flows (default: every node).
    #[arg(long)]
    pub node: Option<String>,
    /// One JSON object per flow instead of a line of text.
    #[arg(short = 'o', long, value_parser = ["json"])]
    pub output: Option<String>,
}

/// The nodes to ask: `only`, else every node.
pub(crate) async fn nodes(session: &Session, only: Option<&str>) -> Result<Vec<String>> {
    if let Some(n) = only {
        return Ok(vec![n.to_owned()]);
    }
    let list = Api::<Node>::all(session.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::from_kube(e, &session.server))?;
    Ok(list.items.iter().map(|n| n.name_any()).collect())
}

/// A flow as one line of text.
pub fn flow_line(f: &Value) -> String {
    let s = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
    let end = |pod: String, addr: String| {
        if pod.is_empty() {
            addr
        } else {
            format!("{pod} ({addr})")
        }
    };
    let mut line = format!(
        "{} {} {} {} -> {} {}",
        s("time"),
        s("node"),
        s("protocol"),
        end(s("source_pod"), s("source")),
        end(s("destination_pod"), s("destination")),
        s("verdict").to_uppercase(),
    );
    if !s("drop_reason").is_empty() {
        line.push_str(&format!(" ({})", s("drop_reason")));
    }
    if !s("service").is_empty() {
        line.push_str(&format!(
            " service={} via {}",
            s("service"),
            s("service_frontend")
        ));
    }
    if !s("policy").is_empty() {
        line.push_str(&format!(" policy={}", s("policy")));
    }
    line
}

/// Runs `flows`, writing each flow as it arrives.
pub async fn run_flows(
    session: &Session,
    namespace: Option<&str>,
    args: &FlowsArgs,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let verdict = match args.verdict {
        Some(Verdict::Forwarded) => "forwarded",
        Some(Verdict::Dropped) => "dropped",
        None => "",
    };
    let q = crate::session::query(&[
        ("namespace", namespace.unwrap_or_default()),
        ("pod", args.pod.as_deref().unwrap_or_default()),
        ("service", args.service.as_deref().unwrap_or_default()),
        ("verdict", verdict),
        ("follow", if args.follow { "true" } else { "" }),
    ]);
    let mut streams = Vec::new();
    for node in nodes(session, args.node.as_deref()).await? {
        let req = http::Request::get(format!("/api/v1/nodes/{node}/proxy/flows?{q}"))
            .body(Vec::new())
            .map_err(|e| Error::Client(e.to_string()))?;
        let body = session
            .client
            .request_stream(req)
            .await
            .map_err(|e| Error::from_kube(e, &session.server))?;
        streams.push(Box::pin(body.lines()));
    }
    let json = args.output.is_some();
    let mut all = futures::stream::select_all(streams);
    let mut recent: Vec<Value> = Vec::new();
    while let Some(line) = all.next().await {
        let line = line.map_err(|source| Error::Io {
            what: "reading flows".into(),
            source,
        })?;
        let Ok(flow) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if args.follow {
            write_flow(out, &flow, json)?;
        } else {
            recent.push(flow);
        }
    }
    // Without --follow: every node's recent flows, in time order.
    recent.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    for flow in &recent {
        write_flow(out, flow, json)?;
    }
    Ok(())
}

fn write_flow(out: &mut (dyn Write + Send), flow: &Value, json: bool) -> Result<()> {
    let text = if json {
        flow.to_string()
    } else {
        flow_line(flow)
    };
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|source| Error::Io {
            what: "writing flows".into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_flow_reads_as_one_line() {
        let dropped = json!({
            "time": "2026-11-22T21:00:00.000Z", "node": "node-a", "verdict": "dropped",
            "drop_reason": "policy_denied", "protocol": "TCP",
            "source": "10.42.0.3:41000", "destination": "10.42.0.2:8080",
            "source_pod": "default/client", "destination_pod": "default/web-a",
            "service": "", "service_frontend": "", "direction": "egress",
            "policy": "default/default-deny",
        });
        assert_eq!(
            flow_line(&dropped),
            "2026-11-22T21:00:00.000Z node-a TCP default/client (10.42.0.3:41000) -> \
             default/web-a (10.42.0.2:8080) DROPPED (policy_denied) policy=default/default-deny"
        );
        assert_eq!(
            crate::session::query(&[
                ("namespace", "a b"),
                ("pod", ""),
                ("service", "default/web")
            ]),
            "namespace=a+b&service=default%2Fweb"
        );
    }
}
