//! The pod datapath loaded into the kernel: `from_pod` (ingress) and `to_pod`
//! (egress) on the host side of every pod's veth, the endpoint map they deliver
//! by, the service maps, and the packet counters (see [`PacketCounters`]).

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{SchedClassifierLinkId, TcAttachOptions},
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
    lb::{BACKENDS_MAP, Lb4Backend, Lb4BackendKey, Lb4Key, Lb4Service, SERVICES_MAP},
    metrics::{Counter, Family, METRICS_MAP, PacketCount},
};

use crate::{
    Error, Result,
    counters::{map_mut, program},
    ebpf,
};

const FROM_POD: &str = "from_pod";
const TO_POD: &str = "to_pod";
/// The programs on a pod's host-side link, with their hook.
const POD_PROGRAMS: [(&str, TcAttachType); 2] = [
    (FROM_POD, TcAttachType::Ingress),
    (TO_POD, TcAttachType::Egress),
];

/// The datapath shared by the endpoint service and the service programmer.
pub type SharedDatapath = Arc<Mutex<Datapath>>;

/// The loaded pod programs and their maps.
///
/// # Guarantees
/// Dropping it detaches `from_pod` from every interface it was attached to.
pub struct Datapath {
    ebpf: Ebpf,
    links: HashMap<String, Vec<(&'static str, SchedClassifierLinkId)>>,
    metrics: Arc<Mutex<PerCpuArray<MapData, PacketCount>>>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("attached", &self.links.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the programs into the kernel without attaching them.
    pub fn load() -> Result<Self> {
        let debug = 0u32;
        let mut ebpf = EbpfLoader::new()
            .override_global(DEBUG_GLOBAL, &debug, true)
            .load(ebpf::OBJECT)?;
        for (name, _) in POD_PROGRAMS {
            program::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(|source| Error::Program { name, source })?;
        }
        let map = ebpf.take_map(METRICS_MAP).ok_or(Error::Map {
            name: METRICS_MAP,
            source: crate::counters::missing_map(METRICS_MAP),
        })?;
        let metrics = PerCpuArray::try_from(map).map_err(|source| Error::Map {
            name: METRICS_MAP,
            source,
        })?;
        Ok(Self {
            ebpf,
            links: HashMap::new(),
            metrics: Arc::new(Mutex::new(metrics)),
        })
    }

    /// Attaches `from_pod` to the ingress and `to_pod` to the egress of
    /// `host_ifname` (TCX); attaching an attached interface again is a no-op, and a
    /// failure leaves nothing attached.
    pub fn attach(&mut self, host_ifname: &str) -> Result<()> {
        if self.links.contains_key(host_ifname) {
            return Ok(());
        }
        let mut made = Vec::new();
        for (name, hook) in POD_PROGRAMS {
            let attached = program::<SchedClassifier>(&mut self.ebpf, name)?.attach_with_options(
                host_ifname,
                hook,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            );
            match attached {
                Ok(link) => made.push((name, link)),
                Err(source) => {
                    self.detach_links(made);
                    return Err(Error::Program { name, source });
                }
            }
        }
        self.links.insert(host_ifname.to_owned(), made);
        Ok(())
    }

    fn detach_links(&mut self, links: Vec<(&'static str, SchedClassifierLinkId)>) {
        for (name, link) in links {
            if let Ok(p) = program::<SchedClassifier>(&mut self.ebpf, name)
                && let Err(e) = p.detach(link)
            {
                tracing::debug!(program = name, error = %e, "detaching (interface gone?)");
            }
        }
    }

    /// Detaches from `host_ifname`; not attached is not an error (the links may
    /// have gone with the interface).
    pub fn detach(&mut self, host_ifname: &str) {
        if let Some(links) = self.links.remove(host_ifname) {
            self.detach_links(links);
        }
    }

    /// Whether the pod programs are attached to `host_ifname`.
    pub fn is_attached(&self, host_ifname: &str) -> bool {
        self.links.contains_key(host_ifname)
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

    /// The packet counters, summed over CPUs, for `/metrics` and tests.
    pub fn counters(&self) -> PacketCounters {
        PacketCounters(self.metrics.clone())
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

/// A handle on the datapath's packet counters; registered as a prometheus-client
/// [`Collector`], it reads the kernel's per-CPU values at every scrape.
#[derive(Clone)]
pub struct PacketCounters(Arc<Mutex<PerCpuArray<MapData, PacketCount>>>);

impl std::fmt::Debug for PacketCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketCounters")
    }
}

impl PacketCounters {
    /// The count of `counter`, summed over CPUs.
    pub fn get(&self, counter: Counter) -> Result<PacketCount> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let values = map.get(&(counter as u32), 0).map_err(|source| Error::Map {
            name: METRICS_MAP,
            source,
        })?;
        Ok(values
            .iter()
            .fold(PacketCount::default(), |a, v| PacketCount {
                packets: a.packets + v.packets,
                bytes: a.bytes + v.bytes,
            }))
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
                "Packets leaving pods, by the path the datapath gave them.",
                "path",
                Family::Forwarded,
                packets,
            ),
            (
                "sextant_dataplane_forwarded_bytes",
                "Bytes leaving pods, by the path the datapath gave them.",
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
