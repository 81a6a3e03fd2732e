//! Update latency of `qmail-guard run`: from `ip addr add` (and from a moreipme rename) to the
//! first connect the guard refuses, and from `ip addr del` to the first one it allows again.
//!
//! A bench-client in the guarded cgroup connects in a loop (every ~0.1 ms) and reports the
//! CLOCK_MONOTONIC time of the first connect in the new state; the change is made right after
//! it says `armed`, with the time taken just before: by a long-running `ip -batch` (no process
//! start in the measured window) or by rename(2) in this process.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{Context as _, Result, bail};
use guard_tests::{Cgroup, Netns};

use super::plan::Plan;
use crate::kit::daemon::{self, Daemon};
use crate::kit::guard::Guard;
use crate::kit::harness::attempt;
use crate::kit::spawn::Placement;
use crate::kit::{interrupt, names};

/// Waiting longer than this for one change counts as a timeout.
const TRIAL_TIMEOUT_MS: u64 = 2000;

/// Latencies in milliseconds.
pub struct Results {
    pub addr_add: Vec<f64>,
    pub addr_del: Vec<f64>,
    pub rename: Vec<f64>,
    pub timeouts: usize,
}

/// `None` when this build has no daemon.
pub fn run(plan: &Plan, client: &Path, qmail_guard: &Path) -> Result<Option<Results>> {
    let netns = attempt("creating the namespace", || Netns::new(&names::name("upd")))?;
    let cgroup = attempt("creating the cgroup", || Cgroup::new(&names::name("upd")))?;
    let home = TempHome::new("upd")?;
    let guard = Guard::new(qmail_guard.to_path_buf(), &netns.path(), &home.0, "upd")?;
    if !daemon::available(&guard) {
        return Ok(None);
    }
    let daemon = Daemon::start(&guard, cgroup.path())?;
    let mut poller = Poller::start(client, cgroup.path(), &netns.path())?;
    let mut ip = IpBatch::start(&netns.path())?;
    let mut r = Results {
        addr_add: Vec::new(),
        addr_del: Vec::new(),
        rename: Vec::new(),
        timeouts: 0,
    };
    println!(
        "  {} trials: ip addr add → refused, ip addr del → allowed …",
        plan.update_trials
    );
    for i in 0..plan.update_trials {
        interrupt::check()?;
        let a = format!("203.0.113.{}", 10 + i % 200);
        match poller.trial("refused", &a, || {
            ip.send(&format!("address add {a}/32 dev lo"))
        })? {
            Some(ms) => r.addr_add.push(ms),
            None => r.timeouts += 1,
        }
        match poller.trial("allowed", &a, || {
            ip.send(&format!("address del {a}/32 dev lo"))
        })? {
            Some(ms) => r.addr_del.push(ms),
            None => r.timeouts += 1,
        }
    }
    println!(
        "  {} trials: moreipme replaced by rename → refused …",
        plan.update_trials
    );
    let control = home.0.join("control");
    for i in 0..plan.update_trials {
        interrupt::check()?;
        let a = format!("198.51.100.{}", 10 + i % 200);
        let tmp = control.join("moreipme.tmp");
        std::fs::write(&tmp, format!("{a}\n"))
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        let dst = control.join("moreipme");
        match poller.trial("refused", &a, || {
            std::fs::rename(&tmp, &dst).context("cannot rename moreipme.tmp")
        })? {
            Some(ms) => r.rename.push(ms),
            None => r.timeouts += 1,
        }
    }
    drop(ip);
    drop(poller);
    drop(daemon);
    Ok(Some(r))
}

/// A qmail home with an empty control/, removed on drop.
pub(super) struct TempHome(pub(super) PathBuf);

impl TempHome {
    pub(super) fn new(role: &str) -> Result<TempHome> {
        let p = std::env::temp_dir().join(names::name(role));
        std::fs::create_dir_all(p.join("control"))
            .with_context(|| format!("cannot create {}", p.display()))?;
        Ok(TempHome(p))
    }
}

impl Drop for TempHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn monotonic_ns() -> u64 {
    // SAFETY: zeroed timespec as out-parameter of clock_gettime.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `bench-client poll` in the guarded cgroup.
struct Poller {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Poller {
    fn start(client: &Path, cgroup: &Path, netns: &Path) -> Result<Poller> {
        let mut c = Command::new(client);
        c.arg("poll").stdin(Stdio::piped()).stdout(Stdio::piped());
        Placement::cgroup_netns(cgroup, netns).apply(&mut c)?;
        let mut child = c.spawn().context("cannot start bench-client poll")?;
        let stdin = child.stdin.take().context("poller stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("poller stdout")?);
        Ok(Poller {
            child,
            stdin,
            stdout,
        })
    }

    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            bail!("bench-client poll exited");
        }
        Ok(l.trim().to_string())
    }

    /// Arms the poller for `state` of `addr`:25, runs `change`, returns the latency in ms
    /// (None on timeout).
    fn trial(
        &mut self,
        state: &str,
        addr: &str,
        change: impl FnOnce() -> Result<()>,
    ) -> Result<Option<f64>> {
        writeln!(self.stdin, "{state} {addr} 25 {TRIAL_TIMEOUT_MS}")?;
        self.stdin.flush()?;
        match self.line()?.as_str() {
            "armed" => {}
            "already" => bail!("{addr}:25 is already {state} before the change"),
            other => bail!("bench-client poll said {other:?}"),
        }
        let t0 = monotonic_ns();
        change()?;
        let l = self.line()?;
        if l == "timeout" {
            return Ok(None);
        }
        let at: u64 = l
            .strip_prefix("at ")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bench-client poll said {l:?}"))?;
        Ok(Some(at.saturating_sub(t0) as f64 / 1e6))
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A long-running `ip -force -batch -` in the namespace: a command is applied microseconds
/// after it is written, without a process start.
struct IpBatch {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl IpBatch {
    fn start(netns: &Path) -> Result<IpBatch> {
        let mut c = Command::new("ip");
        c.args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        Placement::netns(netns).apply(&mut c)?;
        let mut child = c.spawn().context("cannot start ip -batch")?;
        let stdin = child.stdin.take();
        Ok(IpBatch { child, stdin })
    }

    fn send(&mut self, cmd: &str) -> Result<()> {
        let s = self.stdin.as_mut().context("ip -batch is closed")?;
        writeln!(s, "{cmd}")?;
        s.flush()?;
        Ok(())
    }
}

impl Drop for IpBatch {
    fn drop(&mut self) {
        // EOF ends ip -batch; kill in case it hangs.
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
