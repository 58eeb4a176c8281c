//! NetworkPolicy, user side: Pods, Namespaces and NetworkPolicies, watched through
//! the API, become the identities of `SX_IPCACHE_V1`, the allow entries of
//! `SX_POLICY_V1` and the enforced directions of `SX_POLICY_EP_V1` (kernel side:
//! `ebpf/programs/src/policy.rs`).
//!
//! Semantics are upstream's: a pod selected by a policy for a direction allows
//! only what some selecting policy's rules allow (default deny); rules name peers
//! by podSelector (in the policy's namespace), namespaceSelector, both, or
//! ipBlock with except, and ports by number, range (`endPort`) or name. Replies of
//! allowed connections pass by conntrack. Choices where upstream leaves room:
//!
//! - identities are per node (derived from namespace and labels by a stable hash,
//!   so a restarted agent computes the same numbers): packets carry no identity,
//!   the receiving node looks the source address up;
//! - ipBlock matches addresses that are not pods' (as Cilium): pod addresses are
//!   matched by selectors only;
//! - this node's own address may always reach its pods (kubelet probes);
//! - a named port in an egress rule is looked up on the pods of each peer
//!   identity; with no peers, on every pod;
//! - TCP, UDP and ICMP echo are filtered (echo only by rules without ports, as
//!   upstream's ports apply to TCP, UDP and SCTP); other ICMP and other
//!   protocols pass.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use ipnet::Ipv4Net;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod},
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{Api, Resource, ResourceExt};
use sextant_apimachinery::labels;
use sextant_ebpf_common::{
    lb::{PROTO_TCP, PROTO_UDP},
    policy::{
        DIRECTION_EGRESS, DIRECTION_INGRESS, FIRST_IDENTITY, IDENTITY_ANY, IDENTITY_HOST,
        PREFIX_ANY_PORT, PREFIX_ANY_PROTOCOL, PolicyEndpoint, PolicyKey, PolicyValue,
    },
};

use crate::{Result, datapath::SharedDatapath, endpoints::EndpointRecord, watch};

/// An address prefix: (length, network address).
pub type Prefix = (u32, Ipv4Addr);

/// What the three policy maps should hold, and the names of the policies whose
/// ids they carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Prefix → identity.
    pub identities: BTreeMap<Prefix, u32>,
    /// (prefix length, key) → the allowing policy.
    pub rules: BTreeMap<(u32, PolicyKey), PolicyValue>,
    /// Local pod → enforced directions.
    pub endpoints: BTreeMap<Ipv4Addr, PolicyEndpoint>,
    /// Policy id → `namespace/name`.
    pub names: BTreeMap<u32, String>,
}

/// What policy is computed from.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// Every pod in the cluster.
    pub pods: &'a [Arc<Pod>],
    /// Every namespace.
    pub namespaces: &'a [Arc<Namespace>],
    /// Every NetworkPolicy.
    pub policies: &'a [Arc<NetworkPolicy>],
    /// This node's pods: address, namespace, name (from the endpoint records, so
    /// a pod is enforced before its status carries its address).
    pub local: &'a [(Ipv4Addr, String, String)],
    /// This node's address.
    pub host: Option<Ipv4Addr>,
}

/// FNV-1a: a hash that stays the same across builds and restarts (std's does not
/// promise to), so identities and policy ids survive an agent restart.
fn stable_hash(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Stable numbers for `keys` (sorted, so collisions resolve the same way every
/// time): each key's hash, moved past reserved numbers and taken ones.
fn allocate<'k>(keys: impl IntoIterator<Item = &'k String>) -> BTreeMap<String, u32> {
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    let sorted: BTreeSet<&String> = keys.into_iter().collect();
    for key in sorted {
        let mut id = stable_hash(key).max(FIRST_IDENTITY);
        while !taken.insert(id) {
            id = id.checked_add(1).unwrap_or(FIRST_IDENTITY);
        }
        out.insert(key.clone(), id);
    }
    out
}

/// The identity key of a pod's labels in a namespace.
fn label_key(namespace: &str, labels: &BTreeMap<String, String>) -> String {
    let mut key = format!("pod:{namespace}");
    for (k, v) in labels {
        key.push('\0');
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
    key
}

fn cidr_key(net: &Ipv4Net) -> String {
    format!("cidr:{net}")
}

fn prefix_of(net: &Ipv4Net) -> Prefix {
    (u32::from(net.prefix_len()), net.network())
}

/// A pod's IPv4 from its status, if it runs in the pod network.
fn pod_ip(pod: &Pod) -> Option<Ipv4Addr> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    status.pod_ip.as_deref()?.parse().ok()
}

fn proto_of(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        _ => None,
    }
}

