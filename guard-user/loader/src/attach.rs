//! Attaching to and detaching from cgroups with pinned bpf_links.
use std::{borrow::Borrow, collections::BTreeSet, fs::File, path::PathBuf};

use aya::programs::{CgroupAttachMode, links::FdLink, links::PinnedLink};

use super::{GuardError, GuardMaps, Hook, PinDir, Refusal, SyncReport, limits, object};
use crate::object::Upgrade;
use ipme::IpmeSet;

use crate::cgroup::Cgroup;

#[derive(Debug, Clone, serde::Serialize)]
pub struct AttachReport {
    /// Hooks newly attached by this call.
    pub attached: Vec<&'static str>,
    /// Hooks that were already attached to this cgroup (attach is idempotent).
    pub already: Vec<&'static str>,
    pub sync: SyncReport,
    /// Some when this binary's programs replaced different pinned ones.
    pub upgrade: Option<Upgrade>,
    /// How the attached programs refuse (EPERM on kernels without bpf_set_retval for them).
    #[serde(serialize_with = "super::status::refusal_name")]
    pub refusal: Refusal,
}

/// Loads (or reuses) the programs and maps, fills the maps, attaches both hooks to `cgroup`
/// (as a bpf_link, which is always multi-program: others' programs keep running) and pins everything. On error
/// nothing this call created is left behind.
pub fn attach(
    pins: &PinDir,
    cgroup: &Cgroup,
    set: &IpmeSet,
    ports: &BTreeSet<u16>,
) -> Result<AttachReport, GuardError> {
    attach_with(pins, cgroup, Some(ports), || Ok(set))
}

/// [`attach`], with the set computed by `compute` only once the pin directory's lock is held
/// (so it is never older than what another writer applied meanwhile), and `ports` None to
/// keep the guarded ports in force (port 25 when nothing is pinned yet). Ports, capacity and
/// the pin directory's ownership are checked before anything is written.
pub fn attach_with<S: Borrow<IpmeSet>>(
    pins: &PinDir,
    cgroup: &Cgroup,
    ports: Option<&BTreeSet<u16>>,
    compute: impl FnOnce() -> Result<S, GuardError>,
) -> Result<AttachReport, GuardError> {
    if let Some(p) = ports {
        limits::check_ports(p)?;
    }
    let fresh = !pins.maps_pinned();
    let created = pins.create()?;
    let mut pinned_now = Vec::new();
    let result = (|| {
        let _lock = pins.lock()?;
        let set = compute()?;
        let set = set.borrow();
        limits::check_capacity(set)?;
        // Links left by cgroups that are gone (a restarted service gets a new cgroup) would
        // otherwise pile up in the pin directory.
        prune_stale_locked(pins);
        attach_inner(pins, cgroup, set, ports, &mut pinned_now)
    })();
    if result.is_err() {
        for path in pinned_now {
            let _ = unpin_link(&path);
        }
        remove_created(pins, created, fresh);
    }
    result
}

/// After a failed command: removes the directory if this command made it, else the programs
/// and maps if this command loaded them and nothing is attached.
fn remove_created(pins: &PinDir, created_dir: bool, fresh: bool) {
    if !pins.pinned_links().is_empty() {
        return;
    }
    if created_dir {
        let _ = pins.remove_all();
    } else if fresh {
        let _ = pins.remove_contents();
    }
}

/// The ports to write: the given ones, else none (keep what is pinned), else the default for
/// a guard that has no ports yet.
pub(crate) fn ports_to_write(
    maps: &GuardMaps,
    ports: Option<&BTreeSet<u16>>,
) -> Result<Option<BTreeSet<u16>>, GuardError> {
    Ok(match ports {
        Some(p) => Some(p.clone()),
        None if maps.ports()?.is_empty() => Some([guard_common::DEFAULT_PORT].into()),
        None => None,
    })
}

