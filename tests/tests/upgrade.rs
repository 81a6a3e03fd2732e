//! A new qmail-guard binary whose programs differ replaces the running ones in place: `attach`
//! with it switches every guarded cgroup's link to the new programs (BPF_LINK_UPDATE) while a
//! connect loop to a "me" address runs, which is never let through; afterwards the cgroup runs
//! the new programs only, and `status` of each binary says whether the running ones are its own.
//!
//! The second build is qmail-guard-variant (`cargo xtask test` builds it with the
//! `upgrade-test-variant` feature: the same code, programs that differ by a no-op).

use guard_tests::bins;
use guard_tests::bpftool;
use guard_tests::cmd;
use guard_tests::connect_loop::ConnectLoop;
use guard_tests::{Guard, MailHost};

const ME: &str = "198.51.100.25";
const OTHER: &str = "203.0.113.50";
const SMTP: u16 = 25;

#[test]
fn attach_with_a_different_build_replaces_the_programs_without_a_gap() {
    let variant = bins::bin_path("qmail-guard-variant");
    let mh = MailHost::new(&[ME, OTHER]);
    let g = Guard::new(&mh.host);
    g.write_control("moreipme", &format!("{ME}\n"));
    g.attach(&mh.cgroup);
    let prog4 = g.pin_dir().join("progs/connect4");
    let prog6 = g.pin_dir().join("progs/connect6");
    let (old4, old_tag) = bpftool::prog_id_tag(&prog4);
    let (old6, _) = bpftool::prog_id_tag(&prog6);

    let lp = ConnectLoop::start(&mh.cgroup, &mh.host, ME, OTHER, SMTP);
    let cg = mh.cgroup.path().to_str().unwrap().to_string();
    let home = g.home().to_str().unwrap().to_string();
    let out = cmd::run_ok(&mut g.command_with(
        &variant,
        &["attach", "--cgroup", &cg, "--qmail-home", &home],
    ));
    // Keep connecting for a moment on the new programs too.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let c = lp.finish();
    assert!(
        out.contains("replaced the running programs in place"),
        "attach with the variant did not report an upgrade: {out}"
    );
    assert_eq!(
        c.me_not_refused, 0,
        "a connect to {ME}:25 got through: {c:?}"
    );
    assert_eq!(
        c.other_refused, 0,
        "a connect to {OTHER}:25 was refused: {c:?}"
    );
    assert!(
        c.me_refused > 0 && c.other_ok > 0,
        "the loop did not run: {c:?}"
    );

    let (new4, new_tag) = bpftool::prog_id_tag(&prog4);
    let (new6, _) = bpftool::prog_id_tag(&prog6);
    assert_ne!(new_tag, old_tag, "the variant's program has the same tag");
    assert!(
        new4 != old4 && new6 != old6,
        "the pinned programs were not replaced"
    );
    assert_eq!(
        bpftool::connect_hook_programs(mh.cgroup.path()),
        (vec![new4], vec![new6]),
        "bpftool cgroup show must list the new programs only"
    );
    assert_eq!(g.pinned_links().len(), 2, "links: {:?}", g.pinned_links());

    // Each binary knows whether the running programs are its own.
    let mine = cmd::run_ok(&mut g.command_with(&variant, &["status"]));
    assert!(mine.contains("(this binary's)"), "variant status: {mine}");
    let other = g.run_ok(&["status"]);
    assert!(
        other.contains("differs from this binary's"),
        "status: {other}"
    );

    // Back to the first build: the same in reverse, and the set stayed in force throughout.
    g.attach(&mh.cgroup);
    assert_eq!(bpftool::prog_id_tag(&prog4).1, old_tag);
    assert_eq!(mh.connect(ME, SMTP), guard_tests::ProbeResult::REFUSED);
}
