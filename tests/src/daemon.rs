//! The `Daemon` fixture: `qmail-guard run` as a child process inside the test netns (joined
//! with setns, so cgroupfs and bpffs stay visible), with its stderr collected line by line and
//! its systemd readiness notification received on a private NOTIFY_SOCKET, exactly as systemd
//! would see it. Drop kills the daemon; the `Guard` it was made from then removes the pins.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::guard::Guard;
use crate::unique::unique_name;

/// Long enough for a debug build loading and verifying the programs on a busy 2-core CI box.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an event may take to be applied before a test gives up (the target is
/// milliseconds; this only bounds a failing test).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Daemon<'a> {
    guard: &'a Guard<'a>,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    notify: UnixDatagram,
    notify_path: PathBuf,
}

impl<'a> Daemon<'a> {
    /// `qmail-guard run --cgroup CGROUP --qmail-home HOME EXTRA… --pin-dir PINS`, waiting for
    /// READY=1.
    pub fn start(guard: &'a Guard<'a>, cgroup: &Path, extra: &[&str]) -> Daemon<'a> {
        let d = Daemon::spawn(guard, cgroup, extra);
        d.wait_ready();
        d
    }

    /// Starts the daemon without waiting for readiness.
    pub fn spawn(guard: &'a Guard<'a>, cgroup: &Path, extra: &[&str]) -> Daemon<'a> {
        let notify_path = std::env::temp_dir().join(format!("{}.notify", unique_name()));
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)
            .unwrap_or_else(|e| panic!("cannot bind {}: {e}", notify_path.display()));
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("socket timeout");
        let cg = cgroup.to_str().expect("UTF-8 cgroup path");
        let home = guard.home().to_str().expect("UTF-8 home");
        let mut args = vec!["run", "--cgroup", cg, "--qmail-home", home];
        args.extend_from_slice(extra);
        let mut c = guard.command(&args);
        c.env("NOTIFY_SOCKET", &notify_path)
            .env_remove("JOURNAL_STREAM")
            .env_remove("QMAIL_GUARD_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start qmail-guard run: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        // Ends at EOF, i.e. when the daemon exits.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        Daemon {
            guard,
            child: Some(child),
            lines,
            notify,
            notify_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn transcript(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits for READY=1 on the notify socket; panics (with the daemon's stderr) if it exits
    /// or does not get ready in time.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
            {
                return;
            }
            self.assert_running("before READY=1");
            assert!(
                Instant::now() < deadline,
                "qmail-guard run sent no READY=1 within {READY_TIMEOUT:?}; stderr:\n{}",
                self.transcript()
            );
        }
    }

    /// Panics if the daemon has exited.
    pub fn assert_running(&self, when: &str) {
        // try_wait needs &mut; a zero signal probes the pid without reaping it.
        // SAFETY: kill(pid, 0) only checks existence.
        let alive = unsafe { libc::kill(self.pid() as i32, 0) } == 0 && !self.is_zombie();
        if !alive {
            // Give the reader thread a moment to collect the last lines (it stops at EOF).
            thread::sleep(Duration::from_millis(100));
            panic!(
                "qmail-guard run exited {when}; stderr:\n{}",
                self.transcript()
            );
        }
    }

    fn is_zombie(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|s| {
                let close = s.rfind(')')?;
                s[close + 1..]
                    .split_whitespace()
                    .next()
                    .map(|st| st == "Z" || st == "X")
            })
            .unwrap_or(true)
    }

    /// Waits until a stderr line matches `pred`, returning it; panics after `EVENT_TIMEOUT`.
    pub fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon logged no {what} within {EVENT_TIMEOUT:?}; stderr:\n{}",
                self.transcript()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.pid() as i32, sig) };
        assert_eq!(r, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// SIGKILL and reap: the daemon gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit (at most 10 s, then SIGKILL and panic).
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut c = self.child.take().expect("daemon running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.try_wait() {
                Ok(Some(st)) => return st,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("qmail-guard run did not exit on SIGTERM");
                }
            }
        }
    }

    /// The Guard fixture this daemon runs with.
    pub fn guard(&self) -> &Guard<'a> {
        self.guard
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.notify_path);
    }
}

/// Polls `f` until it returns true, failing with `what` after `EVENT_TIMEOUT`.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}
