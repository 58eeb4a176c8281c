//! The pod datapath loaded into the kernel: `from_pod` (ingress) and `to_pod`
//! (egress) on the host side of every pod's veth, the endpoint map they deliver
//! by, the service maps, and the packet counters (see [`PacketCounters`]).
//!
//! Everything lives on in bpffs under the agent's pin directory: the maps
//! (`<dir>/maps/<MAP>`, reused by the next load) and the TCX links
//! (`<dir>/links/<ifname>_<program>_<pid>`; bpffs refuses dots in names). A
//! killed agent therefore leaves every pod's programs attached and their maps
//! filled, so traffic keeps flowing; the restarted agent loads the same maps,
//! attaches its own programs beside the old links and then removes those (no
//! gap: the old program answers until its link goes), and reconciles the maps with
//! the API. The same path upgrades the programs.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
        xdp::XdpLink,
    },
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::counter::ConstCounter,
};
use sextant_ebpf_common::{
    counters::DEBUG_GLOBAL,
    endpoints::{ENDPOINTS_MAP, Endpoint},
    flows::FLOWS_MAP,
    lb::{
        AFFINITY_MAP, BACKENDS_MAP, CT_MAP, Ct4Entry, Ct4Key, Lb4Backend, Lb4BackendKey, Lb4Key,
        Lb4Service, NODEPORT_NAT_MAP, Nat4Entry, SERVICES_MAP, TRAFFIC_MAP,
    },
    metrics::{Counter, Family, METRICS_MAP, PacketCount},
    policy::{
        IPCACHE_MAP, IpKey, POLICY_ENDPOINTS_MAP, POLICY_MAP, PolicyEndpoint, PolicyKey,
        PolicyValue,
    },
};

use crate::{
    Error, Result,
    counters::{map_mut, program},
    ebpf,
};

