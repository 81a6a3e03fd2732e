//! `qmail-guard run`: attach, then keep the guard current and attached.
//!
//! One single-threaded tokio loop waits on every source of change at once: rtnetlink
//! notifications (addresses, local routes), inotify on the control directory, inotify on the
//! guarded cgroups' parents, the programs' refusal log, signals and a slow resync timer. Each
//! wake-up drains everything already queued on every source (so a burst costs one update), then
//! recomputes the ipme set and brings the pinned maps to it by difference (add before remove).
//! There is no debounce delay: the coalescing happens by draining, which keeps the time from a
//! change to its enforcement at about one recomputation (well under a millisecond on a normal
//! host). The only deliberate delay is for a control file that was just *created* (it may
//! still be being written), see [`CREATE_GRACE`].
//!
//! Failure policy: fail closed and never stale. An invalid control file keeps its last good
//! contents in force (interfaces stay live); a kernel read error keeps the current maps and
//! retries; the pins outlive the daemon (SIGTERM and `kill -9` alike) unless
//! `--detach-on-exit` is given.
mod cgroup_watch;
mod control_watch;
mod inputs;
pub mod logs;
mod netlink;
mod notify;

use std::{collections::BTreeSet, io, path::PathBuf, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};
use tracing::{debug, error, info, warn};

use cgroup_watch::CgroupWatch;
use control_watch::ControlWatch;
use guard_loader::{
    self as guard, GuardError, Hook, PinDir, SyncReport,
    attach::{Detach, is_attached},
    cgroup::{Cgroup, CgroupError, cgroup2_mount},
    state::{self, DaemonInfo},
};
use inputs::InputState;
use ipme::{IpmeError, IpmeSet};
use logs::RefusalLog;
use netlink::NetlinkWatch;

pub use logs::init_logging;

/// A control file that was just created gets this long to be completed before it is read,
/// unless its close-after-write arrives first (the usual case, which is applied at once).
pub const CREATE_GRACE: Duration = Duration::from_millis(50);
/// After a failed read or attach, try again this soon.
const RETRY: Duration = Duration::from_secs(1);
/// Default period of the full resync (safety net behind the events).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);

/// What to guard and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// systemd units whose cgroups to guard.
    pub units: Vec<String>,
    /// cgroup2 directories to guard.
    pub cgroups: Vec<PathBuf>,
    pub qmail_home: PathBuf,
    pub ports: BTreeSet<u16>,
    pub pin_dir: PathBuf,
    /// Remove the guard from the targets on SIGTERM/SIGINT (default: leave it in force).
    pub detach_on_exit: bool,
    /// Period of the full resync.
    pub resync: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error(transparent)]
    Ipme(#[from] IpmeError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("{0}: {1}")]
    Io(&'static str, #[source] io::Error),
    #[error("nothing to guard: give at least one --unit NAME or --cgroup PATH")]
    NoTarget,
    #[error("{} is not under the cgroup2 mount {}", .0.display(), .1.display())]
    NotUnderCgroup2(PathBuf, PathBuf),
    #[error("cannot guard at start: {0}")]
    Attach(String),
}

/// Runs the daemon until SIGTERM or SIGINT, on a single-threaded runtime (one core is plenty
/// and keeps the idle footprint small).
pub fn run(config: Config) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Io("cannot start the event loop", e))?;
    rt.block_on(async move {
        let mut daemon = Daemon::start(config).await?;
        daemon.run().await
    })
}

enum Spec {
    Unit(String),
    Path(PathBuf),
}

struct Target {
    spec: Spec,
    /// The cgroup directory (for a unit: where systemd puts it, whether it exists or not).
    path: PathBuf,
    /// The cgroup id we verified attached, None while missing or failing.
    attached: Option<u64>,
}

