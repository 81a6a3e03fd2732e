//! Learning addresses from the loops qmail-remote detects (formats and validation:
//! `ipme::learn`): the spool qmail-remote writes into, the store qmail-guard keeps, and the
//! three operations on them — take the spool into the store ([`sweep`]), drop what expired
//! ([`expire`]) and [`forget`] one address. The daemon and `qmail-guard sync` sweep;
//! `qmail-guard forget` forgets. Callers log the returned events, one line each.
pub mod spool;
pub mod store;

use std::ffi::CString;
use std::fs::{self, Metadata};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ipme::learn::{Learned, Learnt, SPOOL, parse_spool_entry, validate};
use ipme::{Entry, IpmeError};

pub use spool::Spool;

/// The account qmail-remote runs as in a stock installation.
pub const DEFAULT_USER: &str = "qmailr";

#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: io::Error },
    #[error("{} is not safe to learn from: {why}; learning is off until it is fixed", path.display())]
    Unsafe { path: PathBuf, why: String },
    #[error(transparent)]
    Ipme(#[from] IpmeError),
    #[error("no user {0} to own the spool (the user qmail-remote runs as); give --learn-user")]
    NoUser(String),
}

impl LearnError {
    pub(crate) fn io(path: &Path, err: io::Error) -> LearnError {
        LearnError::Io {
            path: path.to_path_buf(),
            err,
        }
    }
}

/// The user qmail-remote runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl User {
    /// Looks the user up in the password database.
    pub fn lookup(name: &str) -> Result<User, LearnError> {
        let no = || LearnError::NoUser(name.to_string());
        let c = CString::new(name).map_err(|_| no())?;
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: an all-zero passwd is a valid out-parameter.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf outlives pw's string fields, which
        // are not used.
        let r = unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if r != 0 || result.is_null() {
            return Err(no());
        }
        Ok(User {
            name: name.to_string(),
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        })
    }
}

/// A directory others must not be able to write into: a real directory (not a link), not
/// writable by group or others, owned by `owner` when given.
pub(crate) fn check_private(path: &Path, owner: Option<u32>) -> Result<Metadata, LearnError> {
    let meta = fs::symlink_metadata(path).map_err(|e| LearnError::io(path, e))?;
    let bad = |why: String| LearnError::Unsafe {
        path: path.to_path_buf(),
        why,
    };
    if meta.file_type().is_symlink() {
        return Err(bad("a symbolic link; make it a directory".into()));
    }
    if !meta.is_dir() {
        return Err(bad("not a directory".into()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(bad(format!(
            "writable by group or others (mode {mode:04o}); chmod go-w it"
        )));
    }
    if let Some(uid) = owner
        && meta.uid() != uid
    {
        return Err(bad(format!(
            "owned by uid {}, expected uid {uid}; chown it",
            meta.uid()
        )));
    }
    Ok(meta)
}

/// What happened to one spool entry or learned address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Added (`new`) or seen again.
    Learned {
        addr: IpAddr,
        name: Option<String>,
        new: bool,
        learned: Learned,
    },
    /// A spool entry not learned; `file` is its name, escaped for the log.
    Rejected { file: String, reason: String },
    /// Not seen again before its expiry.
    Expired { addr: IpAddr, learned: Learned },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Learned {
                addr,
                name,
                new,
                learned,
            } => {
                let what = if *new { "learned" } else { "seen again" };
                write!(f, "{what}: {addr} is this host")?;
                if let Some(n) = name {
                    write!(f, " (its SMTP server greets as {n})")?;
                }
                write!(f, "; {learned}")
            }
            Event::Rejected { file, reason } => {
                write!(f, "{SPOOL}/{file} rejected: {reason}")
            }
            Event::Expired { addr, learned } => write!(
                f,
                "forgot {addr}: not seen since {}",
                ipme::learn::rfc3339(learned.at)
            ),
        }
    }
}

/// A sweep of the spool, not yet committed: the updated store can be enforced first (the
/// daemon puts it into the maps at once), then [`Sweep::commit`] writes it and removes the
/// handled spool entries. Holds the store's lock until committed or dropped; dropped without
/// commit, nothing changes on disk and the entries are read again next time.
pub struct Sweep {
    pub events: Vec<Event>,
    pending: Option<(store::Locked, Spool, Vec<std::ffi::OsString>)>,
}

