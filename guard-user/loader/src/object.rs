//! The compiled guard-ebpf object, embedded at build time, and loading it.
use std::{collections::BTreeSet, os::fd::AsFd as _, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupSockAddr, ProgramError},
};
use guard_common::{
    MAP_IPME_GEN, MAP_IPME_V4, MAP_IPME_V4_TRIES, MAP_IPME_V6, MAP_IPME_V6_TRIES, MAP_PORTS,
    MAP_STATS,
};
use ipme::IpmeSet;

use super::{
    GuardError, GuardMaps, Hook, PinDir, Refusal, SyncReport, refusal::set_retval_missing,
};
use crate::maps::trie_pins;

/// Built by guard-loader's build.rs with aya-build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf"));

/// The first line only: a verifier log is hundreds of lines (set QMAIL_GUARD_VERBOSE=1 for it).
fn load_err(e: impl std::fmt::Display) -> GuardError {
    let text = e.to_string();
    if std::env::var_os("QMAIL_GUARD_VERBOSE").is_some() {
        return GuardError::Load(text);
    }
    let first = text.split(". Verifier output").next().unwrap_or(&text);
    GuardError::Load(first.lines().next().unwrap_or_default().to_string())
}

/// What `install` found and did to the programs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Upgrade {
    /// Tag of the program that was pinned before (connect4), if any.
    pub from_tag: Option<String>,
    pub to_tag: String,
    /// The variant of the programs pinned before (None: not a guard program this binary knows).
    #[serde(serialize_with = "crate::status::optional_refusal_name")]
    pub from_refusal: Option<Refusal>,
    #[serde(serialize_with = "crate::status::refusal_name")]
    pub to_refusal: Refusal,
    /// Links switched to the new programs in place.
    pub links: usize,
    /// Whether the pins had the layout of an earlier qmail-guard and were migrated.
    pub migrated: bool,
}

/// Programs ready to attach, and the maps filled with the set.
pub struct Installed {
    pub programs: Vec<(Hook, CgroupSockAddr)>,
    pub sync: SyncReport,
    /// Some when the pinned programs were replaced by this binary's.
    pub upgrade: Option<Upgrade>,
    /// How the pinned programs refuse.
    pub refusal: Refusal,
}

/// How the pin directory is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Empty,
    /// One trie per family, no generation (qmail-guard before atomic set changes).
    Old,
    Generations,
}

fn layout(pins: &PinDir) -> Layout {
    if pins.map(MAP_IPME_GEN).exists() {
        Layout::Generations
    } else if pins.map(MAP_IPME_V4).exists() {
        Layout::Old
    } else {
        Layout::Empty
    }
}

/// A program tag as bpftool prints it.
pub fn tag_hex(tag: u64) -> String {
    format!("{tag:016x}")
}

impl Upgrade {
    /// The variants, for a log line: "EPERM", or "ELOOP → EPERM" when the variant changed.
    pub fn variants(&self) -> String {
        match self.from_refusal {
            Some(from) if from != self.to_refusal => {
                format!("{} → {}", from.name(), self.to_refusal.name())
            }
            _ => self.to_refusal.name().to_string(),
        }
    }
}

/// The tag of the program pinned for `hook`, if any.
pub fn pinned_tag(pins: &PinDir, hook: Hook) -> Option<u64> {
    aya::programs::ProgramInfo::from_pin(pins.prog(hook))
        .ok()
        .map(|i| i.tag())
}

/// Loads the programs of the variant this kernel accepts: the ELOOP pair where cgroup programs
/// may call `bpf_set_retval` (5.18 and later), else the EPERM pair. Any other load failure is
/// reported as it is. Returns the variant and its programs' tags in `Hook::ALL` order.
fn load_programs(ebpf: &mut Ebpf) -> Result<(Refusal, Vec<u64>), GuardError> {
    match load_variant(ebpf, Refusal::Eloop) {
        Err(VariantError::Load(text)) if set_retval_missing(&text) => {
            let tags = load_variant(ebpf, Refusal::Eperm).map_err(VariantError::into_guard)?;
            Ok((Refusal::Eperm, tags))
        }
        r => Ok((Refusal::Eloop, r.map_err(VariantError::into_guard)?)),
    }
}