fn attach_inner(
    pins: &PinDir,
    cgroup: &Cgroup,
    set: &IpmeSet,
    ports: Option<&BTreeSet<u16>>,
    pinned_now: &mut Vec<PathBuf>,
) -> Result<AttachReport, GuardError> {
    // Maps are filled before the first attach, so the guard is complete the moment it applies.
    let installed = object::install(pins, set, ports)?;
    let (programs, sync, upgrade, refusal) = (
        installed.programs,
        installed.sync,
        installed.upgrade,
        installed.refusal,
    );
    let cg = File::open(&cgroup.path)
        .map_err(|e| GuardError::Attach(cgroup.path.clone(), e.to_string()))?;
    let mut report = AttachReport {
        attached: Vec::new(),
        already: Vec::new(),
        sync,
        upgrade,
        refusal,
    };
    for (hook, mut prog) in programs {
        let path = pins.link(cgroup.id, hook);
        if link_is_live(&path) {
            report.already.push(hook.name());
            continue;
        }
        let _ = std::fs::remove_file(&path);
        let err = |e: &dyn std::error::Error| GuardError::Attach(cgroup.path.clone(), chain(e));
        // bpf_link cgroup attachments are always multi-program: the kernel runs them alongside
        // others' programs and rejects any flag (EINVAL), so "Single" (flags 0) is AllowMultiple
        // here. aya falls back to BPF_PROG_ATTACH only on kernels < 5.7.
        let id = prog
            .attach(&cg, CgroupAttachMode::Single)
            .map_err(|e| err(&e))?;
        let link = prog.take_link(id).map_err(|e| err(&e))?;
        let fd_link: FdLink = link.try_into().map_err(|e| err(&e))?;
        fd_link
            .pin(&path)
            .map_err(|e| GuardError::Link(path.clone(), e.to_string()))?;
        pinned_now.push(path);
        report.attached.push(hook.name());
    }
    Ok(report)
}

/// Loads (or reuses) the programs and maps and fills the maps, without attaching anything:
/// what the daemon does first, because the cgroup it guards may not exist yet (qmail-guard
/// starts before qmail).
pub fn prepare(
    pins: &PinDir,
    set: &IpmeSet,
    ports: &BTreeSet<u16>,
) -> Result<Prepared, GuardError> {
    prepare_with(pins, Some(ports), || Ok(set))
}

/// What `prepare` did: the map update, and an in-place program upgrade if there was one.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub sync: SyncReport,
    pub upgrade: Option<Upgrade>,
    /// How the pinned programs refuse.
    pub refusal: Refusal,
}

impl std::ops::Deref for Prepared {
    type Target = SyncReport;
    fn deref(&self) -> &SyncReport {
        &self.sync
    }
}

/// [`prepare`], computing the set under the lock as [`attach_with`] does.
pub fn prepare_with<S: Borrow<IpmeSet>>(
    pins: &PinDir,
    ports: Option<&BTreeSet<u16>>,
    compute: impl FnOnce() -> Result<S, GuardError>,
) -> Result<Prepared, GuardError> {
    if let Some(p) = ports {
        limits::check_ports(p)?;
    }
    let fresh = !pins.maps_pinned();
    let created = pins.create()?;
    let result = (|| {
        let _lock = pins.lock()?;
        let set = compute()?;
        let set = set.borrow();
        limits::check_capacity(set)?;
        let installed = object::install(pins, set, ports)?;
        Ok(Prepared {
            sync: installed.sync,
            upgrade: installed.upgrade,
            refusal: installed.refusal,
        })
    })();
    if result.is_err() {
        remove_created(pins, created, fresh);
    }
    result
}

/// Brings the pinned maps to the set `compute` returns, computed once the lock is held (what
/// `qmail-guard sync` does). Capacity is checked before anything is written.
pub fn sync_with<S: Borrow<IpmeSet>>(
    pins: &PinDir,
    compute: impl FnOnce() -> Result<S, GuardError>,
) -> Result<SyncReport, GuardError> {
    if !pins.maps_pinned() {
        return Err(GuardError::NotAttached(pins.root.clone()));
    }
    let _lock = pins.lock()?;
    let mut maps = GuardMaps::open(pins)?;
    let set = compute()?;
    let set = set.borrow();
    limits::check_capacity(set)?;
    maps.sync(set)
}

/// A pinned link removed because its cgroup no longer exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub cgroup_id: u64,
    pub hook: Hook,
}

/// Unpins the links whose cgroup was removed. Such a link guards nothing (the kernel detached
/// it with the cgroup) but would stay pinned forever and confuse `status`.
pub fn prune_stale(pins: &PinDir) -> Result<Vec<Pruned>, GuardError> {
    if !pins.root.exists() {
        return Ok(Vec::new());
    }
    let _lock = pins.lock()?;
    Ok(prune_stale_locked(pins))
}

