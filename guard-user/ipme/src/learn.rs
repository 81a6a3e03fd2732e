//! Addresses learned from detected loops: the formats qmail-remote and qmail-guard share.
//!
//! When qmail-remote finds that the SMTP server it reached greets with this host's own name
//! (the address leads back here, through NAT or a port forward nobody listed in moreipme), it
//! drops one file per address into the spool ([`SPOOL`], writable only by the qmail-remote
//! user). qmail-guard reads each entry, validates it ([`validate`]: one host, not a built-in,
//! not under notipme), and records it in the store ([`STORE`], written only by root) with the
//! time it was seen; from then on the kernel refuses the address. An entry not seen again
//! expires ([`DEFAULT_EXPIRY_SECS`]).
//!
//! Everything here is pure except [`Store::read`]: the spool's directory handling and the
//! store's writing live in qmail-guard, the spool's writing in qmail-remote.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Entry, IpNet, IpmeError, Source, set::builtin_nets};

/// qmail-guard's directory in the qmail home (owned by root, mode 0755).
pub const DIR: &str = "loopcheck";
/// The spool qmail-remote writes detections into (owned by the qmail-remote user, mode 0700).
pub const SPOOL: &str = "loopcheck/spool";
/// The learned set (owned by root, mode 0644).
pub const STORE: &str = "loopcheck/learned";
/// A spool entry is one short line; anything longer is not one of ours.
pub const MAX_ENTRY_BYTES: usize = 512;
/// At most this many learned addresses. A host has a handful of NAT addresses; more is a
/// misbehaving or hostile writer, and each learned address makes mail to it bounce.
pub const MAX_LEARNED: usize = 64;
/// A learned address not seen again for this long is forgotten.
pub const DEFAULT_EXPIRY_SECS: u64 = 30 * 86_400;
/// The store is at most [`MAX_LEARNED`] short lines; a larger file is not ours.
const MAX_STORE_BYTES: u64 = 64 * 1024;
/// The greeting name kept in a spool entry (for the log only).
const MAX_NAME: usize = 255;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) for Unix seconds.
pub fn rfc3339(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm), all in u64/i64.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The spool file name for an address: its canonical text (one file per address, so a loop
/// detected again replaces its entry instead of adding one).
pub fn spool_file_name(addr: IpAddr) -> String {
    addr.to_canonical().to_string()
}

/// A spool entry's contents: `ADDRESS NAME\n`, NAME being the greeting name that matched
/// (kept only if it is plain printable ASCII).
pub fn spool_entry(addr: IpAddr, name: &[u8]) -> Vec<u8> {
    let mut out = spool_file_name(addr).into_bytes();
    if !name.is_empty() && name.len() <= MAX_NAME && name.iter().all(u8::is_ascii_graphic) {
        out.push(b' ');
        out.extend_from_slice(name);
    }
    out.push(b'\n');
    out
}

/// A parsed spool entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolEntry {
    /// Canonical (an IPv4-mapped IPv6 address is IPv4).
    pub addr: IpAddr,
    /// The greeting name qmail-remote matched, if given.
    pub name: Option<String>,
}

/// Why a spool entry is not learned. The text completes "spool entry NAME rejected: …".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("larger than {MAX_ENTRY_BYTES} bytes")]
    TooLarge,
    #[error("not an address: {0}")]
    Garbage(String),
    #[error("{0} is a range; only single addresses are learned")]
    Range(String),
    #[error("{0} is not a single host ({1})")]
    NotAHost(IpAddr, &'static str),
    #[error("{0} is inside the built-in {1}, which is always this host")]
    Builtin(IpAddr, IpNet),
    #[error("{addr} is covered by control/notipme:{line} ({net})")]
    NotIpme {
        addr: IpAddr,
        net: IpNet,
        line: usize,
    },
    #[error("the learned set is full ({MAX_LEARNED} addresses); `qmail-guard forget` some")]
    Full,
}

/// Parses a spool entry: one line, `ADDRESS [NAME]`. Pure.
pub fn parse_spool_entry(bytes: &[u8]) -> Result<SpoolEntry, Rejected> {
    if bytes.len() > MAX_ENTRY_BYTES {
        return Err(Rejected::TooLarge);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Rejected::Garbage(format!("{:?}", String::from_utf8_lossy(bytes))))?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    let garbage = || Rejected::Garbage(format!("{line:?}"));
    if line.contains('\n') || line.contains('\r') {
        return Err(garbage());
    }
    let mut words = line.split(' ');
    let addr_s = words.next().unwrap_or("");
    let name = words.next();
    if words.next().is_some()
        || name.is_some_and(|n| n.is_empty() || n.len() > MAX_NAME)
        || name.is_some_and(|n| !n.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(garbage());
    }
    if addr_s.contains('/') {
        // Even a /32 is refused: the writer never produces a prefix, so it is not ours.
        return match addr_s.parse::<IpNet>() {
            Ok(n) => Err(Rejected::Range(n.to_string())),
            Err(_) => Err(garbage()),
        };
    }
    let addr: IpAddr = addr_s.parse().map_err(|_| garbage())?;
    Ok(SpoolEntry {
        addr: addr.to_canonical(),
        name: name.map(str::to_string),
    })
}

