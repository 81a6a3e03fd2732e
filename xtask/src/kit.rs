//! Pieces shared by `cargo xtask demo` and `cargo xtask bench`: Ctrl-C handling, building the
//! binaries, fallible wrappers around the test harness' fixtures, the NAT scene, the guard
//! CLI, spawning into a cgroup + netns, and qmail-remote's report format.

pub mod bpftool;
pub mod build;
pub mod daemon;
pub mod guard;
pub mod harness;
pub mod interrupt;
pub mod measure;
pub mod names;
pub mod nat;
pub mod netns;
pub mod preflight;
pub mod remote;
pub mod report;
pub mod spawn;
