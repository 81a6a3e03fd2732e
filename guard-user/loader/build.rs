//! Builds the guard-ebpf programs for the BPF target with the pinned nightly, the current aya
//! template way; the object is embedded into the binaries with `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};

/// Keep in sync with xtask's EBPF_TOOLCHAIN (setup installs it with rust-src).
const EBPF_TOOLCHAIN: &str = "nightly-2026-10-20";

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "guard-ebpf")
        .ok_or_else(|| anyhow!("guard-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("guard-ebpf manifest has no parent"))?;
    // The upgrade test's second build: same code, programs that differ by a no-op.
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_UPGRADE_TEST_VARIANT").is_some() {
        &["upgrade-test-variant"]
    } else {
        &[]
    };
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        features,
        ..Default::default()
    };
    quiet_inner_cargo();
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
}

/// aya-build forwards every stderr line of its inner `cargo build` (Compiling …, Finished …)
/// as a `cargo::warning`, so each build would show ~40 "warnings" that are only progress.
/// Quiet mode (inherited through the environment) leaves cargo's stderr to real problems;
/// compiler diagnostics arrive as JSON on stdout and are still shown.
fn quiet_inner_cargo() {
    // SAFETY: the build script is single-threaded here; nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
}
