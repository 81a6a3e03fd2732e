//! One delivery, in stock order (docs/qmail-remote.md §2.1): arguments, chdir, control files, route, sender,
//! ipme, recipients, DNS, loop rule, connect loop with tcpto, SMTP.

use std::ffi::OsString;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

use super::args::Args;
use super::connect::{self, Conn, ConnectError, poll_ms};
use super::control;
use super::dns::{self, Candidate, DnsError, Lcg, MxResult};
use super::loopcheck::{self, LoopCheck, Looped};
use super::prefme::{self, IsMe, LateMe};
use super::quote::addrmangle;
use super::report::{Output, Report};
use super::resolver::{Hickory, ResolverInitError};
use super::routes::{Auth, Relay};
use super::smtp::{Envelope, Outcome, Session, TlsParams};
use super::tcpto::Tcpto;
use ipme::{IpmeError, IpmeSet};

/// Delivers one message: recipient reports go to `out`, the message report is returned.
pub fn run(argv: Vec<OsString>, home: &Path, msg: &mut dyn Read, out: &mut Output) -> Report {
    match deliver(argv, home, msg, out) {
        Ok(r) | Err(r) => r,
    }
}

fn deliver(
    argv: Vec<OsString>,
    home: &Path,
    msg: &mut dyn Read,
    out: &mut Output,
) -> Result<Report, Report> {
    let args = Args::parse(argv).map_err(|_| Report::PermUsage)?;
    std::env::set_current_dir(home).map_err(|_| Report::TempChdir)?;
    // everything below is relative to the qmail home, like stock
    let here = Path::new("");
    let ctl = control::load(here).map_err(|_| Report::TempControl)?;
    let sender = addrmangle(&args.sender);
    // an authsenders route replaces any smtproutes route (docs/qmail-remote-tls.md §5.1)
    let relay = ctl
        .authsenders
        .sender_route(&sender)
        .or_else(|| ctl.routes.route(&args.host));
    // Relays skip the loop rule (stock prefme 300000), so the ipme set is only needed without
    // one.
    let mut ipme = match relay {
        Some(_) => None,
        None => Some(IpmeSet::load(Path::new(".")).map_err(|e| ipme_failure(&e))?),
    };
    let recips: Vec<Vec<u8>> = args.recips.iter().map(|r| addrmangle(r)).collect();

    let cands = candidates(&args.host, relay.as_ref(), ctl.ipv6)?;
    let me = ipme.as_ref().map(|s| s as &dyn IsMe);
    let eligible = prefme::eligible(&cands, me).map_err(|_| Report::PermAmbigmx)?;

    let port = relay.as_ref().map_or(25, |r| r.port);
    let no_auth = Auth::None;
    let auth = relay.as_ref().map_or(&no_auth, |r| &r.auth);
    let env = Envelope {
        helo: &ctl.helohost,
        sender: &sender,
        recips: &recips,
        size: message_size(),
        auth,
        auth_cleartext: *auth != Auth::None
            && control::read_line(here, "control/authcleartext")
                .map_err(|_| Report::TempControl)?
                .is_some(),
    };
    let mut tcpto = Tcpto::new(here);
    let mut late = LateMe::new();
    // Only where the loop rule applies (not for relays, as stock's prefme).
    let lc = ipme.as_ref().and_then(|_| LoopCheck::load(here));
    for c in &eligible {
        if !late.allows(c) || tcpto.skip(&c.ip) {
            continue;
        }
        match connect::connect(c.ip, port, poll_ms(ctl.timeout_connect)) {
            Ok(fd) => {
                tcpto.record(&c.ip, false);
                let mut tlsp = TlsParams {
                    base: here,
                    name: c.name.as_deref(),
                    smtps: port == 465,
                    allowed: true,
                };
                let session = Session::new(Conn::new(fd, poll_ms(ctl.timeout_remote)), c.ip)
                    .with_loopcheck(lc.clone());
                return match session.deliver(&env, &tlsp, msg, out) {
                    Outcome::Done(r) => Ok(r),
                    // our own server answered: the address is me, like a guard refusal, and
                    // the guard learns it
                    Outcome::Looped(Looped { name }) => {
                        loopcheck::learn(here, c.ip, &name);
                        late.found(c);
                        continue;
                    }
                    // a failed opportunistic handshake: once more on a new connection, in clear
                    Outcome::RetryClear(r) => {
                        let Ok(fd) = connect::connect(c.ip, port, poll_ms(ctl.timeout_connect))
                        else {
                            return Ok(r);
                        };
                        tlsp.allowed = false;
                        let s = Session::new(Conn::new(fd, poll_ms(ctl.timeout_remote)), c.ip)
                            .with_loopcheck(lc.clone());
                        match s.deliver(&env, &tlsp, msg, out) {
                            Outcome::Done(r) | Outcome::RetryClear(r) => Ok(r),
                            // the first session checked the same greeting already
                            Outcome::Looped(Looped { name }) => {
                                loopcheck::learn(here, c.ip, &name);
                                late.found(c);
                                continue;
                            }
                        }
                    }
                };
            }
            // the kernel guard says this address is us: stock's loop rule, applied now
            Err(ConnectError::Guard) => late.found(c),
            // The guard on a kernel that cannot say ELOOP, or a firewall: this host only if the
            // address is in our own ipme set (relays load it now); else the temporary path.
            Err(ConnectError::NotPermitted) => {
                if ipme.is_none() {
                    ipme = Some(IpmeSet::load(Path::new(".")).map_err(|e| ipme_failure(&e))?);
                }
                if ipme.as_ref().is_some_and(|s| s.is_me(c.ip)) {
                    late.found(c);
                } else {
                    tcpto.record(&c.ip, false);
                }
            }
            Err(ConnectError::Socket(_)) if c.ip.is_ipv4() => return Err(Report::TempOserr),
            // no IPv6 sockets on this host: the address is unusable, try the next
            Err(ConnectError::Socket(_)) => {}
            Err(ConnectError::Failed { timeout, .. }) => tcpto.record(&c.ip, timeout),
        }
    }
    late.verdict(&eligible).map_err(|_| Report::PermAmbigmx)?;
    Err(Report::TempNoconn)
}

