//! Replacement of the pinned programs by another process, through inotify on the pin
//! directory's `progs/`: an `attach` or `run` of another build re-pins its programs there
//! (pinned under a temporary name, then renamed over the old pin). Their refusal log is a new
//! ring buffer, so the daemon must open a reader on it; without this watch it would keep
//! reading the old programs' ring, which nothing writes any more, until the next full resync.
//! The watch is (re)made by [`ProgWatch::ensure`], because `progs/` may not exist yet or may
//! be removed and made again (`detach --all`, then `attach`).
use std::{io, path::PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::io::unix::AsyncFd;

use super::fd::register;

pub struct ProgWatch {
    fd: AsyncFd<Inotify>,
    dir: PathBuf,
    wd: Option<WatchDescriptor>,
    buf: Vec<u8>,
}

impl ProgWatch {
    /// Watches `dir` (the pin directory's `progs/`) once it exists.
    pub fn new(dir: PathBuf) -> io::Result<Self> {
        let mut w = ProgWatch {
            fd: register(Inotify::init()?)?,
            dir,
            wd: None,
            buf: vec![0; 4096],
        };
        w.ensure();
        Ok(w)
    }

    /// Adds the watch if it is missing; true if it was just added (a replacement may have
    /// happened unseen: check the programs).
    pub fn ensure(&mut self) -> bool {
        if self.wd.is_some() {
            return false;
        }
        let mask = WatchMask::MOVED_TO
            | WatchMask::CREATE
            | WatchMask::DELETE_SELF
            | WatchMask::ONLYDIR
            | WatchMask::DONT_FOLLOW;
        self.wd = self.fd.get_ref().watches().add(&self.dir, mask).ok();
        self.wd.is_some()
    }

    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Reads every queued event without blocking; true if a program pin may have changed.
    pub fn drain(&mut self) -> io::Result<bool> {
        let mut changed = false;
        loop {
            let events = match self.fd.get_mut().read_events(&mut self.buf) {
                Ok(ev) => ev,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut any = false;
            let mut lost = false;
            for ev in events {
                any = true;
                changed = true;
                if ev
                    .mask
                    .intersects(EventMask::DELETE_SELF | EventMask::IGNORED)
                {
                    lost = true;
                }
            }
            if lost && let Some(wd) = self.wd.take() {
                let _ = self.fd.get_ref().watches().remove(wd);
            }
            if !any {
                break;
            }
        }
        if self.ensure() {
            changed = true;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[tokio::test(flavor = "current_thread")]
    async fn sees_a_pin_renamed_in_and_the_directory_made_again() {
        let root = std::env::temp_dir().join(format!("qg-progwatch-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let dir = root.join("progs");
        let mut w = ProgWatch::new(dir.clone()).unwrap();
        assert!(!w.drain().unwrap(), "nothing there yet");
        fs::create_dir(&dir).unwrap();
        assert!(w.drain().unwrap(), "the directory appeared");
        assert!(!w.drain().unwrap(), "no news");
        fs::write(dir.join("connect4_new"), "").unwrap();
        fs::rename(dir.join("connect4_new"), dir.join("connect4")).unwrap();
        assert!(w.drain().unwrap(), "a pin renamed over the old one");
        fs::remove_dir_all(&dir).unwrap();
        assert!(w.drain().unwrap());
        fs::create_dir(&dir).unwrap();
        assert!(w.drain().unwrap(), "watched again after being made again");
        fs::write(dir.join("connect6"), "").unwrap();
        assert!(w.drain().unwrap());
        let _ = fs::remove_dir_all(&root);
    }
}
