//! `qmail-guard run` (the daemon), started for the length of a demo step or a benchmark, with
//! its log captured. It is ready when it says READY=1 on $NOTIFY_SOCKET, as under systemd
//! (Type=notify). Drop stops it with SIGTERM (the guard stays pinned; the Guard's own Drop
//! removes it).

use std::io::{BufRead as _, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::guard::Guard;
use super::{interrupt, names};

/// How long the daemon may take to attach and say READY=1.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether this qmail-guard has the `run` subcommand (the daemon may not exist yet).
pub fn available(guard: &Guard) -> bool {
    std::process::Command::new(guard.bin())
        .args(["run", "--help"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    notify: PathBuf,
}

impl Daemon {
    /// Starts `qmail-guard run --cgroup CGROUP --qmail-home HOME` in the guard's namespace and
    /// waits until it is ready.
    pub fn start(guard: &Guard, cgroup: &Path) -> Result<Daemon> {
        let notify = std::env::temp_dir().join(format!("{}.notify", names::name("daemon")));
        let _ = std::fs::remove_file(&notify);
        let sock = UnixDatagram::bind(&notify)
            .with_context(|| format!("cannot bind {}", notify.display()))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let cg = cgroup.display().to_string();
        let home = guard.home().display().to_string();
        // The spool for learned addresses belongs to the account qmail-remote runs as here.
        let mut c = guard.command(&[
            "run",
            "--cgroup",
            &cg,
            "--qmail-home",
            &home,
            "--learn-user",
            super::remote::QMAILR_NAME,
        ])?;
        c.env("NOTIFY_SOCKET", &notify).stdout(Stdio::null());
        let mut child = c.spawn().context("cannot start qmail-guard run")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            // Ends at EOF, when the daemon exits.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            });
        }
        let mut d = Daemon { child, log, notify };
        d.wait_ready(&sock)?;
        Ok(d)
    }

    fn wait_ready(&mut self, sock: &UnixDatagram) -> Result<()> {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            interrupt::check()?;
            if let Ok(n) = sock.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
            {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "qmail-guard run did not report READY=1 within {READY_TIMEOUT:?}; its log:\n{}",
                    self.log().join("\n")
                );
            }
            // A daemon that died early would otherwise cost the whole timeout.
            if let Ok(Some(st)) = self.child.try_wait() {
                // Let the reader thread collect the last lines of the log.
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "qmail-guard run exited ({st}) before it was ready; its log:\n{}",
                    self.log().join("\n")
                );
            }
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits up to `max` for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, max: Duration) -> Option<String> {
        let start = Instant::now();
        loop {
            if let Some(l) = self.log().into_iter().find(|l| l.contains(needle)) {
                return Some(l);
            }
            if start.elapsed() > max || interrupt::interrupted() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: the daemon's clean exit (pins kept); SIGKILL if it hangs.
        // SAFETY: signalling our own, not yet reaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if start.elapsed() > Duration::from_secs(5) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = std::fs::remove_file(&self.notify);
    }
}
