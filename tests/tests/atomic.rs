//! Set changes are atomic for connects: going between
//! A = moreipme 198.51.100.0/24 and B = moreipme 198.51.100.25 + notipme 198.51.100.0/24
//! (.25 is "me" in both; 50 000 padding entries in each file, so a change takes long), a
//! connect loop from the guarded cgroup to .25:25 never gets through and a connect to an
//! address that is "me" in neither set is never refused — with `sync`, with the daemon
//! following renames of both files, and with a `sync` killed at a random instant.
//!
//! The number of rounds can be raised for a soak run with QMAIL_GUARD_ATOMIC_ROUNDS.

use std::fs;
use std::time::{Duration, Instant};

use guard_tests::Guard;
use guard_tests::connect_loop::ConnectLoop;
use guard_tests::daemon::Daemon;
use guard_tests::guard::ensure_success;
use guard_tests::topology::MailHost;

/// "me" in A and in B.
const ME: &str = "198.51.100.25";
/// "me" in neither (and reachable on the peer).
const OTHER: &str = "203.0.113.50";
/// "me" in A, not in B.
const TELLS: &str = "198.51.100.26";
const SMTP: u16 = 25;
const PADDING: u32 = 50_000;

/// Rounds of a test. A sync of this set costs about a second of CPU in a debug build (most of
/// it computing the 100 000-entry set), so CI runs fewer rounds than a soak run:
/// `QMAIL_GUARD_ATOMIC_ROUNDS=500` gives 500 alternating syncs.
fn rounds(default: usize) -> usize {
    std::env::var("QMAIL_GUARD_ATOMIC_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` single addresses in `100.<second>.0.0/16` (shared address space: map keys only, no
/// traffic goes there).
fn padding(second: u8) -> String {
    let mut s = String::with_capacity(PADDING as usize * 16);
    for i in 0..PADDING {
        s.push_str(&format!("100.{second}.{}.{}\n", i / 256, i % 256));
    }
    s
}

struct Sets {
    more_a: String,
    not_a: String,
    more_b: String,
    not_b: String,
}

fn sets() -> Sets {
    let (pm, pn) = (padding(64), padding(96));
    Sets {
        more_a: format!("198.51.100.0/24\n{pm}"),
        not_a: pn.clone(),
        more_b: format!("{ME}\n{pm}"),
        not_b: format!("198.51.100.0/24\n{pn}"),
    }
}

fn write_set(g: &Guard, more: &str, not: &str) {
    g.write_control("moreipme", more);
    g.write_control("notipme", not);
}

fn scene() -> MailHost {
    MailHost::new(&[ME, OTHER])
}

#[test]
fn alternating_syncs_never_let_a_me_address_through() {
    let mh = scene();
    let g = Guard::new(&mh.host);
    let s = sets();
    write_set(&g, &s.more_a, &s.not_a);
    g.attach(&mh.cgroup);
    let lp = ConnectLoop::start(&mh.cgroup, &mh.host, ME, OTHER, SMTP);
    let n = rounds(20);
    let started = Instant::now();
    for i in 0..n {
        let (more, not) = if i % 2 == 0 {
            (&s.more_b, &s.not_b)
        } else {
            (&s.more_a, &s.not_a)
        };
        write_set(&g, more, not);
        ensure_success("sync", &g.sync());
    }
    let c = lp.finish();
    eprintln!("{n} syncs in {:?}: {c:?}", started.elapsed());
    c.assert_guarded("alternating syncs");
    let st = g.status_json();
    assert_eq!(
        st["generation"].as_u64(),
        Some(1 + n as u64),
        "every sync changed the set once (attach made generation 1)"
    );
}

#[test]
fn the_daemon_following_renames_never_lets_a_me_address_through() {
    let mh = scene();
    let g = Guard::new(&mh.host);
    let s = sets();
    // Ready quickly with A alone, then the padded A (a debug build on a busy machine may need
    // longer than the readiness timeout to load 100 000 entries at start).
    write_set(&g, "198.51.100.0/24\n", "");
    let d = Daemon::start(&g, mh.cgroup.path(), &[]);
    let control = g.home().join("control");
    let replace = |file: &str, contents: &str| {
        let tmp = control.join(format!(".{file}.new"));
        fs::write(&tmp, contents).unwrap();
        fs::rename(&tmp, control.join(file)).unwrap();
    };
    let syncs = || d.lines().iter().filter(|l| l.contains("sync:")).count();
    let wait_sync = |before: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while syncs() == before {
            assert!(
                Instant::now() < deadline,
                "the daemon applied no change within 60 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let before = syncs();
    replace("notipme", &s.not_a);
    replace("moreipme", &s.more_a);
    wait_sync(before);
    let lp = ConnectLoop::start(&mh.cgroup, &mh.host, ME, OTHER, SMTP);
    let n = rounds(8);
    let started = Instant::now();
    for i in 0..n {
        let before = syncs();
        // In an order where every intermediate pair of files keeps .25 "me" too, as an
        // administrator would (the guard makes each applied set atomic, not the pair).
        if i % 2 == 0 {
            replace("moreipme", &s.more_b);
            replace("notipme", &s.not_b);
        } else {
            replace("notipme", &s.not_a);
            replace("moreipme", &s.more_a);
        }
        wait_sync(before);
    }
    let c = lp.finish();
    eprintln!(
        "{n} rounds, {} daemon syncs in {:?}: {c:?}",
        syncs(),
        started.elapsed()
    );
    c.assert_guarded("daemon following renames");
    assert!(syncs() >= n, "the daemon applied fewer changes than rounds");
}

#[test]
fn a_sync_killed_at_a_random_instant_leaves_the_set_in_force_and_the_next_converges() {
    let mh = scene();
    let g = Guard::new(&mh.host);
    let s = sets();
    write_set(&g, &s.more_a, &s.not_a);
    g.attach(&mh.cgroup);
    let lp = ConnectLoop::start(&mh.cgroup, &mh.host, ME, OTHER, SMTP);
    // How long a full sync takes here, to spread the kills over it.
    write_set(&g, &s.more_b, &s.not_b);
    let t = Instant::now();
    ensure_success("sync", &g.sync());
    let full = t.elapsed();
    let mut seed = u64::from(std::process::id()) | 1;
    for i in 0..20 {
        let (more, not) = if i % 2 == 0 {
            (&s.more_a, &s.not_a)
        } else {
            (&s.more_b, &s.not_b)
        };
        write_set(&g, more, not);
        // xorshift: a different instant each run, reproducible from the pid in the log.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = full.mul_f64((seed % 1000) as f64 / 1000.0);
        let home = g.home().to_str().unwrap().to_string();
        let mut child = g
            .command(&["sync", "--qmail-home", &home])
            .spawn()
            .expect("spawn sync");
        std::thread::sleep(at);
        let _ = child.kill();
        let _ = child.wait();
        // The set in force is the old or the new one: .25 is refused either way.
        let (verdict, out) = g.check(ME, SMTP);
        assert_eq!(
            verdict,
            Some(true),
            "after a sync killed {at:?} in: check {ME}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        ensure_success("sync after the killed one", &g.sync());
        // .26 tells the sets apart: "me" in A (the /24), not in B (the notipme /24).
        let want_26 = i % 2 == 0;
        let (got, out) = g.check(TELLS, SMTP);
        assert_eq!(
            got,
            Some(want_26),
            "the sync after a killed one did not converge: check {TELLS}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let c = lp.finish();
    eprintln!("(seed pid {}) {c:?}", std::process::id());
    c.assert_guarded("killed syncs");
}
