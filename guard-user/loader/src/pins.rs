//! The pin directory layout (docs/pins.md) and the bpffs it lives on.
use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use super::GuardError;
use crate::cgroup::statfs_type;

/// Default pin directory; `--pin-dir` overrides it (tests use private ones).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/qmail-guard";
/// Where bpffs is mounted when it is missing.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The hooks the guard attaches, with their program names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect4,
    Connect6,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Connect4, Hook::Connect6];
    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect4 => guard_common::PROG_CONNECT4,
            Hook::Connect6 => guard_common::PROG_CONNECT6,
        }
    }
}

/// `DIR/maps/NAME`, `DIR/progs/NAME`, `DIR/links/<cgroup-id>-<hook>`.
#[derive(Debug, Clone)]
pub struct PinDir {
    pub root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PinDir { root: root.into() }
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }
    pub fn prog(&self, hook: Hook) -> PathBuf {
        self.root.join("progs").join(hook.name())
    }
    pub fn link(&self, cgroup_id: u64, hook: Hook) -> PathBuf {
        self.root
            .join("links")
            .join(format!("{cgroup_id}-{}", hook.name()))
    }
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Every pinned link as (cgroup id, hook, path); unknown names are ignored.
    pub fn pinned_links(&self) -> Vec<(u64, Hook, PathBuf)> {
        let Ok(rd) = fs::read_dir(self.links_dir()) else {
            return Vec::new();
        };
        let mut out: Vec<_> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (id, hook) = name.split_once('-')?;
                let hook = Hook::ALL.into_iter().find(|h| h.name() == hook)?;
                Some((id.parse().ok()?, hook, e.path()))
            })
            .collect();
        out.sort_by_key(|(id, hook, _)| (*id, hook.name()));
        out
    }

    /// Makes sure the pin directory exists on a bpffs (mounting /sys/fs/bpf if needed), with
    /// mode 0700 because the maps decide which connects are refused.
    pub fn create(&self) -> Result<(), GuardError> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) {
            if parent == Path::new(BPFFS_MOUNT) {
                mount_bpffs()?;
            } else {
                return Err(GuardError::NoBpffs(parent.to_path_buf()));
            }
        }
        for dir in [
            self.root.clone(),
            self.root.join("maps"),
            self.root.join("progs"),
            self.links_dir(),
        ] {
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(GuardError::PinIo(dir, e)),
            }
        }
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .map_err(|e| GuardError::PinIo(self.root.clone(), e))
    }

    /// Serialises the writers of this pin directory (`attach`, `detach`, `sync`, the daemon):
    /// without it, `ExecStartPre=qmail-guard attach` and the daemon reacting to the same new
    /// cgroup could both attach, leaving two links per hook. An advisory flock(2) on the
    /// directory, released when the guard is dropped (also if the process dies).
    pub fn lock(&self) -> Result<PinLock, GuardError> {
        use std::os::fd::AsRawFd as _;
        let dir =
            fs::File::open(&self.root).map_err(|e| GuardError::PinIo(self.root.clone(), e))?;
        loop {
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(PinLock { _dir: dir });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(GuardError::PinIo(self.root.clone(), e));
            }
        }
    }

    /// Whether the maps are pinned (i.e. the guard was attached with this pin directory).
    pub fn maps_pinned(&self) -> bool {
        self.map(guard_common::MAP_IPME_V4).exists()
    }

    /// Removes programs, maps and the directory itself; used when nothing is attached any more.
    pub fn remove_all(&self) -> Result<(), GuardError> {
        for sub in ["links", "progs", "maps"] {
            let dir = self.root.join(sub);
            if let Ok(rd) = fs::read_dir(&dir) {
                for e in rd.flatten() {
                    fs::remove_file(e.path()).map_err(|err| GuardError::PinIo(e.path(), err))?;
                }
            }
            remove_dir_if_exists(&dir)?;
        }
        remove_dir_if_exists(&self.root)
    }
}

/// Holds the pin directory's lock until dropped.
#[derive(Debug)]
pub struct PinLock {
    _dir: fs::File,
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), GuardError> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(GuardError::PinIo(dir.to_path_buf(), e)),
    }
}

fn is_bpffs(path: &Path) -> bool {
    statfs_type(path).is_ok_and(|t| t == BPF_FS_MAGIC)
}

fn mount_bpffs() -> Result<(), GuardError> {
    let _ = fs::create_dir_all(BPFFS_MOUNT);
    let src = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: constant NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(GuardError::MountBpffs(std::io::Error::last_os_error()));
    }
    Ok(())
}
