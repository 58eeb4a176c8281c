//! Pod endpoints: what `sextant-cni` asks for over the agent's socket. ADD takes an
//! address from the node's podCIDR, makes the veth pair, attaches `from_pod` on
//! the host side and writes the endpoint into `SX_ENDPOINTS_V1`; DEL undoes all of
//! it; CHECK verifies it. Each endpoint is also recorded on disk, so a restarted
//! agent re-attaches and re-fills the map for the pods that kept running.
//!
//! Requests are serialised: sandboxes are set up one at a time per node, which
//! keeps the address, the links and the map consistent without finer locks.

use sextant_metrics::traces;
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sextant_ebpf_common::endpoints::Endpoint;
use tokio::sync::{Mutex, watch};
use tonic::{Request, Response, Status};

use crate::{
    api::{
        AddReply, AddRequest, Attachment, CheckReply, CheckRequest, DelReply, DelRequest,
        endpoints_server::Endpoints,
    },
    datapath::{Datapath, SharedDatapath},
    ipam::Ipam,
    veth::{self, GATEWAY},
};

/// One pod endpoint as recorded on disk (`<dir>/<container id>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRecord {
    /// The sandbox's container id.
    pub container_id: String,
    /// The pod's namespace.
    pub pod_namespace: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's network namespace path.
    pub netns: String,
    /// Interface name inside the pod.
    pub ifname: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// Host side of the veth pair.
    pub host_ifname: String,
    /// Its index.
    pub host_ifindex: u32,
    /// Its MAC.
    pub host_mac: [u8; 6],
    /// MAC of the pod's interface.
    pub pod_mac: [u8; 6],
}

impl EndpointRecord {
    fn map_value(&self) -> Endpoint {
        Endpoint {
            ifindex: self.host_ifindex,
            flags: 0,
            pod_mac: self.pod_mac,
            host_mac: self.host_mac,
        }
    }
}

struct State {
    datapath: SharedDatapath,
    ipam: Option<Ipam>,
}

impl State {
    /// The datapath, locked for one call (never held across an await).
    fn dp(&self) -> std::sync::MutexGuard<'_, Datapath> {
        self.datapath
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The Endpoints service of the agent's socket.
pub struct EndpointService {
    state: Mutex<State>,
    netlink: rtnetlink::Handle,
    pod_cidr: watch::Receiver<Option<Ipv4Net>>,
    ipam_dir: PathBuf,
    records_dir: PathBuf,
    changes: Option<tokio::sync::mpsc::Sender<()>>,
}

impl std::fmt::Debug for EndpointService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointService")
            .field("records_dir", &self.records_dir)
            .finish_non_exhaustive()
    }
}

fn internal(what: &str) -> impl FnOnce(String) -> Status + '_ {
    move |e| Status::internal(format!("{what}: {e}"))
}

impl EndpointService {
    /// A service keeping its records under `dir` (`ipam/`, `endpoints/`), taking
    /// addresses from the podCIDR `pod_cidr` carries once the Node has one.
    pub fn new(
        dir: &Path,
        datapath: SharedDatapath,
        netlink: rtnetlink::Handle,
        pod_cidr: watch::Receiver<Option<Ipv4Net>>,
    ) -> std::io::Result<Self> {
        let records_dir = dir.join("endpoints");
        std::fs::create_dir_all(&records_dir)?;
        Ok(Self {
            state: Mutex::new(State {
                datapath,
                ipam: None,
            }),
            netlink,
            pod_cidr,
            ipam_dir: dir.join("ipam"),
            records_dir,
            changes: None,
        })
    }

    /// Pokes `changes` whenever an endpoint is added or removed (network policy
    /// recomputes then, rather than waiting for the pod's status).
    pub fn notify(mut self, changes: tokio::sync::mpsc::Sender<()>) -> Self {
        self.changes = Some(changes);
        self
    }

    fn changed(&self) {
        if let Some(tx) = &self.changes {
            let _ = tx.try_send(());
        }
    }

