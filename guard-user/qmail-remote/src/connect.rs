//! TCP connect with a timeout (stock timeoutconn.c) and the connected socket with per-operation
//! timeouts (timeoutread/timeoutwrite).
//!
//! The socket stays non-blocking; every read or write waits at most the timeout for progress,
//! like stock's select-then-read. TCP_NODELAY is set because the dialogue is strictly
//! request/response: without it the last segment of DATA waits for a delayed ACK (~40 ms).

use std::io::{self, Read as _};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, SockAddr, Socket, Type};

/// A connect attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The qmail-guard kernel hook refused the address (it is this host): perm_ambigmx.
    #[error("connect refused by qmail-guard (ELOOP): the address is this host")]
    Guard,
    /// EPERM: qmail-guard on a kernel without bpf_set_retval (< 5.18), or a local firewall;
    /// the errno alone cannot tell which.
    #[error("connect not permitted (EPERM): qmail-guard on an older kernel, or a firewall")]
    NotPermitted,
    /// The socket could not be created.
    #[error("cannot create socket")]
    Socket(#[source] io::Error),
    /// The connect failed or timed out; `timeout` counts for tcpto.
    #[error("connect failed")]
    Failed {
        /// ETIMEDOUT (ours or the kernel's).
        timeout: bool,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Seconds from a control file to a poll(2) timeout; non-positive means "do not wait".
pub fn poll_ms(secs: i32) -> i32 {
    if secs <= 0 {
        0
    } else {
        (i64::from(secs) * 1000).min(i64::from(i32::MAX)) as i32
    }
}

/// Waits until `fd` is ready for `events`; `Ok(false)` on timeout.
pub fn wait(fd: RawFd, events: libc::c_short, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        match r {
            0 => return Ok(false),
            r if r > 0 => return Ok(true),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

fn failed(e: io::Error) -> ConnectError {
    match e.raw_os_error() {
        Some(libc::ELOOP) => return ConnectError::Guard,
        Some(libc::EPERM) => return ConnectError::NotPermitted,
        _ => {}
    }
    ConnectError::Failed {
        timeout: e.raw_os_error() == Some(libc::ETIMEDOUT),
        source: e,
    }
}

/// Connects to `ip:port`, waiting at most `timeout_ms`.
pub fn connect(ip: IpAddr, port: u16, timeout_ms: i32) -> Result<Socket, ConnectError> {
    let addr = SocketAddr::new(ip, port);
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )
    .map_err(ConnectError::Socket)?;
    if let Err(e) = socket.connect(&SockAddr::from(addr)) {
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(failed(e));
        }
        match wait(socket.as_raw_fd(), libc::POLLOUT, timeout_ms) {
            Ok(true) => {}
            Ok(false) => {
                return Err(ConnectError::Failed {
                    timeout: true,
                    source: io::Error::from_raw_os_error(libc::ETIMEDOUT),
                });
            }
            Err(e) => return Err(failed(e)),
        }
        match socket.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return Err(failed(e)),
        }
    }
    // Failure only costs latency.
    let _ = socket.set_tcp_nodelay(true);
    Ok(socket)
}

/// True if the peer of `fd` closed or reset the connection (no waiting).
pub fn hung_up(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP) != 0
}

/// qmail's error_str() words for the errors a session meets; the OS text otherwise.
pub fn error_str(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) => "connection reset".into(),
        Some(libc::ETIMEDOUT) => "timed out".into(),
        Some(libc::EPIPE) => "broken pipe".into(),
        Some(libc::ECONNREFUSED) => "connection refused".into(),
        _ if e.kind() == io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// A connected SMTP socket with per-operation timeouts and a read buffer.
pub struct Conn {
    fd: Socket,
    timeout_ms: i32,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

impl Conn {
    /// Wraps a connected non-blocking socket.
    pub fn new(fd: Socket, timeout_ms: i32) -> Self {
        Conn {
            fd,
            timeout_ms,
            buf: vec![0; 4096],
            pos: 0,
            len: 0,
        }
    }

    /// Next byte from the peer. EOF, errors and timeouts are all errors ("connection died").
    pub fn byte(&mut self) -> io::Result<u8> {
        if self.pos == self.len {
            self.fill()?;
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(b)
    }

    fn fill(&mut self) -> io::Result<()> {
        loop {
            if !wait(self.fd.as_raw_fd(), libc::POLLIN, self.timeout_ms)? {
                return Err(io::ErrorKind::TimedOut.into());
            }
            match (&self.fd).read(&mut self.buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.pos = 0;
                    self.len = n;
                    return Ok(());
                }
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Writes everything, waiting at most the timeout for each bit of progress.
    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            // MSG_NOSIGNAL: a closed peer is an error here, never a SIGPIPE.
            let e = match self.fd.send_with_flags(data, libc::MSG_NOSIGNAL) {
                Ok(n) => {
                    data = &data[n..];
                    continue;
                }
                Err(e) => e,
            };
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    if !wait(self.fd.as_raw_fd(), libc::POLLOUT, self.timeout_ms)? {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                _ => return Err(e),
            }
        }
        Ok(())
    }

    /// True if the peer has already closed or reset the connection (checked without waiting).
    /// Unsolicited data does not count: only a hang-up or a socket error does.
    pub fn peer_gone(&self) -> bool {
        hung_up(self.fd.as_raw_fd())
    }

    /// The socket and its timeout, for a TLS session that takes the connection over. Bytes
    /// already read but not consumed are dropped: nothing the server sent in clear may be
    /// taken as part of the encrypted session.
    pub fn into_parts(self) -> (Socket, i32) {
        (self.fd, self.timeout_ms)
    }

    /// One non-blocking attempt, result ignored: used for QUIT, whose outcome changes nothing.
    pub fn send_and_forget(&mut self, data: &[u8]) {
        let _ = self
            .fd
            .send_with_flags(data, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn connect_refused_and_ok() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let fd = connect("127.0.0.1".parse().unwrap(), port, 5000).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut c = Conn::new(fd, 5000);
        s.write_all(b"220 hi\r\n").unwrap();
        assert_eq!(c.byte().unwrap(), b'2');
        c.write_all(b"QUIT\r\n").unwrap();
        let mut b = [0u8; 6];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"QUIT\r\n");
        drop(s);
        for _ in 0..7 {
            c.byte().unwrap();
        }
        assert_eq!(c.byte().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        drop(l);
        match connect("127.0.0.1".parse().unwrap(), port, 5000) {
            Err(ConnectError::Failed {
                timeout: false,
                source,
            }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ECONNREFUSED))
            }
            other => panic!("expected refused, got {other:?}"),
        }
    }

    #[test]
    fn read_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = connect(
            l.local_addr().unwrap().ip(),
            l.local_addr().unwrap().port(),
            5000,
        )
        .unwrap();
        let _s = l.accept().unwrap();
        let mut c = Conn::new(fd, 50);
        assert_eq!(c.byte().unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn ms() {
        assert_eq!(poll_ms(0), 0);
        assert_eq!(poll_ms(-5), 0);
        assert_eq!(poll_ms(60), 60_000);
        assert_eq!(poll_ms(i32::MAX), i32::MAX);
    }
}
