//! The greeting check: is the SMTP server we reached our own?
//!
//! Our qmail-smtpd greets with `control/smtpgreeting` (else `control/me`) and answers EHLO/HELO
//! with the same text. If the peer's 220 greeting or its EHLO/HELO reply names that host, the
//! address leads back to this host (a NAT or forwarder nobody listed in moreipme): the session
//! sends QUIT before MAIL FROM, the address counts as "me" in qmail's loop rule (like the
//! kernel guard's ELOOP), and it is recorded in qmail-guard's spool so the guard refuses it
//! from then on. `control/loopcheck` containing `0` turns the check off (a cluster whose nodes
//! share one name).
//!
//! Everything is best effort: a missing or unreadable file only turns the check off, and a
//! spool that cannot be written only means the loop is detected again next time.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ipme::learn::{SPOOL, spool_entry, spool_file_name};

use super::control::{read_int, read_line};

/// The name this host's own SMTP server greets with, to compare peers against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopCheck {
    name: Vec<u8>,
}

/// The session met our own greeting: nothing was sent after EHLO/HELO, QUIT was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Looped {
    /// The host name the peer greeted with.
    pub name: Vec<u8>,
}

impl LoopCheck {
    /// Reads the check's settings from `base/control`; None if it is off or there is no name.
    pub fn load(base: &Path) -> Option<LoopCheck> {
        if read_int(base, "control/loopcheck", 1).ok()? == 0 {
            return None;
        }
        let greeting = read_line(base, "control/smtpgreeting").ok()?;
        let line = match greeting {
            Some(g) => g,
            None => read_line(base, "control/me").ok()??,
        };
        let name = first_word(&line);
        (!name.is_empty()).then(|| LoopCheck {
            name: name.to_vec(),
        })
    }

    /// A check for `name` (tests).
    pub fn new(name: &[u8]) -> LoopCheck {
        LoopCheck {
            name: name.to_vec(),
        }
    }

    /// Whether a reply's text (CRs removed: `220 name ESMTP…`, or a multi-line EHLO reply)
    /// names our host: the first word after the code on its first line, compared ASCII
    /// case-insensitively (DNS names are). The name as the peer wrote it, if so.
    pub fn matched(&self, reply: &[u8]) -> Option<Vec<u8>> {
        let first = reply.split(|&b| b == b'\n').next().unwrap_or_default();
        let name = first_word(first.get(4..).unwrap_or_default());
        // A trailing dot (an absolute name) is the same host.
        let trim = |n: &[u8]| n.strip_suffix(b".").unwrap_or(n).to_vec();
        (!name.is_empty() && trim(name).eq_ignore_ascii_case(&trim(&self.name)))
            .then(|| name.to_vec())
    }

    /// Whether a reply names our host (see [`LoopCheck::matched`]).
    pub fn is_me(&self, reply: &[u8]) -> bool {
        self.matched(reply).is_some()
    }
}

fn first_word(s: &[u8]) -> &[u8] {
    let s = s.trim_ascii_start();
    let end = s
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(s.len());
    &s[..end]
}

/// Records `ip` in qmail-guard's spool (`loopcheck/spool/ADDRESS`), relative to `base`:
/// written under a temporary name and renamed, so the guard never reads half an entry. Does
/// nothing if the spool does not exist (no guard) or cannot be written.
pub fn learn(base: &Path, ip: IpAddr, name: &[u8]) {
    let spool = base.join(SPOOL);
    let tmp = spool.join(format!(".{}", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&spool_entry(ip, name)));
    match written {
        Ok(()) => {
            if fs::rename(&tmp, spool.join(spool_file_name(ip))).is_err() {
                let _ = fs::remove_file(&tmp);
            }
        }
        Err(_) => {
            let _ = fs::remove_file(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let lc = LoopCheck::new(b"Mail.Example.TEST");
        assert!(lc.is_me(b"220 mail.example.test ESMTP\n"));
        assert!(lc.is_me(b"220-mail.example.test.\n220 more\n"));
        assert!(lc.is_me(b"250-MAIL.EXAMPLE.TEST Hello x\n250-PIPELINING\n250 8BITMIME\n"));
        assert!(lc.is_me(b"250 mail.example.test"));
        assert!(!lc.is_me(b"220 mail.example.test.evil ESMTP\n"));
        assert!(!lc.is_me(b"220 other.example.test mail.example.test\n"));
        assert!(!lc.is_me(b"220\n"));
        assert!(!lc.is_me(b""));
        assert!(!lc.is_me(b"250-other\n250 mail.example.test\n"));
    }

    fn home() -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let i = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("qr-loopcheck-{}-{i}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("control")).unwrap();
        d
    }

    #[test]
    fn settings() {
        let h = home();
        assert_eq!(LoopCheck::load(&h), None, "no name at all");
        fs::write(h.join("control/me"), "me.example.test\n").unwrap();
        assert_eq!(
            LoopCheck::load(&h),
            Some(LoopCheck::new(b"me.example.test"))
        );
        fs::write(
            h.join("control/smtpgreeting"),
            "gw.example.test ESMTP ready\n",
        )
        .unwrap();
        assert_eq!(
            LoopCheck::load(&h),
            Some(LoopCheck::new(b"gw.example.test"))
        );
        fs::write(h.join("control/loopcheck"), "1\n").unwrap();
        assert!(LoopCheck::load(&h).is_some());
        fs::write(h.join("control/loopcheck"), "0\n").unwrap();
        assert_eq!(LoopCheck::load(&h), None);
        let _ = fs::remove_dir_all(&h);
    }

    #[test]
    fn spool_entry_is_written_atomically_or_not_at_all() {
        let h = home();
        let ip: IpAddr = "198.51.100.25".parse().unwrap();
        learn(&h, ip, b"me.example.test");
        assert!(!h.join(SPOOL).exists(), "no spool: nothing is created");
        fs::create_dir_all(h.join(SPOOL)).unwrap();
        learn(&h, ip, b"me.example.test");
        learn(&h, ip, b"me.example.test");
        let names: Vec<_> = fs::read_dir(h.join(SPOOL))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["198.51.100.25"]);
        assert_eq!(
            fs::read(h.join(SPOOL).join("198.51.100.25")).unwrap(),
            b"198.51.100.25 me.example.test\n"
        );
        let _ = fs::remove_dir_all(&h);
    }
}
