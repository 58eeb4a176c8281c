//! The Job controller: runs pods until `completions` of them succeed, at most
//! `parallelism` at a time, as upstream's does:
//!
//! - NonIndexed and Indexed completion modes (Indexed pods carry their index in
//!   the `batch.kubernetes.io/job-completion-index` annotation and label, the
//!   `JOB_COMPLETION_INDEX` env var and the hostname `<job>-<index>`);
//! - failures count against `backoffLimit` (pods that failed, or container
//!   restarts under `restartPolicy: OnFailure`); replacements wait 10 s doubling
//!   to 6 min after the last failure; `activeDeadlineSeconds`;
//! - `podFailurePolicy` rules (FailJob, Ignore, Count on exit codes and on pod
//!   conditions);
//! - `suspend`; `ttlSecondsAfterFinished` deletes a finished Job (and, in the
//!   background, its pods);
//! - conditions Complete / Failed (with SuccessCriteriaMet / FailureTarget
//!   before them), `startTime`, `completionTime`, `active`, `ready`,
//!   `succeeded`, `failed`, `completedIndexes`.
//!
//! Succeeded and failed counts never go down, so pods deleted after they
//! finished are not run again.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec, PodFailurePolicyRule},
        core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod},
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy},
    runtime::{Controller, controller::Action, watcher},
};
use serde_json::{Value, json};

use crate::{
    Context, Error, Metrics,
    pods::{self, is_active, is_ready, phase},
    retry_soon,
};

/// The name events are reported under, as upstream.
const CONTROLLER: &str = "job-controller";

/// The annotation (and label) holding an Indexed Job pod's index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// First delay before replacing a failed pod; it doubles per failure.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest delay before replacing a failed pod.
const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// Runs the controller until its watches end.
pub async fn run(client: Client, metrics: Metrics) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Pod>::all(client), watcher::Config::default())
        .run(reconcile, retry_soon, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.observe("job", sync(&job, &ctx)).await
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn condition(kind: &str, reason: &str, message: &str) -> Value {
    let t = now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    json!({
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": t,
        "lastTransitionTime": t,
    })
}

fn has_condition(job: &Job, kind: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

/// When the Job finished (Complete or Failed), if it did.
fn finished_at(job: &Job) -> Option<jiff::Timestamp> {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
        .map(|c| c.last_transition_time.as_ref().map_or_else(now, |t| t.0))
}

/// The index of an Indexed Job's pod.
fn index_of(p: &Pod) -> Option<i32> {
    p.annotations().get(COMPLETION_INDEX)?.parse().ok()
}

/// `0-2,5,7-8` from a set of indexes, as `status.completedIndexes` shows them.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// The indexes in a `completedIndexes` string.
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// When the pod finished (its last container's finish, else its creation).
fn finish_time(p: &Pod) -> jiff::Timestamp {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or_else(now)
}

/// What a failed pod means under the Job's `podFailurePolicy`.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Counts against `backoffLimit`.
    Count,
    /// Does not count.
    Ignore,
    /// Fails the Job at once, with this message.
    FailJob(String),
}

fn rule_matches(rule: &PodFailurePolicyRule, p: &Pod) -> Option<String> {
    if let Some(codes) = &rule.on_exit_codes {
        let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
        for c in statuses {
            if codes.container_name.as_ref().is_some_and(|n| n != &c.name) {
                continue;
            }
            let Some(code) = c
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code)
                .filter(|code| *code != 0)
            else {
                continue;
            };
            let listed = codes.values.contains(&code);
            let hit = match codes.operator.as_str() {
                "In" => listed,
                "NotIn" => !listed,
                _ => false,
            };
            if hit {
                return Some(format!(
                    "Container {} for pod {}/{} failed with exit code {code}",
                    c.name,
                    p.namespace().unwrap_or_default(),
                    p.name_any()
                ));
            }
        }
        return None;
    }
    let conditions = p.status.as_ref()?.conditions.as_ref()?;
    for pattern in rule.on_pod_conditions.iter().flatten() {
        let want = match pattern.status.as_str() {
            "" => "True",
            s => s,
        };
        if conditions
            .iter()
            .any(|c| c.type_ == pattern.type_ && c.status == want)
        {
            return Some(format!(
                "Pod {}/{} has condition {} matching",
                p.namespace().unwrap_or_default(),
                p.name_any(),
                pattern.type_
            ));
        }
    }
    None
}