    /// Re-attaches and re-fills the map for every recorded endpoint whose link still
    /// exists (pods that ran on while the agent was down); frees the rest.
    pub async fn restore(&self) -> Result<usize, String> {
        let mut state = self.state.lock().await;
        let mut restored = 0;
        for record in self.records()? {
            match veth::find(&self.netlink, &record.host_ifname).await {
                Ok(Some((index, _))) if index == record.host_ifindex => {
                    let mut dp = state.dp();
                    dp.attach(&record.host_ifname).map_err(|e| e.to_string())?;
                    dp.set_endpoint(record.ip, record.map_value())
                        .map_err(|e| e.to_string())?;
                    restored += 1;
                }
                Ok(_) => {
                    tracing::info!(container_id = record.container_id, ip = %record.ip, "pod link gone while the agent was down; freeing its address");
                    self.forget(&mut state, &record).await?;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(restored)
    }

    /// Every recorded endpoint.
    pub fn records(&self) -> Result<Vec<EndpointRecord>, String> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.records_dir)
            .map_err(|e| format!("listing {}: {e}", self.records_dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            match serde_json::from_str(&text) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable endpoint record")
                }
            }
        }
        Ok(out)
    }

    fn record_path(&self, container_id: &str) -> PathBuf {
        self.records_dir.join(format!("{container_id}.json"))
    }