/// The numbers of the container ports called `name` over `proto` on `pods`.
fn named_ports<'p>(pods: impl Iterator<Item = &'p Pod>, name: &str, proto: u8) -> BTreeSet<u16> {
    pods.filter_map(|p| p.spec.as_ref())
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| {
            p.name.as_deref() == Some(name) && proto_of(p.protocol.as_deref()) == Some(proto)
        })
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect()
}

/// The `(value, bits)` prefixes that cover the ports `lo..=hi` exactly.
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    let mut out = Vec::new();
    while lo <= hi {
        // The largest aligned block starting at `lo` that stays within `hi`.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
}

/// One rule: its peers (`from` or `to`) and its ports.
type Rule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

/// What one port entry of a rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ports {
    /// Every protocol and port (a rule without ports).
    All,
    /// Every port of one protocol.
    AnyPort(u8),
    /// A range of one protocol's ports.
    Range(u8, u16, u16),
}

/// One pod the policies see: its identity and its pod object.
struct Member<'a> {
    identity: u32,
    namespace: String,
    pod: &'a Pod,
}

/// Everything computed once per pass, shared by every endpoint's rules.
struct World<'a> {
    /// identity → its namespace and labels.
    sets: BTreeMap<u32, (String, BTreeMap<String, String>)>,
    /// identity → its pods (for named egress ports).
    members: BTreeMap<u32, Vec<&'a Pod>>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Prefixes ipBlocks may match (ipBlock prefixes and this node), by identity.
    blocks: Vec<(Ipv4Net, u32)>,
}

