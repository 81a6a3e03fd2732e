//! Running qmail-remote the way qmail-rspawn does (docs/qmail-remote.md §1.3, §1.4): fd 0 the queued message
//! file, fd 1 and fd 2 one pipe, cwd `queue/mess`, an unprivileged uid, a minimal environment;
//! optionally inside a netns (through `ip netns exec`, which also bind-mounts
//! /etc/netns/NAME/resolv.conf for the resolver) and a cgroup (joined before exec, so a guard
//! attached to it sees the connects).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::bins;
use crate::netns::Netns;
use crate::rspawn;
use crate::unique::unique_name;

/// The uid/gid qmail-remote runs as in the tests (qmail uses qmailr:qmail; any
/// unprivileged account shows the same thing).
pub const QMAILR_UID: u32 = 65534;
pub const QMAILR_GID: u32 = 65534;

/// A qmail home for one test: control/, queue/lock/tcpto (zeroed, owned by the qmail-remote
/// uid like the installer makes it), queue/mess. Removed on drop unless borrowed.
pub struct QmailHome {
    dir: PathBuf,
    owned: bool,
}

static MSG_COUNTER: AtomicU32 = AtomicU32::new(0);

impl QmailHome {
    /// A fresh home under the temp dir, with control/me = `qmail-remote.test`.
    pub fn new() -> QmailHome {
        let dir = std::env::temp_dir().join(format!("{}-home", unique_name()));
        let h = QmailHome { dir, owned: true };
        h.prepare();
        h
    }

    /// Adds the qmail-remote parts to an existing home (e.g. a Guard's), which stays owned by
    /// its creator.
    pub fn borrow(dir: &Path) -> QmailHome {
        let h = QmailHome {
            dir: dir.to_path_buf(),
            owned: false,
        };
        h.prepare();
        h
    }

    fn prepare(&self) {
        for d in ["control", "queue/lock", "queue/mess/0"] {
            fs::create_dir_all(self.dir.join(d)).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
        }
        self.write_control("me", "qmail-remote.test\n");
        self.reset_tcpto();
    }

