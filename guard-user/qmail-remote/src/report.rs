//! Report records on fd 1 in qmail-remote's grammar (docs/qmail-remote.md §1.6) and every stock text (§2.10).
//!
//! Output is collected in memory and written once at the end, like stock's buffered
//! `subfdoutsmall`: qmail-rspawn reads only after exit, and a single write keeps the report
//! atomic on the shared stdout/stderr pipe.

use std::fmt::Write as _;
use std::net::IpAddr;

/// The final (message) report: exactly one is written, last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// Allocation failure (kept for completeness; Rust aborts on OOM, which rspawn maps to Z).
    TempNomem,
    /// A system call that should not fail did (socket creation, ipme, DNS runtime).
    TempOserr,
    /// No address could be connected (all failed or skipped by tcpto).
    TempNoconn,
    /// Reading the message from fd 0 failed.
    TempRead,
    /// Temporary DNS failure.
    TempDns,
    /// chdir to the qmail home failed.
    TempChdir,
    /// A control file could not be read (or moreipme/notipme has a bad line).
    TempControl,
    /// The message does not end with LF.
    PermPartialline,
    /// Fewer than three arguments.
    PermUsage,
    /// The host (or relay) does not exist; bytes outside 33..=126 are shown as `?`.
    PermDns { host: Vec<u8> },
    /// No MX and no address for the host.
    PermNomx,
    /// We are a best-preference MX (or the A record), or the guard refused the connect.
    PermAmbigmx,
    /// The SMTP connection died; `critical` once the final dot was written; `err` (TLS
    /// sessions only, as the TLS patch) says why.
    Dropped {
        ip: IpAddr,
        critical: bool,
        err: Option<String>,
    },
    /// A TLS or AUTH record (docs/qmail-remote-tls.md §4, §5.2): the whole text up to the
    /// reply, then `Remote host said:` if `said` is not empty.
    Text { record: Vec<u8>, said: Vec<u8> },
    /// Greeting other than 220.
    GreetingFailed { ip: IpAddr, said: Vec<u8> },
    /// HELO answered other than 250.
    HeloRejected { ip: IpAddr, said: Vec<u8> },
    /// MAIL FROM answered 4xx (`perm` false) or 5xx (`perm` true).
    SenderRejected {
        ip: IpAddr,
        perm: bool,
        said: Vec<u8>,
    },
    /// No recipient was accepted.
    GivingUp { ip: IpAddr, said: Vec<u8> },
    /// DATA answered 4xx/5xx.
    DataFailed {
        ip: IpAddr,
        perm: bool,
        said: Vec<u8>,
    },
    /// The reply after the final dot was not 2xx.
    AfterDotFailed {
        ip: IpAddr,
        perm: bool,
        said: Vec<u8>,
    },
    /// 2xx after the final dot.
    Accepted { ip: IpAddr, said: Vec<u8> },
    /// A bug (panic) inside qmail-remote: temporary, so nothing is lost.
    Internal,
}

/// Text of the Internal report (not in stock; a panic must never bounce mail).
pub const INTERNAL_TEXT: &str =
    "Zqmail-remote hit an internal error; will try again later. (#4.3.0)\n";

const AMBIGMX: &str = "DSorry. Although I'm listed as a best-preference MX or A for that host,\n\
it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n";

/// `<ip>` as stock prints it: dotted quad for IPv4; RFC 5952 text for IPv6.
fn ip_text(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        // An IPv4-mapped peer is printed as the IPv4 address qmail users expect.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
    }
}

/// Appends `Remote host said: <reply>` if the reply text is non-empty (NULs shown as `?`).
fn push_said(out: &mut Vec<u8>, said: &[u8]) {
    if said.is_empty() {
        return;
    }
    out.extend_from_slice(b"Remote host said: ");
    out.extend(said.iter().map(|&b| if b == 0 { b'?' } else { b }));
}

/// stock `quit(prepend, append)`: `<prepend><ip><append>.\n` + said.
fn push_quit(out: &mut Vec<u8>, prepend: &str, ip: &IpAddr, append: &str, said: &[u8]) {
    let mut s = String::with_capacity(64);
    let _ = writeln!(s, "{prepend}{}{append}.", ip_text(ip));
    out.extend_from_slice(s.as_bytes());
    push_said(out, said);
}

fn letter(perm: bool) -> &'static str {
    if perm { "D" } else { "Z" }
}

