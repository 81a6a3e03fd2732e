//! qmail-remote per delivery (4 KB and 1 MB to a loopback sink): CPU, wall, peak RSS and
//! system calls, next to a floor — a minimal Rust client sending the same bytes.
//!
//! Both run in a namespace of their own with only `lo`; qmail-remote goes through
//! control/smtproutes `:127.0.0.1:2525` (no DNS, no loop check: a relay), as the stock
//! figures were taken. They are started from a thread that joined the namespace, without a
//! pre-exec hook, so std spawns them with posix_spawn and the child's CPU is its own.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use guard_tests::Netns;
use guard_tests::qmail_remote::QmailHome;

use super::message::{encode, message};
use super::plan::Plan;
use super::sink::Sink;
use super::{stock, strace};
use crate::kit::harness::attempt;
use crate::kit::measure;
use crate::kit::netns::in_netns;
use crate::kit::remote::{self, MessageFile, Remote};
use crate::kit::spawn::{self, Placement};
use crate::kit::{interrupt, names};

const PORT: u16 = 2525;
const HELO: &str = "qmail-remote.test";
const SENDER: &str = "sender@example.org";
const RECIP: &str = "user@bench.test";
const TIMEOUT: Duration = Duration::from_secs(30);
/// The environment's only PATH (qmail-rspawn's children get little more).
const MIN_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Who delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Ours,
    Floor,
    /// `/bin/true`: what starting and ending any process costs here (no delivery).
    Exec,
    /// The binary given with `--stock-qmail-remote`.
    Stock,
}

/// One size and client.
#[derive(Debug, Clone)]
pub struct Figures {
    pub size: usize,
    pub who: Who,
    pub cpu_ms: Vec<f64>,
    pub wall_ms: Vec<f64>,
    pub rss_kib: Vec<f64>,
    pub syscalls: Option<u64>,
}

pub const SIZES: [usize; 2] = [4 * 1024, 1024 * 1024];

#[derive(Clone)]
struct Inputs {
    home: PathBuf,
    qmail_remote: PathBuf,
    client: PathBuf,
    messages: Vec<(PathBuf, PathBuf)>,
    stock: Option<stock::Binary>,
}

pub fn run(
    plan: &Plan,
    qmail_remote: &Path,
    client: &Path,
    stock_bin: Option<&stock::Binary>,
) -> Result<Vec<Figures>> {
    let netns = attempt("creating the namespace", || {
        Netns::new(&names::name("smtp"))
    })?;
    let home = attempt("creating the qmail home", QmailHome::new)?;
    attempt("writing control files", || {
        home.write_control("me", &format!("{HELO}\n"));
        home.write_control("smtproutes", &format!(":127.0.0.1:{PORT}\n"));
    })?;
    let sink = Sink::start(&netns.path(), SocketAddr::new("127.0.0.1".parse()?, PORT))?;
    let mut files = Vec::new();
    for size in SIZES {
        let m = message(size);
        let msg = MessageFile::new(&format!("{}-{size}.msg", names::name("bench")), &m)?;
        let wire = MessageFile::new(
            &format!("{}-{size}.wire", names::name("bench")),
            &encode(&m),
        )?;
        files.push((msg, wire));
    }
    let inputs = Inputs {
        home: home.path().to_path_buf(),
        qmail_remote: qmail_remote.to_path_buf(),
        client: client.to_path_buf(),
        messages: files
            .iter()
            .map(|(m, w)| (m.path().to_path_buf(), w.path().to_path_buf()))
            .collect(),
        stock: stock_bin.cloned(),
    };
    let mut whos = vec![Who::Ours, Who::Floor];
    if stock_bin.is_some() {
        whos.push(Who::Stock);
    }

    // Same bytes on the wire: one delivery by each client and size, checked against the
    // reference encoding (LF→CRLF, dot-stuffing, final ".\r\n").
    for (k, size) in SIZES.into_iter().enumerate() {
        for &who in &whos {
            let inp = inputs.clone();
            let ended = sink.finished();
            in_netns(&netns.path(), move || {
                stock::enter_home(inp.stock.as_ref(), &inp.home)?;
                let (msg, wire) = &inp.messages[k];
                deliver(&inp, who, msg, wire).map(|_| ())
            })?;
            if !sink.wait_finished(ended + 1, Duration::from_secs(10)) {
                bail!("{who:?}, {size} bytes: the sink did not see the session end");
            }
            let expected = std::fs::read(&inputs.messages[k].1).context("reading the wire file")?;
            if sink.last_data() != expected {
                bail!(
                    "{who:?}, {size} bytes: the DATA on the wire differs from the reference encoding"
                );
            }
        }
    }

    println!(
        "  {} timed deliveries per size and client, interleaved …",
        plan.delivery_runs
    );
    let runs = plan.delivery_runs;
    let rss_runs = plan.rss_runs;
    let i2 = inputs.clone();
    let figures = in_netns(&netns.path(), move || {
        stock::enter_home(i2.stock.as_ref(), &i2.home)?;
        measure(&i2, runs, rss_runs)
    })?;
    drop(sink);
    drop(files);
    drop(home);
    drop(netns);
    Ok(figures)
}

