//! Zero-config loop detection: nothing tells qmail that the router's public address leads back
//! to this host (no moreipme). qmail-remote reaches its own SMTP server there, recognises its
//! own greeting, stops before MAIL FROM and bounces (or defers, as a backup MX); the daemon
//! learns the address from the spool and the kernel refuses it from then on.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use guard_tests::Guard;
use guard_tests::bpftool;
use guard_tests::cmd;
use guard_tests::daemon::{Daemon, eventually};
use guard_tests::loop_scene::{BACKUP_MX_DOMAIN, BEST_MX_DOMAIN, LoopScene, OUR_NAME, PUBLIC};
use guard_tests::qmail_remote::{Invocation, QMAILR_GID, QMAILR_UID, QmailHome, RemoteRun};

const AMBIG: &[u8] = b"DSorry. Although I'm listed as a best-preference MX or A for that host,\n\
it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n\0";
const NOCONN: &[u8] = b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n\0";
const MSG: &[u8] = b"Subject: loop\n\nhi\n";
/// The daemon's spool owner is the account qmail-remote runs as in these tests.
const LEARN_USER: [&str; 2] = ["--learn-user", "nobody"];

fn deliver(s: &LoopScene, home: &QmailHome, domain: &str) -> RemoteRun {
    Invocation::new(home, domain, "s@x.test", &[&format!("r@{domain}")])
        .message(MSG)
        .netns(&s.host)
        .cgroup(s.cgroup.path())
        .run()
}

/// qmail-guard's and qmail-remote's shared home: control/me is the local server's name.
fn home(g: &Guard) -> QmailHome {
    let h = QmailHome::borrow(g.home());
    h.write_control("me", &format!("{OUR_NAME}\n"));
    h.write_control("timeoutremote", "5\n");
    h
}

fn spool(g: &Guard) -> PathBuf {
    g.home().join("loopcheck/spool")
}

/// `qmail-guard print` lines for PUBLIC.
fn printed(g: &Guard) -> Vec<String> {
    let out = cmd::run_ok(
        Command::new(guard_tests::bins::bin_path("qmail-guard"))
            .args(["print", "--qmail-home"])
            .arg(g.home()),
    );
    out.lines()
        .filter(|l| l.starts_with(&format!("{PUBLIC}/32")))
        .map(str::to_string)
        .collect()
}