impl Report {
    /// Appends the record (letter, text, NUL) to `out`.
    pub fn render(&self, out: &mut Vec<u8>) {
        match self {
            Report::TempNomem => out.extend_from_slice(b"ZOut of memory. (#4.3.0)\n"),
            Report::TempOserr => {
                out.extend_from_slice(b"ZSystem resources temporarily unavailable. (#4.3.0)\n")
            }
            Report::TempNoconn => out.extend_from_slice(
                b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n",
            ),
            Report::TempRead => out.extend_from_slice(b"ZUnable to read message. (#4.3.0)\n"),
            Report::TempDns => {
                out.extend_from_slice(b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n")
            }
            Report::TempChdir => {
                out.extend_from_slice(b"ZUnable to switch to home directory. (#4.3.0)\n")
            }
            Report::TempControl => {
                out.extend_from_slice(b"ZUnable to read control files. (#4.3.0)\n")
            }
            Report::PermPartialline => out.extend_from_slice(
                b"DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n",
            ),
            Report::PermUsage => {
                out.extend_from_slice(b"DI (qmail-remote) was invoked improperly. (#5.3.5)\n")
            }
            Report::PermDns { host } => {
                out.extend_from_slice(b"DSorry, I couldn't find any host named ");
                // stock outsafe(): unprintable bytes become '?'
                out.extend(
                    host.iter()
                        .map(|&b| if (33..=126).contains(&b) { b } else { b'?' }),
                );
                out.extend_from_slice(b". (#5.1.2)\n");
            }
            Report::PermNomx => out.extend_from_slice(
                b"DSorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n",
            ),
            Report::PermAmbigmx => out.extend_from_slice(AMBIGMX.as_bytes()),
            Report::Dropped { ip, critical, err } => {
                let dup = if *critical {
                    "Possible duplicate! "
                } else {
                    ""
                };
                let err = err.as_ref().map(|e| format!("{e} ")).unwrap_or_default();
                let s = format!(
                    "ZConnected to {} but connection died. {dup}{err}(#4.4.2)\n",
                    ip_text(ip)
                );
                out.extend_from_slice(s.as_bytes());
            }
            Report::Text { record, said } => {
                out.extend_from_slice(record);
                push_said(out, said);
            }
            Report::GreetingFailed { ip, said } => {
                push_quit(out, "ZConnected to ", ip, " but greeting failed", said)
            }
            Report::HeloRejected { ip, said } => {
                push_quit(out, "ZConnected to ", ip, " but my name was rejected", said)
            }
            Report::SenderRejected { ip, perm, said } => {
                let p = if *perm {
                    "DConnected to "
                } else {
                    "ZConnected to "
                };
                push_quit(out, p, ip, " but sender was rejected", said)
            }
            Report::GivingUp { ip, said } => push_quit(out, "DGiving up on ", ip, "", said),
            Report::DataFailed { ip, perm, said } => {
                push_quit(out, letter(*perm), ip, " failed on DATA command", said)
            }
            Report::AfterDotFailed { ip, perm, said } => push_quit(
                out,
                letter(*perm),
                ip,
                " failed after I sent the message",
                said,
            ),
            Report::Accepted { ip, said } => push_quit(out, "K", ip, " accepted message", said),
            Report::Internal => out.extend_from_slice(INTERNAL_TEXT.as_bytes()),
        }
        out.push(0);
    }
}

/// Builders for the TLS patch's texts (docs/qmail-remote-tls.md §4) and the AUTH texts (§5.2).
pub mod tls {
    use super::{IpAddr, Report, ip_text, push_quit};

    fn rec(parts: &[&[u8]], connected: bool, ip: &IpAddr) -> Vec<u8> {
        let mut v = Vec::with_capacity(96);
        for p in parts {
            v.extend_from_slice(p);
        }
        let tail = if connected {
            "; connected to "
        } else {
            "; connecting to "
        };
        v.extend_from_slice(format!("{tail}{}.\n", ip_text(ip)).as_bytes());
        v
    }

    fn text(record: Vec<u8>, said: Vec<u8>) -> Report {
        Report::Text { record, said }
    }

    /// T1: a .pem exists but the server offers no STARTTLS.
    pub fn no_tls(file: &str, ip: &IpAddr) -> Report {
        let r = [b"ZNo TLS achieved while ", file.as_bytes(), b" exists"];
        text(rec(&r, false, ip), Vec::new())
    }

    /// T2: STARTTLS answered other than 220 while a .pem exists.
    pub fn starttls_rejected(file: &str, ip: &IpAddr, said: Vec<u8>) -> Report {
        let r = [b"ZSTARTTLS rejected while ", file.as_bytes(), b" exists"];
        text(rec(&r, false, ip), said)
    }

    /// T3: the client context cannot be set up.
    pub fn init_ctx(err: &str, ip: &IpAddr) -> Report {
        let r = [b"ZTLS error initializing ctx: ", err.as_bytes()];
        text(rec(&r, false, ip), Vec::new())
    }