/// The programs on a link, with their hooks.
type Programs = [(&'static str, TcAttachType); 2];
/// The programs on a pod's host-side link.
const POD_PROGRAMS: Programs = [
    ("from_pod", TcAttachType::Ingress),
    ("to_pod", TcAttachType::Egress),
];
/// The programs on the node's uplink (NodePort, external IPs).
const UPLINK_PROGRAMS: Programs = [
    ("from_uplink", TcAttachType::Ingress),
    ("to_uplink", TcAttachType::Egress),
];
/// The XDP program on the node's uplink (NodePort flows to other nodes' backends).
const UPLINK_XDP: &str = "uplink_xdp";
/// The maps that outlive the agent.
const PINNED_MAPS: [&str; 12] = [
    TRAFFIC_MAP,
    ENDPOINTS_MAP,
    SERVICES_MAP,
    AFFINITY_MAP,
    BACKENDS_MAP,
    CT_MAP,
    METRICS_MAP,
    FLOWS_MAP,
    IPCACHE_MAP,
    POLICY_MAP,
    POLICY_ENDPOINTS_MAP,
    NODEPORT_NAT_MAP,
];

/// The datapath shared by the endpoint service and the service programmer.
pub type SharedDatapath = Arc<Mutex<Datapath>>;

/// The loaded pod programs and their maps.
///
/// # Guarantees
/// Dropping it detaches `from_pod` from every interface it was attached to.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    metrics: Arc<Mutex<PerCpuArray<MapData, PacketCount>>>,
    traffic: Arc<Mutex<PerCpuArray<MapData, PacketCount>>>,
    flows: Option<RingBuf<MapData>>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the programs, with their maps pinned under (or reused from)
    /// `pin_dir`, without attaching them.
    pub fn load(pin_dir: &Path) -> Result<Self> {
        for sub in ["maps", "links"] {
            let dir = pin_dir.join(sub);
            std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                what: format!("creating {} (is bpffs mounted?)", dir.display()),
                source,
            })?;
        }
        let debug = 0u32;
        let map_paths: Vec<(&str, PathBuf)> = PINNED_MAPS
            .iter()
            .map(|m| (*m, pin_dir.join("maps").join(m)))
            .collect();
        let mut loader = EbpfLoader::new();
        loader.override_global(DEBUG_GLOBAL, &debug, true);
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(ebpf::OBJECT)?;
        for (name, _) in POD_PROGRAMS.into_iter().chain(UPLINK_PROGRAMS) {
            program::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(|source| Error::Program { name, source })?;
        }
        program::<Xdp>(&mut ebpf, UPLINK_XDP)?
            .load()
            .map_err(|source| Error::Program {
                name: UPLINK_XDP,
                source,
            })?;
        let map = ebpf.take_map(METRICS_MAP).ok_or(Error::Map {
            name: METRICS_MAP,
            source: crate::counters::missing_map(METRICS_MAP),
        })?;
        let metrics = PerCpuArray::try_from(map).map_err(|source| Error::Map {
            name: METRICS_MAP,
            source,
        })?;
        let traffic = ebpf.take_map(TRAFFIC_MAP).ok_or(Error::Map {
            name: TRAFFIC_MAP,
            source: crate::counters::missing_map(TRAFFIC_MAP),
        })?;
        let traffic = PerCpuArray::try_from(traffic).map_err(|source| Error::Map {
            name: TRAFFIC_MAP,
            source,
        })?;
        let flows = ebpf.take_map(FLOWS_MAP).ok_or(Error::Map {
            name: FLOWS_MAP,
            source: crate::counters::missing_map(FLOWS_MAP),
        })?;
        let flows = RingBuf::try_from(flows).map_err(|source| Error::Map {
            name: FLOWS_MAP,
            source,
        })?;
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            metrics: Arc::new(Mutex::new(metrics)),
            traffic: Arc::new(Mutex::new(traffic)),
            flows: Some(flows),
        })
    }

    /// The pin of this agent's link of `program` on `host_ifname`:
    /// `<ifname>_<program>_<pid>`, so a restarted agent's links sit beside the old
    /// ones until those are removed.
    fn link_pin(&self, host_ifname: &str, program: &str) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("{host_ifname}_{program}_{}", std::process::id()))
    }

    /// Every pinned link on `host_ifname`, of any agent.
    fn link_pins(&self, host_ifname: &str) -> Vec<PathBuf> {
        self.pins_with_prefix(&format!("{host_ifname}_"))
    }

    /// Every pinned link of `program` on `ifname`, of any agent.
    fn program_pins(&self, ifname: &str, program: &str) -> Vec<PathBuf> {
        self.pins_with_prefix(&format!("{ifname}_{program}_"))
    }

    fn pins_with_prefix(&self, prefix: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.pin_dir.join("links"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect()
    }

    /// Attaches `from_pod` to the ingress and `to_pod` to the egress of
    /// `host_ifname` (TCX) and pins the links; a failure leaves nothing of this
    /// agent's attached. Links an earlier agent left are replaced without a gap:
    /// TCX runs the old program (first in order) until its link goes, and both use
    /// the same pinned maps.
    pub fn attach(&mut self, host_ifname: &str) -> Result<()> {
        self.attach_programs(host_ifname, POD_PROGRAMS)
    }

    /// Attaches `from_uplink` to the ingress and `to_uplink` to the egress of the
    /// node's uplink `ifname`, as [`Datapath::attach`] does for pods.
    pub fn attach_uplink(&mut self, ifname: &str) -> Result<()> {
        self.attach_programs(ifname, UPLINK_PROGRAMS)
    }

    /// Attaches `uplink_xdp` to the node's uplink `ifname` (the kernel picks
    /// native mode where the driver has it) and pins the link. An XDP link an
    /// earlier agent pinned there is given the new program in place
    /// (`bpf_link_update`), so no packet misses it. Until this succeeds, or if it
    /// fails, the TC programs serve every NodePort flow themselves.
    pub fn attach_uplink_xdp(&mut self, ifname: &str) -> Result<()> {
        let pin = self.link_pin(ifname, UPLINK_XDP);
        if pin.exists() {
            return Ok(());
        }
        let mut old = self.program_pins(ifname, UPLINK_XDP);
        let earlier = old.pop();
        let prog = program::<Xdp>(&mut self.ebpf, UPLINK_XDP)?;
        let failed = |source| Error::Program {
            name: UPLINK_XDP,
            source,
        };
        let id = match earlier {
            Some(path) => {
                // Unpinned, the link lives on in our descriptor until pinned again.
                let fd = PinnedLink::from_pin(&path)
                    .map_err(|e| Error::Pin(format!("{}: {e}", path.display())))?
                    .unpin()
                    .map_err(|e| Error::Pin(format!("{}: {e}", path.display())))?;
                let link = XdpLink::try_from(fd)
                    .map_err(|e| Error::Pin(format!("{}: {e}", path.display())))?;
                prog.attach_to_link(link).map_err(failed)?
            }
            None => prog.attach(ifname, XdpMode::Default).map_err(failed)?,
        };
        let link = prog.take_link(id).map_err(failed)?;
        let pinned = FdLink::try_from(link)
            .map_err(|e| Error::Pin(format!("{UPLINK_XDP} on {ifname}: {e}")))?
            .pin(&pin)
            .map_err(|e| Error::Pin(format!("{}: {e}", pin.display())))?;
        drop(pinned);
        for stale in old {
            unpin(&stale);
        }
        Ok(())
    }

    fn attach_programs(&mut self, ifname: &str, programs: Programs) -> Result<()> {
        if self.is_attached_with(ifname, programs) {
            return Ok(());
        }
        let old: Vec<PathBuf> = programs
            .iter()
            .flat_map(|(name, _)| self.program_pins(ifname, name))
            .collect();
        for (name, hook) in programs {
            if let Err(e) = self.attach_one(ifname, name, hook) {
                for (name, _) in programs {
                    unpin(&self.link_pin(ifname, name));
                }
                return Err(e);
            }
        }
        for pin in old {
            unpin(&pin);
        }
        Ok(())
    }

    fn attach_one(
        &mut self,
        host_ifname: &str,
        name: &'static str,
        hook: TcAttachType,
    ) -> Result<()> {
        let pin = self.link_pin(host_ifname, name);
        let prog = program::<SchedClassifier>(&mut self.ebpf, name)?;
        let id = prog
            .attach_with_options(
                host_ifname,
                hook,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|source| Error::Program { name, source })?;
        let link = prog
            .take_link(id)
            .map_err(|source| Error::Program { name, source })?;
        let pinned = FdLink::try_from(link)
            .map_err(|e| Error::Pin(format!("{name} on {host_ifname}: {e}")))?
            .pin(&pin)
            .map_err(|e| Error::Pin(format!("{}: {e}", pin.display())))?;
        // The pin holds the link now; our descriptor is not needed.
        drop(pinned);
        Ok(())
    }

    /// Detaches from `host_ifname` by removing its pinned links (any agent's);
    /// missing pins are not an error (the links may have gone with the interface).
    pub fn detach(&mut self, host_ifname: &str) {
        for pin in self.link_pins(host_ifname) {
            unpin(&pin);
        }
    }

    /// Whether this agent's pod programs are attached to `host_ifname`.
    pub fn is_attached(&self, host_ifname: &str) -> bool {
        self.is_attached_with(host_ifname, POD_PROGRAMS)
    }

    fn is_attached_with(&self, ifname: &str, programs: Programs) -> bool {
        programs
            .iter()
            .all(|(name, _)| self.link_pin(ifname, name).exists())
    }

    /// Makes `ip` deliverable straight to its pod.
    pub fn set_endpoint(&mut self, ip: Ipv4Addr, endpoint: Endpoint) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, Endpoint> =
            map_mut(&mut self.ebpf, ENDPOINTS_MAP)?;
        map.insert(u32::from_ne_bytes(ip.octets()), endpoint, 0)
            .map_err(|source| Error::Map {
                name: ENDPOINTS_MAP,
                source,
            })
    }

    /// Forgets `ip`; absent is not an error.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, Endpoint> =
            map_mut(&mut self.ebpf, ENDPOINTS_MAP)?;
        ignore_missing(map.remove(&u32::from_ne_bytes(ip.octets())), ENDPOINTS_MAP)
    }

    /// Every endpoint the map holds.
    pub fn endpoints(&mut self) -> Result<Vec<(Ipv4Addr, Endpoint)>> {
        let map: BpfHashMap<&mut MapData, u32, Endpoint> = map_mut(&mut self.ebpf, ENDPOINTS_MAP)?;
        map.iter()
            .map(|r| {
                r.map(|(k, v)| (Ipv4Addr::from(k.to_ne_bytes()), v))
                    .map_err(|source| Error::Map {
                        name: ENDPOINTS_MAP,
                        source,
                    })
            })
            .collect()
    }

    /// Writes a service frontend.
    pub fn set_service(&mut self, key: Lb4Key, svc: Lb4Service) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, Lb4Key, Lb4Service> =
            map_mut(&mut self.ebpf, SERVICES_MAP)?;
        map.insert(key, svc, 0).map_err(|source| Error::Map {
            name: SERVICES_MAP,
            source,
        })
    }

    /// Removes a service frontend; absent is not an error.
    pub fn remove_service(&mut self, key: Lb4Key) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, Lb4Key, Lb4Service> =
            map_mut(&mut self.ebpf, SERVICES_MAP)?;
        ignore_missing(map.remove(&key), SERVICES_MAP)
    }

    /// Writes a backend slot.
    pub fn set_backend(&mut self, key: Lb4BackendKey, backend: Lb4Backend) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, Lb4BackendKey, Lb4Backend> =
            map_mut(&mut self.ebpf, BACKENDS_MAP)?;
        map.insert(key, backend, 0).map_err(|source| Error::Map {
            name: BACKENDS_MAP,
            source,
        })
    }

    /// Removes a backend slot; absent is not an error.
    pub fn remove_backend(&mut self, key: Lb4BackendKey) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, Lb4BackendKey, Lb4Backend> =
            map_mut(&mut self.ebpf, BACKENDS_MAP)?;
        ignore_missing(map.remove(&key), BACKENDS_MAP)
    }

    /// Every backend slot the map holds.
    pub fn backends(&mut self) -> Result<Vec<(Lb4BackendKey, Lb4Backend)>> {
        let map: BpfHashMap<&mut MapData, Lb4BackendKey, Lb4Backend> =
            map_mut(&mut self.ebpf, BACKENDS_MAP)?;
        map.iter()
            .map(|r| {
                r.map_err(|source| Error::Map {
                    name: BACKENDS_MAP,
                    source,
                })
            })
            .collect()
    }

    /// Every tracked flow direction in the conntrack map.
    pub fn conntrack(&mut self) -> Result<Vec<(Ct4Key, Ct4Entry)>> {
        let map: BpfHashMap<&mut MapData, Ct4Key, Ct4Entry> = map_mut(&mut self.ebpf, CT_MAP)?;
        map.iter()
            .map(|r| {
                r.map_err(|source| Error::Map {
                    name: CT_MAP,
                    source,
                })
            })
            .collect()
    }

    /// Every NodePort flow direction XDP rewrites.
    pub fn nodeport_nat(&mut self) -> Result<Vec<(Ct4Key, Nat4Entry)>> {
        let map: BpfHashMap<&mut MapData, Ct4Key, Nat4Entry> =
            map_mut(&mut self.ebpf, NODEPORT_NAT_MAP)?;
        map.iter()
            .map(|r| {
                r.map_err(|source| Error::Map {
                    name: NODEPORT_NAT_MAP,
                    source,
                })
            })
            .collect()
    }

    /// The programs attached on this node, as (interface, program), from the
    /// pinned links (this agent's and any earlier one's).
    pub fn attachments(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .pins_with_prefix("")
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter_map(|name| {
                // `<ifname>_<program>_<pid>`; interface names may hold `_`.
                let (rest, _pid) = name.rsplit_once('_')?;
                POD_PROGRAMS
                    .into_iter()
                    .chain(UPLINK_PROGRAMS)
                    .map(|(p, _)| p)
                    .chain([UPLINK_XDP])
                    .find_map(|p| {
                        rest.strip_suffix(p)
                            .and_then(|i| i.strip_suffix('_'))
                            .map(|i| (i.to_owned(), p.to_owned()))
                    })
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every service frontend the map holds.
    pub fn services(&mut self) -> Result<Vec<(Lb4Key, Lb4Service)>> {
        let map: BpfHashMap<&mut MapData, Lb4Key, Lb4Service> =
            map_mut(&mut self.ebpf, SERVICES_MAP)?;
        map.iter()
            .map(|r| {
                r.map_err(|source| Error::Map {
                    name: SERVICES_MAP,
                    source,
                })
            })
            .collect()
    }

    /// Gives the addresses under `prefix_len`/`addr` the identity `identity`.
    pub fn set_identity(&mut self, prefix_len: u32, addr: Ipv4Addr, identity: u32) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, IpKey, u32> = map_mut(&mut self.ebpf, IPCACHE_MAP)?;
        let key = LpmKey::new(prefix_len, ip_key(addr));
        map.insert(&key, identity, 0).map_err(|source| Error::Map {
            name: IPCACHE_MAP,
            source,
        })
    }

    /// Forgets a prefix's identity; absent is not an error.
    pub fn remove_identity(&mut self, prefix_len: u32, addr: Ipv4Addr) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, IpKey, u32> = map_mut(&mut self.ebpf, IPCACHE_MAP)?;
        let key = LpmKey::new(prefix_len, ip_key(addr));
        ignore_missing(map.remove(&key), IPCACHE_MAP)
    }

    /// Every prefix the ipcache holds, with its identity.
    pub fn identities(&mut self) -> Result<Vec<((u32, Ipv4Addr), u32)>> {
        let map: LpmTrie<&mut MapData, IpKey, u32> = map_mut(&mut self.ebpf, IPCACHE_MAP)?;
        let entries = map.iter().map(|r| {
            r.map(|(k, v)| {
                (
                    (k.prefix_len(), Ipv4Addr::from(k.data().addr.to_ne_bytes())),
                    v,
                )
            })
        });
        entries
            .collect::<std::result::Result<_, _>>()
            .map_err(|source| Error::Map {
                name: IPCACHE_MAP,
                source,
            })
    }

    /// Writes one allow entry: `key`'s first `prefix_len` bits.
    pub fn set_policy_rule(
        &mut self,
        prefix_len: u32,
        key: PolicyKey,
        value: PolicyValue,
    ) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, PolicyKey, PolicyValue> =
            map_mut(&mut self.ebpf, POLICY_MAP)?;
        map.insert(&LpmKey::new(prefix_len, key), value, 0)
            .map_err(|source| Error::Map {
                name: POLICY_MAP,
                source,
            })
    }

    /// Removes an allow entry; absent is not an error.
    pub fn remove_policy_rule(&mut self, prefix_len: u32, key: PolicyKey) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, PolicyKey, PolicyValue> =
            map_mut(&mut self.ebpf, POLICY_MAP)?;
        ignore_missing(map.remove(&LpmKey::new(prefix_len, key)), POLICY_MAP)
    }

    /// Every allow entry.
    pub fn policy_rules(&mut self) -> Result<Vec<((u32, PolicyKey), PolicyValue)>> {
        let map: LpmTrie<&mut MapData, PolicyKey, PolicyValue> =
            map_mut(&mut self.ebpf, POLICY_MAP)?;
        let entries = map
            .iter()
            .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)));
        entries
            .collect::<std::result::Result<_, _>>()
            .map_err(|source| Error::Map {
                name: POLICY_MAP,
                source,
            })
    }

    /// Sets which directions of the local pod `ip` policies enforce.
    pub fn set_policy_endpoint(&mut self, ip: Ipv4Addr, ep: PolicyEndpoint) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, PolicyEndpoint> =
            map_mut(&mut self.ebpf, POLICY_ENDPOINTS_MAP)?;
        map.insert(u32::from_ne_bytes(ip.octets()), ep, 0)
            .map_err(|source| Error::Map {
                name: POLICY_ENDPOINTS_MAP,
                source,
            })
    }

    /// Stops enforcing policy on `ip`; absent is not an error.
    pub fn remove_policy_endpoint(&mut self, ip: Ipv4Addr) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, PolicyEndpoint> =
            map_mut(&mut self.ebpf, POLICY_ENDPOINTS_MAP)?;
        ignore_missing(
            map.remove(&u32::from_ne_bytes(ip.octets())),
            POLICY_ENDPOINTS_MAP,
        )
    }

    /// Every local pod policies are enforced on.
    pub fn policy_endpoints(&mut self) -> Result<Vec<(Ipv4Addr, PolicyEndpoint)>> {
        let map: BpfHashMap<&mut MapData, u32, PolicyEndpoint> =
            map_mut(&mut self.ebpf, POLICY_ENDPOINTS_MAP)?;
        map.iter()
            .map(|r| {
                r.map(|(k, v)| (Ipv4Addr::from(k.to_ne_bytes()), v))
                    .map_err(|source| Error::Map {
                        name: POLICY_ENDPOINTS_MAP,
                        source,
                    })
            })
            .collect()
    }

    /// The flow event ring, once (its one reader is the flow reader).
    pub fn take_flows(&mut self) -> Option<RingBuf<MapData>> {
        self.flows.take()
    }

    /// The packet counters, summed over CPUs, for `/metrics` and tests.
    pub fn counters(&self) -> PacketCounters {
        PacketCounters(CountArray {
            map: self.metrics.clone(),
            name: METRICS_MAP,
        })
    }

    /// The per-frontend traffic counters.
    pub fn traffic(&self) -> TrafficCounters {
        TrafficCounters(CountArray {
            map: self.traffic.clone(),
            name: TRAFFIC_MAP,
        })
    }
}

