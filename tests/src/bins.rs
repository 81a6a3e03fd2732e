//! Locating the binaries: the ones under test (qmail-guard, built by the xtask) and our own probe.

use std::path::PathBuf;

/// Environment variable naming the directory that holds the binaries under test.
pub const BIN_DIR_ENV: &str = "QMAIL_GUARD_BIN_DIR";

/// Cargo's profile directory (e.g. target/debug) derived from the running test executable,
/// which cargo places in target/<profile>/deps.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot determine the test executable's path");
    let dir = exe
        .parent()
        .expect("test executable has no parent directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a binary under test: `$QMAIL_GUARD_BIN_DIR/NAME`, else next to the test's profile dir.
/// Panics with a hint if it does not exist, since every later failure would be confusing.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os(BIN_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(profile_dir);
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "binary under test {} does not exist: build it first (`cargo xtask test` does) or set {BIN_DIR_ENV}",
        p.display()
    );
    p
}

/// Path of guard-probe, a binary of this package: cargo builds it before integration tests, in
/// the same profile directory, so `QMAIL_GUARD_BIN_DIR` does not apply to it.
pub fn probe_path() -> PathBuf {
    let p = profile_dir().join("guard-probe");
    assert!(
        p.is_file(),
        "{} does not exist: build guard-tests' binaries (`cargo test -p guard-tests` does)",
        p.display()
    );
    p
}

/// The upgrade test's second qmail-guard (programs that differ by a no-op), which
/// `cargo xtask test` builds into `<bin dir>/upgrade-variant/`.
pub fn variant_path() -> PathBuf {
    bin_path("upgrade-variant/qmail-guard")
}