    /// T4: the CA file is unusable.
    pub fn load(file: &str, err: &str, ip: &IpAddr) -> Report {
        let r = [
            b"ZTLS unable to load ",
            file.as_bytes(),
            b": ",
            err.as_bytes(),
        ];
        text(rec(&r, false, ip), Vec::new())
    }

    /// T6: the handshake failed.
    pub fn connect_failed(err: &str, ip: &IpAddr) -> Report {
        let r = [b"ZTLS connect failed: ", err.as_bytes()];
        text(rec(&r, true, ip), Vec::new())
    }

    /// T7: the chain does not verify with the CA file.
    pub fn verify_chain(file: &str, reason: &str, ip: &IpAddr) -> Report {
        let r = [
            b"ZTLS unable to verify server with ",
            file.as_bytes(),
            b": ",
            reason.as_bytes(),
        ];
        text(rec(&r, true, ip), Vec::new())
    }

    /// T8-T11: `what` after `ZTLS unable to verify server <name>: `.
    pub fn verify_name(name: &[u8], what: &[u8], ip: &IpAddr) -> Report {
        let r = [b"ZTLS unable to verify server ", name, b": ", what];
        text(rec(&r, true, ip), Vec::new())
    }

    /// T12: the SMTPS greeting is not 220.
    pub fn greeting_failed(ip: &IpAddr, said: &[u8]) -> Report {
        let mut v = Vec::new();
        push_quit(
            &mut v,
            "ZTLS Connected to ",
            ip,
            " but greeting failed",
            said,
        );
        text(v, Vec::new())
    }

    /// `ZConnected to <ip> but <what>.` + said: the AUTH texts pass `what` with its own final
    /// period, hence the patch's `..`.
    pub fn connected_but(ip: &IpAddr, what: &str, said: &[u8]) -> Report {
        let mut v = Vec::new();
        push_quit(&mut v, "ZConnected to ", ip, &format!(" but {what}"), said);
        text(v, Vec::new())
    }
}

/// A per-recipient report (`r`, `h`, `s`), in argv order, before the message report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptReport {
    /// Accepted: `r` with empty text.
    Accepted,
    /// 5xx: `h<ip> does not like recipient.\n` + said.
    Perm { ip: IpAddr, said: Vec<u8> },
    /// 4xx: `s<ip> does not like recipient.\n` + said.
    Temp { ip: IpAddr, said: Vec<u8> },
}

impl RcptReport {
    /// Appends the record (letter, text, NUL) to `out`.
    pub fn render(&self, out: &mut Vec<u8>) {
        match self {
            RcptReport::Accepted => out.push(b'r'),
            RcptReport::Perm { ip, said } | RcptReport::Temp { ip, said } => {
                let l = if matches!(self, RcptReport::Perm { .. }) {
                    'h'
                } else {
                    's'
                };
                let s = format!("{l}{} does not like recipient.\n", ip_text(ip));
                out.extend_from_slice(s.as_bytes());
                push_said(out, said);
            }
        }
        out.push(0);
    }
}

/// The whole output of one run.
#[derive(Debug, Default)]
pub struct Output {
    buf: Vec<u8>,
    finished: bool,
}

impl Output {
    /// An empty output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a recipient report.
    pub fn recipient(&mut self, r: &RcptReport) {
        if !self.finished {
            r.render(&mut self.buf);
        }
    }

    /// Adds the message report; later calls are ignored (exactly one message report).
    pub fn finish(&mut self, r: &Report) {
        if !self.finished {
            r.render(&mut self.buf);
            self.finished = true;
        }
    }