impl World<'_> {
    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = self.namespaces.get(ns).cloned().unwrap_or_default();
        // Upstream's apiserver sets it on every namespace; selectors rely on it.
        labels
            .entry("kubernetes.io/metadata.name".into())
            .or_insert_with(|| ns.to_owned());
        labels
    }

    /// The identities a rule's peer names.
    fn peer(&self, peer: &NetworkPolicyPeer, policy_ns: &str) -> BTreeSet<u32> {
        if let Some(block) = &peer.ip_block {
            let Ok(cidr) = block.cidr.parse::<Ipv4Net>() else {
                return BTreeSet::new();
            };
            let except: Vec<Ipv4Net> = block
                .except
                .iter()
                .flatten()
                .filter_map(|e| e.parse().ok())
                .collect();
            return self
                .blocks
                .iter()
                .filter(|(p, _)| cidr.contains(p) && !except.iter().any(|e| e.contains(p)))
                .map(|(_, id)| *id)
                .collect();
        }
        self.sets
            .iter()
            .filter(|(_, (ns, pod_labels))| {
                let ns_ok = match &peer.namespace_selector {
                    None => ns == policy_ns,
                    Some(sel) => labels::matches(sel, &self.namespace_labels(ns)),
                };
                let pod_ok = peer
                    .pod_selector
                    .as_ref()
                    .is_none_or(|sel| labels::matches(sel, pod_labels));
                ns_ok && pod_ok
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// What a rule's port entry allows; named ports resolve on `pods`.
    fn ports<'p>(
        &self,
        port: &NetworkPolicyPort,
        pods: impl Iterator<Item = &'p Pod>,
    ) -> Vec<Ports> {
        let Some(proto) = proto_of(port.protocol.as_deref()) else {
            return Vec::new();
        };
        match &port.port {
            None => vec![Ports::AnyPort(proto)],
            Some(IntOrString::Int(n)) => {
                let Ok(lo) = u16::try_from(*n) else {
                    return Vec::new();
                };
                let hi = port
                    .end_port
                    .and_then(|e| u16::try_from(e).ok())
                    .unwrap_or(lo)
                    .max(lo);
                vec![Ports::Range(proto, lo, hi)]
            }
            Some(IntOrString::String(name)) => named_ports(pods, name, proto)
                .into_iter()
                .map(|p| Ports::Range(proto, p, p))
                .collect(),
        }
    }
}

/// Whether a policy's podSelector selects a pod with `pod_labels` (empty or
/// absent: every pod in the namespace).
fn selects(
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    pod_labels: &BTreeMap<String, String>,
) -> bool {
    selector.is_none_or(|s| labels::matches(s, pod_labels))
}

/// Whether `policy` applies to `direction` (upstream's policyTypes defaulting).
fn applies(policy: &NetworkPolicy, direction: u8) -> bool {
    let Some(spec) = &policy.spec else {
        return false;
    };
    match &spec.policy_types {
        Some(types) => types.iter().any(|t| {
            (t == "Ingress" && direction == DIRECTION_INGRESS)
                || (t == "Egress" && direction == DIRECTION_EGRESS)
        }),
        None => direction == DIRECTION_INGRESS || spec.egress.is_some(),
    }
}

fn add_rule(out: &mut Desired, key: PolicyKey, ports: Ports, policy: u32) {
    let value = PolicyValue { policy };
    let mut put = |prefix: u32, proto: u8, port: u16| {
        let k = PolicyKey { proto, port, ..key };
        out.rules.entry((prefix, k)).or_insert(value);
    };
    match ports {
        Ports::All => put(PREFIX_ANY_PROTOCOL, 0, 0),
        Ports::AnyPort(proto) => put(PREFIX_ANY_PORT, proto, 0),
        Ports::Range(proto, lo, hi) => {
            for (value, bits) in port_prefixes(lo, hi) {
                put(PREFIX_ANY_PORT + bits, proto, value.to_be());
            }
        }
    }
}

/// What the maps should hold for `inputs`.
pub fn desired(inputs: &Inputs) -> Desired {
    let mut out = Desired::default();
    // Pod addresses: the API's, then this node's records (which know first).
    let by_name: BTreeMap<(String, String), &Pod> = inputs
        .pods
        .iter()
        .map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), &**p))
        .collect();
    let mut addressed: BTreeMap<Ipv4Addr, (String, &Pod)> = BTreeMap::new();
    for pod in inputs.pods {
        if let Some(ip) = pod_ip(pod) {
            addressed.insert(ip, (pod.namespace().unwrap_or_default(), &**pod));
        }
    }
    for (ip, ns, name) in inputs.local {
        if let Some(pod) = by_name.get(&(ns.clone(), name.clone())) {
            addressed.insert(*ip, (ns.clone(), *pod));
        }
    }

    // Identities: pods by namespace and labels, ipBlock prefixes by prefix.
    let mut keys: BTreeSet<String> = addressed
        .values()
        .map(|(ns, pod)| label_key(ns, pod.labels()))
        .collect();
    let mut block_nets: BTreeSet<Ipv4Net> = BTreeSet::new();
    for policy in inputs.policies {
        let Some(spec) = &policy.spec else { continue };
        let peers = spec
            .ingress
            .iter()
            .flatten()
            .flat_map(|r| r.from.iter().flatten())
            .chain(
                spec.egress
                    .iter()
                    .flatten()
                    .flat_map(|r| r.to.iter().flatten()),
            );
        for block in peers.filter_map(|p| p.ip_block.as_ref()) {
            let nets = std::iter::once(&block.cidr).chain(block.except.iter().flatten());
            block_nets.extend(nets.filter_map(|c| c.parse::<Ipv4Net>().ok().map(|n| n.trunc())));
        }
    }
    keys.extend(block_nets.iter().map(cidr_key));
    let ids = allocate(&keys);
    let id_of = |key: &str| ids.get(key).copied().unwrap_or(IDENTITY_ANY);

    let mut members: Vec<(Ipv4Addr, Member)> = Vec::new();
    for (ip, (ns, pod)) in &addressed {
        let identity = id_of(&label_key(ns, pod.labels()));
        out.identities.insert((32, *ip), identity);
        members.push((
            *ip,
            Member {
                identity,
                namespace: ns.clone(),
                pod,
            },
        ));
    }
    let mut blocks: Vec<(Ipv4Net, u32)> = Vec::new();
    for net in &block_nets {
        let id = id_of(&cidr_key(net));
        out.identities.insert(prefix_of(net), id);
        blocks.push((*net, id));
    }
    if let Some(host) = inputs.host {
        out.identities.insert((32, host), IDENTITY_HOST);
        blocks.push((Ipv4Net::from(host), IDENTITY_HOST));
    }

    let mut world = World {
        sets: BTreeMap::new(),
        members: BTreeMap::new(),
        namespaces: inputs
            .namespaces
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect(),
        blocks,
    };
    for (_, m) in &members {
        world
            .sets
            .entry(m.identity)
            .or_insert_with(|| (m.namespace.clone(), m.pod.labels().clone()));
        world.members.entry(m.identity).or_default().push(m.pod);
    }

    let mut policies: Vec<&NetworkPolicy> = inputs.policies.iter().map(|p| &**p).collect();
    policies.sort_by_key(|p| (p.namespace(), p.name_any()));
    let names: Vec<String> = policies
        .iter()
        .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
        .collect();
    let policy_ids = allocate(&names);

    for (ip, _, _) in inputs.local {
        let Some((ns, pod)) = addressed.get(ip) else {
            continue;
        };
        let endpoint = u32::from_ne_bytes(ip.octets());
        let mut enforced = PolicyEndpoint::default();
        for direction in [DIRECTION_INGRESS, DIRECTION_EGRESS] {
            let selecting = policies.iter().zip(&names).filter(|(p, _)| {
                p.namespace().as_deref() == Some(ns.as_str())
                    && applies(p, direction)
                    && p.spec
                        .as_ref()
                        .is_some_and(|s| selects(s.pod_selector.as_ref(), pod.labels()))
            });
            for (policy, name) in selecting {
                let id = policy_ids.get(name).copied().unwrap_or(0);
                out.names.insert(id, name.clone());
                let slot = if direction == DIRECTION_INGRESS {
                    &mut enforced.ingress
                } else {
                    &mut enforced.egress
                };
                if *slot == 0 {
                    *slot = id;
                }
                let Some(spec) = &policy.spec else { continue };
                let rules: Vec<Rule> = if direction == DIRECTION_INGRESS {
                    spec.ingress
                        .iter()
                        .flatten()
                        .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                        .collect()
                } else {
                    spec.egress
                        .iter()
                        .flatten()
                        .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                        .collect()
                };
                for (peers, ports) in rules {
                    let peers: BTreeSet<u32> = match peers.filter(|p| !p.is_empty()) {
                        None => [IDENTITY_ANY].into(),
                        Some(list) => list.iter().flat_map(|p| world.peer(p, ns)).collect(),
                    };
                    for peer in peers {
                        let key = PolicyKey {
                            endpoint,
                            identity: peer,
                            direction,
                            proto: 0,
                            port: 0,
                        };
                        let ports = ports.filter(|p| !p.is_empty());
                        let Some(ports) = ports else {
                            add_rule(&mut out, key, Ports::All, id);
                            continue;
                        };
                        for port in ports {
                            // A named port is the destination's: this pod's for
                            // ingress, the peer's pods' for egress.
                            let resolved = if direction == DIRECTION_INGRESS {
                                world.ports(port, std::iter::once(*pod))
                            } else if peer == IDENTITY_ANY {
                                world.ports(port, members.iter().map(|(_, m)| m.pod))
                            } else {
                                let pods = world.members.get(&peer).into_iter().flatten();
                                world.ports(port, pods.copied())
                            };
                            for p in resolved {
                                add_rule(&mut out, key, p, id);
                            }
                        }
                    }
                }
            }
        }
        if enforced != PolicyEndpoint::default() {
            out.endpoints.insert(*ip, enforced);
        }
    }
    out
}

