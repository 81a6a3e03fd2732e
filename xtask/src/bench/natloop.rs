//! The NAT loop, measured: time and CPU from qmail-remote's start to its report, in the demo's
//! scene (router DNAT + hairpin, dnsmasq MX → the public address), run as qmail-rspawn would.
//!
//! - unguarded: the first hop really happens (delivered to the mail host's own sink);
//! - loop rule: moreipme lists the public address, so our qmail-remote's own prefme rule bounces
//!   before connecting (the path stock qmail takes when ipme knows the address);
//! - kernel: qmail-remote's home has no moreipme (like any qmail-remote that does not know),
//!   but the guard's does: connect gets ELOOP and the delivery bounces.
//! - nothing configured: no moreipme anywhere, the daemon running; the first delivery meets
//!   its own greeting (control/me = the sink's name) and bounces, the daemon learns the
//!   address, and deliveries go on until one is refused by the kernel: connections and wall
//!   time until then, per trial (the learned entry is forgotten between trials).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Result, bail};
use guard_tests::Cgroup;
use guard_tests::qmail_remote::QmailHome;

use super::plan::Plan;
use super::sink::Sink;
use crate::kit::daemon::Daemon;
use crate::kit::guard::Guard;
use crate::kit::harness::attempt;
use crate::kit::nat::{self, NatScene};
use crate::kit::remote::{MessageFile, QMAILR, Remote};
use crate::kit::spawn::Placement;
use crate::kit::{bpftool, interrupt, names};

/// The three paths, in table order, as named in errors.
const PATHS: [&str; 3] = ["unguarded", "loop rule", "kernel"];

/// Per path: wall and CPU in ms, and the sink's connections during the runs.
pub struct Results {
    pub wall_ms: [Vec<f64>; 3],
    pub cpu_ms: [Vec<f64>; 3],
    pub connections: [usize; 3],
    pub refused_by_kernel: u64,
    /// Nothing configured: wall ms from the first delivery's start to the end of the first
    /// delivery the kernel refused, per trial.
    pub zero_wall_ms: Vec<f64>,
    /// Connections to the mail host and deliveries, over all trials.
    pub zero_connections: usize,
    pub zero_deliveries: usize,
}

pub fn run(plan: &Plan, qmail_remote: &Path, qmail_guard: &Path) -> Result<Results> {
    let scene = NatScene::new()?;
    let _dns = scene.dns()?;
    let sink = Sink::start(
        &scene.mail.path(),
        SocketAddr::new(nat::MAIL_V4.parse()?, nat::SMTP),
    )?;
    let free_cg = attempt("creating a cgroup", || Cgroup::new(&names::name("natfree")))?;
    let guarded_cg = attempt("creating a cgroup", || Cgroup::new(&names::name("nat")))?;
    let knows = attempt("creating a qmail home", QmailHome::new)?;
    let unaware = attempt("creating a qmail home", QmailHome::new)?;
    attempt("writing control/moreipme", || {
        knows.write_control("moreipme", &format!("{}\n", nat::PUBLIC))
    })?;
    let guard = Guard::new(
        qmail_guard.to_path_buf(),
        &scene.mail.path(),
        knows.path(),
        "nat",
    )?;
    guard.attach(guarded_cg.path())?;
    let msg = MessageFile::new(
        &format!("{}.msg", names::name("nat")),
        b"From: sender@example.org\nTo: user@loop.test\nSubject: loop\n\nhello\n",
    )?;
    let remote = |home| remote(qmail_remote, home, &scene, msg.path());
    let runs = [
        remote(unaware.path()).placed(free_cg.path()),
        remote(knows.path()).placed(guarded_cg.path()),
        remote(unaware.path()).placed(guarded_cg.path()),
    ];
    let mut r = Results {
        wall_ms: Default::default(),
        cpu_ms: Default::default(),
        connections: [0; 3],
        refused_by_kernel: 0,
        zero_wall_ms: Vec::new(),
        zero_connections: 0,
        zero_deliveries: 0,
    };
    let (refused_before, _) = bpftool::refused(&guard.map("STATS"))?;
    println!(
        "  {} runs per path (unguarded, loop rule, kernel), interleaved …",
        plan.nat_runs
    );
    // One extra first round warms dnsmasq, ARP and the page cache: not counted.
    for round in 0..=plan.nat_runs {
        for (p, run) in runs.iter().enumerate() {
            interrupt::check()?;
            let before = sink.connections();
            let o = run.run()?;
            let ok = if p == 0 {
                o.report.is_delivered()
            } else {
                o.report.is_ambigmx()
            };
            if !ok {
                bail!(
                    "NAT loop, {} path: unexpected report {}",
                    PATHS[p],
                    o.report.render("")
                );
            }
            if round > 0 {
                r.wall_ms[p].push(o.usage.wall.as_secs_f64() * 1e3);
                r.cpu_ms[p].push(o.usage.cpu.as_secs_f64() * 1e3);
                r.connections[p] += sink.connections() - before;
            }
        }
    }
    let (refused_after, _) = bpftool::refused(&guard.map("STATS"))?;
    r.refused_by_kernel = refused_after - refused_before;
    // Only the kernel path reaches connect(): one refusal per run, warm-up included.
    let want = (plan.nat_runs + 1) as u64;
    if r.refused_by_kernel != want {
        bail!(
            "expected {want} kernel refusals (one per kernel-path run), counted {}",
            r.refused_by_kernel
        );
    }
    drop(guard);
    zero_config(
        plan,
        qmail_remote,
        qmail_guard,
        &scene,
        &sink,
        msg.path(),
        &mut r,
    )?;
    drop(sink);
    Ok(r)
}

