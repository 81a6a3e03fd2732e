//! The private Exim the tests and the demo run as their MTA: Debian's exim4-daemon-light
//! fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a directory of our own
//! (guard_tests::exim_prefix says where), never installed. Only its shared libraries are
//! installed, as plain packages. Kept while its binary's libraries all resolve.

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use guard_tests::exim_prefix::{self, BINARY, CURRENT, PACKAGE};

use crate::{apt, cmd, root};

/// Makes sure the private Exim is unpacked and its libraries are installed.
pub fn ensure() -> Result<()> {
    let base = exim_prefix::base_dir()?;
    if let Ok(dir) = exim_prefix::current() {
        let unresolved = unresolved_libraries(&dir.join(BINARY))?;
        if unresolved.is_empty() {
            println!(
                "ok: private Exim {} (not installed; {PACKAGE} unpacked)",
                dir.join(BINARY).display()
            );
            return Ok(());
        }
        println!(
            "private Exim {} lacks {}: fetching it again …",
            dir.display(),
            unresolved.join(", ")
        );
    }
    if !root::is_root() {
        bail!(
            "the private Exim is missing: run `cargo xtask setup` as root to unpack {PACKAGE} into {}",
            base.display()
        );
    }
    fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let staging = base.join(format!(".staging-{}", std::process::id()));
    let result = unpack_into(&base, &staging);
    let _ = fs::remove_dir_all(&staging);
    let dir = result?;
    let bin = dir.join(BINARY);
    let unresolved = unresolved_libraries(&bin)?;
    if !unresolved.is_empty() {
        bail!(
            "{} still lacks {} after installing its libraries",
            bin.display(),
            unresolved.join(", ")
        );
    }
    println!(
        "ok: private Exim {} (not installed; {PACKAGE} unpacked)",
        bin.display()
    );
    Ok(())
}

/// Downloads the package into `staging`, installs its libraries, unpacks it to
/// `BASE/VERSION` and points `BASE/current` at it. Returns `BASE/VERSION`.
fn unpack_into(base: &Path, staging: &Path) -> Result<PathBuf> {
    let _ = fs::remove_dir_all(staging);
    fs::create_dir_all(staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let deb = download(staging)?;
    let field = |name: &str| {
        cmd::stdout(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name))
            .map(|s| s.trim().to_string())
    };
    let version = field("Version")?;
    let libs = library_depends(&field("Depends")?);
    apt::ensure_installed(&libs, &format!("libraries of {PACKAGE}"))?;

    let tree = staging.join("root");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let bin = tree.join(BINARY);
    // The package ships it setuid root; the copy is only ever started by root.
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
    println!("unpacked {PACKAGE} {version} into {}", dir.display());
    Ok(dir)
}

/// `apt-get download PACKAGE` into `dir` (after `apt-get update` if the lists do not know
/// it). Returns the .deb.
fn download(dir: &Path) -> Result<PathBuf> {
    println!("fetching {PACKAGE} with apt-get download (not installing it) …");
    let get = || {
        cmd::probe(
            Command::new("apt-get")
                .args(["download", "-q", PACKAGE])
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
            "`apt-get download {PACKAGE}` failed ({}): {}",
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
        "`apt-get download {PACKAGE}` left no .deb in {}",
        dir.display()
    )
}

/// The shared-library packages in a Depends field: the first alternative of each entry whose
/// name starts with `lib`, without version or architecture qualifiers.
pub fn library_depends(depends: &str) -> Vec<String> {
    depends
        .split(',')
        .filter_map(|entry| entry.split('|').next())
        .filter_map(|alt| alt.split_whitespace().next())
        .map(|name| name.split(':').next().unwrap_or(name))
        .filter(|name| name.starts_with("lib"))
        .map(str::to_string)
        .collect()
}

/// The libraries `ldd` cannot resolve for `bin`.
fn unresolved_libraries(bin: &Path) -> Result<Vec<String>> {
    let out = cmd::stdout(Command::new("ldd").arg(bin))?;
    Ok(out
        .lines()
        .filter(|l| l.contains("=> not found"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_library_dependencies_only() {
        let d = "exim4-base (>= 4.96), debconf (>= 0.5) | debconf-2.0, libc6 (>= 2.34), \
                 libcrypt1 (>= 1:4.1.0), libdb5.3, libgnutls-dane0 (>= 3.7.0), libidn12 (>= 1.13), \
                 libfoo:any | libbar";
        assert_eq!(
            library_depends(d),
            [
                "libc6",
                "libcrypt1",
                "libdb5.3",
                "libgnutls-dane0",
                "libidn12",
                "libfoo"
            ]
        );
    }

    /// The guard on setup: nothing it would install here, the fixed packages, the private
    /// Exim's libraries and all their dependencies, is or conflicts with a mail transport
    /// agent, and installing them would remove nothing.
    #[test]
    fn setup_installs_no_mail_transport_agent() {
        let show = cmd::stdout(
            Command::new("apt-cache")
                .args(["show", "--no-all-versions", PACKAGE])
                .env("LC_ALL", "C"),
        )
        .expect("apt-cache show (run `cargo xtask setup` first: it runs apt-get update)");
        let depends = show
            .lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .expect("a Depends field");
        let mut names: Vec<String> = apt::PACKAGES.iter().map(|p| p.name.to_string()).collect();
        let libs = library_depends(depends);
        assert!(libs.iter().any(|l| l == "libc6"), "{libs:?}");
        names.extend(libs);
        crate::no_mta::check(&names).expect("setup's packages");
        // And the check does recognise one.
        assert_eq!(
            crate::no_mta::mta_packages(&[PACKAGE.to_string()]).expect("apt-cache show"),
            [PACKAGE]
        );
    }
}
