//! A TCP listener inside a network namespace that accepts and drops connections as fast as it
//! can, so the connect loops measure connects, not a full accept queue.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context as _, Result};

use crate::kit::netns::in_netns;

pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Listens on `addr` inside the namespace bound at `netns`.
    pub fn start(netns: &Path, addr: SocketAddr) -> Result<Listener> {
        let l = in_netns(netns, move || {
            TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))
        })?;
        l.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || accept_loop(&l, &s));
        Ok(Listener {
            stop,
            thread: Some(thread),
        })
    }
}

fn accept_loop(l: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        // Drain everything queued, then sleep in poll until the next SYN completes.
        while let Ok((conn, _)) = l.accept() {
            drop(conn);
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
