//! Guard integrity against an unlucky operator and a local attacker: local routes of every
//! table, pins only root can touch, bounded control files, capacity and port limits checked
//! before anything is written, refused footguns, one sentence without privileges, and a
//! writer that waited for the lock never applying an older set.

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use guard_tests::bpftool;
use guard_tests::daemon::{Daemon, eventually};
use guard_tests::guard::ensure_success;
use guard_tests::mountinfo;
use guard_tests::probe::ProbeResult::{self, Ok as Allowed};
use guard_tests::scene::{self, MORE_V4_MEMBER};
use guard_tests::topology::HOST_DEV;
use guard_tests::{Guard, MailHost, bins};

const REFUSED: ProbeResult = ProbeResult::REFUSED;
const SMTP: u16 = 25;
/// The unprivileged user of the tests.
const NOBODY: u32 = 65534;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The failed command's stderr is exactly one non-empty line containing every `needle`.
fn assert_one_line(what: &str, out: &Output, needles: &[&str]) -> String {
    assert!(!out.status.success(), "{what} succeeded: {}", stderr(out));
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line, got {err:?}");
    for n in needles {
        assert!(lines[0].contains(n), "{what}: {:?} lacks {n:?}", lines[0]);
    }
    lines[0].to_string()
}

/// Both tries as bpftool dumps them, to compare "before" and "after".
fn tries(g: &Guard) -> (serde_json::Value, serde_json::Value) {
    (
        bpftool::map_dump(&g.map("IPME_V4")),
        bpftool::map_dump(&g.map("IPME_V6")),
    )
}

fn ports(g: &Guard) -> Vec<u64> {
    g.status_json()["ports"]
        .as_array()
        .expect("ports array")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect()
}

/// Runs `cmd` and fails the test if it has not exited within `limit`.
fn output_within(cmd: &mut Command, limit: Duration, what: &str) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let pid = child.id();
    let start = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if start.elapsed() > limit {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = waiter.join();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    waiter
        .join()
        .expect("waiter thread")
        .unwrap_or_else(|e| panic!("cannot wait for {what}: {e}"))
}

/// `qmail-guard ARGS…` as uid/gid 65534, outside any netns (an unprivileged user cannot
/// enter one), with the guard's pin dir and home.
fn as_nobody(g: &Guard, args: &[&str]) -> Output {
    let mut c = Command::new(bins::bin_path("qmail-guard"));
    c.args(args)
        .arg("--pin-dir")
        .arg(g.pin_dir())
        .env_remove("QMAILHOME")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null());
    c.output().expect("run qmail-guard as nobody")
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn attach_fails_and_attaches_nothing(g: &Guard, mh: &MailHost, needles: &[&str]) {
    let out = g.attach_ports(mh.cgroup.path(), &[]);
    assert_one_line("attach", &out, needles);
    assert_eq!(bpftool::connect_hook_counts(mh.cgroup.path()), (0, 0));
    assert_eq!(g.pinned_links(), Vec::<String>::new());
    assert_eq!(mh.connect("127.0.0.1", SMTP), Allowed);
}

