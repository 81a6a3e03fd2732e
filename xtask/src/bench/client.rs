//! bench-client (xtask's second binary) running as a long-lived server inside one variant's
//! cgroup and namespace: the benchmark sends it batches of connects and reads back their
//! medians, so batches of all variants can be interleaved finely without process starts.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::kit::spawn::Placement;

/// What one batch reports (medians over its connects).
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// connect(2) alone: where the hook runs.
    pub connect_ns: f64,
}

pub struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    label: String,
}

impl Server {
    /// `bench-client serve` placed at `p`; `label` names it in errors.
    pub fn start(bin: &Path, p: &Placement, label: &str) -> Result<Server> {
        let mut c = Command::new(bin);
        // Its own failures (an unexpected errno) are explained on stderr, shown as they come.
        c.arg("serve").stdin(Stdio::piped()).stdout(Stdio::piped());
        p.apply(&mut c)?;
        let mut child = c.spawn().context("cannot start bench-client serve")?;
        let stdin = child.stdin.take().context("bench-client stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("bench-client stdout")?);
        Ok(Server {
            child,
            stdin,
            stdout,
            label: label.to_string(),
        })
    }

    /// ITERS connects to ADDR:PORT, each of which must end in EXPECT.
    pub fn batch(&mut self, addr: &str, port: u16, iters: usize, expect: &str) -> Result<Batch> {
        writeln!(self.stdin, "connect {addr} {port} {iters} {expect}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("bench-client ({}) is gone", self.label))?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!(
                "bench-client ({}) exited during connect {addr}:{port} (its message is above)",
                self.label
            );
        }
        parse(&line)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(line: &str) -> Result<Batch> {
    let connect_ns = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("median_ns="))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("bench-client printed {line:?}, without median_ns="))?;
    Ok(Batch { connect_ns })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_result_line() {
        let r = super::parse("median_ns=12345 iter_median_ns=20000 n=100\n").unwrap();
        assert_eq!(r.connect_ns, 12345.0);
        assert!(super::parse("garbage").is_err());
    }
}