/// Each policy (`namespace`, `name`) selecting pods of this node → those pods'
/// names: what the node's agent reports enforcing in `PolicyEnforced` events.
pub fn enforced_here(inputs: &Inputs) -> BTreeMap<(String, String), BTreeSet<String>> {
    let local: BTreeSet<(&str, &str)> = inputs
        .local
        .iter()
        .map(|(_, ns, name)| (ns.as_str(), name.as_str()))
        .collect();
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for policy in inputs.policies {
        let Some(spec) = &policy.spec else { continue };
        let ns = policy.namespace().unwrap_or_default();
        let pods: BTreeSet<String> = inputs
            .pods
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
            .filter(|p| local.contains(&(ns.as_str(), p.name_any().as_str())))
            .filter(|p| selects(spec.pod_selector.as_ref(), p.labels()))
            .map(|p| p.name_any())
            .collect();
        if !pods.is_empty() {
            out.insert((ns, policy.name_any()), pods);
        }
    }
    out
}

/// Tells on each NetworkPolicy, as an Event, what this node's agent enforces
/// for it: `Normal PolicyEnforced` when the set of this node's pods it selects
/// changes, `Warning PolicyEnforcementFailed` when the maps could not be
/// written. Upstream has no reasons for policies (kube-proxy and Cilium record
/// none); these follow the kubelet's per-node style (docs/decisions/0008).
struct PolicyEvents {
    recorder: kube::runtime::events::Recorder,
    node: String,
    told: BTreeMap<(String, String), BTreeSet<String>>,
    failure: Option<String>,
}

