//! An SMTP sink for the delivery benchmarks: answers like an MTA that accepts everything,
//! as fast as it can (blocking reads, one connection at a time), and keeps the last DATA
//! payload so the benchmark can check that every client sent the same bytes.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::kit::netns::in_netns;

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    connections: AtomicUsize,
    /// Sessions ended (QUIT or hang-up), counted after `last_data` is stored.
    finished: AtomicUsize,
    last_data: Mutex<Vec<u8>>,
}

pub struct Sink {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Listens on `addr` inside the namespace bound at `netns`.
    pub fn start(netns: &Path, addr: SocketAddr) -> Result<Sink> {
        let l = in_netns(netns, move || {
            TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))
        })?;
        l.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let thread = std::thread::spawn(move || serve(&l, &s));
        Ok(Sink {
            shared,
            thread: Some(thread),
        })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits until `n` sessions have ended (at most `max`); false on timeout. A client may
    /// exit right after writing QUIT, before this thread has read it and stored the DATA.
    pub fn wait_finished(&self, n: usize, max: Duration) -> bool {
        let deadline = std::time::Instant::now() + max;
        while self.finished() < n {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Sessions ended so far.
    pub fn finished(&self) -> usize {
        self.shared.finished.load(Ordering::SeqCst)
    }

    /// The DATA payload of the last finished session, as sent (dot-stuffed, CRLF, with the
    /// final ".\r\n").
    pub fn last_data(&self) -> Vec<u8> {
        self.shared
            .last_data
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(l: &TcpListener, s: &Shared) {
    while !s.stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((conn, _)) => {
                s.connections.fetch_add(1, Ordering::SeqCst);
                if let Some(data) = session(conn)
                    && let Ok(mut d) = s.last_data.lock()
                {
                    *d = data;
                }
                s.finished.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                let mut p = libc::pollfd {
                    fd: l.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; 100 ms so the stop flag is seen.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
        }
    }
}

/// One SMTP session; returns the DATA payload if there was one.
fn session(mut c: TcpStream) -> Option<Vec<u8>> {
    c.set_nonblocking(false).ok()?;
    c.set_nodelay(true).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut pending = Vec::new();
    let mut data = None;
    c.write_all(b"220 sink.test ESMTP\r\n").ok()?;
    loop {
        let line = read_line(&mut c, &mut pending)?;
        let verb: Vec<u8> = line.iter().take(4).map(u8::to_ascii_uppercase).collect();
        let answer: &[u8] = match verb.as_slice() {
            b"HELO" | b"EHLO" => b"250 sink.test\r\n",
            b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => b"250 ok\r\n",
            b"DATA" => {
                c.write_all(b"354 go ahead\r\n").ok()?;
                data = Some(read_data(&mut c, &mut pending)?);
                b"250 ok queued\r\n"
            }
            b"QUIT" => {
                let _ = c.write_all(b"221 bye\r\n");
                return data;
            }
            _ => b"500 unrecognized\r\n",
        };
        c.write_all(answer).ok()?;
    }
}

fn read_more(c: &mut TcpStream, pending: &mut Vec<u8>) -> Option<()> {
    let mut buf = [0u8; 65536];
    match c.read(&mut buf) {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            pending.extend_from_slice(&buf[..n]);
            Some(())
        }
    }
}

fn read_line(c: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = pending.iter().position(|&b| b == b'\n') {
            return Some(pending.drain(..=i).collect());
        }
        read_more(c, pending)?;
    }
}

/// Reads until the terminating ".\r\n" line. The client waits for our reply after it, so the
/// terminator is always at the end of what has arrived; a stuffed body never contains
/// "\r\n.\r\n" before it.
fn read_data(c: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if pending.as_slice() == b".\r\n" || pending.ends_with(b"\r\n.\r\n") {
            return Some(std::mem::take(pending));
        }
        read_more(c, pending)?;
    }
}
