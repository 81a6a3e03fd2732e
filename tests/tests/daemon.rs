//! `qmail-guard run`: the daemon keeps the guard current (addresses, local routes, control
//! files) and attached (cgroup re-created), survives `kill -9` with the guard in force, logs
//! refusals, and ships systemd units that systemd accepts.
//!
//! Every check of "the daemon has seen it" is a real connect from inside the guarded cgroup,
//! polled with a deadline: the map alone could be right while the kernel still lets the
//! connect through.

use std::fs;
use std::process::Command;

use guard_tests::bpftool;
use guard_tests::cmd;
use guard_tests::daemon::{Daemon, eventually};
use guard_tests::probe::{
    self,
    ProbeResult::{self, Ok as Allowed},
};
use guard_tests::scene::{self, MORE_V4_MEMBER, MORE_V6_MEMBER, OTHER_V4, OTHER_V6};
use guard_tests::topology::{HOST_DEV, HOST_V4, HOST_V6};
use guard_tests::{Guard, MailHost};

const REFUSED: ProbeResult = ProbeResult::REFUSED;
const SMTP: u16 = 25;

/// Polls a connect from inside the cgroup until it gives `want`.
fn wait_connect(mh: &MailHost, addr: &str, want: ProbeResult, when: &str) {
    let mut last = None;
    eventually(
        &format!("{when}: [{addr}]:25 to be {want:?} (last: {last:?})"),
        || {
            let got = mh.connect(addr, SMTP);
            last = Some(got);
            got == want
        },
    );
}

fn start<'a>(g: &'a Guard<'a>, mh: &MailHost) -> Daemon<'a> {
    Daemon::start(g, mh.cgroup.path(), &[])
}

#[test]
fn address_added_to_an_interface_is_refused_then_allowed_after_removal() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    // Both live on the peer: they connect before, and again after removal from the host.
    mh.assert_all_connect(&[(OTHER_V4, SMTP), (OTHER_V6, SMTP)], "before the daemon");
    let _d = start(&g, &mh);
    mh.assert_connects(
        &[
            (HOST_V4, SMTP, REFUSED),
            (OTHER_V4, SMTP, Allowed),
            (OTHER_V6, SMTP, Allowed),
        ],
        "daemon ready",
    );

    mh.host.add_addr(HOST_DEV, &format!("{OTHER_V4}/32"));
    mh.host.add_addr(HOST_DEV, &format!("{OTHER_V6}/128"));
    wait_connect(&mh, OTHER_V4, REFUSED, "IPv4 address added to eth0");
    wait_connect(&mh, OTHER_V6, REFUSED, "IPv6 address added to eth0");

    mh.host
        .ip(&["addr", "del", &format!("{OTHER_V4}/32"), "dev", HOST_DEV]);
    mh.host.ip(&[
        "-6",
        "addr",
        "del",
        &format!("{OTHER_V6}/128"),
        "dev",
        HOST_DEV,
    ]);
    wait_connect(&mh, OTHER_V4, Allowed, "IPv4 address removed");
    wait_connect(&mh, OTHER_V6, Allowed, "IPv6 address removed");
    // Untouched entries stayed in force throughout.
    assert_eq!(mh.connect(HOST_V4, SMTP), REFUSED);
}

#[test]
fn local_route_is_refused_then_allowed_after_removal() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let _d = start(&g, &mh);
    mh.assert_connects(
        &[(OTHER_V4, SMTP, Allowed), (OTHER_V6, SMTP, Allowed)],
        "daemon ready",
    );

    // AnyIP: the whole prefix becomes local without any interface address.
    mh.host
        .ip(&["route", "add", "local", "198.51.100.0/24", "dev", "lo"]);
    mh.host.ip(&[
        "-6",
        "route",
        "add",
        "local",
        "2001:db8:2::/64",
        "dev",
        "lo",
    ]);
    wait_connect(&mh, OTHER_V4, REFUSED, "local route 198.51.100.0/24 added");
    wait_connect(&mh, OTHER_V6, REFUSED, "local route 2001:db8:2::/64 added");
    let (v, _) = g.check(OTHER_V4, SMTP);
    assert_eq!(v, Some(true));

    mh.host
        .ip(&["route", "del", "local", "198.51.100.0/24", "dev", "lo"]);
    mh.host.ip(&[
        "-6",
        "route",
        "del",
        "local",
        "2001:db8:2::/64",
        "dev",
        "lo",
    ]);
    wait_connect(&mh, OTHER_V4, Allowed, "local route removed");
    wait_connect(&mh, OTHER_V6, Allowed, "IPv6 local route removed");
}

