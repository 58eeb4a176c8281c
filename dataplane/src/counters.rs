//! Per-interface packet and byte counters: the XDP program `count_xdp` counts what an
//! interface receives, the TC program `count_tc` (attached on egress) what it sends.
//!
//! This is the first pair of programs and the shape every later one follows: load
//! the embedded object, attach (XDP native with SKB fallback, TC through TCX), keep
//! the link ids, detach on request or on drop.

use std::collections::HashMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{SchedClassifierLinkId, TcAttachOptions},
        xdp::XdpLinkId,
    },
};
use sextant_ebpf_common::counters::{
    DEBUG_GLOBAL, IFACE_SLOTS_MAP, IFACE_STATS_MAP, IfaceStats, MAX_IFACES,
};

use crate::{Error, Result, ebpf};

const TC_PROGRAM: &str = "count_tc";
const XDP_PROGRAM: &str = "count_xdp";

/// The XDP mode an interface ended up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedXdpMode {
    /// Native (driver) XDP.
    Driver,
    /// Generic XDP in the kernel stack, used when the driver has no XDP support.
    Skb,
}

/// Kernel program ids of the counting programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramIds {
    /// `count_xdp`.
    pub xdp: u32,
    /// `count_tc`.
    pub tc: u32,
}

struct Attachment {
    slot: u32,
    xdp: XdpLinkId,
    xdp_mode: AttachedXdpMode,
    tc: SchedClassifierLinkId,
}

/// The counting programs loaded once, attachable to many interfaces of the
/// network namespace the caller is in.
///
/// # Guarantees
/// Dropping it detaches every program it attached (the links are owned here).
pub struct InterfaceCounters {
    ebpf: Ebpf,
    attached: HashMap<String, Attachment>,
    free_slots: Vec<u32>,
    logger: Option<aya_log::EbpfLogger<Box<dyn log::Log>>>,
}

impl InterfaceCounters {
    /// Loads the programs into the kernel without attaching them.
    pub fn load() -> Result<Self> {
        Self::load_inner(None)
    }

    /// Loads the programs with their aya-log lines switched on, delivered to `logger`
    /// when [`InterfaceCounters::flush_log`] is called.
    pub fn load_with_debug_log(logger: Box<dyn log::Log>) -> Result<Self> {
        Self::load_inner(Some(logger))
    }

    fn load_inner(logger: Option<Box<dyn log::Log>>) -> Result<Self> {
        let debug: u32 = u32::from(logger.is_some());
        let mut ebpf = EbpfLoader::new()
            .override_global(DEBUG_GLOBAL, &debug, true)
            .load(ebpf::OBJECT)?;
        let logger = match logger {
            Some(l) => Some(aya_log::EbpfLogger::init_with_logger(&mut ebpf, l)?),
            None => None,
        };
        program::<Xdp>(&mut ebpf, XDP_PROGRAM)?
            .load()
            .map_err(|source| Error::Program {
                name: XDP_PROGRAM,
                source,
            })?;
        program::<SchedClassifier>(&mut ebpf, TC_PROGRAM)?
            .load()
            .map_err(|source| Error::Program {
                name: TC_PROGRAM,
                source,
            })?;
        Ok(Self {
            ebpf,
            attached: HashMap::new(),
            // Pop from the end: slot 0 is handed out first.
            free_slots: (0..MAX_IFACES).rev().collect(),
            logger,
        })
    }

    /// Attaches both programs to `ifname` and starts counting from zero.
    ///
    /// XDP is tried in driver mode first and falls back to SKB mode; TC attaches on
    /// egress through TCX. Attaching an attached interface again is a no-op.
    pub fn attach(&mut self, ifname: &str) -> Result<AttachedXdpMode> {
        if let Some(a) = self.attached.get(ifname) {
            return Ok(a.xdp_mode);
        }
        let ifindex = ifindex_of(ifname)?;
        let slot = self
            .free_slots
            .pop()
            .ok_or(Error::SlotsExhausted(MAX_IFACES))?;
        match self.attach_at(ifname, ifindex, slot) {
            Ok(a) => {
                let mode = a.xdp_mode;
                self.attached.insert(ifname.to_owned(), a);
                Ok(mode)
            }
            Err(e) => {
                self.free_slots.push(slot);
                Err(e)
            }
        }
    }