/// The size of the queued message on fd 0 for `SIZE=`, if fd 0 is a regular file.
fn message_size() -> Option<u64> {
    // SAFETY: fstat on fd 0 into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is valid for writes.
    let r = unsafe { libc::fstat(0, &mut st) };
    (r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG).then_some(st.st_size as u64)
}

/// A bad or unreadable control/moreipme or control/notipme is a configuration problem that
/// the admin fixes: temp_control (Z, nothing is lost). Failing to list interfaces or local
/// routes is stock's ipme_init failure: temp_oserr.
pub fn ipme_failure(e: &IpmeError) -> Report {
    match e {
        IpmeError::Parse { .. } | IpmeError::Unusable { .. } | IpmeError::Read { .. } => {
            Report::TempControl
        }
        _ => Report::TempOserr,
    }
}

/// Addresses for the host (MX) or the relay (A/AAAA), mapped to stock's reports.
fn candidates(host: &[u8], relay: Option<&Relay>, ipv6: bool) -> Result<Vec<Candidate>, Report> {
    let name: &[u8] = relay.map_or(host, |r| &r.host);
    let perm_dns = || Report::PermDns {
        host: name.to_vec(),
    };
    let mut cands = match dns::literal(name) {
        // literals need no resolver, so no runtime is built for them
        Some(ip) => vec![Candidate {
            ip,
            pref: 0,
            name: None,
        }],
        None => {
            let h = Hickory::new().map_err(|e| match e {
                ResolverInitError::Runtime(_) => Report::TempOserr,
                ResolverInitError::Config(_) => Report::TempDns,
            })?;
            let res = if relay.is_some() {
                h.block_on(dns::relay_ip(&h, name, ipv6))
                    .map(|candidates| MxResult {
                        candidates,
                        soft: false,
                    })
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut rng = Lcg::stock_seed(now, std::process::id());
                h.block_on(dns::mx_ip(&h, name, ipv6, &mut rng))
            };
            match res {
                Err(DnsError::Soft) => return Err(Report::TempDns),
                Err(DnsError::Hard) => return Err(perm_dns()),
                Ok(MxResult { candidates, soft }) => {
                    if soft && candidates.is_empty() {
                        return Err(Report::TempDns);
                    }
                    candidates
                }
            }
        }
    };
    if !ipv6 {
        cands.retain(|c| !matches!(c.ip, IpAddr::V6(_)));
    }
    if cands.is_empty() {
        return Err(Report::PermNomx);
    }
    Ok(cands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipme_errors() {
        let parse = IpmeError::Parse {
            file: "control/moreipme",
            line: 1,
            reason: "x".into(),
        };
        assert_eq!(ipme_failure(&parse), Report::TempControl);
        let read = IpmeError::Read {
            path: "control/notipme".into(),
            source: std::io::Error::from_raw_os_error(libc::EISDIR),
        };
        assert_eq!(ipme_failure(&read), Report::TempControl);
        let ifs = IpmeError::Interfaces(std::io::Error::from_raw_os_error(libc::ENOMEM));
        assert_eq!(ipme_failure(&ifs), Report::TempOserr);
        let nl = IpmeError::Netlink(std::io::Error::from_raw_os_error(libc::ENOBUFS));
        assert_eq!(ipme_failure(&nl), Report::TempOserr);
    }
}
