//! `cargo xtask bench`: one run of every benchmark with baselines measured in the
//! same run, written as a Markdown table to stdout and to bench/results.md. Release builds;
//! bounded in time (≈ 5 minutes of measuring on 2 cores plus the build); deterministic inputs
//! and medians over interleaved rounds, so a noisy machine shifts all variants alike.
//! Everything it creates is removed at the end, on error and on Ctrl-C.

mod bpfmap;
mod client;
mod connect;
mod delivery;
mod fill;
mod listen;
mod machine;
mod message;
mod natloop;
mod plan;
mod sink;
mod stats;
mod stock;
mod strace;
mod table;
mod update;

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::kit::{build, interrupt, preflight};
use crate::{setup, workspace};

/// Tools the benchmarks run besides our own binaries.
const TOOLS: [&str; 6] = ["ip", "nft", "bpftool", "dnsmasq", "strace", "date"];

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Skip `cargo xtask setup` (toolchains, bpf-linker, Debian packages).
    #[arg(long)]
    no_setup: bool,
    /// A smoke run: few rounds, no 1M sets (a minute; numbers not for publishing).
    #[arg(long)]
    quick: bool,
}

pub fn run(o: &Options) -> Result<()> {
    interrupt::install()?;
    if !o.no_setup {
        setup::run(&setup::Options::default())?;
    }
    let cgroup2 = preflight::check("bench", &TOOLS)?;
    let bins = build::build(true)?;
    let plan = if o.quick {
        plan::Plan::quick()
    } else {
        plan::Plan::full()
    };
    let qmail_guard = bins.path("qmail-guard")?;
    let qmail_remote = bins.path("qmail-remote")?;
    let client_bin = bins.path("bench-client")?;
    let started = Instant::now();
    let mut failed = Vec::new();
    // Each section cleans up after itself; a failed one is reported and the next still runs.
    // Sections after a Ctrl-C are not started (the interrupted one has cleaned up).
    let section = |name: &str| {
        println!("==> [{:>4.0} s] {name}", started.elapsed().as_secs_f64());
        interrupt::check()
    };

    section("connect() cost, unguarded and refused, per-program run time")?;
    let connect = keep(
        &mut failed,
        "connect",
        connect::run(&plan, &client_bin, &qmail_guard, &cgroup2),
    );
    section("update latency (qmail-guard run)")?;
    let update = keep(
        &mut failed,
        "update",
        update::run(&plan, &client_bin, &qmail_guard),
    );
    section("qmail-remote per delivery")?;
    let delivery = keep(
        &mut failed,
        "delivery",
        delivery::run(&plan, &qmail_remote, &client_bin),
    );
    section("the NAT loop")?;
    let nat = keep(
        &mut failed,
        "nat",
        natloop::run(&plan, &qmail_remote, &qmail_guard),
    );
    // A section cut short by Ctrl-C has already cleaned up; no table for a partial run.
    if interrupt::interrupted() {
        bail!("interrupted; everything the benchmark created has been removed");
    }

    let all = table::All {
        machine: machine::describe(),
        plan,
        elapsed: started.elapsed(),
        connect,
        update,
        delivery,
        nat,
    };
    let md = table::render(&all);
    println!("\n{md}");
    write_results(&md)?;
    if !failed.is_empty() {
        bail!("benchmark sections failed: {}", failed.join("; "));
    }
    Ok(())
}

/// Turns a section's error into a "not measured" cell, remembering it for the exit status.
fn keep<T>(failed: &mut Vec<String>, name: &str, r: Result<T>) -> table::Section<T> {
    r.map_err(|e| {
        let msg = format!("{e:#}");
        if interrupt::interrupted() {
            eprintln!("{name}: interrupted");
        } else {
            eprintln!("{name}: FAILED: {msg}");
        }
        failed.push(format!("{name}: {msg}"));
        format!("failed: {msg}")
    })
}

fn write_results(md: &str) -> Result<()> {
    let dir = workspace::root().join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("results.md");
    std::fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))?;
    println!("written to {}", Path::new("bench/results.md").display());
    Ok(())
}
