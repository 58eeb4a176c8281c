//! The CronJob controller: creates a Job from `jobTemplate` at each time the
//! `schedule` names, as upstream's (v2) controller does:
//!
//! - standard five-field cron syntax and the `@hourly`-style nicknames (parsed
//!   by `croner`), evaluated in `timeZone` (the node's tzdb) or UTC;
//! - the most recent missed time is run once, unless it is older than
//!   `startingDeadlineSeconds`;
//! - `concurrencyPolicy` Allow, Forbid (skip while a Job runs) and Replace
//!   (delete the running Jobs first); `suspend`;
//! - Jobs are named `<cronjob>-<scheduled time in Unix minutes>`, so a time is
//!   never run twice, even across restarts;
//! - `successfulJobsHistoryLimit` / `failedJobsHistoryLimit` prune finished
//!   Jobs (oldest first, pods deleted in the background);
//! - status `active`, `lastScheduleTime`, `lastSuccessfulTime`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use croner::{Cron, parser::CronParser};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy},
    runtime::{Controller, controller::Action, watcher},
};
use serde_json::json;

use crate::{Context, Error, Metrics, pods, retry_soon};

/// The annotation carrying the time a Job was scheduled for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Runs the controller until its watches end.
pub async fn run(client: Client, metrics: Metrics) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    Controller::new(
        Api::<CronJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client), watcher::Config::default())
    .run(reconcile, retry_soon, ctx)
    .for_each(|_| std::future::ready(()))
    .await;
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.observe("cronjob", sync(&cj, &ctx)).await
}

/// Parses a schedule as upstream's validation accepts it: five fields or a
/// nickname, no seconds, no years.
pub fn parse_schedule(schedule: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .sloppy_ranges(true)
        .build()
        .parse(schedule)
        .map_err(|e| e.to_string())
}

/// The latest scheduled time in `(after, now]`, if any, and the next one after `now`.
pub fn schedule_times(
    cron: &Cron,
    tz: &jiff::tz::TimeZone,
    after: jiff::Timestamp,
    now: jiff::Timestamp,
) -> (Option<jiff::Timestamp>, Option<jiff::Timestamp>) {
    let now_z = now.to_zoned(tz.clone());
    let latest = cron
        .find_previous_occurrence(&now_z, true)
        .ok()
        .map(|z| z.timestamp())
        .filter(|t| *t > after);
    let next = cron
        .find_next_occurrence(&now_z, false)
        .ok()
        .map(|z| z.timestamp());
    (latest, next)
}

fn finished(job: &Job) -> Option<(&'static str, jiff::Timestamp)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    for (kind, name) in [("Complete", "Complete"), ("Failed", "Failed")] {
        if let Some(c) = conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")
        {
            let at = c
                .last_transition_time
                .as_ref()
                .map_or_else(jiff::Timestamp::now, |t| t.0);
            return Some((name, at));
        }
    }
    None
}

fn background() -> DeleteParams {
    DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    }
}

