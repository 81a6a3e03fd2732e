//! The Debian root that the systemd tests boot with systemd-nspawn: what it contains and where
//! `cargo xtask setup` keeps it (built once with mmdebstrap, like bpf-linker, then reused).
//!
//! The directory name carries a hash of the recipe, so changing the suite or the package list
//! builds a new image instead of silently reusing an old one.

use std::path::PathBuf;

/// The Debian release of the image; the binaries under test are bind-mounted into it, so it
/// must not have an older glibc than the build host.
pub const SUITE: &str = "bookworm";
/// Packages on top of mmdebstrap's `minbase`: a booting systemd, and man-db so the package
/// test can check `man -w`.
pub const PACKAGES: &[&str] = &["systemd", "systemd-sysv", "dbus", "man-db"];
/// Written last by setup: a directory without it is an interrupted build.
pub const STAMP: &str = ".qmail-guard-image-complete";

/// `$XDG_DATA_HOME/qmail-guard/machines` (else `~/.local/share/...`).
pub fn cache_dir() -> Result<PathBuf, String> {
    let data = match std::env::var_os("XDG_DATA_HOME").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ => {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .ok_or("HOME is not set: cannot locate the cached systemd container image")?;
            PathBuf::from(home).join(".local/share")
        }
    };
    Ok(data.join("qmail-guard").join("machines"))
}

/// The image directory for the current recipe: `<cache>/<suite>-<hash>`.
pub fn dir() -> Result<PathBuf, String> {
    Ok(cache_dir()?.join(format!("{SUITE}-{:016x}", recipe_hash())))
}

/// The image, ready to boot; fails the calling test with what to run when it is missing.
pub fn require() -> PathBuf {
    let dir = dir().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        dir.join(STAMP).is_file(),
        "the systemd container image {} is missing or incomplete: run `cargo xtask setup` (as root) to build it with mmdebstrap",
        dir.display()
    );
    dir
}

/// FNV-1a over the recipe: stable across runs and Rust versions (unlike `DefaultHasher`).
fn recipe_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in std::iter::once(SUITE).chain(PACKAGES.iter().copied()) {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_dir_names_suite_and_recipe() {
        let d = dir().unwrap();
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("bookworm-"), "{name}");
        assert_eq!(name.len(), "bookworm-".len() + 16);
        assert!(d.parent().unwrap().ends_with("qmail-guard/machines"));
    }
}
