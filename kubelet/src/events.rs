//! Events about pods, as upstream's kubelet records them (`Pulled`, `Created`,
//! `Started`, `Killing`, `BackOff`, `Unhealthy`, `FailedMount`, ...), and about
//! its node (`Starting`, `NodeHasSufficientMemory`, ..., `NodeReady`), so
//! `kubectl describe pod` and `kubectl get events` tell what happened. A repeat of
//! the same event bumps its `count` and `lastTimestamp` instead of adding another,
//! as upstream's correlator does.

use std::{collections::HashMap, sync::Mutex};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

/// `Normal` or `Warning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

/// What makes two events the same: pod uid, field path, reason, message.
type EventKey = (String, String, String, String);

/// Where a recorded event is and how often it happened: namespace, name, count.
type Recorded = (String, String, i32);

/// The object an event is about.
struct About {
    namespace: String,
    name: String,
    /// The dedup key's identity (the pod's uid, the node's name).
    uid: String,
    field_path: String,
    /// The `involvedObject`.
    involved: serde_json::Value,
}

/// Records events for one node's kubelet.
pub struct Recorder {
    client: Client,
    node: String,
    seen: Mutex<HashMap<EventKey, Recorded>>,
}

impl Recorder {
    /// A recorder writing as the kubelet of `node`.
    pub fn new(client: Client, node: String) -> Self {
        Self {
            client,
            node,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event about `pod` (and its container `container`, if any).
    /// Failures are logged: events are best effort, as upstream's are.
    pub async fn record(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: Type,
        reason: &str,
        message: &str,
    ) {
        if let Err(e) = self.try_record(pod, container, kind, reason, message).await {
            tracing::debug!(error = %e, reason, "recording an event failed");
        }
    }

    /// Records an event about this kubelet's Node (`Starting`, `NodeReady`, ...),
    /// in the `default` namespace as upstream's kubelet writes them.
    pub async fn record_node(&self, kind: Type, reason: &str, message: &str) {
        // Upstream's kubelet names its node by name in place of a uid.
        let involved =
            json!({"kind": "Node", "apiVersion": "v1", "name": self.node, "uid": self.node});
        let about = About {
            namespace: "default".into(),
            name: self.node.clone(),
            uid: self.node.clone(),
            field_path: String::new(),
            involved,
        };
        if let Err(e) = self.write(about, kind, reason, message).await {
            tracing::debug!(error = %e, reason, "recording a node event failed");
        }
    }

    async fn try_record(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: Type,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let meta = &pod.metadata;
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let uid = meta.uid.clone().unwrap_or_default();
        let field_path = container
            .map(|c| format!("spec.containers{{{c}}}"))
            .unwrap_or_default();
        let mut involved = json!({
            "kind": "Pod", "apiVersion": "v1", "namespace": ns,
            "name": meta.name, "uid": uid, "resourceVersion": meta.resource_version,
        });
        if !field_path.is_empty() {
            involved["fieldPath"] = json!(field_path);
        }
        let about = About {
            namespace: ns,
            name: meta.name.clone().unwrap_or_default(),
            uid,
            field_path,
            involved,
        };
        self.write(about, kind, reason, message).await
    }

    /// Creates the event, or bumps the count of the same one recorded before.
    async fn write(
        &self,
        about: About,
        kind: Type,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let About {
            namespace: ns,
            name: object_name,
            uid,
            field_path,
            involved,
        } = about;
        let now = jiff::Timestamp::now();
        let now_s = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let key = (
            uid.clone(),
            field_path.clone(),
            reason.to_owned(),
            message.to_owned(),
        );
        let existing = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let events: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        if let Some((ns, name, count)) = existing {
            let patch = json!({"count": count + 1, "lastTimestamp": now_s});
            let events: Api<Event> = Api::namespaced(self.client.clone(), &ns);
            if events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                self.remember(key, ns, name, count + 1);
                return Ok(());
            }
        }
        let name = format!("{object_name}.{:x}", now.as_nanosecond());
        let event: Event = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": if kind == Type::Normal { "Normal" } else { "Warning" },
            "count": 1,
            "firstTimestamp": now_s,
            "lastTimestamp": now_s,
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
        }))
        .map_err(kube::Error::SerdeError)?;
        events.create(&PostParams::default(), &event).await?;
        self.remember(key, ns, name, 1);
        Ok(())
    }

    fn remember(&self, key: EventKey, ns: String, name: String, count: i32) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: forget everything rather than grow without end.
        if seen.len() > 4096 {
            seen.clear();
        }
        seen.insert(key, (ns, name, count));
    }

    /// Forgets the events of a pod that is gone.
    pub fn forget(&self, uid: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| k.0 != uid);
    }
}
