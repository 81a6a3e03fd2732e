//! Running external commands with errors that name the command that failed.

use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, Result, bail};

/// The command as a shell-like line, for messages (`cargo build --workspace`).
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with the terminal's stdio; fails if it cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let d = display(cmd);
    let status = cmd.status().with_context(|| format!("cannot run `{d}`"))?;
    if !status.success() {
        bail!("`{d}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails (quoting stderr) if it exits non-zero.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let out = probe(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

/// Runs `cmd` capturing its output, whatever its exit status; fails only if it cannot start.
pub fn probe(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", display(cmd)))
}
