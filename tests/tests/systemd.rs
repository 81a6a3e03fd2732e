//! The shipped systemd units (dist/systemd/) under a real systemd, booted in a container.
//!
//! `qmail.service` here is a stand-in whose main process connects to "me" addresses as its
//! very first action, then stays (guard-probe `service`); it carries the shipped drop-in, and
//! `qmail-guard.service` is installed as shipped. The container has its own network namespace
//! (only `lo`): 192.0.2.25 and .26 have no route there, so an unguarded connect to them fails
//! with ENETUNREACH and a guarded one with ELOOP; a listener on 127.0.0.1:25 and :2525 makes an
//! unguarded loopback connect succeed. Connects made later "from inside qmail" are guard-probe
//! processes the host puts into qmail's cgroup and the container's network namespace.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use guard_tests::bins;
use guard_tests::bpftool;
use guard_tests::cmd;
use guard_tests::machine::{Bind, Machine};
use guard_tests::nsenter;
use guard_tests::probe::ProbeResult::{self, Ok as Allowed};

const REFUSED: ProbeResult = ProbeResult::REFUSED;
const UNREACHABLE: ProbeResult = ProbeResult::Errno(libc::ENETUNREACH);

const QMAIL: &str = "qmail.service";
const GUARD: &str = "qmail-guard.service";
const LISTENER: &str = "qgt-listener.service";
/// Where guard-probe is bind-mounted inside the container.
const PROBE: &str = "/usr/local/lib/qmail-guard-test/guard-probe";
/// The stand-in's report (StandardOutput=truncate:, so each start rewrites it).
const REPORT: &str = "/run/qmail-probe.out";
/// In control/moreipme from the start.
const MORE: &str = "192.0.2.25";
/// Added to control/moreipme by some tests.
const MORE2: &str = "192.0.2.26";
const MOREIPME: &str = "/var/qmail/control/moreipme";
/// Where the package test's .deb is bind-mounted.
const DEB_INSIDE: &str = "/root/qmail-guard.deb";
/// The package's (inactive) drop-in, and where the administrator links it.
const DROPIN_SHIPPED: &str = "/usr/share/qmail-guard/qmail-guard.conf";
const DROPIN_LINK: &str = "/etc/systemd/system/qmail.service.d/qmail-guard.conf";
/// How long systemd may take for a start, a restart or a daemon's automatic restart.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The connects the stand-in makes first thing, and what the guard must make of them.
const FIRST_CONNECTS: [(&str, u16, ProbeResult); 4] = [
    (MORE, 25, REFUSED),
    ("127.0.0.1", 25, REFUSED),
    ("::1", 25, REFUSED),
    // Not a guarded port: the listener answers.
    ("127.0.0.1", 2525, Allowed),
];

fn dist(file: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist/systemd")
        .join(file);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// The program of the unit line `key=` (without systemd's `+-@!:` prefixes).
fn exec_program(unit: &str, key: &str) -> String {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= line in the unit:\n{unit}"));
    line.trim_start_matches(['+', '-', '@', '!', ':'])
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("empty {key}= line"))
        .to_string()
}

/// How the shipped units get into the container.
#[derive(Clone, Copy)]
enum Install<'a> {
    /// dist/systemd/ files written where the package puts them, the drop-in enabled, the
    /// binary from the build bind-mounted where the units run it.
    Dist,
    /// The .deb installed with dpkg; nothing enabled.
    Package(&'a Path),
}

/// A container with the shipped units installed, the listener running and qmail not started.
struct QmailHost {
    m: Machine,
}

impl QmailHost {
    fn boot() -> QmailHost {
        Self::boot_with(Install::Dist)
    }

