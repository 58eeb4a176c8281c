//! Pod workers: one task per pod bound to this node, syncing the runtime to the
//! pod's spec (sandbox, init containers in order, containers, restarts with
//! crash-loop backoff), writing its status, and tearing it down on deletion.
//!
//! The manager watches this node's pods (`spec.nodeName=<node>`) and hands each
//! worker the latest object. Workers also resync every second (upstream's PLEG
//! relist period), so container exits are noticed without runtime events. Pods
//! found in the runtime but no longer in the API (deleted while the agent was
//! down) are torn down once the first list is in.

use sextant_metrics::traces;
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    Config, Error, container,
    cri::CriClient,
    events::{Recorder, Type},
    labels,
    metrics::{KubeletMetrics, StateLabels},
    probes,
    status::{self, Observed, Waiting},
    volumes,
};

/// How often a worker resyncs its pod with the runtime.
const RESYNC: Duration = Duration::from_secs(1);
/// How long a postStart hook may take.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// How often ConfigMap, Secret and downward API volumes are refreshed.
const VOLUME_REFRESH: Duration = Duration::from_secs(10);
/// Crash-loop backoff: first delay and cap (upstream's 10 s doubling to 5 min).
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What every worker shares.
pub struct PodRuntime {
    /// The API client (the node's own identity).
    pub client: Client,
    /// The CRI connection.
    pub cri: CriClient,
    /// The agent's configuration.
    pub config: Config,
    /// `containerd`, from the runtime's Version: the scheme of container IDs.
    pub runtime_name: String,
    /// Metrics.
    pub metrics: KubeletMetrics,
    /// Events about pods.
    pub events: Recorder,
}

struct Worker {
    updates: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// Watches this node's pods and runs one worker per pod until the watch ends.
pub async fn run(rt: Arc<PodRuntime>) -> Result<(), Error> {
    let pods: Api<Pod> = Api::all(rt.client.clone());
    let selector = format!("spec.nodeName={}", rt.config.node_name);
    let mut events = watcher(pods, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut listed: Vec<String> = Vec::new();
    let gauge = tokio::spawn(count_running(rt.clone()));
    while let Some(event) = events.next().await {
        workers.retain(|_, w| !w.task.is_finished());
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "watching pods failed; retrying");
                continue;
            }
        };
        match event {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                listed.push(uid.clone());
                match workers.get(&uid) {
                    Some(w) => {
                        w.updates.send_replace(Some(pod));
                    }
                    None => {
                        // Every line the worker logs carries the pod's namespace
                        // and name as fields (`--log-format=json`: under "span").
                        let span = tracing::info_span!(
                            "pod",
                            namespace = pod.metadata.namespace.as_deref().unwrap_or_default(),
                            pod = pod.metadata.name.as_deref().unwrap_or_default(),
                        );
                        let (tx, rx) = watch::channel(Some(pod));
                        let task = tokio::spawn(tracing::Instrument::instrument(
                            work(rt.clone(), uid.clone(), rx),
                            span,
                        ));
                        workers.insert(uid, Worker { updates: tx, task });
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(w) = pod.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                    w.updates.send_replace(None);
                }
            }
            watcher::Event::InitDone => {
                if let Err(e) = remove_orphans(&rt, &listed).await {
                    tracing::warn!(error = %e, "removing pods no longer in the API failed");
                }
            }
        }
    }
    gauge.abort();
    Ok(())
}

/// Tears down sandboxes of pods that are not in `known`.
async fn remove_orphans(rt: &PodRuntime, known: &[String]) -> Result<(), Error> {
    let mut runtime = rt.cri.runtime.clone();
    let sandboxes = runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items;
    for s in sandboxes {
        let Some(uid) = s.labels.get(labels::POD_UID) else {
            continue;
        };
        if !known.contains(uid) {
            tracing::info!(pod_uid = %uid, "tearing down a pod that is no longer in the API");
            kill_pod(rt, uid, 0).await?;
        }
    }
    Ok(())
}

