//! What only Sextant's CLI puts on one screen: `cluster status` (the API
//! server, its datastore, the controller and scheduler leaders, each node's
//! readiness and eBPF programs) and `debug pod` (a pod's state, events, probe
//! results, last log lines and recent flows).

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::ResourceExt as _;
use serde_json::Value;
use sextant_apimachinery::duration::human_duration;

use crate::{Result, describe, flows, output, session::Session, target};

fn ago(t: Option<&MicroTime>) -> String {
    t.map_or("never".into(), |t| {
        let secs = k8s_openapi::jiff::Timestamp::now()
            .duration_since(t.0)
            .as_secs();
        format!("{} ago", human_duration(secs))
    })
}

/// The leader a Lease names, and when it last renewed.
async fn leader(session: &Session, name: &str) -> String {
    match session
        .get::<Lease>(
            &format!("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{name}"),
            None,
        )
        .await
    {
        Ok(lease) => {
            let spec = lease.spec.unwrap_or_default();
            format!(
                "leader {} (renewed {})",
                spec.holder_identity.as_deref().unwrap_or("<none>"),
                ago(spec.renew_time.as_ref())
            )
        }
        Err(e) => format!("no leader lease ({e})"),
    }
}

/// The datastore: etcd's members when the controllers publish `kube-system/etcd`,
/// else the embedded store.
async fn datastore(session: &Session) -> Result<String> {
    let endpoints = session
        .get_opt("/api/v1/namespaces/kube-system/endpoints/etcd")
        .await?;
    Ok(match endpoints {
        None => "embedded".into(),
        Some(e) => {
            let members: Vec<String> = e["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| {
                    let port = s["ports"][0]["port"].as_i64().unwrap_or(0);
                    s["addresses"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |a| format!("{}:{port}", a["ip"].as_str().unwrap_or_default()))
                })
                .collect();
            if members.is_empty() {
                "etcd (members on loopback)".into()
            } else {
                format!("etcd ({})", members.join(","))
            }
        }
    })
}

