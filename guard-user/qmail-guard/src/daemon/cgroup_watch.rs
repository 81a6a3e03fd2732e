//! Removal and re-creation of the guarded cgroups. systemd gives a restarted service a new
//! cgroup (same path, new id), and attachments do not carry over, so the daemon watches the
//! cgroup's parent directory (cgroupfs reports mkdir/rmdir to inotify) and re-attaches. If the
//! parent does not exist yet (a slice that is created with its first unit), the nearest
//! existing ancestor is watched instead.
use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::io::unix::AsyncFd;

use super::fd::register;

pub struct CgroupWatch {
    fd: AsyncFd<Inotify>,
    targets: Vec<PathBuf>,
    /// Watched directory of each watch descriptor.
    watches: BTreeMap<WatchDescriptor, PathBuf>,
    buf: Vec<u8>,
}

/// The deepest existing proper ancestor of `target` (what to watch for its creation).
fn watch_dir(target: &Path) -> Option<PathBuf> {
    target
        .ancestors()
        .skip(1)
        .find(|a| a.is_dir())
        .map(Path::to_path_buf)
}

impl CgroupWatch {
    pub fn new(targets: Vec<PathBuf>) -> io::Result<Self> {
        let mut w = CgroupWatch {
            fd: register(Inotify::init()?)?,
            targets,
            watches: BTreeMap::new(),
            buf: vec![0; 16 * 1024],
        };
        w.rewatch();
        Ok(w)
    }

    /// Replaces the target list (units re-resolved) and re-arms the watches.
    pub fn set_targets(&mut self, targets: Vec<PathBuf>) {
        if targets != self.targets {
            self.targets = targets;
            self.rewatch();
        }
    }

    /// Points one watch at the nearest existing ancestor of each target.
    fn rewatch(&mut self) {
        let wanted: Vec<PathBuf> = self.targets.iter().filter_map(|t| watch_dir(t)).collect();
        let mut watches = self.fd.get_ref().watches();
        let stale: Vec<WatchDescriptor> = self
            .watches
            .iter()
            .filter(|(_, dir)| !wanted.contains(dir))
            .map(|(wd, _)| wd.clone())
            .collect();
        for wd in stale {
            self.watches.remove(&wd);
            let _ = watches.remove(wd);
        }
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE_SELF
            | WatchMask::ONLYDIR;
        for dir in wanted {
            if self.watches.values().any(|d| *d == dir) {
                continue;
            }
            // Failure (e.g. the directory vanished meanwhile) leaves it to the periodic resync.
            if let Ok(wd) = watches.add(&dir, mask) {
                self.watches.insert(wd, dir);
            }
        }
    }

    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Reads every queued event without blocking; true if a target (or a directory on the
    /// way to one) was created or removed.
    pub fn drain(&mut self) -> io::Result<bool> {
        let mut changed = false;
        let mut rearm = false;
        loop {
            let events = match self.fd.get_mut().read_events(&mut self.buf) {
                Ok(ev) => ev,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut any = false;
            for ev in events {
                any = true;
                if ev
                    .mask
                    .intersects(EventMask::Q_OVERFLOW | EventMask::DELETE_SELF | EventMask::IGNORED)
                {
                    changed = true;
                    rearm = true;
                    continue;
                }
                let (Some(dir), Some(name)) = (self.watches.get(&ev.wd), ev.name) else {
                    continue;
                };
                let path = dir.join(name);
                // The target itself, or an ancestor of it (a slice appearing or vanishing).
                if self.targets.iter().any(|t| t.starts_with(&path)) {
                    changed = true;
                    if !self.targets.contains(&path) {
                        rearm = true;
                    }
                }
            }
            if !any {
                break;
            }
        }
        if rearm {
            // Forget descriptors the kernel dropped, then watch the new nearest ancestors.
            self.watches.retain(|_, dir| dir.is_dir());
            self.rewatch();
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[tokio::test(flavor = "current_thread")]
    async fn sees_target_and_ancestor_creation() {
        let root = std::env::temp_dir().join(format!("qg-cgwatch-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let target = root.join("a.slice/svc");
        let mut w = CgroupWatch::new(vec![target.clone()]).unwrap();
        assert!(!w.drain().unwrap());
        fs::create_dir(root.join("other")).unwrap();
        assert!(!w.drain().unwrap(), "unrelated directory");
        fs::create_dir(root.join("a.slice")).unwrap();
        assert!(w.drain().unwrap(), "ancestor created");
        fs::create_dir(&target).unwrap();
        assert!(w.drain().unwrap(), "target created");
        fs::remove_dir(&target).unwrap();
        assert!(w.drain().unwrap(), "target removed");
        fs::create_dir(&target).unwrap();
        assert!(w.drain().unwrap(), "target re-created");
        let _ = fs::remove_dir_all(&root);
    }
}