impl Target {
    fn label(&self) -> String {
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

/// Why the loop woke up.
enum Wake {
    Netlink,
    Control,
    Cgroup,
    Log,
    Hangup,
    Terminate(&'static str),
    Resync,
    Timer,
    Watchdog,
}

struct Daemon {
    config: Config,
    pins: PinDir,
    inputs: InputState,
    set: IpmeSet,
    /// The input problems currently reported (e.g. a bad control line), if any.
    input_error: Option<String>,
    targets: Vec<Target>,
    netlink: NetlinkWatch,
    control: ControlWatch,
    cgroups: CgroupWatch,
    log: Option<RefusalLog>,
    /// A pending delayed recompute (retry, or a just-created control file).
    wake_at: Option<Instant>,
    started: u64,
    state_warned: bool,
    /// The last map update error, logged once until it changes or clears.
    apply_error: Option<String>,
    signals: Option<Signals>,
}

struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Daemon {
    async fn start(config: Config) -> Result<Daemon, DaemonError> {
        // Before anything else: a SIGTERM right after READY=1 must find our handler, not the
        // default action.
        let sig = |kind| signal(kind).map_err(|e| DaemonError::Io("cannot handle signals", e));
        let signals = Signals {
            hup: sig(SignalKind::hangup())?,
            term: sig(SignalKind::terminate())?,
            int: sig(SignalKind::interrupt())?,
        };
        let mut specs: Vec<Spec> = config.units.iter().cloned().map(Spec::Unit).collect();
        specs.extend(config.cgroups.iter().cloned().map(Spec::Path));
        if specs.is_empty() {
            return Err(DaemonError::NoTarget);
        }
        let mut targets = Vec::new();
        for spec in specs {
            let path = Target::resolve(&spec)?;
            if targets.iter().any(|t: &Target| t.path == path) {
                continue;
            }
            targets.push(Target {
                spec,
                path,
                attached: None,
            });
        }
        let pins = PinDir::new(&config.pin_dir);
        if let Some(other) = state::load(&pins).daemon
            && other.pid != std::process::id()
            && other.running()
        {
            warn!(
                "another qmail-guard daemon (pid {}) keeps {} current; two daemons share the refusal log",
                other.pid,
                pins.root.display()
            );
        }
        // Subscribe first, compute second: a change in between is then seen as an event.
        let netlink =
            NetlinkWatch::new().map_err(|e| DaemonError::Io("cannot subscribe to rtnetlink", e))?;
        let control = ControlWatch::new(&config.qmail_home)
            .map_err(|e| DaemonError::Io("cannot watch the control directory", e))?;
        if !control.watching_control() {
            warn!(
                "{} does not exist (yet): waiting for it; until then moreipme/notipme are empty",
                config.qmail_home.join("control").display()
            );
        }
        let cgroups = CgroupWatch::new(targets.iter().map(|t| t.path.clone()).collect())
            .map_err(|e| DaemonError::Io("cannot watch the cgroup directories", e))?;

        let mut inputs = InputState::new(&config.qmail_home);
        let computed = match inputs.compute() {
            Ok(c) => c,
            // Restarted while a control file is invalid: the maps still hold its last good
            // contents, keep those rather than refusing to run.
            Err(e) if e.is_parse() && pins.maps_pinned() && inputs.seed_from_maps(&pins) => {
                // The error itself is reported below, with the other input errors.
                info!(
                    "{}: using the entries of the pinned maps as the last good contents",
                    pins.root.display()
                );
                inputs.compute()?
            }
            Err(e) => return Err(e.into()),
        };
        let mut daemon = Daemon {
            pins,
            inputs,
            set: computed.set,
            input_error: None,
            targets,
            netlink,
            control,
            cgroups,
            log: None,
            wake_at: None,
            started: state::now_unix(),
            state_warned: false,
            apply_error: None,
            signals: Some(signals),
            config,
        };
        daemon.report_input_errors(&computed.errors, true);

        let report = guard::prepare(&daemon.pins, &daemon.set, &daemon.config.ports)?;
        info!(
            "maps ready in {}: {} entries ({} written, {} removed)",
            daemon.pins.root.display(),
            report.total,
            report.upserted,
            report.removed
        );
        daemon.record_sync(&report);
        let failures = daemon.ensure_targets(true);
        if !failures.is_empty() {
            return Err(DaemonError::Attach(failures.join("; ")));
        }
        daemon.reopen_log();
        daemon.write_state();
        let status = daemon.status_line();
        notify::ready(&status);
        info!("ready: {status}");
        Ok(daemon)
    }

    async fn run(&mut self) -> Result<(), DaemonError> {
        let Signals {
            mut hup,
            mut term,
            mut int,
        } = self.signals.take().ok_or(DaemonError::Io(
            "signal handlers",
            io::Error::other("already taken"),
        ))?;
        let mut resync =
            tokio::time::interval_at(Instant::now() + self.config.resync, self.config.resync);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);

        loop {
            let wake = {
                let timer = self.wake_at;
                let log = self.log.as_ref();
                tokio::select! {
                    r = self.netlink.readable() => io_wake(r, Wake::Netlink, "rtnetlink")?,
                    r = self.control.readable() => io_wake(r, Wake::Control, "control watch")?,
                    r = self.cgroups.readable() => io_wake(r, Wake::Cgroup, "cgroup watch")?,
                    r = async { match log { Some(l) => l.readable().await, None => std::future::pending().await } }
                        => io_wake(r, Wake::Log, "refusal log")?,
                    _ = hup.recv() => Wake::Hangup,
                    _ = term.recv() => Wake::Terminate("SIGTERM"),
                    _ = int.recv() => Wake::Terminate("SIGINT"),
                    _ = resync.tick() => Wake::Resync,
                    _ = async { match timer { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } }
                        => Wake::Timer,
                    _ = async { match watchdog.as_mut() { Some(w) => { w.tick().await; } None => std::future::pending().await } }
                        => Wake::Watchdog,
                }
            };
            let woke = Instant::now();
            let mut full = false;
            let mut timer = false;
            match wake {
                Wake::Log => {
                    if let Some(l) = self.log.as_mut() {
                        l.flush();
                    }
                    continue;
                }
                Wake::Watchdog => {
                    notify::watchdog();
                    continue;
                }
                Wake::Terminate(name) => {
                    info!("{name}: stopping");
                    break;
                }
                Wake::Hangup => {
                    info!("SIGHUP: full recompute and resync");
                    full = true;
                }
                Wake::Resync => {
                    debug!("periodic full resync");
                    full = true;
                }
                Wake::Timer => {
                    self.wake_at = None;
                    timer = true;
                }
                Wake::Netlink | Wake::Control | Wake::Cgroup => {}
            }
            self.step(full, timer, woke);
        }
        self.shutdown();
        Ok(())
    }

    /// One round after a wake-up: drain every source, then apply what changed.
    fn step(&mut self, full: bool, timer: bool, woke: Instant) {
        let mut full = full;
        let net = match self.netlink.drain() {
            Ok(n) => n,
            Err(e) => {
                warn!("rtnetlink read failed ({e}); recomputing everything");
                full = true;
                Default::default()
            }
        };
        if net.overflow {
            warn!("rtnetlink notifications were lost (ENOBUFS); recomputing everything");
        }
        let ctl = match self.control.drain() {
            Ok(c) => c,
            Err(e) => {
                warn!("control directory watch failed ({e}); recomputing everything");
                full = true;
                Default::default()
            }
        };
        if ctl.created && !ctl.changed {
            self.schedule(CREATE_GRACE);
        }
        let cgroup_event = match self.cgroups.drain() {
            Ok(c) => c,
            Err(e) => {
                warn!("cgroup watch failed ({e}); checking the attachments");
                true
            }
        };
        if full {
            self.resolve_units();
            self.control.ensure();
        }
        let inputs_changed = full || timer || net.relevant || net.overflow || ctl.changed;
        if inputs_changed && self.recompute(ctl.changed) {
            self.apply(full, woke);
        }
        if full || timer || cgroup_event {
            let failures = self.ensure_targets(full);
            for f in failures {
                error!("{f}");
            }
        }
        if full {
            self.reopen_log();
            self.write_state();
            notify::status(&self.status_line());
        }
    }

    /// Recomputes the set; false (and a retry scheduled) if the kernel could not be read.
    fn recompute(&mut self, control_changed: bool) -> bool {
        match self.inputs.compute() {
            Ok(c) => {
                self.set = c.set;
                self.report_input_errors(&c.errors, control_changed);
                true
            }
            Err(e) => {
                error!("{e}; the current maps stay in force, retrying");
                self.schedule(RETRY);
                false
            }
        }
    }

    /// Brings the pinned maps to the current set; true if anything was written. If the pins
    /// vanished (someone ran `detach --all`), the guard is rebuilt and re-attached.
    fn apply(&mut self, always_record: bool, woke: Instant) -> bool {
        let result = (|| {
            let _lock = self.pins.lock()?;
            let mut maps = guard::GuardMaps::open(&self.pins)?;
            maps.sync(&self.set)
        })();
        match result {
            Ok(r) => {
                if self.apply_error.take().is_some() {
                    info!("the maps accept updates again");
                }
                let changed = r.upserted + r.removed > 0;
                if changed {
                    // Measured before any logging: this is when the kernel enforces it.
                    debug!("maps updated {:?} after the wake-up", woke.elapsed());
                    info!(
                        "sync: {} entries ({} written, {} removed)",
                        r.total, r.upserted, r.removed
                    );
                }
                if changed || always_record {
                    self.record_sync(&r);
                    notify::status(&self.status_line());
                }
                changed
            }
            // The maps are there but refuse the update (e.g. full): keep what is in force,
            // say so once, and retry.
            Err(e) if self.pins.maps_pinned() => {
                let msg = e.to_string();
                if self.apply_error.as_ref() != Some(&msg) {
                    error!(
                        "cannot update the maps: {msg}; the current entries stay in force, retrying"
                    );
                    self.apply_error = Some(msg);
                }
                self.schedule(RETRY);
                false
            }
            // The pins are gone (someone ran `detach --all`): the daemon's job is to keep
            // the guard in place, so it loads and attaches it again.
            Err(e) => {
                warn!("{e}; loading the guard again");
                match guard::prepare(&self.pins, &self.set, &self.config.ports) {
                    Ok(r) => {
                        self.record_sync(&r);
                        for t in &mut self.targets {
                            t.attached = None;
                        }
                        for f in self.ensure_targets(true) {
                            error!("{f}");
                        }
                        self.reopen_log();
                        true
                    }
                    Err(e) => {
                        error!("cannot restore the guard: {e}; retrying");
                        self.schedule(RETRY);
                        false
                    }
                }
            }
        }
    }

    /// Attaches (idempotently) to every target cgroup that exists, verifies by reading back,
    /// and removes links of cgroups that are gone. Returns one message per failure.
    fn ensure_targets(&mut self, verify_all: bool) -> Vec<String> {
        let mut failures = Vec::new();
        let mut retry = false;
        for t in &mut self.targets {
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
                    failures.push(format!("{}: {e}", t.label()));
                    t.attached = None;
                    retry = true;
                    continue;
                }
            };
            if !verify_all && t.attached == Some(cg.id) && is_attached(&self.pins, cg.id) {
                continue;
            }
            match guard::attach(&self.pins, &cg, &self.set, &self.config.ports) {
                Ok(r) => {
                    if !r.attached.is_empty() {
                        info!(
                            "attached {} to {} (cgroup id {})",
                            r.attached.join(" "),
                            t.label(),
                            cg.id
                        );
                    }
                }
                Err(e) => {
                    failures.push(format!("cannot attach to {}: {e}", t.label()));
                    t.attached = None;
                    retry = true;
                    continue;
                }
            }
            match guard::verify(&self.pins, &cg) {
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
                Err(e) => {
                    failures.push(format!("{}: {e}", t.label()));
                    t.attached = None;
                    retry = true;
                }
            }
        }
        match guard::prune_stale(&self.pins) {
            Ok(pruned) => {
                for p in pruned {
                    info!(
                        "removed the stale {} link of removed cgroup id {}",
                        p.hook.name(),
                        p.cgroup_id
                    );
                }
            }
            Err(e) => warn!("cannot clean stale links: {e}"),
        }
        if retry {
            self.schedule(RETRY);
        }
        failures
    }