/// Runs `cluster status`.
pub async fn status(session: &Session) -> Result<String> {
    let version: Value = session.get("/version", None).await?;
    let ready = {
        let req = http::Request::get("/readyz?verbose")
            .body(Vec::new())
            .map_err(|e| crate::Error::Client(e.to_string()))?;
        match session.client.request_text(req).await {
            Ok(t) => t,
            Err(kube::Error::Api(s)) => s.message.clone(),
            Err(e) => format!("unreachable: {e}"),
        }
    };
    let checks: Vec<&str> = ready.lines().filter(|l| l.starts_with('[')).collect();
    let verdict = ready
        .lines()
        .find(|l| l.starts_with("readyz check"))
        .unwrap_or(ready.trim());
    let mut out = String::new();
    out.push_str(&output::aligned(&format!(
        "Server:\t{} ({})\nReady:\t{verdict}: {}\nDatastore:\t{}\nControllers:\t{}\nScheduler:\t{}\n",
        session.server,
        version["gitVersion"].as_str().unwrap_or_default(),
        checks.join(" "),
        datastore(session).await?,
        leader(session, "kube-controller-manager").await,
        leader(session, "kube-scheduler").await,
    )));
    out.push('\n');

    let nodes = session.items("/api/v1/nodes", &[]).await?;
    let pods = session.items("/api/v1/pods", &[]).await?;
    let mut rows = vec![
        [
            "NODE",
            "READY",
            "VERSION",
            "INTERNAL-IP",
            "PODS",
            "DATAPLANE",
            "PROGRAMS",
            "CONNTRACK",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for n in &nodes {
        let name = n["metadata"]["name"].as_str().unwrap_or_default();
        let ready = n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| c["status"].as_str())
            .unwrap_or("Unknown");
        let ip = n["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str())
            .unwrap_or("<none>");
        let count = pods
            .iter()
            .filter(|p| p["spec"]["nodeName"].as_str() == Some(name))
            .count();
        let (dataplane, programs, conntrack) = match session
            .get::<Value>(
                &format!("/api/v1/nodes/{name}/proxy/dataplane/status"),
                None,
            )
            .await
        {
            Ok(s) => {
                let programs: Vec<String> = s["programs"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(p, ifs)| format!("{p}({})", ifs.as_array().map_or(0, Vec::len)))
                    .collect();
                (
                    "ok".to_owned(),
                    if programs.is_empty() {
                        "<none>".to_owned()
                    } else {
                        programs.join(",")
                    },
                    s["maps"]["conntrack"].to_string(),
                )
            }
            // An agent without the eBPF dataplane (reference CNI plugins) has no such page.
            Err(crate::Error::Server { code: 404, .. }) => {
                ("off".to_owned(), "<none>".into(), "<none>".into())
            }
            Err(e) => (
                format!(
                    "unreachable ({})",
                    e.to_string().chars().take(60).collect::<String>()
                ),
                "<unknown>".into(),
                "<unknown>".into(),
            ),
        };
        rows.push(vec![
            name.to_owned(),
            ready.to_owned(),
            n["status"]["nodeInfo"]["kubeletVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ip.to_owned(),
            count.to_string(),
            dataplane,
            programs,
            conntrack,
        ]);
    }
    out.push_str(&output::columns(&rows));
    Ok(out)
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Runs `debug pod P`.
pub async fn debug_pod(session: &Session, name: &str, lines: usize) -> Result<String> {
    let pod: Pod = target::pod(session, name, None).await?;
    let ns = pod.namespace().unwrap_or_default();
    let pod_name = pod.name_any();
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let mut out = String::new();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map_or("Unknown", |c| c.status.as_str());
    out.push_str(&output::aligned(&format!(
        "Pod:\t{ns}/{pod_name}\nNode:\t{}\nIP:\t{}\nPhase:\t{}\nReady:\t{ready}\n",
        spec.node_name.as_deref().unwrap_or("<none>"),
        status.pod_ip.as_deref().unwrap_or("<none>"),
        status.phase.as_deref().unwrap_or("Unknown"),
    )));

    // Containers, with their probes and last termination.
    out.push_str("\nContainers:\n");
    let mut rows = vec![
        [
            "  NAME",
            "READY",
            "STATE",
            "RESTARTS",
            "LAST-TERMINATION",
            "PROBES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in &spec.containers {
        let s = status
            .container_statuses
            .iter()
            .flatten()
            .find(|s| s.name == c.name);
        let state = s
            .and_then(|s| s.state.clone())
            .map_or("<unknown>".into(), |st| {
                if st.running.is_some() {
                    "Running".to_owned()
                } else if let Some(w) = st.waiting {
                    format!("Waiting ({})", w.reason.unwrap_or_default())
                } else if let Some(t) = st.terminated {
                    format!(
                        "Terminated ({}, exit {})",
                        t.reason.unwrap_or_default(),
                        t.exit_code
                    )
                } else {
                    "<unknown>".into()
                }
            });
        let last = s
            .and_then(|s| s.last_state.clone())
            .and_then(|l| l.terminated)
            .map_or("<none>".into(), |t| {
                format!("{} (exit {})", t.reason.unwrap_or_default(), t.exit_code)
            });
        let probes: Vec<&str> = [
            ("liveness", c.liveness_probe.is_some()),
            ("readiness", c.readiness_probe.is_some()),
            ("startup", c.startup_probe.is_some()),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect();
        rows.push(vec![
            format!("  {}", c.name),
            s.map_or("false", |s| if s.ready { "true" } else { "false" })
                .to_owned(),
            state,
            s.map_or(0, |s| s.restart_count).to_string(),
            last,
            if probes.is_empty() {
                "<none>".into()
            } else {
                probes.join(",")
            },
        ]);
    }
    out.push_str(&output::columns(&rows));

    // Conditions, then the events (probe failures are `Unhealthy` events).
    out.push_str("\nConditions:\n");
    for c in status.conditions.iter().flatten() {
        let why = c
            .reason
            .clone()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        out.push_str(&format!("  {} {}{why}\n", c.type_, c.status));
    }
    let object = serde_json::to_value(&pod).unwrap_or_default();
    let mut object = object;
    object["kind"] = Value::String("Pod".into());
    let events = describe::events_of(session, &object).await?;
    let probe_failures = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Unhealthy"))
        .count();
    out.push_str(&format!(
        "\nProbe failures: {probe_failures} Unhealthy event(s)\n"
    ));
    out.push_str(&describe::events_text(events, lines));

    // Each container's last log lines.
    for c in &spec.containers {
        out.push_str(&format!("\nLog of {} (last {lines} lines):\n", c.name));
        let path = format!(
            "/api/v1/namespaces/{ns}/pods/{pod_name}/log?{}",
            crate::session::query(&[("container", &c.name), ("tailLines", &lines.to_string())])
        );
        let req = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| crate::Error::Client(e.to_string()))?;
        match session.client.request_text(req).await {
            Ok(text) if text.trim().is_empty() => out.push_str("  <empty>\n"),
            Ok(text) => {
                for l in last_lines(&text, lines) {
                    out.push_str(&format!("  {l}\n"));
                }
            }
            Err(e) => out.push_str(&format!("  <unavailable: {e}>\n")),
        }
    }

    // Recent flows from or to the pod, from every node.
    out.push_str(&format!("\nFlows (last {lines}):\n"));
    let args = flows::FlowsArgs {
        follow: false,
        pod: Some(format!("{ns}/{pod_name}")),
        service: None,
        verdict: None,
        node: None,
        output: None,
    };
    let mut buf = Vec::new();
    match flows::run_flows(session, None, &args, &mut buf).await {
        Ok(()) => {
            let text = String::from_utf8_lossy(&buf);
            if text.trim().is_empty() {
                out.push_str("  <none>\n");
            }
            for l in last_lines(&text, lines) {
                out.push_str(&format!("  {l}\n"));
            }
        }
        Err(e) => out.push_str(&format!("  <unavailable: {e}>\n")),
    }
    Ok(out)
}
