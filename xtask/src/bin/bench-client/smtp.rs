//! `smtp`: the floor of a delivery — the SMTP dialogue in lock-step and the already encoded
//! DATA payload from fd 0.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd as _;
use std::time::Duration;

/// Reads one SMTP reply (possibly multi-line); returns its code.
fn reply(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        // A complete reply ends with a line whose 4th byte is a space.
        let mut start = 0;
        while let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
            let l = &buf[start..start + i];
            if l.len() >= 4 && l[3] == b' ' {
                let code = std::str::from_utf8(&l[..3])
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| io::Error::other("bad reply code"))?;
                return Ok(code);
            }
            start += i + 1;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::other("connection closed before a reply"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub fn run(a: SocketAddr, helo: &str, sender: &str, recip: &str) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&a, Duration::from_secs(10))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = Vec::new();
    let step = |s: &mut TcpStream, buf: &mut Vec<u8>, line: Option<String>, want: u16| {
        if let Some(l) = line {
            s.write_all(l.as_bytes())?;
        }
        let code = reply(s, buf)?;
        if code / 100 != want / 100 {
            return Err(io::Error::other(format!("expected {want}, got {code}")));
        }
        Ok::<(), io::Error>(())
    };
    step(&mut s, &mut buf, None, 220)?;
    step(&mut s, &mut buf, Some(format!("HELO {helo}\r\n")), 250)?;
    step(
        &mut s,
        &mut buf,
        Some(format!("MAIL FROM:<{sender}>\r\n")),
        250,
    )?;
    step(
        &mut s,
        &mut buf,
        Some(format!("RCPT TO:<{recip}>\r\n")),
        250,
    )?;
    step(&mut s, &mut buf, Some("DATA\r\n".to_string()), 354)?;
    // SAFETY: fd 0 is the payload file for the whole run; ManuallyDrop keeps it open.
    let mut payload = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
    io::copy(&mut *payload, &mut s)?;
    step(&mut s, &mut buf, None, 250)?;
    // Like qmail-remote: QUIT without waiting for the answer.
    s.write_all(b"QUIT\r\n")?;
    Ok(())
}