fn verdict(spec: &JobSpec, p: &Pod) -> Verdict {
    let rules = spec
        .pod_failure_policy
        .as_ref()
        .map(|p| p.rules.as_slice())
        .unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        if let Some(what) = rule_matches(rule, p) {
            return match rule.action.as_str() {
                "FailJob" => Verdict::FailJob(format!("{what} matching FailJob rule at index {i}")),
                "Ignore" => Verdict::Ignore,
                _ => Verdict::Count,
            };
        }
    }
    Verdict::Count
}

fn owner_ref(job: &Job) -> OwnerReference {
    pods::controller_ref(
        "batch/v1",
        "Job",
        &job.name_any(),
        &job.uid().unwrap_or_default(),
    )
}

/// A new pod for the Job, with its index when Indexed.
fn new_pod(job: &Job, spec: &JobSpec, ns: &str, index: Option<i32>) -> Pod {
    let name = job.name_any();
    let prefix = match index {
        Some(i) => format!("{name}-{i}-"),
        None => format!("{name}-"),
    };
    let mut pod = pods::from_template(&spec.template, ns, &prefix, &owner_ref(job));
    if let Some(i) = index {
        let meta = &mut pod.metadata;
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPLETION_INDEX.into(), i.to_string());
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPLETION_INDEX.into(), i.to_string());
        if let Some(ps) = pod.spec.as_mut() {
            ps.hostname.get_or_insert_with(|| format!("{name}-{i}"));
            let env = EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            for c in ps
                .containers
                .iter_mut()
                .chain(ps.init_containers.iter_mut().flatten())
            {
                c.env.get_or_insert_with(Vec::new).push(env.clone());
            }
        }
    }
    pod
}

