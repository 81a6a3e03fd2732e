//! The loader's contract as seen from outside: pin layout, idempotent attach, detach of one
//! cgroup among several, BTF-named map fields, refusal counters, and `check` agreeing with
//! what the kernel really does. Kernel state is read with bpftool, not through qmail-guard.

use std::os::unix::fs::PermissionsExt;

use guard_common::tag;
use guard_tests::bpftool::{self, LpmEntry};
use guard_tests::probe::ProbeResult;
use guard_tests::scene::{self, *};
use guard_tests::topology::{HOST_V4, HOST_V6, PEER_V4};
use guard_tests::unique::unique_name;
use guard_tests::{Cgroup, Guard, probe};

const SMTP: u16 = 25;

fn link_names(cg: &Cgroup) -> Vec<String> {
    let id = cg.id();
    vec![format!("{id}-connect4"), format!("{id}-connect6")]
}

#[test]
fn attach_pins_the_documented_layout() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    g.attach(&mh.cgroup);

    let mode = std::fs::metadata(g.pin_dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "pin directory mode (docs/pins.md)");
    for rel in [
        "maps/IPME_V4",
        "maps/IPME_V6",
        "maps/PORTS",
        "maps/STATS",
        "progs/connect4",
        "progs/connect6",
    ] {
        assert!(g.pin_dir().join(rel).exists(), "{rel} is not pinned");
    }
    assert_eq!(g.pinned_links(), link_names(&mh.cgroup));
    assert_eq!(bpftool::connect_hook_counts(mh.cgroup.path()), (1, 1));
}

#[test]
fn attach_twice_keeps_one_link_per_hook_and_reuses_the_maps() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    g.attach(&mh.cgroup);
    let ids =
        |g: &Guard| ["IPME_V4", "IPME_V6", "PORTS", "STATS"].map(|m| bpftool::map_id(&g.map(m)));
    let first = ids(&g);

    g.attach(&mh.cgroup);
    assert_eq!(
        bpftool::connect_hook_counts(mh.cgroup.path()),
        (1, 1),
        "programs attached to the cgroup after a second attach"
    );
    assert_eq!(g.pinned_links(), link_names(&mh.cgroup));
    assert_eq!(ids(&g), first, "a second attach replaced pinned maps");
    assert_eq!(mh.connect(MORE_V4_MEMBER, SMTP), g.refused());
}

#[test]
fn detach_of_one_cgroup_keeps_the_other_and_the_last_detach_removes_the_pins() {
    let mh = scene::mail_host();
    let second = Cgroup::new(&unique_name());
    let g = Guard::new(&mh.host);
    g.attach(&mh.cgroup);
    g.attach(&second);
    let mut both = link_names(&mh.cgroup);
    both.extend(link_names(&second));
    both.sort();
    assert_eq!(g.pinned_links(), both);
    let in_second = || probe::connect(Some(&second), &mh.host, "127.0.0.1", SMTP);
    assert_eq!(in_second(), g.refused());

    guard_tests::guard::ensure_success("detach", &g.detach(&mh.cgroup));
    assert_eq!(mh.connect("127.0.0.1", SMTP), ProbeResult::Ok);
    assert_eq!(in_second(), g.refused(), "the other cgroup lost its guard");
    assert_eq!(g.pinned_links(), link_names(&second));
    assert!(
        g.map("IPME_V4").exists(),
        "maps unpinned while still in use"
    );

    guard_tests::guard::ensure_success("detach", &g.detach(&second));
    assert_eq!(in_second(), ProbeResult::Ok);
    assert_eq!(bpftool::connect_hook_counts(second.path()), (0, 0));
    assert!(
        !g.map("IPME_V4").exists() && !g.pin_dir().join("progs/connect4").exists(),
        "maps or programs still pinned after the last detach"
    );
}