    fn boot_with(install: Install<'_>) -> QmailHost {
        let host_probe = bins::probe_path();
        let mut binds = vec![Bind {
            host: &host_probe,
            inside: PROBE,
        }];
        let service = dist("qmail-guard.service");
        let dropin = dist("qmail.service.d/qmail-guard.conf");
        let guard_bin = exec_program(&service, "ExecStart");
        let host_guard;
        match install {
            Install::Dist => {
                assert_eq!(
                    exec_program(&dropin, "ExecStartPre"),
                    guard_bin,
                    "the drop-in and the service must run the same qmail-guard"
                );
                host_guard = bins::bin_path("qmail-guard");
                binds.push(Bind {
                    host: &host_guard,
                    inside: &guard_bin,
                });
            }
            Install::Package(deb) => binds.push(Bind {
                host: deb,
                inside: DEB_INSIDE,
            }),
        }
        let m = Machine::boot(&binds);
        match install {
            Install::Dist => {
                // Where the package puts them (so that `systemctl mask` can override the
                // service from /etc), the drop-in enabled.
                m.write("/usr/lib/systemd/system/qmail-guard.service", &service);
                m.write(DROPIN_LINK, &dropin);
            }
            Install::Package(_) => {
                m.exec_ok(&["dpkg", "-i", DEB_INSIDE]);
            }
        }
        let connects: Vec<String> = FIRST_CONNECTS
            .iter()
            .map(|(a, p, _)| format!("{a} {p}"))
            .collect();
        m.write(
            "/etc/systemd/system/qmail.service",
            &format!(
                "[Unit]\nDescription=qmail stand-in: connects first thing, then stays\n\
                 [Service]\nExecStart={PROBE} service {}\n\
                 StandardOutput=truncate:{REPORT}\nStandardError=journal\n",
                connects.join(" ")
            ),
        );
        m.write(
            &format!("/etc/systemd/system/{LISTENER}"),
            &format!(
                "[Unit]\nDescription=answers on 127.0.0.1:25 and :2525\n\
                 [Service]\nExecStart={PROBE} listen 127.0.0.1 25 2525\n"
            ),
        );
        m.write(MOREIPME, &format!("{MORE}\n"));
        m.systemctl_ok(&["daemon-reload"]);
        m.systemctl_ok(&["start", LISTENER]);
        let h = QmailHost { m };
        h.eventually("the listener to answer", || {
            h.connect_outside("127.0.0.1", 25) == Allowed
        });
        h
    }

    /// Runs `f` while connecting from qmail's cgroup to 127.0.0.1:25 over and over; returns
    /// every result.
    fn probe_during(&self, f: impl FnOnce()) -> Vec<ProbeResult> {
        let done = AtomicBool::new(false);
        thread::scope(|s| {
            let prober = s.spawn(|| {
                let mut v = Vec::new();
                // At least one connect, also if `f` is over before the thread runs.
                loop {
                    v.push(self.connect_in_qmail("127.0.0.1", 25));
                    if done.load(Ordering::Relaxed) {
                        return v;
                    }
                }
            });
            f();
            done.store(true, Ordering::Relaxed);
            prober.join().expect("prober thread")
        })
    }

