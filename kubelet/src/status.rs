//! A pod's status from what the runtime shows: phase, conditions, container
//! statuses (state, lastState, restartCount, ready, started, ids), IPs — computed
//! as upstream's kubelet does (`getPhase`, `generateAPIPodStatus`).

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use crate::labels;

/// Why a container is waiting instead of (re)starting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// `CrashLoopBackOff`, `CreateContainerConfigError`, `ErrImageNeverPull`, ...
    pub reason: String,
    /// Upstream-style message.
    pub message: String,
}

/// What the worker saw of one pod in the runtime.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The pod's sandbox is ready.
    pub sandbox_ready: bool,
    /// The sandbox's IP.
    pub pod_ip: Option<String>,
    /// Each container's attempts, oldest first.
    pub containers: HashMap<String, Vec<cri::ContainerStatus>>,
    /// Containers held back, and why.
    pub waiting: HashMap<String, Waiting>,
    /// Probe verdicts of running containers: ready (readiness) and started
    /// (startup); a container without probes is both once running.
    pub probed: HashMap<String, (bool, bool)>,
}

impl Observed {
    /// The latest attempt of container `name`.
    pub fn latest(&self, name: &str) -> Option<&cri::ContainerStatus> {
        self.containers.get(name).and_then(|a| a.last())
    }

    /// The attempt before the latest.
    fn previous(&self, name: &str) -> Option<&cri::ContainerStatus> {
        self.containers
            .get(name)
            .and_then(|a| a.len().checked_sub(2).map(|i| &a[i]))
    }
}

/// CRI state numbers.
pub fn state(c: &cri::ContainerStatus) -> cri::ContainerState {
    cri::ContainerState::try_from(c.state).unwrap_or(cri::ContainerState::ContainerUnknown)
}

fn rfc3339(nanos: i64) -> Value {
    match jiff::Timestamp::from_nanosecond(i128::from(nanos)) {
        Ok(t) if nanos > 0 => json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        _ => Value::Null,
    }
}

fn terminated(c: &cri::ContainerStatus, runtime: &str) -> Value {
    let reason = if !c.reason.is_empty() {
        c.reason.clone()
    } else if c.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    let mut t = json!({
        "exitCode": c.exit_code,
        "reason": reason,
        "startedAt": rfc3339(c.started_at),
        "finishedAt": rfc3339(c.finished_at),
        "containerID": format!("{runtime}://{}", c.id),
    });
    let message = if c.message.is_empty() {
        termination_message(c)
    } else {
        c.message.clone()
    };
    if !message.is_empty() {
        t["message"] = json!(message);
    }
    json!({"terminated": t})
}

/// Upstream's limits: 4 KiB of the file, or the last 80 log lines up to 2 KiB.
const MAX_MESSAGE_BYTES: u64 = 4096;
const MAX_LOG_LINES: usize = 80;
const MAX_LOG_BYTES: usize = 2048;

/// The message a terminated container left in its `terminationMessagePath`
/// (read through the host file mounted there), or with `FallbackToLogsOnError`
/// the tail of its log when it failed without one.
fn termination_message(c: &cri::ContainerStatus) -> String {
    use std::io::Read;
    let path = c.annotations.get(labels::TERMINATION_MESSAGE_PATH);
    let host = path.and_then(|p| c.mounts.iter().find(|m| &m.container_path == p));
    let mut message = String::new();
    if let Some(m) = host
        && let Ok(f) = std::fs::File::open(&m.host_path)
    {
        let mut bytes = Vec::new();
        let _ = f.take(MAX_MESSAGE_BYTES).read_to_end(&mut bytes);
        message = String::from_utf8_lossy(&bytes).into_owned();
    }
    let fallback = c
        .annotations
        .get(labels::TERMINATION_MESSAGE_POLICY)
        .is_some_and(|p| p == "FallbackToLogsOnError");
    if message.is_empty() && fallback && c.exit_code != 0 {
        message = log_tail(&c.log_path);
    }
    message
}

fn log_tail(path: &str) -> String {
    let Ok(raw) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let lines: Vec<String> = raw
        .lines()
        .filter_map(crate::logs::parse)
        .map(|l| {
            if l.full {
                format!("{}\n", l.text)
            } else {
                l.text
            }
        })
        .collect();
    let tail = lines[lines.len().saturating_sub(MAX_LOG_LINES)..].concat();
    let mut start = tail.len().saturating_sub(MAX_LOG_BYTES);
    while !tail.is_char_boundary(start) {
        start += 1;
    }
    tail[start..].to_owned()
}

/// Whether container `c` (latest attempt) has exited for good under the pod's
/// restart policy (`init`: init containers restart on failure unless `Never`).
pub fn done(policy: &str, c: &cri::ContainerStatus, init: bool) -> bool {
    if state(c) != cri::ContainerState::ContainerExited {
        return false;
    }
    match (policy, init) {
        ("Never", _) => true,
        (_, true) | ("OnFailure", false) => c.exit_code == 0,
        _ => false,
    }
}