impl PolicyEvents {
    fn new(client: kube::Client, node: String) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: "sextant-dataplane".into(),
            instance: Some(node.clone()),
        };
        Self {
            recorder: kube::runtime::events::Recorder::new(client, reporter),
            node,
            told: BTreeMap::new(),
            failure: None,
        }
    }

    async fn publish(&self, policy: &NetworkPolicy, warning: bool, reason: &str, note: String) {
        use kube::runtime::events::{Event, EventType};
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "Enforce".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &policy.object_ref(&())).await {
            tracing::debug!(error = %e, reason, "publishing a policy event failed");
        }
    }

    /// After a successful write: tells the policies whose pods here changed.
    async fn enforced(
        &mut self,
        now: BTreeMap<(String, String), BTreeSet<String>>,
        policies: &[Arc<NetworkPolicy>],
    ) {
        self.failure = None;
        for policy in policies {
            let key = (policy.namespace().unwrap_or_default(), policy.name_any());
            let Some(pods) = now.get(&key) else { continue };
            if self.told.get(&key) == Some(pods) {
                continue;
            }
            let names: Vec<&str> = pods.iter().map(String::as_str).collect();
            let note = format!(
                "Enforced on node {} for pod(s) {}",
                self.node,
                names.join(", ")
            );
            self.publish(policy, false, "PolicyEnforced", note).await;
        }
        self.told = now;
    }

    /// After a failed write: tells every policy selecting pods here, once per
    /// distinct error.
    async fn failed(
        &mut self,
        error: String,
        now: &BTreeMap<(String, String), BTreeSet<String>>,
        policies: &[Arc<NetworkPolicy>],
    ) {
        if self.failure.as_deref() == Some(error.as_str()) {
            return;
        }
        for policy in policies {
            let key = (policy.namespace().unwrap_or_default(), policy.name_any());
            if now.contains_key(&key) {
                let note = format!("Not enforced on node {}: {error}", self.node);
                self.publish(policy, true, "PolicyEnforcementFailed", note)
                    .await;
            }
        }
        // Told again once it is enforced.
        self.told.clear();
        self.failure = Some(error);
    }
}

/// Writes [`Desired`] into the maps, changing only what differs.
pub struct Programmer {
    datapath: SharedDatapath,
    written: Desired,
}

impl std::fmt::Debug for Programmer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Programmer").finish_non_exhaustive()
    }
}

impl Programmer {
    /// A programmer that takes over what the (pinned) maps hold already.
    pub fn adopt(datapath: SharedDatapath) -> Result<Self> {
        let written = {
            let mut dp = datapath
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Desired {
                identities: dp.identities()?.into_iter().collect(),
                rules: dp.policy_rules()?.into_iter().collect(),
                endpoints: dp.policy_endpoints()?.into_iter().collect(),
                names: BTreeMap::new(),
            }
        };
        Ok(Self { datapath, written })
    }

