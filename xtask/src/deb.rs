//! `cargo xtask deb`: the Debian package `target/debian/qmail-guard_<version>_<arch>.deb`.
//!
//! Builds the release binaries (qmail-guard, ipmeprint, and qmail-remote linked statically),
//! renders the man pages and shell completions from the clap definitions (`qmail-guard-docs`),
//! and hands everything to cargo-deb, whose metadata (assets, maintainer scripts) is in
//! guard-user/qmail-guard/Cargo.toml. Generated files go to `target/release/qmail-guard-package/`,
//! where the metadata's `target/release/...` asset paths find them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::kit::build::{build_static_remote, path_with};
use crate::{bpf_linker, cargo_deb, cmd, setup, workspace};

/// The package (and the crate carrying its metadata).
pub const PACKAGE: &str = "qmail-guard";
/// Below the release directory: the generated assets.
const ASSETS: &str = "qmail-guard-package";

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    no_setup: bool,
}

pub fn run(o: &Options) -> Result<()> {
    if !o.no_setup {
        setup::run(&setup::Options::default())?;
    }
    let deb = build()?;
    println!("{}", deb.display());
    Ok(())
}

/// Builds the package and returns its path.
pub fn build() -> Result<PathBuf> {
    let started = Instant::now();
    let target = workspace::target_dir()?;
    let mut c = Command::new("cargo");
    c.args(["build", "--release", "-p", PACKAGE, "--bins"])
        .current_dir(workspace::root())
        .env("PATH", path_with(&bpf_linker::bin_dir()?)?);
    println!("==> {}", cmd::display(&c));
    cmd::run(&mut c)?;
    let release = target.join("release");
    let remote = build_static_remote()?;

    let assets = release.join(ASSETS);
    if assets.exists() {
        fs::remove_dir_all(&assets)
            .with_context(|| format!("cannot remove {}", assets.display()))?;
    }
    cmd::run(Command::new(release.join("qmail-guard-docs")).arg(&assets))?;
    // qmail-remote's command line is qmail's positional one: its page is written by hand.
    let remote_page = workspace::root().join("guard-user/qmail-remote/man/qmail-remote.8");
    fs::copy(&remote_page, assets.join("man/qmail-remote.8"))
        .with_context(|| format!("cannot copy {}", remote_page.display()))?;
    compress_man_pages(&assets.join("man"))?;
    fs::copy(&remote, assets.join("qmail-remote"))
        .with_context(|| format!("cannot copy {} into {}", remote.display(), assets.display()))?;

    let version = workspace_version()?;
    let arch = cmd::stdout(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let deb = target
        .join("debian")
        .join(format!("{PACKAGE}_{version}_{arch}.deb"));
    cmd::run(
        Command::new("cargo")
            .args(["deb", "-p", PACKAGE, "--no-build", "--deb-revision", ""])
            .arg("--output")
            .arg(&deb)
            .current_dir(workspace::root())
            .env("PATH", path_with(&cargo_deb::bin_dir()?)?),
    )?;
    if !deb.is_file() {
        bail!("cargo deb succeeded but {} does not exist", deb.display());
    }
    println!(
        "ok: {} built in {:.0} s",
        deb.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(deb)
}

/// Debian installs man pages gzip-compressed (`gzip -9n`: no name or time stamp, so the
/// package is reproducible).
fn compress_man_pages(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x != "gz") {
            cmd::run(Command::new("gzip").args(["-9n", "--force"]).arg(&p))?;
        }
    }
    Ok(())
}

/// The workspace version (`[workspace.package] version`), as cargo metadata reports it for
/// the package.
fn workspace_version() -> Result<String> {
    let json = cmd::stdout(
        Command::new("cargo")
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(workspace::root()),
    )?;
    let v: serde_json::Value =
        serde_json::from_str(&json).context("cannot parse `cargo metadata` output")?;
    v["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == PACKAGE))
        .and_then(|p| p["version"].as_str())
        .map(str::to_string)
        .with_context(|| format!("`cargo metadata` lists no version for {PACKAGE}"))
}
