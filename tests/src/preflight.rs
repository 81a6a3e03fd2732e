//! Preconditions every real-kernel test needs. They panic (fail the test) with a sentence that
//! says what is missing: a test that cannot run must never look like a pass.

use std::path::PathBuf;

use crate::mountinfo;

/// Fails the calling test unless it runs as root (cgroups, netns, BPF all need it).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "qmail-guard integration tests need root (euid is {euid}): run them with `cargo xtask test` as root"
    );
}

/// The cgroup2 mount point; fails the calling test if there is none.
pub fn require_cgroup2() -> PathBuf {
    require_root();
    match mountinfo::cgroup2_mount() {
        Ok(Some(p)) => p,
        Ok(None) => panic!(
            "no cgroup2 filesystem is mounted (none in /proc/self/mountinfo): qmail-guard needs cgroup v2"
        ),
        Err(e) => panic!("cannot read /proc/self/mountinfo: {e}"),
    }
}

/// Where bpffs is mounted: /sys/fs/bpf, mounted here if absent (as `cargo xtask setup` and
/// the loader do), since every test's pin directory lives under it.
pub fn require_bpffs() -> PathBuf {
    require_root();
    // Serialised: two tests mounting at once would stack two bpffs instances, the second
    // hiding the first one's pins.
    static MOUNT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = MOUNT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let root = PathBuf::from("/sys/fs/bpf");
    let mounted = mountinfo::bpffs_mounts()
        .unwrap_or_else(|e| panic!("cannot read /proc/self/mountinfo: {e}"));
    if !mounted.contains(&root) {
        let out = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&root)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        let now = mountinfo::bpffs_mounts().unwrap_or_default();
        assert!(
            now.contains(&root),
            "bpffs is not mounted at {} and mounting it failed: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    root
}
