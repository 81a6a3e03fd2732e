//! Kernel enforcement: which connects the attached guard refuses with ELOOP (EPERM on kernels
//! without bpf_set_retval for cgroup programs) and which it lets through. Every test builds its
//! own netns pair + cgroup (`MailHost`) and first shows that its targets connect without the
//! guard, so each refusal is the guard's doing.

use guard_tests::probe::ProbeResult::{self, Ok as Allowed};
use guard_tests::scene::{self, *};
use guard_tests::topology::{HOST_V4, HOST_V6, PEER_V4, PEER_V6};
use guard_tests::{Guard, MailHost};

const SMTP: u16 = 25;
const UNGUARDED: u16 = 2525;

fn with_port(addrs: &[&'static str], port: u16) -> Vec<(&'static str, u16)> {
    addrs.iter().map(|&a| (a, port)).collect()
}

/// `uname -r` as (major, minor).
fn kernel_version() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("read osrelease");
    let mut n = r
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|x| x.parse::<u32>().expect("numeric kernel version"));
    (n.next().unwrap_or(0), n.next().unwrap_or(0))
}

#[test]
fn the_loader_refuses_with_eloop_wherever_the_kernel_allows_it() {
    // bpf_set_retval became callable from cgroup sock_addr programs in 5.18: from there on the
    // EPERM fallback would be a silent downgrade (qmail-remote defers instead of bouncing).
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    g.attach(&mh.cgroup);
    let want = if kernel_version() >= (5, 18) {
        (libc::ELOOP, "ELOOP")
    } else {
        (libc::EPERM, "EPERM")
    };
    assert_eq!(
        g.refused(),
        ProbeResult::Errno(want.0),
        "kernel {:?}",
        kernel_version()
    );
    let status = g.status_json();
    assert_eq!(status["refusal"], want.1, "{status}");
    // The binary compares the pinned programs with the variant it loads on this kernel: the
    // same variant, so the same tags.
    assert_eq!(status["binary_refusal"], want.1, "{status}");
    assert_eq!(status["program_matches_binary"], true, "{status}");
    let text = g.run_ok(&["status"]);
    assert!(
        text.contains(&format!("refusal:       {}", want.1))
            && text.contains(&format!("({} variant; this binary's programs)", want.1)),
        "status does not say how it refuses:\n{text}"
    );
    assert_eq!(mh.connect("127.0.0.1", SMTP), ProbeResult::Errno(want.0));

    // A second attach of the same binary finds its own programs of that variant running and
    // replaces nothing (on 5.10 it must not try to "upgrade" to the ELOOP programs).
    let prog_ids = |g: &Guard| {
        let st = g.status_json();
        let ids: Vec<_> = st["attachments"]
            .as_array()
            .unwrap_or_else(|| panic!("no attachments: {st}"))
            .iter()
            .map(|a| a["program_id"].as_u64())
            .collect();
        (ids, st["program_tags"].clone())
    };
    let before = prog_ids(&g);
    let out = g.attach_ports(mh.cgroup.path(), &[]);
    guard_tests::guard::ensure_success("attach", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("replaced the running programs")
            && stdout.contains(&format!("refusing with {}", want.1)),
        "second attach:\n{stdout}"
    );
    assert_eq!(
        prog_ids(&g),
        before,
        "a second attach replaced the programs"
    );
    assert_eq!(mh.connect("127.0.0.1", SMTP), ProbeResult::Errno(want.0));
}

#[test]
fn loopback_and_wildcard_destinations_are_refused() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    mh.assert_all_connect(&with_port(&ALWAYS_ME, SMTP), "before attach");

    g.attach(&mh.cgroup);
    let expected: Vec<_> = ALWAYS_ME.iter().map(|&a| (a, SMTP, g.refused())).collect();
    mh.assert_connects(&expected, "after attach, built-in destinations on port 25");
}

#[test]
fn interface_addresses_of_the_netns_are_refused() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let mapped = format!("::ffff:{HOST_V4}");
    mh.assert_all_connect(
        &[(HOST_V4, SMTP), (HOST_V6, SMTP), (&mapped, SMTP)],
        "before attach",
    );

    g.attach(&mh.cgroup);
    mh.assert_connects(
        &[
            (HOST_V4, SMTP, g.refused()),
            (HOST_V6, SMTP, g.refused()),
            // connect6 must look v4-mapped destinations up in the v4 trie.
            (&mapped, SMTP, g.refused()),
            // The neighbour on the same link is not me.
            (PEER_V4, SMTP, Allowed),
            (PEER_V6, SMTP, Allowed),
        ],
        "after attach, interface addresses",
    );
}

