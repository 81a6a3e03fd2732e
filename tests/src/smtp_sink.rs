//! A scripted SMTP server for the qmail-remote tests: each stage (greeting, HELO, MAIL, RCPT,
//! DATA, after the dot) answers what the test says, or drops the connection, or stays silent
//! (for timeouts). Everything the client sent is recorded byte for byte.
//!
//! The listening socket can be created inside a network namespace ([`in_netns`]): a socket
//! keeps the namespace it was created in, so the serving threads need not be in it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// Runs `f` on a thread that has joined `ns` (setns affects only the calling thread), and
/// returns its result. Sockets created by `f` stay in `ns`.
pub fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.path();
    thread::spawn(move || {
        let fd =
            File::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        // SAFETY: setns on a descriptor we own, for this thread only.
        let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .unwrap_or_else(|_| panic!("thread in netns {} panicked", ns.name()))
}

/// What the server does at one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes verbatim (use [`Reply::line`] for one CRLF-terminated line).
    Send(Vec<u8>),
    /// Close the connection without answering.
    Drop,
    /// Never answer; keep the connection open until the client goes away.
    Silent,
    /// Send these bytes, then reset the connection (RST, not FIN: SO_LINGER 0).
    ThenReset(Vec<u8>),
}

impl Reply {
    /// One reply line; `\n` inside `s` separates lines of a multi-line reply.
    pub fn line(s: &str) -> Reply {
        let mut v = Vec::new();
        for l in s.split('\n') {
            v.extend_from_slice(l.as_bytes());
            v.extend_from_slice(b"\r\n");
        }
        Reply::Send(v)
    }

    /// Raw bytes, sent as given.
    pub fn raw(b: &[u8]) -> Reply {
        Reply::Send(b.to_vec())
    }
}

/// The answers of one session. Default: a server that accepts everything.
#[derive(Clone, Debug)]
pub struct Script {
    pub greeting: Reply,
    /// The reply to HELO, and to EHLO unless `ehlo` is set.
    pub helo: Reply,
    /// The reply to EHLO (its extensions), if different from HELO's.
    pub ehlo: Option<Reply>,
    /// The reply to STARTTLS (the sink never speaks TLS).
    pub starttls: Reply,
    pub mail: Reply,
    /// One per RCPT; the last one repeats.
    pub rcpt: Vec<Reply>,
    pub data: Reply,
    pub after_dot: Reply,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: Reply::line("220 sink.test ESMTP"),
            helo: Reply::line("250 sink.test"),
            ehlo: None,
            starttls: Reply::line("500 unrecognized"),
            mail: Reply::line("250 ok"),
            rcpt: vec![Reply::line("250 ok")],
            data: Reply::line("354 go ahead"),
            after_dot: Reply::line("250 ok queued"),
        }
    }
}

/// One finished connection.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// Every byte the client sent.
    pub received: Vec<u8>,
    /// The DATA payload as sent on the wire (dot-stuffed, CRLF), without the final `.\r\n`.
    pub data: Vec<u8>,
    /// The final `.\r\n` arrived.
    pub dot: bool,
    /// The client sent QUIT.
    pub quit: bool,
}

/// A running server. Drop stops it.
pub struct SmtpSink {
    addr: SocketAddr,
    /// The listening socket (owned by the accept thread), shut down to wake a blocked accept.
    listen_fd: std::os::fd::RawFd,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    sessions: Arc<Mutex<Vec<Session>>>,
    thread: Option<JoinHandle<()>>,
}