    /// Polls `f` until it holds, failing with the journal after [`TIMEOUT`].
    fn eventually(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; journal:\n{}",
                self.m.journal_tail(80)
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn active_state(&self, unit: &str) -> String {
        self.m.property(unit, "ActiveState")
    }

    fn main_pid(&self, unit: &str) -> u32 {
        let v = self.m.property(unit, "MainPID");
        v.parse()
            .unwrap_or_else(|_| panic!("MainPID of {unit} is {v:?}"))
    }

    /// qmail's cgroup as the host sees it.
    fn qmail_cgroup(&self) -> PathBuf {
        let cg = self.m.property(QMAIL, "ControlGroup");
        assert!(!cg.is_empty(), "{QMAIL} has no cgroup (not running?)");
        self.m.host_cgroup(&cg)
    }

    fn cgroup_id(path: &Path) -> u64 {
        fs::metadata(path)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()))
            .ino()
    }

    /// Starts (or restarts) qmail and returns its main process' report.
    fn start_qmail(&self, verb: &str) -> Report {
        let _ = fs::remove_file(self.m.path(REPORT));
        self.m.systemctl_ok(&[verb, QMAIL]);
        let mut text = String::new();
        self.eventually("qmail's main process to report", || {
            text = self.m.read(REPORT).unwrap_or_default();
            text.lines().any(|l| l == "ready")
        });
        Report::parse(&text)
    }

    /// A connect made by a new process in qmail's cgroup.
    fn connect_in_qmail(&self, addr: &str, port: u16) -> ProbeResult {
        let cg = self.qmail_cgroup();
        assert!(
            cg.is_dir(),
            "qmail's cgroup {} is gone: qmail was stopped or restarted; journal:\n{}",
            cg.display(),
            self.m.journal_tail(40)
        );
        self.probe(Some(&cg), addr, port)
    }

    /// A connect made in the container's network namespace but outside qmail's cgroup.
    fn connect_outside(&self, addr: &str, port: u16) -> ProbeResult {
        self.probe(None, addr, port)
    }

    fn probe(&self, cgroup: Option<&Path>, addr: &str, port: u16) -> ProbeResult {
        let mut c = Command::new(bins::probe_path());
        c.args(["connect", addr, &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        nsenter::enter(&mut c, cgroup, &self.m.netns_path());
        let out = cmd::output(&mut c);
        cmd::ensure_success(&c, &out);
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        ProbeResult::parse(&line).unwrap_or_else(|| panic!("guard-probe printed {line:?}"))
    }

    /// The guarded connects from inside qmail are refused, the others allowed.
    fn assert_guarded(&self, when: &str) {
        for (addr, port, want) in FIRST_CONNECTS {
            let got = self.connect_in_qmail(addr, port);
            assert_eq!(
                got, want,
                "{when}: connect to [{addr}]:{port} from qmail's cgroup"
            );
        }
    }

    /// Exactly one connect4 and one connect6 program on qmail's cgroup, eventually (the
    /// drop-in's attach and the daemon may both see a new cgroup; they must not double up),
    /// and only that cgroup's links pinned (the dead ones' unpinned).
    fn assert_one_attachment(&self) {
        let cg = self.qmail_cgroup();
        let id = Self::cgroup_id(&cg);
        let want = vec![format!("{id}-connect4"), format!("{id}-connect6")];
        let mut last = (Vec::new(), (0, 0));
        self.eventually("one attachment per hook, pinned once", || {
            last = (self.pinned_links(), bpftool::connect_hook_counts(&cg));
            last == (want.clone(), (1, 1))
        });
    }

    fn pinned_links(&self) -> Vec<String> {
        let dir = self.m.bpf_dir().join("qmail-guard/links");
        let mut v: Vec<String> = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("cannot list {}: {e}", dir.display()),
        };
        v.sort();
        v
    }
}

/// What the stand-in's main process reported: its first connects and its cgroup.
#[derive(Debug)]
struct Report {
    connects: Vec<(String, u16, ProbeResult)>,
    cgroup: String,
}

impl Report {
    fn parse(text: &str) -> Report {
        let mut connects = Vec::new();
        let mut cgroup = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("cgroup=") {
                cgroup = rest.split_whitespace().next().map(str::to_string);
            } else if line != "ready" {
                let mut w = line.splitn(3, ' ');
                let (Some(a), Some(p), Some(v)) = (w.next(), w.next(), w.next()) else {
                    panic!("bad report line {line:?} in:\n{text}");
                };
                let port = p.parse().unwrap_or_else(|_| panic!("bad port in {line:?}"));
                let verdict =
                    ProbeResult::parse(v).unwrap_or_else(|| panic!("bad verdict in {line:?}"));
                connects.push((a.to_string(), port, verdict));
            }
        }
        Report {
            connects,
            cgroup: cgroup.unwrap_or_else(|| panic!("no cgroup line in:\n{text}")),
        }
    }

    /// The very first connects of the main process got the guard's verdicts.
    fn assert_guarded_from_the_start(&self, when: &str) {
        let want: Vec<(String, u16, ProbeResult)> = FIRST_CONNECTS
            .iter()
            .map(|(a, p, r)| (a.to_string(), *p, *r))
            .collect();
        assert_eq!(self.connects, want, "{when}: qmail's first connects");
        assert_eq!(self.cgroup, format!("/system.slice/{QMAIL}"), "{when}");
    }
}