#[test]
fn local_routes_of_the_main_and_a_custom_table_are_refused_at_attach_and_live() {
    // All of them live on the peer: before their local routes exist they really connect.
    let main4 = "198.51.100.130";
    let main6 = "2001:db8:5::130";
    let custom4 = "203.0.113.130";
    let custom6 = "2001:db8:6::130";
    let live4 = "198.51.100.40";
    let live6 = "2001:db8:7::40";
    let mh = MailHost::new(&[main4, main6, custom4, custom6, live4, live6]);
    let all = [main4, main6, custom4, custom6, live4, live6].map(|a| (a, SMTP));
    mh.assert_all_connect(&all, "before any local route");

    let h = &mh.host;
    h.ip(&[
        "route",
        "add",
        "local",
        "198.51.100.128/25",
        "dev",
        "lo",
        "table",
        "main",
    ]);
    h.ip(&[
        "-6",
        "route",
        "add",
        "local",
        "2001:db8:5::/64",
        "dev",
        "lo",
        "table",
        "main",
    ]);
    // A custom table selected by a policy rule, as an administrator would set it up.
    h.ip(&[
        "route",
        "add",
        "local",
        "203.0.113.128/25",
        "dev",
        "lo",
        "table",
        "100",
    ]);
    h.ip(&["rule", "add", "to", "203.0.113.128/25", "lookup", "100"]);
    h.ip(&[
        "-6",
        "route",
        "add",
        "local",
        "2001:db8:6::/64",
        "dev",
        "lo",
        "table",
        "100",
    ]);
    h.ip(&[
        "-6",
        "rule",
        "add",
        "to",
        "2001:db8:6::/64",
        "lookup",
        "100",
    ]);

    let g = Guard::new(&mh.host);
    g.attach(&mh.cgroup);
    mh.assert_connects(
        &[
            (main4, SMTP, REFUSED),
            (main6, SMTP, REFUSED),
            (custom4, SMTP, REFUSED),
            (custom6, SMTP, REFUSED),
            (live4, SMTP, Allowed),
            (live6, SMTP, Allowed),
        ],
        "after attach",
    );
    let print = guard_tests::cmd::run_ok(&mut print_command(&g, &mh.host));
    for want in [
        "198.51.100.128/25",
        "local route table main dev lo",
        "local route table 100 dev lo",
    ] {
        assert!(print.contains(want), "print lacks {want:?}:\n{print}");
    }
    for (addr, verdict) in [(main4, true), (custom6, true), (live4, false)] {
        assert_eq!(g.check(addr, SMTP).0, Some(verdict), "check {addr}");
    }

    // Live: the daemon follows local routes of any table.
    let _d = Daemon::start(&g, mh.cgroup.path(), &[]);
    h.ip(&[
        "route",
        "add",
        "local",
        "198.51.100.32/27",
        "dev",
        "lo",
        "table",
        "main",
    ]);
    h.ip(&[
        "-6",
        "route",
        "add",
        "local",
        "2001:db8:7::/64",
        "dev",
        "lo",
        "table",
        "100",
    ]);
    for addr in [live4, live6] {
        eventually(&format!("{addr} refused after its local route"), || {
            mh.connect(addr, SMTP) == REFUSED
        });
    }
}

#[test]
fn pin_dir_made_by_another_user_or_writable_by_others_is_refused() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let dir = g.pin_dir();
    fs::create_dir(dir).expect("pre-create the pin dir");
    chown(dir, NOBODY);
    let name = dir.to_str().expect("UTF-8");
    attach_fails_and_attaches_nothing(&g, &mh, &[name, "owned by uid 65534"]);
    assert!(
        fs::read_dir(dir).expect("still there").next().is_none(),
        "attach wrote into a pin directory it refused"
    );

    chown(dir, 0);
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).expect("chmod");
    attach_fails_and_attaches_nothing(&g, &mh, &[name, "mode 0777"]);

    // A trusted directory with an untrusted object inside is refused too.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    fs::create_dir(dir.join("links")).expect("mkdir links");
    chown(&dir.join("links"), NOBODY);
    attach_fails_and_attaches_nothing(&g, &mh, &["links", "owned by uid 65534"]);

    chown(&dir.join("links"), 0);
    g.attach(&mh.cgroup);
    assert_eq!(mh.connect("127.0.0.1", SMTP), REFUSED);
}

#[test]
fn a_failed_attach_removes_the_pin_dir_it_created() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    g.write_control("moreipme", "198.51.100.0/24\nbogus\n");
    let out = g.attach_ports(mh.cgroup.path(), &[]);
    assert_one_line("attach", &out, &["control/moreipme:2:"]);
    assert!(!g.pin_dir().exists(), "a failed attach left its pin dir");
}