impl Sweep {
    fn nothing() -> Sweep {
        Sweep {
            events: Vec::new(),
            pending: None,
        }
    }

    /// Whether the store changes (something learned, refreshed or expired).
    pub fn changed(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, Event::Learned { .. } | Event::Expired { .. }))
    }

    /// The store as it will be written, if it changes.
    pub fn store(&self) -> Option<&ipme::learn::Store> {
        match &self.pending {
            Some((locked, ..)) if self.changed() => Some(&locked.store),
            _ => None,
        }
    }

    /// Writes the store (if it changed), then removes the handled entries: a crash before the
    /// write leaves them to be read again.
    pub fn commit(self) -> Result<(), LearnError> {
        let changed = self.changed();
        if let Some((locked, spool, names)) = self.pending {
            if changed {
                locked.write()?;
            }
            spool.remove_all(&names);
        }
        Ok(())
    }
}

/// Takes every spool entry into the store: validated against the built-ins and `notipme`
/// (the entries of the current set), learned or refreshed with `ttl` seconds to live.
/// Expired entries are dropped on the way. One event per entry (and per expiry). No spool:
/// nothing to do.
pub fn sweep<'a>(
    home: &Path,
    user: Option<&User>,
    notipme: impl IntoIterator<Item = &'a Entry> + Clone,
    now: u64,
    ttl: u64,
) -> Result<Sweep, LearnError> {
    let Some(spool) = Spool::open(home, user)? else {
        return Ok(Sweep::nothing());
    };
    let names = spool.names()?;
    if names.is_empty() {
        return Ok(Sweep::nothing());
    }
    let Some(mut locked) = store::lock(home)? else {
        return Ok(Sweep::nothing());
    };
    let mut events = expired(&mut locked.store, now);
    for raw in spool.read_all(&names) {
        let file = format!("{:?}", raw.name.to_string_lossy());
        let file = file.trim_matches('"').to_string();
        let outcome = raw.contents.and_then(|bytes| {
            let e = parse_spool_entry(&bytes).map_err(|r| r.to_string())?;
            let addr = validate(e.addr, notipme.clone()).map_err(|r| r.to_string())?;
            let new = locked
                .store
                .learn(addr, now, ttl)
                .map_err(|r| r.to_string())?;
            Ok(Event::Learned {
                addr,
                name: e.name,
                new: new == Learnt::New,
                learned: locked.store.get(addr).unwrap_or(Learned {
                    at: now,
                    expires: now,
                }),
            })
        });
        events.push(outcome.unwrap_or_else(|reason| Event::Rejected { file, reason }));
    }
    Ok(Sweep {
        events,
        pending: Some((locked, spool, names)),
    })
}

/// Drops expired addresses from the store (rewriting it only if one expired).
pub fn expire(home: &Path, now: u64) -> Result<Vec<Event>, LearnError> {
    // Cheap check first: most calls find nothing to do and need no lock.
    let current = ipme::learn::Store::read(home)?;
    if current.next_expiry().is_none_or(|t| t > now) {
        return Ok(Vec::new());
    }
    let Some(mut locked) = store::lock(home)? else {
        return Ok(Vec::new());
    };
    let events = expired(&mut locked.store, now);
    if !events.is_empty() {
        locked.write()?;
    }
    Ok(events)
}

fn expired(store: &mut ipme::learn::Store, now: u64) -> Vec<Event> {
    let before: Vec<(IpAddr, Learned)> = store.iter().collect();
    let gone = store.expire(now);
    before
        .into_iter()
        .filter(|(a, _)| gone.contains(a))
        .map(|(addr, learned)| Event::Expired { addr, learned })
        .collect()
}

