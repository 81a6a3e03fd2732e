//! The pinned BPF maps: reading them and changing the set by generations (see generation.rs).
use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{
    Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key,
};
use guard_common::{
    IpmeValue, Ipv4Data, Ipv6Data, MAP_IPME_GEN, MAP_IPME_V4, MAP_IPME_V4_TRIES, MAP_IPME_V6,
    MAP_IPME_V6_TRIES, MAP_PORTS, MAP_STATS, PortValue, STANDBY_SUFFIX, Stats, active_index,
};

use super::{GuardError, pins::PinDir};
use ipme::IpmeSet;

use crate::encode::{map_v4, map_v6};
use crate::generation::{Change, Tries, Writer};
use crate::sys::{self, RcuBarrier};

pub type V4Map = BTreeMap<(u32, Ipv4Data), u32>;
pub type V6Map = BTreeMap<(u32, Ipv6Data), u32>;

type V4Trie = LpmTrie<MapData, Ipv4Data, IpmeValue>;
type V6Trie = LpmTrie<MapData, Ipv6Data, IpmeValue>;

/// Handles on the guard's maps: the generation, two tries per family (by index), ports and
/// counters.
pub struct GuardMaps {
    pub generation: Array<MapData, u32>,
    pub v4: [V4Trie; 2],
    pub v6: [V6Trie; 2],
    pub ports: HashMap<MapData, u16, PortValue>,
    pub stats: PerCpuArray<MapData, Stats>,
    /// Where the tries are pinned, to keep the active ones under the documented names.
    pins: Option<PinDir>,
    barrier: Option<RcuBarrier>,
}

/// What an update changed, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    /// Entries of the set in force added (or retagged) and removed.
    pub upserted: usize,
    pub removed: usize,
    pub total: usize,
    /// The generation in force afterwards (it moves by one with every change of the set).
    pub generation: u32,
}

/// The error of an operation on map `map`.
fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> GuardError {
    move |source| GuardError::Map { map, source }
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

fn open_path(path: &std::path::Path) -> Result<Map, GuardError> {
    let data = MapData::from_pin(path).map_err(|e| GuardError::OpenMap(path.to_path_buf(), e))?;
    Map::from_map_data(data).map_err(|e| GuardError::OpenMap(path.to_path_buf(), e))
}

fn typed_path<T: TryFrom<Map, Error = aya::maps::MapError>>(
    path: &std::path::Path,
) -> Result<T, GuardError> {
    T::try_from(open_path(path)?).map_err(|e| GuardError::OpenMap(path.to_path_buf(), e))
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    pins: &PinDir,
    name: &str,
) -> Result<T, GuardError> {
    typed_path(&pins.map(name))
}

/// `maps/<name>.standby`.
pub fn standby_path(pins: &PinDir, name: &str) -> std::path::PathBuf {
    pins.map(&format!("{name}{STANDBY_SUFFIX}"))
}

/// The index (0 or 1) of the trie pinned at `path`, from its kernel name.
pub fn trie_index(path: &std::path::Path, names: &[&str; 2]) -> Result<usize, GuardError> {
    let info = aya::maps::MapInfo::from_pin(path)
        .map_err(|e| GuardError::OpenMap(path.to_path_buf(), e))?;
    let name = info.name_as_str().unwrap_or_default();
    names
        .iter()
        .position(|n| *n == name)
        .ok_or_else(|| GuardError::Layout(path.to_path_buf(), name.to_string()))
}

/// Where the two tries of one family are pinned, by index. Normally the documented name and
/// the standby name; after a writer killed in the middle of re-pinning without
/// RENAME_EXCHANGE (bpffs before Linux 5.15) both names may hold the same trie and the other
/// is under a temporary name: found there, and the next writer puts the names right.
pub fn trie_pins(
    pins: &PinDir,
    name: &str,
    names: &[&str; 2],
) -> Result<[std::path::PathBuf; 2], GuardError> {
    let main = pins.map(name);
    let standby = standby_path(pins, name);
    let i = trie_index(&main, names)?;
    let other = [
        standby.clone(),
        crate::pins::temporary(&standby),
        crate::pins::temporary(&main),
    ]
    .into_iter()
    .find(|p| p.exists() && trie_index(p, names).is_ok_and(|j| j != i));
    match other {
        Some(o) if i == 0 => Ok([main, o]),
        Some(o) => Ok([o, main]),
        None => Err(GuardError::Layout(standby, names[i].to_string())),
    }
}

/// Opens the two tries of one family from their pins, by index.
fn tries<T: TryFrom<Map, Error = aya::maps::MapError>>(
    pins: &PinDir,
    name: &str,
    names: &[&str; 2],
) -> Result<[T; 2], GuardError> {
    let [p0, p1] = trie_pins(pins, name, names)?;
    Ok([typed_path(&p0)?, typed_path(&p1)?])
}

fn take<T: TryFrom<Map, Error = aya::maps::MapError>>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
) -> Result<T, GuardError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| GuardError::Load(format!("map {name} missing from the object")))?;
    T::try_from(map).map_err(map_error(name))
}

