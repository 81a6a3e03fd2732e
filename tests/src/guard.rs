//! The `Guard` fixture: qmail-guard driven through its CLI, with a private qmail home and a
//! private bpffs pin directory, so tests never touch /var/qmail or the production pins
//! (/sys/fs/bpf/qmail-guard) and can run in parallel.

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::bins;
use crate::cgroup::Cgroup;
use crate::cmd;
use crate::netns::Netns;
use crate::nsenter;
use crate::preflight;
use crate::probe::ProbeResult;
use crate::unique::unique_name;

/// qmail-guard bound to one netns: every command runs inside it, because the loader computes
/// the interface addresses of the namespace it runs in. Drop detaches everything it attached
/// and removes its pins, also after a failed assertion.
pub struct Guard<'a> {
    netns: &'a Netns,
    bin: PathBuf,
    home: PathBuf,
    pin_dir: PathBuf,
    /// The errno the loaded programs refuse with, as `status` reported it.
    refusal: Cell<Option<i32>>,
}

impl<'a> Guard<'a> {
    /// A guard with an empty `control/` (no moreipme/notipme yet) and an unused pin dir.
    pub fn new(netns: &'a Netns) -> Guard<'a> {
        let bpffs = preflight::require_bpffs();
        // Resolved now, so a missing binary fails here and not inside Drop.
        let bin = bins::bin_path("qmail-guard");
        let name = unique_name();
        let home = std::env::temp_dir().join(&name);
        fs::create_dir_all(home.join("control"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", home.display()));
        Guard {
            netns,
            bin,
            home,
            pin_dir: bpffs.join(name),
            refusal: Cell::new(None),
        }
    }

    /// The qmail home passed as `--qmail-home`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The pin directory passed as `--pin-dir` (created by qmail-guard, not by the harness).
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Path of a pinned map, e.g. `map("IPME_V4")`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.pin_dir.join("maps").join(name)
    }

    /// Names of the pinned links (`<cgroup-id>-connect4` …); empty if there are none, also
    /// when the pin directory does not exist (nothing attached).
    pub fn pinned_links(&self) -> Vec<String> {
        let mut v: Vec<String> = match fs::read_dir(self.pin_dir.join("links")) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("cannot list {}/links: {e}", self.pin_dir.display()),
        };
        v.sort();
        v
    }

    /// Writes `control/<file>` (e.g. "moreipme") verbatim, so tests control trailing newlines.
    pub fn write_control(&self, file: &str, contents: &str) {
        let p = self.home.join("control").join(file);
        fs::write(&p, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
    }

    /// `qmail-guard ARGS… --pin-dir DIR`, run inside the netns (joined with setns, which keeps
    /// cgroupfs and bpffs visible, unlike `ip netns exec`) and outside any test cgroup.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_with(&self.bin, args)
    }

    /// `command` with another build of qmail-guard (the upgrade test's variant).
    pub fn command_with(&self, bin: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.args(args).arg("--pin-dir").arg(&self.pin_dir);
        // The home is always passed explicitly; a QMAILHOME from the caller must not leak in.
        c.env_remove("QMAILHOME");
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        nsenter::enter(&mut c, None, &self.netns.path());
        c
    }

    /// Runs `qmail-guard ARGS…` and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        cmd::output(&mut self.command(args))
    }

    /// Runs `qmail-guard ARGS…`, panicking on failure; returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        cmd::run_ok(&mut self.command(args))
    }

    fn home_str(&self) -> &str {
        self.home.to_str().expect("UTF-8 temp dir")
    }

    /// `qmail-guard attach --cgroup PATH --qmail-home DIR [--port N]…`.
    pub fn attach_ports(&self, cgroup: &Path, ports: &[u16]) -> Output {
        let cg = cgroup.to_str().expect("UTF-8 cgroup path");
        let mut args = vec!["attach", "--cgroup", cg, "--qmail-home", self.home_str()];
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        for p in &ports {
            args.extend(["--port", p.as_str()]);
        }
        self.run(&args)
    }

    /// Attaches to `cgroup` with the default ports, panicking on failure.
    pub fn attach(&self, cgroup: &Cgroup) {
        let out = self.attach_ports(cgroup.path(), &[]);
        ensure_success("attach", &out);
    }

    /// `qmail-guard detach --cgroup PATH`.
    pub fn detach(&self, cgroup: &Cgroup) -> Output {
        let cg = cgroup.path().to_str().expect("UTF-8 cgroup path");
        self.run(&["detach", "--cgroup", cg])
    }

    /// `qmail-guard sync --qmail-home DIR`.
    pub fn sync(&self) -> Output {
        self.run(&["sync", "--qmail-home", self.home_str()])
    }

    /// What a refused connect returns with the programs this guard loaded: ELOOP, or EPERM
    /// where the kernel lacks bpf_set_retval for them. Read from `status --json` (so from the
    /// loader, not assumed) once programs are loaded, then remembered.
    pub fn refused(&self) -> ProbeResult {
        if let Some(e) = self.refusal.get() {
            return ProbeResult::Errno(e);
        }
        let status = self.status_json();
        let errno = status["refusal_errno"]
            .as_i64()
            .and_then(|e| i32::try_from(e).ok())
            .unwrap_or_else(|| panic!("status --json has no refusal_errno: {status}"));
        assert!(
            [libc::ELOOP, libc::EPERM].contains(&errno),
            "status reports refusal errno {errno}, neither ELOOP nor EPERM"
        );
        self.refusal.set(Some(errno));
        ProbeResult::Errno(errno)
    }

    /// `qmail-guard status --json`, parsed.
    pub fn status_json(&self) -> Value {
        let out = self.run_ok(&["status", "--json"]);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("status --json printed invalid JSON ({e}): {out}"))
    }

    /// `qmail-guard check ADDR PORT`: Some(true) = would be refused (exit 0), Some(false) =
    /// allowed (exit 1), None = any other exit (an error).
    pub fn check(&self, addr: &str, port: u16) -> (Option<bool>, Output) {
        let out = self.run(&["check", addr, &port.to_string()]);
        let verdict = match out.status.code() {
            Some(0) => Some(true),
            Some(1) => Some(false),
            _ => None,
        };
        (verdict, out)
    }
}

/// Panics with the subcommand's output unless it succeeded.
pub fn ensure_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "qmail-guard {what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        remove_guard(&self.bin, &self.pin_dir);
        let _ = fs::remove_dir_all(&self.home);
    }
}

/// Detaches everything pinned under `pin_dir` and removes the directory; warns instead of
/// failing, because it runs from Drop (also during a panic). Shared with xtask's fixtures.
pub fn remove_guard(bin: &Path, pin_dir: &Path) {
    if !pin_dir.exists() {
        return;
    }
    match Command::new(bin)
        .args(["detach", "--all", "--pin-dir"])
        .arg(pin_dir)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "warning: qmail-guard detach --all --pin-dir {} failed: {}",
            pin_dir.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("warning: cannot run qmail-guard detach: {e}"),
    }
    // Unpinning the links detaches them even if the CLI failed above; the cgroup's removal
    // would detach them at the latest.
    if let Err(e) = fs::remove_dir_all(pin_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("warning: cannot remove {}: {e}", pin_dir.display());
    }
}
