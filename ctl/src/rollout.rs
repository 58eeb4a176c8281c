//! `sextantctl rollout history|undo|pause|resume|restart` for Deployments, as
//! kubectl does them: history is the Deployment's ReplicaSets by their
//! `deployment.kubernetes.io/revision`; undo writes an older ReplicaSet's pod
//! template back (the controller makes it the newest revision); pause and resume
//! set `spec.paused`; restart stamps `kubectl.kubernetes.io/restartedAt` on the
//! pod template (Deployments, DaemonSets and StatefulSets).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::{Error, Result, session::Session};

/// The ReplicaSet annotation holding its revision.
const REVISION: &str = "deployment.kubernetes.io/revision";
/// The annotation `kubectl annotate ... kubernetes.io/change-cause=` sets.
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// A workload `TYPE/NAME` or `TYPE NAME` as (plural, name).
fn workload(args: &[String], allowed: &[&str]) -> Result<(&'static str, String)> {
    let (kind, name) = match args {
        [one] => one
            .split_once('/')
            .map(|(k, n)| (k.to_owned(), n.to_owned())),
        [kind, name] => Some((kind.clone(), name.clone())),
        _ => None,
    }
    .ok_or_else(|| Error::Usage("required resource not specified: give TYPE/NAME".into()))?;
    let plural = match kind.as_str() {
        "deploy" | "deployment" | "deployments" | "deployment.apps" | "deployments.apps" => {
            "deployments"
        }
        "ds" | "daemonset" | "daemonsets" | "daemonset.apps" | "daemonsets.apps" => "daemonsets",
        "sts" | "statefulset" | "statefulsets" | "statefulset.apps" | "statefulsets.apps" => {
            "statefulsets"
        }
        other => {
            return Err(Error::Usage(format!(
                "no rollouts for a {other}: give deploy/NAME"
            )));
        }
    };
    if !allowed.contains(&plural) {
        return Err(Error::Usage(format!(
            "{plural}.apps \"{name}\" does not support this rollout command (only {})",
            allowed.join(", ")
        )));
    }
    Ok((plural, name))
}

fn path(session: &Session, plural: &str, name: &str) -> String {
    format!(
        "/apis/apps/v1/namespaces/{}/{plural}/{name}",
        session.namespace
    )
}

/// `deployments` → `deployment.apps`.
fn prefix(plural: &str) -> String {
    format!("{}.apps", plural.trim_end_matches('s'))
}

