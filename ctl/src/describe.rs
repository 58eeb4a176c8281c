//! `sextantctl describe`: an object and its events as kubectl prints them.
//! kubectl's describers are client-side; these follow its layout (a Go
//! `tabwriter` with padding 2, two spaces per level) for Pods, Deployments,
//! Services and ConfigMaps, and its generic describer (every field, camelCase
//! split into words) for every other type.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet},
        core::v1::{
            ConfigMap, Container, ContainerState, ContainerStatus, Event, Pod, PodTemplateSpec,
            Probe, Service, Toleration, Volume,
        },
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::{apis::meta::v1::Time, util::intstr::IntOrString},
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sextant_apimachinery::duration::human_duration;

use crate::{Error, Result, apply, discovery, session::Session};

/// kubectl's `PrefixWriter` over a `tabwriter`: text with tab-separated cells,
/// aligned block by block when flushed.
#[derive(Default)]
struct Writer {
    pending: String,
    done: String,
}

impl Writer {
    /// Writes `text` indented by `level` (two spaces each).
    fn w(&mut self, level: usize, text: &str) {
        for _ in 0..level {
            self.pending.push_str("  ");
        }
        self.pending.push_str(text);
    }

    /// Aligns what is pending (kubectl flushes before the events table).
    fn flush(&mut self) {
        self.done.push_str(&crate::output::aligned(&self.pending));
        self.pending.clear();
    }

    fn finish(mut self) -> String {
        self.flush();
        self.done
    }
}

