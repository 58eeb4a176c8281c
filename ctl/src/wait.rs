//! Commands that wait, showing progress as kubectl does: `rollout status`
//! (kubectl's messages for Deployments, a line each time the state changes) and
//! `wait --for=condition=X|delete` (`pod/web condition met`).

use std::{io::Write, time::Duration};

use serde_json::Value;

use crate::{Error, Result, apply::targets, discovery, session::Session};

/// How often the object is read again while waiting.
const POLL: Duration = Duration::from_millis(500);

/// Parses `30s`, `5m`, `1h` (kubectl's `--timeout`).
fn timeout(text: &str) -> Result<Duration> {
    crate::logs::seconds(text)
        .map(|s| Duration::from_secs(s.unsigned_abs()))
        .map_err(|_| {
            Error::Usage(format!(
                "invalid --timeout {text:?}: a duration such as 30s or 5m"
            ))
        })
}

/// kubectl's status of a Deployment rollout: `Ok(true)` done, `Ok(false)` with
/// a message still going, `Err` when it can no longer finish.
pub fn deployment_status(name: &str, d: &Value) -> Result<(bool, String)> {
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let status = &d["status"];
    if n(&d["metadata"]["generation"]) > n(&status["observedGeneration"]) {
        return Ok((
            false,
            "Waiting for deployment spec update to be observed...".into(),
        ));
    }
    let stalled = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded");
    if stalled {
        return Err(Error::Usage(format!(
            "deployment \"{name}\" exceeded its progress deadline"
        )));
    }
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let (updated, replicas, available) = (
        n(&status["updatedReplicas"]),
        n(&status["replicas"]),
        n(&status["availableReplicas"]),
    );
    let waiting = |what: String| {
        Ok((
            false,
            format!("Waiting for deployment \"{name}\" rollout to finish: {what}..."),
        ))
    };
    if updated < want {
        return waiting(format!(
            "{updated} out of {want} new replicas have been updated"
        ));
    }
    if replicas > updated {
        return waiting(format!(
            "{} old replicas are pending termination",
            replicas - updated
        ));
    }
    if available < updated {
        return waiting(format!(
            "{available} of {updated} updated replicas are available"
        ));
    }
    Ok((
        true,
        format!("deployment \"{name}\" successfully rolled out"),
    ))
}

/// `rollout status TYPE/NAME [--timeout D]` for Deployments.
pub async fn rollout_status(
    session: &Session,
    target: &[String],
    timeout_text: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let deadline = timeout_text
        .map(timeout)
        .transpose()?
        .map(|d| tokio::time::Instant::now() + d);
    let types = discovery::discover(session).await?;
    let (t, name) = targets(target)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Usage("required resource not specified".into()))?;
    let rt = discovery::resolve(&types, &t)?;
    if rt.kind != "Deployment" {
        return Err(Error::Usage(format!(
            "no status viewer has been implemented for {} yet",
            rt.kind
        )));
    }
    let path = format!("{}/{name}", rt.path(Some(&session.namespace)));
    let mut last = String::new();
    loop {
        let d = session.get_opt(&path).await?.ok_or_else(|| Error::Server {
            reason: "NotFound".into(),
            message: format!("deployments.apps \"{name}\" not found"),
            code: 404,
            details: None,
        })?;
        let (done, message) = deployment_status(&name, &d)?;
        // Each state once, as kubectl prints it while it watches.
        if message != last {
            writeln!(out, "{message}")
                .and_then(|()| out.flush())
                .map_err(|source| Error::Io {
                    what: "writing the progress".into(),
                    source,
                })?;
            last = message;
        }
        if done {
            return Ok(());
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Err(Error::Usage("timed out waiting for the condition".into()));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `wait --for=condition=X[=value]|delete TYPE/NAME... [--timeout D]`.
pub async fn wait(
    session: &Session,
    target: &[String],
    condition: &str,
    timeout_text: Option<&str>,
) -> Result<String> {
    let limit = timeout(timeout_text.unwrap_or("30s"))?;
    let deadline = tokio::time::Instant::now() + limit;
    let types = discovery::discover(session).await?;
    let mut out = String::new();
    for (t, name) in targets(target)? {
        let rt = discovery::resolve(&types, &t)?;
        let path = format!("{}/{name}", rt.path(Some(&session.namespace)));
        let shown = format!("{}/{name}", rt.name_prefix());
        let progress =
            crate::progress::Progress::start(format!("waiting for {shown}: {condition}"));
        loop {
            let obj = session.get_opt(&path).await?;
            let met = match (condition, &obj) {
                ("delete", None) => {
                    out.push_str(&format!("{shown} deleted\n"));
                    break;
                }
                ("delete", Some(_)) => false,
                (_, None) => {
                    return Err(Error::Server {
                        reason: "NotFound".into(),
                        message: format!("{} \"{name}\" not found", rt.plural),
                        code: 404,
                        details: None,
                    });
                }
                (c, Some(o)) => {
                    let spec = c.strip_prefix("condition=").ok_or_else(|| {
                        Error::Usage(format!(
                            "unrecognized condition: \"{c}\" (use condition=NAME[=VALUE] or delete)"
                        ))
                    })?;
                    let (kind, value) = spec.split_once('=').unwrap_or((spec, "True"));
                    o["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| {
                            c["type"]
                                .as_str()
                                .is_some_and(|t| t.eq_ignore_ascii_case(kind))
                                && c["status"]
                                    .as_str()
                                    .is_some_and(|s| s.eq_ignore_ascii_case(value))
                        })
                }
            };
            if met {
                out.push_str(&format!("{shown} condition met\n"));
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Usage(format!(
                    "timed out waiting for the condition on {}/{name}",
                    rt.plural
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        drop(progress);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rollout_messages_are_kubectls() {
        let d = |generation: i64, observed: i64, updated: i64, replicas: i64, available: i64| {
            json!({
                "metadata": {"generation": generation},
                "spec": {"replicas": 3},
                "status": {"observedGeneration": observed, "updatedReplicas": updated,
                           "replicas": replicas, "availableReplicas": available},
            })
        };
        let msg = |v: Value| deployment_status("web", &v).ok();
        assert_eq!(
            msg(d(2, 1, 3, 3, 3)),
            Some((
                false,
                "Waiting for deployment spec update to be observed...".into()
            ))
        );
        assert_eq!(
            msg(d(2, 2, 1, 4, 1)),
            Some((false, "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated...".into()))
        );
        assert_eq!(
            msg(d(2, 2, 3, 4, 3)),
            Some((false, "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination...".into()))
        );
        assert_eq!(
            msg(d(2, 2, 3, 3, 2)),
            Some((false, "Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available...".into()))
        );
        assert_eq!(
            msg(d(2, 2, 3, 3, 3)),
            Some((true, "deployment \"web\" successfully rolled out".into()))
        );
        let mut stalled = d(2, 2, 1, 3, 1);
        stalled["status"]["conditions"] =
            json!([{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]);
        assert!(deployment_status("web", &stalled).is_err());
    }
}