/// The Deployment's ReplicaSets by revision.
async fn history(session: &Session, name: &str) -> Result<(Value, BTreeMap<i64, Value>)> {
    let deployment: Value = session
        .get(&path(session, "deployments", name), None)
        .await?;
    let uid = deployment["metadata"]["uid"].as_str().unwrap_or_default();
    let list = session
        .items(
            &format!("/apis/apps/v1/namespaces/{}/replicasets", session.namespace),
            &[],
        )
        .await?;
    let mut by_revision = BTreeMap::new();
    for rs in &list {
        let owned = rs["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["uid"].as_str() == Some(uid) && o["controller"] == json!(true));
        let revision = rs["metadata"]["annotations"][REVISION]
            .as_str()
            .and_then(|r| r.parse::<i64>().ok());
        if let (true, Some(r)) = (owned, revision) {
            by_revision.insert(r, rs.clone());
        }
    }
    Ok((deployment, by_revision))
}

/// A pod template without the label the controller adds to it.
fn template_of(rs: &Value) -> Value {
    let mut t = rs["spec"]["template"].clone();
    if let Some(labels) = t
        .get_mut("metadata")
        .and_then(|m| m.get_mut("labels"))
        .and_then(Value::as_object_mut)
    {
        labels.remove("pod-template-hash");
    }
    t
}

/// `rollout history deploy/NAME`: kubectl's REVISION / CHANGE-CAUSE table;
/// with `--revision`, that revision's pod template as kubectl describes it.
pub async fn history_of(
    session: &Session,
    args: &[String],
    revision: Option<i64>,
) -> Result<String> {
    let (_, name) = workload(args, &["deployments"])?;
    let (_, revisions) = history(session, &name).await?;
    if let Some(r) = revision {
        let rs = revisions
            .get(&r)
            .ok_or_else(|| Error::Usage("unable to find the specified revision".into()))?;
        let template = crate::describe::pod_template_text(&rs["spec"]["template"])?;
        return Ok(format!(
            "deployment.apps/{name} with revision #{r}\n{template}\n"
        ));
    }
    let mut rows = vec![vec!["REVISION".to_owned(), "CHANGE-CAUSE".to_owned()]];
    for (r, rs) in &revisions {
        let cause = rs["metadata"]["annotations"][CHANGE_CAUSE]
            .as_str()
            .unwrap_or("<none>");
        rows.push(vec![r.to_string(), cause.to_owned()]);
    }
    let table: String = rows.iter().map(|r| format!("{}\n", r.join("\t"))).collect();
    Ok(format!(
        "deployment.apps/{name} \n{}\n",
        crate::output::aligned(&table)
    ))
}

/// `rollout undo deploy/NAME [--to-revision=N]`: the previous revision (or N)
/// becomes the Deployment's template again.
pub async fn undo(session: &Session, args: &[String], to: Option<i64>) -> Result<String> {
    let (_, name) = workload(args, &["deployments"])?;
    let (deployment, revisions) = history(session, &name).await?;
    if deployment["spec"]["paused"] == json!(true) {
        return Err(Error::Usage(format!(
            "you cannot rollback a paused deployment; resume it first with 'sextantctl rollout resume deployment/{name}' and try again"
        )));
    }
    let target = match to.filter(|r| *r != 0) {
        Some(r) => revisions.get(&r).ok_or_else(|| {
            Error::Usage(format!("unable to find specified revision {r} in history"))
        })?,
        None => {
            // The newest revision is the current one; the one before it is the target.
            let mut older = revisions.values().rev().skip(1);
            older.next().ok_or_else(|| {
                Error::Usage(format!(
                    "no rollout history found for deployment \"{name}\""
                ))
            })?
        }
    };
    let template = template_of(target);
    if template == deployment["spec"]["template"] {
        let r = target["metadata"]["annotations"][REVISION]
            .as_str()
            .unwrap_or_default();
        return Ok(format!(
            "deployment.apps/{name} skipped rollback (current template already matches revision {r})\n"
        ));
    }
    // A JSON patch replaces the template whole: fields the old revision lacks go.
    let patch = json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": deployment["metadata"]["resourceVersion"]},
        {"op": "replace", "path": "/spec/template", "value": template},
    ]);
    session
        .write(
            "PATCH",
            &path(session, "deployments", &name),
            "application/json-patch+json",
            &patch,
        )
        .await?;
    Ok(format!("deployment.apps/{name} rolled back\n"))
}

/// `rollout pause` (`paused = true`) or `resume` (`false`).
pub async fn set_paused(session: &Session, args: &[String], paused: bool) -> Result<String> {
    let (plural, name) = workload(args, &["deployments"])?;
    let p = path(session, plural, &name);
    let live: Value = session.get(&p, None).await?;
    let is_paused = live["spec"]["paused"] == json!(true);
    if is_paused == paused {
        let state = if paused {
            "already paused"
        } else {
            "not paused"
        };
        return Err(Error::Usage(format!("{plural}.apps \"{name}\" is {state}")));
    }
    session
        .write(
            "PATCH",
            &p,
            "application/merge-patch+json",
            &json!({"spec": {"paused": paused}}),
        )
        .await?;
    let verb = if paused { "paused" } else { "resumed" };
    Ok(format!("{}/{name} {verb}\n", prefix(plural)))
}

/// `rollout restart`: a new pod template annotation, so every pod is replaced.
pub async fn restart(session: &Session, args: &[String]) -> Result<String> {
    let (plural, name) = workload(args, &["deployments", "daemonsets", "statefulsets"])?;
    let p = path(session, plural, &name);
    let live: Value = session.get(&p, None).await?;
    if live["spec"]["paused"] == json!(true) {
        return Err(Error::Usage(format!(
            "{}/{name} can't restart paused deployment (run rollout resume first)",
            prefix(plural)
        )));
    }
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": now
    }}}}});
    session
        .write(
            "PATCH",
            &p,
            "application/strategic-merge-patch+json",
            &patch,
        )
        .await?;
    Ok(format!("{}/{name} restarted\n", prefix(plural)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_by_kind() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            workload(&s(&["deploy/web"]), &["deployments"]).ok(),
            Some(("deployments", "web".to_owned()))
        );
        assert_eq!(
            workload(&s(&["daemonset", "agent"]), &["daemonsets"]).ok(),
            Some(("daemonsets", "agent".to_owned()))
        );
        assert!(workload(&s(&["ds/agent"]), &["deployments"]).is_err());
        assert!(workload(&s(&["pod/x"]), &["deployments"]).is_err());
        assert!(workload(&s(&["web"]), &["deployments"]).is_err());
    }
}
