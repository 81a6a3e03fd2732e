//! A throw-away named network namespace (`ip netns add`), with `lo` up.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::cmd;
use crate::preflight;

/// A network namespace bound at /run/netns/NAME. Drop deletes it (and with it every interface
/// inside, e.g. veth ends, and every nftables table).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates netns `name` and brings its loopback up; fails the test without root.
    pub fn new(name: &str) -> Netns {
        preflight::require_root();
        cmd::run_ok(&mut cmd::command(&["ip", "netns", "add", name]));
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that setns(2) / `nsenter --net=` take.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS…`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]).args(args);
        cmd::run_ok(&mut c)
    }

    /// A command line run inside the netns through `ip netns exec` (fine for ip/nft/sysctl,
    /// which need neither cgroupfs nor bpffs, both hidden by its /sys remount).
    pub fn exec_command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// Runs `argv` inside the netns and returns its output, whatever its exit status.
    pub fn run(&self, argv: &[&str]) -> Output {
        cmd::output(&mut self.exec_command(argv))
    }

    /// Runs `argv` inside the netns, panicking on failure; returns stdout.
    pub fn run_ok(&self, argv: &[&str]) -> String {
        cmd::run_ok(&mut self.exec_command(argv))
    }

    /// Adds `cidr` to `dev`. IPv6 addresses skip duplicate address detection, so they are
    /// usable at once instead of "tentative" for a second or two.
    pub fn add_addr(&self, dev: &str, cidr: &str) {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev]);
        }
    }

    /// Sets a sysctl of this namespace (`net.*` keys are per netns).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.run_ok(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Reads a sysctl of this namespace.
    pub fn sysctl_get(&self, key: &str) -> String {
        self.run_ok(&["sysctl", "-n", key]).trim().to_string()
    }

    /// Loads an nftables ruleset (`nft -f -`) into this namespace.
    pub fn nft(&self, ruleset: &str) {
        cmd::run_ok_with_input(&mut self.exec_command(&["nft", "-f", "-"]), ruleset);
    }

    /// Creates a veth pair, `a_dev` in `a` and `b_dev` in `b` (which may be the same
    /// namespace), and brings both ends up. The pair is created directly inside the
    /// namespaces, so the device names only need to be unique there.
    pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) {
        a.ip(&[
            "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", &b.name,
        ]);
        a.ip(&["link", "set", a_dev, "up"]);
        b.ip(&["link", "set", b_dev, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: cannot delete netns {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: cannot run ip netns del {}: {e}", self.name),
        }
    }
}
