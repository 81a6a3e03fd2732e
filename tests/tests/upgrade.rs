//! A new qmail-guard binary whose programs differ replaces the running ones in place: `attach`
//! with it switches every guarded cgroup's link to the new programs (BPF_LINK_UPDATE) while a
//! connect loop to a "me" address runs, which is never let through, and a "not me" address is
//! never refused; afterwards the cgroup runs the new programs only, the maps are the same maps
//! with the same set, and `status` of each binary says whether the running programs are its
//! own. A running daemon keeps logging refusals after another process upgraded the programs.
//!
//! The second build is `<bin dir>/upgrade-variant/qmail-guard` (`cargo xtask test` builds it
//! with the `upgrade-test-variant` feature: the same code, programs that differ by a no-op).

use std::path::Path;
use std::time::Duration;

use guard_tests::bpftool;
use guard_tests::cmd;
use guard_tests::connect_loop::ConnectLoop;
use guard_tests::daemon::{Daemon, eventually};
use guard_tests::{Guard, MailHost, bins};
use serde_json::Value;

const ME: &str = "198.51.100.25";
const OTHER: &str = "203.0.113.50";
const SMTP: u16 = 25;
/// Maps that must survive an upgrade (same kernel object, same contents).
const KEPT_MAPS: [&str; 7] = [
    "IPME_GEN",
    "IPME_V4",
    "IPME_V4_STANDBY",
    "IPME_V6",
    "IPME_V6_STANDBY",
    "PORTS",
    "STATS",
];

/// What must not change when only the programs are replaced.
#[derive(Debug, PartialEq)]
struct Kept {
    map_ids: Vec<u64>,
    generation: Value,
    ports: Value,
    v4: Value,
    v6: Value,
}

fn kept(g: &Guard) -> Kept {
    let st = g.status_json();
    Kept {
        map_ids: KEPT_MAPS
            .iter()
            .map(|m| bpftool::map_id(&g.map(m)))
            .collect(),
        generation: st["generation"].clone(),
        ports: st["ports"].clone(),
        v4: bpftool::map_dump(&g.map("IPME_V4")),
        v6: bpftool::map_dump(&g.map("IPME_V6")),
    }
}

