//! Running guard-probe inside a cgroup and a netns, and reading its one-line verdict.

use std::fmt;
use std::process::{Command, Stdio};

use crate::bins;
use crate::cgroup::Cgroup;
use crate::cmd;
use crate::errno;
use crate::netns::Netns;
use crate::nsenter;

/// Outcome of a probe's network action.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    Ok,
    Errno(i32),
}

impl ProbeResult {
    /// Parses guard-probe's verdict line: `ok` or `errno N NAME`.
    pub fn parse(line: &str) -> Option<ProbeResult> {
        let mut w = line.split_whitespace();
        match (w.next()?, w.next()) {
            ("ok", None) => Some(ProbeResult::Ok),
            ("errno", Some(n)) => n.parse().ok().map(ProbeResult::Errno),
            _ => None,
        }
    }

    /// The refusal qmail-guard promises where the kernel lets it set the errno (≥ 5.18):
    /// ELOOP. Tests of a loaded guard compare with `Guard::refused()`, which is EPERM on
    /// older kernels.
    pub const REFUSED: ProbeResult = ProbeResult::Errno(libc::ELOOP);
}

impl fmt::Debug for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeResult::Ok => write!(f, "Ok"),
            ProbeResult::Errno(n) => write!(f, "Errno({n} {})", errno::name(*n)),
        }
    }
}

/// A guard-probe command, set up to join `cgroup` (if any) and then `netns` before exec.
pub fn probe_command(cgroup: Option<&Cgroup>, netns: &Netns, args: &[&str]) -> Command {
    let mut c = Command::new(bins::probe_path());
    c.args(args);
    nsenter::enter(&mut c, cgroup.map(Cgroup::path), &netns.path());
    c
}

/// Runs guard-probe to completion and returns its single stdout line.
pub fn probe_line(cgroup: Option<&Cgroup>, netns: &Netns, args: &[&str]) -> String {
    let mut c = probe_command(cgroup, netns, args);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = cmd::output(&mut c);
    cmd::ensure_success(&c, &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    match (lines.next(), lines.next()) {
        (Some(l), None) => l.to_string(),
        _ => panic!(
            "`{}` printed {stdout:?}, expected exactly one line",
            cmd::describe(&c)
        ),
    }
}

/// Runs `guard-probe ARGS…` (connect, tfo, child-connect) in `cgroup` + `netns`.
pub fn spawn_probe(cgroup: Option<&Cgroup>, netns: &Netns, args: &[&str]) -> ProbeResult {
    let line = probe_line(cgroup, netns, args);
    ProbeResult::parse(&line)
        .unwrap_or_else(|| panic!("guard-probe {args:?} printed {line:?}, not ok/errno"))
}

/// `guard-probe connect ADDR PORT` in `cgroup` + `netns`.
pub fn connect(cgroup: Option<&Cgroup>, netns: &Netns, addr: &str, port: u16) -> ProbeResult {
    spawn_probe(cgroup, netns, &["connect", addr, &port.to_string()])
}

/// Where a probe process really is, as reported by `guard-probe self`.
#[derive(Debug, PartialEq, Eq)]
pub struct Whereabouts {
    /// The cgroup2 path from /proc/self/cgroup (`0::PATH`).
    pub cgroup: String,
    /// The inode of /proc/self/ns/net.
    pub netns_inode: u64,
}

/// Runs `guard-probe self` in `cgroup` + `netns`.
pub fn whereabouts(cgroup: Option<&Cgroup>, netns: &Netns) -> Whereabouts {
    let line = probe_line(cgroup, netns, &["self"]);
    let mut cg = None;
    let mut ino = None;
    for field in line.split_whitespace() {
        if let Some(v) = field.strip_prefix("cgroup=") {
            cg = Some(v.to_string());
        } else if let Some(v) = field.strip_prefix("netns=") {
            ino = v.parse().ok();
        }
    }
    match (cg, ino) {
        (Some(cgroup), Some(netns_inode)) => Whereabouts {
            cgroup,
            netns_inode,
        },
        _ => panic!("guard-probe self printed {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_verdicts() {
        assert_eq!(ProbeResult::parse("ok"), Some(ProbeResult::Ok));
        assert_eq!(
            ProbeResult::parse("errno 40 ELOOP"),
            Some(ProbeResult::REFUSED)
        );
        assert_eq!(ProbeResult::parse("ok extra"), None);
        assert_eq!(ProbeResult::parse("errno x"), None);
        assert_eq!(ProbeResult::parse(""), None);
    }
}