/// Go's `time.RFC1123Z` (the machine's zone is UTC here, as the API's times).
fn rfc1123z(t: &Time) -> String {
    t.0.strftime("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

/// The age of `t`, as kubectl prints it.
fn since(t: Option<&Time>) -> String {
    match t {
        Some(t) => {
            let secs = k8s_openapi::jiff::Timestamp::now()
                .duration_since(t.0)
                .as_secs();
            human_duration(secs)
        }
        None => "<unknown>".into(),
    }
}

fn labels_multiline(
    w: &mut Writer,
    indent: &str,
    title: &str,
    labels: Option<&BTreeMap<String, String>>,
) {
    w.w(0, &format!("{indent}{title}:\t"));
    match labels.filter(|l| !l.is_empty()) {
        None => w.w(0, "<none>\n"),
        Some(labels) => {
            for (i, (k, v)) in labels.iter().enumerate() {
                if i != 0 {
                    w.w(0, &format!("{indent}\t"));
                }
                w.w(0, &format!("{k}={v}\n"));
            }
        }
    }
}

/// kubectl leaves the last-applied annotation out and folds long values.
fn annotations_multiline(
    w: &mut Writer,
    title: &str,
    annotations: Option<&BTreeMap<String, String>>,
) {
    const MAX: usize = 140;
    w.w(0, &format!("{title}:\t"));
    let keys: Vec<(&String, &String)> = annotations
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
        .collect();
    if keys.is_empty() {
        w.w(0, "<none>\n");
        return;
    }
    for (i, (k, v)) in keys.iter().enumerate() {
        if i != 0 {
            w.w(0, "\t");
        }
        let v = v.trim_end_matches('\n');
        if v.len() + k.len() + 2 > MAX || v.contains('\n') {
            w.w(0, &format!("{k}:\n"));
            for line in v.split('\n') {
                let short = if line.len() > MAX - 2 {
                    format!("{}...", &line[..line.floor_char_boundary(MAX - 2)])
                } else {
                    line.to_owned()
                };
                w.w(0, &format!("\t  {short}\n"));
            }
        } else {
            w.w(0, &format!("{k}: {v}\n"));
        }
    }
}

fn tolerations_multiline(
    w: &mut Writer,
    indent: &str,
    title: &str,
    tolerations: Option<&Vec<Toleration>>,
) {
    w.w(0, &format!("{indent}{title}:\t"));
    let mut list: Vec<&Toleration> = tolerations.into_iter().flatten().collect();
    if list.is_empty() {
        w.w(0, "<none>\n");
        return;
    }
    list.sort_by(|a, b| a.key.cmp(&b.key));
    for (i, t) in list.iter().enumerate() {
        if i != 0 {
            w.w(0, &format!("{indent}\t"));
        }
        let key = t.key.clone().unwrap_or_default();
        let value = t.value.clone().unwrap_or_default();
        let effect = t.effect.clone().unwrap_or_default();
        let mut line = key.clone();
        if !value.is_empty() {
            line.push_str(&format!("={value}"));
        }
        if !effect.is_empty() {
            line.push_str(&format!(":{effect}"));
        }
        if t.operator.as_deref() == Some("Exists") && value.is_empty() {
            line.push_str(if !key.is_empty() || !effect.is_empty() {
                " op=Exists"
            } else {
                "op=Exists"
            });
        }
        if let Some(s) = t.toleration_seconds {
            line.push_str(&format!(" for {s}s"));
        }
        w.w(0, &format!("{line}\n"));
    }
}

fn int_or_string(v: &IntOrString) -> String {
    match v {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// kubectl prints the probe's fields as stored (the server defaults them).
fn probe(p: &Probe) -> String {
    let attrs = format!(
        "delay={}s timeout={}s period={}s #success={} #failure={}",
        p.initial_delay_seconds.unwrap_or(0),
        p.timeout_seconds.unwrap_or(0),
        p.period_seconds.unwrap_or(0),
        p.success_threshold.unwrap_or(0),
        p.failure_threshold.unwrap_or(0)
    );
    if let Some(e) = &p.exec {
        format!(
            "exec [{}] {attrs}",
            e.command.clone().unwrap_or_default().join(" ")
        )
    } else if let Some(h) = &p.http_get {
        // Go's url.URL: "scheme://host:port/path", "//host:port/path" without a scheme.
        let scheme = h.scheme.as_deref().unwrap_or_default().to_lowercase();
        let scheme = if scheme.is_empty() {
            scheme
        } else {
            format!("{scheme}:")
        };
        let host = h.host.clone().unwrap_or_default();
        format!(
            "http-get {scheme}//{host}:{}{} {attrs}",
            int_or_string(&h.port),
            h.path.as_deref().unwrap_or_default()
        )
    } else if let Some(t) = &p.tcp_socket {
        format!(
            "tcp-socket {}:{} {attrs}",
            t.host.as_deref().unwrap_or_default(),
            int_or_string(&t.port)
        )
    } else if let Some(g) = &p.grpc {
        format!(
            "grpc <pod>:{} {} {attrs}",
            g.port,
            g.service.as_deref().unwrap_or_default()
        )
    } else {
        format!("unknown {attrs}")
    }
}

fn state(w: &mut Writer, name: &str, s: Option<&ContainerState>) {
    let s = s.cloned().unwrap_or_default();
    if let Some(r) = &s.running {
        w.w(2, &format!("{name}:\tRunning\n"));
        let at = r.started_at.as_ref().map(rfc1123z).unwrap_or_default();
        w.w(3, &format!("Started:\t{at}\n"));
    } else if let Some(t) = &s.terminated {
        w.w(2, &format!("{name}:\tTerminated\n"));
        if let Some(r) = t.reason.as_deref().filter(|r| !r.is_empty()) {
            w.w(3, &format!("Reason:\t{r}\n"));
        }
        if let Some(m) = t.message.as_deref().filter(|m| !m.is_empty()) {
            w.w(3, &format!("Message:\t{m}\n"));
        }
        w.w(3, &format!("Exit Code:\t{}\n", t.exit_code));
        if let Some(sig) = t.signal.filter(|s| *s > 0) {
            w.w(3, &format!("Signal:\t{sig}\n"));
        }
        let at = |t: &Option<Time>| t.as_ref().map(rfc1123z).unwrap_or_default();
        w.w(3, &format!("Started:\t{}\n", at(&t.started_at)));
        w.w(3, &format!("Finished:\t{}\n", at(&t.finished_at)));
    } else {
        w.w(2, &format!("{name}:\tWaiting\n"));
        if let Some(r) = s.waiting.and_then(|w| w.reason).filter(|r| !r.is_empty()) {
            w.w(3, &format!("Reason:\t{r}\n"));
        }
    }
}

/// A value a `fieldRef` names, for the pod's own fields.
fn field_value(pod: Option<&Value>, path: &str) -> String {
    let Some(pod) = pod else {
        return String::new();
    };
    let pointer = match path {
        "metadata.name" => "/metadata/name",
        "metadata.namespace" => "/metadata/namespace",
        "metadata.uid" => "/metadata/uid",
        "spec.nodeName" => "/spec/nodeName",
        "spec.serviceAccountName" => "/spec/serviceAccountName",
        "status.hostIP" => "/status/hostIP",
        "status.podIP" => "/status/podIP",
        _ => {
            // metadata.labels['k'] / metadata.annotations['k']
            let (map, rest) = match path.split_once("['") {
                Some((m, r)) => (m, r.trim_end_matches("']")),
                None => return String::new(),
            };
            return pod["metadata"][map.trim_start_matches("metadata.")][rest]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
    };
    pod.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn containers(
    w: &mut Writer,
    label: &str,
    list: &[Container],
    statuses: Option<&Vec<ContainerStatus>>,
    pod: Option<&Value>,
    space: &str,
) {
    let none = if list.is_empty() { " <none>" } else { "" };
    w.w(0, &format!("{space}{label}:{none}\n"));
    let name_indent = if space.is_empty() { "" } else { " " };
    for c in list {
        let status = statuses.into_iter().flatten().find(|s| s.name == c.name);
        w.w(1, &format!("{name_indent}{}:\n", c.name));
        if let Some(s) = status {
            w.w(
                2,
                &format!(
                    "Container ID:\t{}\n",
                    s.container_id.as_deref().unwrap_or_default()
                ),
            );
        }
        w.w(
            2,
            &format!("Image:\t{}\n", c.image.as_deref().unwrap_or_default()),
        );
        if let Some(s) = status {
            w.w(2, &format!("Image ID:\t{}\n", s.image_id));
        }
        let ports: Vec<&k8s_openapi::api::core::v1::ContainerPort> =
            c.ports.iter().flatten().collect();
        let describe_ports = |host: bool| {
            ports
                .iter()
                .map(|p| {
                    let n = if host {
                        p.host_port.unwrap_or(0)
                    } else {
                        p.container_port
                    };
                    // kubectl 1.33 leaves the port's name out.
                    format!("{n}/{}", p.protocol.as_deref().unwrap_or("TCP"))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let or_none = |s: String| if s.is_empty() { "<none>".into() } else { s };
        let (p, hp) = (describe_ports(false), describe_ports(true));
        if p.contains(',') {
            w.w(2, &format!("Ports:\t{p}\n"));
        } else {
            w.w(2, &format!("Port:\t{}\n", or_none(p)));
        }
        if hp.contains(',') {
            w.w(2, &format!("Host Ports:\t{hp}\n"));
        } else {
            w.w(2, &format!("Host Port:\t{}\n", or_none(hp)));
        }
        for (title, items) in [("Command", &c.command), ("Args", &c.args)] {
            if let Some(items) = items.as_ref().filter(|i| !i.is_empty()) {
                w.w(2, &format!("{title}:\n"));
                for item in items {
                    for line in item.split('\n') {
                        w.w(3, &format!("{line}\n"));
                    }
                }
            }
        }
        if let Some(s) = status {
            state(w, "State", s.state.as_ref());
            if s.last_state
                .as_ref()
                .is_some_and(|l| l.terminated.is_some())
            {
                state(w, "Last State", s.last_state.as_ref());
            }
            w.w(
                2,
                &format!("Ready:\t{}\n", if s.ready { "True" } else { "False" }),
            );
            w.w(2, &format!("Restart Count:\t{}\n", s.restart_count));
        }
        if let Some(r) = &c.resources {
            for (title, map) in [("Limits", &r.limits), ("Requests", &r.requests)] {
                if let Some(map) = map.as_ref().filter(|m| !m.is_empty()) {
                    w.w(2, &format!("{title}:\n"));
                    for (k, q) in map {
                        w.w(3, &format!("{k}:\t{}\n", q.0));
                    }
                }
            }
        }
        for (title, p) in [
            ("Liveness", &c.liveness_probe),
            ("Readiness", &c.readiness_probe),
            ("Startup", &c.startup_probe),
        ] {
            if let Some(p) = p {
                w.w(2, &format!("{title}:\t{}\n", probe(p)));
            }
        }
        if let Some(from) = c.env_from.as_ref().filter(|e| !e.is_empty()) {
            w.w(2, "Environment Variables from:\n");
            for e in from {
                let (kind, name, optional) = if let Some(cm) = &e.config_map_ref {
                    ("ConfigMap", cm.name.clone(), cm.optional == Some(true))
                } else if let Some(s) = &e.secret_ref {
                    ("Secret", s.name.clone(), s.optional == Some(true))
                } else {
                    ("", String::new(), false)
                };
                match e.prefix.as_deref().filter(|p| !p.is_empty()) {
                    None => w.w(3, &format!("{name}\t{kind}\tOptional: {optional}\n")),
                    Some(p) => w.w(
                        3,
                        &format!("{name}\t{kind} with prefix '{p}'\tOptional: {optional}\n"),
                    ),
                }
            }
        }
        let env = c.env.clone().unwrap_or_default();
        w.w(
            2,
            &format!(
                "Environment:{}\n",
                if env.is_empty() { "\t<none>" } else { "" }
            ),
        );
        for e in &env {
            match &e.value_from {
                None => {
                    for (i, line) in e
                        .value
                        .as_deref()
                        .unwrap_or_default()
                        .split('\n')
                        .enumerate()
                    {
                        if i == 0 {
                            w.w(3, &format!("{}:\t{line}\n", e.name));
                        } else {
                            w.w(3, &format!("\t{line}\n"));
                        }
                    }
                }
                Some(from) => {
                    if let Some(f) = &from.field_ref {
                        let api = f.api_version.as_deref().unwrap_or("v1");
                        w.w(
                            3,
                            &format!(
                                "{}:\t{} ({api}:{})\n",
                                e.name,
                                field_value(pod, &f.field_path),
                                f.field_path
                            ),
                        );
                    } else if let Some(r) = &from.resource_field_ref {
                        w.w(3, &format!("{}:\t ({})\n", e.name, r.resource));
                    } else if let Some(s) = &from.secret_key_ref {
                        w.w(
                            3,
                            &format!(
                                "{}:\t<set to the key '{}' in secret '{}'>\tOptional: {}\n",
                                e.name,
                                s.key,
                                s.name,
                                s.optional == Some(true)
                            ),
                        );
                    } else if let Some(c) = &from.config_map_key_ref {
                        w.w(
                            3,
                            &format!(
                                "{}:\t<set to the key '{}' of config map '{}'>\tOptional: {}\n",
                                e.name,
                                c.key,
                                c.name,
                                c.optional == Some(true)
                            ),
                        );
                    }
                }
            }
        }
        let mut mounts = c.volume_mounts.clone().unwrap_or_default();
        w.w(
            2,
            &format!(
                "Mounts:{}\n",
                if mounts.is_empty() { "\t<none>" } else { "" }
            ),
        );
        mounts.sort_by(|a, b| a.mount_path.cmp(&b.mount_path));
        for m in &mounts {
            let mut flags = vec![if m.read_only == Some(true) {
                "ro".to_owned()
            } else {
                "rw".to_owned()
            }];
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                flags.push(format!("path={sub:?}"));
            }
            w.w(
                3,
                &format!("{} from {} ({})\n", m.mount_path, m.name, flags.join(",")),
            );
        }
    }
}

fn volumes(w: &mut Writer, list: Option<&Vec<Volume>>, space: &str) {
    let list: Vec<&Volume> = list.into_iter().flatten().collect();
    if list.is_empty() {
        w.w(0, &format!("{space}Volumes:\t<none>\n"));
        return;
    }
    w.w(0, &format!("{space}Volumes:\n"));
    let name_indent = if space.is_empty() { "" } else { " " };
    for v in list {
        w.w(1, &format!("{name_indent}{}:\n", v.name));
        if let Some(h) = &v.host_path {
            w.w(2, &format!(
                "Type:\tHostPath (bare host directory volume)\n    Path:\t{}\n    HostPathType:\t{}\n",
                h.path,
                h.type_.as_deref().unwrap_or("<none>")
            ));
        } else if let Some(e) = &v.empty_dir {
            let limit = e
                .size_limit
                .as_ref()
                .map_or("<unset>".into(), |q| q.0.clone());
            w.w(2, &format!(
                "Type:\tEmptyDir (a temporary directory that shares a pod's lifetime)\n    Medium:\t{}\n    SizeLimit:\t{limit}\n",
                e.medium.as_deref().unwrap_or_default()
            ));
        } else if let Some(s) = &v.secret {
            w.w(2, &format!(
                "Type:\tSecret (a volume populated by a Secret)\n    SecretName:\t{}\n    Optional:\t{}\n",
                s.secret_name.as_deref().unwrap_or_default(),
                s.optional == Some(true)
            ));
        } else if let Some(c) = &v.config_map {
            w.w(2, &format!(
                "Type:\tConfigMap (a volume populated by a ConfigMap)\n    Name:\t{}\n    Optional:\t{}\n",
                c.name,
                c.optional == Some(true)
            ));
        } else if let Some(c) = &v.persistent_volume_claim {
            w.w(2, &format!(
                "Type:\tPersistentVolumeClaim (a reference to a PersistentVolumeClaim in the same namespace)\n    ClaimName:\t{}\n    ReadOnly:\t{}\n",
                c.claim_name,
                c.read_only == Some(true)
            ));
        } else if let Some(p) = &v.projected {
            w.w(
                2,
                "Type:\tProjected (a volume that contains injected data from multiple sources)\n",
            );
            for s in p.sources.iter().flatten() {
                if let Some(sec) = &s.secret {
                    w.w(
                        2,
                        &format!(
                            "SecretName:\t{}\n    Optional:\t{}\n",
                            sec.name,
                            sec.optional == Some(true)
                        ),
                    );
                } else if s.downward_api.is_some() {
                    w.w(2, "DownwardAPI:\ttrue\n");
                } else if let Some(cm) = &s.config_map {
                    w.w(
                        2,
                        &format!(
                            "ConfigMapName:\t{}\n    Optional:\t{}\n",
                            cm.name,
                            cm.optional == Some(true)
                        ),
                    );
                } else if let Some(t) = &s.service_account_token {
                    w.w(
                        2,
                        &format!(
                            "TokenExpirationSeconds:\t{}\n",
                            t.expiration_seconds.unwrap_or(3600)
                        ),
                    );
                }
            }
        } else if v.downward_api.is_some() {
            w.w(2, "Type:\tDownwardAPI (a volume populated by information about the pod)\n    Items:\n");
        } else {
            w.w(2, "<unknown>\n");
        }
    }
}

fn events(w: &mut Writer, list: Option<Vec<Event>>) {
    let Some(mut list) = list.filter(|l| !l.is_empty()) else {
        w.w(0, "Events:\t<none>\n");
        return;
    };
    w.flush();
    list.sort_by(|a, b| {
        a.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .cmp(&b.last_timestamp.as_ref().map(|t| t.0))
    });
    w.w(0, "Events:\n  Type\tReason\tAge\tFrom\tMessage\n");
    w.w(1, "----\t------\t----\t----\t-------\n");
    for e in list {
        let first = match &e.event_time {
            Some(t) => since(Some(&Time(t.0))),
            None => since(e.first_timestamp.as_ref()),
        };
        let interval = if let Some(s) = &e.series {
            let last = s.last_observed_time.as_ref().map(|t| Time(t.0));
            format!(
                "{} (x{} over {first})",
                since(last.as_ref()),
                s.count.unwrap_or(0)
            )
        } else if e.count.unwrap_or(0) > 1 {
            format!(
                "{} (x{} over {first})",
                since(e.last_timestamp.as_ref()),
                e.count.unwrap_or(0)
            )
        } else {
            first
        };
        let source = e
            .source
            .as_ref()
            .and_then(|s| s.component.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| e.reporting_component.clone())
            .unwrap_or_default();
        let message = e.message.as_deref().unwrap_or_default().trim();
        w.w(
            1,
            &format!(
                "{}\t{}\t{interval}\t{source}\t{message}\n",
                e.type_.as_deref().unwrap_or_default(),
                e.reason.as_deref().unwrap_or_default()
            ),
        );
    }
}

/// A pod template as `rollout history --revision` prints it: kubectl's
/// describer lines, cells left tab-separated (kubectl does not align them there).
pub fn pod_template_text(template: &Value) -> Result<String> {
    let t: PodTemplateSpec = typed(template)?;
    let mut w = Writer::default();
    pod_template(&mut w, &t);
    Ok(w.pending)
}

fn pod_template(w: &mut Writer, t: &PodTemplateSpec) {
    w.w(0, "Pod Template:\n");
    let meta = t.metadata.clone().unwrap_or_default();
    labels_multiline(w, "", "  Labels", meta.labels.as_ref());
    if meta.annotations.as_ref().is_some_and(|a| !a.is_empty()) {
        annotations_multiline(w, "  Annotations", meta.annotations.as_ref());
    }
    let spec = t.spec.clone().unwrap_or_default();
    if let Some(sa) = spec
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        w.w(1, &format!("Service Account:\t{sa}\n"));
    }
    if let Some(init) = spec.init_containers.as_ref().filter(|i| !i.is_empty()) {
        containers(w, "Init Containers", init, None, None, "  ");
    }
    containers(w, "Containers", &spec.containers, None, None, "  ");
    volumes(w, spec.volumes.as_ref(), "  ");
    if let Some(p) = spec
        .priority_class_name
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        w.w(1, &format!("Priority Class Name:\t{p}\n"));
    }
    labels_multiline(w, "", "  Node-Selectors", spec.node_selector.as_ref());
    tolerations_multiline(w, "", "  Tolerations", spec.tolerations.as_ref());
}

/// A typed view of a JSON object.
fn typed<T: DeserializeOwned>(v: &Value) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| Error::Client(format!("reading the object: {e}")))
}

fn owner(meta: &Value) -> Option<String> {
    meta["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"] == Value::Bool(true))
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or_default(),
                o["name"].as_str().unwrap_or_default()
            )
        })
}

