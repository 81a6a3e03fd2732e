//! Starting a process where the guard applies.
//!
//! [`Placement`] puts the child, between fork and exec, into a cgroup first and then a network
//! namespace (setns keeps cgroupfs and bpffs visible; `ip netns exec` would remount /sys and
//! hide them), optionally with a private mount namespace whose /etc/resolv.conf is the
//! namespace's own (what `ip netns exec` does for the resolver), an unprivileged uid (qmail
//! runs qmail-remote as qmailr), one CPU, and PTRACE_TRACEME (for `measure::peak_rss`).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

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
    /// Stop at exec for a tracer (see `measure::peak_rss`).
    pub traceme: bool,
    /// Run only on this CPU (benchmark processes that must be compared share one).
    pub cpu: Option<usize>,
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
        // Nothing to do: no hook, so std can spawn with posix_spawn (vfork) instead of fork,
        // which the delivery benchmark relies on for a clean CPU measurement of the child.
        if self.cgroup.is_none()
            && self.netns.is_none()
            && self.resolv.is_none()
            && self.user.is_none()
            && !self.traceme
            && self.cpu.is_none()
        {
            return Ok(());
        }
        // Everything the hook touches is allocated here: between fork and exec of a
        // multi-threaded process only async-signal-safe calls are allowed.
        let procs = self
            .cgroup
            .as_ref()
            .map(|d| guard_tests::nsenter::procs_path(d));
        let netns = self.netns.as_deref().map(cstring).transpose()?;
        let resolv = self.resolv.as_deref().map(cstring).transpose()?;
        let user = self.user;
        let traceme = self.traceme;
        // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
        let cpuset = self.cpu.map(|cpu| unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            set
        });
        let hook = move || -> io::Result<()> {
            // SAFETY: only raw system calls on pre-built C strings (async-signal-safe).
            unsafe {
                if let Some(procs) = &procs {
                    guard_tests::nsenter::join_cgroup(procs)?;
                }
                if let Some(netns) = &netns {
                    guard_tests::nsenter::join_netns(netns)?;
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
                if let Some(set) = &cpuset
                    && libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0
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

/// Opens `path` as a child's stdin (the queued message on fd 0, like qmail-rspawn).
pub fn stdin_file(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("cannot open {}", path.display()))
}