fn learned_in_status(g: &Guard) -> Vec<String> {
    g.status_json()["learned"]
        .as_array()
        .expect("status --json has `learned`")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

fn refused_v4(g: &Guard) -> u64 {
    g.status_json()["refused_v4"].as_u64().expect("refused_v4")
}

/// The source tag the pinned IPME_V4 map holds for PUBLIC/32, read with bpftool.
fn bpftool_tag(g: &Guard) -> Option<u32> {
    let octets: Vec<u8> = PUBLIC.split('.').map(|o| o.parse().unwrap()).collect();
    bpftool::lpm_entries(&bpftool::map_dump(&g.map("IPME_V4")))
        .into_iter()
        .find(|e| e.prefix_len == 32 && e.data == octets)
        .map(|e| e.tag)
}

/// Polls until PUBLIC is in the kernel's maps as learned; returns how long it took.
fn wait_learned(g: &Guard) -> Duration {
    let t = Instant::now();
    eventually("the address to be learned", || {
        g.check(PUBLIC, 25).0 == Some(true)
    });
    t.elapsed()
}

#[test]
fn nat_loop_is_detected_by_the_greeting_learned_and_then_refused_by_the_kernel() {
    let s = LoopScene::new();
    let g = Guard::new(&s.host);
    let home = home(&g);
    let mut d = Daemon::start(&g, s.cgroup.path(), &LEARN_USER);
    let sp = fs::metadata(spool(&g)).expect("the daemon made the spool");
    assert_eq!(
        (sp.uid(), sp.permissions().mode() & 0o777),
        (QMAILR_UID, 0o700)
    );
    assert_eq!(g.check(PUBLIC, 25).0, Some(false), "nothing configured");

    // First delivery: our own server answers; QUIT before MAIL FROM; best MX: #5.4.6.
    deliver(&s, &home, BEST_MX_DOMAIN).expect(AMBIG, b'D');
    let took = wait_learned(&g);
    eprintln!("learned {took:?} after qmail-remote's exit (polling with qmail-guard check)");
    let sess = s.smtpd.one_session();
    assert_eq!(
        sess.received, b"QUIT\r\n",
        "nothing but QUIT reached our own server"
    );
    assert!(sess.quit && sess.data.is_empty());
    // (`cargo xtask bench` measures the time to the first refused connect precisely; a test
    // asserts no timing)
    d.wait_line("the learned line", |l| {
        l.contains(&format!(
            "learned: {PUBLIC} is this host (its SMTP server greets as {OUR_NAME})"
        ))
    });

    // Every view shows it with its source. The daemon writes the store (which `print` reads)
    // just after the maps, so give that write a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let p = loop {
        let p = printed(&g);
        if (p.len() == 1 && p[0].contains(" learned 20")) || std::time::Instant::now() > deadline {
            break p;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(p.len() == 1 && p[0].contains(" learned 20"), "{p:?}");
    assert_eq!(learned_in_status(&g), [PUBLIC]);
    assert_eq!(g.status_json()["entries_by_source"]["learned"], 1);
    assert_eq!(bpftool_tag(&g), Some(guard_common::tag::LEARNED));
    let ipmeprint = cmd::run_ok(
        Command::new(guard_tests::bins::bin_path("ipmeprint"))
            .args(["-v", "--qmail-home"])
            .arg(g.home()),
    );
    assert!(
        ipmeprint.lines().any(
            |l| l.starts_with(&format!("{PUBLIC}/255.255.255.255 is me "))
                && l.contains("# learned 20")
        ),
        "{ipmeprint}"
    );

    // Second delivery: the kernel refuses, no connection at all.
    let before = refused_v4(&g);
    deliver(&s, &home, BEST_MX_DOMAIN).expect(AMBIG, b'D');
    assert_eq!(
        s.smtpd.connections(),
        1,
        "no new connection to our own server"
    );
    assert_eq!(refused_v4(&g), before + 1, "the kernel refused it (ELOOP)");

    // A restarted daemon keeps it.
    d.terminate();
    let d = Daemon::start(&g, s.cgroup.path(), &LEARN_USER);
    assert_eq!(g.check(PUBLIC, 25).0, Some(true));
    assert_eq!(learned_in_status(&g), [PUBLIC]);

    // forget removes it; the next delivery finds the loop by the greeting again.
    let out = g.run_ok(&["forget", PUBLIC, "--qmail-home", g.home().to_str().unwrap()]);
    assert!(out.contains(&format!("forgot {PUBLIC}")), "{out}");
    assert_eq!(g.check(PUBLIC, 25).0, Some(false));
    assert!(printed(&g).is_empty());
    deliver(&s, &home, BEST_MX_DOMAIN).expect(AMBIG, b'D');
    assert_eq!(s.smtpd.connections(), 2);
    assert_eq!(s.smtpd.finished_sessions()[1].received, b"QUIT\r\n");
    wait_learned(&g);
    // forgetting what was never learned is an error
    let out = g.run(&[
        "forget",
        "192.0.2.99",
        "--qmail-home",
        g.home().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    drop(d);
}

#[test]
fn as_a_backup_mx_the_loop_defers_when_the_better_mx_fails() {
    let s = LoopScene::new();
    let g = Guard::new(&s.host);
    let home = home(&g);
    let _d = Daemon::start(&g, s.cgroup.path(), &LEARN_USER);
    // MX 5 refuses the connection, MX 10 is ourselves: the better MX's outcome.
    deliver(&s, &home, BACKUP_MX_DOMAIN).expect(NOCONN, b'Z');
    assert_eq!(s.smtpd.one_session().received, b"QUIT\r\n");
    wait_learned(&g);
    // From now on the kernel refuses it; the outcome stays the better MX's.
    deliver(&s, &home, BACKUP_MX_DOMAIN).expect(NOCONN, b'Z');
    assert_eq!(s.smtpd.connections(), 1);
}

#[test]
fn loopcheck_0_lets_the_first_hop_through_and_learns_nothing() {
    let s = LoopScene::new();
    let g = Guard::new(&s.host);
    let home = home(&g);
    home.write_control("loopcheck", "0\n");
    let d = Daemon::start(&g, s.cgroup.path(), &LEARN_USER);
    let r = deliver(&s, &home, BEST_MX_DOMAIN);
    assert_eq!(r.condensed()[0], b'K', "{}", r.show());
    let sess = s.smtpd.one_session();
    assert!(
        sess.dot,
        "the message was handed over: the loop's first hop"
    );
    assert_eq!(fs::read_dir(spool(&g)).unwrap().count(), 0);
    // give a learning daemon every chance, then check nothing changed
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(g.check(PUBLIC, 25).0, Some(false));
    assert!(learned_in_status(&g).is_empty());
    assert!(
        !d.lines().iter().any(|l| l.contains("learned:")),
        "{:?}",
        d.lines()
    );
}

/// Puts an entry into the spool as the qmail-remote user would: written under a dot name,
/// owned by it, renamed into place.
fn put(dir: &Path, name: &str, contents: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, contents).unwrap();
    chown(&tmp, Some(QMAILR_UID), Some(QMAILR_GID)).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

fn map_entries(g: &Guard) -> Vec<bpftool::LpmEntry> {
    let mut v = bpftool::lpm_entries(&bpftool::map_dump(&g.map("IPME_V4")));
    v.extend(bpftool::lpm_entries(&bpftool::map_dump(&g.map("IPME_V6"))));
    v
}

#[test]
fn hostile_spool_entries_are_rejected_one_line_each_and_the_set_is_unchanged() {
    let s = LoopScene::new();
    let g = Guard::new(&s.host);
    g.write_control("notipme", "203.0.113.0/24\n");
    let d = Daemon::start(&g, s.cgroup.path(), &LEARN_USER);
    let dir = spool(&g);
    let before = map_entries(&g);
    let bad: [(&str, &[u8], &str); 6] = [
        ("range", b"198.51.100.0/24\n", "is a range"),
        ("garbage", b"rm -rf /\n", "not an address"),
        ("builtin", b"127.0.0.2\n", "built-in 127.0.0.0/8"),
        ("notipme", b"203.0.113.9\n", "control/notipme:1"),
        ("multicast", b"224.0.0.1\n", "not a single host"),
        ("huge", &[b'9'; 4096], "larger than 512 bytes"),
    ];
    for (name, contents, _) in bad {
        put(&dir, name, contents);
    }
    for (name, _, why) in bad {
        let l = d.wait_line(name, |l| {
            l.contains(&format!("loopcheck/spool/{name} rejected:")) && l.contains(why)
        });
        assert_eq!(
            d.lines().iter().filter(|x| **x == l).count(),
            1,
            "one line for {name}"
        );
    }
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "each handled once");
    assert_eq!(map_entries(&g), before, "the set is unchanged");

    // An unprivileged user other than qmail-remote's cannot write the spool.
    let out = cmd::output(
        Command::new("setpriv")
            .args(["--reuid=65533", "--regid=65533", "--clear-groups", "--"])
            .arg("sh")
            .arg("-c")
            .arg(format!("echo 198.51.100.99 > {}/x", dir.display())),
    );
    assert!(!out.status.success(), "another user wrote into the spool");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    drop(d);

    // 10 000 entries at once, applied by `sync` without the daemon: a flood, nothing learned.
    // The spool is a tmpfs for this (10 000 file creations on a busy disk take minutes).
    let _tmpfs = Tmpfs::mount(&dir);
    let t = Instant::now();
    for i in 0..10_000u32 {
        let a = std::net::Ipv4Addr::from(0xc633_0000 | i);
        let p = dir.join(a.to_string());
        fs::write(&p, format!("{a}\n")).unwrap();
        chown(&p, Some(QMAILR_UID), Some(QMAILR_GID)).unwrap();
    }
    eprintln!("wrote 10 000 entries in {:?}", t.elapsed());
    let out = g.run(&[
        "sync",
        "--learn-user",
        "nobody",
        "--qmail-home",
        g.home().to_str().unwrap(),
    ]);
    eprintln!("sync done at {:?}", t.elapsed());
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let rejected = err
        .lines()
        .filter(|l| l.contains("rejected: one of 10000 entries at once"))
        .count();
    assert_eq!(rejected, 10_000);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    assert_eq!(map_entries(&g), before, "the set is unchanged");
}

#[test]
fn sync_applies_the_spool_without_the_daemon() {
    let s = LoopScene::new();
    let g = Guard::new(&s.host);
    let home = home(&g);
    g.attach(&s.cgroup);
    // No daemon: the spool exists once attach or sync made it.
    let sync = || {
        let out = g.run(&[
            "sync",
            "--learn-user",
            "nobody",
            "--qmail-home",
            g.home().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    sync();
    deliver(&s, &home, BEST_MX_DOMAIN).expect(AMBIG, b'D');
    assert_eq!(
        fs::read_dir(spool(&g)).unwrap().count(),
        1,
        "waiting in the spool"
    );
    assert_eq!(g.check(PUBLIC, 25).0, Some(false), "not applied yet");
    let err = sync();
    assert!(
        err.contains(&format!("learned: {PUBLIC} is this host")),
        "{err}"
    );
    assert_eq!(g.check(PUBLIC, 25).0, Some(true));
    deliver(&s, &home, BEST_MX_DOMAIN).expect(AMBIG, b'D');
    assert_eq!(
        s.smtpd.connections(),
        1,
        "the kernel refused the second delivery"
    );
}

/// A tmpfs mounted over the spool (owned by the qmail-remote user, mode 0700, as the daemon
/// makes it), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        cmd::run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!(
                    "mode=0700,uid={QMAILR_UID},gid={QMAILR_GID},size=64m"
                ))
                .arg("qgt-spool")
                .arg(dir),
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