fn ip_key(addr: Ipv4Addr) -> IpKey {
    IpKey {
        addr: u32::from_ne_bytes(addr.octets()),
    }
}

/// Unpins a link; with its last reference gone, it detaches.
fn unpin(pin: &Path) {
    match PinnedLink::from_pin(pin) {
        Ok(link) => {
            if let Err(e) = link.unpin() {
                tracing::warn!(pin = %pin.display(), error = %e, "unpinning a link");
            }
        }
        Err(_) => {
            let _ = std::fs::remove_file(pin);
        }
    }
}

fn ignore_missing(
    r: std::result::Result<(), aya::maps::MapError>,
    name: &'static str,
) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(Error::Map { name, source }),
    }
}

/// A per-CPU array of [`PacketCount`] shared with the kernel, summed over CPUs
/// when read.
#[derive(Clone)]
struct CountArray {
    map: Arc<Mutex<PerCpuArray<MapData, PacketCount>>>,
    name: &'static str,
}

impl CountArray {
    fn sum(&self, index: u32) -> Result<PacketCount> {
        let map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let values = map.get(&index, 0).map_err(|source| Error::Map {
            name: self.name,
            source,
        })?;
        Ok(values
            .iter()
            .fold(PacketCount::default(), |a, v| PacketCount {
                packets: a.packets + v.packets,
                bytes: a.bytes + v.bytes,
            }))
    }

