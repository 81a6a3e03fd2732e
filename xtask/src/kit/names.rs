//! Names for the kernel objects the demo and the bench create: `qgx<pid>-<role>`, unique per
//! run (the pid) and easy to find by hand if a run was killed with SIGKILL (`ip netns | grep
//! qgx`, `ls /sys/fs/cgroup/unified | grep qgx`, `ls /sys/fs/bpf | grep qgx`).

/// Prefix of every object the xtask creates.
pub const PREFIX: &str = "qgx";

/// `qgx<pid>-<role>`; roles are short words (`mail`, `router`, `v3`).
pub fn name(role: &str) -> String {
    format!("{PREFIX}{}-{role}", std::process::id())
}
