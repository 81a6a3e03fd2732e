//! The two pinned Rust toolchains: the host one from rust-toolchain.toml (clippy, rustfmt) and
//! the eBPF nightly (rust-src) that guard-user/loader/build.rs builds guard-ebpf with.
//! `RUSTUP_AUTO_INSTALL=0` machines install nothing implicitly, so setup installs both.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cmd, workspace};

/// The eBPF nightly. guard-user/loader/build.rs names it too; `check_ebpf_pin` fails if they differ.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-10-20";
/// Components the eBPF build needs (`-Z build-std=core` for bpfel-unknown-none).
pub const EBPF_COMPONENTS: &[&str] = &["rust-src"];

/// A toolchain and the components it must have.
#[derive(Debug)]
pub struct Toolchain {
    pub name: String,
    pub components: Vec<String>,
}

/// The host toolchain pinned in rust-toolchain.toml (`channel` and `components`).
pub fn host() -> Result<Toolchain> {
    let path = workspace::root().join("rust-toolchain.toml");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_toolchain_toml(&text).with_context(|| format!("in {}", path.display()))
}

/// The eBPF nightly, after checking guard-user/loader/build.rs pins the same one.
pub fn ebpf() -> Result<Toolchain> {
    let path = workspace::root().join("guard-user/loader/build.rs");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if !text.contains(&format!("\"{EBPF_TOOLCHAIN}\"")) {
        bail!(
            "{} does not name the eBPF toolchain {EBPF_TOOLCHAIN} that xtask installs: \
             update xtask/src/toolchain.rs EBPF_TOOLCHAIN to match it",
            path.display()
        );
    }
    Ok(Toolchain {
        name: EBPF_TOOLCHAIN.to_string(),
        components: EBPF_COMPONENTS.iter().map(|c| c.to_string()).collect(),
    })
}

/// Minimal reader for the `[toolchain]` table's `channel = "…"` and `components = […]` lines.
fn parse_toolchain_toml(text: &str) -> Result<Toolchain> {
    let mut name = None;
    let mut components = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let quoted = value.split('"').skip(1).step_by(2).map(str::to_string);
        match key.trim() {
            "channel" => name = quoted.into_iter().next(),
            "components" => components = quoted.collect(),
            _ => {}
        }
    }
    let name = name.context("no `channel = \"…\"` line")?;
    Ok(Toolchain { name, components })
}

/// Installs the toolchain and its components unless rustup already has them all.
pub fn ensure(t: &Toolchain) -> Result<()> {
    let missing = missing_components(t)?;
    match missing {
        Some(m) if m.is_empty() => {
            println!(
                "ok: toolchain {} present (components: {})",
                t.name,
                list(&t.components)
            );
            return Ok(());
        }
        Some(m) => println!(
            "installing components {} of toolchain {} …",
            m.join(", "),
            t.name
        ),
        None => println!(
            "installing toolchain {} ({}) …",
            t.name,
            list(&t.components)
        ),
    }
    let mut c = Command::new("rustup");
    // No self-update: installing a toolchain should not replace rustup itself (the dist
    // server's rustup can be older than the machine's).
    c.args([
        "toolchain",
        "install",
        "--no-self-update",
        &t.name,
        "--profile",
        "minimal",
    ]);
    for comp in &t.components {
        c.args(["--component", comp]);
    }
    cmd::run(&mut c)?;
    match missing_components(t)? {
        Some(m) if m.is_empty() => {
            println!("ok: toolchain {} installed", t.name);
            Ok(())
        }
        Some(m) => bail!(
            "toolchain {} still lacks components {} after install",
            t.name,
            m.join(", ")
        ),
        None => bail!(
            "toolchain {} is still not listed by rustup after install",
            t.name
        ),
    }
}

/// `None` if the toolchain is not installed, else the components it lacks.
fn missing_components(t: &Toolchain) -> Result<Option<Vec<String>>> {
    let toolchains = cmd::stdout(Command::new("rustup").args(["toolchain", "list"]))?;
    let installed = toolchains.lines().any(|l| {
        let n = l.split_whitespace().next().unwrap_or("");
        n == t.name || n.starts_with(&format!("{}-", t.name))
    });
    if !installed {
        return Ok(None);
    }
    let comps = cmd::stdout(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        &t.name,
    ]))?;
    let have: Vec<&str> = comps.lines().map(str::trim).collect();
    Ok(Some(
        t.components
            .iter()
            .filter(|c| {
                !have
                    .iter()
                    .any(|h| *h == c.as_str() || h.starts_with(&format!("{c}-")))
            })
            .cloned()
            .collect(),
    ))
}

/// `rustc +TOOLCHAIN --print sysroot`.
pub fn sysroot(toolchain: &str) -> Result<PathBuf> {
    let out = cmd::stdout(
        Command::new("rustc")
            .arg(format!("+{toolchain}"))
            .args(["--print", "sysroot"])
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    Ok(PathBuf::from(out.trim()))
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pinned_toolchain() {
        let t = parse_toolchain_toml(
            "# host\n[toolchain]\nchannel = \"1.99.1\"\ncomponents = [\"clippy\", \"rustfmt\"]\nprofile = \"minimal\"\n",
        )
        .unwrap();
        assert_eq!(t.name, "1.99.1");
        assert_eq!(t.components, ["clippy", "rustfmt"]);
    }

    #[test]
    fn a_file_without_channel_is_an_error() {
        assert!(parse_toolchain_toml("[toolchain]\n").is_err());
    }

    #[test]
    fn ci_and_readme_install_the_pinned_host_toolchain_first() {
        // `cargo xtask` cannot start before the pinned toolchain is there (RUSTUP_AUTO_INSTALL=0):
        // both run rustup's install of the rust-toolchain.toml toolchain before it.
        for file in [".ci/run", "README.md"] {
            let text = fs::read_to_string(workspace::root().join(file)).unwrap();
            let install = text
                .lines()
                .position(|l| l.trim_start().starts_with("rustup toolchain install"))
                .unwrap_or_else(|| panic!("{file} lacks `rustup toolchain install`"));
            let xtask = text
                .lines()
                .position(|l| l.trim_start().starts_with("cargo xtask test"))
                .unwrap_or_else(|| panic!("{file} lacks `cargo xtask test`"));
            assert!(install < xtask, "{file} runs cargo xtask before rustup");
        }
    }

    #[test]
    fn the_workspace_pins_agree() {
        assert!(host().is_ok());
        assert_eq!(ebpf().unwrap().name, EBPF_TOOLCHAIN);
    }
}
