//! The cgroups the daemon guards: resolving units to cgroup paths, attaching (idempotently) to
//! every one that exists, verifying by reading back, and forgetting links of removed cgroups.
use std::collections::BTreeSet;
use std::path::PathBuf;

use guard_loader::{
    self as guard, GuardError, PinDir,
    attach::is_attached,
    cgroup::{Cgroup, CgroupError, cgroup2_mount},
};
use ipme::{Chain, IpmeSet};
use tracing::{debug, info, warn};

use super::DaemonError;

/// How a target was named on the command line.
pub enum Spec {
    Unit(String),
    Path(PathBuf),
}

pub struct Target {
    pub spec: Spec,
    /// The cgroup directory (for a unit: where systemd puts it, whether it exists or not).
    pub path: PathBuf,
    /// The cgroup id we verified attached, None while missing or failing.
    pub attached: Option<u64>,
}

impl Target {
    pub fn label(&self) -> String {
        match &self.spec {
            Spec::Unit(u) => format!("{u} ({})", self.path.display()),
            Spec::Path(p) => p.display().to_string(),
        }
    }

    fn resolve(spec: &Spec) -> Result<PathBuf, DaemonError> {
        let path = match spec {
            Spec::Unit(u) => Cgroup::unit_path(u)?,
            Spec::Path(p) => p.clone(),
        };
        let mount = cgroup2_mount()?;
        if !path.starts_with(&mount) {
            return Err(DaemonError::NotUnderCgroup2(path, mount));
        }
        Ok(path)
    }
}

/// What one round of [`Targets::ensure`] left to do.
#[derive(Debug, Default)]
pub struct Ensured {
    /// One message per target that could not be guarded.
    pub failures: Vec<String>,
    /// Something failed that may work later: try again soon.
    pub retry: bool,
    /// The set the last attach computed (under the lock) and wrote, if one did.
    pub set: Option<IpmeSet>,
}

/// Every target of this daemon, in command-line order, without duplicate paths.
pub struct Targets(Vec<Target>);

impl Targets {
    /// Resolves units and paths; fails if there is none or one is outside the cgroup2 mount.
    pub fn resolve(units: &[String], cgroups: &[PathBuf]) -> Result<Targets, DaemonError> {
        let mut specs: Vec<Spec> = units.iter().cloned().map(Spec::Unit).collect();
        specs.extend(cgroups.iter().cloned().map(Spec::Path));
        if specs.is_empty() {
            return Err(DaemonError::NoTarget);
        }
        let mut targets = Targets(Vec::new());
        for spec in specs {
            let path = Target::resolve(&spec)?;
            targets.push(spec, path);
        }
        Ok(targets)
    }

    /// Adds a target unless its path is already there (a unit and its cgroup named twice).
    fn push(&mut self, spec: Spec, path: PathBuf) {
        if !self.0.iter().any(|t| t.path == path) {
            self.0.push(Target {
                spec,
                path,
                attached: None,
            });
        }
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.0.iter().map(|t| t.path.clone()).collect()
    }

    pub fn labels(&self) -> Vec<String> {
        self.0.iter().map(Target::label).collect()
    }

    /// Labels of the targets that are (`true`) or are not (`false`) verified attached.
    pub fn labels_where_attached(&self, attached: bool) -> Vec<String> {
        self.0
            .iter()
            .filter(|t| t.attached.is_some() == attached)
            .map(Target::label)
            .collect()
    }