async fn delete_job(api: &Api<Job>, name: &str) -> Result<(), Error> {
    match api.delete(name, &background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

async fn sync(cj: &CronJob, ctx: &Context) -> Result<Action, Error> {
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = cj.namespace().unwrap_or_else(|| "default".into());
    let name = cj.name_any();
    let uid = cj.uid().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let cronjobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let now = jiff::Timestamp::now();

    let mut owned: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|j| {
            j.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .collect();
    owned.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));

    // History: keep the newest finished Jobs of each kind.
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<(jiff::Timestamp, String)> = owned
            .iter()
            .filter_map(|j| {
                finished(j)
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, t)| (t, j.name_any()))
            })
            .collect();
        done.sort();
        let extra = done
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        for (_, job) in done.into_iter().take(extra) {
            delete_job(&jobs_api, &job).await?;
            owned.retain(|j| j.name_any() != job);
        }
    }
    let last_success = owned
        .iter()
        .filter_map(|j| {
            finished(j)
                .filter(|(k, _)| *k == "Complete")
                .map(|(_, t)| t)
        })
        .max();
    let mut active: Vec<&Job> = owned.iter().filter(|j| finished(j).is_none()).collect();

    let status = cj.status.clone().unwrap_or_default();
    let mut last_schedule = status.last_schedule_time.as_ref().map(|t| t.0);
    let mut requeue = None;
    let cron = match parse_schedule(&spec.schedule) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(cronjob = %name, schedule = %spec.schedule, error = %e, "unparseable schedule");
            None
        }
    };
    let tz = match spec.time_zone.as_deref() {
        Some(zone) => jiff::tz::TimeZone::get(zone).ok(),
        None => Some(jiff::tz::TimeZone::UTC),
    };
    let mut replaced = Vec::new();
    if let (Some(cron), Some(tz)) = (&cron, &tz) {
        let after = last_schedule
            .or_else(|| cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now);
        let (due, next) = schedule_times(cron, tz, after, now);
        requeue = next.map(|t| {
            let ms = now.duration_until(t).as_millis().max(0);
            Duration::from_millis(u64::try_from(ms).unwrap_or(0) + 100)
        });
        let too_late = |t: jiff::Timestamp| {
            spec.starting_deadline_seconds
                .is_some_and(|d| now.duration_since(t).as_secs() > d)
        };
        if let Some(t) = due
            && spec.suspend != Some(true)
            && !too_late(t)
        {
            let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
            let run = match policy {
                "Forbid" if !active.is_empty() => {
                    // Try again when the running Job finishes (its watch event).
                    false
                }
                "Replace" => {
                    for j in &active {
                        delete_job(&jobs_api, &j.name_any()).await?;
                        replaced.push(j.name_any());
                    }
                    true
                }
                _ => true,
            };
            if run {
                let job_name = format!("{name}-{}", t.as_second() / 60);
                let template = spec.job_template.clone();
                let mut meta = template.metadata.unwrap_or_default();
                meta.name = Some(job_name.clone());
                meta.namespace = Some(ns.clone());
                meta.annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(SCHEDULED_TIMESTAMP.into(), rfc3339(t));
                meta.owner_references = Some(vec![pods::controller_ref(
                    "batch/v1", "CronJob", &name, &uid,
                )]);
                let job = Job {
                    metadata: meta,
                    spec: Some(template.spec.unwrap_or_default()),
                    status: None,
                };
                match jobs_api.create(&PostParams::default(), &job).await {
                    Ok(created) => {
                        let note = format!("Created job {}", created.name_any());
                        ctx.event("cronjob-controller", cj, false, "SuccessfulCreate", note)
                            .await;
                        owned.push(created);
                    }
                    // Created before a restart: the name says it was this time.
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
                last_schedule = Some(t);
            }
        }
    }
    active = owned
        .iter()
        .filter(|j| finished(j).is_none() && !replaced.contains(&j.name_any()))
        .collect();
    let refs: Vec<serde_json::Value> = active
        .iter()
        .map(|j| {
            json!({
                "kind": "Job",
                "apiVersion": "batch/v1",
                "namespace": ns,
                "name": j.name_any(),
                "uid": j.uid(),
                "resourceVersion": j.resource_version(),
            })
        })
        .collect();
    let mut new_status = json!({"active": refs});
    if let Some(t) = last_schedule {
        new_status["lastScheduleTime"] = json!(rfc3339(t));
    }
    if let Some(t) = last_success {
        new_status["lastSuccessfulTime"] = json!(rfc3339(t));
    }
    let current = serde_json::to_value(&cj.status).unwrap_or_default();
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["active"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect()
    };
    let changed = names(&current) != names(&new_status)
        || current["lastScheduleTime"] != new_status["lastScheduleTime"]
        || (!new_status["lastSuccessfulTime"].is_null()
            && current["lastSuccessfulTime"] != new_status["lastSuccessfulTime"]);
    if changed {
        cronjobs
            .patch_status(
                &name,
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

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn schedules_run_the_latest_missed_time_once() {
        let every_5 = parse_schedule("*/5 * * * *").unwrap();
        let utc = jiff::tz::TimeZone::UTC;
        let (due, next) = schedule_times(
            &every_5,
            &utc,
            at("2026-01-01T10:00:00Z"),
            at("2026-01-01T10:17:30Z"),
        );
        assert_eq!(due, Some(at("2026-01-01T10:15:00Z")));
        assert_eq!(next, Some(at("2026-01-01T10:20:00Z")));
        // Already ran at 10:15: nothing due until 10:20.
        let (due, _) = schedule_times(
            &every_5,
            &utc,
            at("2026-01-01T10:15:00Z"),
            at("2026-01-01T10:17:30Z"),
        );
        assert_eq!(due, None);
    }

    #[test]
    fn nicknames_weekdays_and_time_zones() {
        let hourly = parse_schedule("@hourly").unwrap();
        let utc = jiff::tz::TimeZone::UTC;
        let (_, next) = schedule_times(
            &hourly,
            &utc,
            at("2026-01-01T10:00:00Z"),
            at("2026-01-01T10:17:30Z"),
        );
        assert_eq!(next, Some(at("2026-01-01T11:00:00Z")));
        // 2026-01-04 is a Sunday: 0 is Sunday, as in cron.
        let sundays = parse_schedule("30 6 * * 0").unwrap();
        let (_, next) = schedule_times(
            &sundays,
            &utc,
            at("2026-01-01T00:00:00Z"),
            at("2026-01-01T00:00:00Z"),
        );
        assert_eq!(next, Some(at("2026-01-04T06:30:00Z")));
        if let Ok(berlin) = jiff::tz::TimeZone::get("Europe/Berlin") {
            let nine = parse_schedule("0 9 * * *").unwrap();
            let (_, next) = schedule_times(
                &nine,
                &berlin,
                at("2026-01-01T00:00:00Z"),
                at("2026-01-01T00:00:00Z"),
            );
            assert_eq!(next, Some(at("2026-01-01T08:00:00Z")));
        }
        assert!(parse_schedule("* * * * * *").is_err(), "no seconds field");
        assert!(parse_schedule("61 * * * *").is_err());
    }
}