/// Removes `addr` from the store; what was forgotten, or None if it was not learned.
pub fn forget(home: &Path, addr: IpAddr) -> Result<Option<Learned>, LearnError> {
    let Some(mut locked) = store::lock(home)? else {
        return Ok(None);
    };
    let Some(l) = locked.store.get(addr) else {
        return Ok(None);
    };
    locked.store.forget(addr);
    locked.write()?;
    Ok(Some(l))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipme::Source;
    use ipme::learn::{DIR, STORE, Store};
    use std::os::unix::fs::symlink;

    const TTL: u64 = 1000;

    /// A qmail home with the spool made for `nobody` (tests run as root).
    fn home() -> (PathBuf, User) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let i = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("qg-learn-{}-{i}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let user = User {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
        };
        assert!(spool::ensure(&d, &user).unwrap(), "created");
        assert!(!spool::ensure(&d, &user).unwrap(), "exists");
        (d, user)
    }

    /// Writes a spool entry as the qmail-remote user would (owned by it).
    fn put(home: &Path, name: &str, contents: &[u8]) {
        let p = home.join(SPOOL).join(name);
        fs::write(&p, contents).unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }

    fn sweep_now(h: &Path, user: &User, nots: &[Entry], now: u64) -> Vec<Event> {
        let s = sweep(h, Some(user), nots, now, TTL).unwrap();
        let ev = s.events.clone();
        s.commit().unwrap();
        ev
    }

    fn not(line: usize, s: &str) -> Entry {
        Entry {
            net: s.parse().unwrap(),
            source: Source::NotIpme { line },
        }
    }

    fn rejected(ev: &[Event]) -> Vec<String> {
        ev.iter()
            .filter_map(|e| match e {
                Event::Rejected { file, reason } => Some(format!("{file}: {reason}")),
                _ => None,
            })
            .collect()
    }

    fn spool_left(home: &Path) -> usize {
        fs::read_dir(home.join(SPOOL)).unwrap().count()
    }

    #[test]
    fn spool_is_private_to_its_user() {
        let (h, user) = home();
        let meta = fs::metadata(h.join(SPOOL)).unwrap();
        assert_eq!(
            (meta.uid(), meta.permissions().mode() & 0o777),
            (65534, 0o700)
        );
        let meta = fs::metadata(h.join(DIR)).unwrap();
        assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (0, 0o755));
        assert!(Spool::open(&h, Some(&user)).unwrap().is_some());
        // anything others could write is refused, and nothing is read from it
        fs::set_permissions(h.join(SPOOL), fs::Permissions::from_mode(0o733)).unwrap();
        put(&h, "198.51.100.25", b"198.51.100.25\n");
        let e = sweep(&h, Some(&user), &[], 10, TTL).err().unwrap();
        assert!(e.to_string().contains("mode 0733"), "{e}");
        assert_eq!(spool_left(&h), 1);
        fs::set_permissions(h.join(SPOOL), fs::Permissions::from_mode(0o700)).unwrap();
        let other = User {
            uid: 65533,
            ..user.clone()
        };
        assert!(matches!(
            Spool::open(&h, Some(&other)),
            Err(LearnError::Unsafe { .. })
        ));
        fs::set_permissions(h.join(DIR), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            Spool::open(&h, Some(&user)),
            Err(LearnError::Unsafe { .. })
        ));
        let _ = fs::remove_dir_all(&h);
    }

    #[test]
    fn learn_refresh_forget_expire() {
        let (h, user) = home();
        put(&h, "198.51.100.25", b"198.51.100.25 mail.example.test\n");
        put(&h, "2001:db8::25", b"2001:db8::25\n");
        put(&h, ".tmp-123", b"198.51.100.26\n");
        let ev = sweep_now(&h, &user, &[], 10);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(
            ev[0].to_string(),
            "learned: 198.51.100.25 is this host (its SMTP server greets as mail.example.test); \
             seen 1970-01-01T00:00:10Z, expires 1970-01-01T00:16:50Z"
        );
        assert_eq!(spool_left(&h), 1, "a writer's temporary file stays");
        let store = Store::read(&h).unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(
            fs::metadata(h.join(STORE)).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // seen again later: the expiry moves
        put(&h, "198.51.100.25", b"198.51.100.25\n");
        let ev = sweep_now(&h, &user, &[], 500);
        assert!(matches!(ev[0], Event::Learned { new: false, .. }), "{ev:?}");
        // the IPv6 one expires at 1010, the refreshed one lives on
        let ev = expire(&h, 1010).unwrap();
        assert_eq!(ev.len(), 1);
        assert!(
            ev[0].to_string().starts_with("forgot 2001:db8::25"),
            "{}",
            ev[0]
        );
        assert!(expire(&h, 1011).unwrap().is_empty());
        let a: IpAddr = "198.51.100.25".parse().unwrap();
        assert_eq!(forget(&h, a).unwrap().map(|l| l.at), Some(500));
        assert_eq!(forget(&h, a).unwrap(), None);
        assert!(Store::read(&h).unwrap().is_empty());
        let _ = fs::remove_dir_all(&h);
    }

    #[test]
    fn hostile_entries_are_rejected_one_line_each() {
        let (h, user) = home();
        let nots = [not(2, "203.0.113.0/24")];
        put(&h, "range", b"198.51.100.0/24\n");
        put(&h, "garbage", b"\x00\x01garbage\n");
        put(&h, "builtin", b"127.0.0.2\n");
        put(&h, "notipme", b"203.0.113.9\n");
        put(&h, "big", &[b'1'; 4096]);
        symlink("/etc/passwd", h.join(SPOOL).join("link")).unwrap();
        fs::create_dir(h.join(SPOOL).join("dir")).unwrap();
        // written by someone else (root here) into the spool
        fs::write(h.join(SPOOL).join("root-owned"), b"198.51.100.26\n").unwrap();
        let ev = sweep_now(&h, &user, &nots, 10);
        let r = rejected(&ev);
        assert_eq!(r.len(), 8, "{r:#?}");
        assert_eq!(ev.len(), 8, "nothing learned: {ev:?}");
        let has = |f: &str, why: &str| {
            assert!(
                r.iter()
                    .any(|l| l.starts_with(&format!("{f}: ")) && l.contains(why)),
                "{f} / {why}: {r:#?}"
            )
        };
        has("range", "is a range");
        has("garbage", "not an address");
        has("builtin", "built-in 127.0.0.0/8");
        has("notipme", "control/notipme:2");
        has("big", "larger than 512 bytes");
        has("link", "symbolic link");
        has("dir", "not a regular file");
        has("root-owned", "owned by uid 0");
        assert_eq!(spool_left(&h), 0, "every entry is handled once");
        assert!(Store::read(&h).unwrap().is_empty());
        assert!(!h.join(STORE).exists(), "the store is not even written");
        let _ = fs::remove_dir_all(&h);
    }

    #[test]
    fn an_uncommitted_sweep_changes_nothing_on_disk() {
        let (h, user) = home();
        put(&h, "198.51.100.25", b"198.51.100.25\n");
        let s = sweep(&h, Some(&user), &[], 10, TTL).unwrap();
        assert!(s.changed());
        assert_eq!(s.store().map(Store::len), Some(1));
        drop(s);
        assert!(Store::read(&h).unwrap().is_empty());
        assert_eq!(spool_left(&h), 1, "read again next time");
        assert_eq!(sweep_now(&h, &user, &[], 10).len(), 1);
        assert_eq!(Store::read(&h).unwrap().len(), 1);
        let _ = fs::remove_dir_all(&h);
    }

    #[test]
    fn a_flood_learns_nothing() {
        let (h, user) = home();
        // (the integration test floods with 10 000, on a tmpfs)
        for i in 0..1_000u32 {
            let a = std::net::Ipv4Addr::from(0xc633_0000 | i);
            put(&h, &a.to_string(), format!("{a}\n").as_bytes());
        }
        let ev = sweep_now(&h, &user, &[], 10);
        assert_eq!(rejected(&ev).len(), 1_000);
        assert!(rejected(&ev)[0].contains("a flood, not a loop"));
        assert_eq!(spool_left(&h), 0);
        assert!(Store::read(&h).unwrap().is_empty());
        let _ = fs::remove_dir_all(&h);
    }

    #[test]
    fn the_store_is_bounded() {
        let (h, user) = home();
        for round in 0..3u32 {
            for i in 0..30u32 {
                let a = std::net::Ipv4Addr::from(0xc633_6400 | (round * 30 + i));
                put(&h, &a.to_string(), format!("{a}\n").as_bytes());
            }
            sweep_now(&h, &user, &[], 10);
        }
        let store = Store::read(&h).unwrap();
        assert_eq!(store.len(), ipme::learn::MAX_LEARNED);
        let _ = fs::remove_dir_all(&h);
    }
}
