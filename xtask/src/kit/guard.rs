//! qmail-guard driven through its CLI, as an administrator would, with a private pin directory
//! (never the production /sys/fs/bpf/qmail-guard). Every command runs inside the scene's
//! network namespace, because the loader computes the interface addresses of the namespace it
//! runs in. Drop detaches everything and removes the pins, also after an error or Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, Result, bail};

use super::harness::attempt;
use super::names;
use super::spawn::Placement;
use crate::cmd;

/// Subcommands that take `--pin-dir`.
const WITH_PINS: [&str; 6] = ["attach", "detach", "sync", "status", "check", "run"];

pub struct Guard {
    bin: PathBuf,
    pin_dir: PathBuf,
    netns: PathBuf,
    home: PathBuf,
}

impl Guard {
    /// A guard for the namespace bound at `netns`, reading control files from `home`, pinning
    /// under /sys/fs/bpf/qgx<pid>-<role>.
    pub fn new(bin: PathBuf, netns: &Path, home: &Path, role: &str) -> Result<Guard> {
        let bpffs = attempt("bpffs", guard_tests::preflight::require_bpffs)?;
        Ok(Guard {
            bin,
            pin_dir: bpffs.join(names::name(role)),
            netns: netns.to_path_buf(),
            home: home.to_path_buf(),
        })
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// A pinned map, e.g. `map("IPME_V4")`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.pin_dir.join("maps").join(name)
    }

    /// A pinned program, e.g. `prog("connect4")`.
    pub fn prog(&self, name: &str) -> PathBuf {
        self.pin_dir.join("progs").join(name)
    }

    /// `qmail-guard ARGS… [--pin-dir DIR]` placed in the namespace, output captured.
    pub fn command(&self, args: &[&str]) -> Result<Command> {
        let mut c = Command::new(&self.bin);
        c.args(args);
        if args.first().is_some_and(|a| WITH_PINS.contains(a)) {
            c.arg("--pin-dir").arg(&self.pin_dir);
        }
        // The home is always explicit; a caller's QMAILHOME must not leak in.
        c.env_remove("QMAILHOME");
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Placement::netns(&self.netns).apply(&mut c)?;
        Ok(c)
    }

    /// Runs `qmail-guard ARGS…`, whatever its exit status.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        let mut c = self.command(args)?;
        c.output()
            .with_context(|| format!("cannot run `{}`", cmd::display(&c)))
    }

    /// Runs `qmail-guard ARGS…`; fails with its stderr unless it succeeds; returns stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.output(args)?;
        if !out.status.success() {
            bail!(
                "qmail-guard {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The attach arguments for `cgroup` (also printed for the reader).
    pub fn attach_args(&self, cgroup: &Path) -> Vec<String> {
        vec![
            "attach".into(),
            "--cgroup".into(),
            cgroup.display().to_string(),
            "--qmail-home".into(),
            self.home.display().to_string(),
        ]
    }

    /// `qmail-guard attach --cgroup PATH --qmail-home HOME`.
    pub fn attach(&self, cgroup: &Path) -> Result<String> {
        let args = self.attach_args(cgroup);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        guard_tests::guard::remove_guard(&self.bin, &self.pin_dir);
    }
}