    /// Makes the maps hold `want`; returns how many entries changed. Order keeps
    /// the datapath from denying what both the old and new state allow: identities
    /// and allow entries go in before enforcement is switched on, enforcement is
    /// switched off before allow entries go.
    pub fn apply(&mut self, want: &Desired) -> Result<usize> {
        let mut dp = self
            .datapath
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let w = &mut self.written;
        let mut changed = 0;
        for (p, id) in &want.identities {
            if w.identities.get(p) != Some(id) {
                dp.set_identity(p.0, p.1, *id)?;
                w.identities.insert(*p, *id);
                changed += 1;
            }
        }
        for (k, v) in &want.rules {
            if w.rules.get(k) != Some(v) {
                dp.set_policy_rule(k.0, k.1, *v)?;
                w.rules.insert(*k, *v);
                changed += 1;
            }
        }
        for (ip, e) in &want.endpoints {
            if w.endpoints.get(ip) != Some(e) {
                dp.set_policy_endpoint(*ip, *e)?;
                w.endpoints.insert(*ip, *e);
                changed += 1;
            }
        }
        let stale: Vec<Ipv4Addr> = w
            .endpoints
            .keys()
            .filter(|k| !want.endpoints.contains_key(k))
            .copied()
            .collect();
        for ip in stale {
            dp.remove_policy_endpoint(ip)?;
            w.endpoints.remove(&ip);
            changed += 1;
        }
        let stale: Vec<(u32, PolicyKey)> = w
            .rules
            .keys()
            .filter(|k| !want.rules.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            dp.remove_policy_rule(k.0, k.1)?;
            w.rules.remove(&k);
            changed += 1;
        }
        let stale: Vec<Prefix> = w
            .identities
            .keys()
            .filter(|k| !want.identities.contains_key(k))
            .copied()
            .collect();
        for p in stale {
            dp.remove_identity(p.0, p.1)?;
            w.identities.remove(&p);
            changed += 1;
        }
        Ok(changed)
    }
}

/// Policy ids → `namespace/name`, for flows.
pub type PolicyNames = Arc<RwLock<BTreeMap<u32, String>>>;

/// This node's pods from the endpoint records: address, namespace, name.
fn local_endpoints(records_dir: &std::path::Path) -> Vec<(Ipv4Addr, String, String)> {
    std::fs::read_dir(records_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<EndpointRecord>(&t).ok())
        .map(|r| (r.ip, r.pod_namespace, r.pod_name))
        .collect()
}

