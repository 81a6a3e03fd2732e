//! `cargo xtask setup`: toolchains, bpf-linker, cargo-deb, apt packages, the private Exim and
//! node_exporter, bpffs, the systemd tests' container image. Idempotent; each step checks first
//! and prints one `ok:` line when there is nothing to do.

use std::time::Instant;

use crate::{apt, bpf_linker, bpffs, cargo_deb, exim, machine_image, node_exporter, toolchain};

#[derive(Debug, Default, clap::Args)]
pub struct Options {}

pub fn run(_o: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    toolchain::ensure(&toolchain::host()?)?;
    let ebpf = toolchain::ebpf()?;
    toolchain::ensure(&ebpf)?;
    bpf_linker::ensure(&ebpf.name)?;
    cargo_deb::ensure()?;
    apt::ensure()?;
    exim::ensure()?;
    node_exporter::ensure()?;
    bpffs::ensure()?;
    machine_image::ensure()?;
    println!("setup done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
