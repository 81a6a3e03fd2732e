//! Finding and validating the cgroup2 directory the guard attaches to.
//!
//! The cgroup2 mount point differs between hosts (`/sys/fs/cgroup` on unified hosts,
//! `/sys/fs/cgroup/unified` on hybrid ones), so it is read from /proc/self/mountinfo.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
};

/// statfs(2) magic of a cgroup2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 filesystem is mounted (none in /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,
    #[error(
        "{}: this process does not see the host's cgroup2 filesystem at {} (`ip netns exec` mounts a new /sys, which hides it); run qmail-guard without `ip netns exec`, e.g. `nsenter --net=/run/netns/NAME qmail-guard …`", .0.display(), .1.display()
    )]
    HiddenCgroupfs(PathBuf, PathBuf),
    #[error("cannot read /proc/self/mountinfo")]
    Mountinfo(#[source] std::io::Error),
    #[error(
        "cgroup {0} does not exist (is the service running? systemd creates a unit's cgroup when it starts)"
    )]
    Missing(PathBuf),
    #[error(
        "{0} is not a cgroup2 directory (it is not on the cgroup2 mount {1}); pass a directory under {1}"
    )]
    NotCgroup2(PathBuf, PathBuf),
    #[error("cannot inspect {0}")]
    Stat(PathBuf, #[source] std::io::Error),
    #[error("cannot run systemctl to find the cgroup of unit {0}")]
    Systemctl(String, #[source] std::io::Error),
    #[error("systemd reports no cgroup for unit {0} (is it loaded and running?): {1}")]
    NoUnitCgroup(String, String),
    #[error(
        "{0} is the root of the cgroup2 hierarchy: guarding it refuses connects of every process on this host, not just qmail's; give qmail's own cgroup or unit (e.g. --unit qmail.service), or add --allow-root-cgroup if you really mean every process"
    )]
    Root(PathBuf),
}

/// A validated cgroup2 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
    /// The cgroup id, i.e. the inode number of its directory (what bpftool and the kernel show).
    pub id: u64,
}

/// The first cgroup2 mount point in /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    guard_mountinfo::cgroup2_mount()
        .map_err(CgroupError::Mountinfo)?
        .ok_or(CgroupError::NoCgroup2)
}

/// The host's cgroup2 mount holding `path` when this process cannot see it: init (pid 1)
/// has it mounted, we do not (`ip netns exec` unshares the mount namespace and mounts a fresh
/// /sys over the host's). None when we see what init sees, or init's mounts are unreadable.
fn hidden_cgroup2_mount(path: &Path) -> Option<PathBuf> {
    let init = fs::read_to_string("/proc/1/mountinfo").ok()?;
    let host = guard_mountinfo::parse(&init)
        .into_iter()
        .find(|m| m.fstype == "cgroup2")?
        .mount_point;
    let ours = guard_mountinfo::cgroup2_mount().ok()?;
    (path.starts_with(&host) && ours.as_ref() != Some(&host)).then_some(host)
}

