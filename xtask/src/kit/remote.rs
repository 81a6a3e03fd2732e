//! Running qmail-remote the way qmail-rspawn does (docs/qmail-remote.md §1.3): `qmail-remote HOST SENDER
//! RECIP…`, the queued message on fd 0, fd 1 and fd 2 one pipe, cwd `queue/mess`, a minimal
//! environment with `QMAILHOME`, as qmailr (uid 65534 here), inside the placement's cgroup and
//! namespace.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::measure::{self, Usage};
use super::report::{self, Report};
use super::spawn::{self, Placement};

/// The uid/gid qmail-remote runs as (qmail's qmailr; any unprivileged account behaves alike).
pub const QMAILR: (u32, u32) = (65534, 65534);
/// The name of that account.
pub const QMAILR_NAME: &str = "nobody";
/// Longer than any delivery here; a hang is a failure, not a wait.
const TIMEOUT: Duration = Duration::from_secs(60);

/// One invocation.
pub struct Remote<'a> {
    pub bin: &'a Path,
    pub home: &'a Path,
    pub host: &'a str,
    pub sender: &'a str,
    pub recips: &'a [&'a str],
    pub message: &'a Path,
    pub placement: Placement,
}

/// What it reported and what it cost.
pub struct Outcome {
    pub report: Report,
    pub usage: Usage,
}

impl Remote<'_> {
    /// The command line for a reader (`QMAILHOME=… qmail-remote … < message`).
    pub fn shown(&self) -> String {
        format!(
            "QMAILHOME={} qmail-remote {} {} {} < {}",
            self.home.display(),
            self.host,
            self.sender,
            self.recips.join(" "),
            self.message.display()
        )
    }

    pub fn command(&self) -> Result<Command> {
        let mut c = Command::new(self.bin);
        c.args([self.host, self.sender]).args(self.recips);
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("QMAILHOME", self.home)
            .current_dir(self.home.join("queue/mess"))
            .stdin(spawn::stdin_file(self.message)?);
        self.placement.apply(&mut c)?;
        Ok(c)
    }

    /// Runs it once and measures it.
    pub fn run(&self) -> Result<Outcome> {
        run_command(self.command()?)
    }
}

/// Runs one qmail-remote command line (ours or another build) with fd 1 and fd 2 on one pipe,
/// as qmail-rspawn does, and measures it; the report is parsed, not judged.
pub fn run_command(mut c: Command) -> Result<Outcome> {
    let (mut reader, writer) = std::io::pipe().context("pipe")?;
    c.stdout(Stdio::from(writer.try_clone().context("dup pipe")?))
        .stderr(Stdio::from(writer));
    let start = Instant::now();
    let mut child = c
        .spawn()
        .with_context(|| format!("cannot start {}", c.get_program().display()))?;
    // The parent's write ends must go, or the reader never sees EOF.
    drop(c);
    let rd = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        out
    });
    let usage = measure::wait_usage(&mut child, start, TIMEOUT)?;
    let raw = rd
        .join()
        .map_err(|_| anyhow::anyhow!("the report reader panicked"))?;
    Ok(Outcome {
        report: report::parse(&raw),
        usage,
    })
}

/// A queued message file under the temp directory, removed on drop.
pub struct MessageFile {
    path: PathBuf,
}

impl MessageFile {
    pub fn new(name: &str, bytes: &[u8]) -> Result<MessageFile> {
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(MessageFile { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for MessageFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
