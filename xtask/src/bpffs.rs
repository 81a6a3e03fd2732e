//! bpffs at /sys/fs/bpf, where qmail-guard pins its maps, programs and links.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cmd, root};

const BPFFS: &str = "/sys/fs/bpf";

pub fn ensure() -> Result<()> {
    if mounted()? {
        println!("ok: bpffs mounted at {BPFFS}");
        return Ok(());
    }
    if !root::is_root() {
        bail!("bpffs is not mounted at {BPFFS}: run `cargo xtask setup` as root to mount it");
    }
    println!("mounting bpffs at {BPFFS} …");
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    if !mounted()? {
        bail!("`mount -t bpf bpf {BPFFS}` succeeded but no bpffs is mounted there");
    }
    println!("ok: bpffs mounted at {BPFFS}");
    Ok(())
}

/// The test harness's mountinfo reader (xtask already depends on guard-tests).
fn mounted() -> Result<bool> {
    let mounts =
        guard_tests::mountinfo::bpffs_mounts().context("cannot read /proc/self/mountinfo")?;
    Ok(mounts.iter().any(|m| m == std::path::Path::new(BPFFS)))
}
