//! bpffs at /sys/fs/bpf, where qmail-guard pins its maps, programs and links.

use std::fs;
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

fn mounted() -> Result<bool> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    Ok(is_bpffs_at(&text, BPFFS))
}

/// Whether mountinfo has a `bpf` filesystem mounted at `dir`.
fn is_bpffs_at(mountinfo: &str, dir: &str) -> bool {
    mountinfo.lines().any(|l| {
        let mut halves = l.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        left.split(' ').nth(4) == Some(dir) && right.split(' ').next() == Some("bpf")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bpffs_in_mountinfo() {
        let mi = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n\
                  41 23 0:35 / /sys/fs/bpf rw,relatime shared:16 - bpf bpf rw,mode=700\n";
        assert!(is_bpffs_at(mi, "/sys/fs/bpf"));
        assert!(!is_bpffs_at(mi, "/sys/fs/cgroup"));
        assert!(!is_bpffs_at(
            "41 23 0:35 / /sys/fs/bpf rw - tmpfs tmpfs rw\n",
            "/sys/fs/bpf"
        ));
    }
}