fn read<K: aya::Pod + Ord>(
    name: &'static str,
    trie: &LpmTrie<MapData, K, IpmeValue>,
) -> Result<BTreeMap<(u32, K), u32>, GuardError> {
    trie.iter()
        .map(|r| {
            let (k, v) = r.map_err(map_error(name))?;
            Ok(((k.prefix_len(), k.data()), v.tag))
        })
        .collect()
}

impl GuardMaps {
    /// Opens the maps pinned under `pins` (fails if the guard was never attached there, or
    /// was attached by a qmail-guard from before generations: `attach` migrates those).
    pub fn open(pins: &PinDir) -> Result<Self, GuardError> {
        if !pins.maps_pinned() {
            return Err(GuardError::NotAttached(pins.root.clone()));
        }
        if !pins.map(MAP_IPME_GEN).exists() {
            return Err(GuardError::OldLayout(pins.root.clone()));
        }
        Ok(GuardMaps {
            generation: typed(pins, MAP_IPME_GEN)?,
            v4: tries(pins, MAP_IPME_V4, &MAP_IPME_V4_TRIES)?,
            v6: tries(pins, MAP_IPME_V6, &MAP_IPME_V6_TRIES)?,
            ports: typed(pins, MAP_PORTS)?,
            stats: typed(pins, MAP_STATS)?,
            pins: Some(pins.clone()),
            barrier: None,
        })
    }

    /// Takes the maps out of a freshly loaded object (some may be new and not pinned yet:
    /// `pin_new` pins those).
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self, GuardError> {
        Ok(GuardMaps {
            generation: take(ebpf, MAP_IPME_GEN)?,
            v4: [
                take(ebpf, MAP_IPME_V4_TRIES[0])?,
                take(ebpf, MAP_IPME_V4_TRIES[1])?,
            ],
            v6: [
                take(ebpf, MAP_IPME_V6_TRIES[0])?,
                take(ebpf, MAP_IPME_V6_TRIES[1])?,
            ],
            ports: take(ebpf, MAP_PORTS)?,
            stats: take(ebpf, MAP_STATS)?,
            pins: None,
            barrier: None,
        })
    }

    /// Pins every map under `pins` (the active tries under their documented names), replacing
    /// whatever was pinned there, each name in one rename. From then on the pins follow flips.
    pub fn pin_all(&mut self, pins: &PinDir) -> Result<(), GuardError> {
        let a = active_index(self.generation()?);
        let pin = |data: &MapData, path: std::path::PathBuf| -> Result<(), GuardError> {
            let tmp = crate::pins::temporary(&path);
            let _ = std::fs::remove_file(&tmp);
            data.pin(&tmp).map_err(|e| {
                GuardError::PinIo(tmp.clone(), std::io::Error::other(e.to_string()))
            })?;
            std::fs::rename(&tmp, &path).map_err(|e| GuardError::PinIo(path, e))
        };
        pin(self.generation.map(), pins.map(MAP_IPME_GEN))?;
        pin(self.ports.map(), pins.map(MAP_PORTS))?;
        pin(self.stats.map(), pins.map(MAP_STATS))?;
        pin(self.v4[1 - a].map(), standby_path(pins, MAP_IPME_V4))?;
        pin(self.v6[1 - a].map(), standby_path(pins, MAP_IPME_V6))?;
        pin(self.v4[a].map(), pins.map(MAP_IPME_V4))?;
        pin(self.v6[a].map(), pins.map(MAP_IPME_V6))?;
        self.pins = Some(pins.clone());
        Ok(())
    }