fn container_status(
    spec: &Container,
    observed: &Observed,
    runtime: &str,
    default_waiting: &str,
) -> Value {
    let name = &spec.name;
    let latest = observed.latest(name);
    let mut s = json!({
        "name": name,
        "image": spec.image.clone().unwrap_or_default(),
        "imageID": latest.map(|c| c.image_ref.clone()).unwrap_or_default(),
        "restartCount": latest.and_then(|c| c.metadata.as_ref()).map_or(0, |m| m.attempt),
        "ready": false,
        "started": false,
        "lastState": {},
    });
    if let Some(c) = latest {
        s["containerID"] = json!(format!("{runtime}://{}", c.id));
    }
    let waiting = observed.waiting.get(name);
    let (state_json, last) = match (latest, waiting) {
        (Some(c), Some(w)) if state(c) == cri::ContainerState::ContainerExited => (
            json!({"waiting": {"reason": w.reason, "message": w.message}}),
            Some(terminated(c, runtime)),
        ),
        (None, Some(w)) => (
            json!({"waiting": {"reason": w.reason, "message": w.message}}),
            None,
        ),
        (Some(c), _) => match state(c) {
            cri::ContainerState::ContainerRunning => {
                let (ready, started) = observed.probed.get(name).copied().unwrap_or((true, true));
                s["ready"] = json!(ready);
                s["started"] = json!(started);
                (
                    json!({"running": {"startedAt": rfc3339(c.started_at)}}),
                    None,
                )
            }
            cri::ContainerState::ContainerExited => (terminated(c, runtime), None),
            _ => (json!({"waiting": {"reason": "ContainerCreating"}}), None),
        },
        (None, None) => (json!({"waiting": {"reason": default_waiting}}), None),
    };
    s["state"] = state_json;
    let last = last.or_else(|| observed.previous(name).map(|p| terminated(p, runtime)));
    if let Some(last) = last {
        s["lastState"] = last;
    }
    s
}