enum VariantError {
    /// The full text, verifier log included, so the caller can tell why.
    Load(String),
    Other(GuardError),
}

impl VariantError {
    fn into_guard(self) -> GuardError {
        match self {
            VariantError::Load(text) => load_err(text),
            VariantError::Other(e) => e,
        }
    }
}

/// Loads both programs of one variant (unpinned); their tags in `Hook::ALL` order.
fn load_variant(ebpf: &mut Ebpf, refusal: Refusal) -> Result<Vec<u64>, VariantError> {
    let mut tags = Vec::new();
    for hook in Hook::ALL {
        let name = refusal.program(hook);
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(VariantError::Other(GuardError::MissingProgram(name)))?
            .try_into()
            .map_err(|e: ProgramError| VariantError::Load(e.to_string()))?;
        prog.load().map_err(|e| VariantError::Load(e.to_string()))?;
        let info = prog.info().map_err(|e| VariantError::Other(load_err(e)))?;
        tags.push(info.tag());
    }
    Ok(tags)
}

/// Makes the pinned programs this binary's and the maps hold `set` and `ports`; the caller
/// holds the pin-directory lock.
///
/// - Nothing pinned: loads the object, fills the maps, pins everything.
/// - The same programs pinned: updates the maps in place.
/// - Different programs pinned (a new binary): loads this binary's programs on the pinned maps
///   (or on new maps, migrating pins from an earlier layout), fills the maps, then switches
///   every pinned link to the new programs with BPF_LINK_UPDATE and re-pins: each cgroup runs
///   the old program until the instant it runs the new one, never none.
pub fn install(
    pins: &PinDir,
    set: &IpmeSet,
    ports: Option<&BTreeSet<u16>>,
) -> Result<Installed, GuardError> {
    crate::sys::raise_memlock();
    let layout = layout(pins);
    let mut loader = EbpfLoader::new();
    let mut reused: Vec<(&str, PathBuf)> = Vec::new();
    match layout {
        Layout::Generations => {
            reused.push((MAP_IPME_GEN, pins.map(MAP_IPME_GEN)));
            for (name, names) in [
                (MAP_IPME_V4, &MAP_IPME_V4_TRIES),
                (MAP_IPME_V6, &MAP_IPME_V6_TRIES),
            ] {
                for (i, path) in trie_pins(pins, name, names)?.into_iter().enumerate() {
                    reused.push((names[i], path));
                }
            }
            reused.push((MAP_PORTS, pins.map(MAP_PORTS)));
            reused.push((MAP_STATS, pins.map(MAP_STATS)));
        }
        // Ports and counters carry over; the tries and the generation are new.
        Layout::Old => {
            reused.push((MAP_PORTS, pins.map(MAP_PORTS)));
            reused.push((MAP_STATS, pins.map(MAP_STATS)));
        }
        Layout::Empty => {}
    }
    for (name, path) in &reused {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf: Ebpf = loader.load(EBPF_OBJECT).map_err(load_err)?;
    // The variant this kernel accepts is the one to compare with: a binary on 5.10 must not
    // "upgrade" its own EPERM programs to ELOOP ones it cannot load, nor the reverse.
    let (refusal, tags) = load_programs(&mut ebpf)?;
    let pinned: Vec<Option<u64>> = Hook::ALL.iter().map(|h| pinned_tag(pins, *h)).collect();
    let same =
        layout == Layout::Generations && pinned.iter().zip(&tags).all(|(p, t)| *p == Some(*t));
    if same {
        // The running programs are this binary's: drop the fresh copies, update in place.
        drop(ebpf);
        let mut maps = GuardMaps::open(pins)?;
        if let Some(p) = crate::attach::ports_to_write(&maps, ports)? {
            maps.set_ports(&p)?;
        }
        let sync = maps.sync(set)?;
        return Ok(Installed {
            programs: pinned_programs(pins)?,
            sync,
            upgrade: None,
            refusal,
        });
    }

    // Fill first: the new programs must find the whole set the moment they run.
    let mut maps = GuardMaps::from_ebpf(&mut ebpf)?;
    if let Some(p) = crate::attach::ports_to_write(&maps, ports)? {
        maps.set_ports(&p)?;
    }
    let sync = maps.sync(set)?;
    maps.pin_all(pins)?;
    let from_refusal = Refusal::of_pinned(pins).ok();
    let links = pins.pinned_links();
    let mut switched = 0;
    for hook in Hook::ALL {
        let prog = program(&mut ebpf, refusal.program(hook))?;
        let fd = prog.fd().map_err(load_err)?;
        for (_, _, path) in links.iter().filter(|(_, h, _)| *h == hook) {
            super::sys::link_update(path, fd.as_fd())
                .map_err(|e| GuardError::Link(path.clone(), format!("BPF_LINK_UPDATE: {e}")))?;
            switched += 1;
        }
        // Pin under a temporary name, then rename over the old pin: the name never dangles.
        let path = pins.prog(hook);
        let tmp = crate::pins::temporary(&path);
        let _ = std::fs::remove_file(&tmp);
        prog.pin(&tmp)
            .map_err(|e| GuardError::PinIo(tmp.clone(), std::io::Error::other(e.to_string())))?;
        std::fs::rename(&tmp, &path).map_err(|e| GuardError::PinIo(path.clone(), e))?;
    }
    let upgrade = pinned[0].map(|from| Upgrade {
        from_tag: Some(tag_hex(from)),
        to_tag: tag_hex(tags[0]),
        from_refusal,
        to_refusal: refusal,
        links: switched,
        migrated: layout == Layout::Old,
    });
    Ok(Installed {
        programs: pinned_programs(pins)?,
        sync,
        upgrade,
        refusal,
    })
}

fn program<'e>(
    ebpf: &'e mut Ebpf,
    name: &'static str,
) -> Result<&'e mut CgroupSockAddr, GuardError> {
    ebpf.program_mut(name)
        .ok_or(GuardError::MissingProgram(name))?
        .try_into()
        .map_err(|e: ProgramError| load_err(e))
}