/// The nothing-configured path (see the module comment).
fn zero_config(
    plan: &Plan,
    qmail_remote: &Path,
    qmail_guard: &Path,
    scene: &NatScene,
    sink: &Sink,
    msg: &Path,
    r: &mut Results,
) -> Result<()> {
    let cg = attempt("creating a cgroup", || Cgroup::new(&names::name("natzero")))?;
    let home = attempt("creating a qmail home", QmailHome::new)?;
    // The sink greets as sink.test: it plays the host's own qmail-smtpd.
    attempt("writing control/me", || {
        home.write_control("me", "sink.test\n")
    })?;
    let guard = Guard::new(
        qmail_guard.to_path_buf(),
        &scene.mail.path(),
        home.path(),
        "natzero",
    )?;
    let daemon = Daemon::start(&guard, cg.path())?;
    let run = remote(qmail_remote, home.path(), scene, msg).placed(cg.path());
    let stats = guard.map("STATS");
    println!(
        "  {} trials with nothing configured (greeting check, learning, kernel) …",
        plan.nat_runs
    );
    for trial in 0..=plan.nat_runs {
        interrupt::check()?;
        // Untimed: back to "nothing known" (the first trial has nothing to forget).
        let _ = guard.output(&[
            "forget",
            nat::PUBLIC,
            "--qmail-home",
            &home.path().display().to_string(),
        ]);
        let (refused_before, _) = bpftool::refused(&stats)?;
        let conns_before = sink.connections();
        let t = std::time::Instant::now();
        let mut deliveries = 0;
        loop {
            let o = run.run()?;
            deliveries += 1;
            if !o.report.is_ambigmx() {
                bail!(
                    "NAT loop, nothing configured: unexpected report {}",
                    o.report.render("")
                );
            }
            if bpftool::refused(&stats)?.0 > refused_before {
                break;
            }
            if deliveries > 1000 {
                bail!("NAT loop, nothing configured: the kernel never refused the address");
            }
        }
        if trial > 0 {
            r.zero_wall_ms.push(t.elapsed().as_secs_f64() * 1e3);
            r.zero_connections += sink.connections() - conns_before;
            r.zero_deliveries += deliveries;
        }
    }
    drop(daemon);
    Ok(())
}

/// qmail-remote for loop.test as qmail-rspawn runs it, in the mail host's namespace with its
/// resolver, as qmailr; the cgroup is set by [`Placed::placed`].
fn remote<'a>(bin: &'a Path, home: &'a Path, scene: &NatScene, msg: &'a Path) -> Remote<'a> {
    Remote {
        bin,
        home,
        host: nat::DOMAIN,
        sender: "sender@example.org",
        recips: &["user@loop.test"],
        message: msg,
        placement: Placement {
            cgroup: None,
            netns: Some(scene.mail.path()),
            resolv: Some(scene.resolv_conf()),
            user: Some(QMAILR),
            traceme: false,
            cpu: None,
        },
    }
}

trait Placed {
    fn placed(self, cgroup: &Path) -> Self;
}

impl Placed for Remote<'_> {
    fn placed(mut self, cgroup: &Path) -> Self {
        self.placement.cgroup = Some(cgroup.to_path_buf());
        self
    }
}
