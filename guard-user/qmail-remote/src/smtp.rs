//! The SMTP dialogue (docs/qmail-remote.md §2.8): greeting, EHLO (HELO if EHLO is not answered
//! 250, as the TLS patch does: docs/qmail-remote-tls.md §1.2), MAIL, one RCPT per recipient,
//! DATA, body, QUIT without waiting. Reply parsing and every decision follow stock qmail-remote.c.
//!
//! Deviations, each so that no mail is lost or duplicated:
//! - K only for a 2xx reply after the final dot; stock also accepted 1xx/3xx (now Z).
//! - "Possible duplicate!" only once the final dot was handed to the kernel; stock raised it
//!   before the last write of up to 1 KB of body plus the dot, so a reset during the body gave
//!   a false duplicate warning.
//! - QUIT is one non-blocking send whose failure is ignored; stock reported "connection died"
//!   (Z, so the message was sent again) when writing QUIT failed after the verdict.

use std::io::{self, Read};
use std::net::IpAddr;

use super::blast::Encoder;
use super::connect::Conn;
use super::ehlo::Ehlo;
use super::report::{Output, RcptReport, Report};

/// At most this many bytes of a reply are kept for the report (stock HUGESMTPTEXT).
const HUGESMTPTEXT: usize = 5000;
/// The body is sent in writes of at least this size (and read in pieces of half of it); both
/// buffers stay below glibc's mmap threshold so they come from the heap without extra calls.
const CHUNK: usize = 64 * 1024;
/// The end of DATA, as the encoder appends it.
const DOT: &[u8] = b".\r\n";

/// What to send.
pub struct Envelope<'a> {
    /// EHLO/HELO argument.
    pub helo: &'a [u8],
    /// Mangled sender.
    pub sender: &'a [u8],
    /// Mangled recipients, in argv order.
    pub recips: &'a [Vec<u8>],
}

/// One SMTP session on a connected socket.
pub struct Session {
    conn: Conn,
    ip: IpAddr,
    /// Text of the last reply, CRs removed, at most HUGESMTPTEXT bytes (stock smtptext).
    text: Vec<u8>,
    /// The final dot was written: a dropped connection may mean a duplicate.
    critical: bool,
    /// The greeting exchange's result.
    ehlo: Option<Ehlo>,
}

impl Session {
    /// A session with the peer `ip` on `conn`.
    pub fn new(conn: Conn, ip: IpAddr) -> Self {
        Session {
            conn,
            ip,
            text: Vec::new(),
            critical: false,
            ehlo: None,
        }
    }

    fn dropped(&self) -> Report {
        Report::Dropped {
            ip: self.ip,
            critical: self.critical,
        }
    }

    fn get(&mut self) -> Result<u8, Report> {
        match self.conn.byte() {
            Ok(b) => {
                if b != b'\r' && self.text.len() < HUGESMTPTEXT {
                    self.text.push(b);
                }
                Ok(b)
            }
            Err(_) => Err(self.dropped()),
        }
    }

    /// stock smtpcode(): the first three bytes are the code (not validated: C unsigned
    /// arithmetic on `ch - '0'`, so garbage gives a huge code, i.e. >= 500); `-` in the fourth
    /// position continues; the codes of continuation lines are ignored.
    fn code(&mut self) -> Result<u64, Report> {
        self.text.clear();
        let digit = |c: u8| (i64::from(c) - 48) as u64;
        let mut code = digit(self.get()?);
        code = code.wrapping_mul(10).wrapping_add(digit(self.get()?));
        code = code.wrapping_mul(10).wrapping_add(digit(self.get()?));
        let mut ch;
        loop {
            ch = self.get()?;
            if ch != b'-' {
                break;
            }
            while ch != b'\n' {
                ch = self.get()?;
            }
            for _ in 0..3 {
                self.get()?;
            }
        }
        while ch != b'\n' {
            ch = self.get()?;
        }
        Ok(code)
    }

    fn send(&mut self, data: &[u8]) -> Result<(), Report> {
        self.conn.write_all(data).map_err(|_| self.dropped())
    }

    fn command(&mut self, verb: &[u8], arg: &[u8], close: &[u8]) -> Result<u64, Report> {
        let mut c = Vec::with_capacity(verb.len() + arg.len() + close.len() + 2);
        c.extend_from_slice(verb);
        c.extend_from_slice(arg);
        c.extend_from_slice(close);
        c.extend_from_slice(b"\r\n");
        self.send(&c)?;
        self.code()
    }

