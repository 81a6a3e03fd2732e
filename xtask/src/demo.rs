//! `cargo xtask demo`: the NAT loop and the guard stopping it, step by step, in network
//! namespaces: (a) without the guard our qmail-remote delivers to itself, (b) with
//! the guard the same delivery bounces with perm_ambigmx in milliseconds, and the kernel shows
//! why, (c) a client that is not ours cannot even connect, (d) with nothing configured,
//! qmail-remote recognises its own greeting and the guard learns the address. Everything it creates is removed at
//! the end, on error and on Ctrl-C.

mod client;
mod say;
mod step_a;
mod step_b;
mod step_c;
mod step_d;
mod world;

use anyhow::Result;

use crate::kit::{build, interrupt, preflight};
use crate::setup;

/// Tools the scene needs besides our own binaries.
/// (Exim is not among them: the demo runs the private copy setup unpacked, never an installed
/// MTA.)
const TOOLS: [&str; 6] = ["ip", "nft", "bpftool", "dnsmasq", "python3", "setpriv"];

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Skip `cargo xtask setup` (toolchains, bpf-linker, Debian packages).
    #[arg(long)]
    no_setup: bool,
}

pub fn run(o: &Options) -> Result<()> {
    interrupt::install()?;
    if !o.no_setup {
        setup::run(&setup::Options::default())?;
    }
    preflight::check("demo", &TOOLS)?;
    guard_tests::exim_prefix::binary()?;
    let bins = build::build(false)?;
    interrupt::check()?;
    let result = (|| {
        let mut w = world::World::new(&bins)?;
        step_a::run(&w)?;
        step_b::run(&mut w)?;
        step_c::run(&w)?;
        step_d::run(&w)?;
        say::heading("Cleaning up");
        say::line(
            "stopping the daemon, dnsmasq and Exim; detaching the guard and removing its pins; deleting the namespaces, the cgroup and the qmail home",
        );
        drop(w);
        say::line("done: nothing of the demo is left");
        Ok(())
    })();
    if result.is_err() {
        // The world was dropped while the error travelled up: say so, so the reader knows.
        eprintln!("demo stopped; everything it created has been removed");
        // Ctrl-C also reaches dnsmasq and Exim, so the error may be a consequence of it.
        if interrupt::interrupted() {
            anyhow::bail!("interrupted");
        }
    }
    result
}
