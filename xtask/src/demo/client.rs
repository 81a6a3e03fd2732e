//! A client that is not ours: Python's smtplib, placed like any process of qmail's service.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::cmd;
use crate::kit::nat;
use crate::kit::spawn::Placement;

/// Connects with smtplib and prints the greeting, or the errno of the failed connect.
pub const SCRIPT: &str = r#"import errno, smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
s = smtplib.SMTP(timeout=5)
try:
    code, msg = s.connect(host, port)
except OSError as e:
    name = errno.errorcode.get(e.errno, "?")
    print(f"connect to {host}:{port} failed: [Errno {e.errno} {name}] {e.strerror}")
    sys.exit(0)
print(f"connected to {host}:{port}; greeting: {code} {msg.decode(errors='replace')}")
s.quit()
"#;

/// The command line shown to the reader.
pub fn shown() -> String {
    format!(
        "python3 -c 'import smtplib; smtplib.SMTP().connect(\"{}\", 25)'",
        nat::PUBLIC
    )
}

/// Runs the smtplib client with `placement`; returns its one-line verdict.
pub fn run(placement: &Placement) -> Result<String> {
    let mut c = Command::new("python3");
    c.args(["-c", SCRIPT, nat::PUBLIC, "25"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    placement.apply(&mut c)?;
    let out = c
        .output()
        .with_context(|| format!("cannot run `{}`", cmd::display(&c)))?;
    if !out.status.success() {
        bail!(
            "the smtplib client failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