#[test]
fn moreipme_edited_in_place_and_replaced_by_rename_is_applied() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let _d = start(&g, &mh);
    mh.assert_connects(
        &[
            (MORE_V4_MEMBER, SMTP, Allowed),
            (MORE_V6_MEMBER, SMTP, Allowed),
        ],
        "daemon ready, no moreipme yet",
    );

    // In place: open, truncate, write, close (no rename).
    g.write_control("moreipme", "203.0.113.0/24\n");
    wait_connect(&mh, MORE_V4_MEMBER, REFUSED, "moreipme written in place");

    // Atomic replacement: write a temporary file, rename it over moreipme.
    let control = g.home().join("control");
    fs::write(control.join(".moreipme.new"), "2001:db8:1::/48\n").unwrap();
    fs::rename(control.join(".moreipme.new"), control.join("moreipme")).unwrap();
    wait_connect(&mh, MORE_V6_MEMBER, REFUSED, "moreipme replaced by rename");
    wait_connect(&mh, MORE_V4_MEMBER, Allowed, "old moreipme line gone");

    // notipme too: an exception inside the moreipme range.
    fs::write(control.join(".notipme.new"), "2001:db8:1::7\n").unwrap();
    fs::rename(control.join(".notipme.new"), control.join("notipme")).unwrap();
    wait_connect(&mh, MORE_V6_MEMBER, Allowed, "notipme exception added");

    // Removing the file empties it.
    fs::remove_file(control.join("notipme")).unwrap();
    wait_connect(&mh, MORE_V6_MEMBER, REFUSED, "notipme removed");
}

#[test]
fn invalid_moreipme_edit_is_logged_with_line_and_last_good_set_stays() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    g.write_control("moreipme", "203.0.113.0/24\n");
    let d = start(&g, &mh);
    assert_eq!(
        mh.connect(MORE_V4_MEMBER, SMTP),
        REFUSED,
        "valid moreipme at start"
    );

    // Line 2 is invalid; the valid line 1 would drop 203.0.113.0/24 if it were applied.
    g.write_control("moreipme", "198.51.100.7\nnot-an-address\n");
    let line = d.wait_line("error for control/moreipme:2", |l| {
        l.contains("control/moreipme:2:")
    });
    assert!(line.contains("ERROR"), "not logged at error level: {line}");
    // The previous set is still enforced, by the kernel, and nothing of the bad file is.
    assert_eq!(
        mh.connect(MORE_V4_MEMBER, SMTP),
        REFUSED,
        "last good set in force"
    );
    assert_eq!(
        mh.connect(OTHER_V4, SMTP),
        Allowed,
        "invalid file not applied"
    );
    let status = g.status_json();
    let err = status["daemon"]["input_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.starts_with("control/moreipme:2:"),
        "status input_error: {status}"
    );

    // Interfaces stay live while the file is broken.
    mh.host.add_addr(HOST_DEV, "198.51.100.8/32");
    wait_connect(
        &mh,
        "198.51.100.8",
        REFUSED,
        "address added while moreipme is invalid",
    );

    // Fixed: the new contents apply.
    g.write_control("moreipme", "198.51.100.7\n");
    wait_connect(&mh, OTHER_V4, REFUSED, "fixed moreipme applied");
    wait_connect(&mh, MORE_V4_MEMBER, Allowed, "old moreipme entry removed");
    d.wait_line("recovery message", |l| l.contains("valid again"));
}

#[test]
fn recreated_cgroup_is_guarded_again_without_restarting_the_daemon() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let d = start(&g, &mh);
    let old_id = mh.cgroup.id();
    assert_eq!(mh.connect(HOST_V4, SMTP), REFUSED, "guarded at start");

    // What systemd does on a service restart: remove the cgroup, make a new one, same path.
    fs::remove_dir(mh.cgroup.path()).expect("remove the (empty) cgroup");
    fs::create_dir(mh.cgroup.path()).expect("re-create the cgroup");
    let new_id = mh.cgroup.id();
    assert_ne!(old_id, new_id);
    wait_connect(&mh, HOST_V4, REFUSED, "re-created cgroup");
    assert_eq!(mh.connect(HOST_V6, SMTP), REFUSED);

    // Exactly one link per hook on the new cgroup, and the dead cgroup's pins are gone.
    assert_eq!(bpftool::connect_hook_counts(mh.cgroup.path()), (1, 1));
    let want = vec![format!("{new_id}-connect4"), format!("{new_id}-connect6")];
    eventually("stale links of the removed cgroup to be unpinned", || {
        g.pinned_links() == want
    });
    d.assert_running("after the cgroup was re-created");
}

