//! The pinned BPF maps: reading them and updating them by difference.
use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key};
use guard_common::{
    IpmeValue, Ipv4Data, Ipv6Data, MAP_IPME_V4, MAP_IPME_V6, MAP_PORTS, MAP_STATS, PortValue, Stats,
};

use super::{GuardError, pins::PinDir};
use ipme::IpmeSet;

use crate::diff::diff;
use crate::encode::{map_v4, map_v6};

pub type V4Map = BTreeMap<(u32, Ipv4Data), u32>;
pub type V6Map = BTreeMap<(u32, Ipv6Data), u32>;

/// Handles on the four pinned maps.
pub struct GuardMaps {
    pub v4: LpmTrie<MapData, Ipv4Data, IpmeValue>,
    pub v6: LpmTrie<MapData, Ipv6Data, IpmeValue>,
    pub ports: HashMap<MapData, u16, PortValue>,
    pub stats: PerCpuArray<MapData, Stats>,
}

/// What an update changed, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    pub upserted: usize,
    pub removed: usize,
    pub total: usize,
}

/// A key another writer removed meanwhile is as good as removed by us.
fn gone_ok(map: &'static str, r: Result<(), aya::maps::MapError>) -> Result<(), GuardError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other.map_err(map_error(map)),
    }
}

/// The error of an operation on map `map`.
fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> GuardError {
    move |source| GuardError::Map { map, source }
}

fn open(pins: &PinDir, name: &str) -> Result<Map, GuardError> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).map_err(|e| GuardError::OpenMap(path.clone(), e))?;
    Map::from_map_data(data).map_err(|e| GuardError::OpenMap(path, e))
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    pins: &PinDir,
    name: &str,
) -> Result<T, GuardError> {
    T::try_from(open(pins, name)?).map_err(|e| GuardError::OpenMap(pins.map(name), e))
}

impl GuardMaps {
    /// Opens the maps pinned under `pins` (fails if the guard was never attached there).
    pub fn open(pins: &PinDir) -> Result<Self, GuardError> {
        if !pins.maps_pinned() {
            return Err(GuardError::NotAttached(pins.root.clone()));
        }
        Ok(GuardMaps {
            v4: typed(pins, MAP_IPME_V4)?,
            v6: typed(pins, MAP_IPME_V6)?,
            ports: typed(pins, MAP_PORTS)?,
            stats: typed(pins, MAP_STATS)?,
        })
    }

    pub fn read_v4(&self) -> Result<V4Map, GuardError> {
        self.v4
            .iter()
            .map(|r| {
                let (k, v) = r.map_err(map_error(MAP_IPME_V4))?;
                Ok(((k.prefix_len(), k.data()), v.tag))
            })
            .collect()
    }

    pub fn read_v6(&self) -> Result<V6Map, GuardError> {
        self.v6
            .iter()
            .map(|r| {
                let (k, v) = r.map_err(map_error(MAP_IPME_V6))?;
                Ok(((k.prefix_len(), k.data()), v.tag))
            })
            .collect()
    }

    /// Brings both tries to exactly `set` by difference: new and changed entries are written
    /// before stale ones are removed, so an address that stays "me" is never briefly allowed.
    pub fn sync(&mut self, set: &IpmeSet) -> Result<SyncReport, GuardError> {
        let (new4, new6) = (map_v4(set), map_v6(set));
        let d4 = diff(&self.read_v4()?, &new4);
        let d6 = diff(&self.read_v6()?, &new6);
        for ((len, data), tag) in &d4.upsert {
            self.v4
                .insert(&Key::new(*len, *data), &IpmeValue { tag: *tag }, 0)
                .map_err(map_error(MAP_IPME_V4))?;
        }
        for ((len, data), tag) in &d6.upsert {
            self.v6
                .insert(&Key::new(*len, *data), &IpmeValue { tag: *tag }, 0)
                .map_err(map_error(MAP_IPME_V6))?;
        }
        for (len, data) in &d4.remove {
            gone_ok(MAP_IPME_V4, self.v4.remove(&Key::new(*len, *data)))?;
        }
        for (len, data) in &d6.remove {
            gone_ok(MAP_IPME_V6, self.v6.remove(&Key::new(*len, *data)))?;
        }
        Ok(SyncReport {
            upserted: d4.upsert.len() + d6.upsert.len(),
            removed: d4.remove.len() + d6.remove.len(),
            total: new4.len() + new6.len(),
        })
    }

    pub fn ports(&self) -> Result<BTreeSet<u16>, GuardError> {
        self.ports
            .keys()
            .map(|k| k.map_err(map_error(MAP_PORTS)))
            .collect()
    }

    /// Sets the guarded ports (add first, then remove).
    pub fn set_ports(&mut self, ports: &BTreeSet<u16>) -> Result<(), GuardError> {
        let old = self.ports()?;
        for p in ports.difference(&old) {
            self.ports
                .insert(p, &PortValue { guarded: 1 }, 0)
                .map_err(map_error(MAP_PORTS))?;
        }
        for p in old.difference(ports) {
            self.ports.remove(p).map_err(map_error(MAP_PORTS))?;
        }
        Ok(())
    }

    /// Refusal counters summed over all CPUs.
    pub fn stats(&self) -> Result<Stats, GuardError> {
        let per_cpu = self.stats.get(&0, 0).map_err(map_error(MAP_STATS))?;
        Ok(per_cpu.iter().fold(Stats::default(), |acc, s| Stats {
            refused_v4: acc.refused_v4 + s.refused_v4,
            refused_v6: acc.refused_v6 + s.refused_v6,
        }))
    }

    /// The kernel's verdict for a destination, from the pinned maps: the matching entry's tag,
    /// if any, and whether the port is guarded.
    pub fn lookup(&self, addr: std::net::IpAddr) -> Result<Option<u32>, GuardError> {
        let v4 = |a: std::net::Ipv4Addr| self.v4.get(&Key::new(32, a.octets()), 0);
        let found = match addr {
            std::net::IpAddr::V4(a) => v4(a),
            std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(m) => v4(m),
                None => self.v6.get(&Key::new(128, a.octets()), 0),
            },
        };
        let map = if matches!(addr, std::net::IpAddr::V6(a) if a.to_ipv4_mapped().is_none()) {
            MAP_IPME_V6
        } else {
            MAP_IPME_V4
        };
        match found {
            Ok(v) => Ok(Some(v.tag)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(map)(e)),
        }
    }
}
