//! Per-delivery cost of qmail-remote (CPU, wall, peak RSS, system calls) to a loopback SMTP
//! sink, for the benchmark command and the targets. qmail-remote is run directly (no
//! setpriv/ip wrapper) so the child's rusage is its own.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::qmail_remote::QmailHome;
use crate::smtp_sink::{Script, SmtpSink};

/// Medians over the runs (RSS: maximum).
#[derive(Clone, Debug)]
pub struct Stats {
    pub size: usize,
    pub runs: usize,
    /// user + system CPU of qmail-remote, median.
    pub cpu: Duration,
    /// spawn to exit, median.
    pub wall: Duration,
    /// peak resident set size, KiB, maximum over runs.
    pub max_rss_kib: i64,
    /// system calls of one delivery (strace -f -c), if strace is installed.
    pub syscalls: Option<u64>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// A message of `size` bytes: 76-byte lines, like a base64 attachment.
pub fn message(size: usize) -> Vec<u8> {
    let mut m = b"Subject: bench\n\n".to_vec();
    let line = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/ABCDEFGHIJK\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    while m.len() < size - 1 {
        m.push(b'x');
    }
    m.push(b'\n');
    m
}

/// Delivers a `size`-byte message `runs` times with the binary `bin`.
pub fn measure(bin: &Path, size: usize, runs: usize) -> Stats {
    let sink = SmtpSink::start(None, "127.0.0.1:0", Script::default());
    let home = QmailHome::new();
    home.write_control("smtproutes", &format!(":127.0.0.1:{}\n", sink.port()));
    let msg = home.queue_message(&message(size));
    let cmd = |c: &mut Command| {
        c.args(["example.test", "s@x.test", "r@example.test"])
            .env_clear()
            .env("QMAILHOME", home.path())
            .current_dir(home.path().join("queue/mess"))
            .stdin(File::open(&msg).expect("message"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
    };
    let (mut cpu, mut wall, mut rss) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        let mut c = Command::new(bin);
        cmd(&mut c);
        let start = Instant::now();
        let mut child = c.spawn().expect("spawn qmail-remote");
        let mut out = Vec::new();
        let _ = child.stdout.take().expect("piped").read_to_end(&mut out);
        let mut status = 0;
        // SAFETY: rusage is plain data, written by the kernel.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: reaping our own child; std's Child is not waited on afterwards.
        let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
        wall.push(start.elapsed());
        assert!(r > 0 && status == 0, "qmail-remote failed");
        assert!(
            out.starts_with(b"r\0K"),
            "not delivered: {}",
            crate::rspawn::show(&out)
        );
        cpu.push(tv(ru.ru_utime) + tv(ru.ru_stime));
        rss = rss.max(ru.ru_maxrss);
    }
    let syscalls = strace_count(bin, &cmd);
    Stats {
        size,
        runs,
        cpu: median(cpu),
        wall: median(wall),
        max_rss_kib: rss,
        syscalls,
    }
}

/// Total system calls of one run under `strace -f -c`, or None without strace.
fn strace_count(bin: &Path, cmd: &dyn Fn(&mut Command)) -> Option<u64> {
    let out = std::env::temp_dir().join(format!("qr-strace-{}", std::process::id()));
    let mut c = Command::new("strace");
    c.args(["-f", "-c", "-o"]).arg(&out).arg(bin);
    cmd(&mut c);
    let st = c.status().ok()?;
    let text = std::fs::read_to_string(&out).ok()?;
    let _ = std::fs::remove_file(&out);
    if !st.success() {
        return None;
    }
    // "100.00    0.000123           1       105         3 total"
    let total = text.lines().find(|l| l.trim_end().ends_with("total"))?;
    let cols: Vec<&str> = total.split_whitespace().collect();
    cols.get(3)?.parse().ok()
}

/// One Markdown table row.
pub fn row(s: &Stats) -> String {
    format!(
        "| {} | {} | {:.2} ms | {:.2} ms | {:.2} MB | {} |",
        if s.size >= 1 << 20 {
            format!("{} MB", s.size >> 20)
        } else {
            format!("{} KB", s.size >> 10)
        },
        s.runs,
        s.cpu.as_secs_f64() * 1e3,
        s.wall.as_secs_f64() * 1e3,
        s.max_rss_kib as f64 / 1024.0,
        s.syscalls.map_or("-".into(), |n| n.to_string()),
    )
}
