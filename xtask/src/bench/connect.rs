//! connect() cost from a guarded cgroup: unguarded destinations (the cost every connection
//! pays) and refused ones (the guard's ELOOP against the kernel's own RST and nftables), plus
//! the programs' own run time from kernel.bpf_stats_enabled.

pub mod scene;

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use super::client::Server;
use super::netstat::Watch;
use super::plan::Plan;
use super::stats::{median, quantile};
use crate::kit::{bpftool, interrupt};
use scene::{CLOSED_PORT, FREE_PORT, OTHER, Policy, Scene};

/// What a measured connect goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// 127.0.0.1:2525: the port is not guarded (the program returns after the port lookup).
    FreePort,
    /// 198.51.100.7:25: guarded port, address in no set (a full trie lookup, then allowed).
    Other,
    /// Refused: 127.0.0.1:25 under a policy (ELOOP, or nftables' RST), or a closed port
    /// without one (the kernel's RST).
    Refused,
}

impl Dest {
    fn target(self, p: Policy) -> (&'static str, u16, &'static str) {
        match (self, p) {
            (Dest::FreePort, _) => ("127.0.0.1", FREE_PORT, "ok"),
            (Dest::Other, _) => (OTHER, 25, "ok"),
            (Dest::Refused, Policy::Bare) => ("127.0.0.1", CLOSED_PORT, "ECONNREFUSED"),
            (Dest::Refused, Policy::Guard(_)) => ("127.0.0.1", 25, "ELOOP"),
            (Dest::Refused, Policy::Nft(_)) => ("127.0.0.1", 25, "ECONNREFUSED"),
        }
    }
}

/// Stalled rounds run again before the section gives up: a quarter of the rounds, at least 5
/// (on a loaded 2-CPU machine about one round in ten sees a SYN retransmitted).
fn max_redone(rounds: usize) -> usize {
    (rounds / 4).max(5)
}

/// Per variant (same order as `policies`) and destination (`Dest` order: free port, other,
/// refused): the median ns of each round's loop.
pub struct Results {
    pub policies: Vec<Policy>,
    pub samples: Vec<[Vec<f64>; 3]>,
    /// Per guard variant: program ns per run for (free port, other, refused).
    pub prog_ns: Vec<(Policy, [f64; 3])>,
    pub rounds: usize,
    pub iters: usize,
    /// Rounds run again because a connection stalled in them (what grew, per round).
    pub redone: Vec<String>,
}

impl Results {
    /// Median over rounds for variant `v`, destination `d`.
    pub fn median(&self, v: usize, d: Dest) -> f64 {
        median(&self.samples[v][d as usize])
    }

    /// Interquartile range over rounds: the noise of one variant's figure.
    pub fn iqr(&self, v: usize, d: Dest) -> f64 {
        let s = &self.samples[v][d as usize];
        quantile(s, 0.75) - quantile(s, 0.25)
    }
}

pub fn run(plan: &Plan, client: &Path, qmail_guard: &Path, cgroup2: &Path) -> Result<Results> {
    println!("  building one namespace + cgroup per variant (the 1M sets take a while) …");
    let mut scene = Scene::new(&plan.policies(), qmail_guard, cgroup2)?;
    // All clients on one CPU: each is a long-lived process, and left to the scheduler they
    // would settle on different CPUs, whose load differs (other work on the machine).
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    let mut servers = scene
        .variants
        .iter()
        .map(|v| {
            let mut p = v.placement();
            p.cpu = Some(cpu);
            Server::start(client, &p, &v.policy.label())
        })
        .collect::<Result<Vec<_>>>()?;
    let n = scene.variants.len();
    let dests = [Dest::FreePort, Dest::Other, Dest::Refused];
    let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; n];
    println!(
        "  {} rounds × {} variants × 3 destinations × {} connects, interleaved …",
        plan.rounds, n, plan.iters
    );
    // Round 0 warms caches, the listeners and the tries: not counted. A round in which a
    // connection stalled (a SYN retransmitted, an accept queue overflowed) measured the
    // kernel's 1 s retransmission timer: its figures are dropped and the round is run again,
    // a few times at most; the table says how many were.
    let mut redone = Vec::new();
    let mut round = 0;
    while round <= plan.rounds {
        let watch = Watch::new(namespaces(&scene))?;
        let kept = samples[0][0].len();
        for k in 0..n {
            // Rotate the starting variant, so none always runs first.
            let i = (k + round) % n;
            let policy = scene.variants[i].policy;
            for (d, dest) in dests.iter().enumerate() {
                interrupt::check()?;
                let (addr, port, expect) = dest.target(policy);
                let b = servers[i].batch(addr, port, plan.iters, expect)?;
                drained(&mut scene, i, *dest, plan.iters)?;
                if round > 0 {
                    samples[i][d].push(b.connect_ns);
                }
            }
        }
        let grew = watch.grown()?;
        if round > 0 && !grew.is_empty() {
            for per_dest in samples.iter_mut() {
                for v in per_dest.iter_mut() {
                    v.truncate(kept);
                }
            }
            redone.push(grew.join(", "));
            if redone.len() > max_redone(plan.rounds) {
                bail!(
                    "connections stalled in {} rounds (the last: {}): the machine is too busy to time connect()",
                    redone.len(),
                    grew.join(", ")
                );
            }
            println!("    round {round} stalled ({}): run again", grew.join(", "));
            continue;
        }
        if round % 10 == 0 || round == plan.rounds {
            println!("    round {round}/{} done", plan.rounds);
        }
        round += 1;
    }

    println!("  per-program run time (kernel.bpf_stats_enabled=1) …");
    let prog_ns = program_times(plan, &mut servers, &mut scene, &dests)?;
    drop(servers);
    Ok(Results {
        policies: scene.variants.iter().map(|v| v.policy).collect(),
        samples,
        prog_ns,
        rounds: plan.rounds,
        iters: plan.iters,
        redone,
    })
}

