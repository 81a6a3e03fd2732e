//! Programs the tests run from Debian packages that are fetched with `apt-get download` and
//! unpacked with `dpkg-deb -x` into a directory of our own, never installed (so they neither
//! conflict with nor start anything on the host). Only their shared libraries are installed, as
//! plain packages. An unpacked version is kept while its binary's libraries all resolve.
//!
//! Layout: `BASE/VERSION/` is one unpacked version, `BASE/current` a symlink to the one in use.

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{apt, cmd, exim::library_depends, root};

/// The name of the symlink to the version in use.
pub const CURRENT: &str = "current";

/// One package to keep unpacked.
pub struct Unpacked {
    /// What it is, for messages ("private Exim").
    pub what: &'static str,
    /// The Debian package.
    pub package: &'static str,
    /// The binary inside the package, e.g. `usr/sbin/exim4`.
    pub binary: &'static str,
    /// Where versions are unpacked.
    pub base: PathBuf,
    /// The version in use, if one is unpacked.
    pub current: Option<PathBuf>,
}

/// Makes sure `u` is unpacked and its libraries are installed.
pub fn ensure(u: &Unpacked) -> Result<()> {
    let Unpacked {
        what,
        package,
        binary,
        ..
    } = *u;
    if let Some(dir) = &u.current {
        let unresolved = unresolved_libraries(&dir.join(binary))?;
        if unresolved.is_empty() {
            println!(
                "ok: {what} {} (not installed; {package} unpacked)",
                dir.join(binary).display()
            );
            return Ok(());
        }
        println!(
            "{what} {} lacks {}: fetching it again …",
            dir.display(),
            unresolved.join(", ")
        );
    }
    let base = &u.base;
    if !root::is_root() {
        bail!(
            "the {what} is missing: run `cargo xtask setup` as root to unpack {package} into {}",
            base.display()
        );
    }
    fs::create_dir_all(base).with_context(|| format!("cannot create {}", base.display()))?;
    let staging = base.join(format!(".staging-{}", std::process::id()));
    let result = unpack_into(u, &staging);
    let _ = fs::remove_dir_all(&staging);
    let dir = result?;
    let bin = dir.join(binary);
    let unresolved = unresolved_libraries(&bin)?;
    if !unresolved.is_empty() {
        bail!(
            "{} still lacks {} after installing its libraries",
            bin.display(),
            unresolved.join(", ")
        );
    }
    println!(
        "ok: {what} {} (not installed; {package} unpacked)",
        bin.display()
    );
    Ok(())
}

/// Downloads the package into `staging`, installs its libraries, unpacks it to
/// `BASE/VERSION` and points `BASE/current` at it. Returns `BASE/VERSION`.
fn unpack_into(u: &Unpacked, staging: &Path) -> Result<PathBuf> {
    let (base, package) = (&u.base, u.package);
    let _ = fs::remove_dir_all(staging);
    fs::create_dir_all(staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let deb = download(package, staging)?;
    let field = |name: &str| {
        cmd::stdout(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name))
            .map(|s| s.trim().to_string())
    };
    let version = field("Version")?;
    let libs = library_depends(&field("Depends")?);
    apt::ensure_installed(&libs, &format!("libraries of {package}"))?;

    let tree = staging.join("root");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let bin = tree.join(u.binary);
    // A package may ship it setuid root (Exim); the copy is only ever started by root.
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", bin.display()))?;
    // Versions contain ':' (epochs) and '+'; keep the directory name plain.
    let dir = base.join(version.replace([':', '/'], "_"));
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    fs::rename(&tree, &dir)
        .with_context(|| format!("cannot move {} to {}", tree.display(), dir.display()))?;
    // Replace `current` atomically: a new link renamed over the old one.
    let link = base.join(CURRENT);
    let tmp = staging.join("current");
    symlink(
        dir.file_name().context("version directory has no name")?,
        &tmp,
    )
    .with_context(|| format!("cannot create {}", tmp.display()))?;
    fs::rename(&tmp, &link).with_context(|| format!("cannot replace {}", link.display()))?;
    println!("unpacked {package} {version} into {}", dir.display());
    Ok(dir)
}

/// `apt-get download PACKAGE` into `dir` (after `apt-get update` if the lists do not know
/// it). Returns the .deb.
fn download(package: &str, dir: &Path) -> Result<PathBuf> {
    println!("fetching {package} with apt-get download (not installing it) …");
    let get = || {
        cmd::probe(
            Command::new("apt-get")
                .args(["download", "-q", package])
                // apt's download user cannot write into root's private directory.
                .args(["-o", "APT::Sandbox::User=root"])
                .current_dir(dir),
        )
    };
    let mut out = get()?;
    if !out.status.success() {
        apt::update()?;
        out = get()?;
    }
    if !out.status.success() {
        bail!(
            "`apt-get download {package}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for e in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            return Ok(p);
        }
    }
    bail!(
        "`apt-get download {package}` left no .deb in {}",
        dir.display()
    )
}

/// The libraries `ldd` cannot resolve for `bin` (none for a static binary).
fn unresolved_libraries(bin: &Path) -> Result<Vec<String>> {
    let out = cmd::probe(Command::new("ldd").arg(bin))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
            || text.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(text
        .lines()
        .filter(|l| l.contains("=> not found"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}