    /// True once the message report was added.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The bytes to write to fd 1.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(rep: Report) -> Vec<u8> {
        let mut v = Vec::new();
        rep.render(&mut v);
        v
    }

    #[test]
    fn texts_are_stock() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            r(Report::PermAmbigmx),
            b"DSorry. Although I'm listed as a best-preference MX or A for that host,\nit isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n\0"
        );
        assert_eq!(
            r(Report::PermDns {
                host: b"a b\x80.c".to_vec()
            }),
            b"DSorry, I couldn't find any host named a?b?.c. (#5.1.2)\n\0"
        );
        assert_eq!(
            r(Report::Dropped {
                ip,
                critical: true,
                err: None
            }),
            b"ZConnected to 192.0.2.7 but connection died. Possible duplicate! (#4.4.2)\n\0"
        );
        assert_eq!(
            r(Report::Dropped {
                ip,
                critical: false,
                err: None
            }),
            b"ZConnected to 192.0.2.7 but connection died. (#4.4.2)\n\0"
        );
        assert_eq!(
            r(Report::Accepted {
                ip,
                said: b"250 ok\0x\n".to_vec()
            }),
            b"K192.0.2.7 accepted message.\nRemote host said: 250 ok?x\n\0"
        );
        assert_eq!(
            r(Report::GivingUp { ip, said: vec![] }),
            b"DGiving up on 192.0.2.7.\n\0"
        );
        let v6: IpAddr = "2001:db8::25".parse().unwrap();
        assert_eq!(
            r(Report::DataFailed {
                ip: v6,
                perm: false,
                said: b"451 x\n".to_vec()
            }),
            b"Z2001:db8::25 failed on DATA command.\nRemote host said: 451 x\n\0"
        );
    }

    #[test]
    fn fixed_texts() {
        let table: [(Report, &[u8]); 10] = [
            (Report::TempNomem, b"ZOut of memory. (#4.3.0)\n\0"),
            (
                Report::TempOserr,
                b"ZSystem resources temporarily unavailable. (#4.3.0)\n\0",
            ),
            (
                Report::TempNoconn,
                b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n\0",
            ),
            (Report::TempRead, b"ZUnable to read message. (#4.3.0)\n\0"),
            (
                Report::TempDns,
                b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n\0",
            ),
            (
                Report::TempChdir,
                b"ZUnable to switch to home directory. (#4.3.0)\n\0",
            ),
            (
                Report::TempControl,
                b"ZUnable to read control files. (#4.3.0)\n\0",
            ),
            (
                Report::PermPartialline,
                b"DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n\0",
            ),
            (
                Report::PermUsage,
                b"DI (qmail-remote) was invoked improperly. (#5.3.5)\n\0",
            ),
            (
                Report::PermNomx,
                b"DSorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n\0",
            ),
        ];
        for (rep, want) in table {
            assert_eq!(r(rep), want);
        }
    }

    #[test]
    fn recipients_and_single_final() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let mut o = Output::new();
        o.recipient(&RcptReport::Accepted);
        o.recipient(&RcptReport::Perm {
            ip,
            said: b"550 no\n".to_vec(),
        });
        o.finish(&Report::TempNoconn);
        o.finish(&Report::Internal);
        o.recipient(&RcptReport::Accepted);
        assert_eq!(
            o.bytes(),
            b"r\0h192.0.2.7 does not like recipient.\nRemote host said: 550 no\n\0ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n\0"
        );
    }

    #[test]
    fn tls_texts() {
        let ip: IpAddr = "203.0.113.25".parse().unwrap();
        let f = "control/tlshosts/mx.tls.test.pem";
        let cases: [(Report, &[u8]); 8] = [
            (
                tls::no_tls(f, &ip),
                b"ZNo TLS achieved while control/tlshosts/mx.tls.test.pem exists; connecting to 203.0.113.25.\n\0",
            ),
            (
                tls::starttls_rejected(f, &ip, b"454 not now\n".to_vec()),
                b"ZSTARTTLS rejected while control/tlshosts/mx.tls.test.pem exists; connecting to 203.0.113.25.\nRemote host said: 454 not now\n\0",
            ),
            (
                tls::connect_failed("timed out", &ip),
                b"ZTLS connect failed: timed out; connected to 203.0.113.25.\n\0",
            ),
            (
                tls::verify_chain(f, "self-signed certificate", &ip),
                b"ZTLS unable to verify server with control/tlshosts/mx.tls.test.pem: self-signed certificate; connected to 203.0.113.25.\n\0",
            ),
            (
                tls::verify_name(
                    b"mx.tls.test",
                    b"certificate contains no matching dNSNnames",
                    &ip,
                ),
                b"ZTLS unable to verify server mx.tls.test: certificate contains no matching dNSNnames; connected to 203.0.113.25.\n\0",
            ),
            (
                tls::greeting_failed(&ip, b"554 go away\n"),
                b"ZTLS Connected to 203.0.113.25 but greeting failed.\nRemote host said: 554 go away\n\0",
            ),
            (
                tls::connected_but(
                    &ip,
                    "authentication was rejected (plain).",
                    b"535 5.7.8 nope\n",
                ),
                b"ZConnected to 203.0.113.25 but authentication was rejected (plain)..\nRemote host said: 535 5.7.8 nope\n\0",
            ),
            (
                Report::Dropped {
                    ip,
                    critical: true,
                    err: Some("connection reset".into()),
                },
                b"ZConnected to 203.0.113.25 but connection died. Possible duplicate! connection reset (#4.4.2)\n\0",
            ),
        ];
        for (rep, want) in cases {
            assert_eq!(r(rep), want);
        }
    }
}