impl SmtpSink {
    /// Listens on `addr` (port 0 picks one), inside `netns` if given, and serves `script` to
    /// every connection.
    pub fn start(netns: Option<&Netns>, addr: &str, script: Script) -> SmtpSink {
        let addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|e| panic!("bad address {addr}: {e}"));
        let bind = move || TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"));
        let listener = match netns {
            Some(ns) => in_netns(ns, bind),
            None => bind(),
        }
        .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().expect("local addr");
        let listen_fd = listener.as_raw_fd();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let (s, a, ss) = (stop.clone(), accepted.clone(), sessions.clone());
        let thread = thread::spawn(move || accept_loop(listener, script, s, a, ss));
        SmtpSink {
            addr,
            listen_fd,
            stop,
            accepted,
            sessions,
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Finished sessions so far.
    pub fn sessions(&self) -> Vec<Session> {
        self.sessions.lock().unwrap().clone()
    }

    /// Waits up to 10 s until every accepted connection has finished; returns the sessions.
    pub fn finished_sessions(&self) -> Vec<Session> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.sessions();
            if s.len() >= self.connections() || Instant::now() > deadline {
                return s;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The only session; panics unless there was exactly one.
    pub fn one_session(&self) -> Session {
        let s = self.finished_sessions();
        assert_eq!(
            s.len(),
            1,
            "expected exactly one SMTP session at {}, got {s:?}",
            self.addr
        );
        s.into_iter().next().expect("one")
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // On Linux, shutdown() on a listening socket makes a blocked accept() return EINVAL; the
        // accept thread still owns (and closes) the socket, so the fd cannot have been reused.
        // SAFETY: shutdown on a descriptor that stays open until the thread below is joined.
        unsafe {
            libc::shutdown(self.listen_fd, libc::SHUT_RDWR);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    script: Script,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    sessions: Arc<Mutex<Vec<Session>>>,
) {
    let mut workers = Vec::new();
    // blocking accept: the greeting goes out the moment a client connects (benchmarks measure
    // qmail-remote's wall time through this server)
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, peer)) => {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (script, stop, sessions) = (script.clone(), stop.clone(), sessions.clone());
                workers.push(thread::spawn(move || {
                    let s = serve(conn, peer, &script, &stop);
                    sessions.lock().unwrap().push(s);
                }));
            }
            Err(_) => {
                if !stop.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    for w in workers {
        let _ = w.join();
    }
}

/// Reads one CRLF/LF-terminated line, recording it; None on EOF, error or stop.
fn read_line(
    conn: &mut TcpStream,
    pending: &mut VecDeque<u8>,
    s: &mut Session,
    stop: &AtomicBool,
) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            return Some(line);
        }
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        let mut buf = [0u8; 65536];
        match conn.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => {
                s.received.extend_from_slice(&buf[..n]);
                pending.extend(&buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return None,
        }
    }
}

/// Sends a reply; false if the session ends here (Drop, Silent handled by the caller).
fn answer(conn: &mut TcpStream, r: &Reply) -> bool {
    match r {
        Reply::Send(b) => conn.write_all(b).is_ok(),
        Reply::ThenReset(b) => {
            let off = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid linger struct for the duration of the call; closing the socket
            // afterwards (the caller ends the session) then sends RST.
            unsafe {
                libc::setsockopt(
                    conn.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const off).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            // linger is set first so the reset follows the reply as closely as possible
            let _ = conn.write_all(b);
            false
        }
        Reply::Drop | Reply::Silent => false,
    }
}

/// Waits until the client closes (or stop) without answering anything.
fn stay_silent(
    conn: &mut TcpStream,
    pending: &mut VecDeque<u8>,
    s: &mut Session,
    stop: &AtomicBool,
) {
    while read_line(conn, pending, s, stop).is_some() {}
}

fn serve(mut conn: TcpStream, peer: SocketAddr, script: &Script, stop: &AtomicBool) -> Session {
    let mut s = Session {
        peer: Some(peer),
        ..Session::default()
    };
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
    // a deque: taking a line off the front must not move the rest (1 MB messages)
    let mut pending = VecDeque::new();
    // a reply that ends the scripted dialogue: Drop closes, Silent waits for the client
    macro_rules! reply {
        ($r:expr) => {{
            let r: &Reply = $r;
            if *r == Reply::Silent {
                stay_silent(&mut conn, &mut pending, &mut s, stop);
                return s;
            }
            if !answer(&mut conn, r) {
                return s;
            }
        }};
    }
    reply!(&script.greeting);
    let mut rcpt_n = 0;
    while let Some(line) = read_line(&mut conn, &mut pending, &mut s, stop) {
        let verb: Vec<u8> = line.iter().take(4).map(u8::to_ascii_uppercase).collect();
        match verb.as_slice() {
            b"EHLO" => reply!(script.ehlo.as_ref().unwrap_or(&script.helo)),
            b"HELO" => reply!(&script.helo),
            b"STAR" => reply!(&script.starttls),
            b"MAIL" => reply!(&script.mail),
            b"RCPT" => {
                let i = rcpt_n.min(script.rcpt.len().saturating_sub(1));
                rcpt_n += 1;
                reply!(&script.rcpt[i]);
            }
            b"DATA" => {
                reply!(&script.data);
                let go = matches!(&script.data, Reply::Send(b) if b.first() == Some(&b'3'));
                if go {
                    loop {
                        let Some(l) = read_line(&mut conn, &mut pending, &mut s, stop) else {
                            return s;
                        };
                        if l == b".\r\n" {
                            s.dot = true;
                            break;
                        }
                        s.data.extend_from_slice(&l);
                    }
                    reply!(&script.after_dot);
                }
            }
            b"QUIT" => {
                s.quit = true;
                let _ = conn.write_all(b"221 bye\r\n");
                // the client does not wait for this; keep reading until it closes
                stay_silent(&mut conn, &mut pending, &mut s, stop);
                return s;
            }
            b"RSET" | b"NOOP" => reply!(&Reply::line("250 ok")),
            _ => reply!(&Reply::line("500 unrecognized")),
        }
    }
    s
}
