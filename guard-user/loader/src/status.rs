//! What `qmail-guard status` reports: attachments, entries per source, ports, counters.
use std::collections::BTreeMap;

use aya::programs::{
    ProgramInfo,
    links::{FdLink, PinnedLink},
};
use serde::Serialize;

use super::{
    GuardError, GuardMaps, PinDir, Refusal,
    state::{self, LastRefusal, LastSync},
};
use crate::cgroup::Cgroup;

#[derive(Debug, Serialize)]
pub struct Attachment {
    pub cgroup_id: u64,
    /// Directory of the cgroup, or None when it no longer exists.
    pub cgroup: Option<String>,
    pub hook: &'static str,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    /// When the link was pinned (the pin's modification time), seconds since the epoch.
    pub since_unix_time: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    /// At least one live link: the guard is in force for some cgroup.
    pub attached: bool,
    /// The earliest pin time of the current links.
    pub attached_since_unix_time: Option<u64>,
    pub pin_dir: String,
    /// Tag (the kernel's hash of the instructions, hex) of each pinned program.
    pub program_tags: BTreeMap<&'static str, String>,
    /// Whether the pinned programs are this binary's own (None: could not tell): the variant
    /// this binary loads on this kernel, compared by tag.
    pub program_matches_binary: Option<bool>,
    /// Tags of this binary's own programs (empty if they could not be loaded for comparison):
    /// the variant it loads on this kernel.
    pub binary_program_tags: BTreeMap<&'static str, String>,
    /// How the pinned programs refuse: "ELOOP", or "EPERM" on kernels without bpf_set_retval
    /// for cgroup programs (< 5.18).
    #[serde(serialize_with = "refusal_name")]
    pub refusal: Refusal,
    /// The errno a refused connect(2) fails with (40 or 1).
    pub refusal_errno: i32,
    /// The variant this binary loads on this kernel (None: could not tell).
    #[serde(serialize_with = "optional_refusal_name")]
    pub binary_refusal: Option<Refusal>,
    /// The generation of the set in force (it moves by one with every change of the set).
    pub generation: u32,
    pub attachments: Vec<Attachment>,
    pub ports: Vec<u16>,
    pub entries_v4: usize,
    pub entries_v6: usize,
    /// Entries per source tag name (builtin, interface, local-route, moreipme, notipme).
    pub entries_by_source: BTreeMap<&'static str, usize>,
    /// The learned addresses in the maps (qmail-remote met this host's own greeting there).
    pub learned: Vec<String>,
    pub refused_v4: u64,
    pub refused_v6: u64,
    /// The last update of the maps (by `attach`, `sync` or the daemon), if recorded.
    pub last_sync: Option<LastSync>,
    /// The daemon keeping these pins current, if one ever ran since boot.
    pub daemon: Option<DaemonStatus>,
    /// The last refusal a daemon read from the refusal log (only `qmail-guard run` reads it).
    pub last_refusal: Option<LastRefusal>,
}

#[derive(Debug, Serialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub running: bool,
    pub started_unix_time: u64,
    pub targets: Vec<String>,
    /// An input problem (e.g. a bad control line) while the last good set stays in force.
    pub input_error: Option<String>,
}