#[test]
fn map_dump_shows_named_fields_with_each_entrys_source() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    g.attach(&mh.cgroup);

    // lpm_entries panics unless every entry has BTF-formatted key and value fields.
    let v4 = bpftool::lpm_entries(&bpftool::map_dump(&g.map("IPME_V4")));
    let v6 = bpftool::lpm_entries(&bpftool::map_dump(&g.map("IPME_V6")));
    let has = |set: &[LpmEntry], len: u32, data: &[u8], want: u32| {
        let hit = set.iter().find(|e| e.prefix_len == len && e.data == data);
        assert_eq!(
            hit.map(|e| tag::name(e.tag)),
            Some(tag::name(want)),
            "entry {data:?}/{len} in {set:?}"
        );
    };
    has(&v4, 24, &[203, 0, 113, 0], tag::MOREIPME);
    has(&v4, 32, &[198, 51, 100, 50], tag::MOREIPME);
    has(&v4, 32, &[203, 0, 113, 9], tag::NOT_ME);
    has(&v4, 8, &[127, 0, 0, 0], tag::BUILTIN);
    has(&v4, 32, &[192, 0, 2, 10], tag::INTERFACE);
    let v6_addr = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    has(&v6, 48, &v6_addr("2001:db8:1::"), tag::MOREIPME);
    has(&v6, 128, &v6_addr(NOTIPME_V6), tag::NOT_ME);
    has(&v6, 128, &v6_addr("::1"), tag::BUILTIN);
    has(&v6, 128, &v6_addr(HOST_V6), tag::INTERFACE);
}

/// `status --json`'s (refused_v4, refused_v6).
fn refused(g: &Guard) -> (u64, u64) {
    let s = g.status_json();
    let n = |k: &str| {
        s[k].as_u64()
            .unwrap_or_else(|| panic!("status --json has no number {k}: {s}"))
    };
    (n("refused_v4"), n("refused_v6"))
}

/// The same counters summed over CPUs straight from the pinned STATS map.
fn refused_in_map(g: &Guard) -> (u64, u64) {
    let d = bpftool::map_dump(&g.map("STATS"));
    (
        bpftool::percpu_sum(&d, "refused_v4"),
        bpftool::percpu_sum(&d, "refused_v6"),
    )
}

#[test]
fn counters_grow_with_refusals_only() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    g.attach(&mh.cgroup);
    let (v4, v6) = refused(&g);

    // Allowed connects and connects from outside the cgroup count nothing.
    assert_eq!(mh.connect(OTHER_V4, SMTP), ProbeResult::Ok);
    assert_eq!(mh.connect(OTHER_V6, SMTP), ProbeResult::Ok);
    assert_eq!(mh.connect("127.0.0.1", 2525), ProbeResult::Ok);
    assert_eq!(mh.connect_outside("127.0.0.1", SMTP), ProbeResult::Ok);
    assert_eq!(refused(&g), (v4, v6), "counters moved without a refusal");

    for a in ["127.0.0.1", HOST_V4, MORE_V4_MEMBER] {
        assert_eq!(mh.connect(a, SMTP), g.refused(), "{a}");
    }
    for a in ["::1", MORE_V6_MEMBER] {
        assert_eq!(mh.connect(a, SMTP), g.refused(), "{a}");
    }
    assert_eq!(
        refused(&g),
        (v4 + 3, v6 + 2),
        "status --json after 3 v4 + 2 v6 refusals"
    );
    assert_eq!(
        refused_in_map(&g),
        (v4 + 3, v6 + 2),
        "bpftool dump of STATS"
    );
}

