//! Measuring a child process: its own CPU time and wall time (wait4 through a pidfd), and the
//! peak resident set size of its own image (a ptrace exit stop).

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::interrupt;

/// What one finished child cost.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub status: ExitStatus,
    /// From just before spawn to the moment its exit was seen.
    pub wall: Duration,
    /// User + system CPU of the child (its own, from wait4).
    pub cpu: Duration,
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
}

/// Waits for `child` (spawned at `start`) and returns its own rusage. The exit is seen through
/// a pidfd, so the wall time is exact and interruption and `timeout` are still checked.
/// The child is reaped here: do not call `Child::wait` afterwards.
pub fn wait_usage(child: &mut Child, start: Instant, timeout: Duration) -> Result<Usage> {
    let pid = child.id() as libc::pid_t;
    // SAFETY: pidfd_open on our own, not yet reaped child.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if raw < 0 {
        let e = io::Error::last_os_error();
        let _ = child.kill();
        let _ = child.wait();
        bail!("pidfd_open: {e}");
    }
    // SAFETY: a fresh descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    loop {
        let mut p = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, 50) };
        if r > 0 {
            break;
        }
        if interrupt::interrupted() || start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            interrupt::check()?;
            bail!("process {pid} did not finish within {timeout:?}; killed");
        }
    }
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            bail!("wait4({pid}): {e}");
        }
    }
    Ok(Usage {
        status: ExitStatus::from_raw(status),
        wall: start.elapsed(),
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
    })
}

/// Spawns `cmd` (whose placement must have `traceme`) and returns its exit status and the
/// peak resident set size of its own image in KiB: VmHWM read at the ptrace exit stop.
/// Not ru_maxrss: Linux carries the pre-exec image's high-water mark (the forked parent,
/// hundreds of KiB to MiB) into it, which would measure the launcher, not the program.
pub fn peak_rss(cmd: &mut Command, timeout: Duration) -> Result<(ExitStatus, u64)> {
    let child = cmd.spawn().context("cannot start the traced process")?;
    let pid = child.id() as libc::pid_t;
    // Kill and reap on every error path below.
    let guard = KillOnDrop(pid);
    let start = Instant::now();
    let mut hwm = None;
    let mut first = true;
    loop {
        let status = wait_stop(pid, start, timeout)?;
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            std::mem::forget(guard);
            let hwm = hwm.context("the traced process exited without an exit stop")?;
            return Ok((ExitStatus::from_raw(status), hwm));
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        let sig = libc::WSTOPSIG(status);
        let mut forward = 0;
        if first {
            // The exec stop: from here on, also stop at exit.
            first = false;
            let opts = libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL;
            // SAFETY: our stopped tracee.
            if unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, opts) } != 0 {
                bail!("PTRACE_SETOPTIONS: {}", io::Error::last_os_error());
            }
        } else if status >> 8 == (libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8)) {
            hwm = Some(vm_hwm(pid)?);
        } else {
            // An ordinary signal: deliver it as if untraced.
            forward = sig;
        }
        // SAFETY: resuming our stopped tracee.
        if unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, forward) } != 0 {
            bail!("PTRACE_CONT: {}", io::Error::last_os_error());
        }
    }
}

/// [`peak_rss`] of `runs` runs of the command `make` builds (its output discarded), each of
/// which must exit successfully; in KiB.
pub fn peak_rss_runs(
    runs: usize,
    timeout: Duration,
    mut make: impl FnMut() -> Result<Command>,
) -> Result<Vec<f64>> {
    let mut kib = Vec::with_capacity(runs);
    for _ in 0..runs {
        interrupt::check()?;
        let mut c = make()?;
        c.stdout(Stdio::null()).stderr(Stdio::null());
        super::spawn::Placement {
            traceme: true,
            ..Default::default()
        }
        .apply(&mut c)?;
        let (st, k) = peak_rss(&mut c, timeout)?;
        if !st.success() {
            bail!("traced {} exited with {st}", c.get_program().display());
        }
        kib.push(k as f64);
    }
    Ok(kib)
}

/// Kills (SIGKILL) and reaps a pid when dropped.
struct KillOnDrop(libc::pid_t);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: our own child, not yet reaped.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            let mut st = 0;
            libc::waitpid(self.0, &mut st, 0);
        }
    }
}

/// The next wait status of `pid` (a stop or the exit), polling so timeouts and Ctrl-C work.
fn wait_stop(pid: libc::pid_t, start: Instant, timeout: Duration) -> Result<i32> {
    loop {
        let mut status = 0;
        // SAFETY: our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(status);
        }
        if r < 0 {
            bail!("waitpid({pid}): {}", io::Error::last_os_error());
        }
        interrupt::check()?;
        if start.elapsed() > timeout {
            bail!("traced process {pid} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// VmHWM of `pid` in KiB.
fn vm_hwm(pid: libc::pid_t) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no VmHWM line in {path}"))
}
