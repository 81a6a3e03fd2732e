//! `serve`: batches of connects on command, each reporting its medians.

use std::io::{self, BufRead as _, Write as _};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::time::Instant;

use crate::sock::{connect_errno, linger0, raw_addr, socket};
use crate::{die, num, sockaddr};

pub fn run() -> io::Result<()> {
    let mut out = io::stdout().lock();
    for line in io::stdin().lock().lines() {
        let line = line?;
        let w: Vec<&str> = line.split_whitespace().collect();
        let (a, iters, expect) = match w.as_slice() {
            ["connect", addr, port, iters, expect] => (sockaddr(addr, port), num(iters), *expect),
            _ => die(&format!("bad serve command {line:?}")),
        };
        let (connect_ns, iter_ns) = batch(a, iters, expect)?;
        writeln!(
            out,
            "median_ns={connect_ns} iter_median_ns={iter_ns} n={iters}"
        )?;
        out.flush()?;
    }
    Ok(())
}

/// ITERS connects; medians of connect() alone and of the whole iteration.
fn batch(a: SocketAddr, iters: usize, expect: &str) -> io::Result<(u64, u64)> {
    let want = expected_errno(expect);
    let (ss, len) = raw_addr(&a);
    let mut connect_ns = Vec::with_capacity(iters);
    let mut iter_ns = Vec::with_capacity(iters);
    for i in 0..iters {
        let t0 = Instant::now();
        let s = socket(&a, false)?;
        linger0(s.as_raw_fd())?;
        let t1 = Instant::now();
        let e = connect_errno(s.as_raw_fd(), &ss, len);
        let t2 = Instant::now();
        drop(s);
        let t3 = Instant::now();
        if e != want {
            return Err(io::Error::other(format!(
                "connect {a}: expected {expect}, got {} (iteration {i})",
                if e == 0 {
                    "ok".to_string()
                } else {
                    io::Error::from_raw_os_error(e).to_string()
                }
            )));
        }
        connect_ns.push((t2 - t1).as_nanos() as u64);
        iter_ns.push((t3 - t0).as_nanos() as u64);
    }
    Ok((median(&mut connect_ns), median(&mut iter_ns)))
}

fn median(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

fn expected_errno(expect: &str) -> i32 {
    match expect {
        "ok" => 0,
        "ELOOP" => libc::ELOOP,
        "ECONNREFUSED" => libc::ECONNREFUSED,
        _ => die(&format!("bad EXPECT {expect:?} (ok, ELOOP, ECONNREFUSED)")),
    }
}