    /// Forgets every verification, so the next [`Targets::ensure`] attaches again.
    pub fn forget_attachments(&mut self) {
        for t in &mut self.0 {
            t.attached = None;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Target> {
        self.0.iter()
    }

    /// Units may move (a changed Slice=): re-resolve them.
    pub fn resolve_units(&mut self) {
        for t in &mut self.0 {
            if let Spec::Unit(_) = t.spec {
                match Target::resolve(&t.spec) {
                    Ok(p) if p != t.path => {
                        info!("{} now lives at {}", t.label(), p.display());
                        t.path = p;
                        t.attached = None;
                    }
                    Ok(_) => {}
                    Err(e) => warn!("cannot resolve {}: {}", t.label(), Chain(&e)),
                }
            }
        }
    }

    /// Attaches (idempotently) to every target cgroup that exists, verifies by reading back,
    /// and removes links of cgroups that are gone. With `verify_all` false, targets already
    /// verified on the same cgroup id are only checked for their link pins.
    ///
    /// An attach writes the set too, so it is computed by `compute` under the pin directory's
    /// lock (lock, then compute), never taken from an earlier computation: another writer may
    /// have applied a newer set meanwhile. `ports` None keeps the guarded ports in force.
    pub fn ensure(
        &mut self,
        pins: &PinDir,
        ports: Option<&BTreeSet<u16>>,
        verify_all: bool,
        mut compute: impl FnMut() -> Result<IpmeSet, GuardError>,
    ) -> Ensured {
        let mut out = Ensured::default();
        for t in &mut self.0 {
            let cg = match Cgroup::from_path(&t.path) {
                Ok(cg) => cg,
                Err(CgroupError::Missing(_)) => {
                    match t.attached.take() {
                        Some(id) => info!(
                            "{} was removed (cgroup id {id}); it will be guarded again when it is created",
                            t.label()
                        ),
                        None if verify_all => {
                            info!("{} does not exist yet; waiting for it", t.label())
                        }
                        None => {}
                    }
                    continue;
                }
                Err(e) => {
                    out.fail(t, Chain(&e).to_string());
                    continue;
                }
            };
            if !verify_all && t.attached == Some(cg.id) && is_attached(pins, cg.id) {
                continue;
            }
            let latest = &mut out.set;
            let attached = guard::attach_with(pins, &cg, ports, || {
                let set = compute()?;
                Ok::<_, GuardError>(&*latest.insert(set))
            });
            match attached {
                Ok(r) if !r.attached.is_empty() => info!(
                    "attached {} to {} (cgroup id {}); maps: {} entries ({} written, {} removed)",
                    r.attached.join(" "),
                    t.label(),
                    cg.id,
                    r.sync.total,
                    r.sync.upserted,
                    r.sync.removed
                ),
                Ok(_) => {}
                Err(e) => {
                    out.fail(t, format!("cannot attach: {}", Chain(&e)));
                    continue;
                }
            }
            match guard::verify(pins, &cg) {
                Ok(n) => {
                    if n > 1 {
                        warn!(
                            "{}: the guard program is attached {n} times (duplicate links)",
                            t.label()
                        );
                    }
                    if t.attached != Some(cg.id) {
                        debug!("verified {} (cgroup id {})", t.label(), cg.id);
                    }
                    t.attached = Some(cg.id);
                }
                Err(e) => out.fail(t, Chain(&e).to_string()),
            }
        }
        match guard::prune_stale(pins) {
            Ok(pruned) => {
                for p in pruned {
                    info!(
                        "removed the stale {} link of removed cgroup id {}",
                        p.hook.name(),
                        p.cgroup_id
                    );
                }
            }
            Err(e) => warn!("cannot clean stale links: {}", Chain(&e)),
        }
        out
    }
}

impl Ensured {
    fn fail(&mut self, t: &mut Target, why: String) {
        self.failures.push(format!("{}: {why}", t.label()));
        t.attached = None;
        self.retry = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(paths: &[(&str, Option<&str>)]) -> Targets {
        let mut t = Targets(Vec::new());
        for (path, unit) in paths {
            let spec = match unit {
                Some(u) => Spec::Unit((*u).into()),
                None => Spec::Path((*path).into()),
            };
            t.push(spec, (*path).into());
        }
        t
    }

    #[test]
    fn duplicate_paths_are_one_target() {
        let t = targets(&[
            ("/cg/system.slice/qmail.service", Some("qmail.service")),
            ("/cg/system.slice/qmail.service", None),
            ("/cg/other", None),
        ]);
        assert_eq!(
            t.labels(),
            [
                "qmail.service (/cg/system.slice/qmail.service)",
                "/cg/other"
            ]
        );
    }

    #[test]
    fn attached_and_waiting_labels() {
        let mut t = targets(&[("/cg/a", None), ("/cg/b", None)]);
        t.0[1].attached = Some(7);
        assert_eq!(t.labels_where_attached(true), ["/cg/b"]);
        assert_eq!(t.labels_where_attached(false), ["/cg/a"]);
        t.forget_attachments();
        assert!(t.labels_where_attached(true).is_empty());
    }

    #[test]
    fn a_failure_clears_the_verification_and_asks_for_a_retry() {
        let mut t = targets(&[("/cg/a", None)]);
        t.0[0].attached = Some(3);
        let mut out = Ensured::default();
        out.fail(&mut t.0[0], "boom".into());
        assert_eq!(out.failures, ["/cg/a: boom"]);
        assert!(out.retry);
        assert_eq!(t.0[0].attached, None);
    }
}