#[test]
fn an_unprivileged_user_can_neither_touch_the_pins_nor_get_wrong_answers() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    g.attach(&mh.cgroup);
    let links = g.pinned_links();
    let before = tries(&g);
    let dir = g.pin_dir().to_str().expect("UTF-8").to_string();

    // Every way to remove or replace a pin, as uid 65534; each must fail.
    let script = format!(
        "rm -f {dir}/links/* {dir}/maps/* {dir}/progs/*; \
         mv {dir}/maps/IPME_V4 {dir}/x; touch {dir}/links/x {dir}/maps/IPME_V4; \
         rm -rf {dir}; mv {dir} {dir}.moved; true"
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run sh as nobody");
    assert!(out.status.success());
    assert_eq!(g.pinned_links(), links, "links changed");
    assert_eq!(tries(&g), before, "maps changed");
    assert!(g.pin_dir().join("progs/connect4").exists());
    assert_eq!(mh.connect(MORE_V4_MEMBER, SMTP), REFUSED);

    let home = g.home().to_str().expect("UTF-8");
    for args in [
        vec!["status"],
        vec!["sync", "--qmail-home", home],
        vec!["detach", "--all"],
    ] {
        let out = as_nobody(&g, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert_one_line(
            &args.join(" "),
            &out,
            &["needs root (CAP_BPF and CAP_SYS_ADMIN)", &dir],
        );
    }
    let out = as_nobody(&g, &["check", "127.0.0.1", "25", "--qmail-home", home]);
    assert!(
        stderr(&out).contains("needs root (CAP_BPF and CAP_SYS_ADMIN)")
            && stderr(&out).contains("answering from the set computed now"),
        "check: {}",
        stderr(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("computed set, not the kernel's maps"),
        "check: {stdout}"
    );
    assert_eq!(out.status.code(), Some(0), "127.0.0.1 is always me");
    assert_eq!(g.pinned_links(), links, "detach as nobody removed links");
}

/// Puts one kind of unusable file in place of control/moreipme, atomically (rename), so a
/// watching daemon never sees the file missing or half made.
fn make_unusable(path: &Path, kind: &str) {
    let dir = path.parent().expect("control dir");
    let tmp = dir.join(format!(".{kind}.tmp"));
    match kind {
        "fifo" => {
            let c = std::ffi::CString::new(tmp.to_str().expect("UTF-8")).expect("no NUL");
            // SAFETY: valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
        }
        "dev-zero" => symlink("/dev/zero", &tmp).expect("symlink"),
        // A symlink to a directory: rename(2) cannot put a directory over a file.
        "directory" => {
            let target = dir.join(".a-directory");
            fs::create_dir_all(&target).expect("mkdir");
            symlink(&target, &tmp).expect("symlink");
        }
        "17MiB" => {
            let f = fs::File::create(&tmp).expect("create");
            f.set_len(17 << 20).expect("set_len");
        }
        other => panic!("unknown kind {other}"),
    }
    fs::rename(&tmp, path).expect("rename into place");
}

/// `qmail-guard print --qmail-home HOME` inside `netns` (print takes no --pin-dir).
fn print_command(g: &Guard, netns: &guard_tests::Netns) -> Command {
    let mut c = Command::new(bins::bin_path("qmail-guard"));
    c.args(["print", "--qmail-home", g.home().to_str().expect("UTF-8")])
        .env_remove("QMAILHOME");
    guard_tests::nsenter::enter(&mut c, None, &netns.path());
    c
}

const UNUSABLE: [(&str, &str); 4] = [
    ("fifo", "is a FIFO"),
    ("dev-zero", "is a character device"),
    ("directory", "is a directory"),
    ("17MiB", "more than the limit"),
];

#[test]
fn unusable_control_files_are_one_line_each_and_change_nothing() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    g.attach(&mh.cgroup);
    let before = tries(&g);
    let file = g.home().join("control/moreipme");
    let home = g.home().to_str().expect("UTF-8");
    let limit = Duration::from_secs(2);
    for (kind, says) in UNUSABLE {
        make_unusable(&file, kind);
        for args in [
            vec!["sync", "--qmail-home", home],
            vec![
                "attach",
                "--cgroup",
                mh.cgroup.path().to_str().expect("UTF-8"),
                "--qmail-home",
                home,
            ],
        ] {
            let what = format!("{} with a {kind} moreipme", args[0]);
            let out = output_within(&mut g.command(&args), limit, &what);
            assert_one_line(&what, &out, &["qmail-guard: control/moreipme: ", says]);
        }
        let what = format!("print with a {kind} moreipme");
        let out = output_within(&mut print_command(&g, &mh.host), limit, &what);
        assert_one_line(&what, &out, &["qmail-guard: control/moreipme: ", says]);
        let mut c = Command::new(bins::bin_path("ipmeprint"));
        c.args(["--qmail-home", home]);
        let out = output_within(&mut c, limit, "ipmeprint");
        assert_eq!(out.status.code(), Some(100), "ipmeprint: {}", stderr(&out));
        assert_one_line("ipmeprint", &out, &["control/moreipme: ", says]);
        assert_eq!(tries(&g), before, "maps changed with a {kind} moreipme");
    }
    assert_eq!(mh.connect(MORE_V4_MEMBER, SMTP), REFUSED);
}

#[test]
fn the_daemon_reports_unusable_control_files_and_stays_responsive() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    let mut d = Daemon::start(&g, mh.cgroup.path(), &[]);
    let before = tries(&g);
    let file = g.home().join("control/moreipme");
    for (kind, says) in UNUSABLE {
        let seen = d.lines().len();
        make_unusable(&file, kind);
        let start = Instant::now();
        let line = d.wait_line(&format!("a report of the {kind}"), |l| {
            l.contains("control/moreipme: ") && l.contains(says)
        });
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{kind} reported after {:?}",
            start.elapsed()
        );
        let reports = d.lines()[seen..]
            .iter()
            .filter(|l| l.contains("control/moreipme: "))
            .count();
        assert_eq!(reports, 1, "{kind}: {line}");
        d.assert_running(&format!("after a {kind} moreipme"));
        assert_eq!(tries(&g), before, "maps changed with a {kind} moreipme");
    }
    assert_eq!(mh.connect(MORE_V4_MEMBER, SMTP), REFUSED);
    let start = Instant::now();
    d.terminate();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "SIGTERM took {:?}",
        start.elapsed()
    );
}

