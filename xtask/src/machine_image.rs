//! The Debian root that the systemd tests boot with systemd-nspawn, built once with mmdebstrap
//! (about a minute, ~210 MB) into the cache directory the test harness reads it from, and kept
//! while its recipe (suite, packages) is unchanged. Built in a temporary directory and renamed
//! into place, so an interrupted build is never mistaken for an image.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail};
use guard_tests::machine_image::{self, PACKAGES, STAMP, SUITE};

use crate::{cmd, root};

pub fn ensure() -> Result<()> {
    let dir = machine_image::dir().map_err(|e| anyhow!(e))?;
    if dir.join(STAMP).is_file() {
        println!("ok: systemd container image {}", dir.display());
        return Ok(());
    }
    if !root::is_root() {
        bail!(
            "the systemd container image {} is missing: run `cargo xtask setup` as root to build it",
            dir.display()
        );
    }
    let cache = machine_image::cache_dir().map_err(|e| anyhow!(e))?;
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let name = dir
        .file_name()
        .context("the image directory has no name")?
        .to_string_lossy()
        .into_owned();
    let tmp = cache.join(format!(".{name}.partial"));
    remove(&tmp)?;
    remove(&dir)?;
    println!(
        "building the systemd container image {} ({SUITE} minbase + {}) with mmdebstrap (about a minute) …",
        dir.display(),
        PACKAGES.join(", ")
    );
    let started = Instant::now();
    cmd::run(
        Command::new("mmdebstrap")
            .args(["--variant=minbase", "--quiet"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&tmp),
    )?;
    fs::write(
        tmp.join(STAMP),
        format!("{SUITE} minbase + {}\n", PACKAGES.join(" ")),
    )
    .with_context(|| format!("cannot write {}", tmp.join(STAMP).display()))?;
    fs::rename(&tmp, &dir)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    println!(
        "ok: systemd container image built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    remove_stale(&cache, &name)?;
    Ok(())
}

/// Removes images of earlier recipes (each is ~210 MB).
fn remove_stale(cache: &Path, current: &str) -> Result<()> {
    for e in fs::read_dir(cache).with_context(|| format!("cannot list {}", cache.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name != current && e.path().join(STAMP).is_file() {
            println!("removing the stale container image {}", e.path().display());
            remove(&e.path())?;
        }
    }
    Ok(())
}

fn remove(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}