/// Keeps the policy maps equal to what the API asks for. Nothing is written
/// before every cache holds a full list (a partial one would cut pods off).
/// `changes` also carries endpoint additions and removals.
pub async fn run(
    client: kube::Client,
    node: String,
    datapath: SharedDatapath,
    records_dir: PathBuf,
    host: Option<Ipv4Addr>,
    names: PolicyNames,
    changes: (
        tokio::sync::mpsc::Sender<()>,
        tokio::sync::mpsc::Receiver<()>,
    ),
) {
    let (changed, mut notified) = changes;
    let (pods, d1) = watch::cache(Api::<Pod>::all(client.clone()), changed.clone());
    let (namespaces, d2) = watch::cache(Api::<Namespace>::all(client.clone()), changed.clone());
    let (policies, d3) = watch::cache(Api::<NetworkPolicy>::all(client.clone()), changed);
    let mut events = PolicyEvents::new(client, node);
    let _drivers = watch::Drivers(vec![d1, d2, d3]);
    if pods.wait_until_ready().await.is_err()
        || namespaces.wait_until_ready().await.is_err()
        || policies.wait_until_ready().await.is_err()
    {
        return;
    }
    let mut programmer = match Programmer::adopt(datapath) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "reading the policy maps; network policy is not enforced");
            return;
        }
    };
    loop {
        let local = local_endpoints(&records_dir);
        let (pods, namespaces, policies) = (pods.state(), namespaces.state(), policies.state());
        let inputs = Inputs {
            pods: &pods,
            namespaces: &namespaces,
            policies: &policies,
            local: &local,
            host,
        };
        let want = desired(&inputs);
        let here = enforced_here(&inputs);
        match programmer.apply(&want) {
            Ok(changed) => {
                if changed > 0 {
                    tracing::debug!(
                        changed,
                        endpoints = want.endpoints.len(),
                        rules = want.rules.len(),
                        "programmed network policy"
                    );
                }
                events.enforced(here, &policies).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "programming network policy");
                events.failed(e.to_string(), &here, &policies).await;
            }
        }
        *names
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = want.names;
        if notified.recv().await.is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, ip: &str, labels: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"containers": [{"name": "c", "image": "i",
                    "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip},
            }))
            .unwrap(),
        )
    }

    fn ns(name: &str, labels: serde_json::Value) -> Arc<Namespace> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        )
    }

    fn policy(name: &str, spec: serde_json::Value) -> Arc<NetworkPolicy> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn net_of(p: Prefix) -> Option<Ipv4Net> {
        Ipv4Net::new(p.1, u8::try_from(p.0).ok()?).ok()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// Whether `d` lets `peer_ip` reach local `endpoint` in `direction` on TCP
    /// `port`, evaluated as the datapath does (longest prefix, peer then any).
    fn allows(d: &Desired, endpoint: &str, direction: u8, peer_ip: &str, port: u16) -> bool {
        let endpoint_ip = ip(endpoint);
        let Some(e) = d.endpoints.get(&endpoint_ip) else {
            return true;
        };
        let enforced = if direction == DIRECTION_INGRESS {
            e.ingress
        } else {
            e.egress
        };
        if enforced == 0 {
            return true;
        }
        let peer = ip(peer_ip);
        let identity = d
            .identities
            .iter()
            .filter(|(p, _)| net_of(**p).unwrap().contains(&peer))
            .max_by_key(|(p, _)| p.0)
            .map(|(_, id)| *id)
            .unwrap_or(sextant_ebpf_common::policy::IDENTITY_WORLD);
        if direction == DIRECTION_INGRESS && identity == IDENTITY_HOST {
            return true;
        }
        let endpoint = u32::from_ne_bytes(endpoint_ip.octets());
        [identity, IDENTITY_ANY].iter().any(|id| {
            d.rules.keys().any(|(prefix, k)| {
                if k.endpoint != endpoint || k.identity != *id || k.direction != direction {
                    return false;
                }
                match *prefix {
                    PREFIX_ANY_PROTOCOL => true,
                    p => {
                        let bits = p - PREFIX_ANY_PORT;
                        let mask = if bits == 0 {
                            0
                        } else {
                            u16::MAX << (16 - bits)
                        };
                        k.proto == PROTO_TCP && (port & mask) == u16::from_be(k.port)
                    }
                }
            })
        })
    }

    fn world() -> (Vec<Arc<Pod>>, Vec<Arc<Namespace>>) {
        (
            vec![
                pod("default", "web", "10.42.0.2", json!({"app": "web"})),
                pod("default", "client", "10.42.0.3", json!({"role": "client"})),
                pod("default", "other", "10.42.1.4", json!({"role": "other"})),
                pod("prod", "remote", "10.42.1.5", json!({"role": "client"})),
            ],
            vec![ns("default", json!({})), ns("prod", json!({"env": "prod"}))],
        )
    }

    fn local() -> Vec<(Ipv4Addr, String, String)> {
        vec![
            (ip("10.42.0.2"), "default".into(), "web".into()),
            (ip("10.42.0.3"), "default".into(), "client".into()),
        ]
    }

    #[test]
    fn a_policy_is_enforced_here_for_the_local_pods_it_selects() {
        let (pods, namespaces) = world();
        let local = local();
        let policies = [
            policy("all", json!({"podSelector": {}})),
            policy(
                "web",
                json!({"podSelector": {"matchLabels": {"app": "web"}}}),
            ),
            // Selects only a pod of another node.
            policy(
                "other",
                json!({"podSelector": {"matchLabels": {"role": "other"}}}),
            ),
        ];
        let here = enforced_here(&Inputs {
            pods: &pods,
            namespaces: &namespaces,
            policies: &policies,
            local: &local,
            host: None,
        });
        let key = |n: &str| ("default".to_owned(), n.to_owned());
        let set = |names: &[&str]| {
            names
                .iter()
                .map(|n| (*n).to_owned())
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(here.get(&key("all")), Some(&set(&["client", "web"])));
        assert_eq!(here.get(&key("web")), Some(&set(&["web"])));
        assert_eq!(here.get(&key("other")), None, "no pod of it on this node");
    }

    #[test]
    fn default_deny_then_allow_by_label_and_port() {
        let (pods, namespaces) = world();
        let local = local();
        let deny = policy(
            "deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        );
        let input = |policies: &[Arc<NetworkPolicy>]| {
            desired(&Inputs {
                pods: &pods,
                namespaces: &namespaces,
                policies,
                local: &local,
                host: Some(ip("192.168.0.1")),
            })
        };
        let d = input(std::slice::from_ref(&deny));
        assert!(!allows(
            &d,
            "10.42.0.2",
            DIRECTION_INGRESS,
            "10.42.0.3",
            8080
        ));
        assert!(
            allows(&d, "10.42.0.2", DIRECTION_INGRESS, "192.168.0.1", 8080),
            "the host"
        );
        assert!(
            allows(&d, "10.42.0.2", DIRECTION_EGRESS, "10.42.1.4", 80),
            "egress open"
        );
        let deny_id = d.endpoints[&ip("10.42.0.2")].ingress;
        assert_eq!(d.names[&deny_id], "default/deny");

        let allow = policy(
            "allow-clients",
            json!({
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                             "ports": [{"port": "http"}]}],
            }),
        );
        let d = input(&[deny.clone(), allow.clone()]);
        assert!(allows(
            &d,
            "10.42.0.2",
            DIRECTION_INGRESS,
            "10.42.0.3",
            8080
        ));
        assert!(!allows(
            &d,
            "10.42.0.2",
            DIRECTION_INGRESS,
            "10.42.0.3",
            8081
        ));
        assert!(!allows(
            &d,
            "10.42.0.2",
            DIRECTION_INGRESS,
            "10.42.1.4",
            8080
        ));
        assert!(
            !allows(&d, "10.42.0.2", DIRECTION_INGRESS, "10.42.1.5", 8080),
            "same labels in another namespace"
        );

        let by_ns = policy(
            "from-prod",
            json!({
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}},
                                       "podSelector": {"matchLabels": {"role": "client"}}}],
                             "ports": [{"port": 9000, "endPort": 9010, "protocol": "TCP"}]}],
            }),
        );
        let d = input(&[deny, by_ns]);
        assert!(allows(
            &d,
            "10.42.0.2",
            DIRECTION_INGRESS,
            "10.42.1.5",
            9005
        ));
        assert!(allows(
            &d,
            "10.42.0.2",
            DIRECTION_INGRESS,
            "10.42.1.5",
            9010
        ));
        assert!(!allows(
            &d,
            "10.42.0.2",
            DIRECTION_INGRESS,
            "10.42.1.5",
            9011
        ));
        assert!(!allows(
            &d,
            "10.42.0.2",
            DIRECTION_INGRESS,
            "10.42.0.3",
            9005
        ));
    }

    #[test]
    fn egress_ip_blocks_with_except() {
        let (pods, namespaces) = world();
        let local = local();
        let egress = policy(
            "egress",
            json!({
                "podSelector": {"matchLabels": {"role": "client"}},
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.5.0/24"]}}]},
                    {"to": [{"podSelector": {"matchLabels": {"app": "web"}}}]},
                ],
            }),
        );
        let d = desired(&Inputs {
            pods: &pods,
            namespaces: &namespaces,
            policies: &[egress],
            local: &local,
            host: Some(ip("192.168.0.1")),
        });
        let client = "10.42.0.3";
        assert!(allows(&d, client, DIRECTION_EGRESS, "192.168.7.7", 443));
        assert!(
            allows(&d, client, DIRECTION_EGRESS, "192.168.0.1", 53),
            "the node is in the block"
        );
        assert!(
            !allows(&d, client, DIRECTION_EGRESS, "192.168.5.9", 443),
            "except"
        );
        assert!(!allows(&d, client, DIRECTION_EGRESS, "8.8.8.8", 53));
        assert!(allows(&d, client, DIRECTION_EGRESS, "10.42.0.2", 1234));
        assert!(!allows(&d, client, DIRECTION_EGRESS, "10.42.1.4", 1234));
        assert!(
            allows(&d, client, DIRECTION_INGRESS, "10.42.1.4", 1234),
            "ingress open"
        );
        assert!(
            !d.endpoints.contains_key(&ip("10.42.0.2")),
            "web is not selected"
        );
    }

    #[test]
    fn identities_are_stable_and_distinct() {
        let (pods, namespaces) = world();
        let local = local();
        let input = Inputs {
            pods: &pods,
            namespaces: &namespaces,
            policies: &[],
            local: &local,
            host: None,
        };
        let (a, b) = (desired(&input), desired(&input));
        assert_eq!(a, b);
        let ids: BTreeSet<u32> = a.identities.values().copied().collect();
        assert_eq!(ids.len(), 4, "four label sets: {:?}", a.identities);
        assert!(ids.iter().all(|i| *i >= FIRST_IDENTITY));
    }

    #[test]
    fn port_ranges_become_exact_prefixes() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(8080, 8083), vec![(8080, 14)]);
        assert_eq!(
            port_prefixes(9000, 9010),
            vec![(9000, 13), (9008, 15), (9010, 16)]
        );
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        let covered: u32 = port_prefixes(1, 65534)
            .iter()
            .map(|(_, bits)| 1u32 << (16 - bits))
            .sum();
        assert_eq!(covered, 65534);
    }
}
