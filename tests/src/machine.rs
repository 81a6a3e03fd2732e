//! A real systemd, booted with systemd-nspawn on the cached Debian image, for testing the
//! shipped units as systemd runs them.
//!
//! No host systemd or dbus is needed: nspawn runs with `--register=no --keep-unit` from a
//! cgroup of its own (on the cgroup2 mount and, on hybrid hosts, in the v1 `name=systemd`
//! hierarchy, which nspawn also requires). The container gets a cgroup namespace rooted at
//! `<that cgroup>/payload`, so a unit's `ControlGroup` maps to a host path under it; its own
//! network namespace (only `lo`); a private bpffs directory bound as its `/sys/fs/bpf`, so its
//! pins never meet the host's; and a root that is a tmpfs overlay on the read-only image, so
//! nothing it writes survives it. Drop stops it, kills leftovers and removes the cgroups and
//! the bpffs directory, also after a failed assertion.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd;
use crate::machine_image;
use crate::mountinfo;
use crate::nsenter;
use crate::preflight;
use crate::unique::unique_name;

/// Boot takes under a second on an idle host; the limit allows for a loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// A clean poweroff takes under a second.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// PATH inside the container (the host's PATH names host-only directories).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A file of the host bind-mounted read-only into the container.
pub struct Bind<'a> {
    pub host: &'a Path,
    pub inside: &'a str,
}

/// A booted container. See the module documentation.
pub struct Machine {
    name: String,
    nspawn: Child,
    /// Host pid of the container's PID 1.
    leader: u32,
    /// The launcher cgroup on the cgroup2 mount.
    cgroup: PathBuf,
    /// The host bpffs directory that is the container's /sys/fs/bpf.
    bpf_dir: PathBuf,
    /// nspawn's own output (the console is passive).
    log: PathBuf,
    /// Removed after the container has stopped (fields drop after `Drop::drop`).
    _resources: Resources,
}

