//! Running helper commands (ip, nft, bpftool, the binaries under test) with readable failures.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Shell-like rendering of a command, for failure messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion and returns its output; panics only if it cannot be started.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null());
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)))
}

/// Runs `cmd`, feeding `input` on stdin.
pub fn output_with_input(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write to `{}`: {e}", describe(cmd)));
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for `{}`: {e}", describe(cmd)))
}

/// Panics with the command line, status, stdout and stderr unless `out` is a success.
pub fn ensure_success(cmd: &Command, out: &Output) {
    assert!(
        out.status.success(),
        "`{}` failed ({}):\nstdout: {}\nstderr: {}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd`, panics on failure, returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    ensure_success(cmd, &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` with `input` on stdin, panics on failure, returns stdout.
pub fn run_ok_with_input(cmd: &mut Command, input: &str) -> String {
    let out = output_with_input(cmd, input);
    ensure_success(cmd, &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Convenience: `Command::new(argv[0]).args(&argv[1..])`.
pub fn command(argv: &[&str]) -> Command {
    let (prog, args) = argv.split_first().expect("empty command line");
    let mut c = Command::new(prog);
    c.args(args);
    c
}
