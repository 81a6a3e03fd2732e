//! `cargo xtask test`: setup, then format and lint checks, build, and every unit and real-kernel
//! integration test. Lint failures do not stop the tests from running, but fail the run.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{bpf_linker, cmd, deb, root, setup, vm, workspace};

/// Only builds for bpfel-unknown-none (guard-loader's build.rs does that); on the host its
/// `#![no_main]` binary cannot link, so build and test skip it (clippy still checks it).
const BPF_ONLY_CRATE: &str = "guard-ebpf";
/// The variable tests/src/bins.rs reads to find the binaries under test.
const BIN_DIR_ENV: &str = "QMAIL_GUARD_BIN_DIR";
/// The variable the package test reads to find the .deb under test.
const DEB_ENV: &str = "QMAIL_GUARD_DEB";

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    no_setup: bool,
    /// Instead of the host kernel, boot this Debian kernel under QEMU and run the kernel
    /// integration tests in it: debian12 (6.1) or debian11 (5.10). Repeatable.
    #[arg(long = "kernel", value_name = "NAME", value_parser = parse_kernel)]
    kernels: Vec<vm::KernelSpec>,
    /// Arguments for `cargo test --workspace` after `--`, e.g. `-- nat` or `-- -p guard-tests -- --nocapture`.
    #[arg(last = true)]
    cargo_test_args: Vec<OsString>,
}

pub fn run(o: &Options) -> Result<()> {
    let started = Instant::now();
    if !o.no_setup {
        setup::run(&setup::Options::default())?;
    }
    if !root::is_root() {
        bail!(
            "cargo xtask test must run as root: the integration tests create cgroups, network namespaces and BPF programs"
        );
    }
    let bin_dir = workspace::target_dir()?.join("debug");
    let path = path_with(&bpf_linker::bin_dir()?)?;
    let cargo = |args: &[&str]| {
        let mut c = Command::new("cargo");
        c.args(args)
            .current_dir(workspace::root())
            .env("PATH", &path);
        c
    };

    if !o.kernels.is_empty() {
        return kernels(o, &cargo, &bin_dir, &path, started);
    }

    let mut failed = Vec::new();
    for mut c in [
        cargo(&["fmt", "--all", "--", "--check"]),
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    ] {
        if let Err(e) = step(&mut c) {
            eprintln!("FAILED: {e:#} (continuing with the tests)");
            failed.push(e);
        }
    }
    // The variant first: building it replaces target/debug/qmail-guard, which the normal
    // build below puts back (both are cached, so a warm run rebuilds neither).
    build_upgrade_variant(&cargo, &bin_dir)?;
    step(&mut cargo(&[
        "build",
        "--workspace",
        "--exclude",
        BPF_ONLY_CRATE,
        "--bins",
    ]))?;
    // The package test installs, upgrades and purges the real .deb in a container.
    println!("==> cargo xtask deb");
    let deb = deb::build()?;
    let mut test = cargo(&["test", "--workspace", "--exclude", BPF_ONLY_CRATE]);
    test.args(&o.cargo_test_args)
        .env(BIN_DIR_ENV, &bin_dir)
        .env(DEB_ENV, &deb);
    if let Err(e) = step(&mut test) {
        failed.push(e);
    }

    let secs = started.elapsed().as_secs_f64();
    if !failed.is_empty() {
        let list: Vec<String> = failed.iter().map(|e| format!("  {e:#}")).collect();
        bail!(
            "cargo xtask test failed after {secs:.0} s:\n{}",
            list.join("\n")
        );
    }
    println!("cargo xtask test: all checks and tests passed in {secs:.0} s");
    Ok(())
}

/// Where the upgrade test finds its second qmail-guard, under the binaries' directory
/// (tests/src/bins.rs reads the same name).
const VARIANT_DIR: &str = "upgrade-variant";