impl Cgroup {
    /// Validates that `path` is an existing directory on a cgroup2 filesystem.
    pub fn from_path(path: &Path) -> Result<Self, CgroupError> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(host) = hidden_cgroup2_mount(path) {
                    return Err(CgroupError::HiddenCgroupfs(path.to_path_buf(), host));
                }
                return Err(CgroupError::Missing(path.to_path_buf()));
            }
            Err(e) => return Err(CgroupError::Stat(path.to_path_buf(), e)),
        };
        let fs_type = statfs_type(path).map_err(|e| CgroupError::Stat(path.to_path_buf(), e))?;
        if !meta.is_dir() || fs_type != CGROUP2_SUPER_MAGIC {
            let mount = cgroup2_mount().unwrap_or_else(|_| PathBuf::from("/sys/fs/cgroup"));
            return Err(CgroupError::NotCgroup2(path.to_path_buf(), mount));
        }
        Ok(Cgroup {
            path: path.to_path_buf(),
            id: meta.ino(),
        })
    }

    /// A process of this cgroup whose network namespace is not ours, if any: the ipme set is
    /// computed from the calling process's interfaces and routes, which are then not theirs.
    pub fn member_in_other_netns(&self) -> Option<u32> {
        let ours = fs::metadata("/proc/self/ns/net").ok()?.ino();
        let procs = fs::read_to_string(self.path.join("cgroup.procs")).ok()?;
        procs
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .find(|pid| fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() != ours))
    }

    /// Refuses the root of the cgroup2 hierarchy (every process on the host) unless `allow`.
    pub fn refuse_root(&self, allow: bool) -> Result<(), CgroupError> {
        if !allow && is_root_path(&self.path) {
            return Err(CgroupError::Root(self.path.clone()));
        }
        Ok(())
    }

    /// The cgroup of a systemd unit (`systemctl show -p ControlGroup --value UNIT`).
    pub fn from_unit(unit: &str) -> Result<Self, CgroupError> {
        let out = Command::new("systemctl")
            .args(["show", "-p", "ControlGroup", "--value", "--", unit])
            .output()
            .map_err(|e| CgroupError::Systemctl(unit.to_string(), e))?;
        let rel = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || rel.is_empty() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let why = if why.is_empty() {
                "empty ControlGroup".to_string()
            } else {
                why
            };
            return Err(CgroupError::NoUnitCgroup(unit.to_string(), why));
        }
        let mount = cgroup2_mount()?;
        Self::from_path(&mount.join(rel.trim_start_matches('/')))
    }

    /// Where a unit's cgroup is, or will be once it starts: `ControlGroup` while the unit runs,
    /// else derived from its `Slice` (systemd names a unit's cgroup `<slice path>/<unit>`), so
    /// the daemon can wait for a unit that is not running yet.
    pub fn unit_path(unit: &str) -> Result<PathBuf, CgroupError> {
        let out = Command::new("systemctl")
            .args(["show", "-p", "ControlGroup", "-p", "Slice", "--", unit])
            .output()
            .map_err(|e| CgroupError::Systemctl(unit.to_string(), e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let prop = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let rel = match (prop("ControlGroup"), prop("Slice")) {
            (Some(cg), _) => cg.trim_start_matches('/').to_string(),
            (None, Some(slice)) if out.status.success() => {
                let mut p = slice_path(slice);
                p.push(unit);
                p.to_string_lossy().into_owned()
            }
            _ => {
                let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
                let why = if why.is_empty() {
                    "neither ControlGroup nor Slice is set".to_string()
                } else {
                    why
                };
                return Err(CgroupError::NoUnitCgroup(unit.to_string(), why));
            }
        };
        Ok(cgroup2_mount()?.join(rel))
    }

    /// Whether a cgroup with this id still exists: Some(false) once it was removed (even while
    /// sockets still pin its memory), None when the kernel cannot tell us (then the caller
    /// falls back to [`Cgroup::path_of_id`]). Uses open_by_handle_at(2): on cgroup2 a file
    /// handle is the 64-bit cgroup id (FILEID_KERNFS), so this is one syscall, not a tree walk.
    pub fn id_alive(id: u64) -> Option<bool> {
        /// `struct file_handle` with room for the 8-byte kernfs id.
        #[repr(C)]
        struct KernfsHandle {
            handle_bytes: libc::c_uint,
            handle_type: libc::c_int,
            f_handle: [u8; 8],
        }
        const FILEID_KERNFS: libc::c_int = 0xfe;
        let mount = cgroup2_mount().ok()?;
        let mount = fs::File::open(mount).ok()?;
        let mut handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            f_handle: id.to_ne_bytes(),
        };
        use std::os::fd::AsRawFd as _;
        // SAFETY: a valid file_handle header followed by handle_bytes of payload; the
        // returned fd (if any) is closed right away.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                std::ptr::from_mut(&mut handle).cast(),
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_DIRECTORY,
            )
        };
        if fd >= 0 {
            // SAFETY: fd was just returned to us and is not used elsewhere.
            unsafe { libc::close(fd) };
            return Some(true);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ESTALE) | Some(libc::ENOENT) => Some(false),
            _ => None,
        }
    }

    /// Finds the directory of a cgroup id under the cgroup2 mount (for status output).
    pub fn path_of_id(id: u64) -> Option<PathBuf> {
        let root = cgroup2_mount().ok()?;
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let meta = fs::metadata(&dir).ok()?;
            if meta.ino() == id {
                return Some(dir);
            }
            if let Ok(rd) = fs::read_dir(&dir) {
                stack.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                        .map(|e| e.path()),
                );
            }
        }
        None
    }
}