pub fn status(pins: &PinDir) -> Result<Status, GuardError> {
    // Pins someone else could have replaced would make this report meaningless.
    pins.check_trusted()?;
    let maps = GuardMaps::open(pins)?;
    let (v4, v6) = (maps.read_v4()?, maps.read_v6()?);
    let mut by_source = BTreeMap::new();
    for tag in v4.values().chain(v6.values()) {
        *by_source.entry(guard_common::tag::name(*tag)).or_insert(0) += 1;
    }
    let learned = v4
        .iter()
        .filter(|(_, t)| **t == guard_common::tag::LEARNED)
        .map(|((_, a), _)| std::net::IpAddr::from(*a).to_string())
        .chain(
            v6.iter()
                .filter(|(_, t)| **t == guard_common::tag::LEARNED)
                .map(|((_, a), _)| std::net::IpAddr::from(*a).to_string()),
        )
        .collect();
    let stats = maps.stats()?;
    let attachments: Vec<Attachment> = pins
        .pinned_links()
        .into_iter()
        .map(|(cgroup_id, hook, path)| {
            let info = PinnedLink::from_pin(&path)
                .ok()
                .and_then(|l| FdLink::from(l).info().ok());
            Attachment {
                cgroup_id,
                cgroup: Cgroup::path_of_id(cgroup_id).map(|p| p.display().to_string()),
                hook: hook.name(),
                link_id: info.as_ref().map(|i| i.id()),
                program_id: info.as_ref().map(|i| i.program_id()),
                since_unix_time: pin_time(&path),
            }
        })
        .collect();
    let refusal = Refusal::of_pinned(pins)?;
    let st = state::load(pins);
    let daemon = st.daemon.map(|d| DaemonStatus {
        pid: d.pid,
        running: d.running(),
        started_unix_time: d.started_unix_time,
        targets: d.targets,
        input_error: d.input_error,
    });
    let pinned: Vec<(crate::Hook, Option<u64>)> = crate::Hook::ALL
        .into_iter()
        .map(|h| (h, ProgramInfo::from_pin(pins.prog(h)).ok().map(|i| i.tag())))
        .collect();
    // This binary's programs of the variant it would load here, so a 5.10 host compares its
    // EPERM programs with EPERM programs.
    let own = crate::object::embedded_tags().ok();
    let program_matches_binary = own
        .as_ref()
        .map(|(_, tags)| tags.iter().all(|(h, t)| pinned.contains(&(*h, Some(*t)))));
    let binary_program_tags = own
        .iter()
        .flat_map(|(_, tags)| tags)
        .map(|(h, t)| (h.name(), crate::object::tag_hex(*t)))
        .collect();
    Ok(Status {
        attached: attachments.iter().any(|a| a.link_id.is_some()),
        attached_since_unix_time: attachments
            .iter()
            .filter(|a| a.link_id.is_some())
            .filter_map(|a| a.since_unix_time)
            .min(),
        program_tags: pinned
            .iter()
            .filter_map(|(h, t)| Some((h.name(), format!("{:016x}", (*t)?))))
            .collect(),
        program_matches_binary,
        binary_program_tags,
        last_sync: st.last_sync,
        last_refusal: st.last_refusal,
        daemon,
        pin_dir: pins.root.display().to_string(),
        generation: maps.generation()?,
        refusal,
        refusal_errno: refusal.errno(),
        binary_refusal: own.as_ref().map(|(r, _)| *r),
        attachments,
        ports: maps.ports()?.into_iter().collect(),
        entries_v4: v4.len(),
        entries_v6: v6.len(),
        entries_by_source: by_source,
        learned,
        refused_v4: stats.refused_v4,
        refused_v6: stats.refused_v6,
    })
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "pin directory: {}", self.pin_dir)?;
        writeln!(
            f,
            "refusal:       {} ({})",
            self.refusal.name(),
            self.refusal.meaning()
        )?;
        if self.attachments.is_empty() {
            writeln!(f, "attachments:   none")?;
        }
        for a in &self.attachments {
            let cg = a.cgroup.as_deref().unwrap_or("(cgroup gone)");
            let link = a
                .link_id
                .map_or("dead".to_string(), |i| format!("link {i}"));
            writeln!(
                f,
                "attached:      {} {} (cgroup id {}, {link})",
                a.hook, cg, a.cgroup_id
            )?;
        }
        if let Some(t) = self.attached_since_unix_time {
            writeln!(f, "attached since: {} ({})", when(t), ago(t))?;
        }
        let tags: Vec<String> = self
            .program_tags
            .iter()
            .map(|(h, t)| format!("{h} {t}"))
            .collect();
        let own: Vec<String> = self
            .binary_program_tags
            .iter()
            .map(|(h, t)| format!("{h} {t}"))
            .collect();
        let matches = match (self.program_matches_binary, self.binary_refusal) {
            (Some(true), _) => "this binary's programs".to_string(),
            (Some(false), Some(b)) if b != self.refusal => format!(
                "NOT this binary's programs ({}): it loads the {} variant on this kernel; `attach` with this binary replaces them in place",
                own.join(", "),
                b.name()
            ),
            (Some(false), _) => format!(
                "NOT this binary's programs ({}): loaded by another build; `attach` with this binary replaces them in place",
                own.join(", ")
            ),
            (None, _) => "cannot tell whether they are this binary's".to_string(),
        };
        writeln!(
            f,
            "program tags:  {} ({} variant; {matches})",
            tags.join(", "),
            self.refusal.name()
        )?;
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        writeln!(f, "guarded ports: {}", ports.join(" "))?;
        writeln!(
            f,
            "entries:       {} IPv4, {} IPv6 (generation {})",
            self.entries_v4, self.entries_v6, self.generation
        )?;
        for (source, n) in &self.entries_by_source {
            writeln!(f, "  {source:<12} {n}")?;
        }
        if !self.learned.is_empty() {
            writeln!(f, "learned:       {}", self.learned.join(" "))?;
        }
        write!(
            f,
            "refused:       {} IPv4, {} IPv6",
            self.refused_v4, self.refused_v6
        )?;
        write!(
            f,
            "\nlast refusal:  {}",
            last_refusal(self.last_refusal.as_ref(), self.daemon.is_some())
        )?;
        match &self.last_sync {
            Some(l) => write!(
                f,
                "\nlast sync:     {} ({}) by {} (pid {}): {} entries, {} written, {} removed",
                when(l.unix_time),
                ago(l.unix_time),
                l.by,
                l.pid,
                l.entries,
                l.upserted,
                l.removed
            )?,
            None => write!(f, "\nlast sync:     not recorded")?,
        }
        match &self.daemon {
            Some(d) if d.running => write!(
                f,
                "\ndaemon:        running (pid {}, since {}), guarding {}",
                d.pid,
                when(d.started_unix_time),
                d.targets.join(" ")
            )?,
            Some(d) => write!(
                f,
                "\ndaemon:        not running (last pid {}): the guard stays in force but is not kept current",
                d.pid
            )?,
            None => write!(
                f,
                "\ndaemon:        none (the maps change only with `qmail-guard sync`)"
            )?,
        }
        if let Some(e) = self.daemon.as_ref().and_then(|d| d.input_error.as_ref()) {
            write!(f, "\ninput error:   {e} (the last good set stays in force)")?;
        }
        Ok(())
    }
}

