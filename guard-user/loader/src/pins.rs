//! The pin directory layout (docs/pins.md) and the bpffs it lives on.
use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
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
    pub fn progs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }
    pub fn prog(&self, hook: Hook) -> PathBuf {
        self.progs_dir().join(hook.name())
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

    /// Makes sure the pin directory exists on a bpffs (mounting /sys/fs/bpf if needed) and that
    /// only root can change it. A new directory is made here with mode 0700, because the maps
    /// decide which connects are refused; an existing one (bpffs's root is world-writable, so
    /// anyone can make one first) is used only if it and everything in it pass
    /// [`PinDir::check_trusted`]. Returns true if this call created the directory, so a
    /// failing command can remove it again.
    pub fn create(&self) -> Result<bool, GuardError> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) {
            if parent == Path::new(BPFFS_MOUNT) {
                mount_bpffs()?;
            } else {
                return Err(GuardError::NoBpffs(parent.to_path_buf()));
            }
        }
        let created = match fs::DirBuilder::new().mode(0o700).create(&self.root) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(GuardError::PinIo(self.root.clone(), e)),
        };
        if let Err(e) = self.make_subdirs() {
            if created {
                let _ = self.remove_all();
            }
            return Err(e);
        }
        Ok(created)
    }

    fn make_subdirs(&self) -> Result<(), GuardError> {
        // Checked before anything is made inside it.
        self.check_trusted()?;
        for dir in [
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
        // An existing subdirectory is checked too.
        self.check_trusted()
    }

    /// Refuses the pin directory unless it, its subdirectories and every pin in them are owned
    /// by root, not writable by group or others, and not symlinks (whose target someone else
    /// might control). Checked with lstat, so nothing is followed.
    pub fn check_trusted(&self) -> Result<(), GuardError> {
        self.check_one(&self.root)?;
        for sub in ["maps", "progs", "links"] {
            let dir = self.root.join(sub);
            match fs::symlink_metadata(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(GuardError::PinIo(dir, e)),
                Ok(_) => self.check_one(&dir)?,
            }
            let rd = fs::read_dir(&dir).map_err(|e| GuardError::PinIo(dir.clone(), e))?;
            for entry in rd {
                let entry = entry.map_err(|e| GuardError::PinIo(dir.clone(), e))?;
                self.check_one(&entry.path())?;
            }
        }
        Ok(())
    }

    fn check_one(&self, path: &Path) -> Result<(), GuardError> {
        let meta = fs::symlink_metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => GuardError::NotAttached(self.root.clone()),
            _ => GuardError::PinIo(path.to_path_buf(), e),
        })?;
        let what = if meta.file_type().is_symlink() {
            Some("a symbolic link".to_string())
        } else if meta.uid() != 0 {
            Some(format!("owned by {}, not root", user_name(meta.uid())))
        } else if meta.mode() & 0o022 != 0 {
            Some(format!(
                "writable by group or others (mode {:04o})",
                meta.mode() & 0o7777
            ))
        } else {
            None
        };
        match what {
            Some(what) => Err(GuardError::Untrusted {
                path: path.to_path_buf(),
                what,
                root: self.root.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Serialises the writers of this pin directory (`attach`, `detach`, `sync`, the daemon):
    /// without it, `ExecStartPre=qmail-guard attach` and the daemon reacting to the same new
    /// cgroup could both attach, leaving two links per hook. An advisory flock(2) on the
    /// directory, released when the guard is dropped (also if the process dies). The
    /// directory must pass [`PinDir::check_trusted`]; a writer computes what it writes only
    /// after it holds the lock, so no writer applies a set older than the one in force.
    pub fn lock(&self) -> Result<PinLock, GuardError> {
        self.check_trusted()?;
        self.lock_unchecked()
    }

    /// The lock without the ownership check, for removing the guard: `detach` must be able
    /// to clean up a directory that [`PinDir::lock`] refuses.
    pub fn lock_for_removal(&self) -> Result<PinLock, GuardError> {
        self.lock_unchecked()
    }

    fn lock_unchecked(&self) -> Result<PinLock, GuardError> {
        use std::os::fd::AsRawFd as _;
        let dir = fs::File::open(&self.root).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => GuardError::NotAttached(self.root.clone()),
            _ => GuardError::PinIo(self.root.clone(), e),
        })?;
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
        self.remove_contents()?;
        remove_dir_if_exists(&self.root)
    }

    /// Removes programs, maps and links with their subdirectories, keeping the directory.
    pub fn remove_contents(&self) -> Result<(), GuardError> {
        for sub in ["links", "progs", "maps"] {
            let dir = self.root.join(sub);
            if let Ok(rd) = fs::read_dir(&dir) {
                for e in rd.flatten() {
                    fs::remove_file(e.path()).map_err(|err| GuardError::PinIo(e.path(), err))?;
                }
            }
            remove_dir_if_exists(&dir)?;
        }
        Ok(())
    }
}

/// A name beside `path` to pin an object under before renaming it over `path` (bpffs refuses
/// dots in names, hence a suffix).
pub fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push("_new");
    path.with_file_name(name)
}

/// Holds the pin directory's lock until dropped.
#[derive(Debug)]
pub struct PinLock {
    _dir: fs::File,
}

/// `uid 65534 (nobody)`, or `uid N` when the user database does not know it.
fn user_name(uid: u32) -> String {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: passwd is a plain C struct; all-zero is a valid value to be overwritten.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    // SAFETY: every pointer refers to a live buffer of the given size.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pw.pw_name.is_null() {
        return format!("uid {uid}");
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside buf.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }.to_string_lossy();
    format!("uid {uid} ({name})")
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
