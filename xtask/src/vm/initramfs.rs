//! The initramfs: a static busybox and the few modules needed to reach the host's userland
//! (virtio PCI, 9p over virtio, overlayfs), loaded in dependency order by a shell init that
//! then mounts the host's `/` read-only with a tmpfs overlay on top and switches to it.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// What the initramfs must load before it can mount the host's root.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];
/// busybox-static's binary.
const BUSYBOX: &str = "/bin/busybox";
/// The 9p mount tag of the host's `/` (qemu's `-fsdev … -device virtio-9p-pci,mount_tag=`).
pub const ROOT_TAG: &str = "hostroot";

/// Kernel command line variables the init reads (the kernel passes `a=b` words it does not
/// know to init's environment).
pub const INIT_VAR: &str = "qg_init";
pub const PLAN_VAR: &str = "qg_plan";

/// Writes `out` (an uncompressed newc cpio) for the kernel whose modules are in `modules`.
pub fn build(modules: &Path, out: &Path) -> Result<()> {
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} not found: install busybox-static (`cargo xtask setup` does)");
    }
    let order = load_order(modules)?;
    let stage = out.with_extension("d");
    match fs::remove_dir_all(&stage) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", stage.display()));
        }
        _ => {}
    }
    for d in [
        "bin", "modules", "proc", "sys", "dev", "lower", "rw", "newroot",
    ] {
        mkdir(&stage.join(d))?;
    }
    copy(Path::new(BUSYBOX), &stage.join("bin/busybox"))?;
    let mut list = String::new();
    for rel in &order {
        let name = Path::new(rel)
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("odd module path {rel} in modules.dep"))?;
        copy(&modules.join(rel), &stage.join("modules").join(name))?;
        list.push_str(name);
        list.push('\n');
    }
    write(&stage.join("modules.order"), &list, 0o644)?;
    write(&stage.join("init"), &init_script(), 0o755)?;
    cpio(&stage, out)?;
    fs::remove_dir_all(&stage).with_context(|| format!("cannot remove {}", stage.display()))
}

/// The shell init. On any failure it prints the `@@qg error` line the host waits for and
/// powers off, so a broken boot ends at once instead of at the host's timeout.
fn init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{ echo "@@qg error initramfs: $*"; echo o > /proc/sysrq-trigger; sleep 60; }}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/modules/$m" || fail "insmod $m"; done < /modules.order
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 {ROOT_TAG} /lower || fail "mount 9p {ROOT_TAG}"
mount -t tmpfs -o mode=0755 rw /rw || fail "mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "mount overlay"
[ -x "/newroot${INIT_VAR}" ] || fail "no executable {INIT_VAR}=${INIT_VAR}"
mount --move /dev /newroot/dev || fail "move /dev"
umount /sys /proc
exec switch_root /newroot "${INIT_VAR}" vm-guest "${PLAN_VAR}"
"#,
        INIT_VAR = INIT_VAR,
        PLAN_VAR = PLAN_VAR,
        ROOT_TAG = ROOT_TAG
    )
}

/// BOOT_MODULES and their dependencies, each after what it needs, as paths relative to
/// `modules`; modules built into the kernel are left out.
fn load_order(modules: &Path) -> Result<Vec<String>> {
    let dep_file = modules.join("modules.dep");
    let text = fs::read_to_string(&dep_file)
        .with_context(|| format!("cannot read {}", dep_file.display()))?;
    let builtin = fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let deps = parse_deps(&text);
    let by_name: HashMap<String, &str> =
        deps.keys().map(|p| (module_name(p), p.as_str())).collect();
    let builtin: HashSet<String> = builtin.lines().map(module_name).collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for m in BOOT_MODULES {
        match by_name.get(*m) {
            Some(p) => visit(p, &deps, &mut seen, &mut order),
            None if builtin.contains(*m) => {}
            None => bail!(
                "module {m} is neither in {} nor built in",
                dep_file.display()
            ),
        }
    }
    Ok(order)
}

fn visit(
    p: &str,
    deps: &HashMap<String, Vec<String>>,
    seen: &mut HashSet<String>,
    out: &mut Vec<String>,
) {
    if !seen.insert(p.to_string()) {
        return;
    }
    for d in deps.get(p).into_iter().flatten() {
        visit(d, deps, seen, out);
    }
    out.push(p.to_string());
}

/// `kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko …` lines.
fn parse_deps(text: &str) -> HashMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.trim().to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

/// `kernel/net/9p/9pnet_virtio.ko` → `9pnet_virtio` (the kernel treats `-` and `_` alike).
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

fn cpio(stage: &Path, out: &Path) -> Result<()> {
    let mut names = Vec::new();
    collect(stage, stage, &mut names)?;
    let file = fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut child = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "--owner", "0:0"])
        .current_dir(stage)
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("cannot run cpio: install it (`cargo xtask setup` does)")?;
    {
        let mut stdin = child.stdin.take().context("cpio has no stdin")?;
        for n in &names {
            writeln!(stdin, "{n}").context("cannot write to cpio")?;
        }
    }
    let status = child.wait().context("cannot wait for cpio")?;
    if !status.success() {
        bail!("cpio failed ({status}) writing {}", out.display());
    }
    Ok(())
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(base).unwrap_or(&p);
        out.push(rel.display().to_string());
        if p.is_dir() {
            collect(base, &p, out)?;
        }
    }
    Ok(())
}

fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

fn write(p: &Path, text: &str, mode: u32) -> Result<()> {
    fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_and_once() {
        let deps = parse_deps(
            "kernel/fs/9p/9p.ko: kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko\n\
             kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/net/9p/9pnet.ko:\nkernel/fs/netfs/netfs.ko:\n\
             kernel/drivers/virtio/virtio_ring.ko:\n",
        );
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        visit("kernel/net/9p/9pnet_virtio.ko", &deps, &mut seen, &mut out);
        visit("kernel/fs/9p/9p.ko", &deps, &mut seen, &mut out);
        assert_eq!(
            out,
            [
                "kernel/net/9p/9pnet.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/net/9p/9pnet_virtio.ko",
                "kernel/fs/netfs/netfs.ko",
                "kernel/fs/9p/9p.ko",
            ]
        );
        assert_eq!(module_name("kernel/x/virtio-pci.ko"), "virtio_pci");
    }
}
