//! Build, setup and test driver: `cargo xtask setup|test|bench|demo|deb`.
mod apt;
mod bench;
mod bpf_linker;
mod bpffs;
mod cargo_deb;
mod cmd;
mod deb;
mod demo;
mod exim;
mod kit;
mod machine_image;
mod no_mta;
mod node_exporter;
mod root;
mod setup;
mod test;
mod toolchain;
mod unpacked;
mod vm;
mod workspace;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "qmail-guard build, setup, test, benchmark and demo driver"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need (toolchains, rust-src, bpf-linker, apt packages,
    /// a private unpacked Exim, bpffs, the systemd tests' container image); never a mail
    /// transport agent. Idempotent: a second run takes seconds.
    Setup(setup::Options),
    /// Run setup, build everything, then run all unit and real-kernel integration tests (root).
    Test(test::Options),
    /// Run the benchmarks and write bench/results.md.
    Bench(bench::Options),
    /// Show the NAT loop and the guard stopping it, step by step, in network namespaces.
    Demo(demo::Options),
    /// Build the Debian package target/debian/qmail-guard_<version>_<arch>.deb.
    Deb(deb::Options),
    /// Inside a test VM only: PID 1 that runs the tests of a plan (see `test --kernel`).
    #[command(hide = true)]
    VmGuest { plan: std::path::PathBuf },
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Setup(o) => setup::run(&o),
        Command::Test(o) => test::run(&o),
        Command::Bench(o) => bench::run(&o),
        Command::Demo(o) => demo::run(&o),
        Command::Deb(o) => deb::run(&o),
        Command::VmGuest { plan } => vm::guest::run(&plan),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The error chain on one line; no backtrace noise when RUST_BACKTRACE is set.
        Err(e) => {
            eprintln!("cargo xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