/// `status --json` of the given build.
fn status_of(g: &Guard, bin: &Path) -> Value {
    let out = cmd::run_ok(&mut g.command_with(bin, &["status", "--json"]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
}

/// `attach` with the given build; returns its stdout.
fn attach_with(g: &Guard, bin: &Path, cgroup: &Path) -> String {
    let cg = cgroup.to_str().expect("UTF-8 cgroup path");
    let home = g.home().to_str().expect("UTF-8 home");
    cmd::run_ok(&mut g.command_with(bin, &["attach", "--cgroup", cg, "--qmail-home", home]))
}

/// The cgroup runs exactly one program per connect hook, each is the pinned one, and its tag
/// is what `bin`'s status reports as that binary's own. Returns the connect4 tag.
fn runs_only_programs_of(g: &Guard, bin: &Path, cgroup: &Path) -> String {
    let (v4, v6) = bpftool::connect_hook_programs(cgroup);
    assert!(
        v4.len() == 1 && v6.len() == 1,
        "bpftool cgroup show must list one program per connect hook: {v4:?} {v6:?}"
    );
    let st = status_of(g, bin);
    assert_eq!(
        st["program_matches_binary"],
        Value::Bool(true),
        "status of {} after its attach: {st:#}",
        bin.display()
    );
    for (hook, id) in [("connect4", v4[0]), ("connect6", v6[0])] {
        let pinned = bpftool::prog_id_tag(&g.pin_dir().join("progs").join(hook));
        let tag = bpftool::prog_tag_by_id(id);
        assert_eq!(pinned, (id, tag.clone()), "{hook}: attached vs pinned");
        assert_eq!(
            st["binary_program_tags"][hook].as_str(),
            Some(tag.as_str()),
            "{hook}: the attached program is not {}'s own: {st:#}",
            bin.display()
        );
    }
    bpftool::prog_tag_by_id(v4[0])
}

#[test]
fn attach_with_a_different_build_replaces_the_programs_without_a_gap() {
    let normal = bins::bin_path("qmail-guard");
    let variant = bins::variant_path();
    let mh = MailHost::new(&[ME, OTHER]);
    let g = Guard::new(&mh.host);
    g.write_control("moreipme", &format!("{ME}\n"));
    let out = g.attach_ports(mh.cgroup.path(), &[25, 2525]);
    guard_tests::guard::ensure_success("attach", &out);
    let old_tag = runs_only_programs_of(&g, &normal, mh.cgroup.path());
    let before = kept(&g);

    for (bin, other, what) in [
        (&variant, &normal, "upgrade to the variant"),
        (&normal, &variant, "back to the first build"),
    ] {
        let lp = ConnectLoop::start(&mh.cgroup, &mh.host, ME, OTHER, SMTP);
        let out = attach_with(&g, bin, mh.cgroup.path());
        // Keep connecting for a moment on the new programs too.
        std::thread::sleep(Duration::from_millis(200));
        let c = lp.finish();
        eprintln!("{what}: {c:?}");
        assert!(
            out.contains("replaced the running programs in place") && out.contains("2 link(s)"),
            "{what}: attach did not report the in-place replacement: {out}"
        );
        c.assert_guarded(what);
        let tag = runs_only_programs_of(&g, bin, mh.cgroup.path());
        assert_eq!(
            tag == old_tag,
            bin == &normal,
            "{what}: tag {tag}, first build {old_tag}"
        );
        let st = status_of(&g, other);
        assert_eq!(
            st["program_matches_binary"],
            Value::Bool(false),
            "{what}: status of the other build must say the programs are not its own: {st:#}"
        );
        assert_eq!(
            kept(&g),
            before,
            "{what}: maps, generation, ports or set changed"
        );
        assert_eq!(g.pinned_links().len(), 2, "links: {:?}", g.pinned_links());
    }
    // The same build again: nothing to replace.
    let out = attach_with(&g, &normal, mh.cgroup.path());
    assert!(
        !out.contains("replaced"),
        "a second attach replaced programs: {out}"
    );
}

#[test]
fn a_running_daemon_keeps_logging_refusals_after_another_process_upgrades() {
    let variant = bins::variant_path();
    let mh = MailHost::new(&[ME, OTHER]);
    let g = Guard::new(&mh.host);
    g.write_control("moreipme", &format!("{ME}\n"));
    let d = Daemon::start(&g, mh.cgroup.path(), &["--log-rate", "1000"]);
    let refused_lines = |d: &Daemon| {
        d.lines()
            .iter()
            .filter(|l| l.contains("refused") && l.contains(&format!("dst={ME}:25")))
            .count()
    };
    let counted = |g: &Guard| g.status_json()["refused_v4"].as_u64().expect("refused_v4");
    assert_eq!(mh.connect(ME, SMTP), guard_tests::ProbeResult::REFUSED);
    eventually("the daemon logs the first refusal", || {
        refused_lines(&d) == 1
    });

    let out = attach_with(&g, &variant, mh.cgroup.path());
    assert!(
        out.contains("replaced the running programs in place"),
        "{out}"
    );
    let before = counted(&g);
    for _ in 0..3 {
        assert_eq!(mh.connect(ME, SMTP), guard_tests::ProbeResult::REFUSED);
    }
    eventually(
        "the daemon logs the refusals made by the new programs",
        || refused_lines(&d) == 4,
    );
    assert_eq!(
        counted(&g),
        before + 3,
        "STATS kept counting across the upgrade"
    );
    d.assert_running("after the upgrade");
    assert_eq!(
        status_of(&g, &variant)["program_matches_binary"],
        Value::Bool(true)
    );
}

/// The maps an earlier release pinned: one trie per family, no generation.
const OLD_LAYOUT_MAPS: [&str; 4] = ["IPME_V4", "IPME_V6", "PORTS", "STATS"];

#[test]
fn pins_of_the_single_trie_layout_are_migrated_without_a_gap() {
    let normal = bins::bin_path("qmail-guard");
    let variant = bins::variant_path();
    let mh = MailHost::new(&[ME, OTHER]);
    let g = Guard::new(&mh.host);
    g.write_control("moreipme", &format!("{ME}\n"));
    // The layout of a release before generations, made from the variant's pins: its programs
    // keep running (they hold their generation map), but only the four old names are pinned.
    attach_with(&g, &variant, mh.cgroup.path());
    let old_tag = runs_only_programs_of(&g, &variant, mh.cgroup.path());
    let maps_dir = g.pin_dir().join("maps");
    for e in std::fs::read_dir(&maps_dir).expect("maps dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !OLD_LAYOUT_MAPS.contains(&name.as_str()) {
            std::fs::remove_file(e.path()).expect("unpin a map of the new layout");
        }
    }
    let kept_ids: Vec<u64> = ["PORTS", "STATS"]
        .iter()
        .map(|m| bpftool::map_id(&g.map(m)))
        .collect();
    let set_v4 = bpftool::lpm_entries(&bpftool::map_dump(&g.map("IPME_V4")));

    let lp = ConnectLoop::start(&mh.cgroup, &mh.host, ME, OTHER, SMTP);
    let out = attach_with(&g, &normal, mh.cgroup.path());
    std::thread::sleep(Duration::from_millis(200));
    let c = lp.finish();
    eprintln!("migration: {c:?}");
    assert!(
        out.contains("replaced the running programs in place")
            && out.contains("maps migrated to generations"),
        "attach did not report the migration: {out}"
    );
    c.assert_guarded("migration");
    let tag = runs_only_programs_of(&g, &normal, mh.cgroup.path());
    assert_ne!(tag, old_tag);
    for m in KEPT_MAPS {
        assert!(g.map(m).exists(), "{m} is not pinned after the migration");
    }
    let ids: Vec<u64> = ["PORTS", "STATS"]
        .iter()
        .map(|m| bpftool::map_id(&g.map(m)))
        .collect();
    assert_eq!(ids, kept_ids, "PORTS and STATS carry over");
    let mut now = bpftool::lpm_entries(&bpftool::map_dump(&g.map("IPME_V4")));
    let mut was = set_v4;
    now.sort_by(|a, b| (a.prefix_len, &a.data).cmp(&(b.prefix_len, &b.data)));
    was.sort_by(|a, b| (a.prefix_len, &a.data).cmp(&(b.prefix_len, &b.data)));
    assert_eq!(now, was, "the set in force after the migration");
    // The migrated pins are the current layout: a sync works on them.
    guard_tests::guard::ensure_success("sync", &g.sync());
    assert_eq!(mh.connect(ME, SMTP), guard_tests::ProbeResult::REFUSED);
}
