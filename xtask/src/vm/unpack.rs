//! A downloaded kernel package unpacked into the cache, with the modules.dep the .deb lacks
//! (`depmod -b`, run once), so the guest's modprobe finds veth, nf_tables, … on demand.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::fetch::Package;
use crate::cmd;

/// An unpacked kernel: `root` holds the package's `boot/` and `lib/modules/<release>/`.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub package: Package,
    /// `uname -r` of the kernel, e.g. `6.1.0-28-amd64`.
    pub release: String,
    pub root: PathBuf,
}

impl Unpacked {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    pub fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// Marker written last: its presence means the directory is complete.
const READY: &str = "ready";

/// The cached unpacked kernel for `pkg` in `dir`, if a previous run completed it.
pub fn cached(dir: &Path, pkg: &Package) -> Option<Unpacked> {
    let release = fs::read_to_string(dir.join(READY)).ok()?;
    let u = Unpacked {
        package: pkg.clone(),
        release: release.trim().to_string(),
        root: dir.join("root"),
    };
    (u.vmlinuz().is_file() && u.modules().join("modules.dep").is_file()).then_some(u)
}

/// Unpacks `deb` into `dir/root` and runs depmod; `dir` is replaced only when all succeeded.
pub fn unpack(deb: &Path, dir: &Path, pkg: &Package) -> Result<Unpacked> {
    let tmp = dir.with_extension("partial");
    remove(&tmp)?;
    let root = tmp.join("root");
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    cmd::stdout(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    let release =
        release_of(&root).with_context(|| format!("{} holds no kernel image", deb.display()))?;
    cmd::stdout(Command::new(depmod()?).arg("-b").arg(&root).arg(&release))?;
    fs::write(tmp.join(READY), format!("{release}\n"))
        .with_context(|| format!("cannot write {}", tmp.join(READY).display()))?;
    remove(dir)?;
    fs::rename(&tmp, dir)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    cached(dir, pkg).with_context(|| format!("{} is incomplete after unpacking", dir.display()))
}

/// The release of the one `boot/vmlinuz-<release>` with a matching `lib/modules/<release>`.
fn release_of(root: &Path) -> Result<String> {
    let boot = root.join("boot");
    for e in fs::read_dir(&boot).with_context(|| format!("cannot list {}", boot.display()))? {
        let name = e?.file_name();
        if let Some(r) = name.to_str().and_then(|n| n.strip_prefix("vmlinuz-"))
            && root.join("lib/modules").join(r).is_dir()
        {
            return Ok(r.to_string());
        }
    }
    bail!("no boot/vmlinuz-RELEASE with a lib/modules/RELEASE directory")
}

/// depmod lives in /usr/sbin (kmod), which a non-login root PATH may lack.
fn depmod() -> Result<PathBuf> {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join("depmod");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("depmod not found: install kmod (`cargo xtask setup` does)")
}

fn remove(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", p.display()))
        }
        _ => Ok(()),
    }
}
