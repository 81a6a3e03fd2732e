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
//!
//! Modules, one job each: the event sources (`netlink`, `control_watch`, `cgroup_watch`,
//! `logs`, `spool_watch`, registered through `fd`), `inputs` (the set's inputs with last-good
//! memory), `learning` (the spool of detected loops into the learned set),
//! `targets` (the cgroups to guard and their attachments), `apply` (bringing the maps to the
//! set), `report` (status line, error reporting, state file), `refusal` (a refusal record's
//! parts, for the last refusal in the state file), `metrics` (the Prometheus textfile) and
//! `notify` (systemd). This file holds the loop that ties them together.
mod apply;
mod cgroup_watch;
mod control_watch;
mod fd;
mod inputs;
mod learning;
pub mod logs;
pub mod metrics;
mod netlink;
mod notify;
mod prog_watch;
mod refusal;
mod report;
mod spool_watch;
mod targets;

use std::{collections::BTreeSet, io, path::PathBuf, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};
use tracing::{debug, error, info, warn};

use apply::Applied;
use cgroup_watch::CgroupWatch;
use control_watch::ControlWatch;
use guard_loader::{
    self as guard, GuardError, Hook, PinDir, SyncReport,
    attach::Detach,
    cgroup::{Cgroup, CgroupError},
    state,
};
use inputs::InputState;
use ipme::{Chain, IpmeError, IpmeSet};
use learning::Learning;
use logs::RefusalLog;
use metrics::Metrics;
use netlink::NetlinkWatch;
use prog_watch::ProgWatch;
use report::{InputErrors, OnceError, StateFile, status_line};
use spool_watch::{SpoolNews, SpoolWatch};
use targets::Targets;

use crate::learn;

pub use logs::init_logging;

/// A control file that was just created gets this long to be completed before it is read,
/// unless its close-after-write arrives first (the usual case, which is applied at once).
pub const CREATE_GRACE: Duration = Duration::from_millis(50);
/// After a failed read or attach, try again this soon.
const RETRY: Duration = Duration::from_secs(1);
/// Default period of the full resync (safety net behind the events).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);
/// The last refusal goes to the state file at most this often (a refusal storm must not
/// turn into a storm of file writes).
const PERSIST_REFUSAL_EVERY: Duration = Duration::from_secs(1);