    fn zero(&self, index: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::PossibleCpus(e))?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![PacketCount::default(); cpus])
            .map_err(Error::PossibleCpus)?;
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.set(index, zeros, 0).map_err(|source| Error::Map {
            name: self.name,
            source,
        })
    }
}

/// A handle on the datapath's packet counters; registered as a prometheus-client
/// [`Collector`], it reads the kernel's per-CPU values at every scrape.
#[derive(Clone)]
pub struct PacketCounters(CountArray);

impl std::fmt::Debug for PacketCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketCounters")
    }
}

impl PacketCounters {
    /// The count of `counter`, summed over CPUs.
    pub fn get(&self, counter: Counter) -> Result<PacketCount> {
        self.0.sum(counter as u32)
    }
}

/// Packets and bytes of each service frontend's flows (`SX_LB4_TRAFFIC_V1`).
#[derive(Clone)]
pub struct TrafficCounters(CountArray);

impl std::fmt::Debug for TrafficCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrafficCounters")
    }
}

impl TrafficCounters {
    /// Frontend `id`'s count, summed over CPUs.
    pub fn get(&self, id: u32) -> Result<PacketCount> {
        self.0.sum(id)
    }

    /// Zeroes frontend `id`'s count: an id handed to a new frontend starts at 0.
    pub fn reset(&self, id: u32) -> Result<()> {
        self.0.zero(id)
    }
}

