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

    let t0 = cpu_ticks(pid)?;
    std::thread::sleep(window);
    let idle = cpu_ticks(pid)? - t0;

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
    let t1 = cpu_ticks(pid)?;
    let start = Instant::now();
    let out = c.output().context("cannot run guard-probe storm")?;
    let elapsed = start.elapsed();
    let storm = cpu_ticks(pid)? - t1;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let want = format!("refused {n} other 0");
    if line != want {
        bail!("guard-probe storm said {line:?}, expected {want:?}");
    }
    // The last second's summary comes at its end.
    std::thread::sleep(Duration::from_millis(1500));
    let log = daemon.log();
    let new = &log[before.min(log.len())..];
    let hz = clock_ticks_per_second();
    let share = |ticks: u64, d: Duration| ticks as f64 / hz / d.as_secs_f64();
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

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 2..])
        .context("malformed /proc/PID/stat")?;
    // Fields after the command: state is field 3, utime 14, stime 15.
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .context("malformed /proc/PID/stat")
    };
    Ok(num(11)? + num(12)?)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}
