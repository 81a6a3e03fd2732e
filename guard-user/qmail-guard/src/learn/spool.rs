//! The spool directory (`loopcheck/spool`): made for the qmail-remote user, checked before
//! every read, and emptied entry by entry. Each entry is opened without following links,
//! must be a small regular file owned by the spool's owner, and is removed once handled,
//! accepted or not, so a bad entry is reported once.
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ipme::learn::{MAX_ENTRY_BYTES, MAX_LEARNED, SPOOL};

use super::{LearnError, User};

/// A temporary file (qmail-remote writes `.NAME` and renames it) older than this was left by
/// a writer that died; it is removed.
const STALE_TEMP: Duration = Duration::from_secs(600);

/// One spool entry as read: its file name and contents, or why it could not be used.
pub struct Raw {
    pub name: OsString,
    pub contents: Result<Vec<u8>, String>,
}

/// The open, checked spool directory.
pub struct Spool {
    path: PathBuf,
    dir: File,
    owner: u32,
}

/// Creates `loopcheck/spool` for `user` (mode 0700) if missing. The parent is created by
/// [`super::store::ensure_dir`].
pub fn ensure(home: &Path, user: &User) -> Result<bool, LearnError> {
    super::store::ensure_dir(home)?;
    let path = home.join(SPOOL);
    match fs::symlink_metadata(&path) {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let io_err = |e| LearnError::io(&path, e);
            match fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
                Err(e) => return Err(io_err(e)),
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
            std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).map_err(io_err)?;
            Ok(true)
        }
        Err(e) => Err(LearnError::io(&path, e)),
    }
}

impl Spool {
    /// Opens the spool if it is safe to read: `loopcheck/` owned by root and writable only by
    /// it, the spool a real directory writable only by its owner (`user`, when known). None if
    /// it does not exist (learning is off).
    pub fn open(home: &Path, user: Option<&User>) -> Result<Option<Spool>, LearnError> {
        let path = home.join(SPOOL);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LearnError::io(&path, e)),
            Ok(_) => {}
        }
        super::check_private(&home.join(ipme::learn::DIR), Some(0))?;
        let meta = super::check_private(&path, user.map(|u| u.uid))?;
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| LearnError::io(&path, io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: open(2) on a NUL-terminated path; the result is checked.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(LearnError::io(&path, io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let dir = unsafe { File::from_raw_fd(fd) };
        // The directory opened is the one checked (no swap in between).
        let opened = dir.metadata().map_err(|e| LearnError::io(&path, e))?;
        if opened.ino() != meta.ino() || opened.dev() != meta.dev() {
            return Err(LearnError::Unsafe {
                path,
                why: "replaced while being opened".into(),
            });
        }
        Ok(Some(Spool {
            path,
            dir,
            owner: meta.uid(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entries waiting (not the writers' temporary `.NAME` files).
    pub fn names(&self) -> Result<Vec<OsString>, LearnError> {
        let rd = fs::read_dir(&self.path).map_err(|e| LearnError::io(&self.path, e))?;
        let mut names = Vec::new();
        for e in rd {
            let e = e.map_err(|e| LearnError::io(&self.path, e))?;
            let name = e.file_name();
            if name.as_bytes().first() == Some(&b'.') {
                self.remove_if_stale(&name);
                continue;
            }
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    /// Reads the entries `names`. Beyond [`MAX_LEARNED`] at once it is a flood, not a loop:
    /// none is read, each is rejected.
    pub fn read_all(&self, names: &[OsString]) -> Vec<Raw> {
        let flood = names.len() > MAX_LEARNED;
        names
            .iter()
            .map(|name| Raw {
                name: name.clone(),
                contents: if flood {
                    Err(format!(
                        "one of {} entries at once (at most {MAX_LEARNED}): a flood, not a loop",
                        names.len()
                    ))
                } else {
                    self.read(name)
                },
            })
            .collect()
    }

    /// Removes the handled entries.
    pub fn remove_all(&self, names: &[OsString]) {
        for n in names {
            self.remove(n);
        }
    }

    fn read(&self, name: &OsStr) -> Result<Vec<u8>, String> {
        let c = CString::new(name.as_bytes()).map_err(|_| "bad file name".to_string())?;
        // SAFETY: openat on our directory descriptor and a NUL-terminated name; checked.
        // O_NONBLOCK: a FIFO must not hang the daemon; O_NOFOLLOW: no links out of the spool.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::ELOOP) {
                "a symbolic link, not a file".to_string()
            } else {
                format!("cannot open: {e}")
            });
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        let meta = f.metadata().map_err(|e| format!("cannot stat: {e}"))?;
        if !meta.file_type().is_file() {
            return Err("not a regular file".to_string());
        }
        if meta.uid() != self.owner {
            return Err(format!(
                "owned by uid {}, not by the spool's owner (uid {})",
                meta.uid(),
                self.owner
            ));
        }
        let mut bytes = Vec::new();
        f.take(MAX_ENTRY_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read: {e}"))?;
        Ok(bytes)
    }

    fn remove(&self, name: &OsStr) {
        let Ok(c) = CString::new(name.as_bytes()) else {
            return;
        };
        // SAFETY: unlinkat on our directory descriptor and a NUL-terminated name.
        let r = unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), 0) };
        if r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EISDIR) {
            // SAFETY: as above; only an empty directory goes.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) };
        }
    }

    fn remove_if_stale(&self, name: &OsStr) {
        let Ok(meta) = fs::symlink_metadata(self.path.join(name)) else {
            return;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > STALE_TEMP);
        if old {
            self.remove(name);
        }
    }
}