impl Collector for PacketCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        let counts: Vec<(Counter, PacketCount)> = Counter::ALL
            .iter()
            .filter_map(|c| self.get(*c).ok().map(|v| (*c, v)))
            .collect();
        // (metric, help, label name, which counters, packets or bytes)
        type Pick = fn(&PacketCount) -> u64;
        let packets: Pick = |v| v.packets;
        let bytes: Pick = |v| v.bytes;
        let families: [(&str, &str, &str, Family, Pick); 4] = [
            (
                "sextant_dataplane_forwarded_packets",
                "Packets the datapath forwarded, by path: pods' packets (local_peer, host_stack, non_ipv4) and NodePort packets XDP sent from the uplink (xdp).",
                "path",
                Family::Forwarded,
                packets,
            ),
            (
                "sextant_dataplane_forwarded_bytes",
                "Bytes the datapath forwarded, by path (as the packets).",
                "path",
                Family::Forwarded,
                bytes,
            ),
            (
                "sextant_dataplane_drops",
                "Packets the datapath dropped, by reason.",
                "reason",
                Family::Dropped,
                packets,
            ),
            (
                "sextant_dataplane_service_packets",
                "Packets of service flows: the first of each flow (new_flow) and the rewritten rest (nat).",
                "event",
                Family::Service,
                packets,
            ),
        ];
        for (name, help, label, family, pick) in families {
            let mut metric = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (c, v) in counts.iter().filter(|(c, _)| c.family() == family) {
                let labels = [(label, c.label())];
                ConstCounter::new(pick(v)).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
