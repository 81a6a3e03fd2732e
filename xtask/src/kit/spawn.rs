//! Starting a process where the guard applies, and measuring it.
//!
//! [`Placement`] puts the child, between fork and exec, into a cgroup first and then a network
//! namespace (setns keeps cgroupfs and bpffs visible; `ip netns exec` would remount /sys and
//! hide them), optionally with a private mount namespace whose /etc/resolv.conf is the
//! namespace's own (what `ip netns exec` does for the resolver), an unprivileged uid (qmail
//! runs qmail-remote as qmailr) and PTRACE_TRACEME (for [`peak_rss`]).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::interrupt;

/// Where a child process goes before it execs.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// A cgroup2 directory to join.
    pub cgroup: Option<PathBuf>,
    /// A network namespace (e.g. /run/netns/NAME) to join after the cgroup.
    pub netns: Option<PathBuf>,
    /// A file bind-mounted over /etc/resolv.conf in a private mount namespace.
    pub resolv: Option<PathBuf>,
    /// (uid, gid) to switch to, with no supplementary groups.
    pub user: Option<(u32, u32)>,
    /// Stop at exec for a tracer (see [`peak_rss`]).
    pub traceme: bool,
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("path {} contains a NUL byte", p.display()))
}

impl Placement {
    /// In the namespace only.
    pub fn netns(netns: &Path) -> Placement {
        Placement {
            netns: Some(netns.to_path_buf()),
            ..Placement::default()
        }
    }

    /// In the cgroup, then the namespace.
    pub fn cgroup_netns(cgroup: &Path, netns: &Path) -> Placement {
        Placement {
            cgroup: Some(cgroup.to_path_buf()),
            netns: Some(netns.to_path_buf()),
            ..Placement::default()
        }
    }

    /// Installs the pre-exec hook on `cmd`.
    pub fn apply(&self, cmd: &mut Command) -> Result<()> {
        // Everything the hook touches is allocated here: between fork and exec of a
        // multi-threaded process only async-signal-safe calls are allowed.
        let procs = self
            .cgroup
            .as_ref()
            .map(|d| cstring(&d.join("cgroup.procs")))
            .transpose()?;
        let netns = self.netns.as_deref().map(cstring).transpose()?;
        let resolv = self.resolv.as_deref().map(cstring).transpose()?;
        let user = self.user;
        let traceme = self.traceme;
        let hook = move || -> io::Result<()> {
            // SAFETY: only raw system calls on pre-built C strings (async-signal-safe).
            unsafe {
                if let Some(procs) = &procs {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // "0" is the writing process itself.
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = io::Error::last_os_error();
                    libc::close(fd);
                    if n != 1 {
                        return Err(err);
                    }
                }
                if let Some(netns) = &netns {
                    let fd = libc::open(netns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let r = libc::setns(fd, libc::CLONE_NEWNET);
                    let err = io::Error::last_os_error();
                    libc::close(fd);
                    if r != 0 {
                        return Err(err);
                    }
                }
                if let Some(resolv) = &resolv {
                    if libc::unshare(libc::CLONE_NEWNS) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // Slave, so the bind mount below never propagates back to the host.
                    let flags = libc::MS_REC | libc::MS_SLAVE;
                    let root = c"/";
                    if libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        flags,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    let target = c"/etc/resolv.conf";
                    if libc::mount(
                        resolv.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some((uid, gid)) = user
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0)
                {
                    return Err(io::Error::last_os_error());
                }
                if traceme && libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: the hook only makes async-signal-safe calls (see above).
        unsafe {
            cmd.pre_exec(hook);
        }
        Ok(())
    }
}

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

/// Opens `path` as a child's stdin (the queued message on fd 0, like qmail-rspawn).
pub fn stdin_file(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("cannot open {}", path.display()))
}