impl Machine {
    /// Boots a container with `binds` and waits until systemd reports the boot finished.
    pub fn boot(binds: &[Bind<'_>]) -> Machine {
        let cg2 = preflight::require_cgroup2();
        let bpffs = preflight::require_bpffs();
        let image = machine_image::require();
        let nspawn = which("systemd-nspawn").unwrap_or_else(|| {
            panic!(
                "systemd-nspawn is not installed: `cargo xtask setup` installs systemd-container"
            )
        });
        let name = unique_name();
        let cgroup = cg2.join(&name);
        let log = std::env::temp_dir().join(format!("{name}.console"));
        // Each piece joins `res` as soon as it exists, so a failure below still removes it.
        let mut res = Resources {
            cgroup: None,
            cgroup_v1: None,
            bpf_dir: None,
            log: log.clone(),
        };
        fs::create_dir(&cgroup)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", cgroup.display()));
        res.cgroup = Some(cgroup.clone());
        let cgroup_v1 = systemd_v1_mount().map(|m| m.join(&name));
        if let Some(v1) = &cgroup_v1 {
            fs::create_dir(v1)
                .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", v1.display()));
            res.cgroup_v1 = Some(v1.clone());
        }
        let bpf_dir = bpffs.join(&name);
        fs::create_dir(&bpf_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", bpf_dir.display()));
        res.bpf_dir = Some(bpf_dir.clone());

        let console = fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let console_err = console
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot dup {}: {e}", log.display()));
        let mut c = Command::new(nspawn);
        c.arg("--directory")
            .arg(&image)
            .args([
                "--boot",
                "--quiet",
                "--machine",
                &name,
                // No host systemd/dbus to register with or to get a scope from.
                "--register=no",
                "--keep-unit",
                // The image stays read-only; everything written goes to a tmpfs.
                "--volatile=overlay",
                "--private-network",
                "--console=passive",
                // nspawn's default seccomp filter blocks bpf(2).
                "--system-call-filter=bpf",
                "--capability=CAP_BPF,CAP_PERFMON",
            ])
            .arg(format!("--bind={}:/sys/fs/bpf", bpf_dir.display()));
        for b in binds {
            c.arg(format!("--bind-ro={}:{}", b.host.display(), b.inside));
        }
        c.stdin(Stdio::null()).stdout(console).stderr(console_err);
        join_cgroups_before_exec(&mut c, &cgroup, cgroup_v1.as_deref());
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", cmd::describe(&c)));
        let mut m = Machine {
            name,
            nspawn: child,
            leader: 0,
            cgroup,
            bpf_dir,
            log,
            _resources: res,
        };
        m.leader = m.wait_for_leader();
        m.wait_for_boot();
        m
    }

    /// The machine (and launcher cgroup, and bpffs directory) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host bpffs directory that the container sees as /sys/fs/bpf.
    pub fn bpf_dir(&self) -> &Path {
        &self.bpf_dir
    }

    /// The container's network namespace, for setns(2) from the host.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.leader))
    }

    /// A path inside the container as the host reaches it (through PID 1's root).
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/{}",
            self.leader,
            inside.trim_start_matches('/')
        ))
    }

    /// Writes a file inside the container, creating its parent directories.
    pub fn write(&self, inside: &str, contents: &str) {
        let p = self.path(inside);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        fs::write(&p, contents)
            .unwrap_or_else(|e| panic!("cannot write {inside} in {}: {e}", self.name));
    }

    /// Reads a file inside the container; None if it does not exist.
    pub fn read(&self, inside: &str) -> Option<String> {
        match fs::read_to_string(self.path(inside)) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => panic!("cannot read {inside} in {}: {e}", self.name),
        }
    }

    /// The host directory of a cgroup the container names `inside` (e.g. a unit's
    /// `ControlGroup`, `/system.slice/qmail.service`): its cgroup namespace is rooted at
    /// `<launcher cgroup>/payload`.
    pub fn host_cgroup(&self, inside: &str) -> PathBuf {
        self.cgroup
            .join("payload")
            .join(inside.trim_start_matches('/'))
    }

    /// A command run inside the container: all its namespaces (nsenter), a clean environment.
    /// It stays in the caller's cgroup, outside every unit.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("--target")
            .arg(self.leader.to_string())
            .args([
                "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup", "--",
            ])
            .args(["env", "-i", &format!("PATH={PATH}"), "LANG=C.UTF-8"])
            .args(argv);
        c
    }

    /// Runs `argv` inside the container; returns its output whatever the exit status.
    pub fn exec(&self, argv: &[&str]) -> Output {
        cmd::output(&mut self.command(argv))
    }

    /// Runs `argv` inside the container, failing the test (with the journal) if it fails.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "`{}` failed in {} ({}):\nstdout: {}\nstderr: {}\njournal:\n{}",
            argv.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.journal_tail(60)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl ARGS…` inside the container, whatever the exit status.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut argv = vec!["systemctl"];
        argv.extend_from_slice(args);
        self.exec(&argv)
    }

    /// `systemctl ARGS…`, failing the test on a non-zero exit.
    pub fn systemctl_ok(&self, args: &[&str]) -> String {
        let mut argv = vec!["systemctl"];
        argv.extend_from_slice(args);
        self.exec_ok(&argv)
    }

    /// One property of a unit (`systemctl show -p NAME --value UNIT`).
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.systemctl_ok(&["show", "-p", name, "--value", "--", unit])
            .trim()
            .to_string()
    }

    /// The last `lines` journal lines (all units), for failure messages.
    pub fn journal_tail(&self, lines: u32) -> String {
        let out = self
            .command(&["journalctl", "--no-pager", "-q", "-n", &lines.to_string()])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("(cannot run journalctl: {e})"),
        }
    }

    /// The journal of one unit, for checks and failure messages.
    pub fn journal(&self, unit: &str) -> String {
        let out = self.exec(&["journalctl", "--no-pager", "-q", "-o", "cat", "-u", unit]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The host pid of the container's PID 1 (the process in the payload cgroup whose pid in
    /// its own namespace is 1).
    fn wait_for_leader(&mut self) -> u32 {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Some(pid) = pids_below(&self.cgroup.join("payload"))
                .into_iter()
                .find(|&p| innermost_pid(p) == Some(1))
            {
                return pid;
            }
            self.assert_nspawn_alive("starting");
            assert!(
                Instant::now() < deadline,
                "the container {} did not start within {BOOT_TIMEOUT:?}:\n{}",
                self.name,
                self.console()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `systemctl is-system-running` until the boot has finished.
    fn wait_for_boot(&mut self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let out = self.exec(&["systemctl", "is-system-running"]);
            let last = String::from_utf8_lossy(&out.stdout).trim().to_string();
            match last.as_str() {
                "running" => return,
                // A unit of the image failed: not ours to judge, but say which.
                "degraded" => {
                    let failed = self.exec(&["systemctl", "--failed", "--no-legend"]);
                    eprintln!(
                        "note: container {} booted degraded: {}",
                        self.name,
                        String::from_utf8_lossy(&failed.stdout).trim()
                    );
                    return;
                }
                _ => {}
            }
            self.assert_nspawn_alive("booting");
            assert!(
                Instant::now() < deadline,
                "the container {} did not finish booting within {BOOT_TIMEOUT:?} (last state {last:?}):\n{}",
                self.name,
                self.console()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn assert_nspawn_alive(&mut self, when: &str) {
        if let Ok(Some(status)) = self.nspawn.try_wait() {
            panic!(
                "systemd-nspawn exited while {when} ({status}):\n{}",
                self.console()
            );
        }
    }

    /// nspawn's output so far.
    fn console(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the container: SIGTERM to nspawn is a clean poweroff; then whatever is left in
    /// the launcher cgroup is killed.
    fn shutdown(&mut self) {
        let pid = self.nspawn.id() as libc::pid_t;
        if self.nspawn.try_wait().ok().flatten().is_none() {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
            while self.nspawn.try_wait().ok().flatten().is_none() {
                if Instant::now() >= deadline {
                    eprintln!(
                        "warning: container {} did not power off within {SHUTDOWN_TIMEOUT:?}; killing it",
                        self.name
                    );
                    let _ = self.nspawn.kill();
                    let _ = self.nspawn.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        kill_cgroup(&self.cgroup);
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "container {} console output:\n{}",
                self.name,
                self.console()
            );
        }
        self.shutdown();
    }
}

/// What a container leaves on the host: its launcher cgroups, its bpffs directory (with the
/// pins made inside) and nspawn's output file. Removed on drop.
struct Resources {
    cgroup: Option<PathBuf>,
    cgroup_v1: Option<PathBuf>,
    bpf_dir: Option<PathBuf>,
    log: PathBuf,
}

impl Drop for Resources {
    fn drop(&mut self) {
        for cg in [self.cgroup.take(), self.cgroup_v1.take()]
            .into_iter()
            .flatten()
        {
            remove_cgroup_tree(&cg);
        }
        if let Some(dir) = self.bpf_dir.take() {
            // The pinned links belong to cgroups that are gone now; unpinning frees them.
            if let Err(e) = fs::remove_dir_all(&dir)
                && e.kind() != io::ErrorKind::NotFound
            {
                eprintln!("warning: cannot remove {}: {e}", dir.display());
            }
        }
        let _ = fs::remove_file(&self.log);
    }
}

/// Makes the child join the launcher cgroup(s) between fork and exec, so nspawn starts in a
/// cgroup of its own (it creates `payload` and `supervisor` below it).
fn join_cgroups_before_exec(c: &mut Command, v2: &Path, v1: Option<&Path>) {
    let v2: CString = nsenter::procs_path(v2);
    let v1: Option<CString> = v1.map(nsenter::procs_path);
    let hook = move || -> io::Result<()> {
        // SAFETY: join_cgroup is async-signal-safe (open/write/close).
        unsafe {
            nsenter::join_cgroup(&v2)?;
            if let Some(v1) = &v1 {
                nsenter::join_cgroup(v1)?;
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe calls; its strings were built before fork.
    unsafe {
        c.pre_exec(hook);
    }
}

/// The v1 `name=systemd` hierarchy (hybrid and legacy hosts), if mounted.
fn systemd_v1_mount() -> Option<PathBuf> {
    mountinfo::mounts()
        .unwrap_or_else(|e| panic!("cannot read /proc/self/mountinfo: {e}"))
        .into_iter()
        .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "name=systemd"))
        .map(|m| m.mount_point)
}

/// Every pid in `dir` and the cgroups below it.
fn pids_below(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

/// The pid of `pid` in its innermost pid namespace (last field of `NSpid:`).
fn innermost_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    // Only a process in a pid namespace below ours has more than one field.
    (fields.len() > 2).then(|| fields.last()?.parse().ok())?
}

/// Kills every process left below `dir` (cgroup.kill, kernel 5.14+) and waits for them.
fn kill_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if let Err(e) = fs::write(dir.join("cgroup.kill"), "1") {
        eprintln!(
            "warning: cannot kill the processes in {}: {e}",
            dir.display()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids_below(dir).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Removes a cgroup and every cgroup below it, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    let mut dirs = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        dirs.push(d);
    }
    // Children were pushed after their parents.
    for d in dirs.iter().rev() {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("warning: cannot remove cgroup {}: {e}", d.display());
                    break;
                }
                // EBUSY while an exiting process is still being released.
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// The first `name` on PATH (plus the sbin directories, which root's PATH may lack).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_pid_is_not_in_a_child_pid_namespace() {
        assert_eq!(innermost_pid(std::process::id()), None);
    }
}
