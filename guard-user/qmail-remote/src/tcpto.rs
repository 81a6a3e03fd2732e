//! TCP timeout table (docs/qmail-remote.md §2.7), compatible with qmail's tcpto.c so qmail-tcpto and qmail-tcpok
//! keep working: `queue/lock/tcpto`, 64 records × 16 bytes (address 0-3, error count 4, last
//! error time 8-11 little-endian), flock'ed exclusively through a write descriptor.
//!
//! IPv6 addresses use `queue/lock/tcpto6` with the same rules and 32-byte records (address
//! 0-15, count 16, time 24-27); stock tools never see it. A missing or unreadable file means
//! "nothing known", exactly like stock.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Record layout of one table file.
#[derive(Clone, Copy)]
struct Layout {
    rec: usize,
    addr: usize,
    count: usize,
    time: usize,
}

const V4: Layout = Layout {
    rec: 16,
    addr: 4,
    count: 4,
    time: 8,
};
const V6: Layout = Layout {
    rec: 32,
    addr: 16,
    count: 16,
    time: 24,
};

/// The tables under a qmail home, plus the per-process values stock uses.
pub struct Tcpto {
    v4: PathBuf,
    v6: PathBuf,
    pid: u32,
    now: fn() -> u64,
    /// stock `flagwasthere`: the last checked address had a record.
    was_there: bool,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn addr_bytes(ip: &IpAddr) -> (Layout, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (V4, a.octets().to_vec()),
        IpAddr::V6(a) => (V6, a.octets().to_vec()),
    }
}

/// An open, locked table: the lock is held while `lock` is open.
struct Locked {
    lock: File,
    buf: Vec<u8>,
    n: usize,
}

impl Tcpto {
    /// Tables under `base` (the qmail home, or "" after the chdir).
    pub fn new(base: &Path) -> Self {
        Tcpto {
            v4: base.join("queue/lock/tcpto"),
            v6: base.join("queue/lock/tcpto6"),
            pid: std::process::id(),
            now: unix_now,
            was_there: false,
        }
    }

    /// For tests: fixed clock and pid.
    pub fn with_clock(base: &Path, pid: u32, now: fn() -> u64) -> Self {
        Tcpto {
            pid,
            now,
            ..Self::new(base)
        }
    }

    /// stock getbuf(): open for write (the lock) and read, flock, read the records. `None` if
    /// anything fails or the file is empty.
    fn getbuf(&self, l: Layout, path: &Path) -> Option<Locked> {
        let lock = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .ok()?;
        let mut rd = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .ok()?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == -1 {
            return None;
        }
        let mut buf = vec![0u8; 64 * l.rec];
        let r = rd.read(&mut buf).ok()?;
        let n = r / l.rec;
        if n == 0 {
            return None;
        }
        Some(Locked { lock, buf, n })
    }

    fn path(&self, l: Layout) -> &Path {
        if l.rec == V4.rec { &self.v4 } else { &self.v6 }
    }

    /// stock tcpto(): true if `ip` had at least two timeouts and the last one is younger than
    /// (60 + pid mod 32) × 64 seconds, so this address is skipped for now.
    pub fn skip(&mut self, ip: &IpAddr) -> bool {
        self.was_there = false;
        let (l, a) = addr_bytes(ip);
        // the lock is released right after reading, like stock
        let Some(t) = self.getbuf(l, self.path(l)) else {
            return false;
        };
        for i in 0..t.n {
            let rec = &t.buf[i * l.rec..(i + 1) * l.rec];
            if rec[..l.addr] == a[..] {
                self.was_there = true;
                if rec[l.count] >= 2 {
                    let when = u64::from(read_time(rec, l));
                    let window = (60 + u64::from(self.pid & 31)) << 6;
                    return (self.now)().wrapping_sub(when) < window;
                }
                return false;
            }
        }
        false
    }