/// Whether `addr` may be learned: a single unicast host, not inside a built-in, not covered
/// by a notipme entry (any of them, whatever its length: the admin said "not me" there).
/// Returns the canonical address.
pub fn validate<'a>(
    addr: IpAddr,
    notipme: impl IntoIterator<Item = &'a Entry>,
) -> Result<IpAddr, Rejected> {
    let addr = addr.to_canonical();
    match addr {
        IpAddr::V4(a) => {
            if a.is_multicast() {
                return Err(Rejected::NotAHost(addr, "multicast"));
            }
            if a.is_broadcast() {
                return Err(Rejected::NotAHost(addr, "broadcast"));
            }
            if a.octets()[0] >= 240 {
                return Err(Rejected::NotAHost(addr, "reserved"));
            }
        }
        IpAddr::V6(a) => {
            if a.is_multicast() {
                return Err(Rejected::NotAHost(addr, "multicast"));
            }
        }
    }
    if let Some(b) = builtin_nets().find(|b| b.contains(&addr)) {
        return Err(Rejected::Builtin(addr, b));
    }
    for e in notipme {
        if let Source::NotIpme { line } = e.source
            && e.net.contains(&addr)
        {
            return Err(Rejected::NotIpme {
                addr,
                net: e.net,
                line,
            });
        }
    }
    Ok(addr)
}

/// One learned address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Learned {
    /// When it was last seen (Unix seconds).
    pub at: u64,
    /// When it is forgotten unless seen again.
    pub expires: u64,
}

/// What [`Store::learn`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learnt {
    New,
    Refreshed,
}

/// The learned set as stored in [`STORE`]: one line per address, `ADDRESS SEEN EXPIRES`
/// (Unix seconds), `#` comments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Store {
    map: BTreeMap<IpAddr, Learned>,
}