/// (a) The drop-in attaches before qmail's main process runs; (b) every restart (a new cgroup)
/// is guarded before its first connect, with no duplicate or stale attachments.
#[test]
fn qmail_is_guarded_from_its_first_connect_also_after_restarts() {
    let h = QmailHost::boot();
    assert_eq!(
        h.active_state(GUARD),
        "inactive",
        "nothing started the guard yet"
    );
    h.start_qmail("start")
        .assert_guarded_from_the_start("first start");
    assert_eq!(
        h.active_state(GUARD),
        "active",
        "qmail's start pulls the daemon in"
    );
    h.assert_guarded("after the first start");
    h.assert_one_attachment();

    for i in 1..=3 {
        let old = QmailHost::cgroup_id(&h.qmail_cgroup());
        h.start_qmail("restart")
            .assert_guarded_from_the_start(&format!("restart {i}"));
        let new = QmailHost::cgroup_id(&h.qmail_cgroup());
        assert_ne!(old, new, "restart {i}: systemd made a new cgroup");
        h.assert_guarded(&format!("after restart {i}"));
        h.assert_one_attachment();
    }
}

/// (c) `kill -9` of the daemon: systemd restarts it, the guard stays in force meanwhile, qmail
/// is not touched, and the new daemon follows control/moreipme again.
#[test]
fn daemon_killed_with_sigkill_is_restarted_and_the_guard_stays() {
    let h = QmailHost::boot();
    h.start_qmail("start")
        .assert_guarded_from_the_start("start");
    let qmail_pid = h.main_pid(QMAIL);
    let old = h.main_pid(GUARD);
    assert_ne!(old, 0, "the daemon runs");
    let restarts = h.m.property(GUARD, "NRestarts");

    h.m.systemctl_ok(&["kill", "--kill-who=main", "--signal=SIGKILL", GUARD]);
    let mut probes = 0;
    h.eventually("systemd to restart the daemon", || {
        // Throughout the gap, connects from qmail stay refused.
        assert_eq!(
            h.connect_in_qmail(MORE, 25),
            REFUSED,
            "while the daemon is down"
        );
        assert_eq!(h.connect_in_qmail("127.0.0.1", 25), REFUSED);
        probes += 1;
        assert_eq!(
            h.main_pid(QMAIL),
            qmail_pid,
            "the daemon's crash restarted qmail"
        );
        let pid = h.main_pid(GUARD);
        pid != 0 && pid != old && h.active_state(GUARD) == "active"
    });
    assert!(probes > 0);
    let now: u32 = h.m.property(GUARD, "NRestarts").parse().unwrap_or(0);
    assert_eq!(
        now,
        restarts.parse::<u32>().unwrap_or(0) + 1,
        "restarted by Restart=, once"
    );
    assert_eq!(h.active_state(QMAIL), "active", "qmail keeps running");
    assert_eq!(h.main_pid(QMAIL), qmail_pid, "qmail was not restarted");
    h.assert_guarded("after the daemon's restart");
    h.assert_one_attachment();

    // The new daemon is current: a moreipme line added now is enforced.
    assert_eq!(
        h.connect_in_qmail(MORE2, 25),
        UNREACHABLE,
        "not yet in moreipme"
    );
    h.m.write(MOREIPME, &format!("{MORE}\n{MORE2}\n"));
    h.eventually("the restarted daemon to apply control/moreipme", || {
        h.connect_in_qmail(MORE2, 25) == REFUSED
    });
}

/// (d) A failing `qmail-guard attach` (an invalid control/moreipme line) keeps qmail from
/// starting; the daemon keeps the last good set; once fixed, qmail starts guarded.
#[test]
fn qmail_does_not_start_when_the_attach_fails() {
    let h = QmailHost::boot();
    h.start_qmail("start")
        .assert_guarded_from_the_start("start");
    h.m.write(MOREIPME, &format!("{MORE}\n192.0.2.300\n"));

    let _ = fs::remove_file(h.m.path(REPORT));
    let out = h.m.systemctl(&["restart", QMAIL]);
    assert!(
        !out.status.success(),
        "qmail restarted although its attach must fail; journal:\n{}",
        h.m.journal_tail(40)
    );
    assert_eq!(h.active_state(QMAIL), "failed");
    assert_eq!(h.m.property(QMAIL, "Result"), "exit-code");
    let report = h.m.read(REPORT).unwrap_or_default();
    assert!(
        report.is_empty(),
        "qmail's main process must not have run, but it reported:\n{report}"
    );
    let journal = h.m.journal(QMAIL);
    assert!(
        journal.contains("moreipme:2:"),
        "the failure names the file and line:\n{journal}"
    );
    assert_eq!(h.active_state(GUARD), "active", "the daemon keeps running");

    h.m.write(MOREIPME, &format!("{MORE}\n"));
    h.start_qmail("start")
        .assert_guarded_from_the_start("after the fix");
    h.assert_guarded("after the fix");
    h.assert_one_attachment();
}

