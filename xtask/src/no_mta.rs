//! The check that keeps setup away from the host's mail system: no package it installs may be
//! a mail transport agent (one conflicts with every other and takes over /usr/sbin/sendmail),
//! and no install may remove a package. Checked against apt's own data before every install,
//! and by a test on the full list.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd;

/// The virtual package every MTA provides (and conflicts with).
const MTA: &str = "mail-transport-agent";
/// Debian's "the default MTA" virtual package.
const DEFAULT_MTA: &str = "default-mta";

/// Fails if installing `names` (with their dependencies) would bring in or remove an MTA, or
/// remove any package at all.
pub fn check(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let closure = dependency_closure(names)?;
    let mut concrete: Vec<String> = Vec::new();
    for n in &closure {
        match n.strip_prefix('<').and_then(|v| v.strip_suffix('>')) {
            Some(v) if v == MTA || v == DEFAULT_MTA => {
                bail!("refusing to install {}: it depends on {v}", names.join(" "))
            }
            Some(_) => {}
            None => concrete.push(n.clone()),
        }
    }
    concrete.extend(simulated_installs(names)?);
    concrete.sort();
    concrete.dedup();
    let mtas = mta_packages(&concrete)?;
    if !mtas.is_empty() {
        bail!(
            "refusing to install {}: it would bring in {} (mail transport agents; setup never touches the host's mail system)",
            names.join(" "),
            mtas.join(", ")
        );
    }
    Ok(())
}

/// Every package `names` depend on, recursively (Depends and Pre-Depends, every alternative),
/// as `apt-cache depends --recurse` lists them; virtual packages as `<name>`.
fn dependency_closure(names: &[String]) -> Result<BTreeSet<String>> {
    let out = cmd::stdout(
        Command::new("apt-cache")
            .args([
                "depends",
                "--recurse",
                "--no-recommends",
                "--no-suggests",
                "--no-conflicts",
                "--no-breaks",
                "--no-replaces",
                "--no-enhances",
            ])
            .args(names),
    )?;
    Ok(parse_closure(&out))
}

fn parse_closure(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter(|l| !l.starts_with(' ') && !l.is_empty())
        .map(|l| l.trim().to_string())
        .collect()
}

/// What `apt-get install` would install here and now (simulated; with removals forbidden, so
/// the simulation fails if the install would remove anything, e.g. a conflicting MTA).
fn simulated_installs(names: &[String]) -> Result<Vec<String>> {
    let out = cmd::probe(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args([
                "install",
                "--simulate",
                "--no-install-recommends",
                "--no-remove",
                "-q",
            ])
            .args(names),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "apt-get would not install {} without removing packages or at all: {}",
            names.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let removed = parse_simulation(&text, "Remv");
    if !removed.is_empty() {
        bail!(
            "installing {} would remove {}",
            names.join(" "),
            removed.join(", ")
        );
    }
    Ok(parse_simulation(&text, "Inst"))
}

/// Package names of the simulation's `Inst NAME …` (or `Remv NAME …`) lines.
fn parse_simulation(text: &str, verb: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(verb)?.strip_prefix(' '))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The packages among `names` whose candidate version provides or conflicts with
/// mail-transport-agent.
pub fn mta_packages(names: &[String]) -> Result<Vec<String>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let out = cmd::stdout(
        Command::new("apt-cache")
            .args(["show", "--no-all-versions"])
            .args(names),
    )?;
    Ok(parse_mtas(&out))
}

fn parse_mtas(show: &str) -> Vec<String> {
    let mut found = Vec::new();
    for stanza in show.split("\n\n") {
        let field = |key: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .unwrap_or("")
        };
        let names_mta = |list: &str| {
            list.split([',', '|'])
                .filter_map(|item| item.split_whitespace().next())
                .any(|n| n == MTA)
        };
        if names_mta(field("Provides")) || names_mta(field("Conflicts")) {
            found.push(field("Package").trim().to_string());
        }
    }
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mtas_by_provides_or_conflicts() {
        let show = "Package: exim4-daemon-light\nVersion: 4.96\n\
                    Provides: default-mta, exim4-localscanapi-6.0, mail-transport-agent\n\
                    Conflicts: mail-transport-agent\n\n\
                    Package: libidn12\nVersion: 1.41-1\nProvides: libidn11\n\n\
                    Package: postfix\nProvides: default-mta, mail-transport-agent (= 3.7)\n\n\
                    Package: fake\nConflicts: foo | mail-transport-agent\n";
        assert_eq!(parse_mtas(show), ["exim4-daemon-light", "fake", "postfix"]);
    }

    #[test]
    fn a_provides_that_only_contains_the_word_is_not_an_mta() {
        let show = "Package: x\nProvides: mail-transport-agent-doc, not-mail-transport-agent\n";
        assert!(parse_mtas(show).is_empty());
    }

    #[test]
    fn reads_simulation_lines() {
        let sim = "NOTE: This is only a simulation!\n\
                   Inst libidn12 (1.41-1 Debian:12.14/oldstable [amd64])\n\
                   Remv postfix [3.7.11]\n\
                   Conf libidn12 (1.41-1 Debian:12.14/oldstable [amd64])\n";
        assert_eq!(parse_simulation(sim, "Inst"), ["libidn12"]);
        assert_eq!(parse_simulation(sim, "Remv"), ["postfix"]);
    }

    #[test]
    fn reads_the_closure_with_virtual_packages() {
        let out = "gcc\n  Depends: cpp\ncpp\n<debconf-2.0>\n  Depends: x\n";
        let c = parse_closure(out);
        assert!(c.contains("gcc") && c.contains("cpp") && c.contains("<debconf-2.0>"));
        assert_eq!(c.len(), 3);
    }
}