/// Refreshes the running pods and containers gauges every few seconds.
async fn count_running(rt: Arc<PodRuntime>) {
    loop {
        let mut runtime = rt.cri.runtime.clone();
        if let Ok(s) = runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
        {
            let ready = s
                .into_inner()
                .items
                .iter()
                .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
                .count();
            rt.metrics.running_pods.set(ready as i64);
        }
        if let Ok(c) = runtime
            .list_containers(cri::ListContainersRequest::default())
            .await
        {
            let mut by_state: HashMap<&str, i64> = HashMap::new();
            for c in &c.into_inner().containers {
                let s = match cri::ContainerState::try_from(c.state) {
                    Ok(cri::ContainerState::ContainerRunning) => "running",
                    Ok(cri::ContainerState::ContainerExited) => "exited",
                    Ok(cri::ContainerState::ContainerCreated) => "created",
                    _ => "unknown",
                };
                *by_state.entry(s).or_default() += 1;
            }
            for s in ["running", "exited", "created", "unknown"] {
                rt.metrics
                    .containers
                    .get_or_create(&StateLabels {
                        container_state: s.into(),
                    })
                    .set(by_state.get(s).copied().unwrap_or(0));
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// One pod's worker state.
struct PodWorker {
    rt: Arc<PodRuntime>,
    uid: String,
    /// Per container: when it may restart next, and the delay after that.
    backoff: HashMap<String, (Instant, Duration)>,
    /// The last status written, to write only changes.
    reported: Option<Value>,
    /// When the worker first saw the pod (for the start-duration metric).
    seen: Instant,
    started_reported: bool,
    /// Volume name → host path, and when they were last refreshed.
    volumes: Option<(HashMap<String, std::path::PathBuf>, Instant)>,
    /// Probe states by container and kind.
    probes: HashMap<(String, probes::Kind), probes::State>,
    /// The sandbox whose network namespace path is cached, and that path.
    netns: Option<(String, Option<std::path::PathBuf>)>,
    /// The backoff deadline last reported with a BackOff event, per container.
    backoff_reported: HashMap<String, Instant>,
    /// The volume error last reported with a FailedMount event.
    mount_error: Option<String>,

    start_time: String,
}

async fn work(rt: Arc<PodRuntime>, uid: String, mut updates: watch::Receiver<Option<Pod>>) {
    let mut w = PodWorker {
        rt,
        uid,
        backoff: HashMap::new(),
        reported: None,
        seen: Instant::now(),
        started_reported: false,
        volumes: None,
        probes: HashMap::new(),
        netns: None,
        backoff_reported: HashMap::new(),
        mount_error: None,

        start_time: jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
    };
    loop {
        let pod = updates.borrow_and_update().clone();
        match pod {
            Some(pod) if pod.metadata.deletion_timestamp.is_none() => {
                if let Err(e) = w.sync(&pod).await {
                    tracing::warn!(pod = %name(&pod), error = %e, "syncing the pod failed; retrying");
                }
            }
            Some(pod) => match w.terminate(&pod).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(pod = %name(&pod), error = %e, "terminating the pod failed; retrying")
                }
            },
            None => match kill_pod(&w.rt, &w.uid, 0).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(pod_uid = %w.uid, error = %e, "tearing down the pod failed; retrying")
                }
            },
        }
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

fn name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The containers whose CRI labels include `labels`.
async fn containers_labelled(
    rt: &PodRuntime,
    label_selector: HashMap<String, String>,
) -> Result<Vec<cri::Container>, Error> {
    let request = cri::ListContainersRequest {
        filter: Some(cri::ContainerFilter {
            label_selector,
            ..Default::default()
        }),
    };
    Ok(rt
        .cri
        .runtime
        .clone()
        .list_containers(request)
        .await?
        .into_inner()
        .containers)
}

/// The sandboxes whose CRI labels include `labels` (only ready ones with `ready`).
async fn sandboxes_labelled(
    rt: &PodRuntime,
    label_selector: HashMap<String, String>,
    ready: bool,
) -> Result<Vec<cri::PodSandbox>, Error> {
    let state = ready.then_some(cri::PodSandboxStateValue {
        state: cri::PodSandboxState::SandboxReady as i32,
    });
    let request = cri::ListPodSandboxRequest {
        filter: Some(cri::PodSandboxFilter {
            label_selector,
            state,
            ..Default::default()
        }),
    };
    Ok(rt
        .cri
        .runtime
        .clone()
        .list_pod_sandbox(request)
        .await?
        .into_inner()
        .items)
}

/// The pod's containers (every attempt kept), found by the pod-uid label.
async fn pod_containers(rt: &PodRuntime, uid: &str) -> Result<Vec<cri::Container>, Error> {
    containers_labelled(rt, labels::of_pod(uid)).await
}

/// The instances of one container of the pod `namespace/pod`, oldest first (by
/// creation, then attempt): the last is the current one.
pub(crate) async fn container_instances(
    rt: &PodRuntime,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<Vec<cri::Container>, Error> {
    let selector = [
        (labels::POD_NAMESPACE.to_owned(), namespace.to_owned()),
        (labels::POD_NAME.to_owned(), pod.to_owned()),
        (labels::CONTAINER_NAME.to_owned(), container.to_owned()),
    ]
    .into();
    let mut containers = containers_labelled(rt, selector).await?;
    containers.sort_by_key(|c| (c.created_at, c.metadata.as_ref().map_or(0, |m| m.attempt)));
    Ok(containers)
}

/// The ready sandbox of the pod `namespace/pod`, if it has one.
pub(crate) async fn ready_sandbox(
    rt: &PodRuntime,
    namespace: &str,
    pod: &str,
) -> Result<Option<cri::PodSandbox>, Error> {
    let selector = [
        (labels::POD_NAMESPACE.to_owned(), namespace.to_owned()),
        (labels::POD_NAME.to_owned(), pod.to_owned()),
    ]
    .into();
    let sandboxes = sandboxes_labelled(rt, selector, true).await?;
    Ok(sandboxes.into_iter().max_by_key(|s| s.created_at))
}

/// The pod's sandboxes, found by the pod-uid label.
async fn pod_sandboxes(rt: &PodRuntime, uid: &str) -> Result<Vec<cri::PodSandbox>, Error> {
    sandboxes_labelled(rt, labels::of_pod(uid), false).await
}

/// Stops every container of the pod (with `grace` seconds to exit) and removes
/// its sandboxes, which removes the containers too.
async fn kill_pod(rt: &PodRuntime, uid: &str, grace: i64) -> Result<(), Error> {
    let mut runtime = rt.cri.runtime.clone();
    let containers = pod_containers(rt, uid).await?;
    let stops = containers
        .iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
        .map(|c| {
            let mut runtime = runtime.clone();
            let id = c.id.clone();
            async move {
                runtime
                    .stop_container(cri::StopContainerRequest {
                        container_id: id,
                        timeout: grace,
                    })
                    .await
            }
        });
    for r in futures::future::join_all(stops).await {
        if let Err(e) = r {
            rt.metrics.runtime_error("stop_container");
            return Err(e.into());
        }
    }
    let sandboxes = pod_sandboxes(rt, uid).await?;
    for s in sandboxes {
        runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            })
            .await?;
        runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: s.id,
            })
            .await?;
    }
    volumes::remove(&rt.config.data_dir, uid);
    Ok(())
}