/// The pod's phase, as upstream's `getPhase`.
pub fn phase(pod: &Pod, observed: &Observed) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "Pending";
    };
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    for init in spec.init_containers.iter().flatten() {
        match observed.latest(&init.name) {
            Some(c) if done(policy, c, true) && c.exit_code != 0 => return "Failed",
            Some(c) if state(c) == cri::ContainerState::ContainerExited && c.exit_code == 0 => {}
            _ => return "Pending",
        }
    }
    let (mut running, mut waiting, mut succeeded, mut failed) = (0, 0, 0, 0);
    for c in &spec.containers {
        match observed.latest(&c.name) {
            Some(s) if state(s) == cri::ContainerState::ContainerRunning => running += 1,
            Some(s) if state(s) == cri::ContainerState::ContainerExited => {
                if done(policy, s, false) {
                    if s.exit_code == 0 {
                        succeeded += 1
                    } else {
                        failed += 1
                    }
                } else {
                    // It will restart: it counts as running, as upstream's does.
                    running += 1;
                }
            }
            _ => waiting += 1,
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if failed > 0 {
        "Failed"
    } else if succeeded > 0 {
        "Succeeded"
    } else {
        "Pending"
    }
}

/// Guaranteed, Burstable or BestEffort, from the containers' requests and limits.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    let all: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.as_ref();
        let requests = r.and_then(|r| r.requests.clone()).unwrap_or_default();
        let limits = r.and_then(|r| r.limits.clone()).unwrap_or_default();
        any |= !requests.is_empty() || !limits.is_empty();
        for res in ["cpu", "memory"] {
            match (requests.get(res), limits.get(res)) {
                (Some(req), Some(lim)) if req == lim => {}
                (None, Some(_)) => {}
                _ => guaranteed = false,
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// The whole status to write, keeping condition transition times that did not change.
pub fn pod_status(
    pod: &Pod,
    observed: &Observed,
    runtime: &str,
    host_ip: &str,
    start_time: &str,
) -> Value {
    let Some(spec) = &pod.spec else {
        return json!({});
    };
    let phase = phase(pod, observed);
    let inits: Vec<Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(c, observed, runtime, "PodInitializing"))
        .collect();
    let initialized = spec.init_containers.iter().flatten().all(|c| {
        observed
            .latest(&c.name)
            .is_some_and(|s| state(s) == cri::ContainerState::ContainerExited && s.exit_code == 0)
    });
    let default_waiting = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let containers: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| container_status(c, observed, runtime, default_waiting))
        .collect();
    let ready = containers.iter().all(|c| c["ready"] == json!(true));
    let old = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let condition = |type_: &str, ok: bool, reason: Option<&str>| {
        let status = if ok { "True" } else { "False" };
        let since = old
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| now.clone());
        let mut c = json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
        if let (false, Some(r)) = (ok, reason) {
            c["reason"] = json!(r);
        }
        c
    };
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let reason_not_ready = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let mut status = json!({
        "phase": phase,
        "conditions": [
            condition("PodReadyToStartContainers", observed.sandbox_ready, None),
            condition("Initialized", initialized, Some("ContainersNotInitialized")),
            condition("Ready", ready && !terminal, Some(reason_not_ready)),
            condition("ContainersReady", ready && !terminal, Some(reason_not_ready)),
            condition("PodScheduled", true, None),
        ],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "qosClass": qos_class(pod),
        "containerStatuses": containers,
    });
    if !inits.is_empty() {
        status["initContainerStatuses"] = json!(inits);
    }
    if let Some(ip) = &observed.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(policy: &str, inits: &[&str], containers: &[&str]) -> Pod {
        let c = |n: &&str| json!({"name": n, "image": "busybox"});
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "restartPolicy": policy,
                "initContainers": inits.iter().map(c).collect::<Vec<_>>(),
                "containers": containers.iter().map(c).collect::<Vec<_>>(),
            },
        }))
        .unwrap()
    }

    fn attempt(state: cri::ContainerState, exit: i32, n: u32) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: format!("id{n}"),
            metadata: Some(cri::ContainerMetadata {
                name: "x".into(),
                attempt: n,
            }),
            state: state as i32,
            exit_code: exit,
            started_at: 1_700_000_000_000_000_000,
            finished_at: 1_700_000_001_000_000_000,
            ..Default::default()
        }
    }

    fn observed(list: &[(&str, Vec<cri::ContainerStatus>)]) -> Observed {
        Observed {
            sandbox_ready: true,
            pod_ip: Some("10.0.0.2".into()),
            containers: list
                .iter()
                .map(|(n, a)| (n.to_string(), a.clone()))
                .collect(),
            waiting: HashMap::new(),
            probed: HashMap::new(),
        }
    }

    use cri::ContainerState::{ContainerExited as Exited, ContainerRunning as Running};

    #[test]
    fn phases_follow_the_restart_policy() {
        let p = pod("Never", &[], &["a", "b"]);
        assert_eq!(phase(&p, &observed(&[])), "Pending");
        let o = observed(&[
            ("a", vec![attempt(Running, 0, 0)]),
            ("b", vec![attempt(Exited, 0, 0)]),
        ]);
        assert_eq!(phase(&p, &o), "Running");
        let o = observed(&[
            ("a", vec![attempt(Exited, 1, 0)]),
            ("b", vec![attempt(Exited, 0, 0)]),
        ]);
        assert_eq!(phase(&p, &o), "Failed");
        let o = observed(&[
            ("a", vec![attempt(Exited, 0, 0)]),
            ("b", vec![attempt(Exited, 0, 0)]),
        ]);
        assert_eq!(phase(&p, &o), "Succeeded");
        // OnFailure: a failed container restarts, so the pod keeps running.
        let p = pod("OnFailure", &[], &["a"]);
        assert_eq!(
            phase(&p, &observed(&[("a", vec![attempt(Exited, 1, 0)])])),
            "Running"
        );
        assert_eq!(
            phase(&p, &observed(&[("a", vec![attempt(Exited, 0, 0)])])),
            "Succeeded"
        );
        // Always never ends.
        let p = pod("Always", &[], &["a"]);
        assert_eq!(
            phase(&p, &observed(&[("a", vec![attempt(Exited, 0, 0)])])),
            "Running"
        );
        // Init containers gate the rest.
        let p = pod("Always", &["i"], &["a"]);
        assert_eq!(
            phase(&p, &observed(&[("i", vec![attempt(Running, 0, 0)])])),
            "Pending"
        );
        let p = pod("Never", &["i"], &["a"]);
        assert_eq!(
            phase(&p, &observed(&[("i", vec![attempt(Exited, 2, 0)])])),
            "Failed"
        );
    }

    #[test]
    fn a_crash_looping_container_shows_its_last_state() {
        let p = pod("Always", &[], &["a"]);
        let mut o = observed(&[("a", vec![attempt(Exited, 1, 0), attempt(Exited, 1, 1)])]);
        o.waiting.insert(
            "a".into(),
            Waiting {
                reason: "CrashLoopBackOff".into(),
                message: "back-off 10s".into(),
            },
        );
        let s = pod_status(&p, &o, "containerd", "10.1.1.1", "2024-01-01T00:00:00Z");
        let c = &s["containerStatuses"][0];
        assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(c["restartCount"], 1);
        assert_eq!(c["containerID"], "containerd://id1");
        assert_eq!(s["conditions"][2]["status"], "False");
        assert_eq!(s["podIP"], "10.0.0.2");
        assert_eq!(s["qosClass"], "BestEffort");
    }

    #[test]
    fn qos_classes() {
        let with = |res: Value| -> Pod {
            serde_json::from_value(
                json!({"spec": {"containers": [{"name": "a", "resources": res}]}}),
            )
            .unwrap()
        };
        assert_eq!(qos_class(&with(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&with(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&with(json!({"requests": {"cpu": "1"}}))),
            "Burstable"
        );
    }
}
