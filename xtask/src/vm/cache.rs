//! The kernel cache: `$XDG_CACHE_HOME/qmail-guard/kernels` (else `~/.cache/…`). Downloads,
//! unpacked kernels and initramfs images stay there between runs; deleting it is always safe.

use std::path::PathBuf;

use anyhow::{Result, bail};

pub fn dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".cache"),
            None => bail!("neither XDG_CACHE_HOME nor HOME is set: no place for the kernel cache"),
        },
    };
    Ok(base.join("qmail-guard").join("kernels"))
}
