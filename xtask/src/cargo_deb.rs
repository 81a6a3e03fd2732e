//! cargo-deb, which `cargo xtask deb` packages with; installed by setup like bpf-linker.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::{bpf_linker, cmd};

/// The release line used (3.x: `--output`, `--deb-revision`, `--no-build`).
const VERSION_REQ: &str = "3.";
const INSTALL_REQ: &str = "~3.8";

/// Where cargo-deb is (or will be) installed: beside bpf-linker.
pub fn bin_dir() -> Result<PathBuf> {
    bpf_linker::bin_dir()
}

pub fn ensure() -> Result<()> {
    let bin = bin_dir()?.join("cargo-deb");
    if let Some(version) = installed_version(&bin)?
        && version.starts_with(VERSION_REQ)
    {
        println!("ok: cargo-deb {version} at {}", bin.display());
        return Ok(());
    }
    let root = bpf_linker::install_root()?;
    println!(
        "installing cargo-deb {INSTALL_REQ} into {} (takes a few minutes) …",
        root.display()
    );
    let started = Instant::now();
    cmd::run(
        Command::new("cargo")
            .args(["install", "cargo-deb", "--locked", "--version", INSTALL_REQ])
            .arg("--root")
            .arg(&root)
            // The workspace's pinned toolchain (its rust-toolchain.toml).
            .current_dir(crate::workspace::root()),
    )?;
    match installed_version(&bin)? {
        Some(v) if v.starts_with(VERSION_REQ) => println!(
            "ok: cargo-deb {v} installed in {:.0} s",
            started.elapsed().as_secs_f64()
        ),
        other => bail!(
            "cargo-deb was installed into {} but reports version {other:?}",
            bin.display()
        ),
    }
    Ok(())
}

/// `cargo-deb --version` prints `cargo-deb 3.8.0`; None if it is not installed or fails.
fn installed_version(bin: &std::path::Path) -> Result<Option<String>> {
    if !bin.is_file() {
        return Ok(None);
    }
    let out = cmd::probe(Command::new(bin).arg("--version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(out
        .status
        .success()
        .then(|| text.split_whitespace().nth(1).map(str::to_string))
        .flatten())
}