    fn attach_at(&mut self, ifname: &str, ifindex: u32, slot: u32) -> Result<Attachment> {
        self.zero_slot(slot)?;
        let mut slots: BpfHashMap<&mut MapData, u32, u32> =
            map_mut(&mut self.ebpf, IFACE_SLOTS_MAP)?;
        slots
            .insert(ifindex, slot, 0)
            .map_err(|source| Error::Map {
                name: IFACE_SLOTS_MAP,
                source,
            })?;

        let xdp = program::<Xdp>(&mut self.ebpf, XDP_PROGRAM)?;
        let (xdp_link, xdp_mode) = match xdp.attach(ifname, XdpMode::Driver) {
            Ok(link) => (link, AttachedXdpMode::Driver),
            Err(driver_err) => {
                tracing::debug!(ifname, error = %driver_err, "native XDP refused, using SKB mode");
                let link = xdp
                    .attach(ifname, XdpMode::Skb)
                    .map_err(|source| Error::Program {
                        name: XDP_PROGRAM,
                        source,
                    })?;
                (link, AttachedXdpMode::Skb)
            }
        };

        let tc = program::<SchedClassifier>(&mut self.ebpf, TC_PROGRAM)?;
        let tc_link = match tc.attach_with_options(
            ifname,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        ) {
            Ok(link) => link,
            Err(source) => {
                // Leave nothing half-attached.
                let _ = program::<Xdp>(&mut self.ebpf, XDP_PROGRAM).map(|p| p.detach(xdp_link));
                return Err(Error::Program {
                    name: TC_PROGRAM,
                    source,
                });
            }
        };
        tracing::info!(ifname, ifindex, slot, ?xdp_mode, "attached packet counters");
        Ok(Attachment {
            slot,
            xdp: xdp_link,
            xdp_mode,
            tc: tc_link,
        })
    }

    /// Detaches both programs from `ifname`.
    pub fn detach(&mut self, ifname: &str) -> Result<()> {
        let a = self
            .attached
            .remove(ifname)
            .ok_or_else(|| Error::NotAttached(ifname.to_owned()))?;
        program::<Xdp>(&mut self.ebpf, XDP_PROGRAM)?
            .detach(a.xdp)
            .map_err(|source| Error::Program {
                name: XDP_PROGRAM,
                source,
            })?;
        program::<SchedClassifier>(&mut self.ebpf, TC_PROGRAM)?
            .detach(a.tc)
            .map_err(|source| Error::Program {
                name: TC_PROGRAM,
                source,
            })?;
        // The interface may be gone already; its slot entry is then stale but harmless.
        if let Ok(ifindex) = ifindex_of(ifname) {
            let mut slots: BpfHashMap<&mut MapData, u32, u32> =
                map_mut(&mut self.ebpf, IFACE_SLOTS_MAP)?;
            let _ = slots.remove(&ifindex);
        }
        self.free_slots.push(a.slot);
        tracing::info!(ifname, "detached packet counters");
        Ok(())
    }

    /// Names of the interfaces the programs are attached to.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attached.keys().map(String::as_str)
    }

    /// The kernel ids of the loaded programs, to match them with what `bpftool`
    /// or the kernel's link list report.
    pub fn program_ids(&self) -> Result<ProgramIds> {
        let id = |name: &'static str| -> Result<u32> {
            let p = self.ebpf.program(name).ok_or(Error::Program {
                name,
                source: aya::programs::ProgramError::UnexpectedProgramType,
            })?;
            Ok(p.info()
                .map_err(|source| Error::Program { name, source })?
                .id())
        };
        Ok(ProgramIds {
            xdp: id(XDP_PROGRAM)?,
            tc: id(TC_PROGRAM)?,
        })
    }

    /// The counters of `ifname`, summed over CPUs.
    pub fn stats(&self, ifname: &str) -> Result<IfaceStats> {
        let a = self
            .attached
            .get(ifname)
            .ok_or_else(|| Error::NotAttached(ifname.to_owned()))?;
        let map = self.ebpf.map(IFACE_STATS_MAP).ok_or(Error::Map {
            name: IFACE_STATS_MAP,
            source: missing_map(IFACE_STATS_MAP),
        })?;
        let stats: PerCpuArray<&MapData, IfaceStats> =
            PerCpuArray::try_from(map).map_err(|source| Error::Map {
                name: IFACE_STATS_MAP,
                source,
            })?;
        let values = stats.get(&a.slot, 0).map_err(|source| Error::Map {
            name: IFACE_STATS_MAP,
            source,
        })?;
        Ok(IfaceStats::sum(values.iter()))
    }

    /// Delivers buffered aya-log lines to the logger given at load time.
    pub fn flush_log(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    fn zero_slot(&mut self, slot: u32) -> Result<()> {
        let mut stats: PerCpuArray<&mut MapData, IfaceStats> =
            map_mut(&mut self.ebpf, IFACE_STATS_MAP)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::PossibleCpus(e))?;
        let zero = PerCpuValues::try_from(vec![IfaceStats::default(); cpus])
            .map_err(Error::PossibleCpus)?;
        stats.set(slot, zero, 0).map_err(|source| Error::Map {
            name: IFACE_STATS_MAP,
            source,
        })
    }
}

pub(crate) fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or(Error::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    p.try_into()
        .map_err(|source| Error::Program { name, source })
}

pub(crate) fn map_mut<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M>
where
    M: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(Error::Map {
        name,
        source: missing_map(name),
    })?;
    M::try_from(map).map_err(|source| Error::Map { name, source })
}

pub(crate) fn missing_map(name: &str) -> aya::maps::MapError {
    aya::maps::MapError::InvalidName {
        name: name.to_owned(),
    }
}

fn ifindex_of(ifname: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(ifname).map_err(|_| Error::NoSuchInterface(ifname.to_owned()))
}
