//! Where the private Exim lives: the files of Debian's exim4-daemon-light package, unpacked by
//! `cargo xtask setup` (apt-get download + dpkg-deb -x) into a directory of our own, so the
//! tests and the demo run a real MTA without installing one on the host (an MTA package
//! conflicts with every other and takes over /usr/sbin/sendmail).
//!
//! Layout: `BASE/VERSION/` is one unpacked package version, `BASE/current` a symlink to the one
//! in use. BASE is `$QMAIL_GUARD_EXIM_DIR`, else `$XDG_DATA_HOME/qmail-guard/exim`, else
//! `~/.local/share/qmail-guard/exim`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

/// Overrides the base directory (tests and setup read the same variable).
pub const DIR_ENV: &str = "QMAIL_GUARD_EXIM_DIR";
/// The Debian package whose files are unpacked.
pub const PACKAGE: &str = "exim4-daemon-light";
/// The daemon binary inside an unpacked package.
pub const BINARY: &str = "usr/sbin/exim4";
/// The name of the symlink to the version in use.
pub const CURRENT: &str = "current";

/// Why the private Exim cannot be used.
#[derive(Debug)]
pub enum Error {
    /// Neither the override nor HOME says where the base directory is.
    NoHome,
    /// Setup has not unpacked it (yet).
    Missing(PathBuf),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoHome => write!(
                f,
                "neither {DIR_ENV} nor HOME is set: cannot locate the private Exim"
            ),
            Error::Missing(p) => write!(
                f,
                "the private Exim {} does not exist: run `cargo xtask setup` (it unpacks {PACKAGE} there without installing it)",
                p.display()
            ),
        }
    }
}

impl std::error::Error for Error {}

/// The base directory (it may not exist yet).
pub fn base_dir() -> Result<PathBuf, Error> {
    if let Some(d) = non_empty_env(DIR_ENV) {
        return Ok(PathBuf::from(d));
    }
    let data = match non_empty_env("XDG_DATA_HOME").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ => PathBuf::from(non_empty_env("HOME").ok_or(Error::NoHome)?).join(".local/share"),
    };
    Ok(data.join("qmail-guard").join("exim"))
}

/// The unpacked package in use (`BASE/current`, resolved).
pub fn current() -> Result<PathBuf, Error> {
    let link = base_dir()?.join(CURRENT);
    match link.canonicalize() {
        Ok(p) if p.join(BINARY).is_file() => Ok(p),
        _ => Err(Error::Missing(link.join(BINARY))),
    }
}

/// The exim4 binary to run.
pub fn binary() -> Result<PathBuf, Error> {
    Ok(current()?.join(BINARY))
}

fn non_empty_env(key: &str) -> Option<OsString> {
    std::env::var_os(key).filter(|v| !v.is_empty())
}
