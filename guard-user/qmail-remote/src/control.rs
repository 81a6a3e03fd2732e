//! Control files with the reader semantics of qmail's control.c (docs/qmail-remote.md §2.2).
//!
//! Paths are relative: the caller has already changed into the qmail home. Files are read with
//! plain open/read/close (no metadata calls) to keep the syscall count near stock.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::routes::Routes;

/// A control file exists but could not be read. Absence is never an error.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {file}: {source}")]
pub struct ControlError {
    /// The control file, relative to the qmail home.
    pub file: &'static str,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

/// Reads `base/fname` up to the first LF (if `first_line_only`) or EOF; `None` if the file does not exist.
fn read_bytes(
    base: &Path,
    fname: &'static str,
    first_line_only: bool,
) -> Result<Option<Vec<u8>>, ControlError> {
    let err = |source| ControlError {
        file: fname,
        source,
    };
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        // stock open_read uses O_NDELAY: a FIFO in control/ must not hang the delivery
        .custom_flags(libc::O_NONBLOCK)
        .open(base.join(fname))
    {
        Ok(f) => f,
        // ENOENT is what ErrorKind::NotFound means on Linux; comparing the errno spares
        // std's errno table a page fault of its own (peak RSS)
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    Ok(Some(read_all(&mut f, first_line_only).map_err(err)?))
}

fn read_all(f: &mut File, first_line_only: bool) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.extend_from_slice(&buf[..n]);
        if first_line_only && buf[..n].contains(&b'\n') {
            return Ok(out);
        }
    }
}

/// stock striptrailingwhitespace: LF, space and tab (not CR).
fn strip_trailing(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// First line of a file, trailing whitespace stripped; `None` if absent (control_readline).
pub fn read_line(base: &Path, fname: &'static str) -> Result<Option<Vec<u8>>, ControlError> {
    Ok(read_bytes(base, fname, true)?.map(|b| {
        let line = match b.iter().position(|&c| c == b'\n') {
            Some(i) => &b[..i],
            None => &b[..],
        };
        strip_trailing(line).to_vec()
    }))
}

/// stock scan_ulong: leading decimal digits, wrapping; returns (value, digits).
pub fn scan_ulong(s: &[u8]) -> (u64, usize) {
    let mut v: u64 = 0;
    let mut n = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
        n += 1;
    }
    (v, n)
}

/// An integer control file (control_readint): absent or non-numeric keeps `default`. The value
/// is truncated to a C `int` like stock.
pub fn read_int(base: &Path, fname: &'static str, default: i32) -> Result<i32, ControlError> {
    match read_line(base, fname)? {
        None => Ok(default),
        Some(line) => match scan_ulong(&line) {
            (_, 0) => Ok(default),
            (v, _) => Ok(v as i32),
        },
    }
}

/// All non-empty lines not starting with `#`, trailing whitespace stripped (control_readfile).
pub fn read_lines(base: &Path, fname: &'static str) -> Result<Option<Vec<Vec<u8>>>, ControlError> {
    Ok(read_bytes(base, fname, false)?.map(|b| {
        b.split(|&c| c == b'\n')
            .map(strip_trailing)
            .filter(|l| !l.is_empty() && l[0] != b'#')
            .map(<[u8]>::to_vec)
            .collect()
    }))
}

/// Everything qmail-remote reads from control/ (besides moreipme/notipme, read by ipme).
#[derive(Clone, Debug)]
pub struct Controls {
    /// HELO argument: control/helohost, else control/me.
    pub helohost: Vec<u8>,
    /// Seconds per read or write on the SMTP connection (control/timeoutremote, 1200).
    pub timeout_remote: i32,
    /// Seconds per TCP connect (control/timeoutconnect, 60).
    pub timeout_connect: i32,
    /// control/smtproutes.
    pub routes: Routes,
    /// control/authsenders (docs/qmail-remote-tls.md §5.1).
    pub authsenders: Routes,
    /// IPv6 delivery (control/remoteipv6: `0` turns it off; absent or any other number: on).
    pub ipv6: bool,
}

/// Reads the control files under `base` (the qmail home, or "" after the chdir) in stock order;
/// any read error (not absence) is `temp_control`.
pub fn load(base: &Path) -> Result<Controls, ControlError> {
    let me = read_line(base, "control/me")?;
    let timeout_remote = read_int(base, "control/timeoutremote", 1200)?;
    let timeout_connect = read_int(base, "control/timeoutconnect", 60)?;
    let helohost = match read_line(base, "control/helohost")? {
        Some(h) => h,
        None => me.ok_or_else(|| ControlError {
            file: "control/helohost",
            source: io::Error::new(io::ErrorKind::NotFound, "neither helohost nor me exists"),
        })?,
    };
    let routes = Routes::parse(
        read_lines(base, "control/smtproutes")?
            .unwrap_or_default()
            .iter(),
    );
    let authsenders = Routes::parse(
        read_lines(base, "control/authsenders")?
            .unwrap_or_default()
            .iter(),
    );
    let ipv6 = read_int(base, "control/remoteipv6", 1)? != 0;
    Ok(Controls {
        helohost,
        timeout_remote,
        timeout_connect,
        routes,
        authsenders,
        ipv6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_and_scan() {
        assert_eq!(strip_trailing(b"a b \t\n\n"), b"a b");
        assert_eq!(strip_trailing(b"a\r\n"), b"a\r");
        assert_eq!(strip_trailing(b" \n"), b"");
        assert_eq!(scan_ulong(b"120x"), (120, 3));
        assert_eq!(scan_ulong(b"x1"), (0, 0));
        assert_eq!(scan_ulong(b""), (0, 0));
    }
}