#[test]
fn check_agrees_with_the_kernel() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    g.attach(&mh.cgroup);

    let mapped = format!("::ffff:{MORE_V4_MEMBER}");
    let mut addrs: Vec<&str> = ALWAYS_ME.to_vec();
    addrs.extend(REMOTE);
    addrs.extend([HOST_V4, HOST_V6, PEER_V4, &mapped]);
    let mut disagreements = Vec::new();
    let mut kernel_refused = 0;
    for port in [SMTP, 2525] {
        for &a in &addrs {
            let kernel = mh.connect(a, port);
            kernel_refused += usize::from(kernel == g.refused());
            assert!(
                kernel == ProbeResult::Ok || kernel == g.refused(),
                "[{a}]:{port}: neither connected nor refused: {kernel:?}"
            );
            let (verdict, out) = g.check(a, port);
            let verdict = verdict.unwrap_or_else(|| {
                panic!(
                    "check {a} {port} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            });
            if verdict != (kernel == g.refused()) {
                disagreements.push(format!(
                    "[{a}]:{port}: check refused={verdict}, kernel {kernel:?}"
                ));
            }
        }
    }
    // Both verdicts occurred, so agreement is not trivially "everything allowed".
    assert!(kernel_refused > 0 && kernel_refused < 2 * addrs.len());
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

/// Under `ip netns exec` (which mounts a fresh /sys) the cgroup exists but cannot be seen: the
/// error must say so, on one line, instead of claiming the cgroup does not exist.
#[test]
fn attach_under_ip_netns_exec_names_the_cause() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let qmail_guard = guard_tests::bins::bin_path("qmail-guard");
    let out = mh.host.run(&[
        qmail_guard.to_str().unwrap(),
        "attach",
        "--cgroup",
        mh.cgroup.path().to_str().unwrap(),
        "--pin-dir",
        g.pin_dir().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("ip netns exec") && !stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(!g.pin_dir().exists(), "nothing may be pinned: {stderr}");
}

/// qmail running in its own network namespace: attach still guards the cgroup, but warns that
/// the set was computed from another namespace's interfaces and routes.
#[test]
fn attach_warns_when_the_cgroup_lives_in_another_network_namespace() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let other = guard_tests::Netns::new(&unique_name());
    let mut member = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}; exec ip netns exec {} sleep 30",
            mh.cgroup.path().join("cgroup.procs").display(),
            other.name()
        ))
        .spawn()
        .unwrap();
    // Wait until the member has entered the other namespace.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let own = std::fs::metadata("/proc/self/ns/net").unwrap();
    use std::os::unix::fs::MetadataExt as _;
    while mh
        .cgroup
        .pids()
        .iter()
        .all(|p| std::fs::metadata(format!("/proc/{p}/ns/net")).is_ok_and(|m| m.ino() == own.ino()))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "member never entered {}",
            other.name()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = g.attach_ports(mh.cgroup.path(), &[]);
    let _ = member.kill();
    let _ = member.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("lives in another network namespace"),
        "no warning: {stderr}"
    );
    assert_eq!(bpftool::connect_hook_counts(mh.cgroup.path()), (1, 1));
}

/// `status --json` prints one JSON document in every case: not attached, attached, and on an
/// error, so a monitoring script never has to parse anything else.
#[test]
fn status_json_is_one_document_attached_or_not_or_failing() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);

    let before = g.status_json();
    assert_eq!(before["attached"], false, "before attach: {before}");
    assert!(
        before["error"].is_null(),
        "not attached is no error: {before}"
    );

    g.attach(&mh.cgroup);
    let after = g.status_json();
    assert_eq!(after["attached"], true, "after attach: {after}");
    assert!(after["error"].is_null(), "{after}");
    assert_eq!(
        after["attachments"].as_array().map(Vec::len),
        Some(2),
        "{after}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let since = after["attached_since_unix_time"]
        .as_u64()
        .unwrap_or_else(|| panic!("no attached_since_unix_time: {after}"));
    assert!(
        since <= now && now - since < 600,
        "attached since {since}, now {now}"
    );
    for hook in ["connect4", "connect6"] {
        let pinned = g.pin_dir().join("progs").join(hook);
        assert_eq!(
            after["program_tags"][hook].as_str(),
            Some(bpftool::prog_tag(&pinned).as_str()),
            "{hook}'s tag against bpftool: {after}"
        );
    }
    assert_eq!(after["program_matches_binary"], true, "{after}");
    let text = g.run_ok(&["status"]);
    assert!(
        text.contains("attached since: ") && text.contains("variant; this binary's programs)"),
        "{text}"
    );

    // A pin directory below a regular file cannot even be examined: still one document.
    g.write_control("not-a-dir", "");
    let bad = g.home().join("control/not-a-dir/pins");
    let out = guard_tests::cmd::output(
        std::process::Command::new(guard_tests::bins::bin_path("qmail-guard"))
            .args(["status", "--json", "--pin-dir"])
            .arg(&bad),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("status --json on an error printed invalid JSON ({e}): {stdout}")
    });
    assert_eq!(out.status.code(), Some(1), "{doc}");
    assert_eq!(doc["attached"], false, "{doc}");
    let err = doc["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error text: {doc}"));
    assert!(err.contains("not-a-dir"), "the error names the path: {err}");
}