/// The gap-free upgrade test needs a second qmail-guard whose kernel programs differ: the same
/// code with the `upgrade-test-variant` feature (a no-op in the programs), copied to
/// `<bin dir>/upgrade-variant/qmail-guard`. Built with the workspace's feature resolution, so
/// it shares every dependency with the normal build and only guard-loader (with its eBPF
/// object) and qmail-guard are compiled again, once.
fn build_upgrade_variant(cargo: &dyn Fn(&[&str]) -> Command, bin_dir: &Path) -> Result<()> {
    step(&mut cargo(&[
        "build",
        "--workspace",
        "--exclude",
        BPF_ONLY_CRATE,
        "--bin",
        "qmail-guard",
        "--features",
        "qmail-guard/upgrade-test-variant",
    ]))?;
    let dir = bin_dir.join(VARIANT_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (from, to) = (bin_dir.join("qmail-guard"), dir.join("qmail-guard"));
    // Replaced by rename, so a test still running an older copy keeps its file.
    let tmp = dir.join(".qmail-guard.new");
    std::fs::copy(&from, &tmp)
        .with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, &to)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), to.display()))?;
    Ok(())
}

fn parse_kernel(name: &str) -> Result<vm::KernelSpec> {
    vm::KernelSpec::parse(name)
}

/// `--kernel`: build the binaries and the integration test executables on the host, then
/// run the VM selection of them on each kernel.
fn kernels(
    o: &Options,
    cargo: &dyn Fn(&[&str]) -> Command,
    bin_dir: &Path,
    path: &OsString,
    started: Instant,
) -> Result<()> {
    if !o.cargo_test_args.is_empty() {
        bail!("--kernel runs a fixed selection of tests: drop the arguments after `--`");
    }
    step(&mut cargo(&[
        "build",
        "--workspace",
        "--exclude",
        BPF_ONLY_CRATE,
        "--bins",
    ]))?;
    let mut build = cargo(&[
        "test",
        "-p",
        "guard-tests",
        "--tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    println!("==> {}", cmd::display(&build));
    let tests = test_executables(&cmd::stdout(&mut build)?)?;
    let xtask = std::env::current_exe().context("cannot find the running xtask binary")?;
    let env = vec![
        (BIN_DIR_ENV.to_string(), bin_dir.display().to_string()),
        ("PATH".to_string(), path.to_string_lossy().into_owned()),
        ("HOME".to_string(), "/root".to_string()),
        ("RUST_BACKTRACE".to_string(), "1".to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
    ];
    let run_dir = workspace::target_dir()?.join("vm");
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    vm::run(&o.kernels, &xtask, &tests, env, &run_dir)?;
    println!(
        "cargo xtask test --kernel: passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Test target name → executable, from `cargo test --no-run --message-format=json`.
fn test_executables(json_lines: &str) -> Result<HashMap<String, PathBuf>> {
    let mut map = HashMap::new();
    for line in json_lines.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let is_test = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            v["target"]["name"].as_str(),
            v["executable"].as_str(),
        ) {
            map.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    if map.is_empty() {
        bail!("`cargo test --no-run` reported no test executables");
    }
    Ok(map)
}

/// Runs one step, announcing it and its duration.
fn step(c: &mut Command) -> Result<()> {
    println!("==> {}", cmd::display(c));
    let t = Instant::now();
    cmd::run(c)?;
    println!(
        "ok: {} ({:.0} s)",
        cmd::display(c),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `$PATH` with `dir` moved to the front, so the build finds the bpf-linker that
/// setup checked (also when `CARGO_INSTALL_ROOT` points elsewhere).
fn path_with(dir: &Path) -> Result<OsString> {
    let old = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<_> = std::env::split_paths(&old).collect();
    if dirs.first().map(|d| d.as_path()) != Some(dir) {
        dirs.retain(|d| d != dir);
        dirs.insert(0, dir.to_path_buf());
    }
    Ok(std::env::join_paths(dirs)?)
}