/// The pinned programs, ready to attach.
pub fn pinned_programs(pins: &PinDir) -> Result<Vec<(Hook, CgroupSockAddr)>, GuardError> {
    Hook::ALL
        .into_iter()
        .map(|hook| {
            let prog = CgroupSockAddr::from_pin(pins.prog(hook), attach_type(hook))
                .map_err(|e| GuardError::ProgramPin(pins.prog(hook), e.to_string()))?;
            Ok((hook, prog))
        })
        .collect()
}

/// The variant this kernel accepts and the tags (the kernel's hash of the instructions) of
/// this binary's programs of that variant, loaded without pinning or attaching and freed
/// again: equal to the pinned programs' tags when those came from this build on this kernel.
pub fn embedded_tags() -> Result<(Refusal, Vec<(Hook, u64)>), GuardError> {
    crate::sys::raise_memlock();
    let mut ebpf: Ebpf = EbpfLoader::new().load(EBPF_OBJECT).map_err(load_err)?;
    let (refusal, tags) = load_programs(&mut ebpf)?;
    Ok((refusal, Hook::ALL.into_iter().zip(tags).collect()))
}

fn attach_type(hook: Hook) -> aya::programs::CgroupSockAddrAttachType {
    match hook {
        Hook::Connect4 => aya::programs::CgroupSockAddrAttachType::Connect4,
        Hook::Connect6 => aya::programs::CgroupSockAddrAttachType::Connect6,
    }
}
