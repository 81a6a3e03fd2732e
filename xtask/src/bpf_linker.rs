//! bpf-linker, built against the eBPF nightly's own libLLVM (the machine has no system LLVM).
//!
//! A persistent directory `$XDG_DATA_HOME/qmail-guard/llvm-MAJOR/lib` holds `libLLVM.so` and the
//! soname file as symlinks into the nightly's sysroot; `LLVM_PREFIX` points the bpf-linker build
//! at it and it becomes the binary's rpath. The install is kept when `bpf-linker --version`
//! works and `ldd` resolves its libLLVM to the current nightly's library; otherwise rebuilt.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{cmd, toolchain};

/// The bpf-linker release line (0.13: default feature llvm-23, docs/architecture.md).
const VERSION_REQ: &str = "0.13";
/// `cargo install --version` requirement for it.
const INSTALL_REQ: &str = "~0.13";

/// The directory whose `bin/` receives bpf-linker: `$CARGO_INSTALL_ROOT`, else `$CARGO_HOME`,
/// else `~/.cargo` (cargo install's own order, minus config files).
pub fn install_root() -> Result<PathBuf> {
    if let Some(r) = non_empty_env("CARGO_INSTALL_ROOT") {
        return Ok(PathBuf::from(r));
    }
    if let Some(h) = non_empty_env("CARGO_HOME") {
        return Ok(PathBuf::from(h));
    }
    Ok(home()?.join(".cargo"))
}

/// Where bpf-linker is (or will be) installed.
pub fn bin_dir() -> Result<PathBuf> {
    Ok(install_root()?.join("bin"))
}

/// Makes sure an up-to-date bpf-linker is installed in `bin_dir()`.
pub fn ensure(ebpf_toolchain: &str) -> Result<()> {
    let sysroot = toolchain::sysroot(ebpf_toolchain)?;
    let soname = llvm_soname(&sysroot.join("lib"))?;
    let llvm_lib = sysroot.join("lib").join(&soname);
    let prefix = data_home()?
        .join("qmail-guard")
        .join(format!("llvm-{}", llvm_major(&soname)?));
    link_llvm(&prefix.join("lib"), &llvm_lib, &soname)?;

    let root = install_root()?;
    let bin = root.join("bin").join("bpf-linker");
    match stale_reason(&bin, &llvm_lib)? {
        None => {
            println!(
                "ok: bpf-linker {} links {}",
                bin.display(),
                llvm_lib.display()
            );
            note_path(&bin);
            return Ok(());
        }
        Some(why) => println!(
            "installing bpf-linker {VERSION_REQ} into {} against {soname} ({why}; takes about a minute) …",
            root.display()
        ),
    }
    let started = Instant::now();
    // Run outside the workspace so its rust-toolchain.toml and .cargo/config.toml do not apply.
    cmd::run(
        Command::new("cargo")
            .arg(format!("+{ebpf_toolchain}"))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                INSTALL_REQ,
            ])
            .arg("--root")
            .arg(&root)
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTC")
            .env_remove("RUSTC_WRAPPER")
            .current_dir(&prefix),
    )?;
    if let Some(why) = stale_reason(&bin, &llvm_lib)? {
        bail!(
            "bpf-linker was installed into {} but is still unusable: {why}",
            bin.display()
        );
    }
    println!(
        "ok: bpf-linker installed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    note_path(&bin);
    Ok(())
}

/// The eBPF build finds bpf-linker through PATH: say so when PATH would find another one.
fn note_path(bin: &Path) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let first = std::env::split_paths(&path)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file());
    if first.as_deref() != Some(bin) {
        println!(
            "note: PATH finds {} first; `cargo xtask test` puts {} in front, other builds need it on PATH",
            first.map_or("no bpf-linker".to_string(), |p| p.display().to_string()),
            bin.parent().unwrap_or(bin).display()
        );
    }
}

