//! `poll`: connect in a loop until the guard's verdict for an address changes.

use std::io::{self, BufRead as _, Write as _};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use crate::sock::{connect_errno, linger0, monotonic_ns, raw_addr, socket};
use crate::{die, num, sockaddr};

/// One non-blocking connect attempt: true if the guard refused it (ELOOP).
fn refused(a: &SocketAddr, ss: &libc::sockaddr_storage, len: libc::socklen_t) -> io::Result<bool> {
    let s = socket(a, true)?;
    linger0(s.as_raw_fd())?;
    Ok(connect_errno(s.as_raw_fd(), ss, len) == libc::ELOOP)
}

pub fn run() -> io::Result<()> {
    let stdin = io::stdin();
    let mut out = io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let w: Vec<&str> = line.split_whitespace().collect();
        let (want_refused, a, timeout) = match w.as_slice() {
            [mode @ ("refused" | "allowed"), addr, port, ms] => (
                *mode == "refused",
                sockaddr(addr, port),
                Duration::from_millis(num(ms) as u64),
            ),
            _ => die(&format!("bad poll command {line:?}")),
        };
        let (ss, len) = raw_addr(&a);
        if refused(&a, &ss, len)? == want_refused {
            writeln!(out, "already")?;
            out.flush()?;
            continue;
        }
        writeln!(out, "armed")?;
        out.flush()?;
        let start = Instant::now();
        let verdict = loop {
            if refused(&a, &ss, len)? == want_refused {
                break format!("at {}", monotonic_ns());
            }
            if start.elapsed() > timeout {
                break "timeout".to_string();
            }
            // Leaves the CPU to the daemon (2 cores); costs ~0.1 ms of resolution.
            std::thread::sleep(Duration::from_micros(20));
        };
        writeln!(out, "{verdict}")?;
        out.flush()?;
    }
    Ok(())
}
