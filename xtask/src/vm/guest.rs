//! `xtask vm-guest PLAN`: PID 1 inside the VM. It mounts what the tests expect of a booted
//! system (proc, sys, cgroup2, bpffs, tmpfs /run and /tmp), makes the package's modules
//! loadable on demand, runs the plan's test executables one after another and powers off.
//! As PID 1 it also reaps the orphans the tests leave (daemons whose parent died).
//!
//! Everything it says to the host goes over the serial console as `@@qg …` lines.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use super::plan::Plan;

pub const MARK: &str = "@@qg";

/// Runs the plan and powers the VM off; returns only if powering off failed.
pub fn run(plan: &Path) -> Result<()> {
    let outcome = run_plan(plan);
    if let Err(e) = &outcome {
        println!("{MARK} error {e:#}");
    }
    power_off()
}

fn run_plan(plan_path: &Path) -> Result<()> {
    mount_system()?;
    let plan = Plan::read(plan_path)?;
    let release = uname_release()?;
    if release != plan.release {
        bail!("booted kernel {release}, the plan is for {}", plan.release);
    }
    modules(&plan)?;
    cmd(Command::new("ip").args(["link", "set", "lo", "up"]))?;
    println!("{MARK} up {}", uptime());
    for g in &plan.groups {
        println!("{MARK} start {}", g.name);
        let started = Instant::now();
        let mut c = Command::new(&g.program);
        c.args(&g.args).env_clear().envs(plan.env.iter().cloned());
        let ok = match c.spawn() {
            Ok(child) => wait_reaping(child.id())?,
            Err(e) => {
                println!("{MARK} note cannot start {}: {e}", g.program.display());
                false
            }
        };
        let verdict = if ok { "pass" } else { "fail" };
        println!(
            "{MARK} result {} {verdict} {:.1}",
            g.name,
            started.elapsed().as_secs_f64()
        );
    }
    println!("{MARK} done");
    Ok(())
}

/// The filesystems a booted Debian has and the tests rely on.
fn mount_system() -> Result<()> {
    for (fstype, target, data) in [
        ("proc", "/proc", ""),
        ("sysfs", "/sys", ""),
        ("devpts", "/dev/pts", "ptmxmode=0666"),
        ("tmpfs", "/dev/shm", "mode=1777"),
        ("tmpfs", "/run", "mode=0755"),
        ("tmpfs", "/tmp", "mode=1777"),
        ("cgroup2", "/sys/fs/cgroup", ""),
        ("bpf", "/sys/fs/bpf", "mode=0700"),
    ] {
        mount(fstype, target, data)?;
    }
    Ok(())
}

fn mount(fstype: &str, target: &str, data: &str) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("cannot create {target}"))?;
    let c = |s: &str| CString::new(s).expect("no NUL in constants");
    let (src, t, ty, d) = (c(fstype), c(target), c(fstype), c(data));
    // SAFETY: valid C strings; the data string is what the filesystem parses.
    let r = unsafe { libc::mount(src.as_ptr(), t.as_ptr(), ty.as_ptr(), 0, d.as_ptr().cast()) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        bail!("cannot mount {fstype} on {target}: {e}");
    }
    Ok(())
}

/// Binds the package's modules at /lib/modules/RELEASE and points the kernel's module loader
/// at the host's modprobe, so veth, nf_tables and nft NAT load when a test first uses them.
fn modules(plan: &Plan) -> Result<()> {
    let target = Path::new("/lib/modules").join(&plan.release);
    fs::create_dir_all(&target).with_context(|| format!("cannot create {}", target.display()))?;
    let src = CString::new(plan.modules.as_os_str().as_bytes()).context("NUL in a path")?;
    let dst = CString::new(target.as_os_str().as_bytes()).context("NUL in a path")?;
    // SAFETY: valid C strings; a bind mount takes no data.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "cannot bind {} on {}: {e}",
            plan.modules.display(),
            target.display()
        );
    }
    let modprobe = ["/usr/sbin/modprobe", "/sbin/modprobe"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("modprobe not found in the host's userland: install kmod")?;
    fs::write("/proc/sys/kernel/modprobe", modprobe)
        .context("cannot set /proc/sys/kernel/modprobe")?;
    Ok(())
}

/// Waits for `pid`, reaping every other child (orphans re-parented to PID 1) on the way.
fn wait_reaping(pid: u32) -> Result<bool> {
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on any child.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("waitpid failed: {e}");
        }
        if r as u32 == pid {
            return Ok(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }
    }
}

fn cmd(c: &mut Command) -> Result<()> {
    let d = crate::cmd::display(c);
    let child = c.spawn().with_context(|| format!("cannot run `{d}`"))?;
    if !wait_reaping(child.id())? {
        bail!("`{d}` failed");
    }
    Ok(())
}

fn uname_release() -> Result<String> {
    let s = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("cannot read /proc/sys/kernel/osrelease")?;
    Ok(s.trim().to_string())
}

fn uptime() -> String {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn power_off() -> Result<()> {
    // SAFETY: sync and reboot have no memory-safety preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    bail!("cannot power off: {}", std::io::Error::last_os_error())
}
