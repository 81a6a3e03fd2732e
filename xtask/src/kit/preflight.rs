//! What the demo and the bench need from the machine, checked up front with one sentence each,
//! instead of failing half-way through with a confusing error.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use guard_tests::mountinfo;

use crate::root;

/// Fails unless running as root and every tool in `tools` is on $PATH; returns the cgroup2
/// mount point.
pub fn check(what: &str, tools: &[&str]) -> Result<PathBuf> {
    if !root::is_root() {
        bail!(
            "cargo xtask {what} must run as root: it creates network namespaces, cgroups and BPF programs"
        );
    }
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "cargo xtask {what} needs {} on $PATH: run `cargo xtask setup` (or apt-get install the Debian packages)",
            missing.join(", ")
        );
    }
    mountinfo::cgroup2_mount()
        .context("cannot read /proc/self/mountinfo")?
        .context("no cgroup2 filesystem is mounted: qmail-guard needs cgroup v2")
}

/// The first `name` on $PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