    /// stock tcpto_err(): after a connect attempt to `ip`; `timeout` true if it timed out.
    /// Success or a non-timeout error resets an existing record; a timeout counts (at most once
    /// per 120 s, at most 10) or takes a free or the oldest slot.
    pub fn record(&mut self, ip: &IpAddr, timeout: bool) {
        if !timeout && !self.was_there {
            return; // could have been added since, but not worth the effort (stock)
        }
        let (l, a) = addr_bytes(ip);
        let Some(mut t) = self.getbuf(l, self.path(l)) else {
            return;
        };
        let now = (self.now)();
        let recs = &mut t.buf[..t.n * l.rec];
        if let Some(i) = (0..t.n).find(|&i| recs[i * l.rec..i * l.rec + l.addr] == a[..]) {
            let rec = &mut recs[i * l.rec..(i + 1) * l.rec];
            if !timeout {
                rec[l.count] = 0;
            } else {
                let last = u64::from(read_time(rec, l));
                if rec[l.count] != 0 && now < 120 + last {
                    return;
                }
                rec[l.count] = (rec[l.count].wrapping_add(1)).min(10);
                write_time(rec, l, now);
            }
            let _ = t.lock.write_all_at(rec, (i * l.rec) as u64);
            return;
        }
        if !timeout {
            return;
        }
        let i = match (0..t.n).find(|&i| recs[i * l.rec + l.count] == 0) {
            Some(i) => i,
            // evict the smallest time + count×1024 (first on ties)
            None => (0..t.n)
                .min_by_key(|&i| {
                    let rec = &recs[i * l.rec..(i + 1) * l.rec];
                    u64::from(read_time(rec, l)) + (u64::from(rec[l.count]) << 10)
                })
                .unwrap_or(0),
        };
        let rec = &mut recs[i * l.rec..(i + 1) * l.rec];
        rec[..l.addr].copy_from_slice(&a);
        write_time(rec, l, now);
        rec[l.count] = 1;
        let _ = t.lock.write_all_at(rec, (i * l.rec) as u64);
    }
}

fn read_time(rec: &[u8], l: Layout) -> u32 {
    u32::from_le_bytes([
        rec[l.time],
        rec[l.time + 1],
        rec[l.time + 2],
        rec[l.time + 3],
    ])
}

fn write_time(rec: &mut [u8], l: Layout, now: u64) {
    rec[l.time..l.time + 4].copy_from_slice(&(now as u32).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static NOW: AtomicU64 = AtomicU64::new(1_000_000);
    fn now() -> u64 {
        NOW.load(Ordering::SeqCst)
    }

    fn home(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("qr-tcpto-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("queue/lock")).unwrap();
        std::fs::write(d.join("queue/lock/tcpto"), [0u8; 1024]).unwrap();
        std::fs::write(d.join("queue/lock/tcpto6"), [0u8; 2048]).unwrap();
        d
    }

    #[test]
    fn stock_format_and_rules() {
        let d = home("rules");
        let mut t = Tcpto::with_clock(&d, 0, now);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert!(!t.skip(&ip));
        t.record(&ip, true);
        let f = std::fs::read(d.join("queue/lock/tcpto")).unwrap();
        assert_eq!(&f[..5], &[192, 0, 2, 9, 1]);
        assert_eq!(&f[8..12], &1_000_000u32.to_le_bytes());
        // a second timeout within 120 s does not count
        NOW.store(1_000_100, Ordering::SeqCst);
        assert!(!t.skip(&ip));
        t.record(&ip, true);
        assert_eq!(std::fs::read(d.join("queue/lock/tcpto")).unwrap()[4], 1);
        NOW.store(1_000_200, Ordering::SeqCst);
        assert!(!t.skip(&ip));
        t.record(&ip, true);
        assert_eq!(std::fs::read(d.join("queue/lock/tcpto")).unwrap()[4], 2);
        // now skipped for (60 + 0) × 64 s
        NOW.store(1_000_200 + 60 * 64 - 1, Ordering::SeqCst);
        assert!(t.skip(&ip));
        NOW.store(1_000_200 + 60 * 64, Ordering::SeqCst);
        assert!(!t.skip(&ip));
        // a success resets it
        t.record(&ip, false);
        assert_eq!(std::fs::read(d.join("queue/lock/tcpto")).unwrap()[4], 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn eviction_and_v6() {
        let d = home("evict");
        // a fixed clock of its own: tests run in parallel and NOW belongs to the other test
        let mut t = Tcpto::with_clock(&d, 0, || 2_000_000);
        for k in 0..64u8 {
            let ip = IpAddr::from([198, 51, 100, k]);
            t.skip(&ip);
            t.record(&ip, true);
        }
        // all 64 slots used with equal time: the first (slot 0) is evicted
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        t.skip(&ip);
        t.record(&ip, true);
        let f = std::fs::read(d.join("queue/lock/tcpto")).unwrap();
        assert_eq!(&f[..4], &[203, 0, 113, 1]);
        assert_eq!(&f[16..20], &[198, 51, 100, 1]);
        let v6: IpAddr = "2001:db8::9".parse().unwrap();
        t.skip(&v6);
        t.record(&v6, true);
        let f6 = std::fs::read(d.join("queue/lock/tcpto6")).unwrap();
        assert_eq!(
            &f6[..16],
            &"2001:db8::9"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(f6[16], 1);
        // missing file: nothing skipped, nothing written, no error
        std::fs::remove_file(d.join("queue/lock/tcpto")).unwrap();
        assert!(!t.skip(&ip));
        t.record(&ip, true);
        assert!(!d.join("queue/lock/tcpto").exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