fn prune_stale_locked(pins: &PinDir) -> Vec<Pruned> {
    let mut pruned = Vec::new();
    for (cgroup_id, hook, path) in pins.pinned_links() {
        if link_cgroup_alive(cgroup_id, &path) == Some(false) && unpin_link(&path).is_ok() {
            pruned.push(Pruned { cgroup_id, hook });
        }
    }
    pruned
}

/// Some(false) when the link's cgroup is certainly gone: the kernel reports the link defunct
/// (cgroup id 0) or the cgroup id no longer resolves. None when we cannot tell: keep it.
fn link_cgroup_alive(cgroup_id: u64, path: &std::path::Path) -> Option<bool> {
    match super::sys::cgroup_link_info(path) {
        Ok(Some(info)) if info.cgroup_id == 0 => return Some(false),
        // Not a link at all (a stray file): attach replaces such a pin anyway.
        Ok(None) => return None,
        _ => {}
    }
    Cgroup::id_alive(cgroup_id).or_else(|| Some(Cgroup::path_of_id(cgroup_id).is_some()))
}

/// Reads the attachment back from the kernel (BPF_PROG_QUERY on the cgroup): each hook must
/// run our pinned program. Returns the largest number of times one of them is attached (1
/// normally; more means duplicate links).
pub fn verify(pins: &PinDir, cgroup: &Cgroup) -> Result<usize, GuardError> {
    let mut most = 0;
    for hook in Hook::ALL {
        let prog = pins.prog(hook);
        let id = aya::programs::ProgramInfo::from_pin(&prog)
            .map_err(|e| GuardError::ProgramPin(prog.clone(), chain(&e)))?
            .id();
        let ids = super::sys::attached_programs(&cgroup.path, hook)
            .map_err(|e| GuardError::Attach(cgroup.path.clone(), format!("BPF_PROG_QUERY: {e}")))?;
        let n = ids.iter().filter(|&&i| i == id).count();
        if n == 0 {
            return Err(GuardError::Attach(
                cgroup.path.clone(),
                format!(
                    "verification failed: the kernel does not run program {id} ({}) on this cgroup",
                    hook.name()
                ),
            ));
        }
        most = most.max(n);
    }
    Ok(most)
}

/// An error with its causes on one line (aya's errors keep the errno in `source()`).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

/// A pin that opens as a bpf_link (a leftover file of another kind is not one).
fn link_is_live(path: &std::path::Path) -> bool {
    path.exists() && PinnedLink::from_pin(path).is_ok()
}

/// Unpins a link; dropping the last reference detaches it from its cgroup.
fn unpin_link(path: &std::path::Path) -> Result<(), GuardError> {
    match PinnedLink::from_pin(path) {
        Ok(link) => link
            .unpin()
            .map(drop)
            .map_err(|e| GuardError::PinIo(path.to_path_buf(), e)),
        // Not a link (or already gone): just remove the file.
        Err(_) => match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(GuardError::PinIo(path.to_path_buf(), e)),
        },
    }
}

/// Which attachments to remove.
#[derive(Debug, Clone, Copy)]
pub enum Detach {
    Cgroup(u64),
    All,
}

/// Removes the selected links; when none is left, also the programs, maps and pin directory.
/// Returns the number of links removed.
pub fn detach(pins: &PinDir, which: Detach) -> Result<usize, GuardError> {
    if !pins.root.exists() {
        return Ok(0);
    }
    let _lock = pins.lock_for_removal()?;
    let mut removed = 0;
    for (id, _hook, path) in pins.pinned_links() {
        if matches!(which, Detach::Cgroup(c) if c != id) {
            continue;
        }
        unpin_link(&path)?;
        removed += 1;
    }
    if pins.pinned_links().is_empty() && pins.root.exists() {
        pins.remove_all()?;
        super::state::remove(pins);
    }
    Ok(removed)
}

/// Whether both hooks are attached to this cgroup through our pins.
pub fn is_attached(pins: &PinDir, cgroup_id: u64) -> bool {
    Hook::ALL
        .iter()
        .all(|h| link_is_live(&pins.link(cgroup_id, *h)))
}