#[test]
fn kill_9_leaves_the_guard_in_force_and_a_new_daemon_reconciles() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let mut d = start(&g, &mh);
    let pid = d.pid();
    let st = g.status_json();
    assert_eq!(st["daemon"]["pid"].as_u64(), Some(u64::from(pid)), "{st}");
    assert_eq!(st["daemon"]["running"].as_bool(), Some(true), "{st}");
    assert_eq!(st["last_sync"]["by"].as_str(), Some("daemon"), "{st}");

    d.kill9();
    drop(d);
    mh.assert_connects(
        &[
            (HOST_V4, SMTP, REFUSED),
            (HOST_V6, SMTP, REFUSED),
            ("127.0.0.1", SMTP, REFUSED),
        ],
        "after kill -9 of the daemon",
    );
    let st = g.status_json();
    assert_eq!(st["daemon"]["running"].as_bool(), Some(false), "{st}");

    // Changes while no daemon runs are picked up by the next one (maps corrected by diff).
    mh.host.add_addr(HOST_DEV, &format!("{OTHER_V4}/32"));
    let d2 = start(&g, &mh);
    // READY=1 means synced: no polling needed here.
    assert_eq!(
        mh.connect(OTHER_V4, SMTP),
        REFUSED,
        "new daemon synced at start"
    );
    assert_eq!(bpftool::connect_hook_counts(mh.cgroup.path()), (1, 1));
    assert_eq!(g.pinned_links().len(), 2, "{:?}", g.pinned_links());
    // A SIGHUP full resync changes nothing either.
    d2.signal(libc::SIGHUP);
    d2.wait_line("SIGHUP handling", |l| l.contains("SIGHUP"));
    assert_eq!(bpftool::connect_hook_counts(mh.cgroup.path()), (1, 1));
}

#[test]
fn a_daemon_restarted_while_moreipme_is_invalid_keeps_the_last_good_entries() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    g.write_control("moreipme", "203.0.113.0/24\n");
    let mut d = start(&g, &mh);
    d.kill9();
    drop(d);
    g.write_control("moreipme", "garbage\n");
    // Starts (READY=1) instead of failing, reports the line, keeps the pinned entries.
    let d = start(&g, &mh);
    d.wait_line("error for control/moreipme:1", |l| {
        l.contains("ERROR") && l.contains("control/moreipme:1:")
    });
    assert_eq!(
        mh.connect(MORE_V4_MEMBER, SMTP),
        REFUSED,
        "last good entry kept"
    );
    g.write_control("moreipme", "198.51.100.7\n");
    wait_connect(&mh, OTHER_V4, REFUSED, "fixed moreipme applied");
    wait_connect(&mh, MORE_V4_MEMBER, Allowed, "recovered entry replaced");
}

#[test]
fn sigterm_keeps_the_guard_and_detach_on_exit_removes_it() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let mut d = start(&g, &mh);
    assert!(d.terminate().success(), "exit status after SIGTERM");
    assert_eq!(
        mh.connect(HOST_V4, SMTP),
        REFUSED,
        "guard kept after SIGTERM"
    );
    drop(d);

    let mut d = Daemon::start(&g, mh.cgroup.path(), &["--detach-on-exit"]);
    assert!(d.terminate().success());
    assert_eq!(bpftool::connect_hook_counts(mh.cgroup.path()), (0, 0));
    assert_eq!(
        mh.connect(HOST_V4, SMTP),
        Allowed,
        "guard removed by --detach-on-exit"
    );
}

#[test]
fn a_refusal_is_logged_once_with_pid_comm_address_and_port() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let d = start(&g, &mh);

    let refuse = |addr: &str| -> u32 {
        let mut c = probe::probe_command(Some(&mh.cgroup), &mh.host, &["connect", addr, "25"]);
        c.stdout(std::process::Stdio::piped());
        let child = c.spawn().expect("spawn guard-probe");
        let pid = child.id();
        let out = child.wait_with_output().expect("guard-probe output");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "errno 40 ELOOP"
        );
        pid
    };
    let pid4 = refuse(HOST_V4);
    let line = d.wait_line("refusal log line", |l| {
        l.contains(&format!("refused pid={pid4} "))
    });
    for part in [
        "comm=guard-probe ",
        &format!("dst={HOST_V4}:25"),
        "source=interface",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    assert!(!line.contains('\0'), "NUL padding of comm leaked: {line:?}");

    let pid6 = refuse(HOST_V6);
    let line6 = d.wait_line("IPv6 refusal log line", |l| {
        l.contains(&format!("refused pid={pid6} "))
    });
    assert!(line6.contains(&format!("dst=[{HOST_V6}]:25")), "{line6:?}");
    // Records arrive in order: once the second is there, a duplicate of the first would be too.
    let first: Vec<_> = d
        .lines()
        .into_iter()
        .filter(|l| l.contains(&format!("pid={pid4} ")))
        .collect();
    assert_eq!(first.len(), 1, "one line per refusal: {first:?}");
}