/// For each guard variant and destination: the connect4 program's run time per run, from the
/// kernel's own counters (run_time_ns / run_cnt deltas over a batch).
fn program_times(
    plan: &Plan,
    servers: &mut [Server],
    scene: &mut Scene,
    dests: &[Dest; 3],
) -> Result<Vec<(Policy, [f64; 3])>> {
    let _stats = StatsEnabled::new()?;
    let mut out = Vec::new();
    for (i, server) in servers.iter_mut().enumerate() {
        let v = &scene.variants[i];
        let Some(g) = &v.guard else { continue };
        let prog = g.prog(guard_common::PROG_CONNECT4);
        let policy = v.policy;
        let mut per = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..plan.stats_rounds {
            for (d, dest) in dests.iter().enumerate() {
                interrupt::check()?;
                let (addr, port, expect) = dest.target(policy);
                let (t0, c0) = bpftool::prog_stats(&prog)?;
                server.batch(addr, port, plan.stats_iters, expect)?;
                let (t1, c1) = bpftool::prog_stats(&prog)?;
                drained(scene, i, *dest, plan.stats_iters)?;
                if c1 > c0 {
                    per[d].push(t1.saturating_sub(t0) as f64 / (c1 - c0) as f64);
                }
            }
        }
        out.push((policy, [median(&per[0]), median(&per[1]), median(&per[2])]));
    }
    Ok(out)
}

/// Waits until the listener that variant `i`'s batch of `n` connects to `dest` reached has
/// accepted them all, so the next batch finds an empty accept queue.
fn drained(scene: &mut Scene, i: usize, dest: Dest, n: usize) -> Result<()> {
    match dest {
        Dest::FreePort => scene.variants[i].listener.drained(n),
        Dest::Other => scene.other.drained(n),
        // Refused before or at the SYN: nothing reaches a listener.
        Dest::Refused => Ok(()),
    }
}

/// Every namespace with a listener or a client, for the stall counters.
fn namespaces(scene: &Scene) -> Vec<(String, std::path::PathBuf)> {
    let mut v: Vec<_> = scene
        .variants
        .iter()
        .map(|x| (x.policy.label(), x.netns.path()))
        .collect();
    v.push(("peer".to_string(), scene.peer.path()));
    v
}

/// kernel.bpf_stats_enabled=1 for its lifetime (it costs two clock reads per program run, so
/// it is off while connect() itself is timed); the previous value comes back on drop.
struct StatsEnabled {
    old: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl StatsEnabled {
    fn new() -> Result<StatsEnabled> {
        let old = std::fs::read_to_string(BPF_STATS)
            .with_context(|| format!("cannot read {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("cannot write {BPF_STATS}"))?;
        Ok(StatsEnabled {
            old: old.trim().to_string(),
        })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.old) {
            eprintln!("warning: cannot restore {BPF_STATS} to {}: {e}", self.old);
        }
    }
}