impl PodWorker {
    /// Graceful deletion: stop the containers within the grace period, remove the
    /// sandbox, then delete the object for good (grace 0, this uid only).
    async fn terminate(&mut self, pod: &Pod) -> Result<(), Error> {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                pod.spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        tracing::info!(pod = %name(pod), grace, "killing the pod");
        let started = Instant::now();
        let budget = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
        if let Some(spec) = &pod.spec {
            let running: Vec<cri::Container> = pod_containers(&self.rt, &self.uid)
                .await?
                .into_iter()
                .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
                .collect();
            for c in &spec.containers {
                let Some(instance) = running
                    .iter()
                    .find(|r| r.labels.get(labels::CONTAINER_NAME) == Some(&c.name))
                else {
                    continue;
                };
                let message = format!("Stopping container {}", c.name);
                self.rt
                    .events
                    .record(pod, Some(&c.name), Type::Normal, "Killing", &message)
                    .await;
                // preStop runs within the grace period, before the container is signalled.
                let hook = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
                if let Some(hook) = hook {
                    let left = budget.saturating_sub(started.elapsed());
                    let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
                    let result = self
                        .run_hook(
                            &instance.pod_sandbox_id,
                            c,
                            &instance.id,
                            hook,
                            left,
                            pod_ip.as_deref(),
                        )
                        .await?;
                    if let Err(message) = result {
                        let message = format!("PreStopHook failed: {message}");
                        self.rt
                            .events
                            .record(
                                pod,
                                Some(&c.name),
                                Type::Warning,
                                "FailedPreStopHook",
                                &message,
                            )
                            .await;
                    }
                }
            }
        }
        // What is left of the grace period, at least upstream's 2 s minimum.
        let left = budget.saturating_sub(started.elapsed()).as_secs().max(2);
        kill_pod(&self.rt, &self.uid, i64::try_from(left).unwrap_or(2)).await?;
        self.rt.events.forget(&self.uid);
        let pods: Api<Pod> = Api::namespaced(
            self.rt.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods
            .delete(pod.metadata.name.as_deref().unwrap_or_default(), &params)
            .await
        {
            Ok(_) => Ok(()),
            // Already gone, or a new pod of the same name: nothing of ours is left.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn sync(&mut self, pod: &Pod) -> Result<(), Error> {
        let Some(spec) = pod.spec.clone() else {
            return Ok(());
        };
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut observed = self.observe().await?;
        let terminal = matches!(status::phase(pod, &observed), "Succeeded" | "Failed");
        let sandbox = if terminal {
            None
        } else {
            Some(self.ensure_sandbox(pod, &mut observed).await?)
        };
        let volumes_ready = match &sandbox {
            Some(_) => self.refresh_volumes(pod, &spec, &mut observed).await?,
            None => false,
        };
        if let Some(sandbox) = sandbox.as_ref().filter(|_| volumes_ready) {
            // Init containers one at a time, in order; then every container.
            let mut initialized = true;
            for c in spec.init_containers.iter().flatten() {
                match observed.latest(&c.name) {
                    Some(s)
                        if status::state(s) == cri::ContainerState::ContainerExited
                            && s.exit_code == 0 =>
                    {
                        continue;
                    }
                    Some(s) if status::done(&policy, s, true) => {
                        initialized = false;
                        break;
                    }
                    _ => {}
                }
                self.run_container(pod, sandbox, c, &mut observed, &policy, true)
                    .await?;
                initialized = false;
                break;
            }
            if initialized {
                for c in &spec.containers {
                    self.run_container(pod, sandbox, c, &mut observed, &policy, false)
                        .await?;
                }
                self.run_probes(pod, sandbox, &spec, &mut observed).await?;
            }
        }
        let status = status::pod_status(
            pod,
            &observed,
            &self.rt.runtime_name,
            &self.rt.config.node_ip.to_string(),
            pod.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                .as_deref()
                .unwrap_or(&self.start_time),
        );
        if !self.started_reported
            && status["phase"] == "Running"
            && status["conditions"][3]["status"] == "True"
        {
            self.started_reported = true;
            self.rt.metrics.pod_start.observe(
                self.seen.elapsed().as_secs_f64(),
                traces::TraceExemplar::of_pod(pod.metadata.annotations.as_ref()),
                None,
            );
        }
        if self.reported.as_ref() != Some(&status) {
            let pods: Api<Pod> = Api::namespaced(
                self.rt.client.clone(),
                pod.metadata.namespace.as_deref().unwrap_or("default"),
            );
            pods.patch_status(
                pod.metadata.name.as_deref().unwrap_or_default(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await?;
            self.reported = Some(status);
        }
        Ok(())
    }

    /// Sets up or refreshes the pod's volumes; `false` (with every container
    /// waiting in ContainerCreating) while one cannot be set up.
    async fn refresh_volumes(
        &mut self,
        pod: &Pod,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        observed: &mut Observed,
    ) -> Result<bool, Error> {
        if self
            .volumes
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < VOLUME_REFRESH)
        {
            return Ok(true);
        }
        match volumes::prepare(&self.rt.client, &self.rt.config.data_dir, pod).await? {
            Ok(paths) => {
                self.volumes = Some((paths, Instant::now()));
                Ok(true)
            }
            // Once set up, a failed refresh keeps what the containers already have.
            Err(_) if self.volumes.is_some() => Ok(true),
            Err(message) => {
                tracing::warn!(pod = %name(pod), %message, "volume setup failed");
                if self.mount_error.as_ref() != Some(&message) {
                    self.rt
                        .events
                        .record(pod, None, Type::Warning, "FailedMount", &message)
                        .await;
                    self.mount_error = Some(message.clone());
                }
                let all = spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(spec.containers.iter());
                for c in all {
                    if observed.latest(&c.name).is_none() {
                        observed.waiting.insert(
                            c.name.clone(),
                            Waiting {
                                reason: "ContainerCreating".into(),
                                message: message.clone(),
                            },
                        );
                    }
                }
                Ok(false)
            }
        }
    }

    /// The pod's sandboxes and containers as the runtime has them now.
    async fn observe(&self) -> Result<Observed, Error> {
        let mut runtime = self.rt.cri.runtime.clone();
        let containers = pod_containers(&self.rt, &self.uid).await?;
        let mut observed = Observed::default();
        for c in containers {
            let Some(name) = c.labels.get(labels::CONTAINER_NAME).cloned() else {
                continue;
            };
            let status = runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: c.id,
                    verbose: false,
                })
                .await?
                .into_inner()
                .status;
            if let Some(s) = status {
                observed.containers.entry(name).or_default().push(s);
            }
        }
        for attempts in observed.containers.values_mut() {
            attempts.sort_by_key(|s| s.metadata.as_ref().map_or(0, |m| m.attempt));
        }
        Ok(observed)
    }

    /// The pod's ready sandbox, made if there is none (a sandbox that is no longer
    /// ready — after a reboot — is replaced, and its containers with it).
    async fn ensure_sandbox(&self, pod: &Pod, observed: &mut Observed) -> Result<String, Error> {
        let mut runtime = self.rt.cri.runtime.clone();
        let sandboxes = pod_sandboxes(&self.rt, &self.uid).await?;
        let ready = sandboxes
            .iter()
            .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
            .max_by_key(|s| s.created_at);
        let id = match ready {
            Some(s) => s.id.clone(),
            None => {
                let attempt = sandboxes
                    .iter()
                    .filter_map(|s| s.metadata.as_ref().map(|m| m.attempt + 1))
                    .max()
                    .unwrap_or(0);
                for old in &sandboxes {
                    runtime
                        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                            pod_sandbox_id: old.id.clone(),
                        })
                        .await?;
                }
                observed.containers.clear();
                let config = self.sandbox_config(pod, attempt);
                tracing::info!(pod = %name(pod), attempt, "creating the pod sandbox");
                // A span of the pod's trace; the dataplane's attach nests under it.
                let span =
                    traces::from_annotations(pod.metadata.annotations.as_ref()).map(|parent| {
                        let cx = traces::start(
                            "kubelet: create pod sandbox",
                            Some(&parent),
                            vec![traces::KeyValue::new("k8s.pod.name", name(pod))],
                        );
                        traces::set_in_flight(&name(pod), &cx);
                        cx
                    });
                let r = runtime
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(config),
                        runtime_handler: String::new(),
                    })
                    .await;
                if let Some(cx) = &span {
                    traces::clear_in_flight(&name(pod));
                    traces::end(cx);
                }
                match r {
                    Ok(r) => r.into_inner().pod_sandbox_id,
                    Err(e) => {
                        self.rt.metrics.runtime_error("run_podsandbox");
                        return Err(e.into());
                    }
                }
            }
        };
        let status = runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status;
        observed.sandbox_ready = true;
        observed.pod_ip = status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty());
        Ok(id)
    }

    fn sandbox_config(&self, pod: &Pod, attempt: u32) -> cri::PodSandboxConfig {
        let meta = &pod.metadata;
        let (ns, pod_name) = (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        let hostname = pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| pod_name.clone());
        let log_directory = self
            .rt
            .config
            .data_dir
            .join("pods")
            .join(format!("{ns}_{pod_name}_{}", self.uid));
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: pod_name,
                uid: self.uid.clone(),
                namespace: ns,
                attempt,
            }),
            hostname,
            log_directory: log_directory.to_string_lossy().into_owned(),
            labels: labels::sandbox(pod),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/pod{}", self.rt.config.cgroup_root, self.uid),
                ..Default::default()
            }),
            dns_config: dns_config(
                pod,
                &self.rt.config.cluster_dns,
                &self.rt.config.cluster_domain,
            ),
            ..Default::default()
        }
    }

    /// Starts container `c` if it has never run, or restarts it if the restart
    /// policy says so and its backoff has passed; otherwise records why it waits.
    async fn run_container(
        &mut self,
        pod: &Pod,
        sandbox: &str,
        c: &Container,
        observed: &mut Observed,
        policy: &str,
        init: bool,
    ) -> Result<(), Error> {
        let attempt = match observed.latest(&c.name) {
            None => 0,
            Some(s)
                if status::state(s) == cri::ContainerState::ContainerExited
                    && !status::done(policy, s, init) =>
            {
                let now = Instant::now();
                let (until, delay) = self
                    .backoff
                    .get(&c.name)
                    .copied()
                    .unwrap_or((now, BACKOFF_START / 2));
                if now < until {
                    let secs = delay.as_secs();
                    observed.waiting.insert(
                        c.name.clone(),
                        Waiting {
                            reason: "CrashLoopBackOff".into(),
                            message: format!(
                                "back-off {secs}s restarting failed container={} pod={}_{}({})",
                                c.name,
                                pod.metadata.name.as_deref().unwrap_or_default(),
                                pod.metadata.namespace.as_deref().unwrap_or_default(),
                                self.uid
                            ),
                        },
                    );
                    if self.backoff_reported.get(&c.name) != Some(&until) {
                        self.backoff_reported.insert(c.name.clone(), until);
                        let message = format!(
                            "Back-off restarting failed container {} in pod {}",
                            c.name,
                            name(pod)
                        );
                        self.rt
                            .events
                            .record(pod, Some(&c.name), Type::Warning, "BackOff", &message)
                            .await;
                    }
                    return Ok(());
                }
                let next = (delay * 2).min(BACKOFF_MAX);
                self.backoff.insert(c.name.clone(), (now + next, next));
                s.metadata.as_ref().map_or(0, |m| m.attempt) + 1
            }
            Some(_) => return Ok(()),
        };
        let env = match container::environment(&self.rt.client, pod, c).await? {
            Ok(env) => env,
            Err(container::ConfigError(message)) => {
                observed.waiting.insert(
                    c.name.clone(),
                    Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message,
                    },
                );
                return Ok(());
            }
        };
        if let Some(w) = self.ensure_image(pod, c).await? {
            observed.waiting.insert(c.name.clone(), w);
            return Ok(());
        }
        let mut runtime = self.rt.cri.runtime.clone();
        // Keep the latest attempt (for `logs --previous`), drop older ones.
        if let Some(attempts) = observed.containers.get(&c.name) {
            let keep = attempts.len().saturating_sub(1);
            for old in &attempts[..keep] {
                runtime
                    .remove_container(cri::RemoveContainerRequest {
                        container_id: old.id.clone(),
                    })
                    .await?;
            }
        }
        let empty = HashMap::new();
        let volume_paths = self.volumes.as_ref().map_or(&empty, |(v, _)| v);
        let mounts = match volumes::mounts(c, volume_paths) {
            Ok(m) => m,
            Err(message) => {
                observed.waiting.insert(
                    c.name.clone(),
                    Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message,
                    },
                );
                return Ok(());
            }
        };
        let mut config = container::config(pod, c, attempt, &env);
        config.mounts = mounts;
        match self.termination_log(pod, c, attempt) {
            Ok(mount) => config.mounts.push(mount),
            Err(e) => {
                tracing::warn!(pod = %name(pod), container = %c.name, error = %e, "no termination message file")
            }
        }
        tracing::info!(pod = %name(pod), container = %c.name, attempt, "starting the container");
        let created = runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox.to_owned(),
                config: Some(config),
                sandbox_config: Some(self.sandbox_config(pod, 0)),
            })
            .await;
        let id = match created {
            Ok(r) => {
                let message = format!("Created container {}", c.name);
                self.rt
                    .events
                    .record(pod, Some(&c.name), Type::Normal, "Created", &message)
                    .await;
                r.into_inner().container_id
            }
            Err(e) => {
                self.rt.metrics.runtime_error("create_container");
                observed.waiting.insert(
                    c.name.clone(),
                    Waiting {
                        reason: "CreateContainerError".into(),
                        message: e.message().to_owned(),
                    },
                );
                return Ok(());
            }
        };
        if let Err(e) = runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
        {
            self.rt.metrics.runtime_error("start_container");
            observed.waiting.insert(
                c.name.clone(),
                Waiting {
                    reason: "RunContainerError".into(),
                    message: e.message().to_owned(),
                },
            );
            return Ok(());
        }
        let message = format!("Started container {}", c.name);
        self.rt
            .events
            .record(pod, Some(&c.name), Type::Normal, "Started", &message)
            .await;
        // postStart runs right after the start; if it fails the container is
        // killed, and the restart policy decides what comes next.
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let result = self
                .run_hook(
                    sandbox,
                    c,
                    &id,
                    hook,
                    HOOK_TIMEOUT,
                    observed.pod_ip.as_deref(),
                )
                .await?;
            if let Err(message) = result {
                tracing::info!(pod = %name(pod), container = %c.name, %message, "postStart hook failed");
                let message = format!("PostStartHook failed: {message}");
                self.rt
                    .events
                    .record(
                        pod,
                        Some(&c.name),
                        Type::Warning,
                        "FailedPostStartHook",
                        &message,
                    )
                    .await;
                runtime
                    .stop_container(cri::StopContainerRequest {
                        container_id: id.clone(),
                        timeout: 0,
                    })
                    .await?;
            }
        }
        let status = runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id,
                verbose: false,
            })
            .await?
            .into_inner()
            .status;
        if let Some(s) = status {
            observed
                .containers
                .entry(c.name.clone())
                .or_default()
                .push(s);
        }
        Ok(())
    }

    /// Makes sure the image is present, pulling it unless the policy forbids;
    /// `Some` with the waiting reason when it cannot be.
    async fn ensure_image(&self, pod: &Pod, c: &Container) -> Result<Option<Waiting>, Error> {
        let image = c.image.clone().unwrap_or_default();
        let mut images = self.rt.cri.images.clone();
        let spec = cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        };
        let present = images
            .image_status(cri::ImageStatusRequest {
                image: Some(spec.clone()),
                verbose: false,
            })
            .await?
            .into_inner()
            .image
            .is_some();
        let policy = c.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
        let present_event = format!("Container image \"{image}\" already present on machine");
        match (present, policy) {
            (true, "IfNotPresent" | "Never") => {
                self.rt
                    .events
                    .record(pod, Some(&c.name), Type::Normal, "Pulled", &present_event)
                    .await;
                Ok(None)
            }
            (false, "Never") => Ok(Some(Waiting {
                reason: "ErrImageNeverPull".into(),
                message: format!(
                    "Container image \"{image}\" is not present with pull policy of Never"
                ),
            })),
            _ => match images
                .pull_image(cri::PullImageRequest {
                    image: Some(spec),
                    auth: None,
                    sandbox_config: None,
                })
                .await
            {
                Ok(_) => {
                    let message = format!("Successfully pulled image \"{image}\"");
                    self.rt
                        .events
                        .record(pod, Some(&c.name), Type::Normal, "Pulled", &message)
                        .await;
                    Ok(None)
                }
                // Present but not pullable (an imported image): use what is there.
                Err(_) if present => {
                    self.rt
                        .events
                        .record(pod, Some(&c.name), Type::Normal, "Pulled", &present_event)
                        .await;
                    Ok(None)
                }
                Err(e) => {
                    self.rt.metrics.runtime_error("pull_image");
                    let message = format!("Failed to pull image \"{image}\": {}", e.message());
                    self.rt
                        .events
                        .record(pod, Some(&c.name), Type::Warning, "Failed", &message)
                        .await;
                    Ok(Some(Waiting {
                        reason: "ErrImagePull".into(),
                        message: e.message().to_owned(),
                    }))
                }
            },
        }
    }
}