impl Store {
    /// Parses the store's text. Pure; a bad line is an error naming [`STORE`] and the line.
    pub fn parse(text: &str) -> Result<Store, IpmeError> {
        let mut map = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split_once('#').map_or(raw, |(b, _)| b).trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: &str| IpmeError::Parse {
                file: STORE,
                line: i + 1,
                reason: format!(
                    "{reason}; expected `ADDRESS SEEN EXPIRES` (remove the line, or the file, \
                     to forget it)"
                ),
            };
            let w: Vec<&str> = line.split_ascii_whitespace().collect();
            let [a, at, exp] = w[..] else {
                return Err(bad("wrong number of fields"));
            };
            let addr: IpAddr = a.parse().map_err(|_| bad("not an address"))?;
            let at: u64 = at.parse().map_err(|_| bad("bad time"))?;
            let expires: u64 = exp.parse().map_err(|_| bad("bad expiry time"))?;
            validate(addr, []).map_err(|e| bad(&e.to_string()))?;
            if map.len() >= MAX_LEARNED {
                return Err(bad(&format!("more than {MAX_LEARNED} addresses")));
            }
            map.insert(addr.to_canonical(), Learned { at, expires });
        }
        Ok(Store { map })
    }

    /// The store's text.
    pub fn render(&self) -> String {
        let mut s = String::from(
            "# Addresses qmail-guard learned (qmail-remote met this host's own SMTP greeting).\n\
             # ADDRESS SEEN EXPIRES (Unix seconds). Written by qmail-guard; remove one with\n\
             # `qmail-guard forget ADDRESS`.\n",
        );
        for (addr, l) in &self.map {
            s.push_str(&format!("{addr} {} {}\n", l.at, l.expires));
        }
        s
    }

    /// Reads `<qmail_home>/loopcheck/learned`; a missing file (or directory) is empty.
    pub fn read(qmail_home: &Path) -> Result<Store, IpmeError> {
        let path = qmail_home.join(STORE);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Store::default()),
            Err(source) => return Err(IpmeError::Read { path, source }),
        };
        let mut bytes = Vec::new();
        file.take(MAX_STORE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| IpmeError::Read {
                path: path.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_STORE_BYTES {
            return Err(IpmeError::Read {
                path,
                source: io::Error::other(format!("larger than {MAX_STORE_BYTES} bytes")),
            });
        }
        Store::parse(&String::from_utf8_lossy(&bytes))
    }

    /// Records a sighting of `addr` at `now`, valid for `ttl` seconds. A new address beyond
    /// [`MAX_LEARNED`] is refused.
    pub fn learn(&mut self, addr: IpAddr, now: u64, ttl: u64) -> Result<Learnt, Rejected> {
        let addr = addr.to_canonical();
        let l = Learned {
            at: now,
            expires: now.saturating_add(ttl),
        };
        let full = self.map.len() >= MAX_LEARNED;
        match self.map.get_mut(&addr) {
            Some(old) => {
                *old = l;
                Ok(Learnt::Refreshed)
            }
            None if full => Err(Rejected::Full),
            None => {
                self.map.insert(addr, l);
                Ok(Learnt::New)
            }
        }
    }

    /// Removes `addr`; false if it was not learned.
    pub fn forget(&mut self, addr: IpAddr) -> bool {
        self.map.remove(&addr.to_canonical()).is_some()
    }

    /// Removes and returns the addresses whose expiry is at or before `now`.
    pub fn expire(&mut self, now: u64) -> Vec<IpAddr> {
        let gone: Vec<IpAddr> = self
            .map
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(a, _)| *a)
            .collect();
        for a in &gone {
            self.map.remove(a);
        }
        gone
    }

    /// The earliest expiry, for a timer.
    pub fn next_expiry(&self) -> Option<u64> {
        self.map.values().map(|l| l.expires).min()
    }

    /// The addresses not expired at `now`, as set entries.
    pub fn entries(&self, now: u64) -> Vec<Entry> {
        self.map
            .iter()
            .filter(|(_, l)| l.expires > now)
            .map(|(a, l)| Entry {
                net: IpNet::from(*a),
                source: Source::Learned { at: l.at },
            })
            .collect()
    }

    pub fn get(&self, addr: IpAddr) -> Option<Learned> {
        self.map.get(&addr.to_canonical()).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, Learned)> + '_ {
        self.map.iter().map(|(a, l)| (*a, *l))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl fmt::Display for Learned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seen {}, expires {}",
            rfc3339(self.at),
            rfc3339(self.expires)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn not(line: usize, s: &str) -> Entry {
        Entry {
            net: s.parse().unwrap(),
            source: Source::NotIpme { line },
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_165_184), "2025-11-26T13:53:04Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn spool_entry_round_trip() {
        let e = spool_entry(ip("198.51.100.25"), b"mail.example.test");
        assert_eq!(e, b"198.51.100.25 mail.example.test\n");
        assert_eq!(
            parse_spool_entry(&e),
            Ok(SpoolEntry {
                addr: ip("198.51.100.25"),
                name: Some("mail.example.test".into())
            })
        );
        // a name that is not plain printable ASCII is left out, never forwarded to the log
        let e = spool_entry(ip("::ffff:198.51.100.25"), b"evil\x1b[2Jname");
        assert_eq!(e, b"198.51.100.25\n");
        assert_eq!(parse_spool_entry(&e).unwrap().name, None);
        let e = spool_entry(ip("2001:db8::25"), b"");
        assert_eq!(parse_spool_entry(&e).unwrap().addr, ip("2001:db8::25"));
        assert_eq!(spool_file_name(ip("::ffff:192.0.2.1")), "192.0.2.1");
        assert_eq!(spool_file_name(ip("2001:DB8::1")), "2001:db8::1");
    }

    #[test]
    fn hostile_spool_entries() {
        use Rejected::*;
        let p = |b: &[u8]| parse_spool_entry(b);
        assert!(matches!(p(b"198.51.100.0/24\n"), Err(Range(r)) if r == "198.51.100.0/24"));
        assert!(matches!(p(b"2001:db8::/32"), Err(Range(_))));
        assert!(matches!(p(b"198.51.100.7/32"), Err(Range(_))));
        for g in [
            &b""[..],
            b"\n",
            b"garbage\n",
            b"198.51.100.7 a b\n",
            b"198.51.100.7  name\n",
            b"198.51.100.7\n198.51.100.8\n",
            b"198.51.100.7\r\n",
            b"fe80::1%eth0\n",
            b"198.51.100.7 \x01\n",
            b"\xff\xfe\n",
            b"198.51.100.0/x\n",
            b"0x7f000001\n",
        ] {
            assert!(matches!(p(g), Err(Garbage(_))), "{g:?}: {:?}", p(g));
        }
        assert_eq!(p(&[b'1'; 600]), Err(TooLarge));
    }

    #[test]
    fn validation() {
        let nots = [not(1, "203.0.113.0/24"), not(2, "2001:db8:1::/48")];
        assert_eq!(
            validate(ip("198.51.100.25"), &nots),
            Ok(ip("198.51.100.25"))
        );
        assert_eq!(
            validate(ip("::ffff:198.51.100.25"), &nots),
            Ok(ip("198.51.100.25"))
        );
        assert!(matches!(
            validate(ip("203.0.113.9"), &nots),
            Err(Rejected::NotIpme { line: 1, .. })
        ));
        assert!(matches!(
            validate(ip("2001:db8:1::9"), &nots),
            Err(Rejected::NotIpme { line: 2, .. })
        ));
        for b in [
            "127.0.0.2",
            "0.0.0.0",
            "0.1.2.3",
            "::1",
            "::",
            "::ffff:127.0.0.1",
        ] {
            assert!(
                matches!(validate(ip(b), &nots), Err(Rejected::Builtin(..))),
                "{b}"
            );
        }
        for n in ["224.0.0.1", "255.255.255.255", "240.0.0.1", "ff02::1"] {
            assert!(
                matches!(validate(ip(n), &nots), Err(Rejected::NotAHost(..))),
                "{n}"
            );
        }
        // a moreipme entry in the list is not an exception
        let more = Entry {
            net: "198.51.100.0/24".parse().unwrap(),
            source: Source::MoreIpme { line: 1 },
        };
        assert!(validate(ip("198.51.100.25"), [&more]).is_ok());
    }

    #[test]
    fn store_learn_refresh_expire_forget() {
        let mut s = Store::default();
        let a = ip("198.51.100.25");
        assert_eq!(s.learn(a, 100, 50), Ok(Learnt::New));
        assert_eq!(
            s.learn(ip("::ffff:198.51.100.25"), 120, 50),
            Ok(Learnt::Refreshed)
        );
        assert_eq!(
            s.get(a),
            Some(Learned {
                at: 120,
                expires: 170
            })
        );
        s.learn(ip("2001:db8::25"), 130, 10).unwrap();
        assert_eq!(s.next_expiry(), Some(140));
        let e = s.entries(139);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].source, Source::Learned { at: 120 });
        assert_eq!(e[0].net, "198.51.100.25/32".parse::<IpNet>().unwrap());
        assert_eq!(s.entries(140).len(), 1, "expired at its expiry");
        assert_eq!(s.expire(140), vec![ip("2001:db8::25")]);
        assert!(s.forget(a));
        assert!(!s.forget(a));
        assert!(s.is_empty());
    }

    #[test]
    fn store_is_bounded() {
        let mut s = Store::default();
        for i in 0..MAX_LEARNED as u32 {
            s.learn(
                IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400u32 + i)),
                1,
                1,
            )
            .unwrap();
        }
        assert_eq!(s.learn(ip("192.0.2.1"), 1, 1), Err(Rejected::Full));
        // a known address is still refreshed when full
        assert_eq!(
            s.learn(IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400u32)), 2, 1),
            Ok(Learnt::Refreshed)
        );
        let text = s.render() + "192.0.2.1 1 2\n";
        let e = Store::parse(&text).unwrap_err();
        assert!(e.to_string().contains("more than 64"), "{e}");
    }

    #[test]
    fn store_text_round_trip_and_errors() {
        let mut s = Store::default();
        s.learn(ip("198.51.100.25"), 1_764_165_184, DEFAULT_EXPIRY_SECS)
            .unwrap();
        s.learn(ip("2001:db8::25"), 5, 6).unwrap();
        let text = s.render();
        assert!(
            text.contains("198.51.100.25 1764165184 1766757184\n"),
            "{text}"
        );
        assert_eq!(Store::parse(&text).unwrap(), s);
        for (bad, line) in [
            ("198.51.100.25 1\n", 1),
            ("# c\n\nnope 1 2\n", 3),
            ("198.51.100.25 x 2\n", 1),
            ("198.51.100.0/24 1 2\n", 1),
            ("127.0.0.1 1 2\n", 1),
        ] {
            match Store::parse(bad) {
                Err(IpmeError::Parse { file, line: l, .. }) => {
                    assert_eq!((file, l), (STORE, line), "{bad:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_store_is_empty() {
        let d = std::env::temp_dir().join(format!("ipme-learn-{}", std::process::id()));
        assert_eq!(Store::read(&d).unwrap(), Store::default());
        std::fs::create_dir_all(d.join(DIR)).unwrap();
        std::fs::write(d.join(STORE), "198.51.100.25 1 2\n").unwrap();
        assert_eq!(Store::read(&d).unwrap().len(), 1);
        std::fs::write(d.join(STORE), vec![b'#'; 70 * 1024]).unwrap();
        assert!(Store::read(&d).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