    /// The generation in force.
    pub fn generation(&self) -> Result<u32, GuardError> {
        self.generation.get(&0, 0).map_err(map_error(MAP_IPME_GEN))
    }

    /// The generation whose set both tries hold, if the last writer finished.
    fn clean(&self) -> Result<Option<u32>, GuardError> {
        let mark = self
            .generation
            .get(&1, 0)
            .map_err(map_error(MAP_IPME_GEN))?;
        Ok(mark.checked_sub(1))
    }

    fn active(&self) -> Result<usize, GuardError> {
        Ok(active_index(self.generation()?))
    }

    /// The IPv4 set in force.
    pub fn read_v4(&self) -> Result<V4Map, GuardError> {
        read(MAP_IPME_V4, &self.v4[self.active()?])
    }

    /// The IPv6 set in force.
    pub fn read_v6(&self) -> Result<V6Map, GuardError> {
        read(MAP_IPME_V6, &self.v6[self.active()?])
    }

    /// Makes the pins' names match the generation in force (the active tries under
    /// `IPME_V4`/`IPME_V6`); a writer killed between a flip and the rename leaves them swapped.
    fn fix_pins(&self) -> Result<(), GuardError> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        let a = self.active()?;
        self.place_pins(
            pins,
            MAP_IPME_V4,
            &MAP_IPME_V4_TRIES,
            [self.v4[0].map(), self.v4[1].map()],
            a,
        )?;
        self.place_pins(
            pins,
            MAP_IPME_V6,
            &MAP_IPME_V6_TRIES,
            [self.v6[0].map(), self.v6[1].map()],
            a,
        )
    }

    /// Pins trie `active` of one family under its documented name and the other under the
    /// standby name, if they are not there already. Both names exist at every instant: one
    /// RENAME_EXCHANGE, or where bpffs lacks it (before Linux 5.15) each trie pinned under a
    /// temporary name and renamed over its place (the documented name first).
    fn place_pins(
        &self,
        pins: &PinDir,
        name: &str,
        names: &[&str; 2],
        tries: [&MapData; 2],
        active: usize,
    ) -> Result<(), GuardError> {
        let main = pins.map(name);
        let standby = standby_path(pins, name);
        let at = |p: &std::path::Path| trie_index(p, names).ok();
        let (m, s) = (at(&main), at(&standby));
        if m == Some(active) && s == Some(1 - active) {
            return Ok(());
        }
        if m == Some(1 - active) && s == Some(active) {
            match sys::rename_exchange(&main, &standby) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(GuardError::PinIo(main, e)),
            }
        }
        // Both temporaries first, so a writer killed between the renames leaves the other
        // trie findable (see trie_pins).
        let tmp_main = crate::pins::temporary(&main);
        let tmp_standby = crate::pins::temporary(&standby);
        for (data, tmp) in [
            (tries[1 - active], &tmp_standby),
            (tries[active], &tmp_main),
        ] {
            let _ = std::fs::remove_file(tmp);
            data.pin(tmp).map_err(|e| {
                GuardError::PinIo(tmp.clone(), std::io::Error::other(e.to_string()))
            })?;
        }
        std::fs::rename(&tmp_main, &main).map_err(|e| GuardError::PinIo(main.clone(), e))?;
        std::fs::rename(&tmp_standby, &standby).map_err(|e| GuardError::PinIo(standby, e))?;
        Ok(())
    }

    /// Brings the set in force to exactly `set`, atomically for connects (see generation.rs).
    pub fn sync(&mut self, set: &IpmeSet) -> Result<SyncReport, GuardError> {
        self.fix_pins()?;
        let (new4, new6) = (map_v4(set), map_v6(set));
        let generation = self.generation()?;
        let (v4, v6) = if self.clean()? == Some(generation) {
            // Both tries hold the set in force: read one.
            let a = active_index(generation);
            let (c4, c6) = (
                read(MAP_IPME_V4_TRIES[a], &self.v4[a])?,
                read(MAP_IPME_V6_TRIES[a], &self.v6[a])?,
            );
            (
                Tries {
                    by_index: [c4.clone(), c4],
                },
                Tries {
                    by_index: [c6.clone(), c6],
                },
            )
        } else {
            (
                Tries {
                    by_index: [
                        read(MAP_IPME_V4_TRIES[0], &self.v4[0])?,
                        read(MAP_IPME_V4_TRIES[1], &self.v4[1])?,
                    ],
                },
                Tries {
                    by_index: [
                        read(MAP_IPME_V6_TRIES[0], &self.v6[0])?,
                        read(MAP_IPME_V6_TRIES[1], &self.v6[1])?,
                    ],
                },
            )
        };
        let change = Change::plan(generation, &v4, &v6, &new4, &new6);
        let out = change.apply(self)?;
        Ok(SyncReport {
            upserted: out.upserted,
            removed: out.removed,
            total: new4.len() + new6.len(),
            generation: out.generation,
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
        let i = self.active()?;
        let v4 =
            |a: std::net::Ipv4Addr| (MAP_IPME_V4, self.v4[i].get(&Key::new(32, a.octets()), 0));
        // The map named in an error is the one looked in (v4-mapped addresses use IPME_V4).
        let (map, found) = match addr {
            std::net::IpAddr::V4(a) => v4(a),
            std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(m) => v4(m),
                None => (MAP_IPME_V6, self.v6[i].get(&Key::new(128, a.octets()), 0)),
            },
        };
        match found {
            Ok(v) => Ok(Some(v.tag)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(map)(e)),
        }
    }
}

