//! Unique, short names for kernel objects: `qgt-<pid>-<n>`.
//!
//! The pid separates concurrent test binaries, the counter separates tests within one binary.
//! Kept short because the names end up in interface-free but length-limited places (netns
//! names appear in paths, cgroup names in /proc/PID/cgroup).

use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every object the harness creates, so leftovers are easy to find by hand.
pub const PREFIX: &str = "qgt-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other live fixture of any test process uses.
pub fn unique_name() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differ_and_carry_prefix_and_pid() {
        let a = unique_name();
        let b = unique_name();
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{PREFIX}{}-", std::process::id())));
    }
}
