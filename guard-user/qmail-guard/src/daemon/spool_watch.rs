//! Changes of the learning spool and the learned store, through inotify: an entry renamed
//! into (or written and closed in) `loopcheck/spool`, and `loopcheck/learned` replaced (by
//! `qmail-guard forget` or `sync`). Watches are (re)made by [`SpoolWatch::ensure`], because
//! the directories may appear after the daemon started.
use std::{
    io,
    path::{Path, PathBuf},
};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use ipme::learn::{DIR, SPOOL, STORE};
use tokio::io::unix::AsyncFd;

use super::fd::register;

/// What a drain found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpoolNews {
    /// Entries arrived in the spool: sweep it.
    pub spool: bool,
    /// The store was replaced or removed: recompute.
    pub store: bool,
}

pub struct SpoolWatch {
    fd: AsyncFd<Inotify>,
    home: PathBuf,
    spool: Option<WatchDescriptor>,
    dir: Option<WatchDescriptor>,
    buf: Vec<u8>,
}

fn store_name() -> &'static std::ffi::OsStr {
    Path::new(STORE).file_name().unwrap_or_default()
}

impl SpoolWatch {
    pub fn new(home: &Path) -> io::Result<Self> {
        let mut w = SpoolWatch {
            fd: register(Inotify::init()?)?,
            home: home.to_path_buf(),
            spool: None,
            dir: None,
            buf: vec![0; 64 * 1024],
        };
        w.ensure();
        Ok(w)
    }

    /// Adds the watches that are missing; true if the spool just became watched (entries may
    /// have arrived unseen: sweep).
    pub fn ensure(&mut self) -> bool {
        let mut watches = self.fd.get_ref().watches();
        if self.dir.is_none() {
            let mask = WatchMask::MOVED_TO
                | WatchMask::CLOSE_WRITE
                | WatchMask::DELETE
                | WatchMask::CREATE
                | WatchMask::DELETE_SELF
                | WatchMask::ONLYDIR
                | WatchMask::DONT_FOLLOW;
            self.dir = watches.add(self.home.join(DIR), mask).ok();
        }
        if self.spool.is_none() {
            // Entries arrive by rename (qmail-remote); CLOSE_WRITE also catches a writer that
            // writes in place.
            let mask = WatchMask::MOVED_TO
                | WatchMask::CLOSE_WRITE
                | WatchMask::DELETE_SELF
                | WatchMask::ONLYDIR
                | WatchMask::DONT_FOLLOW;
            self.spool = watches.add(self.home.join(SPOOL), mask).ok();
            return self.spool.is_some();
        }
        false
    }

    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Reads every queued event without blocking.
    pub fn drain(&mut self) -> io::Result<SpoolNews> {
        let mut news = SpoolNews::default();
        loop {
            let events = match self.fd.get_mut().read_events(&mut self.buf) {
                Ok(ev) => ev,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut any = false;
            let mut lost = (false, false);
            for ev in events {
                any = true;
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    news = SpoolNews {
                        spool: true,
                        store: true,
                    };
                    continue;
                }
                let gone = ev
                    .mask
                    .intersects(EventMask::DELETE_SELF | EventMask::IGNORED);
                if Some(&ev.wd) == self.spool.as_ref() {
                    if gone {
                        lost.0 = true;
                    } else if ev
                        .name
                        .is_some_and(|n| !n.as_encoded_bytes().starts_with(b"."))
                    {
                        news.spool = true;
                    }
                } else if Some(&ev.wd) == self.dir.as_ref() {
                    if gone {
                        lost.1 = true;
                        news.store = true;
                    } else if ev.name == Some(store_name()) {
                        news.store = true;
                    } else if ev.name.is_some_and(|n| n == "spool") {
                        // The spool was (re)made: watch it and sweep.
                        news.spool = true;
                        lost.0 = true;
                    }
                }
            }
            if lost.0
                && let Some(wd) = self.spool.take()
            {
                let _ = self.fd.get_ref().watches().remove(wd);
            }
            if lost.1
                && let Some(wd) = self.dir.take()
            {
                let _ = self.fd.get_ref().watches().remove(wd);
            }
            if !any {
                break;
            }
        }
        if self.ensure() {
            news.spool = true;
        }
        Ok(news)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[tokio::test(flavor = "current_thread")]
    async fn entries_and_store_changes() {
        let h = std::env::temp_dir().join(format!("qg-spoolwatch-{}", std::process::id()));
        let _ = fs::remove_dir_all(&h);
        fs::create_dir_all(&h).unwrap();
        let mut w = SpoolWatch::new(&h).unwrap();
        assert_eq!(w.drain().unwrap(), SpoolNews::default());
        fs::create_dir_all(h.join(SPOOL)).unwrap();
        assert!(w.drain().unwrap().spool, "the directories appeared");
        fs::write(h.join(SPOOL).join(".123"), "198.51.100.25\n").unwrap();
        assert_eq!(w.drain().unwrap(), SpoolNews::default(), "a temporary file");
        fs::rename(
            h.join(SPOOL).join(".123"),
            h.join(SPOOL).join("198.51.100.25"),
        )
        .unwrap();
        assert_eq!(
            w.drain().unwrap(),
            SpoolNews {
                spool: true,
                store: false
            }
        );
        fs::write(h.join(DIR).join(".learned.tmp"), "").unwrap();
        fs::rename(h.join(DIR).join(".learned.tmp"), h.join(STORE)).unwrap();
        assert!(w.drain().unwrap().store);
        let _ = fs::remove_dir_all(&h);
    }
}
