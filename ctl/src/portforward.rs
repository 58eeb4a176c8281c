//! `sextantctl port-forward`: local TCP ports relayed to a pod's ports through
//! the API server (`pods/<name>/portforward`, the WebSocket channel protocol),
//! one WebSocket per accepted connection, until interrupted.

use std::io::Write;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{Api, ResourceExt as _};
use tokio::{net::TcpListener, sync::mpsc};

use crate::{Error, Result, session::Session, target};

/// The arguments of `port-forward`.
#[derive(Clone, Debug, clap::Args)]
pub struct PortForwardArgs {
    /// The pod (`NAME`, `pod/NAME`), or a workload or Service (`deploy/NAME`,
    /// `svc/NAME`: one of its pods; a Service's port maps to its targetPort).
    pub target: String,
    /// `LOCAL:REMOTE`, `PORT` (the same locally) or `:REMOTE` (any free local port).
    #[arg(required = true)]
    pub ports: Vec<String>,
    /// The local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
}

/// `LOCAL:REMOTE`, `PORT` or `:REMOTE` as (local, remote); local 0 is any free port.
pub fn port_pair(text: &str) -> Result<(u16, u16)> {
    let bad = || {
        Error::Usage(format!(
            "invalid port specification {text:?}: want LOCAL:REMOTE, PORT or :REMOTE"
        ))
    };
    let (local, remote) = match text.split_once(':') {
        Some(("", r)) => (Ok(0), r.parse::<u16>()),
        Some((l, r)) => (l.parse::<u16>(), r.parse::<u16>()),
        None => (text.parse::<u16>(), text.parse::<u16>()),
    };
    match (local, remote) {
        (Ok(l), Ok(r)) if r != 0 => Ok((l, r)),
        _ => Err(bad()),
    }
}

/// Runs `port-forward` until interrupted (or a listener fails).
pub async fn run(
    session: &Session,
    args: &PortForwardArgs,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<()> {
    let pairs = args
        .ports
        .iter()
        .map(|p| port_pair(p))
        .collect::<Result<Vec<_>>>()?;
    let pod = target::pod(session, &args.target, None).await?;
    let name = pod.name_any();
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase != Some("Running") {
        return Err(Error::Usage(format!(
            "unable to forward port because pod is not running. Current status={}",
            phase.unwrap_or("Unknown")
        )));
    }
    // A Service's ports become the pod ports they target.
    let service = match args.target.split_once('/') {
        Some(("svc" | "service" | "services", svc)) => Some(
            Api::<Service>::namespaced(session.client.clone(), &session.namespace)
                .get(svc)
                .await
                .map_err(|e| Error::from_kube(e, &session.server))?,
        ),
        _ => None,
    };
    let mut listeners = Vec::new();
    for (local, remote) in pairs {
        let remote = match &service {
            Some(s) => target::service_target_port(s, &pod, remote).ok_or_else(|| {
                Error::Usage(format!(
                    "Service {} does not have a service port {remote}",
                    s.name_any()
                ))
            })?,
            None => remote,
        };
        let listener = TcpListener::bind((args.address.as_str(), local))
            .await
            .map_err(|source| Error::Io {
                what: format!("listening on {}:{local}", args.address),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| Error::Io {
            what: "reading the listening address".into(),
            source,
        })?;
        writeln!(out, "Forwarding from {bound} -> {remote}")
            .and_then(|()| out.flush())
            .map_err(|source| Error::Io {
                what: "writing the output".into(),
                source,
            })?;
        listeners.push((listener, bound.port(), remote));
    }
    let api: Api<Pod> = Api::namespaced(session.client.clone(), &session.namespace);
    // Accepted connections are announced on stdout, their failures on stderr.
    let (notes, mut noted) = mpsc::unbounded_channel::<(bool, String)>();
    for (listener, local, remote) in listeners {
        let (api, name, notes) = (api.clone(), name.clone(), notes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let _ = notes.send((true, format!("Handling connection for {local}")));
                let (api, name, notes) = (api.clone(), name.clone(), notes.clone());
                tokio::spawn(async move {
                    if let Err(e) = forward(&api, &name, remote, &mut conn).await {
                        let _ = notes.send((
                            false,
                            format!("error forwarding port {remote} to pod {name}: {e}"),
                        ));
                    }
                });
            }
        });
    }
    drop(notes);
    loop {
        tokio::select! {
            note = noted.recv() => match note {
                Some((true, line)) => {
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
                Some((false, line)) => {
                    let _ = writeln!(err, "{line}");
                }
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// One connection: a WebSocket to the pod's port, bytes both ways until
/// either side closes.
async fn forward(
    api: &Api<Pod>,
    name: &str,
    remote: u16,
    conn: &mut tokio::net::TcpStream,
) -> std::result::Result<(), String> {
    let mut forwarder = api
        .portforward(name, &[remote])
        .await
        .map_err(|e| e.to_string())?;
    let mut upstream = forwarder
        .take_stream(remote)
        .ok_or_else(|| "no stream for the port".to_owned())?;
    let failure = forwarder.take_error(remote);
    let copied = tokio::io::copy_bidirectional(conn, &mut upstream).await;
    drop(upstream);
    // The pod side's own complaint (connection refused in the pod) says more
    // than a closed stream.
    if let Some(f) = failure
        && let Ok(Some(message)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), f).await
    {
        return Err(message);
    }
    forwarder.abort();
    copied.map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specifications() {
        assert_eq!(port_pair("8080:80").ok(), Some((8080, 80)));
        assert_eq!(port_pair("80").ok(), Some((80, 80)));
        assert_eq!(port_pair(":80").ok(), Some((0, 80)));
        for bad in ["", "x", "80:", "1:0", "70000", "a:80"] {
            assert!(port_pair(bad).is_err(), "{bad}");
        }
    }
}
