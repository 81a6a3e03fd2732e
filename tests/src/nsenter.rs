//! Putting a child process into a cgroup and a network namespace before it execs.
//!
//! Order matters: first the cgroup (through the cgroupfs of *our* mount namespace), then the
//! netns with setns(2). `ip netns exec` would instead remount /sys and hide cgroupfs and bpffs.
//! setns(CLONE_NEWNET) leaves the mount namespace alone, so the child still sees both.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// `p` as a C string, for the system calls of a `pre_exec` hook (built before fork).
pub fn cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL bytes")
}

/// Moves the calling process into the cgroup whose `cgroup.procs` path is `procs`.
/// Async-signal-safe (open/write/close only), so it may run in a `pre_exec` hook.
///
/// # Safety
/// Between fork and exec only async-signal-safe calls are allowed; this makes nothing else.
pub unsafe fn join_cgroup(procs: &CStr) -> io::Result<()> {
    // SAFETY: raw system calls on a valid C string.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // "0" means the writing process itself.
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n != 1 {
            return Err(err);
        }
    }
    Ok(())
}

/// Moves the calling thread into the network namespace bound at `netns`.
/// Async-signal-safe (open/setns/close only), so it may run in a `pre_exec` hook.
///
/// # Safety
/// As for [`join_cgroup`].
pub unsafe fn join_netns(netns: &CStr) -> io::Result<()> {
    // SAFETY: raw system calls on a valid C string.
    unsafe {
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
    Ok(())
}

/// Gives the calling thread a private mount namespace and bind-mounts each `(source, target)`
/// of `binds` in it. Propagation is made private first, so no mount reaches the host. In a
/// thread it affects that thread (and the children it spawns) only: CLONE_NEWNS implies
/// CLONE_FS, which a thread may unshare. Async-signal-safe (unshare/mount only), so it may run
/// in a `pre_exec` hook.
///
/// # Safety
/// As for [`join_cgroup`].
pub unsafe fn private_binds(binds: &[(CString, CString)]) -> io::Result<()> {
    // SAFETY: raw system calls on valid C strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        for (src, dst) in binds {
            if libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// `DIR/cgroup.procs` as a C string, built before fork.
pub fn procs_path(cgroup_dir: &Path) -> CString {
    cstring(&cgroup_dir.join("cgroup.procs"))
}

/// Arranges for the child spawned from `cmd` to join `cgroup_dir` (if given), then the network
/// namespace bound at `netns_path`, between fork and exec.
pub fn enter(cmd: &mut Command, cgroup_dir: Option<&Path>, netns_path: &Path) {
    // Everything the hook needs is allocated here, in the parent: between fork and exec of a
    // multi-threaded process only async-signal-safe calls are allowed.
    let procs = cgroup_dir.map(procs_path);
    let netns = cstring(netns_path);
    let hook = move || -> io::Result<()> {
        // SAFETY: join_cgroup and join_netns are async-signal-safe.
        unsafe {
            if let Some(procs) = &procs {
                join_cgroup(procs)?;
            }
            join_netns(&netns)
        }
    };
    // SAFETY: the hook is async-signal-safe (see above).
    unsafe {
        cmd.pre_exec(hook);
    }
}