    fn read_record(&self, container_id: &str) -> Option<EndpointRecord> {
        let text = std::fs::read_to_string(self.record_path(container_id)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write_record(&self, record: &EndpointRecord) -> Result<(), String> {
        let path = self.record_path(&record.container_id);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// The allocator for the Node's current podCIDR.
    fn ipam<'s>(&self, state: &'s mut State) -> Result<&'s Ipam, Status> {
        let Some(cidr) = *self.pod_cidr.borrow() else {
            return Err(Status::unavailable(
                "this node has no podCIDR yet (the control plane assigns one after the Node registers); try again",
            ));
        };
        if state.ipam.as_ref().is_none_or(|i| i.cidr() != cidr.trunc()) {
            let ipam =
                Ipam::open(&self.ipam_dir, cidr).map_err(|e| Status::internal(e.to_string()))?;
            state.ipam = Some(ipam);
        }
        state
            .ipam
            .as_ref()
            .ok_or_else(|| Status::internal("address allocator missing"))
    }

    async fn add(&self, a: Attachment) -> Result<AddReply, Status> {
        if a.container_id.is_empty() || a.netns.is_empty() || a.ifname.is_empty() {
            return Err(Status::invalid_argument(
                "container id, netns and ifname are required (CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME)",
            ));
        }
        let mut state = self.state.lock().await;
        let ip = self
            .ipam(&mut state)?
            .allocate(&a.container_id)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        let link = match veth::create(&self.netlink, &a.container_id, &a.netns, &a.ifname, ip).await
        {
            Ok(l) => l,
            Err(e) => {
                // Nothing half-made stays behind: no link, no address.
                let _ = veth::delete(&self.netlink, &veth::host_ifname(&a.container_id)).await;
                if let Some(ipam) = state.ipam.as_ref() {
                    let _ = ipam.release(&a.container_id);
                }
                return Err(Status::internal(format!(
                    "setting up the pod's interface: {e}"
                )));
            }
        };
        let record = EndpointRecord {
            container_id: a.container_id.clone(),
            pod_namespace: a.pod_namespace,
            pod_name: a.pod_name,
            netns: a.netns,
            ifname: a.ifname,
            ip,
            host_ifname: link.host_ifname.clone(),
            host_ifindex: link.host_ifindex,
            host_mac: link.host_mac,
            pod_mac: link.pod_mac,
        };
        let programmed = {
            let mut dp = state.dp();
            dp.attach(&record.host_ifname)
                .and_then(|()| dp.set_endpoint(ip, record.map_value()))
        }
        .map_err(|e| e.to_string())
        .and_then(|()| self.write_record(&record));
        if let Err(e) = programmed {
            self.forget(&mut state, &record).await.ok();
            return Err(internal("programming the endpoint")(e));
        }
        tracing::info!(
            pod = format!("{}/{}", record.pod_namespace, record.pod_name),
            ip = %ip,
            host_ifname = record.host_ifname,
            "endpoint added"
        );
        self.changed();
        Ok(AddReply {
            address: format!("{ip}/32"),
            gateway: GATEWAY.to_string(),
            mac: format_mac(&link.pod_mac),
            host_ifname: link.host_ifname,
        })
    }

    /// Detaches, unmaps, deletes the link, frees the address, drops the record.
    async fn forget(&self, state: &mut State, record: &EndpointRecord) -> Result<(), String> {
        {
            let mut dp = state.dp();
            dp.detach(&record.host_ifname);
            dp.remove_endpoint(record.ip).map_err(|e| e.to_string())?;
        }
        veth::delete(&self.netlink, &record.host_ifname)
            .await
            .map_err(|e| e.to_string())?;
        self.release(state, &record.container_id)?;
        self.changed();
        match std::fs::remove_file(self.record_path(&record.container_id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn release(&self, state: &mut State, container_id: &str) -> Result<(), String> {
        if let Some(ipam) = state.ipam.as_ref() {
            ipam.release(container_id).map_err(|e| e.to_string())?;
            return Ok(());
        }
        // Before the podCIDR is known (a DEL right after a restart): every range
        // ever used has its own directory; free the owner's address in each.
        let Ok(entries) = std::fs::read_dir(&self.ipam_dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let cidr = entry.file_name().to_string_lossy().replace('_', "/");
            if let Ok(cidr) = cidr.parse::<Ipv4Net>() {
                Ipam::open(&self.ipam_dir, cidr)
                    .and_then(|i| i.release(container_id))
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    async fn del(&self, a: Attachment) -> Result<DelReply, Status> {
        if a.container_id.is_empty() {
            return Err(Status::invalid_argument(
                "container id is required (CNI_CONTAINERID)",
            ));
        }
        let mut state = self.state.lock().await;
        match self.read_record(&a.container_id) {
            Some(record) => {
                self.forget(&mut state, &record)
                    .await
                    .map_err(internal("removing the endpoint"))?;
                tracing::info!(container_id = a.container_id, ip = %record.ip, "endpoint deleted");
            }
            None => {
                // A DEL for an ADD that failed half-way, or a repeated DEL.
                let host = veth::host_ifname(&a.container_id);
                state.dp().detach(&host);
                veth::delete(&self.netlink, &host)
                    .await
                    .map_err(|e| internal("deleting the pod's link")(e.to_string()))?;
                self.release(&mut state, &a.container_id)
                    .map_err(internal("freeing the address"))?;
            }
        }
        Ok(DelReply {})
    }

    async fn check(&self, a: Attachment) -> Result<CheckReply, Status> {
        let state = self.state.lock().await;
        let record = self.read_record(&a.container_id).ok_or_else(|| {
            Status::not_found(format!("no endpoint for container {}", a.container_id))
        })?;
        let link = veth::find(&self.netlink, &record.host_ifname)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if link.map(|(i, _)| i) != Some(record.host_ifindex) {
            return Err(Status::failed_precondition(format!(
                "the pod's link {} is missing",
                record.host_ifname
            )));
        }
        if !state.dp().is_attached(&record.host_ifname) {
            return Err(Status::failed_precondition(format!(
                "from_pod is not attached to {}",
                record.host_ifname
            )));
        }
        let mapped = state
            .dp()
            .endpoints()
            .map_err(|e| Status::internal(e.to_string()))?
            .into_iter()
            .any(|(ip, ep)| ip == record.ip && ep == record.map_value());
        if !mapped {
            return Err(Status::failed_precondition(format!(
                "{} is not in the endpoint map",
                record.ip
            )));
        }
        Ok(CheckReply {})
    }
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn attachment(a: Option<Attachment>) -> Result<Attachment, Status> {
    a.ok_or_else(|| Status::invalid_argument("attachment is required"))
}

#[tonic::async_trait]
impl Endpoints for EndpointService {
    async fn add(&self, req: Request<AddRequest>) -> Result<Response<AddReply>, Status> {
        let a = attachment(req.into_inner().attachment)?;
        // Under the kubelet's span for this pod's sandbox, when it has one (both
        // run in the agent process).
        let pod = format!("{}/{}", a.pod_namespace, a.pod_name);
        let span = traces::in_flight_for(&pod).map(|parent| {
            traces::start(
                "dataplane: attach pod",
                Some(&parent),
                vec![traces::KeyValue::new("k8s.pod.name", a.pod_name.clone())],
            )
        });
        let reply = EndpointService::add(self, a).await.map(Response::new);
        if let Some(cx) = &span {
            traces::end(cx);
        }
        reply
    }

    async fn del(&self, req: Request<DelRequest>) -> Result<Response<DelReply>, Status> {
        let a = attachment(req.into_inner().attachment)?;
        EndpointService::del(self, a).await.map(Response::new)
    }

    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckReply>, Status> {
        let a = attachment(req.into_inner().attachment)?;
        EndpointService::check(self, a).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_print_as_cni_expects() {
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0, 0x2a, 0xff, 1]),
            "0a:58:00:2a:ff:01"
        );
    }
}