    /// Units may move (a changed Slice=): re-resolve them on full resyncs.
    fn resolve_units(&mut self) {
        for t in &mut self.targets {
            if let Spec::Unit(_) = t.spec {
                match Target::resolve(&t.spec) {
                    Ok(p) if p != t.path => {
                        info!("{} now lives at {}", t.label(), p.display());
                        t.path = p;
                        t.attached = None;
                    }
                    Ok(_) => {}
                    Err(e) => warn!("cannot resolve {}: {e}", t.label()),
                }
            }
        }
        self.cgroups
            .set_targets(self.targets.iter().map(|t| t.path.clone()).collect());
    }

    fn report_input_errors(&mut self, errors: &[IpmeError], control_changed: bool) {
        let joined = (!errors.is_empty()).then(|| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        });
        if joined != self.input_error || (control_changed && joined.is_some()) {
            for e in errors {
                match e {
                    IpmeError::Parse { file, .. } => {
                        error!("{e}; the last good {file} stays in force")
                    }
                    _ => error!("{e}; its last good contents stay in force"),
                }
            }
            if joined.is_none() {
                info!("the control files are valid again");
            }
            let changed = joined != self.input_error;
            self.input_error = joined;
            if changed {
                self.write_state();
            }
        }
    }

    /// (Re)opens the refusal log reader when the pinned programs changed (first start, or the
    /// guard was reloaded).
    fn reopen_log(&mut self) {
        let prog = self.pins.prog(Hook::Connect4);
        let id = match aya::programs::ProgramInfo::from_pin(&prog) {
            Ok(info) => info.id(),
            Err(e) => {
                warn!(
                    "cannot read {}: {e}; refusals are not logged",
                    prog.display()
                );
                self.log = None;
                return;
            }
        };
        if self.log.as_ref().is_some_and(|l| l.program_id() == id) {
            return;
        }
        // Both programs of one load share one ring buffer, so one reader covers both.
        match RefusalLog::open(id) {
            Ok(l) => self.log = Some(l),
            Err(e) => {
                warn!("{e}; refusals are counted (status) but not logged");
                self.log = None;
            }
        }
    }

    fn schedule(&mut self, after: Duration) {
        let at = Instant::now() + after;
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    fn status_line(&self) -> String {
        let attached: Vec<String> = self
            .targets
            .iter()
            .filter(|t| t.attached.is_some())
            .map(Target::label)
            .collect();
        let waiting: Vec<String> = self
            .targets
            .iter()
            .filter(|t| t.attached.is_none())
            .map(Target::label)
            .collect();
        let mut s = format!("{} entries", self.set.len());
        if !attached.is_empty() {
            s.push_str(&format!("; guarding {}", attached.join(", ")));
        }
        if !waiting.is_empty() {
            s.push_str(&format!("; waiting for {}", waiting.join(", ")));
        }
        if self.input_error.is_some() {
            s.push_str("; control file error, last good set in force");
        }
        s
    }

    fn record_sync(&mut self, report: &SyncReport) {
        let r = state::record_sync(&self.pins, "daemon", report);
        self.state_result(r);
    }

    fn write_state(&mut self) {
        let mut st = state::load(&self.pins);
        st.daemon = Some(DaemonInfo {
            pid: std::process::id(),
            started_unix_time: self.started,
            targets: self.targets.iter().map(Target::label).collect(),
            input_error: self.input_error.clone(),
        });
        let r = state::store(&self.pins, &st);
        self.state_result(r);
    }

    /// The state file is informational: warn once, never fail.
    fn state_result(&mut self, r: io::Result<()>) {
        if let Err(e) = r
            && !self.state_warned
        {
            self.state_warned = true;
            warn!(
                "cannot write {}: {e}; `qmail-guard status` will not show the last sync",
                state::path(&self.pins).display()
            );
        }
    }

    fn shutdown(&mut self) {
        notify::stopping();
        if let Some(l) = self.log.as_mut() {
            l.flush();
        }
        if !self.config.detach_on_exit {
            info!(
                "exiting; the guard stays in force (pins kept in {})",
                self.pins.root.display()
            );
            return;
        }
        for t in &self.targets {
            let Ok(cg) = Cgroup::from_path(&t.path) else {
                continue;
            };
            match guard::detach(&self.pins, Detach::Cgroup(cg.id)) {
                Ok(n) => info!("--detach-on-exit: removed {n} link(s) from {}", t.label()),
                Err(e) => error!("--detach-on-exit: cannot detach from {}: {e}", t.label()),
            }
        }
    }
}

/// Registers an owned fd-holding object with the runtime.
fn register<T: std::os::fd::AsRawFd>(inner: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor, which stays open for as long as the AsyncFd holds
    // `inner`, and as_raw_fd always returns that same descriptor.
    unsafe { tokio::io::unix::AsyncFd::register(inner) }.map_err(io::Error::from)
}

fn register_with_interest<T: std::os::fd::AsRawFd>(
    inner: T,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: as in `register`.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(inner, interest) }
        .map_err(io::Error::from)
}

fn io_wake(r: io::Result<()>, wake: Wake, what: &'static str) -> Result<Wake, DaemonError> {
    r.map(|()| wake).map_err(|e| DaemonError::Io(what, e))
}
