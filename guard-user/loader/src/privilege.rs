//! Whether this process may use the pins at all. Without the capabilities, bpf(2) and the
//! 0700 pin directory answer with EPERM/EACCES or "not found", which read like "not attached";
//! checking first turns all of them into one sentence.
use std::fs;

/// The capability numbers from include/uapi/linux/capability.h.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// The sentence every command prints when it lacks the capabilities.
pub const NEEDS_ROOT: &str = "needs root (CAP_BPF and CAP_SYS_ADMIN)";

/// True if the effective capabilities allow loading, pinning and attaching: CAP_SYS_ADMIN,
/// and CAP_BPF on kernels that know it (>= 5.8). Unreadable status counts as "no".
pub fn has_bpf_privileges() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
    else {
        return false;
    };
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let last_cap = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    has(CAP_SYS_ADMIN) && (last_cap < CAP_BPF || has(CAP_BPF))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real process: root (the test harness runs as root) has the capabilities, and the
    /// answer agrees with the effective uid for an ordinary setup.
    #[test]
    fn agrees_with_euid() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            assert!(has_bpf_privileges());
        } else {
            assert!(!has_bpf_privileges());
        }
    }
}