/// (e) Restarting the daemon (what a package upgrade does) and stopping it leave qmail running
/// and guarded: the guard lives in bpffs pins, not in the daemon. A qmail (re)start without
/// the daemon is still guarded from its first connect, by the drop-in alone.
#[test]
fn stopping_or_restarting_the_daemon_leaves_qmail_running_and_guarded() {
    let h = QmailHost::boot();
    h.start_qmail("start")
        .assert_guarded_from_the_start("start");
    let qmail_pid = h.main_pid(QMAIL);

    // Connects from qmail throughout `systemctl restart qmail-guard`.
    let old = h.main_pid(GUARD);
    let results = h.probe_during(|| {
        h.m.systemctl_ok(&["restart", GUARD]);
    });
    assert_ne!(h.main_pid(GUARD), old, "a new daemon runs");
    assert!(!results.is_empty());
    assert!(
        results.iter().all(|r| *r == REFUSED),
        "during the daemon's restart: {results:?}"
    );
    assert_eq!(h.main_pid(QMAIL), qmail_pid, "qmail was not restarted");

    h.m.systemctl_ok(&["stop", GUARD]);
    assert_eq!(h.active_state(GUARD), "inactive");
    assert_eq!(h.active_state(QMAIL), "active", "qmail keeps running");
    assert_eq!(h.main_pid(QMAIL), qmail_pid, "qmail was not restarted");
    h.assert_guarded("daemon stopped");
    h.assert_one_attachment();

    // Without the daemon (masked: nothing may start it), a restart is guarded by the drop-in.
    h.m.systemctl_ok(&["mask", GUARD]);
    h.start_qmail("restart")
        .assert_guarded_from_the_start("restart without the daemon");
    assert_eq!(h.active_state(GUARD), "inactive");
    h.assert_guarded("restart without the daemon");
    // Nobody unpins the dead cgroup's links without the daemon; the live cgroup has one of each.
    let cg = h.qmail_cgroup();
    assert_eq!(bpftool::connect_hook_counts(&cg), (1, 1));
}

/// The .deb under test: `$QMAIL_GUARD_DEB` (set by `cargo xtask test`, which builds it), else
/// the one `cargo xtask deb` left in target/debian/.
fn deb_path() -> PathBuf {
    if let Some(p) = std::env::var_os("QMAIL_GUARD_DEB") {
        return PathBuf::from(p);
    }
    let dir = bins::profile_dir().join("../debian");
    let debs: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("qmail-guard_"))
                })
                .collect()
        })
        .unwrap_or_default();
    match debs.as_slice() {
        [one] => one.clone(),
        _ => panic!(
            "no single qmail-guard_*.deb in {} ({debs:?}): build it with `cargo xtask deb` (`cargo xtask test` does) or set QMAIL_GUARD_DEB",
            dir.display()
        ),
    }
}

/// A second version of the package under test, for the upgrade: the same files with the
/// version `<version>+upgrade` (repacked with dpkg-deb into a directory of its own, removed on
/// drop, even when the test fails).
struct NextVersion {
    dir: PathBuf,
    deb: PathBuf,
    version: String,
}