/// `systemd-analyze verify` on the shipped units, with the binary path pointed at the build
/// (verify insists that ExecStart binaries exist) and a stand-in qmail.service for the drop-in.
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dist = std::path::Path::new(root).join("../dist/systemd");
    let service =
        fs::read_to_string(dist.join("qmail-guard.service")).expect("qmail-guard.service");
    let dropin = fs::read_to_string(dist.join("qmail.service.d/qmail-guard.conf"))
        .expect("qmail.service.d/qmail-guard.conf");
    for (text, must) in [
        (&service, "Type=notify"),
        (&service, "Restart=always"),
        (
            &service,
            "ExecStart=/usr/sbin/qmail-guard run --unit qmail.service",
        ),
        (
            &dropin,
            "ExecStartPre=+/usr/sbin/qmail-guard attach --unit %n",
        ),
        (&dropin, "Wants=qmail-guard.service"),
        (&dropin, "After=qmail-guard.service"),
    ] {
        assert!(text.lines().any(|l| l == must), "missing line {must:?}");
    }

    let bin = guard_tests::bins::bin_path("qmail-guard");
    let bin = bin.to_str().expect("UTF-8 path");
    let dir = std::env::temp_dir().join(guard_tests::unique::unique_name());
    fs::create_dir_all(dir.join("qmail.service.d")).unwrap();
    let cleanup = Cleanup(dir.clone());
    let fix = |s: &str| s.replace("/usr/sbin/qmail-guard", bin);
    fs::write(dir.join("qmail-guard.service"), fix(&service)).unwrap();
    fs::write(dir.join("qmail.service.d/qmail-guard.conf"), fix(&dropin)).unwrap();
    fs::write(
        dir.join("qmail.service"),
        "[Unit]\nDescription=stand-in for qmail\n[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    let verify = || {
        let mut c = Command::new("systemd-analyze");
        c.current_dir(&dir)
            .args(["verify", "./qmail-guard.service", "./qmail.service"]);
        cmd::output(&mut c)
    };
    let out = verify();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify rejected the units ({}):\n{stderr}",
        out.status
    );
    // The drop-in really is read: with a missing binary in it, verify fails.
    fs::write(
        dir.join("qmail.service.d/qmail-guard.conf"),
        dropin.replace("/usr/sbin/qmail-guard", "/nonexistent/qmail-guard"),
    )
    .unwrap();
    let out = verify();
    assert!(!out.status.success(), "verify did not read the drop-in");
    drop(cleanup);
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn run_without_port_keeps_the_ports_in_force_also_on_reattach_and_port_replaces_them() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let help = g.run_ok(&["run", "--help"]);
    assert!(
        help.contains("without --port the ports in force are kept"),
        "{help}"
    );
    let out = g.attach_ports(mh.cgroup.path(), &[2525]);
    guard_tests::guard::ensure_success("attach --port 2525", &out);
    let ports = |g: &Guard| g.status_json()["ports"].clone();
    let mut d = start(&g, &mh);
    assert_eq!(ports(&g), serde_json::json!([2525]), "run without --port");
    assert_eq!(mh.connect(HOST_V4, 2525), REFUSED);
    assert_eq!(mh.connect(HOST_V4, SMTP), Allowed, "25 is not guarded");

    // A restarted unit: the daemon attaches to the new cgroup and keeps the ports.
    fs::remove_dir(mh.cgroup.path()).expect("remove the (empty) cgroup");
    fs::create_dir(mh.cgroup.path()).expect("re-create the cgroup");
    eventually("the re-created cgroup to be guarded on 2525", || {
        mh.connect(HOST_V4, 2525) == REFUSED
    });
    assert_eq!(ports(&g), serde_json::json!([2525]), "after the re-attach");
    d.terminate();

    let _d = Daemon::start(&g, mh.cgroup.path(), &["--port", "25", "--port", "587"]);
    assert_eq!(
        ports(&g),
        serde_json::json!([25, 587]),
        "run --port replaces"
    );
    assert_eq!(mh.connect(HOST_V4, SMTP), REFUSED);
    assert_eq!(mh.connect(HOST_V4, 2525), Allowed);
}
