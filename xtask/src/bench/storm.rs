//! The daemon under a refusal storm: its CPU while a process in the guarded cgroup makes
//! `STORM_RATE` refused connects per second, against the same daemon idle for as long, and
//! the refusal lines it wrote (at most `--log-rate` per second, default 10, plus summaries).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use guard_tests::{Cgroup, Netns};

use super::update::TempHome;
use crate::kit::daemon::{self, Daemon};
use crate::kit::guard::Guard;
use crate::kit::harness::attempt;
use crate::kit::names;
use crate::kit::spawn::Placement;

/// Refused connects per second the storm aims at.
pub const STORM_RATE: u64 = 100_000;
/// How long the storm (and the idle baseline) lasts.
const SECONDS: u64 = 3;

pub struct Results {
    /// Refusals per second the generator reached.
    pub rate: f64,
    /// Daemon CPU (user + system) as a fraction of one core, during the storm and idle.
    pub storm_cpu: f64,
    pub idle_cpu: f64,
    /// Refusal lines and summary lines the daemon wrote for the storm.
    pub lines: usize,
    pub summaries: usize,
    /// Refusals the kernel counted during the storm.
    pub refused: u64,
}

/// `None` when this build has no daemon.
pub fn run(qmail_guard: &Path, probe: &Path) -> Result<Option<Results>> {
    let netns = attempt("creating the namespace", || {
        Netns::new(&names::name("storm"))
    })?;
    let cgroup = attempt("creating the cgroup", || Cgroup::new(&names::name("storm")))?;
    let home = TempHome::new("storm")?;
    let guard = Guard::new(qmail_guard.to_path_buf(), &netns.path(), &home.0, "storm")?;
    if !daemon::available(&guard) {
        return Ok(None);
    }
    let daemon = Daemon::start(&guard, cgroup.path())?;
    let pid = daemon.pid();
    let window = Duration::from_secs(SECONDS);

    let t0 = cpu_time(pid)?;
    std::thread::sleep(window);
    let idle = cpu_time(pid)? - t0;

    let before = daemon.log().len();
    let n = STORM_RATE * SECONDS;
    let mut c = Command::new(probe);
    c.args([
        "storm",
        "127.0.0.1",
        "25",
        &n.to_string(),
        &STORM_RATE.to_string(),
    ])
    .stdout(Stdio::piped());
    Placement::cgroup_netns(cgroup.path(), &netns.path()).apply(&mut c)?;
    let t1 = cpu_time(pid)?;
    let start = Instant::now();
    let out = c.output().context("cannot run guard-probe storm")?;
    let elapsed = start.elapsed();
    let storm = cpu_time(pid)? - t1;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let want = format!("refused {n} other 0");
    if line != want {
        bail!("guard-probe storm said {line:?}, expected {want:?}");
    }
    // The last second's summary comes at its end.
    std::thread::sleep(Duration::from_millis(1500));
    let log = daemon.log();
    let new = &log[before.min(log.len())..];
    let share = |cpu: Duration, d: Duration| cpu.as_secs_f64() / d.as_secs_f64();
    Ok(Some(Results {
        rate: n as f64 / elapsed.as_secs_f64(),
        storm_cpu: share(storm, elapsed),
        idle_cpu: share(idle, window),
        lines: new.iter().filter(|l| l.contains("refused pid=")).count(),
        summaries: new
            .iter()
            .filter(|l| l.contains("more refusals suppressed"))
            .count(),
        refused: n,
    }))
}

/// CPU time of every thread of a process, from the scheduler's nanosecond accounting
/// (`/proc/PID/task/TID/schedstat`, first field): utime/stime tick at 10 ms, too coarse for
/// a daemon that spends a few ms in a storm.
fn cpu_time(pid: u32) -> Result<Duration> {
    let dir = format!("/proc/{pid}/task");
    let mut ns = 0u64;
    for t in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let path = t
            .with_context(|| format!("cannot list {dir}"))?
            .path()
            .join("schedstat");
        // A thread that ended since the listing took its time with it: the process keeps it
        // nowhere this can read, which undercounts by at most that thread's share.
        let Ok(stat) = std::fs::read_to_string(&path) else {
            continue;
        };
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("malformed {}: {stat:?}", path.display()))?;
    }
    Ok(Duration::from_nanos(ns))
}