/// Whether `path` is the root directory of the cgroup2 mount, compared by device and inode
/// (so `/sys/fs/cgroup/.` or a symlink to it count), or by path when it does not exist.
pub fn is_root_path(path: &Path) -> bool {
    let Ok(mount) = cgroup2_mount() else {
        return false;
    };
    match (fs::metadata(path), fs::metadata(&mount)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => path.components().eq(mount.components()),
    }
}

/// The cgroup directory of a slice relative to the cgroup2 mount: systemd nests slices by
/// their dash-separated prefixes (`a-b.slice` lives in `a.slice/a-b.slice`); `-.slice` is the root.
fn slice_path(slice: &str) -> PathBuf {
    let mut path = PathBuf::new();
    let Some(stem) = slice.strip_suffix(".slice") else {
        return PathBuf::from(slice);
    };
    if stem == "-" || stem.is_empty() {
        return path;
    }
    let parts: Vec<&str> = stem.split('-').collect();
    for i in 1..=parts.len() {
        path.push(format!("{}.slice", parts[..i].join("-")));
    }
    path
}

/// statfs(2) f_type of the filesystem holding `path`.
pub fn statfs_type(path: &Path) -> std::io::Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs is a plain C struct of integers; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and an out-pointer to a statfs struct.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libc targets
    Ok(st.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_paths_nest_by_prefix() {
        assert_eq!(slice_path("system.slice"), PathBuf::from("system.slice"));
        assert_eq!(slice_path("-.slice"), PathBuf::new());
        assert_eq!(
            slice_path("a-b-c.slice"),
            PathBuf::from("a.slice/a-b.slice/a-b-c.slice")
        );
    }

    /// Real mount: the cgroup2 root is recognised however it is spelled; a child is not.
    #[test]
    fn root_is_recognised() {
        let Ok(mount) = cgroup2_mount() else { return };
        assert!(is_root_path(&mount));
        assert!(is_root_path(&mount.join(".")));
        let cg = Cgroup::from_path(&mount).unwrap();
        assert!(matches!(cg.refuse_root(false), Err(CgroupError::Root(_))));
        assert!(cg.refuse_root(true).is_ok());
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        if let Some(rel) = own.lines().find_map(|l| l.strip_prefix("0::"))
            && rel != "/"
        {
            assert!(!is_root_path(&mount.join(rel.trim_start_matches('/'))));
        }
    }

    /// Real kernel: our own cgroup exists, a made-up id does not.
    #[test]
    fn id_alive_of_own_and_bogus_cgroup() {
        let Ok(mount) = cgroup2_mount() else { return };
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let Some(rel) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
            return;
        };
        let dir = mount.join(rel.trim_start_matches('/'));
        let Ok(meta) = fs::metadata(&dir) else { return };
        // None: not permitted here (open_by_handle_at needs CAP_DAC_READ_SEARCH).
        if let Some(alive) = Cgroup::id_alive(meta.ino()) {
            assert!(alive);
            assert_eq!(Cgroup::id_alive(u64::MAX - 7), Some(false));
        }
    }
}