/// The pod's QoS class: its status's, else worked out as upstream does.
fn qos(pod: &Pod) -> String {
    if let Some(q) = pod.status.as_ref().and_then(|s| s.qos_class.clone()) {
        return q;
    }
    let cs = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let resources = |c: &Container| c.resources.clone().unwrap_or_default();
    let any = cs.iter().any(|c| {
        let r = resources(c);
        r.requests.is_some_and(|m| !m.is_empty()) || r.limits.is_some_and(|m| !m.is_empty())
    });
    if !any {
        return "BestEffort".into();
    }
    let guaranteed = cs.iter().all(|c| {
        let r = resources(c);
        let limits = r.limits.unwrap_or_default();
        let requests = r.requests.unwrap_or_default();
        ["cpu", "memory"].iter().all(|k| {
            limits.contains_key(*k) && requests.get(*k).is_none_or(|q| Some(q) == limits.get(*k))
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
    .into()
}

fn describe_pod(v: &Value, evs: Option<Vec<Event>>) -> Result<String> {
    let pod: Pod = typed(v)?;
    let (meta, spec, status) = (
        &pod.metadata,
        pod.spec.clone().unwrap_or_default(),
        pod.status.clone().unwrap_or_default(),
    );
    let mut w = Writer::default();
    w.w(
        0,
        &format!("Name:\t{}\n", meta.name.as_deref().unwrap_or_default()),
    );
    w.w(
        0,
        &format!(
            "Namespace:\t{}\n",
            meta.namespace.as_deref().unwrap_or_default()
        ),
    );
    if let Some(p) = spec.priority {
        w.w(0, &format!("Priority:\t{p}\n"));
    }
    if let Some(p) = spec
        .priority_class_name
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        w.w(0, &format!("Priority Class Name:\t{p}\n"));
    }
    if let Some(r) = spec.runtime_class_name.as_deref().filter(|p| !p.is_empty()) {
        w.w(0, &format!("Runtime Class Name:\t{r}\n"));
    }
    if let Some(sa) = spec
        .service_account_name
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        w.w(0, &format!("Service Account:\t{sa}\n"));
    }
    match spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        None => w.w(0, "Node:\t<none>\n"),
        Some(n) => w.w(
            0,
            &format!(
                "Node:\t{n}/{}\n",
                status.host_ip.as_deref().unwrap_or_default()
            ),
        ),
    }
    if let Some(t) = &status.start_time {
        w.w(0, &format!("Start Time:\t{}\n", rfc1123z(t)));
    }
    labels_multiline(&mut w, "", "Labels", meta.labels.as_ref());
    annotations_multiline(&mut w, "Annotations", meta.annotations.as_ref());
    let phase = status.phase.clone().unwrap_or_default();
    if meta.deletion_timestamp.is_some() && phase != "Failed" && phase != "Succeeded" {
        w.w(
            0,
            &format!(
                "Status:\tTerminating (lasts {})\n",
                since(meta.deletion_timestamp.as_ref())
            ),
        );
        w.w(
            0,
            &format!(
                "Termination Grace Period:\t{}s\n",
                meta.deletion_grace_period_seconds.unwrap_or(0)
            ),
        );
    } else {
        w.w(0, &format!("Status:\t{phase}\n"));
    }
    if let Some(r) = status.reason.as_deref().filter(|r| !r.is_empty()) {
        w.w(0, &format!("Reason:\t{r}\n"));
    }
    if let Some(m) = status.message.as_deref().filter(|r| !r.is_empty()) {
        w.w(0, &format!("Message:\t{m}\n"));
    }
    w.w(
        0,
        &format!("IP:\t{}\n", status.pod_ip.as_deref().unwrap_or_default()),
    );
    match status.pod_ips.as_ref().filter(|i| !i.is_empty()) {
        None => w.w(0, "IPs:\t<none>\n"),
        Some(ips) => {
            w.w(0, "IPs:\n");
            for ip in ips {
                w.w(1, &format!("IP:\t{}\n", ip.ip));
            }
        }
    }
    if let Some(o) = owner(&v["metadata"]) {
        w.w(0, &format!("Controlled By:\t{o}\n"));
    }
    if let Some(n) = status
        .nominated_node_name
        .as_deref()
        .filter(|n| !n.is_empty())
    {
        w.w(0, &format!("NominatedNodeName:\t{n}\n"));
    }
    if let Some(init) = spec.init_containers.as_ref().filter(|i| !i.is_empty()) {
        containers(
            &mut w,
            "Init Containers",
            init,
            status.init_container_statuses.as_ref(),
            Some(v),
            "",
        );
    }
    containers(
        &mut w,
        "Containers",
        &spec.containers,
        status.container_statuses.as_ref(),
        Some(v),
        "",
    );
    if let Some(gates) = spec.readiness_gates.as_ref().filter(|g| !g.is_empty()) {
        w.w(0, "Readiness Gates:\n  Type\tStatus\n");
        for g in gates {
            let s = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == g.condition_type)
                .map_or("<none>".to_owned(), |c| c.status.clone());
            w.w(1, &format!("{} \t{s} \n", g.condition_type));
        }
    }
    if let Some(conds) = status.conditions.as_ref().filter(|c| !c.is_empty()) {
        w.w(0, "Conditions:\n  Type\tStatus\n");
        for c in conds {
            w.w(1, &format!("{} \t{} \n", c.type_, c.status));
        }
    }
    volumes(&mut w, spec.volumes.as_ref(), "");
    w.w(0, &format!("QoS Class:\t{}\n", qos(&pod)));
    labels_multiline(&mut w, "", "Node-Selectors", spec.node_selector.as_ref());
    tolerations_multiline(&mut w, "", "Tolerations", spec.tolerations.as_ref());
    events(&mut w, evs);
    Ok(w.finish())
}

