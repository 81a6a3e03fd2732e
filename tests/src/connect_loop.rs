//! `guard-probe loop` in a cgroup + netns: connects to a "me" address as fast as it can (and to
//! a "not me" one every 16th round) while a test changes the ipme set, then reports counts.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use crate::cgroup::Cgroup;
use crate::netns::Netns;
use crate::probe::probe_command;

/// What the loop saw (refused = ELOOP).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoopCounts {
    pub me_refused: u64,
    pub me_not_refused: u64,
    pub other_ok: u64,
    pub other_refused: u64,
    pub other_failed: u64,
}

impl LoopCounts {
    /// The guard's two invariants over a loop run (`what` names the run): no connect to the
    /// "me" address got through, none to the "not me" address was refused, and the loop ran.
    pub fn assert_guarded(&self, what: &str) {
        assert_eq!(
            self.me_not_refused, 0,
            "{what}: connects to the \"me\" address that were not refused ({self:?})"
        );
        assert_eq!(
            self.other_refused, 0,
            "{what}: connects to the \"not me\" address refused ({self:?})"
        );
        assert!(
            self.me_refused > 0 && self.other_ok > 0,
            "{what}: the loop did not run ({self:?})"
        );
    }
}

pub struct ConnectLoop {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl ConnectLoop {
    /// Starts the loop and waits until it has connected once.
    pub fn start(cgroup: &Cgroup, netns: &Netns, me: &str, other: &str, port: u16) -> Self {
        let mut c = probe_command(Some(cgroup), netns, &["loop", me, other, &port.to_string()]);
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start guard-probe loop: {e}"));
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        assert_eq!(line.trim(), "running", "guard-probe loop did not start");
        ConnectLoop {
            child,
            stdin,
            stdout,
        }
    }

    /// Stops the loop and returns its counts.
    pub fn finish(mut self) -> LoopCounts {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.flush();
        }
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        let _ = self.child.wait();
        parse(&line).unwrap_or_else(|| panic!("guard-probe loop printed {line:?}"))
    }
}

impl Drop for ConnectLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(line: &str) -> Option<LoopCounts> {
    let mut c = LoopCounts::default();
    for field in line.split_whitespace() {
        let (k, v) = field.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "me_refused" => c.me_refused = v,
            "me_not_refused" => c.me_not_refused = v,
            "other_ok" => c.other_ok = v,
            "other_refused" => c.other_refused = v,
            "other_failed" => c.other_failed = v,
            _ => return None,
        }
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_count_line() {
        let c = parse("me_refused=5 me_not_refused=0 other_ok=2 other_refused=0 other_failed=1\n");
        assert_eq!(
            c,
            Some(LoopCounts {
                me_refused: 5,
                me_not_refused: 0,
                other_ok: 2,
                other_refused: 0,
                other_failed: 1
            })
        );
        assert_eq!(parse("bogus"), None);
    }
}