fn measure(inp: &Inputs, runs: usize, rss_runs: usize) -> Result<Vec<Figures>> {
    let mut figs: Vec<Figures> = Vec::new();
    let mut kinds = vec![(0, Who::Exec)];
    for size in SIZES {
        kinds.extend([(size, Who::Ours), (size, Who::Floor)]);
        if inp.stock.is_some() {
            kinds.push((size, Who::Stock));
        }
    }
    for (size, who) in kinds {
        figs.push(Figures {
            size,
            who,
            cpu_ms: Vec::new(),
            wall_ms: Vec::new(),
            rss_kib: Vec::new(),
            syscalls: None,
        });
    }
    for round in 0..runs {
        for f in figs.iter_mut() {
            interrupt::check()?;
            let (msg, wire) = files(inp, f.size);
            let u = deliver(inp, f.who, msg, wire)?;
            // The first round warms the page cache and the sink: not counted.
            if round > 0 {
                f.cpu_ms.push(u.cpu.as_secs_f64() * 1e3);
                f.wall_ms.push(u.wall.as_secs_f64() * 1e3);
            }
        }
    }
    println!("  peak RSS (VmHWM at exit, traced) and system calls (strace -f -c) …");
    for f in figs.iter_mut() {
        let (msg, wire) = files(inp, f.size);
        f.rss_kib = measure::peak_rss_runs(rss_runs, TIMEOUT, || command(inp, f.who, msg, wire))?;
        let c = command(inp, f.who, msg, wire)?;
        let home = inp.home.as_os_str();
        let mut env = vec![("PATH", OsStr::new(MIN_PATH))];
        if f.who == Who::Ours {
            env.push(("QMAILHOME", home));
        }
        let stdin = if f.who == Who::Floor { wire } else { msg };
        if f.who == Who::Stock {
            // stock's own home is where the bench home is mounted; it reads no environment
            env.truncate(1);
        }
        f.syscalls = Some(strace::count(&c, &env, stdin)?);
    }
    Ok(figs)
}

/// Our qmail-remote for `msg`, as qmail-rspawn runs it (placed by the calling thread).
fn ours<'a>(inp: &'a Inputs, msg: &'a Path) -> Remote<'a> {
    Remote {
        bin: &inp.qmail_remote,
        home: &inp.home,
        host: "bench.test",
        sender: SENDER,
        recips: &[RECIP],
        message: msg,
        placement: Placement::default(),
    }
}

/// The message and wire files for `size` (the first ones for /bin/true, which reads nothing).
fn files(inp: &Inputs, size: usize) -> (&PathBuf, &PathBuf) {
    let k = SIZES.iter().position(|&s| s == size).unwrap_or(0);
    let (m, w) = &inp.messages[k];
    (m, w)
}

/// The command for one delivery (fd 0: the message for qmail-remote, the wire payload for the
/// floor client).
fn command(inp: &Inputs, who: Who, msg: &Path, wire: &Path) -> Result<Command> {
    match who {
        Who::Ours => ours(inp, msg).command(),
        Who::Floor => {
            let mut c = Command::new(&inp.client);
            c.args(["smtp", "127.0.0.1", &PORT.to_string(), HELO, SENDER, RECIP])
                .stdin(spawn::stdin_file(wire)?);
            // Like qmail-remote's: without it, cargo's LD_LIBRARY_PATH (inherited through
            // `cargo xtask`) sends the dynamic loader through ~100 extra openat/stat calls.
            c.env_clear().env("PATH", MIN_PATH);
            Ok(c)
        }
        Who::Stock => {
            let bin = inp
                .stock
                .as_ref()
                .map(|s| s.path.clone())
                .context("no stock binary")?;
            let mut c = Command::new(bin);
            c.args(["bench.test", SENDER, RECIP])
                .env_clear()
                .env("PATH", MIN_PATH)
                .current_dir(inp.home.join("queue/mess"))
                .stdin(spawn::stdin_file(msg)?);
            Ok(c)
        }
        Who::Exec => {
            let mut c = Command::new("/bin/true");
            c.env_clear().env("PATH", MIN_PATH).stdin(Stdio::null());
            Ok(c)
        }
    }
}

/// One delivery; fails unless it was accepted.
fn deliver(inp: &Inputs, who: Who, msg: &Path, wire: &Path) -> Result<measure::Usage> {
    match who {
        Who::Ours => {
            let o = ours(inp, msg).run()?;
            if !o.report.is_delivered() {
                bail!("qmail-remote did not deliver: {}", o.report.render(""));
            }
            Ok(o.usage)
        }
        Who::Stock => {
            let o = remote::run_command(command(inp, who, msg, wire)?)?;
            if !o.report.is_delivered() {
                bail!(
                    "the stock qmail-remote did not deliver: {}",
                    o.report.render("")
                );
            }
            Ok(o.usage)
        }
        Who::Floor | Who::Exec => {
            let mut c = command(inp, who, msg, wire)?;
            c.stdout(Stdio::null()).stderr(Stdio::null());
            let start = Instant::now();
            let mut child = c
                .spawn()
                .with_context(|| format!("cannot start {:?}", c.get_program()))?;
            let u = measure::wait_usage(&mut child, start, TIMEOUT)?;
            if !u.status.success() {
                bail!("{:?} failed ({})", c.get_program(), u.status);
            }
            Ok(u)
        }
    }
}