/// Why the installed binary cannot be used as is, or `None` if it can.
fn stale_reason(bin: &Path, llvm_lib: &Path) -> Result<Option<String>> {
    if !bin.is_file() {
        return Ok(Some(format!("{} does not exist", bin.display())));
    }
    let out = cmd::probe(Command::new(bin).arg("--version"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Ok(Some(format!(
            "`bpf-linker --version` fails: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if !version.starts_with(&format!("bpf-linker {VERSION_REQ}.")) {
        return Ok(Some(format!("it is {version:?}, not {VERSION_REQ}.x")));
    }
    let ldd = cmd::stdout(Command::new("ldd").arg(bin))?;
    let Some(linked) = ldd_llvm(&ldd) else {
        return Ok(Some("ldd shows no resolved libLLVM".to_string()));
    };
    let same = fs::canonicalize(&linked).ok() == Some(fs::canonicalize(llvm_lib)?);
    Ok((!same).then(|| format!("it links {linked}, not the current nightly's library")))
}

/// The resolved path of libLLVM in `ldd` output (`libLLVM.so.X => /path (0x…)`), if resolved.
fn ldd_llvm(ldd: &str) -> Option<String> {
    ldd.lines()
        .filter(|l| l.trim_start().starts_with("libLLVM"))
        .find_map(|l| {
            let (_, rhs) = l.split_once("=>")?;
            let path = rhs.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_string())
        })
}

/// The real shared library in the sysroot's lib/: `libLLVM.so.23.1-rust-…` (the `.so` next to
/// it is a linker script).
fn llvm_soname(lib: &Path) -> Result<String> {
    let mut found = Vec::new();
    for e in fs::read_dir(lib).with_context(|| format!("cannot list {}", lib.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM.so.") {
            found.push(name);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no libLLVM.so.* in {}: is the eBPF nightly installed completely?",
            lib.display()
        ),
        many => bail!(
            "several libLLVM.so.* in {}: {}",
            lib.display(),
            many.join(", ")
        ),
    }
}

/// `libLLVM.so.23.1-rust-1.101.0-nightly` → `23`.
fn llvm_major(soname: &str) -> Result<&str> {
    let v = soname.trim_start_matches("libLLVM.so.");
    let major = v.split(['.', '-']).next().unwrap_or("");
    if major.is_empty() || !major.bytes().all(|b| b.is_ascii_digit()) {
        bail!("cannot read the LLVM major version from {soname}");
    }
    Ok(major)
}

/// Makes `dir/libLLVM.so` and `dir/SONAME` symlinks to `llvm_lib`, replacing wrong ones.
fn link_llvm(dir: &Path, llvm_lib: &Path, soname: &str) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut changed = false;
    for name in ["libLLVM.so", soname] {
        let link = dir.join(name);
        if fs::read_link(&link).ok().as_deref() == Some(llvm_lib) {
            continue;
        }
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("cannot remove {}", link.display()))?;
        }
        symlink(llvm_lib, &link)
            .with_context(|| format!("cannot link {} -> {}", link.display(), llvm_lib.display()))?;
        changed = true;
    }
    let verb = if changed { "linked" } else { "ok:" };
    println!(
        "{verb} libLLVM symlinks in {} -> {}",
        dir.display(),
        llvm_lib.display()
    );
    Ok(())
}

fn data_home() -> Result<PathBuf> {
    match non_empty_env("XDG_DATA_HOME").map(PathBuf::from) {
        Some(p) if p.is_absolute() => Ok(p),
        _ => Ok(home()?.join(".local/share")),
    }
}

fn home() -> Result<PathBuf> {
    non_empty_env("HOME")
        .map(PathBuf::from)
        .context("HOME is not set: cannot choose where to install bpf-linker and its libLLVM links")
}

fn non_empty_env(key: &str) -> Option<OsString> {
    std::env::var_os(key).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_resolved_llvm_from_ldd() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibLLVM.so.23.1-rust-1.101.0-nightly => /d/lib/libLLVM.so.23.1-rust-1.101.0-nightly (0x00007f6d)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f6c)\n";
        assert_eq!(
            ldd_llvm(ldd).as_deref(),
            Some("/d/lib/libLLVM.so.23.1-rust-1.101.0-nightly")
        );
        assert_eq!(ldd_llvm("\tlibLLVM.so.23.1-rust-x => not found\n"), None);
    }

    #[test]
    fn reads_the_llvm_major() {
        assert_eq!(
            llvm_major("libLLVM.so.23.1-rust-1.101.0-nightly").unwrap(),
            "23"
        );
        assert_eq!(
            llvm_major("libLLVM.so.20-rust-1.87.0-nightly").unwrap(),
            "20"
        );
        assert!(llvm_major("libLLVM.so.x").is_err());
    }
}
