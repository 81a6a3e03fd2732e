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
use std::path::Path;

use super::blast::Encoder;
use super::connect::{self, Conn};
use super::ehlo::Ehlo;
use super::loopcheck::{LoopCheck, Looped};
use super::report::{Output, RcptReport, Report, tls as text};
use super::routes::Auth;
use super::sasl::{self, Mechanism};
use super::tls::{self, Policy, SetupError, TlsConn, VerifyError};

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
    /// The message size for `SIZE=` (fd 0 is a regular file), docs/qmail-remote-tls.md §6.
    pub size: Option<u64>,
    /// SMTP AUTH credentials of the route (docs/qmail-remote-tls.md §5).
    pub auth: &'a Auth,
    /// control/authcleartext exists: PLAIN/LOGIN may go out without TLS.
    pub auth_cleartext: bool,
}

/// How TLS applies to this session (docs/qmail-remote-tls.md §1).
pub struct TlsParams<'a> {
    /// The qmail home (control files), "" after the chdir.
    pub base: &'a Path,
    /// The host name the address came from; `None` for IP literals.
    pub name: Option<&'a [u8]>,
    /// Port 465: TLS right after connect.
    pub smtps: bool,
    /// False on the plaintext retry after a failed opportunistic handshake.
    pub allowed: bool,
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The message report.
    Done(Report),
    /// An opportunistic handshake failed (the report says so): connect again without TLS, as
    /// Postfix and Exim do (docs/qmail-remote-tls.md §1.2 step 5e).
    RetryClear(Report),
    /// The peer is our own server (the greeting check): QUIT was sent before MAIL FROM and
    /// no report made; the address counts as "me" in the loop rule.
    Looped(Looped),
}

/// The connection: plaintext, or TLS after STARTTLS/SMTPS.
enum Stream {
    Plain(Conn),
    Tls(Box<TlsConn>),
    /// Taken for the handshake, which failed.
    Gone,
}

/// One SMTP session on a connected socket.
pub struct Session {
    stream: Stream,
    ip: IpAddr,
    /// Text of the last reply, CRs removed, at most HUGESMTPTEXT bytes (stock smtptext).
    text: Vec<u8>,
    /// The final dot was written: a dropped connection may mean a duplicate.
    critical: bool,
    /// The greeting exchange's result.
    ehlo: Option<Ehlo>,
    /// Our own SMTP server's name, to recognise a loop (off when None).
    loopcheck: Option<LoopCheck>,
}

impl Session {
    /// A session with the peer `ip` on `conn`.
    pub fn new(conn: Conn, ip: IpAddr) -> Self {
        Session {
            stream: Stream::Plain(conn),
            ip,
            text: Vec::new(),
            critical: false,
            ehlo: None,
            loopcheck: None,
        }
    }

    /// Compares the peer's greeting and EHLO/HELO reply with our own server's name.
    pub fn with_loopcheck(mut self, lc: Option<LoopCheck>) -> Self {
        self.loopcheck = lc;
        self
    }

    /// After the greeting and after EHLO/HELO: if the last reply is our own server's, QUIT
    /// and the loop outcome.
    fn check_loop(&mut self) -> Option<Outcome> {
        let name = self.loopcheck.as_ref()?.matched(&self.text)?;
        self.quit(Report::PermAmbigmx);
        Some(Outcome::Looped(Looped { name }))
    }

    /// Whether the session is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// stock dropped(); on a TLS session the reason follows, as the TLS patch prints it (T13).
    fn dropped(&self, e: &io::Error) -> Report {
        let err = match (&self.stream, e.kind()) {
            (Stream::Tls(_), io::ErrorKind::UnexpectedEof)
            | (Stream::Plain(_) | Stream::Gone, _) => None,
            (Stream::Tls(_), _) => Some(connect::error_str(e)),
        };
        Report::Dropped {
            ip: self.ip,
            critical: self.critical,
            err,
        }
    }