#[test]
fn moreipme_entries_are_refused_and_notipme_exceptions_allowed() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    mh.assert_all_connect(&with_port(&REMOTE, SMTP), "before attach");

    g.attach(&mh.cgroup);
    let mapped_member = format!("::ffff:{MORE_V4_MEMBER}");
    let mapped_exception = format!("::ffff:{NOTIPME_V4}");
    mh.assert_connects(
        &[
            (MORE_SINGLE, SMTP, g.refused()),
            // The last line has no newline; it must not lose its last digit as in 0.6.
            (MORE_SINGLE_TRUNCATED, SMTP, Allowed),
            (MORE_V4_MEMBER, SMTP, g.refused()),
            (&mapped_member, SMTP, g.refused()),
            (NOTIPME_V4, SMTP, Allowed),
            (&mapped_exception, SMTP, Allowed),
            (MORE_V6_MEMBER, SMTP, g.refused()),
            (NOTIPME_V6, SMTP, Allowed),
            (OTHER_V4, SMTP, Allowed),
            (OTHER_V6, SMTP, Allowed),
        ],
        "after attach, moreipme/notipme",
    );
}

#[test]
fn unguarded_ports_are_allowed() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    g.attach(&mh.cgroup);
    // Same destinations, two ports: only the guarded one is refused.
    let mut expected = Vec::new();
    for addr in [
        "127.0.0.1",
        "::1",
        HOST_V4,
        HOST_V6,
        MORE_V4_MEMBER,
        MORE_V6_MEMBER,
    ] {
        expected.push((addr, SMTP, g.refused()));
        expected.push((addr, UNGUARDED, Allowed));
    }
    mh.assert_connects(&expected, "after attach, port 25 vs 2525");
}

#[test]
fn port_option_chooses_the_guarded_ports() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    let out = g.attach_ports(mh.cgroup.path(), &[2526]);
    guard_tests::guard::ensure_success("attach --port 2526", &out);
    mh.assert_connects(
        &[
            ("127.0.0.1", 2526, g.refused()),
            (MORE_V6_MEMBER, 2526, g.refused()),
            ("127.0.0.1", UNGUARDED, Allowed),
            (MORE_V6_MEMBER, UNGUARDED, Allowed),
        ],
        "after attach --port 2526",
    );
}

#[test]
fn processes_outside_the_cgroup_are_not_guarded() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    g.attach(&mh.cgroup);
    for addr in ["127.0.0.1", "::1", HOST_V4, MORE_V4_MEMBER, MORE_V6_MEMBER] {
        // Contrast: refused inside, allowed outside, same netns, same moment.
        assert_eq!(
            mh.connect(addr, SMTP),
            g.refused(),
            "inside the cgroup: {addr}"
        );
        assert_eq!(
            mh.connect_outside(addr, SMTP),
            Allowed,
            "outside the cgroup: {addr}"
        );
    }
}

#[test]
fn tcp_fast_open_is_refused() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    // Bit 0 of net.ipv4.tcp_fastopen enables the client side (sendto with MSG_FASTOPEN).
    let tfo: u32 = mh.host.sysctl_get("net.ipv4.tcp_fastopen").parse().unwrap();
    mh.host
        .sysctl("net.ipv4.tcp_fastopen", &(tfo | 1).to_string());
    let targets = ["127.0.0.1", "::1", HOST_V4, MORE_V4_MEMBER, MORE_V6_MEMBER];
    for addr in targets.iter().chain([&OTHER_V4]) {
        assert_eq!(
            mh.probe("tfo", addr, SMTP),
            Allowed,
            "TFO before attach: {addr}"
        );
    }

    g.attach(&mh.cgroup);
    for addr in targets {
        assert_eq!(
            mh.probe("tfo", addr, SMTP),
            g.refused(),
            "TFO after attach: {addr}"
        );
    }
    assert_eq!(
        mh.probe("tfo", OTHER_V4, SMTP),
        Allowed,
        "TFO to a stranger"
    );
}

#[test]
fn child_processes_are_refused() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    g.attach(&mh.cgroup);
    for addr in ["127.0.0.1", "::1", HOST_V6, MORE_V4_MEMBER, MORE_V6_MEMBER] {
        assert_eq!(mh.probe("child-connect", addr, SMTP), g.refused(), "{addr}");
    }
    for addr in [OTHER_V4, OTHER_V6, NOTIPME_V6] {
        assert_eq!(mh.probe("child-connect", addr, SMTP), Allowed, "{addr}");
    }
}

