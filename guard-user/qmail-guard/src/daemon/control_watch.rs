//! Changes of `control/moreipme` and `control/notipme`, seen through inotify on the control
//! directory (not the files): that catches in-place edits (close after write) as well as the
//! usual atomic replacement by rename, which a watch on the file itself would lose.
use std::{
    io,
    path::{Path, PathBuf},
};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::io::unix::AsyncFd;

use super::fd::register;

use ipme::ControlKind;

/// The files whose changes matter (names inside the control directory).
fn watched_name(name: &std::ffi::OsStr) -> bool {
    [ControlKind::MoreIpme, ControlKind::NotIpme]
        .iter()
        .any(|k| Path::new(k.file()).file_name() == Some(name))
}

/// What a drain of the watch found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ControlNews {
    /// A control file was written and closed, renamed into place, removed or renamed away,
    /// or the directory itself changed: recompute now.
    pub changed: bool,
    /// A control file was created and may still be being written: recompute shortly (its
    /// close-after-write usually comes first and wins).
    pub created: bool,
}

enum Watching {
    /// The control directory itself.
    Control(WatchDescriptor),
    /// The qmail home, waiting for `control` to appear.
    Home(WatchDescriptor),
    Nothing,
}

pub struct ControlWatch {
    fd: AsyncFd<Inotify>,
    home: PathBuf,
    watching: Watching,
    buf: Vec<u8>,
}

impl ControlWatch {
    pub fn new(qmail_home: &Path) -> io::Result<Self> {
        let mut w = ControlWatch {
            fd: register(Inotify::init()?)?,
            home: qmail_home.to_path_buf(),
            watching: Watching::Nothing,
            buf: vec![0; 16 * 1024],
        };
        w.ensure();
        Ok(w)
    }

    fn control_dir(&self) -> PathBuf {
        self.home.join("control")
    }

    /// Whether the control directory itself is watched (else changes are only picked up by
    /// the periodic resync until it appears).
    pub fn watching_control(&self) -> bool {
        matches!(self.watching, Watching::Control(_))
    }

    /// (Re)establishes the watch on the control directory, or on the qmail home until the
    /// control directory exists. Returns true if the control directory just became watched.
    pub fn ensure(&mut self) -> bool {
        if self.watching_control() {
            return false;
        }
        let control = self.control_dir();
        let mut watches = self.fd.get_ref().watches();
        // Symlinked control directories (/var/qmail/control -> /etc/qmail) are followed.
        let mask = WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::CREATE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::ONLYDIR;
        if let Ok(wd) = watches.add(&control, mask) {
            if let Watching::Home(old) =
                std::mem::replace(&mut self.watching, Watching::Control(wd))
            {
                let _ = watches.remove(old);
            }
            return true;
        }
        if matches!(self.watching, Watching::Nothing) {
            let mask = WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR;
            if let Ok(wd) = watches.add(&self.home, mask) {
                self.watching = Watching::Home(wd);
            }
        }
        false
    }

    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Reads every queued event without blocking.
    pub fn drain(&mut self) -> io::Result<ControlNews> {
        let mut news = ControlNews::default();
        let mut lost_dir = false;
        loop {
            let control_wd = match &self.watching {
                Watching::Control(wd) => Some(wd.clone()),
                _ => None,
            };
            let events = match self.fd.get_mut().read_events(&mut self.buf) {
                Ok(ev) => ev,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut any = false;
            for ev in events {
                any = true;
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    news.changed = true;
                    continue;
                }
                let on_control = control_wd.as_ref() == Some(&ev.wd);
                if on_control {
                    if ev.mask.intersects(
                        EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED,
                    ) {
                        // The directory went away (or was replaced): its files are now missing.
                        lost_dir = true;
                        news.changed = true;
                    } else if ev.name.is_some_and(watched_name) {
                        if ev.mask.contains(EventMask::CREATE) {
                            news.created = true;
                        } else {
                            news.changed = true;
                        }
                    }
                } else if ev.name.is_some_and(|n| n == "control") {
                    // The control directory appeared in the qmail home.
                    news.changed = true;
                }
            }
            if !any {
                break;
            }
        }
        if lost_dir
            && let Watching::Control(wd) = std::mem::replace(&mut self.watching, Watching::Nothing)
        {
            let _ = self.fd.get_ref().watches().remove(wd);
        }
        if self.ensure() {
            news.changed = true;
        }
        Ok(news)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn home() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let i = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("qg-ctlwatch-{}-{i}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test(flavor = "current_thread")]
    async fn in_place_edit_rename_and_other_files() {
        let h = home();
        fs::create_dir(h.join("control")).unwrap();
        let mut w = ControlWatch::new(&h).unwrap();
        assert!(w.watching_control());
        assert_eq!(w.drain().unwrap(), ControlNews::default());

        fs::write(h.join("control/me"), "x").unwrap();
        assert!(
            !w.drain().unwrap().changed,
            "other control files do not matter"
        );

        fs::write(h.join("control/moreipme"), "192.0.2.1\n").unwrap();
        let n = w.drain().unwrap();
        assert!(n.changed && n.created, "{n:?}");

        fs::write(h.join("control/.moreipme.tmp"), "192.0.2.2\n").unwrap();
        let _ = w.drain().unwrap();
        fs::rename(h.join("control/.moreipme.tmp"), h.join("control/notipme")).unwrap();
        assert!(w.drain().unwrap().changed);

        fs::remove_file(h.join("control/notipme")).unwrap();
        assert!(w.drain().unwrap().changed);
        let _ = fs::remove_dir_all(&h);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn control_dir_appearing_later() {
        let h = home();
        let mut w = ControlWatch::new(&h).unwrap();
        assert!(!w.watching_control());
        fs::create_dir(h.join("control")).unwrap();
        assert!(w.drain().unwrap().changed);
        assert!(w.watching_control());
        fs::write(h.join("control/moreipme"), "192.0.2.1\n").unwrap();
        assert!(w.drain().unwrap().changed);
        let _ = fs::remove_dir_all(&h);
    }
}