#[test]
fn an_over_capacity_set_is_refused_and_a_fixed_file_syncs() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    g.attach(&mh.cgroup);
    let entries = |g: &Guard| g.status_json()["entries_v4"].as_u64().expect("entries_v4");
    let before = entries(&g);

    // 1 100 000 + 1 000 000 IPv4 prefixes: each file under 16 MiB, together over 2^21.
    let lines = |first: u32, n: u32| -> String {
        (0..n)
            .map(|i| format!("{}\n", std::net::Ipv4Addr::from(first + i)))
            .collect()
    };
    g.write_control("moreipme", &lines(0x0a00_0000, 1_100_000));
    g.write_control("notipme", &lines(0x0b00_0000, 1_000_000));
    let out = g.sync();
    assert_one_line(
        "sync over capacity",
        &out,
        &["more than the kernel map holds (2097152)", "IPv4"],
    );
    assert_eq!(entries(&g), before, "an over-capacity sync wrote entries");
    assert_eq!(mh.connect(MORE_V4_MEMBER, SMTP), REFUSED);

    // The fix (a file of sensible size) applies with a plain sync, no detach needed.
    g.write_control("moreipme", "10.0.100.0/24\n");
    g.write_control("notipme", "");
    ensure_success("sync after the fix", &g.sync());
    assert_eq!(g.check("10.0.100.1", SMTP).0, Some(true));
    assert_eq!(mh.connect("10.0.100.1", SMTP), REFUSED);
}

#[test]
fn ports_are_validated_before_anything_changes_and_kept_without_port() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    g.attach(&mh.cgroup);
    assert_eq!(ports(&g), [25]);
    let cg = mh.cgroup.path().to_str().expect("UTF-8");
    let home = g.home().to_str().expect("UTF-8");
    let attach = |extra: &[&str]| {
        let mut args = vec!["attach", "--cgroup", cg, "--qmail-home", home];
        args.extend_from_slice(extra);
        g.run(&args)
    };
    for bad in ["0", "70000"] {
        let out = attach(&["--port", bad]);
        assert!(!out.status.success(), "--port {bad} accepted");
        assert!(stderr(&out).contains(bad), "{}", stderr(&out));
        assert_eq!(ports(&g), [25], "--port {bad} changed PORTS");
    }
    let many: Vec<String> = (1000..1065).map(|p: u16| p.to_string()).collect();
    let mut args = Vec::new();
    for p in &many {
        args.extend(["--port", p.as_str()]);
    }
    assert_one_line("65 ports", &attach(&args), &["65 ports", "at most 64"]);
    assert_eq!(ports(&g), [25], "too many ports changed PORTS");

    ensure_success("attach --port 587", &attach(&["--port", "587"]));
    assert_eq!(ports(&g), [587]);
    ensure_success("attach", &attach(&[]));
    assert_eq!(ports(&g), [587], "attach without --port reset the ports");
    assert_eq!(mh.connect("127.0.0.1", 2525), Allowed);
}