impl NextVersion {
    fn of(deb: &Path) -> NextVersion {
        let dir = std::env::temp_dir().join(format!("qgt-deb-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let tree = dir.join("tree");
        let mut next = NextVersion {
            deb: dir.join("qmail-guard-next.deb"),
            dir,
            version: String::new(),
        };
        fs::create_dir_all(&next.dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", next.dir.display()));
        cmd::run_ok(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
        let control_path = tree.join("DEBIAN/control");
        let control = fs::read_to_string(&control_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", control_path.display()));
        let old = control
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .unwrap_or_else(|| panic!("no Version in {control}"))
            .to_string();
        next.version = format!("{old}+upgrade");
        fs::write(
            &control_path,
            control.replace(
                &format!("Version: {old}\n"),
                &format!("Version: {}\n", next.version),
            ),
        )
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", control_path.display()));
        cmd::run_ok(
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "-Zgzip", "-b"])
                .arg(&tree)
                .arg(&next.deb),
        );
        next
    }
}

impl Drop for NextVersion {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Files (not directories) a package installed, from `dpkg -L`.
fn package_files(h: &QmailHost) -> Vec<String> {
    h.m.exec_ok(&["dpkg", "-L", "qmail-guard"])
        .lines()
        .filter(|l| l.starts_with('/'))
        .filter(|l| !h.m.path(l).is_dir())
        .map(str::to_string)
        .collect()
}

/// The package: installs its files and man pages, enables nothing, its drop-in works once
/// linked as documented, an upgrade keeps qmail running and guarded, removal is refused while
/// qmail runs its qmail-remote, and purge leaves no file, pin or attachment behind.
#[test]
fn debian_package_installs_upgrades_and_purges_cleanly() {
    let deb = deb_path();
    let h = QmailHost::boot_with(Install::Package(&deb));
    let files = package_files(&h);
    for want in [
        "/usr/sbin/qmail-guard",
        "/usr/sbin/ipmeprint",
        "/usr/lib/qmail-guard/qmail-remote",
        "/usr/lib/systemd/system/qmail-guard.service",
        DROPIN_SHIPPED,
        "/usr/share/doc/qmail-guard/copyright",
        "/usr/share/bash-completion/completions/qmail-guard",
    ] {
        assert!(files.iter().any(|f| f == want), "{want} not in {files:?}");
    }
    for page in ["qmail-guard", "ipmeprint", "qmail-remote"] {
        let path = h.m.exec_ok(&["man", "-w", page]);
        assert_eq!(path.trim(), format!("/usr/share/man/man8/{page}.8.gz"));
    }
    // The page renders, with options of the current command line and the hand-written parts.
    let page = h.m.exec_ok(&["man", "-P", "cat", "qmail-guard"]);
    for want in [
        "qmail-guard attach",
        "qmail-guard forget",
        "--log-rate",
        "--allow-root-cgroup",
        "--metrics-file",
        "--json",
        "ELOOP",
        "(#5.4.6)",
        "EXIT STATUS",
        "UPGRADE AND REMOVAL",
    ] {
        assert!(page.contains(want), "man qmail-guard lacks {want}:\n{page}");
    }
    // bash completion loads, registers for qmail-guard and completes the commands.
    let words = h.m.exec_ok(&[
        "bash",
        "-c",
        ". /usr/share/bash-completion/completions/qmail-guard; \
         f=$(complete -p qmail-guard | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p'); \
         COMP_WORDS=(qmail-guard s); COMP_CWORD=1; COMP_LINE='qmail-guard s'; COMP_POINT=13; \
         \"$f\" qmail-guard s qmail-guard; printf '%s\\n' \"${COMPREPLY[@]}\"",
    ]);
    for want in ["status", "sync"] {
        assert!(
            words.lines().any(|w| w.trim() == want),
            "completion of `qmail-guard s` lacks {want}: {words:?}"
        );
    }
    // qmail-remote is static: it runs however qmail's libraries look.
    let file = h.m.exec(&["ldd", "/usr/lib/qmail-guard/qmail-remote"]);
    assert!(
        !file.status.success() || String::from_utf8_lossy(&file.stdout).contains("statically"),
        "qmail-remote is dynamically linked: {}",
        String::from_utf8_lossy(&file.stdout)
    );

    // The package itself enabled and started nothing; the drop-in is inactive.
    let enabled = h.m.systemctl(&["is-enabled", GUARD]);
    assert_eq!(String::from_utf8_lossy(&enabled.stdout).trim(), "disabled");
    assert_eq!(h.active_state(GUARD), "inactive");
    assert_eq!(
        h.m.property(QMAIL, "DropInPaths"),
        "",
        "drop-in active on install"
    );

    // Enabled as qmail-guard(8) says, qmail is guarded from its first connect.
    h.m.exec_ok(&["mkdir", "-p", "/etc/systemd/system/qmail.service.d"]);
    h.m.exec_ok(&["ln", "-s", DROPIN_SHIPPED, DROPIN_LINK]);
    h.m.systemctl_ok(&["daemon-reload"]);
    h.m.systemctl_ok(&["enable", "--now", GUARD]);
    h.start_qmail("start")
        .assert_guarded_from_the_start("package, drop-in enabled");
    h.assert_guarded("package, drop-in enabled");
    h.assert_one_attachment();

    // Upgrade to a second version (old prerm upgrade, new postinst configure with the old
    // version): the daemon is restarted, qmail is not, and the guard holds throughout.
    let next = NextVersion::of(&deb);
    let next_inside = "/root/qmail-guard-next.deb";
    fs::copy(&next.deb, h.m.path(next_inside))
        .unwrap_or_else(|e| panic!("cannot copy {} into the machine: {e}", next.deb.display()));
    let qmail_pid = h.main_pid(QMAIL);
    let daemon_pid = h.main_pid(GUARD);
    let results = h.probe_during(|| {
        h.m.exec_ok(&["dpkg", "-i", next_inside]);
    });
    assert_eq!(
        h.m.exec_ok(&[
            "dpkg-query",
            "-W",
            "-f",
            "${Version} ${Status}",
            "qmail-guard"
        ]),
        format!("{} install ok installed", next.version)
    );
    assert!(
        !results.is_empty() && results.iter().all(|r| *r == REFUSED),
        "during the upgrade: {results:?}"
    );
    assert_eq!(h.main_pid(QMAIL), qmail_pid, "qmail was not restarted");
    assert_ne!(h.main_pid(GUARD), daemon_pid, "the daemon was restarted");
    h.assert_guarded("after the upgrade");

    // Removal is refused while qmail would run the package's qmail-remote.
    h.m.exec_ok(&["mkdir", "-p", "/var/qmail/bin"]);
    h.m.exec_ok(&[
        "ln",
        "-s",
        "/usr/lib/qmail-guard/qmail-remote",
        "/var/qmail/bin/qmail-remote",
    ]);
    let out = h.m.exec(&["dpkg", "--purge", "qmail-guard"]);
    assert!(
        !out.status.success(),
        "purge went ahead while qmail used our qmail-remote"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("switch qmail back first"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(h.m.path("/usr/sbin/qmail-guard").exists());
    h.m.exec_ok(&["rm", "/var/qmail/bin/qmail-remote"]);

    h.m.exec_ok(&["dpkg", "--purge", "qmail-guard"]);
    let left: Vec<&String> = files.iter().filter(|f| h.m.path(f).exists()).collect();
    assert!(left.is_empty(), "left behind by purge: {left:?}");
    assert!(
        fs::symlink_metadata(h.m.path(DROPIN_LINK)).is_err(),
        "the drop-in link was not removed"
    );
    assert!(
        !h.m.bpf_dir().join("qmail-guard").exists(),
        "pins left behind: {}",
        h.m.bpf_dir().display()
    );
    assert!(
        !h.m.path("/run/qmail-guard").exists(),
        "daemon state left behind"
    );
    assert!(
        fs::symlink_metadata(h.m.path(&format!(
            "/etc/systemd/system/multi-user.target.wants/{GUARD}"
        )))
        .is_err(),
        "the service is still enabled"
    );
    assert_eq!(
        bpftool::connect_hook_counts(&h.qmail_cgroup()),
        (0, 0),
        "attachments left behind"
    );
    assert_eq!(h.active_state(QMAIL), "active", "qmail keeps running");
    // Without the drop-in qmail starts again, unguarded: the loopback listener answers.
    let report = h.start_qmail("restart");
    assert_eq!(
        report.connects,
        vec![
            (MORE.to_string(), 25, UNREACHABLE),
            ("127.0.0.1".to_string(), 25, Allowed),
            (
                "::1".to_string(),
                25,
                ProbeResult::Errno(libc::ECONNREFUSED)
            ),
            ("127.0.0.1".to_string(), 2525, Allowed),
        ],
        "after purge qmail runs unguarded"
    );
}
