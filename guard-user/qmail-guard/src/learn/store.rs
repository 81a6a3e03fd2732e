//! Writing the learned store (`loopcheck/learned`): under an flock of `loopcheck/`, replaced
//! atomically (temporary file, fsync, rename, fsync of the directory), so a reader or a crash
//! never sees half a file and two writers (the daemon, `sync`, `forget`) never lose each
//! other's changes.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ipme::learn::{DIR, STORE, Store};

use super::LearnError;

/// Holds `loopcheck/`'s lock while a store is read, changed and written.
pub struct Locked {
    dir: File,
    home: PathBuf,
    pub store: Store,
}

/// Creates `loopcheck/` (root, 0755) if missing and refuses one that others could write.
pub fn ensure_dir(home: &Path) -> Result<PathBuf, LearnError> {
    let dir = home.join(DIR);
    match fs::symlink_metadata(&dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(&dir)
                .or_else(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| LearnError::io(&dir, e))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .map_err(|e| LearnError::io(&dir, e))?;
        }
        Err(e) => return Err(LearnError::io(&dir, e)),
    }
    super::check_private(&dir, Some(0))?;
    Ok(dir)
}

/// Locks `loopcheck/` and reads the store; None when there is no `loopcheck/` (nothing was
/// ever learned).
pub fn lock(home: &Path) -> Result<Option<Locked>, LearnError> {
    let dir_path = home.join(DIR);
    if !dir_path.exists() {
        return Ok(None);
    }
    super::check_private(&dir_path, Some(0))?;
    let dir = File::open(&dir_path).map_err(|e| LearnError::io(&dir_path, e))?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(LearnError::io(&dir_path, e));
        }
    }
    let store = Store::read(home)?;
    Ok(Some(Locked {
        dir,
        home: home.to_path_buf(),
        store,
    }))
}

impl Locked {
    /// Replaces the store file with the current contents.
    pub fn write(&self) -> Result<(), LearnError> {
        let path = self.home.join(STORE);
        let tmp = self.home.join(DIR).join(".learned.tmp");
        let io_err = |e| LearnError::io(&path, e);
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io_err)?;
        f.write_all(self.store.render().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_err)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err)?;
        // The rename itself must survive a crash too.
        self.dir.sync_all().map_err(io_err)
    }
}