#[test]
fn loader_exit_leaves_the_guard_in_force() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    let mut c = g.command(&[
        "attach",
        "--cgroup",
        mh.cgroup.path().to_str().unwrap(),
        "--qmail-home",
        g.home().to_str().unwrap(),
    ]);
    let child = c.spawn().expect("start qmail-guard attach");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    guard_tests::guard::ensure_success("attach", &out);
    // The loader is gone (exited and reaped): nothing of it is left to hold the programs.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "qmail-guard attach (pid {pid}) is still running"
    );
    mh.assert_connects(
        &[
            ("127.0.0.1", SMTP, g.refused()),
            (HOST_V4, SMTP, g.refused()),
            (MORE_V6_MEMBER, SMTP, g.refused()),
            (OTHER_V4, SMTP, Allowed),
        ],
        "after the loader exited",
    );
}

#[test]
fn detach_allows_everything_again() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    g.attach(&mh.cgroup);
    let me: Vec<&str> = ALWAYS_ME
        .iter()
        .copied()
        .chain([
            HOST_V4,
            HOST_V6,
            MORE_SINGLE,
            MORE_V4_MEMBER,
            MORE_V6_MEMBER,
        ])
        .collect();
    let refused: Vec<_> = me.iter().map(|&a| (a, SMTP, g.refused())).collect();
    mh.assert_connects(&refused, "after attach");

    let out = g.detach(&mh.cgroup);
    guard_tests::guard::ensure_success("detach", &out);
    mh.assert_all_connect(&with_port(&me, SMTP), "after detach");
}

#[test]
fn longest_prefix_wins_and_notipme_wins_ties() {
    // docs/architecture.md: the longest matching prefix decides; on the same prefix notipme wins.
    let mh = MailHost::new(&[
        "203.0.113.7",
        "203.0.113.100",
        "203.0.113.200",
        "198.51.100.7",
        "198.51.100.50",
    ]);
    let g = Guard::new(&mh.host);
    g.write_control("moreipme", "203.0.113.0/24\n198.51.100.50\n203.0.113.7\n");
    g.write_control(
        "notipme",
        "203.0.113.128/25\n198.51.100.0/24\n203.0.113.7\n192.0.2.10\n",
    );
    g.attach(&mh.cgroup);
    mh.assert_connects(
        &[
            ("203.0.113.100", SMTP, g.refused()), // moreipme /24 only
            ("203.0.113.200", SMTP, Allowed),     // notipme /25 is longer than moreipme /24
            ("203.0.113.7", SMTP, Allowed),       // /32 in both files: notipme wins the tie
            ("198.51.100.50", SMTP, g.refused()), // moreipme /32 inside notipme /24
            ("198.51.100.7", SMTP, Allowed),      // notipme /24 only
            (HOST_V4, SMTP, Allowed),             // interface /32 vs notipme /32: a tie too
            (HOST_V6, SMTP, g.refused()),         // the other interface address is untouched
        ],
        "after attach, overlapping moreipme/notipme",
    );
}

#[test]
fn local_route_prefixes_are_refused() {
    // `ip route add local PREFIX dev lo` makes every address of PREFIX this host's own
    // (AnyIP) although no interface holds them: a connect there reaches our own listener.
    let mh = scene::mail_host();
    mh.host
        .ip(&["route", "add", "local", "198.51.100.64/26", "dev", "lo"]);
    mh.host.ip(&[
        "-6",
        "route",
        "add",
        "local",
        "2001:db8:3::/64",
        "dev",
        "lo",
    ]);
    let g = Guard::new(&mh.host);
    let targets = ["198.51.100.70", "198.51.100.127", "2001:db8:3::25"];
    mh.assert_all_connect(&with_port(&targets, SMTP), "before attach");
    assert!(
        mh.host_listener
            .wait_accepted(|a| a.local == "198.51.100.70:25")
            .is_some(),
        "the local-route address was not answered by the mail host itself"
    );

    g.attach(&mh.cgroup);
    let mut expected: Vec<_> = targets.iter().map(|&a| (a, SMTP, g.refused())).collect();
    // Just outside the local prefix: an ordinary remote (the peer has it).
    expected.push((OTHER_V4, SMTP, Allowed));
    mh.assert_connects(&expected, "after attach, local routes");
}
