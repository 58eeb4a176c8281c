//! `sextantctl logs`: a pod's container log through the API server
//! (`pods/<name>/log`, which the server takes from the node's kubelet), one pod
//! by name (`web-1`, `pod/web-1`, `deploy/web` picks one of its pods) or every
//! pod matching `-l` at once, `--prefix` naming each line's pod and container.

use std::io::Write;

use futures::{AsyncBufReadExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;

use crate::{Error, Result, session::Session, target};

/// The arguments of `logs`.
#[derive(Clone, Debug, clap::Args)]
pub struct LogsArgs {
    /// The pod (`NAME`, `pod/NAME`) or a Deployment (`deploy/NAME`: one of its pods).
    pub target: Option<String>,
    /// The container (default: the pod's first).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep streaming new lines.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<i64>,
    /// Only lines newer than this (`30s`, `5m`, `2h`).
    #[arg(long)]
    pub since: Option<String>,
    /// The previous (terminated) container's log.
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Every pod matching this label selector.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Begin each line with `[pod/<name>/<container>]`.
    #[arg(long)]
    pub prefix: bool,
}

/// `30s`, `5m`, `2h`, `1h30m` in seconds.
pub fn seconds(text: &str) -> Result<i64> {
    let bad = || {
        Error::Usage(format!(
            "invalid argument \"{text}\" for \"--since\" flag: a duration such as 30s, 5m or 2h"
        ))
    };
    let mut total = 0i64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: i64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// The pods to read: every pod `-l` matches (kubectl's order), or the one
/// the target names.
async fn pods(
    session: &Session,
    args: &LogsArgs,
    err: &mut (dyn Write + Send),
) -> Result<Vec<Pod>> {
    if let Some(selector) = &args.selector {
        let list = target::pods_matching(session, selector).await?;
        if list.is_empty() {
            return Err(Error::Usage(format!(
                "no pods found in {} matching {selector}",
                session.namespace
            )));
        }
        return Ok(list);
    }
    let name = args
        .target
        .as_deref()
        .ok_or_else(|| Error::Usage("expected POD or TYPE/NAME, or -l".into()))?;
    match target::pod(session, name, Some(err)).await {
        // kubectl's wording for a missing pod here.
        Err(Error::Server { code: 404, .. }) if !name.contains('/') || name.starts_with("pod") => {
            let name = name.rsplit('/').next().unwrap_or(name);
            Err(Error::Usage(format!(
                "error from server (NotFound): pods \"{name}\" not found in namespace \"{}\"",
                session.namespace
            )))
        }
        other => other.map(|p| vec![p]),
    }
}

/// Runs `logs`, writing lines as they come.
pub async fn run(
    session: &Session,
    args: &LogsArgs,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<()> {
    let since = args.since.as_deref().map(seconds).transpose()?;
    let pods = pods(session, args, err).await?;
    let mut streams = Vec::new();
    for pod in &pods {
        let name = pod.name_any();
        let container = target::container(pod, args.container.as_deref());
        let mut query = format!("container={container}");
        if args.follow {
            query.push_str("&follow=true");
        }
        if args.previous {
            query.push_str("&previous=true");
        }
        if let Some(n) = args.tail {
            query.push_str(&format!("&tailLines={n}"));
        }
        if let Some(s) = since {
            query.push_str(&format!("&sinceSeconds={s}"));
        }
        let path = format!(
            "/api/v1/namespaces/{}/pods/{name}/log?{query}",
            session.namespace
        );
        let req = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| Error::Client(e.to_string()))?;
        let body = session
            .client
            .request_stream(req)
            .await
            .map_err(|e| Error::from_kube(e, &session.server))?;
        let prefix = if args.prefix {
            format!("[pod/{name}/{container}] ")
        } else {
            String::new()
        };
        streams.push(
            body.lines()
                .map(move |l| l.map(|l| format!("{prefix}{l}")))
                .boxed(),
        );
    }
    // Following, lines come as they are written; otherwise pod after pod, as
    // kubectl prints them.
    let mut all = if args.follow {
        futures::stream::select_all(streams).boxed()
    } else {
        futures::stream::iter(streams).flatten().boxed()
    };
    while let Some(line) = all.next().await {
        let line = line.map_err(|source| Error::Io {
            what: "reading the log".into(),
            source,
        })?;
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|source| Error::Io {
                what: "writing the log".into(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_seconds() {
        assert_eq!(seconds("30s").ok(), Some(30));
        assert_eq!(seconds("5m").ok(), Some(300));
        assert_eq!(seconds("1h30m").ok(), Some(5400));
        for bad in ["", "5", "1d", "m", "0s"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }
}
