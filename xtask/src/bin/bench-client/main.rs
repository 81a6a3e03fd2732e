//! bench-client: the process `cargo xtask bench` starts inside a cgroup and network namespace,
//! so its sockets are the ones the guard (or nftables) sees. Release build; one job per mode:
//!
//! ```text
//! bench-client serve
//!     Reads `connect ADDR PORT ITERS EXPECT` lines on stdin; for each, ITERS × (socket,
//!     connect, close); EXPECT is ok, ELOOP or ECONNREFUSED and every connect must give it.
//!     Prints `median_ns=… iter_median_ns=… n=…` (connect() alone, and the whole
//!     socket+connect+close iteration). One long-lived process per cgroup, so the benchmark
//!     can interleave short batches of all variants without starting processes.
//! bench-client poll
//!     Reads `refused|allowed ADDR PORT TIMEOUT_MS` lines on stdin; for each, connects in a loop
//!     until the guard refuses (ELOOP) or allows; prints `already`, or `armed` then
//!     `at NS` (CLOCK_MONOTONIC of the first connect in the new state) or `timeout`.
//! bench-client smtp ADDR PORT HELO SENDER RECIP
//!     The floor of an SMTP delivery: the dialogue in lock-step and the already encoded DATA
//!     payload from fd 0 (with its final ".\r\n"), sent with std::io::copy. Exit 0 on 250.
//! ```
//! Exit status 2: bad usage or an unexpected failure.

mod poll;
mod serve;
mod smtp;
mod sock;

use std::net::{IpAddr, SocketAddr};
use std::process::exit;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match a.as_slice() {
        ["serve"] => serve::run(),
        ["poll"] => poll::run(),
        ["smtp", addr, port, helo, sender, recip] => {
            smtp::run(sockaddr(addr, port), helo, sender, recip)
        }
        _ => die("usage: bench-client serve | poll | smtp ADDR PORT HELO SENDER RECIP"),
    };
    if let Err(e) = r {
        die(&e.to_string());
    }
}

pub fn die(msg: &str) -> ! {
    eprintln!("bench-client: {msg}");
    exit(2)
}

pub fn num(s: &str) -> usize {
    s.parse()
        .unwrap_or_else(|_| die(&format!("bad number {s:?}")))
}

pub fn sockaddr(addr: &str, port: &str) -> SocketAddr {
    let ip: IpAddr = addr
        .parse()
        .unwrap_or_else(|_| die(&format!("bad address {addr:?}")));
    let port: u16 = port
        .parse()
        .unwrap_or_else(|_| die(&format!("bad port {port:?}")));
    SocketAddr::new(ip, port)
}
