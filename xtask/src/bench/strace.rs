//! Counting a program's system calls with `strace -f -c` — in a run of its own, since tracing
//! slows every call down.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::kit::{names, spawn};

/// Runs `c`'s program, arguments and working directory under strace, with exactly the
/// environment `env` (Command cannot tell whether `c` cleared its own) and `stdin` on fd 0;
/// returns the total number of system calls, execve included.
pub fn count(c: &Command, env: &[(&str, &OsStr)], stdin: &Path) -> Result<u64> {
    let out = std::env::temp_dir().join(format!("{}.strace", names::name("bench")));
    let mut s = Command::new("strace");
    s.args(["-f", "-c", "-U", "calls", "-o"])
        .arg(&out)
        .arg("--")
        .arg(c.get_program())
        .args(c.get_args())
        .env_clear()
        .envs(env.iter().copied())
        .stdin(spawn::stdin_file(stdin)?)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(d) = c.get_current_dir() {
        s.current_dir(d);
    }
    let st = s.status().context("cannot run strace");
    let text = std::fs::read_to_string(&out);
    let _ = std::fs::remove_file(&out);
    let st = st?;
    if !st.success() {
        bail!("strace {:?} failed ({st})", c.get_program());
    }
    total_calls(&text.context("cannot read strace's summary")?)
}

/// The number on the `total` line of `strace -c -U calls`.
fn total_calls(summary: &str) -> Result<u64> {
    summary
        .lines()
        .find_map(|l| l.trim().strip_suffix("total"))
        .and_then(|n| n.trim().parse().ok())
        .context("no `N total` line in strace's summary")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_total_line() {
        let s = "    calls syscall\n--------- ----\n        1 execve\n--------- ----\n       29 total\n";
        assert_eq!(total_calls(s).unwrap(), 29);
        assert!(total_calls("nothing").is_err());
    }
}