/// What to guard and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// systemd units whose cgroups to guard.
    pub units: Vec<String>,
    /// cgroup2 directories to guard.
    pub cgroups: Vec<PathBuf>,
    pub qmail_home: PathBuf,
    /// The guarded ports to write at start; None keeps the ports in force (25 when nothing is
    /// pinned yet).
    pub ports: Option<BTreeSet<u16>>,
    pub pin_dir: PathBuf,
    /// Remove the guard from the targets on SIGTERM/SIGINT (default: leave it in force).
    pub detach_on_exit: bool,
    /// Period of the full resync.
    pub resync: Duration,
    /// Refusal log lines per second; the rest are counted in one summary line per second.
    pub log_rate: u32,
    /// The user qmail-remote runs as (owner of the learning spool).
    pub learn_user: String,
    /// How long a learned address lives unless seen again.
    pub learn_expiry: Duration,
    /// Where to write the Prometheus textfile, if anywhere.
    pub metrics_file: Option<PathBuf>,
    /// The metrics file is rewritten at least this often.
    pub metrics_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error(transparent)]
    Ipme(#[from] IpmeError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("{0}")]
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

/// Why the loop woke up.
enum Wake {
    Netlink,
    Control,
    Cgroup,
    Spool,
    Log,
    Programs,
    Hangup,
    Terminate(&'static str),
    Resync,
    Timer,
    Watchdog,
    Metrics,
    PersistRefusal,
}

/// The event sources the loop waits on.
struct Sources {
    netlink: NetlinkWatch,
    control: ControlWatch,
    cgroups: CgroupWatch,
    spool: SpoolWatch,
    log: Option<RefusalLog>,
    /// The pinned programs, to follow the refusal log to programs another process pinned.
    progs: ProgWatch,
}

struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

/// One pending delayed wake-up (a retry, or a just-created control file): the earliest wins.
#[derive(Debug, Default)]
struct Timer(Option<Instant>);

impl Timer {
    fn schedule(&mut self, at: Instant) {
        self.0 = Some(self.0.map_or(at, |w| w.min(at)));
    }
}

struct Daemon {
    config: Config,
    pins: PinDir,
    inputs: InputState,
    set: IpmeSet,
    input_errors: InputErrors,
    targets: Targets,
    sources: Sources,
    timer: Timer,
    state: StateFile,
    learning: Learning,
    /// The last map update error, logged once until it changes or clears.
    apply_error: OnceError,
    /// The guarded ports in force when last read: a guard rebuilt after its pins vanished
    /// gets these back.
    ports: BTreeSet<u16>,
    signals: Option<Signals>,
    metrics: Option<Metrics>,
    /// A refusal read from the log and not yet in the state file.
    pending_refusal: Option<guard_loader::state::LastRefusal>,
    /// When the last refusal was written to the state file.
    refusal_written: Option<Instant>,
    /// When the pending refusal is due (the write was held back by the rate limit).
    persist_at: Option<Instant>,
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
        let targets = Targets::resolve(&config.units, &config.cgroups)?;
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
        let sources = Sources::subscribe(&config.qmail_home, &targets, &pins)?;
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
            state: StateFile::new(pins.clone()),
            pins,
            inputs,
            set: computed.set,
            input_errors: InputErrors::default(),
            targets,
            sources,
            timer: Timer::default(),
            learning: Learning::new(
                config.qmail_home.clone(),
                &config.learn_user,
                config.learn_expiry,
            ),
            apply_error: OnceError::default(),
            ports: config.ports.clone().unwrap_or_default(),
            signals: Some(signals),
            metrics: config
                .metrics_file
                .clone()
                .map(|p| Metrics::new(p, config.metrics_interval)),
            pending_refusal: None,
            refusal_written: None,
            persist_at: None,
            config,
        };
        daemon.report_input_errors(&computed.errors, true);
        // Entries that arrived while no daemon ran.
        if let Some(sweep) = daemon.learning.sweep(&daemon.set) {
            daemon
                .inputs
                .use_learned(sweep.store().cloned().unwrap_or_default());
            daemon.recompute(false);
            daemon.learning.commit(sweep);
        }
        daemon.schedule_expiry();

        // Computed again under the lock: what another writer applied meanwhile is included.
        let mut fresh = None;
        let slot = &mut fresh;
        let inputs = &mut daemon.inputs;
        let report = guard::prepare_with(&daemon.pins, daemon.config.ports.as_ref(), move || {
            let c = inputs.compute()?;
            Ok::<_, GuardError>(&*slot.insert(c.set))
        })?;
        if let Some(set) = fresh {
            daemon.set = set;
        }
        info!(
            "maps ready in {}: {} entries ({} written, {} removed)",
            daemon.pins.root.display(),
            report.total,
            report.upserted,
            report.removed
        );
        if let Some(u) = &report.upgrade {
            info!(
                "replaced the running programs in place (tag {} → {}, {} variant) on {} link(s)",
                u.from_tag.as_deref().unwrap_or("?"),
                u.to_tag,
                u.variants(),
                u.links
            );
        }
        if report.refusal == guard::Refusal::Eperm {
            info!(
                "refusing with {}: {}; refusals are counted (status) but not logged",
                report.refusal.name(),
                report.refusal.meaning()
            );
        }
        daemon.state.record_sync(&report);
        if let Some(m) = daemon.metrics.as_mut() {
            m.synced(&daemon.set);
        }
        daemon.read_ports();
        let failures = daemon.ensure_targets(true);
        if !failures.is_empty() {
            return Err(DaemonError::Attach(failures.join("; ")));
        }
        daemon.reopen_log();
        daemon.write_state();
        let status = daemon.status_line();
        notify::ready(&status);
        info!("ready: {status}");
        // After READY=1: the first write loads this binary's programs once, for the tag
        // comparison, which must not delay the units ordered after us.
        daemon.write_metrics();
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
        let mut metrics_tick = self.metrics.as_ref().map(|m| {
            let mut t = tokio::time::interval_at(Instant::now() + m.interval(), m.interval());
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });

        loop {
            let wake = {
                let timer = self.timer.0;
                let persist_at = self.persist_at;
                let s = &self.sources;
                let log = s.log.as_ref();
                tokio::select! {
                    r = s.netlink.readable() => io_wake(r, Wake::Netlink, "rtnetlink")?,
                    r = s.control.readable() => io_wake(r, Wake::Control, "control watch")?,
                    r = s.cgroups.readable() => io_wake(r, Wake::Cgroup, "cgroup watch")?,
                    r = s.spool.readable() => io_wake(r, Wake::Spool, "spool watch")?,
                    r = async { match log { Some(l) => l.readable().await, None => std::future::pending().await } }
                        => io_wake(r, Wake::Log, "refusal log")?,
                    r = s.progs.readable() => io_wake(r, Wake::Programs, "program pin watch")?,
                    _ = hup.recv() => Wake::Hangup,
                    _ = term.recv() => Wake::Terminate("SIGTERM"),
                    _ = int.recv() => Wake::Terminate("SIGINT"),
                    _ = resync.tick() => Wake::Resync,
                    _ = async { match timer { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } }
                        => Wake::Timer,
                    _ = async { match watchdog.as_mut() { Some(w) => { w.tick().await; } None => std::future::pending().await } }
                        => Wake::Watchdog,
                    _ = async { match metrics_tick.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending().await } }
                        => Wake::Metrics,
                    _ = async { match persist_at { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } }
                        => Wake::PersistRefusal,
                }
            };
            let woke = Instant::now();
            let mut full = false;
            let mut timer = false;
            match wake {
                Wake::Log => {
                    if let Some(l) = self.sources.log.as_mut() {
                        l.flush();
                    }
                    self.note_refusal();
                    continue;
                }
                Wake::Metrics => {
                    self.write_metrics();
                    continue;
                }
                Wake::PersistRefusal => {
                    self.persist_refusal();
                    continue;
                }
                Wake::Watchdog => {
                    notify::watchdog();
                    continue;
                }
                Wake::Programs => {
                    match self.sources.progs.drain() {
                        Ok(true) => self.reopen_log(),
                        Ok(false) => {}
                        Err(e) => warn!("program pin watch failed ({e}); checking the programs"),
                    }
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
                    self.timer.0 = None;
                    timer = true;
                }
                Wake::Netlink | Wake::Control | Wake::Cgroup | Wake::Spool => {}
            }
            self.step(full, timer, woke);
        }
        self.shutdown();
        Ok(())
    }

    /// One round after a wake-up: drain every source, then apply what changed.
    fn step(&mut self, full: bool, timer: bool, woke: Instant) {
        let mut full = full;
        let net = match self.sources.netlink.drain() {
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
        let ctl = match self.sources.control.drain() {
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
        let cgroup_event = match self.sources.cgroups.drain() {
            Ok(c) => c,
            Err(e) => {
                warn!("cgroup watch failed ({e}); checking the attachments");
                true
            }
        };
        let spool = self.sources.spool.drain().unwrap_or_else(|e| {
            warn!("spool watch failed ({e}); sweeping");
            SpoolNews {
                spool: true,
                store: true,
            }
        });
        if full {
            self.targets.resolve_units();
            self.sources.cgroups.set_targets(self.targets.paths());
            self.sources.control.ensure();
            self.sources.spool.ensure();
            self.sources.progs.ensure();
        }
        // Learn first, so the recomputation below already enforces what was learned; the
        // store is written after the maps (its fsyncs are not on the way to the kernel).
        let sweep = (full || timer || spool.spool)
            .then(|| self.learning.sweep(&self.set))
            .flatten();
        if let Some(store) = sweep.as_ref().and_then(learn::Sweep::store) {
            self.inputs.use_learned(store.clone());
        }
        let inputs_changed = full
            || timer
            || net.relevant
            || net.overflow
            || ctl.changed
            || spool.store
            || sweep.is_some();
        if inputs_changed {
            self.update(ctl.changed, full, woke);
            self.schedule_expiry();
        }
        if let Some(sweep) = sweep {
            self.learning.commit(sweep);
        }
        if full || timer || cgroup_event {
            for f in self.ensure_targets(full) {
                error!("{f}");
            }
        }
        if full {
            self.read_ports();
            self.reopen_log();
            self.write_state();
            notify::status(&self.status_line());
        }
        if inputs_changed || full || timer || cgroup_event {
            self.write_metrics();
        }
    }

    /// Lock, then compute, then write: the set is computed only once the pin directory's lock
    /// is held, so it is never older than what another writer applied while we waited.
    fn update(&mut self, control_changed: bool, always_record: bool, woke: Instant) {
        let lock = self.pins.lock();
        if self.recompute(control_changed) {
            self.apply(always_record, woke, lock);
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
                error!("{}; the current maps stay in force, retrying", Chain(&e));
                if let Some(m) = self.metrics.as_mut() {
                    m.sync_failed();
                }
                self.schedule(RETRY);
                false
            }
        }
    }

    /// Brings the pinned maps to the current set. If the pins vanished (someone ran
    /// `detach --all`), the guard is rebuilt and re-attached.
    fn apply(
        &mut self,
        always_record: bool,
        woke: Instant,
        lock: Result<guard::PinLock, GuardError>,
    ) {
        let inputs = &mut self.inputs;
        let applied = apply::apply(&self.pins, &self.set, &self.ports, lock, || {
            Ok(inputs.compute()?.set)
        });
        match applied {
            Applied::Synced(r) => {
                if self.apply_error.clear() {
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
                }
                if let Some(m) = self.metrics.as_mut() {
                    m.synced(&self.set);
                }
            }
            Applied::Refused(msg) => {
                if let Some(m) = self.metrics.as_mut() {
                    m.sync_failed();
                }
                if self.apply_error.set(msg.clone()) {
                    error!(
                        "cannot update the maps: {msg}; the current entries stay in force, retrying"
                    );
                }
                self.schedule(RETRY);
            }
            Applied::Rebuilt(r, set) => {
                if let Some(set) = set {
                    self.set = set;
                }
                self.record_sync(&r);
                if let Some(m) = self.metrics.as_mut() {
                    m.synced(&self.set);
                }
                self.targets.forget_attachments();
                for f in self.ensure_targets(true) {
                    error!("{f}");
                }
                self.reopen_log();
            }
            Applied::Failed => {
                if let Some(m) = self.metrics.as_mut() {
                    m.sync_failed();
                }
                self.schedule(RETRY);
            }
        }
    }

    /// Attaches to every target that exists; returns one message per failure. An attach
    /// computes the set under the pin directory's lock (as `update` does) and keeps the ports
    /// in force.
    fn ensure_targets(&mut self, verify_all: bool) -> Vec<String> {
        let inputs = &mut self.inputs;
        let out = self
            .targets
            .ensure(&self.pins, None, verify_all, || Ok(inputs.compute()?.set));
        if let Some(set) = out.set {
            self.set = set;
        }
        if out.retry {
            self.schedule(RETRY);
        }
        out.failures
    }

    /// Remembers the guarded ports in force, for a rebuild.
    fn read_ports(&mut self) {
        if let Ok(p) = guard::GuardMaps::open(&self.pins).and_then(|m| m.ports())
            && !p.is_empty()
        {
            self.ports = p;
        }
    }

    fn report_input_errors(&mut self, errors: &[IpmeError], control_changed: bool) {
        if self.input_errors.report(errors, control_changed) {
            self.write_state();
        }
    }

    /// (Re)opens the refusal log reader when the pinned programs changed (first start, the
    /// guard was reloaded, or another process replaced the programs with another build's).
    fn reopen_log(&mut self) {
        self.sources.progs.ensure();
        let prog = self.pins.prog(Hook::Connect4);
        let id = match aya::programs::ProgramInfo::from_pin(&prog) {
            Ok(info) => info.id(),
            Err(e) => {
                warn!(
                    "cannot read {}: {e}; refusals are not logged",
                    prog.display()
                );
                self.sources.log = None;
                return;
            }
        };
        if self
            .sources
            .log
            .as_ref()
            .is_some_and(|l| l.program_id() == id)
        {
            return;
        }
        // What the replaced programs logged before the switch is still in their ring.
        if let Some(old) = self.sources.log.as_mut() {
            old.finish();
        }
        // The EPERM programs write no log records (said once at start).
        if matches!(
            guard::Refusal::of_pinned(&self.pins),
            Ok(guard::Refusal::Eperm)
        ) {
            self.sources.log = None;
            return;
        }
        // Both programs of one load share one ring buffer, so one reader covers both.
        match RefusalLog::open(id, &self.pins, self.config.log_rate) {
            Ok(l) => self.sources.log = Some(l),
            Err(e) => {
                warn!("{e}; refusals are counted (status) but not logged");
                self.sources.log = None;
            }
        }
    }

    fn schedule(&mut self, after: Duration) {
        self.timer.schedule(Instant::now() + after);
    }

    /// Wakes up when the next learned address expires (if before the next full resync, which
    /// expires it otherwise).
    fn schedule_expiry(&mut self) {
        if let Some(t) = self.inputs.next_expiry() {
            let secs = t.saturating_sub(ipme::learn::now_unix());
            if secs < self.config.resync.as_secs() {
                self.schedule(Duration::from_secs(secs + 1));
            }
        }
    }

    fn status_line(&self) -> String {
        status_line(
            self.set.len(),
            &self.targets.labels_where_attached(true),
            &self.targets.labels_where_attached(false),
            self.input_errors.any(),
        )
    }

    fn record_sync(&mut self, report: &SyncReport) {
        self.state.record_sync(report);
        notify::status(&self.status_line());
    }

    fn write_state(&mut self) {
        self.state
            .write_daemon(self.targets.labels(), self.input_errors.current());
    }

    /// Takes the newest refusal the log reader saw; writes it to the state file now, or when
    /// the rate limit allows.
    fn note_refusal(&mut self) {
        let Some(r) = self.sources.log.as_ref().and_then(RefusalLog::take_last) else {
            return;
        };
        self.pending_refusal = Some(r);
        match self.refusal_written {
            Some(t) if t.elapsed() < PERSIST_REFUSAL_EVERY => {
                self.persist_at.get_or_insert(t + PERSIST_REFUSAL_EVERY);
            }
            _ => self.persist_refusal(),
        }
    }

    fn persist_refusal(&mut self) {
        self.persist_at = None;
        if let Some(r) = self.pending_refusal.take() {
            self.state.record_refusal(&r);
            self.refusal_written = Some(Instant::now());
        }
    }

    fn write_metrics(&mut self) {
        let attached = self.targets.labels_where_attached(true).len();
        if let Some(m) = self.metrics.as_mut() {
            m.write(&self.pins, attached);
        }
    }

    fn shutdown(&mut self) {
        notify::stopping();
        if let Some(l) = self.sources.log.as_mut() {
            l.finish();
        }
        self.note_refusal();
        self.persist_refusal();
        self.write_metrics();
        if !self.config.detach_on_exit {
            info!(
                "exiting; the guard stays in force (pins kept in {})",
                self.pins.root.display()
            );
            return;
        }
        for t in self.targets.iter() {
            let Ok(cg) = Cgroup::from_path(&t.path) else {
                continue;
            };
            match guard::detach(&self.pins, Detach::Cgroup(cg.id)) {
                Ok(n) => info!("--detach-on-exit: removed {n} link(s) from {}", t.label()),
                Err(e) => error!(
                    "--detach-on-exit: cannot detach from {}: {}",
                    t.label(),
                    Chain(&e)
                ),
            }
        }
        // The last file says what is left: nothing attached by this daemon.
        self.targets.forget_attachments();
        self.write_metrics();
    }
}