    /// The reply text for the report; taking it empties it, like stock outsmtptext().
    fn said(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.text)
    }

    /// `EHLO`; a reply other than 250 falls back to `HELO`, which must get 250 (the TLS
    /// patch's order, docs/qmail-remote-tls.md §1.2 steps 2, 7). `Some` with the parsed
    /// extensions after EHLO, `Some` without any after HELO, `None` if HELO was rejected (the
    /// reply text is then in `self.text`).
    fn hello(&mut self, name: &[u8]) -> Result<Option<Ehlo>, Report> {
        if self.command(b"EHLO ", name, b"")? == 250 {
            return Ok(Some(Ehlo::parse(&self.text)));
        }
        if self.command(b"HELO ", name, b"")? == 250 {
            return Ok(Some(Ehlo::default()));
        }
        Ok(None)
    }

    /// The server's extensions from the last successful EHLO (empty after a HELO fallback).
    pub fn ehlo(&self) -> Option<&Ehlo> {
        self.ehlo.as_ref()
    }

    /// stock quit(): QUIT is written before the report, its reply never read.
    fn quit(&mut self, r: Report) -> Report {
        self.conn.send_and_forget(b"QUIT\r\n");
        r
    }

    /// Runs the whole transaction; recipient reports go to `out`, the message report is
    /// returned. The socket is closed when the session is dropped.
    pub fn deliver(mut self, env: &Envelope<'_>, msg: &mut dyn Read, out: &mut Output) -> Report {
        match self.dialogue(env, msg, out) {
            Ok(r) | Err(r) => r,
        }
    }

    fn dialogue(
        &mut self,
        env: &Envelope<'_>,
        msg: &mut dyn Read,
        out: &mut Output,
    ) -> Result<Report, Report> {
        let ip = self.ip;
        if self.code()? != 220 {
            let said = self.said();
            return Ok(self.quit(Report::GreetingFailed { ip, said }));
        }
        self.ehlo = self.hello(env.helo)?;
        if self.ehlo.is_none() {
            let said = self.said();
            return Ok(self.quit(Report::HeloRejected { ip, said }));
        }
        let code = self.command(b"MAIL FROM:<", env.sender, b">")?;
        if code >= 400 {
            let said = self.said();
            return Ok(self.quit(Report::SenderRejected {
                ip,
                perm: code >= 500,
                said,
            }));
        }
        let mut bother = false;
        for r in env.recips {
            let code = self.command(b"RCPT TO:<", r, b">")?;
            if code >= 500 {
                out.recipient(&RcptReport::Perm {
                    ip,
                    said: self.said(),
                });
            } else if code >= 400 {
                out.recipient(&RcptReport::Temp {
                    ip,
                    said: self.said(),
                });
            } else {
                out.recipient(&RcptReport::Accepted);
                bother = true;
            }
        }
        if !bother {
            let said = self.said();
            return Ok(self.quit(Report::GivingUp { ip, said }));
        }
        let code = self.command(b"DATA", b"", b"")?;
        if code >= 400 {
            let said = self.said();
            return Ok(self.quit(Report::DataFailed {
                ip,
                perm: code >= 500,
                said,
            }));
        }
        self.blast(msg)?;
        let code = self.code()?;
        self.critical = false;
        let said = self.said();
        Ok(self.quit(match code {
            200..=299 => Report::Accepted { ip, said },
            c if c >= 500 => Report::AfterDotFailed {
                ip,
                perm: true,
                said,
            },
            _ => Report::AfterDotFailed {
                ip,
                perm: false,
                said,
            },
        }))
    }

    /// Sends the body and the final dot. Read errors and partial final lines end the session
    /// without QUIT and without the dot, so the peer discards the transaction (stock).
    fn blast(&mut self, msg: &mut dyn Read) -> Result<(), Report> {
        let mut enc = Encoder::new();
        let mut inbuf = vec![0u8; CHUNK / 2];
        let mut wire = Vec::with_capacity(CHUNK + CHUNK / 4);
        loop {
            let n = match msg.read(&mut inbuf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(Report::TempRead),
            };
            enc.feed(&inbuf[..n], &mut wire);
            if wire.len() >= CHUNK {
                self.send(&wire)?;
                wire.clear();
            }
        }
        enc.finish(&mut wire).map_err(|_| Report::PermPartialline)?;
        // "Possible duplicate!" only once the server can have the dot: a connection that dies
        // while body bytes are still going out (a reset right after 354) cannot have delivered
        // the message. So the dot goes in a write of its own, after checking the peer has not
        // hung up meanwhile, and the flag is raised once the kernel has taken it.
        let body = wire.len() - DOT.len();
        self.send(&wire[..body])?;
        if self.conn.peer_gone() {
            return Err(self.dropped());
        }
        self.send(DOT)?;
        self.critical = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::{self, Conn};
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// Runs a session against a scripted peer: `script` maps each received line (or the
    /// greeting, None) to the reply to send. Returns (report bytes, bytes the peer received).
    fn run(replies: &'static [&'static str], msg: &'static [u8]) -> (Vec<u8>, Vec<u8>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut got = Vec::new();
            let mut it = replies.iter();
            if let Some(g) = it.next() {
                w.write_all(g.as_bytes()).unwrap();
            }
            let mut in_data = false;
            for rep in it {
                loop {
                    let mut line = Vec::new();
                    if r.read_until(b'\n', &mut line).unwrap() == 0 {
                        return got;
                    }
                    got.extend_from_slice(&line);
                    if !in_data || line == b".\r\n" {
                        in_data = line == b"DATA\r\n" && rep.starts_with('3');
                        break;
                    }
                }
                if rep.is_empty() {
                    return got; // drop the connection
                }
                w.write_all(rep.as_bytes()).unwrap();
            }
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest);
            got.extend_from_slice(&rest);
            got
        });
        let fd = connect::connect(addr.ip(), addr.port(), 5000).unwrap();
        let s = Session::new(Conn::new(fd, 5000), addr.ip());
        let recips = vec![b"a@example.test".to_vec()];
        let env = Envelope {
            helo: b"me.test",
            sender: b"s@x.test",
            recips: &recips,
        };
        let mut out = Output::new();
        let mut m: &[u8] = msg;
        let rep = s.deliver(&env, &mut m, &mut out);
        out.finish(&rep);
        (out.bytes().to_vec(), peer.join().unwrap())
    }

    #[test]
    fn success_and_wire() {
        let (o, got) = run(
            &[
                "220 hi\r\n",
                "250 h\r\n",
                "250 m\r\n",
                "250 r\r\n",
                "354 go\r\n",
                "250-ok\r\n250 queued\r\n",
            ],
            b"Subject: x\n\n.hi\n",
        );
        assert_eq!(
            o,
            b"r\0K127.0.0.1 accepted message.\nRemote host said: 250-ok\n250 queued\n\0"
        );
        assert_eq!(
            got,
            b"EHLO me.test\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\nSubject: x\r\n\r\n..hi\r\n.\r\nQUIT\r\n"
        );
    }

    #[test]
    fn dropped_after_dot_is_possible_duplicate() {
        let (o, _) = run(
            &[
                "220 hi\r\n",
                "250 h\r\n",
                "250 m\r\n",
                "250 r\r\n",
                "354 go\r\n",
                "",
            ],
            b"x\n",
        );
        assert_eq!(
            o,
            b"r\0ZConnected to 127.0.0.1 but connection died. Possible duplicate! (#4.4.2)\n\0"
        );
    }

    #[test]
    fn garbage_code_is_permanent() {
        let (o, _) = run(&["220 hi\r\n", "250 h\r\n", "xyz what\r\n"], b"x\n");
        assert_eq!(
            o,
            b"DConnected to 127.0.0.1 but sender was rejected.\nRemote host said: xyz what\n\0"
        );
    }

    #[test]
    fn ehlo_falls_back_to_helo() {
        let (o, got) = run(
            &[
                "220 hi\r\n",
                "502 no ehlo\r\n",
                "250 h\r\n",
                "250 m\r\n",
                "250 r\r\n",
                "354 go\r\n",
                "250 ok\r\n",
            ],
            b"x\n",
        );
        assert_eq!(
            o,
            b"r\0K127.0.0.1 accepted message.\nRemote host said: 250 ok\n\0"
        );
        assert!(got.starts_with(b"EHLO me.test\r\nHELO me.test\r\nMAIL FROM:<s@x.test>\r\n"));
        let (o, got) = run(&["220 hi\r\n", "500 what\r\n", "550 go away\r\n"], b"x\n");
        assert_eq!(
            o,
            b"ZConnected to 127.0.0.1 but my name was rejected.\nRemote host said: 550 go away\n\0"
        );
        assert_eq!(got, b"EHLO me.test\r\nHELO me.test\r\nQUIT\r\n");
    }
}