#[test]
fn prefixes_covering_much_of_the_internet_are_refused() {
    for (file, line) in [
        ("moreipme", "0.0.0.0/0"),
        ("moreipme", "::/0"),
        ("moreipme", "10.0.0.0/7"),
        ("notipme", "::/0"),
    ] {
        let mh = scene::mail_host();
        let g = Guard::new(&mh.host);
        g.write_control(file, &format!("198.51.100.1\n{line}\n"));
        attach_fails_and_attaches_nothing(
            &g,
            &mh,
            &[
                &format!("control/{file}:2:"),
                "would treat a large part of the internet as",
            ],
        );
        assert!(!g.pin_dir().exists(), "{line}: pin dir left behind");
    }
}

#[test]
fn the_cgroup2_root_is_refused() {
    let root = mountinfo::cgroup2_mount()
        .expect("read mountinfo")
        .expect("a cgroup2 mount");
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let before = bpftool::connect_hook_counts(&root);
    let r = root.to_str().expect("UTF-8");
    let home = g.home().to_str().expect("UTF-8");
    for args in [
        vec!["attach", "--cgroup", r, "--qmail-home", home],
        vec!["run", "--cgroup", r, "--qmail-home", home],
    ] {
        let out = g.run(&args);
        assert_one_line(
            args[0],
            &out,
            &["root of the cgroup2 hierarchy", "--allow-root-cgroup"],
        );
        assert!(!g.pin_dir().exists(), "{}: pins created", args[0]);
    }
    assert_eq!(bpftool::connect_hook_counts(&root), before);
    let help = g.run_ok(&["attach", "--help"]);
    assert!(
        help.contains("--allow-root-cgroup") && help.contains("DANGEROUS"),
        "{help}"
    );
    assert!(help.contains("without --port the ports in force are kept"));
}

/// Holds the pin directory's lock (the same flock(2) every writer takes) until dropped.
struct HeldLock(#[allow(dead_code)] fs::File);

impl HeldLock {
    fn take(dir: &Path) -> HeldLock {
        use std::os::fd::AsRawFd as _;
        let f = fs::File::open(dir).expect("open pin dir");
        // SAFETY: flock on an fd we own.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
        HeldLock(f)
    }
}

/// Whether `pid` sleeps in flock(2).
fn waits_for_lock(pid: u32) -> bool {
    // flock_lock_inode_wait on older kernels, locks_lock_inode_wait on newer ones.
    fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("lock_inode_wait"))
}