fn selector_text(v: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(m) = v["matchLabels"].as_object() {
        let sorted: BTreeMap<&String, &Value> = m.iter().collect();
        for (k, val) in sorted {
            parts.push(format!("{k}={}", val.as_str().unwrap_or_default()));
        }
    }
    for e in v["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            _ => format!("!{key}"),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn describe_deployment(v: &Value, rss: &[ReplicaSet], evs: Option<Vec<Event>>) -> Result<String> {
    let d: Deployment = typed(v)?;
    let spec = d.spec.clone().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    let meta = &d.metadata;
    let mut w = Writer::default();
    w.w(
        0,
        &format!("Name:\t{}\n", meta.name.as_deref().unwrap_or_default()),
    );
    w.w(
        0,
        &format!(
            "Namespace:\t{}\n",
            meta.namespace.as_deref().unwrap_or_default()
        ),
    );
    w.w(
        0,
        &format!(
            "CreationTimestamp:\t{}\n",
            meta.creation_timestamp
                .as_ref()
                .map(rfc1123z)
                .unwrap_or_default()
        ),
    );
    labels_multiline(&mut w, "", "Labels", meta.labels.as_ref());
    annotations_multiline(&mut w, "Annotations", meta.annotations.as_ref());
    w.w(
        0,
        &format!("Selector:\t{}\n", selector_text(&v["spec"]["selector"])),
    );
    w.w(
        0,
        &format!(
            "Replicas:\t{} desired | {} updated | {} total | {} available | {} unavailable\n",
            spec.replicas.unwrap_or(1),
            status.updated_replicas.unwrap_or(0),
            status.replicas.unwrap_or(0),
            status.available_replicas.unwrap_or(0),
            status.unavailable_replicas.unwrap_or(0)
        ),
    );
    let strategy = spec.strategy.clone().unwrap_or_default();
    w.w(
        0,
        &format!(
            "StrategyType:\t{}\n",
            strategy.type_.as_deref().unwrap_or_default()
        ),
    );
    w.w(
        0,
        &format!(
            "MinReadySeconds:\t{}\n",
            spec.min_ready_seconds.unwrap_or(0)
        ),
    );
    if let Some(ru) = &strategy.rolling_update {
        let show = |x: &Option<IntOrString>| {
            x.as_ref()
                .map(int_or_string)
                .unwrap_or_else(|| "<nil>".into())
        };
        w.w(
            0,
            &format!(
                "RollingUpdateStrategy:\t{} max unavailable, {} max surge\n",
                show(&ru.max_unavailable),
                show(&ru.max_surge)
            ),
        );
    }
    pod_template(&mut w, &spec.template);
    if let Some(conds) = status.conditions.as_ref().filter(|c| !c.is_empty()) {
        w.w(0, "Conditions:\n  Type\tStatus\tReason\n");
        w.w(1, "----\t------\t------\n");
        for c in conds {
            w.w(
                1,
                &format!(
                    "{} \t{}\t{}\n",
                    c.type_,
                    c.status,
                    c.reason.as_deref().unwrap_or_default()
                ),
            );
        }
    }
    // The new ReplicaSet has the Deployment's template (without the hash label).
    let template = serde_json::to_value(&spec.template).unwrap_or_default();
    let (new, old): (Vec<&ReplicaSet>, Vec<&ReplicaSet>) = rss.iter().partition(|rs| {
        let mut t = serde_json::to_value(rs.spec.as_ref().and_then(|s| s.template.clone()))
            .unwrap_or_default();
        if let Some(l) = t
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            l.remove("pod-template-hash");
        }
        t == template
    });
    let old: Vec<&ReplicaSet> = old
        .into_iter()
        .filter(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0)
        .collect();
    if !old.is_empty() || !new.is_empty() {
        let show = |list: &[&ReplicaSet]| {
            let s = list
                .iter()
                .map(|rs| {
                    format!(
                        "{} ({}/{} replicas created)",
                        rs.metadata.name.as_deref().unwrap_or_default(),
                        rs.status.as_ref().map_or(0, |s| s.replicas),
                        rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            if s.is_empty() { "<none>".to_owned() } else { s }
        };
        w.w(0, &format!("OldReplicaSets:\t{}\n", show(&old)));
        w.w(0, &format!("NewReplicaSet:\t{}\n", show(&new)));
    }
    events(&mut w, evs);
    Ok(w.finish())
}

fn describe_service(
    v: &Value,
    slices: &[EndpointSlice],
    evs: Option<Vec<Event>>,
) -> Result<String> {
    let svc: Service = typed(v)?;
    let spec = svc.spec.clone().unwrap_or_default();
    let mut w = Writer::default();
    object_header(&mut w, v, true);
    let selector = spec
        .selector
        .as_ref()
        .map(|s| {
            s.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    w.w(0, &format!("Selector:\t{selector}\n"));
    w.w(
        0,
        &format!("Type:\t{}\n", spec.type_.as_deref().unwrap_or_default()),
    );
    if let Some(p) = &spec.ip_family_policy {
        w.w(0, &format!("IP Family Policy:\t{p}\n"));
    }
    match spec.ip_families.as_ref().filter(|f| !f.is_empty()) {
        Some(f) => w.w(0, &format!("IP Families:\t{}\n", f.join(","))),
        None => w.w(0, "IP Families:\t<none>\n"),
    }
    w.w(
        0,
        &format!("IP:\t{}\n", spec.cluster_ip.as_deref().unwrap_or_default()),
    );
    match spec.cluster_ips.as_ref().filter(|f| !f.is_empty()) {
        Some(f) => w.w(0, &format!("IPs:\t{}\n", f.join(","))),
        None => w.w(0, "IPs:\t<none>\n"),
    }
    if let Some(ips) = spec.external_ips.as_ref().filter(|f| !f.is_empty()) {
        w.w(0, &format!("External IPs:\t{}\n", ips.join(",")));
    }
    if let Some(n) = spec.external_name.as_deref().filter(|n| !n.is_empty()) {
        w.w(0, &format!("External Name:\t{n}\n"));
    }
    for sp in spec.ports.iter().flatten() {
        let name = sp
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "<unset>".into());
        let proto = sp.protocol.as_deref().unwrap_or("TCP");
        w.w(0, &format!("Port:\t{name}\t{}/{proto}\n", sp.port));
        let target = sp
            .target_port
            .as_ref()
            .map_or(sp.port.to_string(), int_or_string);
        w.w(0, &format!("TargetPort:\t{target}/{proto}\n"));
        if let Some(a) = &sp.app_protocol {
            w.w(0, &format!("AppProtocol:\t{a}\n"));
        }
        if let Some(np) = sp.node_port.filter(|p| *p != 0) {
            w.w(0, &format!("NodePort:\t{name}\t{np}/{proto}\n"));
        }
        w.w(
            0,
            &format!(
                "Endpoints:\t{}\n",
                endpoints_text(slices, sp.name.as_deref().unwrap_or_default())
            ),
        );
    }
    w.w(
        0,
        &format!(
            "Session Affinity:\t{}\n",
            spec.session_affinity.as_deref().unwrap_or_default()
        ),
    );
    if let Some(p) = spec
        .external_traffic_policy
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        w.w(0, &format!("External Traffic Policy:\t{p}\n"));
    }
    if let Some(p) = &spec.internal_traffic_policy {
        w.w(0, &format!("Internal Traffic Policy:\t{p}\n"));
    }
    if let Some(p) = spec.health_check_node_port.filter(|p| *p != 0) {
        w.w(0, &format!("HealthCheck NodePort:\t{p}\n"));
    }
    if let Some(t) = &spec.traffic_distribution {
        w.w(0, &format!("Traffic Distribution:\t{t}\n"));
    }
    events(&mut w, evs);
    Ok(w.finish())
}

/// Up to three ready `ip:port` of the port named `port`, then `+ N more...`.
fn endpoints_text(slices: &[EndpointSlice], port: &str) -> String {
    const MAX: usize = 3;
    let mut list = Vec::new();
    let mut count = 0;
    for s in slices {
        for p in s.ports.iter().flatten() {
            if p.name.as_deref().unwrap_or_default() != port {
                continue;
            }
            for e in &s.endpoints {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                if list.len() < MAX
                    && let Some(a) = e.addresses.first()
                {
                    list.push(format!("{a}:{}", p.port.unwrap_or(0)));
                }
                count += 1;
            }
        }
    }
    // kubectl: `<none>` without slices, empty with slices and no ready endpoint.
    if slices.is_empty() {
        return "<none>".into();
    }
    let mut text = list.join(",");
    if count > MAX {
        text.push_str(&format!(" + {} more...", count - MAX));
    }
    text
}

/// The lines most describers open with: `Name`, `Namespace` (for namespaced
/// kinds), `Labels`, `Annotations`.
fn object_header(w: &mut Writer, v: &Value, namespaced: bool) {
    let meta = &v["metadata"];
    let map = |k: &str| -> Option<BTreeMap<String, String>> {
        serde_json::from_value(meta[k].clone()).ok()
    };
    w.w(
        0,
        &format!("Name:\t{}\n", meta["name"].as_str().unwrap_or_default()),
    );
    if namespaced {
        w.w(
            0,
            &format!(
                "Namespace:\t{}\n",
                meta["namespace"].as_str().unwrap_or_default()
            ),
        );
    }
    labels_multiline(w, "", "Labels", map("labels").as_ref());
    annotations_multiline(w, "Annotations", map("annotations").as_ref());
}

fn describe_config_map(v: &Value, evs: Option<Vec<Event>>) -> Result<String> {
    let cm: ConfigMap = typed(v)?;
    let mut w = Writer::default();
    object_header(&mut w, v, true);
    w.w(0, "\nData\n====\n");
    for (k, val) in cm.data.iter().flatten() {
        w.w(0, &format!("{k}:\n----\n{val}\n\n"));
    }
    w.w(0, "\nBinaryData\n====\n");
    for (k, val) in cm.binary_data.iter().flatten() {
        w.w(0, &format!("{k}: {} bytes\n", val.0.len()));
    }
    w.w(0, "\n");
    events(&mut w, evs);
    Ok(w.finish())
}

fn describe_service_account(v: &Value, evs: Option<Vec<Event>>) -> String {
    let mut w = Writer::default();
    object_header(&mut w, v, true);
    let names = |field: &str| -> Vec<String> {
        v[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .collect()
    };
    // kubectl 1.33's three lists; legacy token Secrets are not made here.
    for (header, list) in [
        ("Image pull secrets:", names("imagePullSecrets")),
        ("Mountable secrets:", names("secrets")),
        ("Tokens:", Vec::new()),
    ] {
        if list.is_empty() {
            w.w(0, &format!("{header}\t<none>\n"));
        }
        for (i, name) in list.iter().enumerate() {
            let h = if i == 0 {
                header.to_owned()
            } else {
                " ".repeat(19)
            };
            w.w(0, &format!("{h}\t{name}\n"));
        }
    }
    events(&mut w, evs);
    w.finish()
}

fn describe_namespace(v: &Value, quotas: &[Value], limit_ranges: usize) -> String {
    let mut w = Writer::default();
    object_header(&mut w, v, false);
    w.w(
        0,
        &format!(
            "Status:\t{}\n",
            v["status"]["phase"].as_str().unwrap_or_default()
        ),
    );
    w.w(0, "\n");
    if quotas.is_empty() {
        w.w(0, "No resource quota.\n");
    } else {
        w.w(0, "Resource Quotas\n");
        for q in quotas {
            w.w(
                1,
                &format!(
                    "Name:\t{}\n",
                    q["metadata"]["name"].as_str().unwrap_or_default()
                ),
            );
            w.w(1, "Resource\tUsed\tHard\n");
            w.w(1, "--------\t---\t---\n");
            let hard: BTreeMap<String, String> =
                serde_json::from_value(q["status"]["hard"].clone()).unwrap_or_default();
            for (r, h) in &hard {
                let used = q["status"]["used"][r].as_str().unwrap_or("0");
                w.w(1, &format!("{r}\t{used}\t{h}\n"));
            }
        }
    }
    w.w(0, "\n");
    if limit_ranges == 0 {
        w.w(0, "No LimitRange resource.\n");
    } else {
        w.w(0, &format!("{limit_ranges} LimitRange resource(s).\n"));
    }
    w.finish()
}

/// A pod's requests and limits in thousandths: the containers' sum, or the
/// largest init container's when that is more (upstream's `PodRequests`).
fn pod_resources(pod: &Pod) -> [BTreeMap<String, i64>; 2] {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut out: [BTreeMap<String, i64>; 2] = Default::default();
    for (i, out) in out.iter_mut().enumerate() {
        let of = |c: &Container| {
            let r = c.resources.clone().unwrap_or_default();
            if i == 0 { r.requests } else { r.limits }.unwrap_or_default()
        };
        for c in &spec.containers {
            for (k, q) in of(c) {
                *out.entry(k).or_default() +=
                    sextant_apimachinery::quantity::milli(&q.0).unwrap_or(0);
            }
        }
        for c in spec.init_containers.iter().flatten() {
            for (k, q) in of(c) {
                let v = sextant_apimachinery::quantity::milli(&q.0).unwrap_or(0);
                let e = out.entry(k).or_default();
                *e = (*e).max(v);
            }
        }
    }
    out
}

fn describe_node(
    v: &Value,
    pods: &[Pod],
    lease: Option<&Value>,
    evs: Option<Vec<Event>>,
) -> String {
    use sextant_apimachinery::quantity::{format_milli, milli};
    let meta = &v["metadata"];
    let map = |k: &str| -> Option<BTreeMap<String, String>> {
        serde_json::from_value(meta[k].clone()).ok()
    };
    let labels = map("labels").unwrap_or_default();
    let mut w = Writer::default();
    w.w(
        0,
        &format!("Name:\t{}\n", meta["name"].as_str().unwrap_or_default()),
    );
    let mut roles: Vec<String> = labels
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .or_else(|| (k == "kubernetes.io/role" && !v.is_empty()).then(|| v.clone()))
        })
        .collect();
    roles.sort();
    roles.dedup();
    let roles = if roles.is_empty() {
        "<none>".to_owned()
    } else {
        roles.join(",")
    };
    w.w(0, &format!("Roles:\t{roles}\n"));
    labels_multiline(&mut w, "", "Labels", Some(&labels));
    annotations_multiline(&mut w, "Annotations", map("annotations").as_ref());
    let time = |t: &Value| -> String {
        serde_json::from_value::<Time>(t.clone()).map_or("<unset>".into(), |t| rfc1123z(&t))
    };
    w.w(
        0,
        &format!("CreationTimestamp:\t{}\n", time(&meta["creationTimestamp"])),
    );
    w.w(0, "Taints:\t");
    let mut taints: Vec<&Value> = v["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    taints.sort_by_key(|t| {
        format!(
            "{},{}",
            t["effect"].as_str().unwrap_or_default(),
            t["key"].as_str().unwrap_or_default()
        )
    });
    if taints.is_empty() {
        w.w(0, "<none>\n");
    }
    for (i, t) in taints.iter().enumerate() {
        if i != 0 {
            w.w(0, "\t");
        }
        let value = t["value"].as_str().filter(|v| !v.is_empty());
        let key = t["key"].as_str().unwrap_or_default();
        let effect = t["effect"].as_str().unwrap_or_default();
        match value {
            Some(val) => w.w(0, &format!("{key}={val}:{effect}\n")),
            None => w.w(0, &format!("{key}:{effect}\n")),
        }
    }
    w.w(
        0,
        &format!(
            "Unschedulable:\t{}\n",
            v["spec"]["unschedulable"] == Value::Bool(true)
        ),
    );
    if let Some(l) = lease {
        w.w(0, "Lease:\n");
        let spec = &l["spec"];
        w.w(
            1,
            &format!(
                "HolderIdentity:\t{}\n",
                spec["holderIdentity"].as_str().unwrap_or("<unset>")
            ),
        );
        let micro = |t: &Value| -> String {
            t.as_str()
                .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .map_or("<unset>".into(), |t| rfc1123z(&Time(t)))
        };
        w.w(
            1,
            &format!("AcquireTime:\t{}\n", micro(&spec["acquireTime"])),
        );
        w.w(1, &format!("RenewTime:\t{}\n", micro(&spec["renewTime"])));
    }
    if let Some(conds) = v["status"]["conditions"]
        .as_array()
        .filter(|c| !c.is_empty())
    {
        w.w(
            0,
            "Conditions:\n  Type\tStatus\tLastHeartbeatTime\tLastTransitionTime\tReason\tMessage\n",
        );
        w.w(
            1,
            "----\t------\t-----------------\t------------------\t------\t-------\n",
        );
        for c in conds {
            let f = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            w.w(
                1,
                &format!(
                    "{} \t{} \t{} \t{} \t{} \t{}\n",
                    f("type"),
                    f("status"),
                    time(&c["lastHeartbeatTime"]),
                    time(&c["lastTransitionTime"]),
                    f("reason"),
                    f("message")
                ),
            );
        }
    }
    w.w(0, "Addresses:\n");
    for a in v["status"]["addresses"].as_array().into_iter().flatten() {
        w.w(
            1,
            &format!(
                "{}:\t{}\n",
                a["type"].as_str().unwrap_or_default(),
                a["address"].as_str().unwrap_or_default()
            ),
        );
    }
    for (title, field) in [("Capacity", "capacity"), ("Allocatable", "allocatable")] {
        let list: BTreeMap<String, String> =
            serde_json::from_value(v["status"][field].clone()).unwrap_or_default();
        if !list.is_empty() {
            w.w(0, &format!("{title}:\n"));
            for (k, q) in &list {
                w.w(0, &format!("  {k}:\t{q}\n"));
            }
        }
    }
    let info = &v["status"]["nodeInfo"];
    let i = |k: &str| info[k].as_str().unwrap_or_default().to_owned();
    w.w(0, "System Info:\n");
    for (title, key) in [
        ("Machine ID", "machineID"),
        ("System UUID", "systemUUID"),
        ("Boot ID", "bootID"),
        ("Kernel Version", "kernelVersion"),
        ("OS Image", "osImage"),
        ("Operating System", "operatingSystem"),
        ("Architecture", "architecture"),
        ("Container Runtime Version", "containerRuntimeVersion"),
        ("Kubelet Version", "kubeletVersion"),
        ("Kube-Proxy Version", "kubeProxyVersion"),
    ] {
        w.w(0, &format!("  {title}:\t{}\n", i(key)));
    }
    if let Some(c) = v["spec"]["podCIDR"].as_str().filter(|c| !c.is_empty()) {
        w.w(0, &format!("PodCIDR:\t{c}\n"));
    }
    if let Some(cs) = v["spec"]["podCIDRs"].as_array().filter(|c| !c.is_empty()) {
        let cs: Vec<&str> = cs.iter().filter_map(Value::as_str).collect();
        w.w(0, &format!("PodCIDRs:\t{}\n", cs.join(",")));
    }
    if let Some(p) = v["spec"]["providerID"].as_str().filter(|c| !c.is_empty()) {
        w.w(0, &format!("ProviderID:\t{p}\n"));
    }
    // What the node's pods ask for, against what it can give.
    let alloc_field = if v["status"]["allocatable"]
        .as_object()
        .is_some_and(|m| !m.is_empty())
    {
        "allocatable"
    } else {
        "capacity"
    };
    let allocatable = |r: &str| {
        v["status"][alloc_field][r]
            .as_str()
            .and_then(milli)
            .unwrap_or(0)
    };
    let pct = |used: i64, r: &str| {
        let total = allocatable(r);
        if total == 0 {
            0
        } else {
            (used as f64 / total as f64 * 100.0) as i64
        }
    };
    w.w(
        0,
        &format!("Non-terminated Pods:\t({} in total)\n", pods.len()),
    );
    w.w(
        1,
        "Namespace\tName\t\tCPU Requests\tCPU Limits\tMemory Requests\tMemory Limits\tAge\n",
    );
    w.w(
        1,
        "---------\t----\t\t------------\t----------\t---------------\t-------------\t---\n",
    );
    let mut totals: [BTreeMap<String, i64>; 2] = Default::default();
    for p in pods {
        let [req, lim] = pod_resources(p);
        let g = |m: &BTreeMap<String, i64>, k: &str| m.get(k).copied().unwrap_or(0);
        w.w(
            1,
            &format!(
                "{}\t{}\t\t{} ({}%)\t{} ({}%)\t{} ({}%)\t{} ({}%)\t{}\n",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default(),
                format_milli(g(&req, "cpu")),
                pct(g(&req, "cpu"), "cpu"),
                format_milli(g(&lim, "cpu")),
                pct(g(&lim, "cpu"), "cpu"),
                format_milli(g(&req, "memory")),
                pct(g(&req, "memory"), "memory"),
                format_milli(g(&lim, "memory")),
                pct(g(&lim, "memory"), "memory"),
                since(p.metadata.creation_timestamp.as_ref())
            ),
        );
        for (total, part) in totals.iter_mut().zip([req, lim]) {
            for (k, n) in part {
                *total.entry(k).or_default() += n;
            }
        }
    }
    w.w(
        0,
        "Allocated resources:\n  (Total limits may be over 100 percent, i.e., overcommitted.)\n",
    );
    w.w(1, "Resource\tRequests\tLimits\n");
    w.w(1, "--------\t--------\t------\n");
    for r in ["cpu", "memory", "ephemeral-storage"] {
        let (req, lim) = (
            totals[0].get(r).copied().unwrap_or(0),
            totals[1].get(r).copied().unwrap_or(0),
        );
        w.w(
            1,
            &format!(
                "{r}\t{} ({}%)\t{} ({}%)\n",
                format_milli(req),
                pct(req, r),
                format_milli(lim),
                pct(lim, r)
            ),
        );
    }
    let mut others: Vec<&String> = v["status"][alloc_field]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
        .filter(|k| {
            !["cpu", "memory", "ephemeral-storage", "pods", "storage"].contains(&k.as_str())
        })
        .collect();
    others.sort();
    for r in others {
        let (req, lim) = (
            totals[0].get(r).copied().unwrap_or(0),
            totals[1].get(r).copied().unwrap_or(0),
        );
        if r.starts_with("hugepages-") {
            w.w(
                1,
                &format!(
                    "{r}\t{} ({}%)\t{} ({}%)\n",
                    format_milli(req),
                    pct(req, r),
                    format_milli(lim),
                    pct(lim, r)
                ),
            );
        } else {
            w.w(
                1,
                &format!("{r}\t{}\t{}\n", format_milli(req), format_milli(lim)),
            );
        }
    }
    events(&mut w, evs);
    w.finish()
}

/// kubectl's field labels: `apiVersion` → `API Version`.
fn smart_label(field: &str) -> String {
    if field.chars().any(|c| !c.is_alphabetic() && c != '-') {
        return field.to_owned();
    }
    let mut words: Vec<String> = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = field.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let boundary = i > 0
            && c.is_uppercase()
            && (chars[i - 1].is_lowercase()
                || chars.get(i + 1).is_some_and(|n| n.is_lowercase())
                    && chars[i - 1].is_uppercase());
        if boundary && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
        .iter()
        .map(|w| {
            let upper = w.to_uppercase();
            if ["API", "URL", "UID", "GUID", "IP", "ID"].contains(&upper.as_str()) {
                upper
            } else {
                let mut cs = w.chars();
                cs.next()
                    .map(|f| f.to_uppercase().collect::<String>() + cs.as_str())
                    .unwrap_or_default()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn unstructured(
    w: &mut Writer,
    level: usize,
    content: &serde_json::Map<String, Value>,
    prefix: &str,
    skip: &[&str],
) {
    let fields: BTreeMap<&String, &Value> = content.iter().collect();
    for (field, value) in fields {
        let path = format!("{prefix}.{field}");
        if skip.contains(&path.as_str()) {
            continue;
        }
        match value {
            Value::Object(m) => {
                w.w(level, &format!("{}:\n", smart_label(field)));
                unstructured(w, level + 1, m, &path, skip);
            }
            Value::Array(items) => {
                w.w(level, &format!("{}:\n", smart_label(field)));
                for item in items {
                    match item {
                        Value::Object(m) => unstructured(w, level + 1, m, &path, skip),
                        other => w.w(level + 1, &format!("{}\n", scalar(other))),
                    }
                }
            }
            other => w.w(
                level,
                &format!("{}:\t{}\n", smart_label(field), scalar(other)),
            ),
        }
    }
}

/// A JSON scalar as Go's `%v` prints it.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<nil>".into(),
        other => other.to_string(),
    }
}

fn describe_generic(v: &Value, evs: Option<Vec<Event>>) -> String {
    let mut w = Writer::default();
    // kubectl prints the Namespace line even for cluster-scoped kinds here.
    object_header(&mut w, v, true);
    if let Some(content) = v.as_object() {
        unstructured(
            &mut w,
            0,
            content,
            "",
            &[
                ".metadata.managedFields",
                ".metadata.name",
                ".metadata.namespace",
                ".metadata.labels",
                ".metadata.annotations",
            ],
        );
    }
    events(&mut w, evs);
    w.finish()
}

/// The events table as `describe` prints it, the last `n` events only.
pub fn events_text(mut list: Vec<Event>, n: usize) -> String {
    list.sort_by(|a, b| {
        a.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .cmp(&b.last_timestamp.as_ref().map(|t| t.0))
    });
    let keep = list.split_off(list.len().saturating_sub(n));
    let mut w = Writer::default();
    events(&mut w, Some(keep));
    w.finish()
}

/// The events about `object` (by kind, name, namespace and uid, as kubectl
/// asks). A Node's events carry either its uid (controllers) or its name
/// (kubelets), so both are asked for, as kubectl does.
pub async fn events_of(session: &Session, object: &Value) -> Result<Vec<Event>> {
    let meta = &object["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or_default();
    let name = meta["name"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let mut uids: Vec<&str> = meta["uid"].as_str().into_iter().collect();
    if kind == "Node" {
        uids.push(name);
    }
    let path = if ns.is_empty() {
        "/api/v1/events".to_owned()
    } else {
        format!("/api/v1/namespaces/{ns}/events")
    };
    let mut all = Vec::new();
    for uid in uids {
        let selector = format!(
            "involvedObject.name={name},involvedObject.namespace={ns},involvedObject.kind={kind},involvedObject.uid={uid}"
        );
        let items = session
            .items(&path, &[("fieldSelector", &selector)])
            .await?;
        all.extend(typed::<Vec<Event>>(&Value::Array(items))?);
    }
    Ok(all)
}

/// Runs `describe TYPE NAME...` (or `TYPE/NAME`), or every object of TYPE
/// (matching `-l`) when no name is given.
pub async fn describe(
    session: &Session,
    args: &[String],
    selector: Option<&str>,
    err: &mut (dyn std::io::Write + Send),
) -> Result<String> {
    let types = discovery::discover(session).await?;
    let mut objects = Vec::new();
    if args.len() == 1 && !args[0].contains('/') {
        let rt = discovery::resolve(&types, &args[0])?;
        let path = rt.path(Some(&session.namespace));
        let items = session
            .items(&path, &[("labelSelector", selector.unwrap_or_default())])
            .await?;
        for mut item in items {
            item["kind"] = Value::String(rt.kind.clone());
            objects.push((rt.clone(), item));
        }
        if objects.is_empty() {
            // A note, not a failure, as with kubectl.
            let _ = writeln!(
                err,
                "No resources found in {} namespace.",
                session.namespace
            );
            return Ok(String::new());
        }
    } else {
        for (t, name) in apply::targets(args)? {
            let rt = discovery::resolve(&types, &t)?;
            let path = format!("{}/{name}", rt.path(Some(&session.namespace)));
            let object: Value = session.get(&path, None).await?;
            objects.push((rt.clone(), object));
        }
    }
    let mut texts = Vec::new();
    for (rt, object) in objects {
        let evs = Some(events_of(session, &object).await?);
        let ns = &session.namespace;
        let text = match (rt.group.as_str(), rt.kind.as_str()) {
            ("", "Pod") => describe_pod(&object, evs)?,
            ("", "Service") => {
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                let slices = session
                    .items(
                        &format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"),
                        &[(
                            "labelSelector",
                            &format!("kubernetes.io/service-name={name}"),
                        )],
                    )
                    .await?;
                describe_service(
                    &object,
                    &typed::<Vec<EndpointSlice>>(&Value::Array(slices))?,
                    evs,
                )?
            }
            ("", "ConfigMap") => describe_config_map(&object, evs)?,
            ("", "ServiceAccount") => describe_service_account(&object, evs),
            ("", "Namespace") => {
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                let quotas = session
                    .items(&format!("/api/v1/namespaces/{name}/resourcequotas"), &[])
                    .await?;
                let limits = session
                    .items(&format!("/api/v1/namespaces/{name}/limitranges"), &[])
                    .await
                    .map_or(0, |l| l.len());
                describe_namespace(&object, &quotas, limits)
            }
            ("", "Node") => {
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                let items = session
                    .items(
                        "/api/v1/pods",
                        &[("fieldSelector", &format!("spec.nodeName={name}"))],
                    )
                    .await?;
                let pods: Vec<Pod> = typed::<Vec<Pod>>(&Value::Array(items))?
                    .into_iter()
                    .filter(|p| {
                        !matches!(
                            p.status.as_ref().and_then(|s| s.phase.as_deref()),
                            Some("Succeeded" | "Failed")
                        )
                    })
                    .collect();
                let lease = session
                    .get_opt(&format!(
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
                    ))
                    .await?;
                describe_node(&object, &pods, lease.as_ref(), evs)
            }
            ("apps", "Deployment") => {
                let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
                let list = session
                    .items(&format!("/apis/apps/v1/namespaces/{ns}/replicasets"), &[])
                    .await?;
                let rss: Vec<ReplicaSet> = typed::<Vec<ReplicaSet>>(&Value::Array(list))?
                    .into_iter()
                    .filter(|rs| {
                        rs.metadata
                            .owner_references
                            .iter()
                            .flatten()
                            .any(|o| o.uid == uid && o.controller == Some(true))
                    })
                    .collect();
                describe_deployment(&object, &rss, evs)?
            }
            _ => describe_generic(&object, evs),
        };
        texts.push(text);
    }
    Ok(texts.join("\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_labels_read_like_kubectls() {
        assert_eq!(smart_label("apiVersion"), "API Version");
        assert_eq!(smart_label("creationTimestamp"), "Creation Timestamp");
        assert_eq!(smart_label("uid"), "UID");
        assert_eq!(smart_label("podCIDR"), "Pod CIDR");
        assert_eq!(smart_label("foo.bar"), "foo.bar");
    }

    #[test]
    fn cells_align_block_by_block() {
        let mut w = Writer::default();
        w.w(0, "Name:\tweb\nNamespace:\tdefault\nIPs:\n");
        w.w(1, "IP:\t10.0.0.1\n");
        assert_eq!(
            w.finish(),
            "Name:       web\nNamespace:  default\nIPs:\n  IP:  10.0.0.1\n"
        );
    }
}
