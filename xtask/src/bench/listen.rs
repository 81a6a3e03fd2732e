//! A TCP listener inside a network namespace that accepts and drops connections as fast as it
//! can, so the connect loops measure connects, not a full accept queue.
//!
//! It can never overflow: its backlog (and the namespace's somaxconn) is larger than any batch,
//! and the benchmark waits after each batch until the listener has taken every connection of
//! it (`drained`), so the queue holds at most one batch. An overflow would drop the SYN and the
//! client would wait for the 1 s SYN retransmission, i.e. a stalled batch.

use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Socket, Type};

use crate::kit::{interrupt, netns::in_netns};

/// Accept queue length: larger than the largest batch (`Plan::stats_iters`).
pub const BACKLOG: u32 = 4096;
/// How long a listener may take to accept one batch before the benchmark gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The namespace's cap on any backlog.
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

pub struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    /// Connections sent to it so far (by the benchmark's own count).
    sent: u64,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Listens on `addr` inside the namespace bound at `netns`, with a `BACKLOG`-long queue.
    pub fn start(netns: &Path, addr: SocketAddr) -> Result<Listener> {
        let l = in_netns(netns, move || {
            raise_somaxconn()?;
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)
                .context("cannot create a socket")?;
            s.set_reuse_address(true)?;
            s.bind(&addr.into())
                .with_context(|| format!("cannot bind {addr}"))?;
            s.listen(BACKLOG as i32)
                .with_context(|| format!("cannot listen on {addr}"))?;
            Ok(s)
        })?;
        l.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&accepted));
        let thread = std::thread::spawn(move || accept_loop(&l, &s, &a));
        Ok(Listener {
            addr,
            stop,
            accepted,
            sent: 0,
            thread: Some(thread),
        })
    }

    /// Records that `n` more connections were made to it and waits until it has accepted
    /// them all.
    pub fn drained(&mut self, n: usize) -> Result<()> {
        self.sent += n as u64;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.accepted.load(Ordering::Relaxed) < self.sent {
            interrupt::check()?;
            if Instant::now() > deadline {
                bail!(
                    "the listener on {} accepted {} of {} connections within {DRAIN_TIMEOUT:?}",
                    self.addr,
                    self.accepted.load(Ordering::Relaxed),
                    self.sent
                );
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(())
    }
}

/// Lifts the namespace's somaxconn to `BACKLOG` (it caps listen()'s backlog silently).
fn raise_somaxconn() -> Result<()> {
    let now: u32 = std::fs::read_to_string(SOMAXCONN)
        .with_context(|| format!("cannot read {SOMAXCONN}"))?
        .trim()
        .parse()
        .with_context(|| format!("{SOMAXCONN} is not a number"))?;
    if now < BACKLOG {
        std::fs::write(SOMAXCONN, BACKLOG.to_string())
            .with_context(|| format!("cannot raise {SOMAXCONN} to {BACKLOG}"))?;
    }
    Ok(())
}

fn accept_loop(l: &Socket, stop: &AtomicBool, accepted: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        // Drain everything queued, then sleep in poll until the next SYN completes.
        while let Ok((conn, _)) = l.accept() {
            drop(conn);
            accepted.fetch_add(1, Ordering::Relaxed);
        }
        let mut p = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; 100 ms so the stop flag is seen.
        unsafe { libc::poll(&mut p, 1, 100) };
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use guard_tests::Netns;
    use guard_tests::unique::unique_name;

    use super::*;
    use crate::bench::netstat::Watch;

    /// Batches larger than std's default backlog (128), made as fast as one thread can, with
    /// RST closes as the bench client does: every connect succeeds, the listener takes them
    /// all, and the kernel counts no overflow and no SYN retransmission.
    #[test]
    fn batches_never_overflow_the_listener() {
        let ns = Netns::new(&unique_name());
        let addr: SocketAddr = "127.0.0.1:2525".parse().unwrap();
        let mut l = Listener::start(&ns.path(), addr).unwrap();
        let watch = Watch::new(vec![("test".into(), ns.path())]).unwrap();
        let batch = 1500;
        for _ in 0..4 {
            let made = in_netns(&ns.path(), move || {
                for _ in 0..batch {
                    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                    s.set_linger(Some(Duration::ZERO))?;
                    s.connect(&addr.into())?;
                }
                Ok(batch)
            })
            .unwrap();
            l.drained(made).unwrap();
        }
        let grew = watch.grown().unwrap();
        assert!(
            grew.is_empty(),
            "connections stalled in the test batches: {grew:?}"
        );
    }
}
