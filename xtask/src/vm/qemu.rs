//! Booting a kernel under QEMU (software emulation: TCG with every CPU feature it has), the
//! host's `/` shared read-only over 9p, and following the guest's `@@qg` lines on the serial
//! console until it powers off, fails or runs out of time.

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::guest::MARK;
use super::initramfs::{INIT_VAR, PLAN_VAR, ROOT_TAG};

pub struct Boot<'a> {
    pub label: &'a str,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub init: &'a Path,
    pub plan: &'a Path,
    pub console_log: &'a Path,
    pub memory_mib: u32,
    pub cpus: u32,
    pub timeout: Duration,
}

/// What one boot produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// From starting QEMU to the guest's `up` line.
    pub boot: Option<Duration>,
    /// From `up` to `done`.
    pub tests: Option<Duration>,
    /// (group, passed, seconds) in the order the guest ran them.
    pub results: Vec<(String, bool, f64)>,
    /// The guest's own error line, or why the host gave up.
    pub error: Option<String>,
    pub done: bool,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.done && self.error.is_none() && self.results.iter().all(|r| r.1)
    }
}

enum Line {
    Text(String),
    Eof,
}

pub fn boot(b: &Boot) -> Result<Outcome> {
    let qemu = "qemu-system-x86_64";
    let append = format!(
        "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic {INIT_VAR}={} {PLAN_VAR}={}",
        b.init.display(),
        b.plan.display()
    );
    let fsdev =
        format!("local,id={ROOT_TAG},path=/,security_model=none,readonly=on,multidevs=remap");
    let mut c = Command::new(qemu);
    c.args(["-accel", "tcg", "-cpu", "max", "-nodefaults", "-no-reboot"])
        .args(["-display", "none", "-serial", "stdio", "-nic", "none"])
        .args(["-m", &b.memory_mib.to_string(), "-smp", &b.cpus.to_string()])
        .arg("-kernel")
        .arg(b.kernel)
        .arg("-initrd")
        .arg(b.initramfs)
        .args(["-append", &append])
        .args(["-fsdev", &fsdev])
        .args([
            "-device",
            &format!("virtio-9p-pci,fsdev={ROOT_TAG},mount_tag={ROOT_TAG}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = c.spawn().with_context(|| {
        format!("cannot run {qemu}: install qemu-system-x86 (`cargo xtask setup` does)")
    })?;
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let stderr = child.stderr.take().context("qemu has no stderr")?;
    let (tx, rx) = mpsc::channel();
    let tx_err = tx.clone();
    std::thread::spawn(move || forward(BufReader::new(stdout), tx));
    let stderr_thread = std::thread::spawn(move || {
        let mut s = String::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            s.push_str(&l);
            s.push('\n');
        }
        drop(tx_err);
        s
    });
    let mut log = fs::File::create(b.console_log)
        .with_context(|| format!("cannot create {}", b.console_log.display()))?;
    let mut out = Outcome::default();
    let mut up_at = None;
    let deadline = started + b.timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(Line::Text(l)) => l,
            Ok(Line::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                out.error = Some(format!(
                    "no power-off within {} s: killed QEMU",
                    b.timeout.as_secs()
                ));
                let _ = child.kill();
                break;
            }
        };
        let _ = writeln!(log, "{line}");
        println!("[{}] {line}", b.label);
        let Some(rest) = line.split_once(MARK).map(|(_, r)| r.trim()) else {
            continue;
        };
        let mut w = rest.splitn(2, ' ');
        match (w.next(), w.next()) {
            (Some("up"), _) => {
                let now = Instant::now();
                out.boot = Some(now - started);
                up_at = Some(now);
            }
            (Some("result"), Some(r)) => {
                let f: Vec<&str> = r.split_whitespace().collect();
                if let [name, verdict, secs] = f[..] {
                    out.results.push((
                        name.to_string(),
                        verdict == "pass",
                        secs.parse().unwrap_or(f64::NAN),
                    ));
                }
            }
            (Some("done"), _) => {
                out.done = true;
                out.tests = up_at.map(|t| t.elapsed());
            }
            (Some("error"), Some(e)) => out.error = Some(format!("guest: {e}")),
            _ => {}
        }
    }
    let status = child.wait().context("cannot wait for qemu")?;
    let stderr = stderr_thread.join().unwrap_or_default();
    if !status.success() && out.error.is_none() {
        out.error = Some(format!("{qemu} failed ({status}): {}", stderr.trim()));
    }
    if !out.done && out.error.is_none() {
        out.error = Some(format!(
            "the guest stopped before finishing (see {})",
            b.console_log.display()
        ));
    }
    Ok(out)
}

/// Console lines, without the serial line's carriage returns.
fn forward(r: impl std::io::BufRead, tx: mpsc::Sender<Line>) {
    for chunk in r.split(b'\n') {
        let Ok(bytes) = chunk else { break };
        let text = String::from_utf8_lossy(&bytes)
            .trim_end_matches('\r')
            .to_string();
        if tx.send(Line::Text(text)).is_err() {
            return;
        }
    }
    let _ = tx.send(Line::Eof);
}