async fn delete_pods(api: &Api<Pod>, pods: &[&Pod]) -> Result<(), Error> {
    for p in pods {
        match api.delete(&p.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn sync(job: &Job, ctx: &Context) -> Result<Action, Error> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let spec = job.spec.clone().unwrap_or_default();
    // A finished Job only waits for its time to live.
    if let Some(finished) = finished_at(job) {
        let Some(ttl) = spec.ttl_seconds_after_finished else {
            return Ok(Action::await_change());
        };
        let expires = finished + jiff::SignedDuration::from_secs(i64::from(ttl));
        let left = now().duration_until(expires);
        if left.is_positive() {
            let secs = u64::try_from(left.as_secs()).unwrap_or(0) + 1;
            return Ok(Action::requeue(Duration::from_secs(secs)));
        }
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match jobs.delete(&job.name_any(), &dp).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }

    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = spec.selector.clone().unwrap_or_default();
    let owned = pods::claim(&pods_api, &owner_ref(job), &selector).await?;
    let status = job.status.clone().unwrap_or_default();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");

    let active: Vec<&Pod> = owned.iter().filter(|p| is_active(p)).collect();
    let succeeded_pods: Vec<&Pod> = owned.iter().filter(|p| phase(p) == "Succeeded").collect();
    let failed_pods: Vec<&Pod> = owned
        .iter()
        .filter(|p| phase(p) == "Failed" && p.metadata.deletion_timestamp.is_none())
        .collect();

    // Failures: failed pods the policy counts, plus restarts under OnFailure.
    let mut fail_job: Option<(String, String)> = None;
    let mut counted_failures = 0i32;
    for p in &failed_pods {
        match verdict(&spec, p) {
            Verdict::Count => counted_failures += 1,
            Verdict::Ignore => {}
            Verdict::FailJob(message) => {
                fail_job.get_or_insert(("PodFailurePolicy".into(), message));
                counted_failures += 1;
            }
        }
    }
    if on_failure {
        counted_failures += active
            .iter()
            .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
            .flatten()
            .map(|c| c.restart_count)
            .sum::<i32>();
    }
    let failed = counted_failures.max(status.failed.unwrap_or(0));

    let mut completed: BTreeSet<i32> = status
        .completed_indexes
        .as_deref()
        .map(parse_indexes)
        .unwrap_or_default();
    let succeeded = if indexed {
        completed.extend(succeeded_pods.iter().filter_map(|p| index_of(p)));
        let completions = spec.completions.unwrap_or(1);
        completed.retain(|i| (0..completions).contains(i));
        i32::try_from(completed.len()).unwrap_or(i32::MAX)
    } else {
        i32::try_from(succeeded_pods.len())
            .unwrap_or(i32::MAX)
            .max(status.succeeded.unwrap_or(0))
    };

    let start_time = status.start_time.as_ref().map(|t| t.0).unwrap_or_else(now);
    let suspended = spec.suspend == Some(true);
    if fail_job.is_none() && failed > spec.backoff_limit.unwrap_or(6) {
        fail_job = Some((
            "BackoffLimitExceeded".into(),
            "Job has reached the specified backoff limit".into(),
        ));
    }
    if fail_job.is_none()
        && !suspended
        && let Some(deadline) = spec.active_deadline_seconds
        && now().duration_since(start_time).as_secs() >= deadline
    {
        fail_job = Some((
            "DeadlineExceeded".into(),
            "Job was active longer than specified deadline".into(),
        ));
    }
    let complete = fail_job.is_none()
        && match spec.completions {
            Some(n) => succeeded >= n,
            // No completions: one success and nothing left running.
            None => succeeded > 0 && active.is_empty(),
        };

    let mut conditions: Vec<Value> = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.type_ != "Suspended")
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    let mut requeue: Option<Duration> = None;
    let mut ready = active.iter().filter(|p| is_ready(p)).count();
    let mut active_count = active.len();
    let mut completion_time = None;
    if let Some((reason, message)) = &fail_job {
        ctx.event(CONTROLLER, job, true, reason, message.clone())
            .await;
        delete_pods(&pods_api, &active).await?;
        active_count = 0;
        ready = 0;
        conditions.push(condition("FailureTarget", reason, message));
        conditions.push(condition("Failed", reason, message));
    } else if complete {
        ctx.event(CONTROLLER, job, false, "Completed", "Job completed".into())
            .await;
        delete_pods(&pods_api, &active).await?;
        active_count = 0;
        ready = 0;
        let message = "Reached expected number of succeeded pods";
        conditions.push(condition(
            "SuccessCriteriaMet",
            "CompletionsReached",
            message,
        ));
        conditions.push(condition("Complete", "CompletionsReached", message));
        completion_time = Some(now());
    } else if suspended {
        delete_pods(&pods_api, &active).await?;
        active_count = 0;
        ready = 0;
        conditions.push(condition("Suspended", "JobSuspended", "Job suspended"));
    } else {
        let parallelism = usize::try_from(spec.parallelism.unwrap_or(1)).unwrap_or(0);
        let remaining = match spec.completions {
            Some(n) => usize::try_from(n - succeeded).unwrap_or(0),
            None if succeeded > 0 => 0,
            None => parallelism,
        };
        let want = parallelism.min(remaining);
        if active.len() > want {
            // Parallelism went down: stop the newest.
            let mut extra = active.clone();
            extra.sort_by_key(|p| {
                std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0))
            });
            extra.truncate(active.len() - want);
            delete_pods(&pods_api, &extra).await?;
            active_count = want;
        } else if active.len() < want {
            // After a failure, replacements wait (10 s doubling, at most 6 min).
            let last_failure = failed_pods.iter().map(|p| finish_time(p)).max();
            let wait = if failed > 0 && !on_failure {
                let shift = u32::try_from(failed - 1).unwrap_or(0).min(16);
                let delay = BACKOFF_BASE.saturating_mul(1 << shift).min(BACKOFF_MAX);
                last_failure
                    .map(|t| {
                        let until = t + jiff::SignedDuration::try_from(delay).unwrap_or_default();
                        now().duration_until(until)
                    })
                    .filter(|d| d.is_positive())
            } else {
                None
            };
            if let Some(d) = wait {
                let ms = u64::try_from(d.as_millis()).unwrap_or(0) + 50;
                requeue = Some(Duration::from_millis(ms));
            } else {
                let running: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
                let mut pending = (0..spec.completions.unwrap_or(1))
                    .filter(|i| !completed.contains(i) && !running.contains(i));
                for _ in active.len()..want {
                    let index = if indexed {
                        match pending.next() {
                            Some(i) => Some(i),
                            None => break,
                        }
                    } else {
                        None
                    };
                    let pod = new_pod(job, &spec, &ns, index);
                    let created = pods_api.create(&PostParams::default(), &pod).await?;
                    let note = format!("Created pod: {}", created.name_any());
                    ctx.event(CONTROLLER, job, false, "SuccessfulCreate", note)
                        .await;
                    active_count += 1;
                }
            }
        }
        if let Some(deadline) = spec.active_deadline_seconds {
            let left = deadline - now().duration_since(start_time).as_secs();
            let d = Duration::from_secs(u64::try_from(left.max(0)).unwrap_or(0) + 1);
            requeue = Some(requeue.map_or(d, |r| r.min(d)));
        }
    }

    let fmt = |t: jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut new_status = json!({
        "active": active_count,
        "ready": ready,
        "succeeded": succeeded,
        "failed": failed,
        "terminating": 0,
        "conditions": conditions,
        "uncountedTerminatedPods": {},
    });
    if !suspended || status.start_time.is_some() {
        new_status["startTime"] = json!(fmt(start_time));
    }
    if let Some(t) = completion_time {
        new_status["completionTime"] = json!(fmt(t));
    }
    if indexed {
        new_status["completedIndexes"] = json!(format_indexes(&completed));
    }
    let current = serde_json::to_value(&job.status).unwrap_or(Value::Null);
    let changed = ["active", "ready", "succeeded", "failed", "completedIndexes"]
        .iter()
        .any(|f| current[f] != new_status[f] && !(current[f].is_null() && new_status[f] == 0))
        || current["startTime"].is_null() && !new_status["startTime"].is_null()
        || completion_time.is_some()
        || fail_job.is_some()
        || has_condition(job, "Suspended") != suspended;
    if changed {
        jobs.patch_status(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": new_status})),
        )
        .await?;
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_round_trip() {
        let set: BTreeSet<i32> = [0, 1, 2, 5, 7, 8].into();
        assert_eq!(format_indexes(&set), "0-2,5,7-8");
        assert_eq!(parse_indexes("0-2,5,7-8"), set);
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn pod_failure_policy_rules_apply_in_order() {
        let spec: JobSpec = serde_json::from_value(json!({
            "template": {},
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
                {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [0]}},
            ]},
        }))
        .unwrap();
        let failed = |code: i32, condition: Option<&str>| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "ns"},
                "status": {
                    "phase": "Failed",
                    "conditions": condition.map(|c| vec![json!({"type": c, "status": "True"})]),
                    "containerStatuses": [{"name": "main", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": code}}}],
                },
            }))
            .unwrap()
        };
        assert_eq!(
            verdict(&spec, &failed(42, None)),
            Verdict::FailJob(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
                    .into()
            )
        );
        assert_eq!(verdict(&spec, &failed(1, None)), Verdict::Count);
        assert_eq!(
            verdict(&spec, &failed(42, Some("DisruptionTarget"))),
            Verdict::Ignore
        );
    }
}
