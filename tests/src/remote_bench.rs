//! Per-delivery cost of qmail-remote (CPU, wall, peak RSS, system calls) to a loopback SMTP
//! sink, for the benchmark command and the targets. qmail-remote is run directly (no
//! setpriv/ip wrapper) so the child's rusage is its own.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::thread;

use crate::qmail_remote::QmailHome;

/// Medians over the runs (RSS: maximum).
#[derive(Clone, Debug)]
pub struct Stats {
    pub size: usize,
    pub runs: usize,
    /// user + system CPU of qmail-remote, median.
    pub cpu: Duration,
    /// spawn to exit, median.
    pub wall: Duration,
    /// peak resident set size in KiB, median of runs under `/usr/bin/time -f %M` (whose own
    /// fork puts a floor of about 1 MB under any reading; see [`rss_floor_kib`]).
    pub rss_kib: Option<u64>,
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

/// A minimal SMTP sink for timing: one thread, sequential connections, no recording. The end
/// of DATA is found by looking at the end of each read only (qmail-remote writes the final dot
/// last and then waits), so it costs next to nothing even in a debug build.
fn bench_sink() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind bench sink");
    let port = l.local_addr().expect("addr").port();
    // the thread ends with the test process
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_nodelay(true);
            let _ = serve_fast(&mut c);
        }
    });
    port
}

fn serve_fast(c: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    let mut tail: Vec<u8> = Vec::new();
    c.write_all(b"220 bench\r\n")?;
    loop {
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let got = &buf[..n];
        let reply: &[u8] = if got.starts_with(b"DATA\r\n") {
            b"354 go\r\n"
        } else if got.starts_with(b"QUIT") {
            return Ok(());
        } else if got.starts_with(b"HELO") || got.starts_with(b"MAIL") || got.starts_with(b"RCPT") {
            b"250 ok\r\n"
        } else {
            // message data: done when the accumulated end is CRLF.CRLF
            tail.extend_from_slice(&got[n.saturating_sub(5)..]);
            if tail.len() > 5 {
                tail.drain(..tail.len() - 5);
            }
            if tail != b"\r\n.\r\n" && !(n == 3 && got == b".\r\n") {
                continue;
            }
            tail.clear();
            b"250 ok queued\r\n"
        };
        c.write_all(reply)?;
    }
}

/// Peak RSS (KiB) of `argv` under `/usr/bin/time -f %M`.
fn time_rss(argv: &mut Command) -> Option<u64> {
    let out = argv.output().ok()?;
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()?
        .trim()
        .parse()
        .ok()
}

/// What `/usr/bin/time -f %M` reports for /bin/true: the floor of the RSS method here.
pub fn rss_floor_kib() -> Option<u64> {
    let mut v: Vec<u64> = (0..9)
        .filter_map(|_| time_rss(Command::new("/usr/bin/time").args(["-f", "%M", "/bin/true"])))
        .collect();
    v.sort();
    v.get(v.len() / 2).copied()
}

/// Delivers a `size`-byte message `runs` times with the binary `bin`.
pub fn measure(bin: &Path, size: usize, runs: usize) -> Stats {
    let port = bench_sink();
    let home = QmailHome::new();
    home.write_control("smtproutes", &format!(":127.0.0.1:{port}\n"));
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
    let (mut cpu, mut wall) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut c = Command::new(bin);
        cmd(&mut c);
        let start = Instant::now();
        #[expect(
            clippy::zombie_processes,
            reason = "reaped by wait4 below, which also gives rusage"
        )]
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
        // (ru_maxrss is useless here: it starts at the RSS of the forking test process)
        cpu.push(tv(ru.ru_utime) + tv(ru.ru_stime));
    }
    let mut rss: Vec<u64> = (0..15)
        .filter_map(|_| {
            let mut c = Command::new("/usr/bin/time");
            c.args(["-f", "%M"]).arg(bin);
            cmd(&mut c);
            c.stderr(Stdio::piped());
            time_rss(&mut c)
        })
        .collect();
    rss.sort();
    let rss_kib = rss.get(rss.len() / 2).copied();
    let syscalls = strace_count(bin, &cmd);
    Stats {
        size,
        runs,
        cpu: median(cpu),
        wall: median(wall),
        rss_kib,
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
        s.rss_kib.map_or(0.0, |k| k as f64 / 1024.0),
        s.syscalls.map_or("-".into(), |n| n.to_string()),
    )
}