impl PodWorker {
    /// Runs the probes that are due for the pod's running containers, records
    /// their verdicts in `observed`, and kills containers whose liveness (or
    /// startup) probe failed so the restart policy restarts them.
    async fn run_probes(
        &mut self,
        pod: &Pod,
        sandbox: &str,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        observed: &mut Observed,
    ) -> Result<(), Error> {
        let uses_probes = spec.containers.iter().any(|c| {
            c.liveness_probe.is_some() || c.readiness_probe.is_some() || c.startup_probe.is_some()
        });
        if !uses_probes {
            return Ok(());
        }
        let netns = self.netns(sandbox).await?;
        let pod_ip = observed.pod_ip.as_deref().and_then(|ip| ip.parse().ok());
        let now = Instant::now();
        for c in &spec.containers {
            let Some(latest) = observed
                .latest(&c.name)
                .filter(|s| status::state(s) == cri::ContainerState::ContainerRunning)
                .cloned()
            else {
                self.probes.retain(|(name, _), _| *name != c.name);
                continue;
            };
            // When the container started, as an Instant (the runtime gives wall time).
            let age = jiff::Timestamp::now().as_nanosecond() - i128::from(latest.started_at);
            let started = now
                .checked_sub(Duration::from_nanos(u64::try_from(age.max(0)).unwrap_or(0)))
                .unwrap_or(now);
            let target = probes::Target {
                pod_ip,
                netns: netns.clone(),
                container_id: &latest.id,
                container: c,
            };
            let startup_done = match c.startup_probe.as_ref() {
                None => true,
                Some(p) => {
                    self.probe_once(pod, c, probes::Kind::Startup, p, &target, started, now)
                        .await?
                        == Some(true)
                }
            };
            let mut ready = startup_done;
            if startup_done {
                if let Some(p) = c.liveness_probe.as_ref() {
                    self.probe_once(pod, c, probes::Kind::Liveness, p, &target, started, now)
                        .await?;
                }
                if let Some(p) = c.readiness_probe.as_ref() {
                    ready = self
                        .probe_once(pod, c, probes::Kind::Readiness, p, &target, started, now)
                        .await?
                        == Some(true);
                }
            }
            observed
                .probed
                .insert(c.name.clone(), (ready, startup_done));
            // A failed liveness or startup probe: stop the container; the restart
            // policy takes it from there on the next sync.
            let failed = [probes::Kind::Startup, probes::Kind::Liveness]
                .into_iter()
                .find(|k| {
                    self.probes
                        .get(&(c.name.clone(), *k))
                        .is_some_and(|s| s.container_id == latest.id && s.ok == Some(false))
                });
            if let Some(kind) = failed {
                let probe = kind.of(c);
                let grace = probe
                    .and_then(|p| p.termination_grace_period_seconds)
                    .or(spec.termination_grace_period_seconds)
                    .unwrap_or(30);
                let message = format!(
                    "Container {} failed {} probe, will be restarted",
                    c.name,
                    kind.title().to_lowercase()
                );
                tracing::info!(pod = %name(pod), container = %c.name, "{message}");
                self.rt
                    .events
                    .record(pod, Some(&c.name), Type::Normal, "Killing", &message)
                    .await;
                let mut runtime = self.rt.cri.runtime.clone();
                runtime
                    .stop_container(cri::StopContainerRequest {
                        container_id: latest.id.clone(),
                        timeout: grace,
                    })
                    .await?;
                self.probes.retain(|(name, _), _| *name != c.name);
            }
        }
        Ok(())
    }