impl Writer for GuardMaps {
    type Error = GuardError;

    fn write_v4(
        &mut self,
        index: usize,
        key: &(u32, Ipv4Data),
        tag: u32,
    ) -> Result<(), GuardError> {
        self.v4[index]
            .insert(&Key::new(key.0, key.1), &IpmeValue { tag }, 0)
            .map_err(map_error(MAP_IPME_V4_TRIES[index]))
    }

    fn remove_v4(&mut self, index: usize, key: &(u32, Ipv4Data)) -> Result<(), GuardError> {
        gone_ok(
            MAP_IPME_V4_TRIES[index],
            self.v4[index].remove(&Key::new(key.0, key.1)),
        )
    }

    fn write_v6(
        &mut self,
        index: usize,
        key: &(u32, Ipv6Data),
        tag: u32,
    ) -> Result<(), GuardError> {
        self.v6[index]
            .insert(&Key::new(key.0, key.1), &IpmeValue { tag }, 0)
            .map_err(map_error(MAP_IPME_V6_TRIES[index]))
    }

    fn remove_v6(&mut self, index: usize, key: &(u32, Ipv6Data)) -> Result<(), GuardError> {
        gone_ok(
            MAP_IPME_V6_TRIES[index],
            self.v6[index].remove(&Key::new(key.0, key.1)),
        )
    }

    fn flip(&mut self, generation: u32) -> Result<(), GuardError> {
        self.generation
            .set(0, &generation, 0)
            .map_err(map_error(MAP_IPME_GEN))?;
        // The documented pin names follow the set in force. Only names: a failure here leaves
        // the guard correct, and the next writer renames again.
        self.fix_pins()
    }

    /// Stored as generation + 1, so 0 (a fresh map) means "not known to be equal".
    fn mark(&mut self, clean: Option<u32>) -> Result<(), GuardError> {
        let mark = clean.map_or(0, |g| g.wrapping_add(1));
        self.generation
            .set(1, &mark, 0)
            .map_err(map_error(MAP_IPME_GEN))
    }

    fn barrier(&mut self) -> Result<(), GuardError> {
        if self.barrier.is_none() {
            self.barrier = Some(RcuBarrier::new().map_err(GuardError::Barrier)?);
        }
        match &self.barrier {
            Some(b) => b.wait().map_err(GuardError::Barrier),
            None => Ok(()),
        }
    }
}
