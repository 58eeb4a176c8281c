//! How full the datapath's maps are: `sextant_dataplane_map_entries{map}`,
//! `sextant_dataplane_map_capacity{map}` and `sextant_dataplane_map_pressure{map}`
//! (entries / capacity, Cilium's `bpf_map_pressure`), for the conntrack table
//! (its entries are the tracked flows), the service, policy and endpoint maps.
//! A full map evicts flows (LRU) or refuses new services, endpoints and rules.
//!
//! Counted every [`PERIOD`] from the pins with their own descriptors, so a
//! count (a walk over up to 262 144 conntrack keys) never holds the datapath lock.

use std::{
    path::{Path, PathBuf},
    sync::atomic::AtomicU64,
    time::Duration,
};

use aya::{
    Pod,
    maps::{HashMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
};
use sextant_ebpf_common::{
    endpoints::{ENDPOINTS_MAP, Endpoint},
    lb::{
        AFFINITY_MAP, BACKENDS_MAP, CT_MAP, Ct4Entry, Ct4Key, Lb4Affinity, Lb4AffinityKey,
        Lb4Backend, Lb4BackendKey, Lb4Key, Lb4Service, SERVICES_MAP,
    },
    policy::{
        IPCACHE_MAP, IpKey, POLICY_ENDPOINTS_MAP, POLICY_MAP, PolicyEndpoint, PolicyKey,
        PolicyValue,
    },
};

/// How often the maps are counted.
pub const PERIOD: Duration = Duration::from_secs(10);

/// The `map` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    /// The map's name, e.g. `SX_CT4_V1`.
    pub map: &'static str,
}

/// The three gauge families.
#[derive(Clone, Debug, Default)]
pub struct MapGauges {
    entries: Family<MapLabel, Gauge>,
    capacity: Family<MapLabel, Gauge>,
    pressure: Family<MapLabel, Gauge<f64, AtomicU64>>,
}

impl MapGauges {
    /// Registers the gauges on `registry`.
    pub fn register(registry: &mut sextant_metrics::Registry) -> Self {
        let g = Self::default();
        registry.register(
            "sextant_dataplane_map_entries",
            "Entries in each datapath map (SX_CT4_V1: tracked flows), counted every 10 s.",
            g.entries.clone(),
        );
        registry.register(
            "sextant_dataplane_map_capacity",
            "Maximum entries of each datapath map.",
            g.capacity.clone(),
        );
        registry.register(
            "sextant_dataplane_map_pressure",
            "Entries / capacity of each datapath map; at 1 LRU maps evict and others refuse.",
            g.pressure.clone(),
        );
        g
    }
}

/// Entries and capacity of a pinned hash or LRU hash map with keys `K`.
fn count_hash<K: Pod, V: Pod>(path: &Path) -> Result<(u64, u32), MapError> {
    let data = MapData::from_pin(path)?;
    let capacity = data.info()?.max_entries();
    let map = HashMap::<MapData, K, V>::try_from(Map::from_map_data(data)?)?;
    Ok((map.keys().filter(Result::is_ok).count() as u64, capacity))
}

/// Entries and capacity of a pinned LPM trie with keys `K`.
fn count_lpm<K: Pod, V: Pod>(path: &Path) -> Result<(u64, u32), MapError> {
    let data = MapData::from_pin(path)?;
    let capacity = data.info()?.max_entries();
    let map = LpmTrie::<MapData, K, V>::try_from(Map::from_map_data(data)?)?;
    let keys = map.keys().filter(|k: &Result<Key<K>, _>| k.is_ok());
    Ok((keys.count() as u64, capacity))
}

type Counter = fn(&Path) -> Result<(u64, u32), MapError>;

/// The maps watched, with how to count each.
const MAPS: [(&str, Counter); 8] = [
    (CT_MAP, count_hash::<Ct4Key, Ct4Entry>),
    (SERVICES_MAP, count_hash::<Lb4Key, Lb4Service>),
    (BACKENDS_MAP, count_hash::<Lb4BackendKey, Lb4Backend>),
    (AFFINITY_MAP, count_hash::<Lb4AffinityKey, Lb4Affinity>),
    (ENDPOINTS_MAP, count_hash::<u32, Endpoint>),
    (IPCACHE_MAP, count_lpm::<IpKey, u32>),
    (POLICY_MAP, count_lpm::<PolicyKey, PolicyValue>),
    (POLICY_ENDPOINTS_MAP, count_hash::<u32, PolicyEndpoint>),
];

/// Counts every map once into `gauges`.
pub fn sample(pin_dir: &Path, gauges: &MapGauges) {
    for (map, count) in MAPS {
        let label = MapLabel { map };
        match count(&pin_dir.join("maps").join(map)) {
            Ok((entries, capacity)) => {
                gauges.entries.get_or_create(&label).set(entries as i64);
                gauges
                    .capacity
                    .get_or_create(&label)
                    .set(i64::from(capacity));
                let ratio = entries as f64 / f64::from(capacity.max(1));
                gauges.pressure.get_or_create(&label).set(ratio);
            }
            Err(e) => tracing::warn!(map, error = %e, "counting a datapath map"),
        }
    }
}

/// Counts the maps pinned under `pin_dir` every [`PERIOD`] until the process ends.
pub async fn run(pin_dir: PathBuf, gauges: MapGauges) {
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        let (dir, g) = (pin_dir.clone(), gauges.clone());
        if tokio::task::spawn_blocking(move || sample(&dir, &g))
            .await
            .is_err()
        {
            return;
        }
    }
}