    /// The home directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `control/NAME` verbatim.
    pub fn write_control(&self, name: &str, contents: &str) {
        let p = self.dir.join("control").join(name);
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    /// Removes `control/NAME` if present.
    pub fn remove_control(&self, name: &str) {
        let _ = fs::remove_file(self.dir.join("control").join(name));
    }

    /// Zeroes queue/lock/tcpto (1024 bytes) and tcpto6 (2048), owned by the qmail-remote uid.
    pub fn reset_tcpto(&self) {
        for (f, n) in [("tcpto", 1024), ("tcpto6", 2048)] {
            let p = self.dir.join("queue/lock").join(f);
            fs::write(&p, vec![0u8; n]).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
            chown(&p, Some(QMAILR_UID), Some(QMAILR_GID)).expect("chown tcpto");
        }
    }

    /// Current contents of queue/lock/tcpto.
    pub fn tcpto(&self) -> Vec<u8> {
        fs::read(self.dir.join("queue/lock/tcpto")).expect("read tcpto")
    }

    /// Stores a message like qmail-queue would (queue/mess/0/N, mode 0644) and returns its path.
    pub fn queue_message(&self, msg: &[u8]) -> PathBuf {
        let n = MSG_COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = self
            .dir
            .join(format!("queue/mess/0/{}{n}", std::process::id()));
        fs::write(&p, msg).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod message");
        p
    }
}

impl Default for QmailHome {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for QmailHome {
    fn drop(&mut self) {
        if self.owned {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The result of one run.
#[derive(Debug)]
pub struct RemoteRun {
    pub status: ExitStatus,
    /// Everything written to fd 1 and fd 2 (one pipe).
    pub output: Vec<u8>,
    pub elapsed: Duration,
}

impl RemoteRun {
    /// The records (grammar checked; exit status must be 0).
    pub fn records(&self) -> Vec<Vec<u8>> {
        assert!(
            self.status.success(),
            "qmail-remote exited {} with {}",
            self.status,
            self.show()
        );
        rspawn::records(&self.output)
    }

    /// What qmail-rspawn would send to qmail-send.
    pub fn condensed(&self) -> Vec<u8> {
        rspawn::condense(self.status, &self.output)
    }

    /// The output, readable.
    pub fn show(&self) -> String {
        rspawn::show(&self.output)
    }

    /// Asserts the exact output bytes, exit 0 and the condensed K/Z/D letter.
    pub fn expect(&self, output: &[u8], letter: u8) {
        assert!(self.status.success(), "exit status {}", self.status);
        assert_eq!(self.show(), rspawn::show(output), "qmail-remote output");
        self.records();
        let c = self.condensed();
        assert_eq!(
            c[0] as char,
            letter as char,
            "qmail-rspawn would report {}",
            rspawn::show(&c)
        );
    }
}

/// One qmail-remote invocation.
pub struct Invocation<'a> {
    home: &'a QmailHome,
    args: Vec<OsString>,
    message: Vec<u8>,
    stdin: Option<PathBuf>,
    netns: Option<&'a Netns>,
    cgroup: Option<PathBuf>,
    unprivileged: bool,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
}

impl<'a> Invocation<'a> {
    /// `qmail-remote host sender recip…` with an empty message.
    pub fn new(home: &'a QmailHome, host: &str, sender: &str, recips: &[&str]) -> Self {
        let mut args: Vec<OsString> = vec![host.into(), sender.into()];
        args.extend(recips.iter().map(OsString::from));
        Invocation {
            home,
            args,
            message: Vec::new(),
            stdin: None,
            netns: None,
            cgroup: None,
            unprivileged: true,
            env: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }

    /// Raw argv after argv[0] (for usage tests and 8-bit arguments).
    pub fn raw_args(mut self, args: &[&[u8]]) -> Self {
        self.args = args
            .iter()
            .map(|a| OsStr::from_bytes(a).to_os_string())
            .collect();
        self
    }

    /// The queued message (fd 0).
    pub fn message(mut self, m: &[u8]) -> Self {
        self.message = m.to_vec();
        self
    }

    /// Use this path as fd 0 instead of a queued message (e.g. a directory → read error).
    pub fn stdin_path(mut self, p: &Path) -> Self {
        self.stdin = Some(p.to_path_buf());
        self
    }

    /// Run inside this netns (with its /etc/netns resolv.conf).
    pub fn netns(mut self, ns: &'a Netns) -> Self {
        self.netns = Some(ns);
        self
    }

    /// Join this cgroup before exec.
    pub fn cgroup(mut self, cg: &Path) -> Self {
        self.cgroup = Some(cg.to_path_buf());
        self
    }

    /// Keep root (only for tests that need a privilege the real setup has, none so far).
    pub fn as_root(mut self) -> Self {
        self.unprivileged = false;
        self
    }

    /// An extra environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Runs it; kills it (and fails) after the timeout.
    pub fn run(self) -> RemoteRun {
        let bin = bins::bin_path("qmail-remote");
        let msg_path = match &self.stdin {
            Some(p) => p.clone(),
            None => self.home.queue_message(&self.message),
        };
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(ns) = self.netns {
            argv.extend(["ip", "netns", "exec", ns.name()].map(OsString::from));
        }
        if self.unprivileged {
            argv.push("setpriv".into());
            argv.push(format!("--reuid={QMAILR_UID}").into());
            argv.push(format!("--regid={QMAILR_GID}").into());
            argv.push("--clear-groups".into());
            argv.push("--".into());
        }
        // argv[0] is "qmail-remote" as execvp gives it; the path is what $QMAILREMOTE holds
        argv.push(bin.into_os_string());
        argv.extend(self.args.iter().cloned());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("QMAILHOME", self.home.path());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.current_dir(self.home.path().join("queue/mess"));
        let stdin =
            File::open(&msg_path).unwrap_or_else(|e| panic!("open {}: {e}", msg_path.display()));
        let (mut reader, writer) = io::pipe().expect("pipe");
        cmd.stdin(Stdio::from(stdin));
        cmd.stdout(Stdio::from(writer.try_clone().expect("dup pipe")));
        cmd.stderr(Stdio::from(writer));
        if let Some(cg) = &self.cgroup {
            let procs = crate::nsenter::procs_path(cg);
            // SAFETY: join_cgroup is async-signal-safe.
            let hook = move || unsafe { crate::nsenter::join_cgroup(&procs) };
            // SAFETY: the hook only makes async-signal-safe calls.
            unsafe {
                cmd.pre_exec(hook);
            }
        }
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start qmail-remote: {e}"));
        // the parent's copies of the pipe's write end must go, or EOF never comes
        drop(cmd);
        let rd = thread::spawn(move || {
            let mut out = Vec::new();
            let _ = reader.read_to_end(&mut out);
            out
        });
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if start.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!("qmail-remote did not finish within {:?}", self.timeout);
            }
            thread::sleep(Duration::from_millis(2));
        };
        let output = rd.join().expect("reader thread");
        let elapsed = start.elapsed();
        if self.stdin.is_none() {
            let _ = fs::remove_file(&msg_path);
        }
        RemoteRun {
            status,
            output,
            elapsed,
        }
    }
}