    /// A fresh host file for attempt `attempt` of `c`'s termination message,
    /// mounted at its `terminationMessagePath`, as upstream's kubelet does.
    fn termination_log(
        &self,
        pod: &Pod,
        c: &Container,
        attempt: u32,
    ) -> std::io::Result<cri::Mount> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let dir = volumes::pod_dir(&self.rt.config.data_dir, uid)
            .join("termination-log")
            .join(&c.name);
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(attempt.to_string());
        std::fs::write(&file, b"")?;
        // Containers running as any user may write it.
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
        Ok(cri::Mount {
            container_path: container::termination_message_path(c).to_owned(),
            host_path: file.to_string_lossy().into_owned(),
            readonly: false,
            ..Default::default()
        })
    }

    /// Runs a lifecycle hook of container `c` (instance `container_id` in
    /// `sandbox`) within `timeout`: `Err` with the failure's message.
    async fn run_hook(
        &mut self,
        sandbox: &str,
        c: &Container,
        container_id: &str,
        hook: &k8s_openapi::api::core::v1::LifecycleHandler,
        timeout: Duration,
        pod_ip: Option<&str>,
    ) -> Result<Result<(), String>, Error> {
        if let Some(sleep) = &hook.sleep {
            let secs = Duration::from_secs(u64::try_from(sleep.seconds).unwrap_or(0));
            tokio::time::sleep(secs.min(timeout)).await;
            return Ok(Ok(()));
        }
        let netns = self.netns(sandbox).await?;
        let target = probes::Target {
            pod_ip: pod_ip.and_then(|ip| ip.parse().ok()),
            netns,
            container_id,
            container: c,
        };
        let action = probes::Action::of_hook(hook);
        Ok(probes::run_action(
            &action,
            &target,
            &self.rt.cri,
            timeout.max(Duration::from_secs(1)),
        )
        .await)
    }

    /// Runs one probe if it is due; returns its settled verdict.
    #[allow(clippy::too_many_arguments)]
    async fn probe_once(
        &mut self,
        pod: &Pod,
        c: &Container,
        kind: probes::Kind,
        probe: &k8s_openapi::api::core::v1::Probe,
        target: &probes::Target<'_>,
        started: Instant,
        now: Instant,
    ) -> Result<Option<bool>, Error> {
        let key = (c.name.clone(), kind);
        let fresh = self
            .probes
            .get(&key)
            .is_none_or(|s| s.container_id != target.container_id);
        if fresh {
            self.probes.insert(
                key.clone(),
                probes::State::new(target.container_id.to_owned(), probe, started),
            );
        }
        let due = self.probes.get(&key).is_some_and(|s| s.due(now));
        if due {
            let result = probes::run(probe, target, &self.rt.cri).await;
            self.rt.metrics.probe(kind, result.is_ok());
            if let Err(message) = &result {
                let message = format!("{} probe failed: {message}", kind.title());
                self.rt
                    .events
                    .record(pod, Some(&c.name), Type::Warning, "Unhealthy", &message)
                    .await;
            }
            if let Some(s) = self.probes.get_mut(&key) {
                s.record(probe, result.is_ok(), now);
            }
        }
        Ok(self.probes.get(&key).and_then(|s| s.ok))
    }

    /// The sandbox's network namespace file, from the runtime's verbose status
    /// (`runtimeSpec.linux.namespaces`), cached per sandbox.
    async fn netns(&mut self, sandbox: &str) -> Result<Option<std::path::PathBuf>, Error> {
        if let Some((id, path)) = &self.netns
            && id == sandbox
        {
            return Ok(path.clone());
        }
        let mut runtime = self.rt.cri.runtime.clone();
        let info = runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.to_owned(),
                verbose: true,
            })
            .await?
            .into_inner()
            .info;
        let path = info
            .get("info")
            .and_then(|i| serde_json::from_str::<Value>(i).ok())
            .and_then(|v| {
                v["runtimeSpec"]["linux"]["namespaces"]
                    .as_array()?
                    .iter()
                    .find(|n| n["type"] == "network")?["path"]
                    .as_str()
                    .map(std::path::PathBuf::from)
            });
        self.netns = Some((sandbox.to_owned(), path.clone()));
        Ok(path)
    }
}