impl Sources {
    /// Subscribe first, compute second: a change in between is then seen as an event.
    fn subscribe(
        qmail_home: &std::path::Path,
        targets: &Targets,
        pins: &PinDir,
    ) -> Result<Sources, DaemonError> {
        let netlink =
            NetlinkWatch::new().map_err(|e| DaemonError::Io("cannot subscribe to rtnetlink", e))?;
        let control = ControlWatch::new(qmail_home)
            .map_err(|e| DaemonError::Io("cannot watch the control directory", e))?;
        if !control.watching_control() {
            warn!(
                "{} does not exist (yet): waiting for it; until then moreipme/notipme are empty",
                qmail_home.join("control").display()
            );
        }
        let cgroups = CgroupWatch::new(targets.paths())
            .map_err(|e| DaemonError::Io("cannot watch the cgroup directories", e))?;
        let spool = SpoolWatch::new(qmail_home)
            .map_err(|e| DaemonError::Io("cannot watch the learning spool", e))?;
        let progs = ProgWatch::new(pins.progs_dir())
            .map_err(|e| DaemonError::Io("cannot watch the pinned programs", e))?;
        Ok(Sources {
            netlink,
            control,
            cgroups,
            spool,
            log: None,
            progs,
        })
    }
}

fn io_wake(r: io::Result<()>, wake: Wake, what: &'static str) -> Result<Wake, DaemonError> {
    r.map(|()| wake).map_err(|e| DaemonError::Io(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_keeps_the_earliest_wake_up() {
        let now = Instant::now();
        let mut t = Timer::default();
        t.schedule(now + Duration::from_secs(5));
        t.schedule(now + Duration::from_secs(1));
        t.schedule(now + Duration::from_secs(3));
        assert_eq!(t.0, Some(now + Duration::from_secs(1)));
    }
}
