//! The pod datapath loaded into the kernel: `from_pod` on the host side of every
//! pod's veth, the endpoint map it delivers by, and its packet counters, exported
//! as `sextant_dataplane_forwarded_packets_total` / `..._bytes_total`.

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
    metrics::{Counter, METRICS_MAP, PacketCount},
};

use crate::{
    Error, Result,
    counters::{map_mut, program},
    ebpf,
};

const FROM_POD: &str = "from_pod";

/// The loaded pod programs and their maps.
///
/// # Guarantees
/// Dropping it detaches `from_pod` from every interface it was attached to.
pub struct Datapath {
    ebpf: Ebpf,
    links: HashMap<String, SchedClassifierLinkId>,
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
        program::<SchedClassifier>(&mut ebpf, FROM_POD)?
            .load()
            .map_err(|source| Error::Program {
                name: FROM_POD,
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
        Ok(Self {
            ebpf,
            links: HashMap::new(),
            metrics: Arc::new(Mutex::new(metrics)),
        })
    }

    /// Attaches `from_pod` to the ingress of `host_ifname` (TCX); attaching an
    /// attached interface again is a no-op.
    pub fn attach(&mut self, host_ifname: &str) -> Result<()> {
        if self.links.contains_key(host_ifname) {
            return Ok(());
        }
        let link = program::<SchedClassifier>(&mut self.ebpf, FROM_POD)?
            .attach_with_options(
                host_ifname,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|source| Error::Program {
                name: FROM_POD,
                source,
            })?;
        self.links.insert(host_ifname.to_owned(), link);
        Ok(())
    }

    /// Detaches from `host_ifname`; not attached is not an error (the link may
    /// have gone with its interface).
    pub fn detach(&mut self, host_ifname: &str) {
        if let Some(link) = self.links.remove(host_ifname)
            && let Ok(p) = program::<SchedClassifier>(&mut self.ebpf, FROM_POD)
            && let Err(e) = p.detach(link)
        {
            tracing::debug!(host_ifname, error = %e, "detaching from_pod (interface gone?)");
        }
    }

    /// Whether `from_pod` is attached to `host_ifname`.
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
        match map.remove(&u32::from_ne_bytes(ip.octets())) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(Error::Map {
                name: ENDPOINTS_MAP,
                source,
            }),
        }
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

    /// The packet counters, summed over CPUs, for `/metrics` and tests.
    pub fn counters(&self) -> PacketCounters {
        PacketCounters(self.metrics.clone())
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
        for (name, help, pick) in [
            (
                "sextant_dataplane_forwarded_packets",
                "Packets leaving pods, by the path the datapath gave them.",
                (|v: &PacketCount| v.packets) as fn(&PacketCount) -> u64,
            ),
            (
                "sextant_dataplane_forwarded_bytes",
                "Bytes leaving pods, by the path the datapath gave them.",
                |v: &PacketCount| v.bytes,
            ),
        ] {
            let counter = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            for (c, v) in &counts {
                let labels = [("path", c.label())];
                let metric = family.encode_family(&labels)?;
                ConstCounter::new(pick(v)).encode(metric)?;
            }
        }
        Ok(())
    }
}
