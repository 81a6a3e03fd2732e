//! `cargo xtask bench`: one run of every benchmark with baselines measured in the
//! same run, written as a Markdown table to stdout and to bench/results.md. Release builds;
//! bounded in time (≈ 2–3 minutes of measuring on 2 cores plus the build); deterministic inputs
//! and medians over interleaved rounds, so a noisy machine shifts all variants alike. A batch
//! never waits for a dropped SYN's retransmission (see bench/listen.rs and bench/netstat.rs).
//! Everything it creates is removed at the end, on error, on Ctrl-C and on SIGTERM.

mod apply;
mod bpfmap;
mod client;
mod connect;
mod delivery;
mod fill;
mod listen;
mod machine;
mod message;
mod natloop;
mod netstat;
mod plan;
mod sink;
mod stats;
mod stock;
mod storm;
mod strace;
mod table;
mod tls;
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
    /// Run only these sections (repeatable): connect, update, apply, delivery, tls, nat, storm.
    /// The others appear as "not run"; bench/results.md is then not overwritten.
    #[arg(long, value_name = "SECTION", value_parser = ["connect", "update", "apply", "delivery", "tls", "nat", "storm"])]
    only: Vec<String>,
    /// Also measure this qmail-remote (e.g. a TLS-patched C build) side by side with ours,
    /// interleaved, in every qmail-remote row; without it the stock rows are quoted figures.
    #[arg(long, value_name = "PATH")]
    stock_qmail_remote: Option<std::path::PathBuf>,
    /// The qmail home compiled into that binary (conf-qmail); the benchmark mounts its own
    /// home over it in a private mount namespace. Must exist.
    #[arg(long, value_name = "DIR", default_value = "/var/qmail")]
    stock_qmail_home: std::path::PathBuf,
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

    let wanted = |name: &str| o.only.is_empty() || o.only.iter().any(|x| x == name);
    fn skipped<T>() -> table::Section<T> {
        Err("not run (`--only`)".to_string())
    }
    let connect = if wanted("connect") {
        section("connect() cost, unguarded and refused, per-program run time")?;
        keep(
            &mut failed,
            "connect",
            connect::run(&plan, &client_bin, &qmail_guard, &cgroup2),
        )
    } else {
        skipped()
    };
    let update = if wanted("update") {
        section("update latency (qmail-guard run)")?;
        keep(
            &mut failed,
            "update",
            update::run(&plan, &client_bin, &qmail_guard),
        )
    } else {
        skipped()
    };
    let apply = if wanted("apply") {
        section("apply time of a whole set (attach, one-entry sync)")?;
        keep(&mut failed, "apply", apply::run(&plan, &qmail_guard))
    } else {
        skipped()
    };
    let stock_bin = o.stock_qmail_remote.as_ref().map(|p| stock::Binary {
        path: p.clone(),
        home: o.stock_qmail_home.clone(),
    });
    let delivery = if wanted("delivery") {
        section("qmail-remote per delivery")?;
        keep(
            &mut failed,
            "delivery",
            delivery::run(&plan, &qmail_remote, &client_bin, stock_bin.as_ref()),
        )
    } else {
        skipped()
    };
    let tls = if wanted("tls") {
        section("qmail-remote per delivery with STARTTLS")?;
        keep(
            &mut failed,
            "tls",
            tls::run(&plan, &qmail_remote, stock_bin.as_ref()),
        )
    } else {
        skipped()
    };
    let nat = if wanted("nat") {
        section("the NAT loop")?;
        keep(
            &mut failed,
            "nat",
            natloop::run(&plan, &qmail_remote, &qmail_guard),
        )
    } else {
        skipped()
    };
    let storm = if wanted("storm") {
        section("the daemon under a refusal storm")?;
        keep(
            &mut failed,
            "storm",
            storm::run(&qmail_guard, &bins.path("guard-probe")?),
        )
    } else {
        skipped()
    };
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
        apply,
        delivery,
        tls,
        stock_measured: stock_bin.is_some(),
        nat,
        storm,
    };
    let md = table::render(&all);
    println!("\n{md}");
    if o.only.is_empty() {
        write_results(&md)?;
    }
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