    fn get(&mut self) -> Result<u8, Report> {
        let r = match &mut self.stream {
            Stream::Plain(c) => c.byte(),
            Stream::Tls(t) => t.byte(),
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
        };
        match r {
            Ok(b) => {
                if b != b'\r' && self.text.len() < HUGESMTPTEXT {
                    self.text.push(b);
                }
                Ok(b)
            }
            Err(e) => Err(self.dropped(&e)),
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
        let r = match &mut self.stream {
            Stream::Plain(c) => c.write_all(data),
            Stream::Tls(t) => t.write_all(data),
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
        };
        r.map_err(|e| self.dropped(&e))
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

    /// `EHLO`: the parsed extensions if answered 250 (docs/qmail-remote-tls.md §1.2 steps 2-4).
    fn ehlo_cmd(&mut self, name: &[u8]) -> Result<Option<Ehlo>, Report> {
        Ok((self.command(b"EHLO ", name, b"")? == 250).then(|| Ehlo::parse(&self.text)))
    }

    /// Step 7: without a 250 to EHLO, `HELO`, which must get 250; `Err` is the report.
    fn helo_fallback(&mut self, name: &[u8]) -> Result<(), Report> {
        if self.ehlo.is_some() {
            return Ok(());
        }
        if self.command(b"HELO ", name, b"")? == 250 {
            self.ehlo = Some(Ehlo::default());
            return Ok(());
        }
        let (ip, said) = (self.ip, self.said());
        Err(self.quit(Report::HeloRejected { ip, said }))
    }

    /// The server's extensions from the last successful EHLO (empty after a HELO fallback).
    pub fn ehlo(&self) -> Option<&Ehlo> {
        self.ehlo.as_ref()
    }

    /// stock quit(): QUIT is written before the report, its reply never read; over TLS a
    /// close_notify follows. After a failed handshake there is nothing to write to.
    fn quit(&mut self, r: Report) -> Report {
        match &mut self.stream {
            Stream::Plain(c) => c.send_and_forget(b"QUIT\r\n"),
            Stream::Tls(t) => t.quit(),
            Stream::Gone => {}
        }
        r
    }

    /// Runs the whole transaction; recipient reports go to `out`, the message report is
    /// returned. The socket is closed when the session is dropped.
    pub fn deliver(
        mut self,
        env: &Envelope<'_>,
        tlsp: &TlsParams<'_>,
        msg: &mut dyn Read,
        out: &mut Output,
    ) -> Outcome {
        match self.dialogue(env, tlsp, msg, out) {
            Ok(o) => o,
            Err(r) => Outcome::Done(r),
        }
    }

    /// Takes the connection over with TLS; `Err` is the handshake failure's report (T6).
    fn handshake(&mut self, setup: &tls::Setup) -> Result<(), Report> {
        let conn = match std::mem::replace(&mut self.stream, Stream::Gone) {
            Stream::Plain(c) => c,
            other => {
                self.stream = other;
                return Ok(());
            }
        };
        match TlsConn::handshake(conn, setup, self.ip) {
            Ok(t) => {
                self.stream = Stream::Tls(Box::new(t));
                Ok(())
            }
            Err(e) => Err(text::connect_failed(&e.to_string(), &self.ip)),
        }
    }

    /// The TLS patch's post-handshake checks (docs/qmail-remote-tls.md §3.3); QUIT over TLS and
    /// the report on failure.
    fn check_peer(&mut self, setup: &tls::Setup, policy: &Policy) -> Result<(), Report> {
        let Policy::Required { file, name } = policy else {
            return Ok(());
        };
        let certs = match &self.stream {
            Stream::Tls(t) => t.peer_certificates(),
            _ => None,
        };
        let ip = self.ip;
        let r = match tls::verify(setup, certs, name, pki_types::UnixTime::now()) {
            Ok(()) => return Ok(()),
            Err(VerifyError::Chain(why)) => text::verify_chain(file, &why, &ip),
            Err(VerifyError::NoCertificate) => {
                text::verify_name(name, b"no certificate provided", &ip)
            }
            Err(VerifyError::NoCommonName) => {
                text::verify_name(name, b"certificate contains no valid commonName", &ip)
            }
            Err(VerifyError::WrongCommonName(cn)) => {
                let mut w = b"received certificate for ".to_vec();
                w.extend(
                    cn.iter()
                        .map(|&b| if (33..=126).contains(&b) { b } else { b'?' }),
                );
                text::verify_name(name, &w, &ip)
            }
            Err(VerifyError::NoMatchingDnsName) => {
                text::verify_name(name, b"certificate contains no matching dNSNnames", &ip)
            }
        };
        Err(self.quit(r))
    }

    /// Step 5c: the client configuration, or the report (QUIT first: still plaintext).
    fn tls_setup(&mut self, tlsp: &TlsParams<'_>, policy: &Policy) -> Result<tls::Setup, Report> {
        let ip = self.ip;
        tls::setup(tlsp.base, policy).map_err(|e| {
            let r = match e {
                SetupError::Ciphers(err) => text::init_ctx(&err, &ip),
                SetupError::CaFile(err) => match policy {
                    Policy::Required { file, .. } => text::load(file, &err, &ip),
                    _ => text::init_ctx(&err, &ip),
                },
                SetupError::Unreadable(_) => Report::TempControl,
            };
            if tlsp.smtps { r } else { self.quit(r) }
        })
    }

    /// Greeting, EHLO, STARTTLS or SMTPS, EHLO again, HELO fallback (docs/qmail-remote-tls.md
    /// §1.2, §1.3). `Ok(None)`: go on with MAIL; `Ok(Some(_))`: the session's outcome.
    fn open(
        &mut self,
        env: &Envelope<'_>,
        tlsp: &TlsParams<'_>,
    ) -> Result<Option<Outcome>, Report> {
        let ip = self.ip;
        let policy = if tlsp.allowed {
            tls::policy(tlsp.base, tlsp.name).map_err(|_| Report::TempControl)?
        } else {
            Policy::Off
        };
        if tlsp.smtps {
            // TLS is the transport on 465: notlshosts/exhaustivelist do not switch it off
            let policy = match policy {
                Policy::Off => Policy::Opportunistic,
                p => p,
            };
            let setup = self.tls_setup(tlsp, &policy)?;
            self.handshake(&setup)?;
            self.check_peer(&setup, &policy)?;
            if self.code()? != 220 {
                let said = self.said();
                return Err(self.quit(text::greeting_failed(&ip, &said)));
            }
            self.ehlo = self.ehlo_cmd(env.helo)?;
            self.helo_fallback(env.helo)?;
            return Ok(None);
        }
        if self.code()? != 220 {
            let said = self.said();
            return Err(self.quit(Report::GreetingFailed { ip, said }));
        }
        if let Some(o) = self.check_loop() {
            return Ok(Some(o));
        }
        self.ehlo = self.ehlo_cmd(env.helo)?;
        if let Some(o) = self.check_loop() {
            return Ok(Some(o));
        }
        if policy != Policy::Off {
            let offered = self.ehlo.as_ref().is_some_and(|e| e.has(b"STARTTLS"));
            if !offered {
                if let Policy::Required { file, .. } = &policy {
                    let r = text::no_tls(file, &ip);
                    return Err(self.quit(r));
                }
            } else {
                let setup = self.tls_setup(tlsp, &policy)?;
                if self.command(b"STARTTLS", b"", b"")? != 220 {
                    if let Policy::Required { file, .. } = &policy {
                        let said = self.said();
                        let r = text::starttls_rejected(file, &ip, said);
                        return Err(self.quit(r));
                    }
                    // opportunistic: on in clear with the first EHLO's extensions
                } else {
                    if let Err(r) = self.handshake(&setup) {
                        return match policy {
                            Policy::Required { .. } => Err(r),
                            _ => Ok(Some(Outcome::RetryClear(r))),
                        };
                    }
                    self.check_peer(&setup, &policy)?;
                    self.ehlo = self.ehlo_cmd(env.helo)?;
                }
            }
        }
        self.helo_fallback(env.helo)?;
        Ok(self.check_loop())
    }

    /// SMTP AUTH (docs/qmail-remote-tls.md §5.2): `Ok(true)` once authenticated, `Ok(false)`
    /// if the server offers nothing we speak (then on without AUTH), `Err` is the report.
    fn authenticate(&mut self, env: &Envelope<'_>) -> Result<bool, Report> {
        let (user, password) = match env.auth {
            Auth::None => return Ok(false),
            Auth::Malformed => return Err(self.quit(Report::TempControl)),
            Auth::Login { user, password } => (user, password),
        };
        let offered = self
            .ehlo
            .as_ref()
            .map(Ehlo::auth_mechanisms)
            .unwrap_or_default();
        let Some(mech) = Mechanism::choose(&offered) else {
            return Ok(false);
        };
        let ip = self.ip;
        if mech.reveals_password() && !self.is_tls() && !env.auth_cleartext {
            let r = text::connected_but(&ip, "refusing to authenticate without TLS", b"");
            return Err(self.quit(r));
        }
        let fail = |s: &mut Self, what: &str| {
            let said = s.said();
            let r = text::connected_but(&ip, what, &said);
            s.quit(r)
        };
        let code = self.command(b"AUTH ", mech.name().as_bytes(), b"")?;
        if code != 334 {
            let what = format!("authentication was rejected (AUTH {}).", mech.name());
            return Err(fail(self, &what));
        }
        let (last, what) = match mech {
            Mechanism::Plain => (
                sasl::plain(user, password),
                "authentication was rejected (plain).",
            ),
            Mechanism::Login => {
                if self.command(&sasl::b64encode(user), b"", b"")? != 334 {
                    return Err(fail(self, "authentication was rejected (username)."));
                }
                (
                    sasl::b64encode(password),
                    "authentication was rejected (password).",
                )
            }
            Mechanism::CramMd5 => {
                let line = self.text.split(|&b| b == b'\n').next().unwrap_or_default();
                let Some(challenge) = line.get(4..).and_then(sasl::b64decode) else {
                    return Err(fail(self, "unable to base64decode challenge."));
                };
                (
                    sasl::cram_md5(user, password, &challenge),
                    "authentication was rejected (username+digest).",
                )
            }
        };
        match self.command(&last, b"", b"")? {
            235 => Ok(true),
            432 => Err(fail(self, "password expired.")),
            _ => Err(fail(self, what)),
        }
    }

    fn dialogue(
        &mut self,
        env: &Envelope<'_>,
        tlsp: &TlsParams<'_>,
        msg: &mut dyn Read,
        out: &mut Output,
    ) -> Result<Outcome, Report> {
        let ip = self.ip;
        if let Some(o) = self.open(env, tlsp)? {
            return Ok(o);
        }
        let authenticated = self.authenticate(env)?;
        let mut params = Vec::new();
        if let Some(n) = env.size
            && self.ehlo.as_ref().is_some_and(|e| e.has(b"SIZE"))
        {
            params.extend_from_slice(format!(" SIZE={n}").as_bytes());
        }
        if authenticated {
            params.extend_from_slice(b" AUTH=<>");
        }
        let mut close = b">".to_vec();
        close.extend_from_slice(&params);
        let code = self.command(b"MAIL FROM:<", env.sender, &close)?;
        if code >= 400 {
            let said = self.said();
            return Ok(Outcome::Done(self.quit(Report::SenderRejected {
                ip,
                perm: code >= 500,
                said,
            })));
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
            return Ok(Outcome::Done(self.quit(Report::GivingUp { ip, said })));
        }
        let code = self.command(b"DATA", b"", b"")?;
        if code >= 400 {
            let said = self.said();
            return Ok(Outcome::Done(self.quit(Report::DataFailed {
                ip,
                perm: code >= 500,
                said,
            })));
        }
        self.blast(msg)?;
        let code = self.code()?;
        self.critical = false;
        let said = self.said();
        Ok(Outcome::Done(self.quit(match code {
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
        })))
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
        let gone = match &self.stream {
            Stream::Plain(c) => c.peer_gone(),
            Stream::Tls(t) => t.peer_gone(),
            Stream::Gone => true,
        };
        if gone {
            let e = io::Error::from(io::ErrorKind::UnexpectedEof);
            return Err(self.dropped(&e));
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
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::thread::JoinHandle;

    /// A peer on a loopback port: `talk` gets the accepted connection and returns what it
    /// received.
    fn serve(
        talk: impl FnOnce(TcpStream) -> Vec<u8> + Send + 'static,
    ) -> (SocketAddr, JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let peer = std::thread::spawn(move || talk(l.accept().unwrap().0));
        (addr, peer)
    }

    /// One session to `addr` with the tests' envelope (helo me.test, sender s@x.test, the one
    /// recipient a@example.test, no SIZE, no AUTH) and no TLS; the outcome and the recipient
    /// reports.
    fn deliver_to(addr: SocketAddr, lc: Option<LoopCheck>, msg: &[u8]) -> (Outcome, Output) {
        let fd = connect::connect(addr.ip(), addr.port(), 5000).unwrap();
        let s = Session::new(Conn::new(fd, 5000), addr.ip()).with_loopcheck(lc);
        let recips = vec![b"a@example.test".to_vec()];
        let env = Envelope {
            helo: b"me.test",
            sender: b"s@x.test",
            recips: &recips,
            size: None,
            auth: &Auth::None,
            auth_cleartext: false,
        };
        let tlsp = TlsParams {
            base: Path::new("/nonexistent"),
            name: None,
            smtps: false,
            allowed: false,
        };
        let mut out = Output::new();
        let mut m = msg;
        let o = s.deliver(&env, &tlsp, &mut m, &mut out);
        (o, out)
    }

    /// Runs a session against a scripted peer: `script` maps each received line (or the
    /// greeting, None) to the reply to send. Returns (report bytes, bytes the peer received).
    fn run(replies: &'static [&'static str], msg: &'static [u8]) -> (Vec<u8>, Vec<u8>) {
        let (addr, peer) = serve(move |s| {
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
        let (o, mut out) = deliver_to(addr, None, msg);
        let Outcome::Done(rep) = o else {
            panic!("no TLS and no loop check here: {o:?}")
        };
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

    /// A peer that greets (or answers EHLO) with our own name: QUIT before MAIL FROM, no
    /// report, the name it used.
    fn looped(greeting: &'static str, ehlo: &'static str) -> (Outcome, Vec<u8>) {
        let (addr, peer) = serve(move |s| {
            let mut w = s.try_clone().unwrap();
            w.write_all(greeting.as_bytes()).unwrap();
            let mut r = BufReader::new(s);
            let mut got = Vec::new();
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).unwrap() > 0 {
                got.extend_from_slice(&line);
                if line.starts_with(b"EHLO") {
                    w.write_all(ehlo.as_bytes()).unwrap();
                } else if line.starts_with(b"MAIL") {
                    w.write_all(b"550 no\r\n").unwrap();
                } else if line.starts_with(b"QUIT") {
                    break;
                }
                line.clear();
            }
            got
        });
        let lc = LoopCheck::new(b"mail.example.test");
        let (o, out) = deliver_to(addr, Some(lc), b"x\n");
        assert!(out.bytes().is_empty(), "no recipient report");
        (o, peer.join().unwrap())
    }

    #[test]
    fn our_own_greeting_ends_the_session_before_mail_from() {
        let (o, got) = looped("220 Mail.Example.Test ESMTP\r\n", "");
        assert_eq!(
            o,
            Outcome::Looped(Looped {
                name: b"Mail.Example.Test".to_vec()
            })
        );
        assert_eq!(got, b"QUIT\r\n");
        // a server that greets generically but answers EHLO with our name
        let (o, got) = looped(
            "220 ready\r\n",
            "250-mail.example.test\r\n250 PIPELINING\r\n",
        );
        assert!(matches!(o, Outcome::Looped(_)), "{o:?}");
        assert_eq!(got, b"EHLO me.test\r\nQUIT\r\n");
        // someone else: the transaction goes on
        let (o, got) = looped("220 other.test\r\n", "250 other.test\r\n");
        assert!(matches!(o, Outcome::Done(_)), "{o:?}");
        assert!(
            got.starts_with(b"EHLO me.test\r\nMAIL FROM:<s@x.test>\r\n"),
            "{got:?}"
        );
    }
}
