//! Building the binaries the demo and the bench run, and finding them afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::{bpf_linker, cmd, workspace};

/// Only builds for bpfel-unknown-none (guard-loader's build.rs embeds it); excluded on the host,
/// as `cargo xtask test` does.
const BPF_ONLY_CRATE: &str = "guard-ebpf";

/// Where one profile's binaries are.
#[derive(Debug, Clone)]
pub struct Bins {
    dir: PathBuf,
    /// The statically linked qmail-remote of a release build (see [`build_static_remote`]).
    static_remote: Option<PathBuf>,
}

impl Bins {
    /// The path of binary `name`, which must exist.
    pub fn path(&self, name: &str) -> Result<PathBuf> {
        let p = match (&self.static_remote, name) {
            (Some(p), "qmail-remote") => p.clone(),
            _ => self.dir.join(name),
        };
        if !p.is_file() {
            bail!(
                "{} was not built (expected after `cargo build --workspace --bins`)",
                p.display()
            );
        }
        Ok(p)
    }
}

/// `cargo build [--release] --workspace --exclude guard-ebpf --bins`: every binary, including
/// xtask's bench-client and guard-tests' guard-probe. A no-op in about a second when nothing
/// changed.
pub fn build(release: bool) -> Result<Bins> {
    let mut c = Command::new("cargo");
    c.arg("build");
    if release {
        c.arg("--release");
    }
    c.args(["--workspace", "--exclude", BPF_ONLY_CRATE, "--bins"])
        .current_dir(workspace::root())
        .env("PATH", path_with(&bpf_linker::bin_dir()?)?);
    println!("==> {}", cmd::display(&c));
    let t = Instant::now();
    cmd::run(&mut c)?;
    println!("    built in {:.1} s", t.elapsed().as_secs_f64());
    let profile = if release { "release" } else { "debug" };
    Ok(Bins {
        dir: workspace::target_dir()?.join(profile),
        static_remote: if release {
            Some(build_static_remote()?)
        } else {
            None
        },
    })
}

/// The release qmail-remote as README installs it: linked statically (glibc `crt-static`), so a
/// delivery skips the dynamic loader and its relocations (~0.7 MB less peak RSS). The flag is
/// given for the host target only, with an explicit `--target`, because proc-macros and the
/// eBPF build cannot take it.
pub fn build_static_remote() -> Result<PathBuf> {
    let host = cmd::stdout(Command::new("rustc").arg("-vV"))?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .ok_or_else(|| anyhow::anyhow!("`rustc -vV` names no host triple"))?;
    let flags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        host.to_uppercase().replace('-', "_")
    );
    let mut c = Command::new("cargo");
    c.args(["build", "--release", "-p", "qmail-remote"])
        .args(["--target", &host])
        .env(flags_var, "-C target-feature=+crt-static")
        .current_dir(workspace::root())
        .env("PATH", path_with(&bpf_linker::bin_dir()?)?);
    println!("==> {}", cmd::display(&c));
    cmd::run(&mut c)?;
    Ok(workspace::target_dir()?
        .join(host)
        .join("release")
        .join("qmail-remote"))
}

/// `$PATH` with `dir` first, so the build finds the bpf-linker that setup installed.
pub fn path_with(dir: &Path) -> Result<std::ffi::OsString> {
    let old = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&old).filter(|d| d != dir).collect();
    dirs.insert(0, dir.to_path_buf());
    Ok(std::env::join_paths(dirs)?)
}
