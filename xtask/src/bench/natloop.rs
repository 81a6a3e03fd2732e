//! The NAT loop, measured: time and CPU from qmail-remote's start to its report, in the demo's
//! scene (router DNAT + hairpin, dnsmasq MX → the public address), run as qmail-rspawn would.
//!
//! - unguarded: the first hop really happens (delivered to the mail host's own sink);
//! - loop rule: moreipme lists the public address, so our qmail-remote's own prefme rule bounces
//!   before connecting (the path stock qmail takes when ipme knows the address);
//! - kernel: qmail-remote's home has no moreipme (like any qmail-remote that does not know),
//!   but the guard's does: connect gets ELOOP and the delivery bounces.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Result, bail};
use guard_tests::Cgroup;
use guard_tests::qmail_remote::QmailHome;

use super::plan::Plan;
use super::sink::Sink;
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
    drop(sink);
    Ok(r)
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
