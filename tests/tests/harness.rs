//! Self-tests of the harness (no qmail-guard involved): a probe really lands in the cgroup and
//! the netns it is given, the scene's targets all connect without a guard, and every fixture
//! cleans up after itself. If these fail, a guard test's verdict would mean nothing.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use guard_tests::netns::Netns;
use guard_tests::probe::{self, ProbeResult};
use guard_tests::topology::{self, HOST_V4, HOST_V6, PEER_V4, PEER_V6};
use guard_tests::unique::unique_name;
use guard_tests::{Cgroup, Listener, MailHost, nsenter};

const REMOTE_V4: &str = "203.0.113.70";
const REMOTE_V6: &str = "2001:db8:1::70";

#[test]
fn probe_joins_the_cgroup_and_the_netns() {
    let ns = Netns::new(&unique_name());
    let cg = Cgroup::new(&unique_name());
    let ns_inode = std::fs::metadata(ns.path()).unwrap().ino();

    let inside = probe::whereabouts(Some(&cg), &ns);
    assert_eq!(inside.cgroup, cg.proc_path());
    assert_eq!(inside.netns_inode, ns_inode);

    // Without a cgroup the probe stays in ours, which is not the test cgroup.
    let outside = probe::whereabouts(None, &ns);
    assert_ne!(outside.cgroup, cg.proc_path());
    assert_eq!(outside.netns_inode, ns_inode);
}

#[test]
fn connect_reaches_a_listener_and_reports_errnos() {
    let ns = Netns::new(&unique_name());
    let cg = Cgroup::new(&unique_name());
    let l = Listener::new(&ns, "127.0.0.1", &[25]);

    assert_eq!(
        probe::connect(Some(&cg), &ns, "127.0.0.1", 25),
        ProbeResult::Ok
    );
    assert!(
        l.wait_accepted(|a| a.local == "127.0.0.1:25").is_some(),
        "the listener did not log the connection: {:?}",
        l.accepted()
    );
    // No listener on 2525: a real errno comes back, with its number.
    assert_eq!(
        probe::connect(Some(&cg), &ns, "127.0.0.1", 2525),
        ProbeResult::Errno(libc::ECONNREFUSED)
    );
    // Listening on 127.0.0.1 only: ::1 is refused by the stack, proving the port is per-address.
    assert_eq!(
        probe::connect(Some(&cg), &ns, "::1", 25),
        ProbeResult::Errno(libc::ECONNREFUSED)
    );
}

#[test]
fn mailhost_scene_connects_everywhere_without_a_guard() {
    let mh = MailHost::new(&[REMOTE_V4, REMOTE_V6]);
    let mut targets = Vec::new();
    for addr in [
        "127.0.0.1",
        "127.0.0.2",
        "0.0.0.0",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        HOST_V4,
        HOST_V6,
        PEER_V4,
        PEER_V6,
        REMOTE_V4,
        REMOTE_V6,
        "::ffff:203.0.113.70",
    ] {
        for port in topology::LISTEN_PORTS {
            targets.push((addr, port));
        }
    }
    mh.assert_all_connect(&targets, "without a guard");

    // Remote targets are answered by the peer's listener, not the mail host's.
    assert!(
        mh.peer_listener
            .wait_accepted(|a| a.local == format!("{REMOTE_V4}:25"))
            .is_some()
    );
    assert!(
        mh.host_listener
            .wait_accepted(|a| a.local == format!("{HOST_V4}:25"))
            .is_some()
    );

    for kind in ["child-connect", "tfo"] {
        for addr in ["127.0.0.1", "::1", REMOTE_V4, REMOTE_V6] {
            assert_eq!(mh.probe(kind, addr, 25), ProbeResult::Ok, "{kind} {addr}");
        }
    }
}

#[test]
fn cgroup_drop_moves_leftover_processes_and_removes_the_directory() {
    let ns = Netns::new(&unique_name());
    let cg = Cgroup::new(&unique_name());
    let path = cg.path().to_path_buf();
    let mut c = Command::new("sleep");
    c.arg("30").stdout(Stdio::null());
    nsenter::enter(&mut c, Some(cg.path()), &ns.path());
    let mut child = c.spawn().unwrap();
    let pid = child.id();
    assert_eq!(cg.pids(), vec![pid]);

    drop(cg);
    let gone = !path.exists();
    // The process survived the cgroup's removal (it was moved, not killed).
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(gone, "cgroup {} still exists", path.display());
    assert!(alive, "the leftover process was killed instead of moved");
}

#[test]
fn netns_drop_deletes_the_namespace() {
    let ns = Netns::new(&unique_name());
    let path = ns.path();
    assert!(path.exists());
    drop(ns);
    // `ip netns del` unmounts and removes the bind mount synchronously.
    std::thread::sleep(Duration::from_millis(10));
    assert!(!path.exists(), "{} still exists", path.display());
}