#[test]
fn a_sync_that_waited_for_the_lock_applies_the_newest_set() {
    let added = "198.51.100.77";
    let mh = MailHost::new(&[added]);
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    g.attach(&mh.cgroup);
    assert_eq!(mh.connect(added, SMTP), Allowed);

    // A sync stuck on the lock (held here, as another writer would) while an address is
    // added: once it gets the lock it must apply a set with that address, not one computed
    // before it waited.
    let lock = HeldLock::take(g.pin_dir());
    let mut sync = g.command(&["sync", "--qmail-home", g.home().to_str().expect("UTF-8")]);
    let child = sync.spawn().expect("spawn sync");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !waits_for_lock(child.id()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    mh.host.add_addr(HOST_DEV, &format!("{added}/32"));
    drop(lock);
    let out = child.wait_with_output().expect("wait for sync");
    ensure_success("sync", &out);
    assert_eq!(
        mh.connect(added, SMTP),
        REFUSED,
        "the waiting sync lost the address"
    );
}

#[test]
fn the_daemon_reattaching_a_recreated_cgroup_computes_its_set_under_the_lock() {
    let added = "198.51.100.78";
    let mh = MailHost::new(&[added]);
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    let d = Daemon::start(&g, mh.cgroup.path(), &[]);
    assert_eq!(mh.connect(added, SMTP), Allowed);

    // A restarted unit (new cgroup) while another writer holds the lock: the daemon's attach
    // waits for it, and the set changes meanwhile. The attach writes the set, so it must be
    // the one computed once the lock is held, not the one from before the wait.
    let lock = HeldLock::take(g.pin_dir());
    fs::remove_dir(mh.cgroup.path()).expect("remove the (empty) cgroup");
    fs::create_dir(mh.cgroup.path()).expect("re-create the cgroup");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !waits_for_lock(d.pid()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        waits_for_lock(d.pid()),
        "the daemon did not wait for the lock: {:#?}",
        d.lines()
    );
    let attach_lines = |d: &Daemon| -> Vec<String> {
        d.lines()
            .into_iter()
            .filter(|l| l.contains("attached connect4 connect6"))
            .collect()
    };
    assert_eq!(attach_lines(&d).len(), 1, "only the attach at start so far");
    let before = d.lines().len();
    g.write_control("moreipme", &format!("{}\n{added}\n", scene::MOREIPME));
    drop(lock);
    eventually("the re-attach", || attach_lines(&d).len() == 2);
    let line = attach_lines(&d).pop().expect("two lines");
    assert!(
        line.contains("(1 written, 0 removed)"),
        "the re-attach must write the set computed under the lock (with {added}): {line}"
    );
    assert_eq!(mh.connect(added, SMTP), REFUSED);
    // Nothing was left for the daemon's own update to add afterwards.
    std::thread::sleep(Duration::from_millis(300));
    let later: Vec<String> = d.lines()[before..].to_vec();
    assert!(
        !later
            .iter()
            .any(|l| l.contains("sync:") && !l.contains("(0 written, 0 removed)")),
        "{later:#?}"
    );
}

#[test]
fn a_refusal_storm_logs_at_most_the_limit_per_second_and_counts_every_refusal() {
    const STORM: u64 = 40_000;
    const LIMIT: usize = 10;
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let d = Daemon::start(&g, mh.cgroup.path(), &["--log-rate", "10"]);
    // Two seconds at 20 000 refusals per second, from inside the guarded cgroup.
    let line = guard_tests::probe_line(
        Some(&mh.cgroup),
        &mh.host,
        &["storm", "127.0.0.1", "25", &STORM.to_string(), "20000"],
    );
    assert_eq!(line, format!("refused {STORM} other 0"));
    let counted = |g: &Guard| {
        let st = g.status_json();
        st["refused_v4"].as_u64().expect("refused_v4") + st["refused_v6"].as_u64().expect("v6")
    };
    assert_eq!(counted(&g), STORM, "the refusal counters are not exact");

    let refusal = |l: &str| l.contains("refused pid=");
    let suppressed = |l: &str| -> Option<u64> {
        let rest = l.split("… ").nth(1)?;
        rest.split(" more refusals suppressed").next()?.parse().ok()
    };
    // Lines shown plus the suppressed counts account for every refusal.
    eventually("summaries covering the whole storm", || {
        let lines = d.lines();
        let shown = lines.iter().filter(|l| refusal(l)).count() as u64;
        let hidden: u64 = lines.iter().filter_map(|l| suppressed(l)).sum();
        shown + hidden == STORM
    });
    // Per wall-clock second (the log's timestamp up to the dot): at most LIMIT refusal
    // lines and one summary.
    let lines = d.lines();
    let mut per_second: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for l in &lines {
        let second = l.split('.').next().unwrap_or_default().to_string();
        let e = per_second.entry(second).or_default();
        if refusal(l) {
            e.0 += 1;
        } else if suppressed(l).is_some() {
            e.1 += 1;
        }
    }
    for (second, (shown, summaries)) in &per_second {
        assert!(
            *shown <= LIMIT && *summaries <= 1,
            "{second}: {shown} refusal lines, {summaries} summaries:\n{}",
            lines.join("\n")
        );
    }
    assert!(
        lines.iter().filter(|l| suppressed(l).is_some()).count() >= 1,
        "no summary line"
    );
}