/// The pod's resolv.conf, by `dnsPolicy` as upstream's kubelet writes it:
/// ClusterFirst (the default) → the cluster DNS, the search path
/// `<ns>.svc.<domain> svc.<domain> <domain>` and `ndots:5`; Default → the node's
/// own resolv.conf (the runtime copies it when none is given); None → only
/// `dnsConfig`. `dnsConfig` is merged in for every policy.
pub(crate) fn dns_config(
    pod: &Pod,
    cluster_dns: &[std::net::IpAddr],
    domain: &str,
) -> Option<cri::DnsConfig> {
    let spec = pod.spec.as_ref()?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_network = spec.host_network == Some(true);
    let mut config = match policy {
        "ClusterFirst" if host_network => return None,
        "ClusterFirst" | "ClusterFirstWithHostNet" if !cluster_dns.is_empty() => cri::DnsConfig {
            servers: cluster_dns.iter().map(ToString::to_string).collect(),
            searches: vec![
                format!("{ns}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_owned(),
            ],
            options: vec!["ndots:5".to_owned()],
        },
        "None" => cri::DnsConfig::default(),
        _ => return None,
    };
    if let Some(extra) = spec.dns_config.as_ref() {
        config
            .servers
            .extend(extra.nameservers.clone().unwrap_or_default());
        config
            .searches
            .extend(extra.searches.clone().unwrap_or_default());
        for o in extra.options.iter().flatten() {
            let Some(name) = o.name.as_deref() else {
                continue;
            };
            config.options.retain(|x| x.split(':').next() != Some(name));
            config.options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.to_owned(),
            });
        }
    }
    Some(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn cluster_first_points_at_cluster_dns_with_the_search_path() {
        let dns = ["10.96.0.10".parse().unwrap()];
        let c = dns_config(
            &pod(serde_json::json!({"containers": []})),
            &dns,
            "cluster.local",
        )
        .unwrap();
        assert_eq!(c.servers, ["10.96.0.10"]);
        assert_eq!(
            c.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(c.options, ["ndots:5"]);
    }

    #[test]
    fn default_none_and_dns_config() {
        let dns = ["10.96.0.10".parse().unwrap()];
        let default = pod(serde_json::json!({"containers": [], "dnsPolicy": "Default"}));
        assert!(dns_config(&default, &dns, "cluster.local").is_none());
        let none = pod(serde_json::json!({"containers": [], "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["1.1.1.1"], "options": [{"name": "ndots", "value": "2"}]}}));
        let c = dns_config(&none, &dns, "cluster.local").unwrap();
        assert_eq!(
            (c.servers, c.options),
            (vec!["1.1.1.1".to_owned()], vec!["ndots:2".to_owned()])
        );
        let tuned = pod(serde_json::json!({"containers": [],
            "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}));
        assert_eq!(
            dns_config(&tuned, &dns, "cluster.local").unwrap().options,
            ["ndots:1"]
        );
    }
}
