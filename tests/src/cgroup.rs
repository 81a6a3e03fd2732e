//! A throw-away cgroup2 child cgroup.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::preflight;

/// A cgroup directory directly under the cgroup2 mount. Drop moves any remaining processes to
/// the parent and removes the directory.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    mount: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2 mount>/<name>`; fails the test without root or cgroup2.
    pub fn new(name: &str) -> Cgroup {
        let mount = preflight::require_cgroup2();
        let path = mount.join(name);
        fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", path.display()));
        Cgroup { path, mount }
    }

    /// The cgroup's directory (what `qmail-guard attach --cgroup` takes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id: on cgroup2 it is the inode number of the directory, which is also what
    /// the loader uses in link pin names (`links/<id>-connect4`).
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", self.path.display()))
            .ino()
    }

    /// The cgroup as it appears in /proc/PID/cgroup (`0::/name`), i.e. relative to the mount.
    pub fn proc_path(&self) -> String {
        let rel = self
            .path
            .strip_prefix(&self.mount)
            .expect("under the mount");
        format!("/{}", rel.display())
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        read_pids(&self.path.join("cgroup.procs")).unwrap_or_default()
    }
}

fn read_pids(procs: &Path) -> io::Result<Vec<u32>> {
    Ok(fs::read_to_string(procs)?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let parent = self
            .path
            .parent()
            .expect("cgroup has a parent")
            .to_path_buf();
        // A cgroup with processes cannot be removed; the leftovers (e.g. a probe still
        // running after a failed assertion) go to the parent, as systemd does.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for pid in self.pids() {
                let _ = fs::write(parent.join("cgroup.procs"), pid.to_string());
            }
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("warning: cannot remove cgroup {}: {e}", self.path.display());
                    return;
                }
                // EBUSY while an exiting process is still being released.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}
