//! Man pages and shell completions, rendered from the clap definitions the binaries parse
//! with (so they cannot drift apart), plus hand-written sections from `man/`.
//!
//! `qmail-guard(8)` is one page: the generated name, synopsis, description and options, then
//! one subsection per command with its own synopsis and options, then the hand-written
//! sections. `cargo xtask deb` runs the `qmail-guard-docs` binary to write them.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use clap::{Command, CommandFactory as _};
use clap_complete::Shell;
use clap_mangen::Man;

use crate::{args::Cli, ipmeprint_args};

const SECTION: &str = "8";
const MANUAL: &str = "System Manager's Manual";
const QMAIL_GUARD_EXTRA: &str = include_str!("../man/qmail-guard.8.extra");
const IPMEPRINT_EXTRA: &str = include_str!("../man/ipmeprint.8.extra");

#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct DocsError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// The binaries documented here, with their commands and hand-written sections.
fn pages() -> [(Command, &'static str); 2] {
    [
        (Cli::command(), QMAIL_GUARD_EXTRA),
        (ipmeprint_args::Args::command(), IPMEPRINT_EXTRA),
    ]
}

/// Writes `DIR/man/NAME.8` and `DIR/completions/{bash,zsh,fish}/…` for every binary; returns
/// the files written.
pub fn write_all(dir: &Path) -> Result<Vec<PathBuf>, DocsError> {
    let mut written = Vec::new();
    for (cmd, extra) in pages() {
        let name = cmd.get_name().to_string();
        let page = man_page(cmd.clone(), extra).map_err(|e| err(dir, e))?;
        written.push(write(
            &dir.join("man").join(format!("{name}.{SECTION}")),
            &page,
        )?);
        for (shell, file) in [
            (Shell::Bash, name.clone()),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), &name, &mut buf);
            let path = dir.join("completions").join(shell.to_string()).join(file);
            written.push(write(&path, &buf)?);
        }
    }
    Ok(written)
}

fn err(path: &Path, source: io::Error) -> DocsError {
    DocsError {
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<PathBuf, DocsError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
    }
    fs::write(path, bytes).map_err(|e| err(path, e))?;
    Ok(path.to_path_buf())
}

/// One roff page: the generated sections, a COMMANDS section if the binary has subcommands,
/// the hand-written `extra`, and the version.
pub fn man_page(cmd: Command, extra: &str) -> io::Result<Vec<u8>> {
    let version = cmd.get_version().unwrap_or_default().to_string();
    let name = cmd.get_name().to_string();
    let man = Man::new(cmd.clone())
        .section(SECTION)
        .manual(MANUAL)
        .source(format!("{name} {version}"));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let subs: Vec<&Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect();
    if !subs.is_empty() {
        writeln!(out, ".SH COMMANDS")?;
        for sub in subs {
            command_subsection(&mut out, &name, sub)?;
        }
    }
    out.extend_from_slice(extra.as_bytes());
    if !extra.ends_with('\n') {
        out.push(b'\n');
    }
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// `.SS parent sub`, then the subcommand's synopsis, description and options as clap_mangen
/// renders them for a page of its own, with their `.SH` headings turned into paragraphs.
fn command_subsection(out: &mut Vec<u8>, parent: &str, sub: &Command) -> io::Result<()> {
    let full = format!("{parent} {}", sub.get_name());
    writeln!(out, ".SS \"{full}\"")?;
    let man = Man::new(sub.clone().display_name(full.clone()).bin_name(full));
    let mut buf = Vec::new();
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    man.render_options_section(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    for line in text.lines() {
        match line.strip_prefix(".SH ") {
            Some(h) if h.trim_matches('"') == "OPTIONS" => writeln!(out, ".PP\n.I Options:")?,
            Some(_) => writeln!(out, ".PP")?,
            None => writeln!(out, "{line}")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(cmd: Command, extra: &str) -> String {
        String::from_utf8(man_page(cmd, extra).unwrap()).unwrap()
    }

    #[test]
    fn qmail_guard_page_documents_every_command_and_option() {
        let text = page(Cli::command(), QMAIL_GUARD_EXTRA);
        assert!(
            text.starts_with(".ie") || text.contains(".TH qmail-guard 8"),
            "{text}"
        );
        for sub in Cli::command().get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            assert!(
                text.contains(&format!(".SS \"qmail-guard {}\"", sub.get_name())),
                "no subsection for {}",
                sub.get_name()
            );
            for arg in sub.get_arguments() {
                if let Some(long) = arg.get_long() {
                    assert!(
                        text.contains(&format!("\\-\\-{}", long.replace('-', "\\-"))),
                        "{} --{long} is not in the page",
                        sub.get_name()
                    );
                }
            }
        }
        for heading in [
            "THE REFUSAL",
            "SYSTEMD",
            "UPGRADE AND REMOVAL",
            "FILES",
            "EXIT STATUS",
            "SEE ALSO",
            "VERSION",
        ] {
            assert!(text.contains(&format!(".SH {heading}")), "no {heading}");
        }
        assert!(!text.contains(".SH SYNOPSIS\n.SH"), "empty synopsis");
    }

    #[test]
    fn ipmeprint_page_has_its_options_and_exit_codes() {
        let text = page(ipmeprint_args::Args::command(), IPMEPRINT_EXTRA);
        assert!(text.contains("\\-\\-qmail\\-home"));
        assert!(text.contains("\\-\\-verbose"));
        assert!(text.contains(".SH EXIT STATUS"));
        assert!(!text.contains(".SH COMMANDS"));
    }

    #[test]
    fn writes_pages_and_completions() {
        let dir = std::env::temp_dir().join(format!("qmail-guard-docs-{}", std::process::id()));
        let files = write_all(&dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
            .collect();
        for want in [
            "man/qmail-guard.8",
            "man/ipmeprint.8",
            "completions/bash/qmail-guard",
            "completions/zsh/_qmail-guard",
            "completions/fish/qmail-guard.fish",
            "completions/bash/ipmeprint",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        let bash = fs::read_to_string(dir.join("completions/bash/qmail-guard")).unwrap();
        assert!(bash.contains("attach") && bash.contains("--pin-dir"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