/// The `last refusal:` text. Only the daemon reads the refusal log, so without one nothing
/// can have been recorded (the counters above still count every refusal).
pub fn last_refusal(r: Option<&LastRefusal>, daemon: bool) -> String {
    match r {
        Some(r) => format!(
            "{} ({}) pid {} comm {} to {} ({})",
            when(r.unix_time),
            ago(r.unix_time),
            r.pid,
            r.comm,
            r.destination,
            r.source
        ),
        None if daemon => "none seen by the daemon".to_string(),
        None => "not recorded (no qmail-guard run daemon)".to_string(),
    }
}

fn pin_time(path: &std::path::Path) -> Option<u64> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
}

/// Serialises a refusal as its errno name.
pub(crate) fn refusal_name<S: serde::Serializer>(r: &Refusal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.name())
}

/// Serialises an optional refusal as its errno name or null.
pub(crate) fn optional_refusal_name<S: serde::Serializer>(
    r: &Option<Refusal>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match r {
        Some(r) => s.serialize_str(r.name()),
        None => s.serialize_none(),
    }
}

fn when(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn ago(unix: u64) -> String {
    let secs = state::now_unix().saturating_sub(unix);
    format!(
        "{} ago",
        humantime::format_duration(std::time::Duration::from_secs(secs))
    )
}
