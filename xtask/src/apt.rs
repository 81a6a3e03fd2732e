//! The Debian packages the tests (and the people running them) use, installed with apt when
//! missing. Extend `PACKAGES` when a test starts running a new program. Never a mail transport
//! agent: the test MTA runs from a private unpacked copy (see exim.rs), and every install is
//! checked by no_mta.rs first and forbidden to remove packages.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cmd, no_mta, root};

/// A package and why it is needed.
pub struct Package {
    pub name: &'static str,
    pub why: &'static str,
}

const fn p(name: &'static str, why: &'static str) -> Package {
    Package { name, why }
}

pub const PACKAGES: &[Package] = &[
    p("gcc", "cc links the host binaries"),
    p("libc6-dev", "crt files and libc for linking"),
    p("libc-bin", "ldd (checks bpf-linker's libLLVM)"),
    p("bpftool", "tests and README recipes: map dump, cgroup show"),
    p("nftables", "nft: the NAT (DNAT) tests"),
    p(
        "iproute2",
        "ip netns / ip addr / ip route in the test topologies",
    ),
    p("util-linux", "nsenter, mount"),
    p("procps", "sysctl in test netns"),
    p("dnsmasq-base", "dnsmasq: DNS for the qmail-remote tests"),
    p("strace", "debugging and syscall checks"),
    p("time", "/usr/bin/time for CPU/time measurements"),
    p("systemd", "systemctl (--unit) and systemd-analyze verify"),
    p(
        "qemu-system-x86",
        "test --kernel: boots Debian's kernels under QEMU",
    ),
    p(
        "busybox-static",
        "test --kernel: the VM initramfs's shell and tools",
    ),
    p(
        "kmod",
        "test --kernel: depmod for the kernel package, modprobe in the VM",
    ),
    p("cpio", "test --kernel: packs the VM initramfs"),
    p(
        "systemd-container",
        "systemd-nspawn: the systemd tests boot a real systemd in a container",
    ),
    p("mmdebstrap", "builds the Debian root those containers boot"),
];

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Installs the missing `PACKAGES` (root needed only when something is missing).
pub fn ensure() -> Result<()> {
    let names: Vec<String> = PACKAGES.iter().map(|p| p.name.to_string()).collect();
    ensure_installed(&names, "apt packages")
}

/// Installs those of `names` that are missing, as plain packages: after the no-MTA check, with
/// no recommends and no removals. `what` names the group in messages.
pub fn ensure_installed(names: &[String], what: &str) -> Result<()> {
    let missing = missing_packages(names)?;
    if missing.is_empty() {
        println!("ok: {what} present ({})", names.join(", "));
        return Ok(());
    }
    if !root::is_root() {
        bail!(
            "{what} {} are missing: run `cargo xtask setup` as root to install them",
            missing.join(", ")
        );
    }
    println!("installing {what} {} …", missing.join(", "));
    for p in PACKAGES
        .iter()
        .filter(|p| missing.iter().any(|m| m == p.name))
    {
        println!("  {}: {}", p.name, p.why);
    }
    {
        let _no_daemons = NoServiceStart::new()?;
        update()?;
        no_mta::check(&missing)?;
        cmd::run(
            apt_get()
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "--no-remove",
                ])
                .args(&missing),
        )?;
    }
    let still = missing_packages(names)?;
    if !still.is_empty() {
        bail!("{what} still missing after install: {}", still.join(", "));
    }
    println!("ok: {what} installed");
    Ok(())
}

/// `apt-get update`: fresh package lists.
pub fn update() -> Result<()> {
    cmd::run(apt_get().args(["update", "-q"]))
}

fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn missing_packages(names: &[String]) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for n in names {
        if !installed(n)? {
            v.push(n.clone());
        }
    }
    Ok(v)
}

/// `dpkg-query -W -f='${Status}'` says `install ok installed` (it exits 1 for unknown packages).
fn installed(name: &str) -> Result<bool> {
    let out = cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
        .context("this setup needs Debian's dpkg/apt")?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

/// While alive, `policy-rc.d` answers 101 so package scripts start no daemon. Leaves an
/// existing policy-rc.d alone.
struct NoServiceStart {
    created: bool,
}

impl NoServiceStart {
    fn new() -> Result<Self> {
        let path = Path::new(POLICY_RC_D);
        if fs::symlink_metadata(path).is_ok() {
            return Ok(Self { created: false });
        }
        fs::write(
            path,
            "#!/bin/sh\n# cargo xtask setup: start no services during apt-get install\nexit 101\n",
        )
        .with_context(|| format!("cannot write {POLICY_RC_D}"))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot chmod {POLICY_RC_D}"))?;
        Ok(Self { created: true })
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if self.created {
            let _ = fs::remove_file(POLICY_RC_D);
        }
    }
}
