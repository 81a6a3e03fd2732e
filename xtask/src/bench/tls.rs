//! qmail-remote per 4 KB delivery with STARTTLS: Exim (the tests' private copy) with a
//! certificate from a CA made here, TLS 1.3, in a namespace with only `lo`; qmail-remote goes
//! through control/smtproutes to `127.0.0.1` (an IP literal: opportunistic STARTTLS, as the
//! TLS patch does for literals). Next to it the same delivery in plaintext to a second Exim
//! that offers no STARTTLS, and, with `--stock-qmail-remote`, that binary on both, all
//! interleaved. CPU = user + system of the client (wait4), peak RSS = VmHWM at exit.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use guard_tests::Netns;
use guard_tests::mta::{Exim, EximOptions};
use guard_tests::pki::Pki;
use guard_tests::qmail_remote::QmailHome;

use super::message::message;
use super::plan::Plan;
use super::stock;
use crate::kit::harness::attempt;
use crate::kit::measure;
use crate::kit::netns::in_netns;
use crate::kit::remote::{self, MessageFile};
use crate::kit::spawn;
use crate::kit::{interrupt, names};

const SIZE: usize = 4 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);
const MIN_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// One client on one server.
#[derive(Debug, Clone)]
pub struct Row {
    /// "ours" or "stock".
    pub who: &'static str,
    /// STARTTLS (true) or the plaintext Exim.
    pub tls: bool,
    pub cpu_ms: Vec<f64>,
    pub wall_ms: Vec<f64>,
    pub rss_kib: Vec<f64>,
}

/// The section's results.
#[derive(Debug, Clone)]
pub struct Results {
    pub rows: Vec<Row>,
    /// What Exim logged for our STARTTLS delivery (protocol and cipher).
    pub cipher: String,
    /// A stock binary was given but Exim saw no TLS from it.
    pub stock_without_tls: bool,
}

#[derive(Clone)]
struct Inputs {
    home: PathBuf,
    msg: PathBuf,
    ours: PathBuf,
    stock: Option<stock::Binary>,
}

pub fn run(plan: &Plan, ours: &Path, stock_bin: Option<&stock::Binary>) -> Result<Results> {
    let netns = attempt("creating the namespace", || Netns::new(&names::name("tls")))?;
    let pki = attempt("making the test CA", || {
        let p = Pki::new();
        p.ca("ca");
        p.server("mx", "ca", "mx.bench.test", &["mx.bench.test"]);
        p
    })?;
    let tls_opts = EximOptions {
        tls: Some((pki.path("mx.pem"), pki.path("mx.key"))),
        ..EximOptions::default()
    };
    let exim_tls = attempt("starting Exim with TLS", || {
        Exim::start_with(&netns, "127.0.0.1", 25, &tls_opts)
    })?;
    let exim_plain = attempt("starting Exim without TLS", || {
        Exim::start_with(&netns, "127.0.0.2", 25, &EximOptions::default())
    })?;
    let home = attempt("creating the qmail home", QmailHome::new)?;
    attempt("writing control files", || {
        home.write_control("me", "qmail-remote.test\n");
        home.write_control(
            "smtproutes",
            "tls.bench.test:127.0.0.1\nplain.bench.test:127.0.0.2\n",
        );
    })?;
    let msg = MessageFile::new(&format!("{}-tls.msg", names::name("bench")), &message(SIZE))?;
    let inp = Inputs {
        home: home.path().to_path_buf(),
        msg: msg.path().to_path_buf(),
        ours: ours.to_path_buf(),
        stock: stock_bin.cloned(),
    };

    // one delivery each, checked in Exim's log: TLS where expected
    let i1 = inp.clone();
    in_netns(&netns.path(), move || {
        stock::enter_home(i1.stock.as_ref(), &i1.home)?;
        deliver(&i1, "ours", true)?;
        deliver(&i1, "ours", false)?;
        Ok(())
    })?;
    let line = last_reception(&exim_tls)?;
    if !line.contains("X=TLS") {
        bail!("our STARTTLS delivery reached Exim without TLS: {line}");
    }
    let cipher = line
        .split_whitespace()
        .find(|w| w.starts_with("X="))
        .unwrap_or("")
        .to_string();
    if last_reception(&exim_plain)?.contains("X=TLS") {
        bail!("the plaintext Exim negotiated TLS");
    }
    let mut stock_without_tls = false;
    if inp.stock.is_some() {
        let i2 = inp.clone();
        in_netns(&netns.path(), move || {
            stock::enter_home(i2.stock.as_ref(), &i2.home)?;
            deliver(&i2, "stock", true)?;
            deliver(&i2, "stock", false)
        })?;
        stock_without_tls = !last_reception(&exim_tls)?.contains("X=TLS");
    }

    println!(
        "  {} timed 4 KB deliveries per client, STARTTLS and plaintext, interleaved …",
        plan.delivery_runs
    );
    let (runs, rss_runs) = (plan.delivery_runs, plan.rss_runs);
    let i3 = inp.clone();
    let rows = in_netns(&netns.path(), move || {
        stock::enter_home(i3.stock.as_ref(), &i3.home)?;
        measure_rows(&i3, runs, rss_runs)
    })?;
    drop(exim_tls);
    drop(exim_plain);
    drop(msg);
    drop(home);
    drop(pki);
    drop(netns);
    Ok(Results {
        rows,
        cipher,
        stock_without_tls,
    })
}

fn last_reception(exim: &Exim) -> Result<String> {
    // Exim writes the reception line right after the reply; give it a moment
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = exim.mainlog().lines().rev().find(|l| l.contains(" <= ")) {
            return Ok(l.to_string());
        }
        if Instant::now() > deadline {
            bail!("Exim logged no reception:\n{}", exim.mainlog());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn measure_rows(inp: &Inputs, runs: usize, rss_runs: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut whos = vec!["ours"];
    if inp.stock.is_some() {
        whos.push("stock");
    }
    for who in whos {
        for tls in [true, false] {
            rows.push(Row {
                who,
                tls,
                cpu_ms: Vec::new(),
                wall_ms: Vec::new(),
                rss_kib: Vec::new(),
            });
        }
    }
    for round in 0..runs {
        // rotate the order every round so no client always follows the same one
        let n = rows.len();
        for k in 0..n {
            interrupt::check()?;
            let r = &mut rows[(k + round) % n];
            let u = deliver(inp, r.who, r.tls)?;
            if round > 0 {
                r.cpu_ms.push(u.cpu.as_secs_f64() * 1e3);
                r.wall_ms.push(u.wall.as_secs_f64() * 1e3);
            }
        }
    }
    for r in rows.iter_mut() {
        r.rss_kib = measure::peak_rss_runs(rss_runs, TIMEOUT, || command(inp, r.who, r.tls))?;
    }
    Ok(rows)
}

/// One delivery command; the stock binary finds the bench home at its compiled-in path.
fn command(inp: &Inputs, who: &str, tls: bool) -> Result<Command> {
    let host = if tls {
        "tls.bench.test"
    } else {
        "plain.bench.test"
    };
    let bin: &Path = match (who, &inp.stock) {
        ("stock", Some(s)) => &s.path,
        _ => &inp.ours,
    };
    let mut c = Command::new(bin);
    c.args([host, "sender@example.org", "user@bench.test"]);
    c.env_clear().env("PATH", MIN_PATH);
    if who == "ours" {
        c.env("QMAILHOME", OsStr::new(&inp.home));
    }
    c.current_dir(inp.home.join("queue/mess"))
        .stdin(spawn::stdin_file(&inp.msg)?);
    Ok(c)
}

fn deliver(inp: &Inputs, who: &str, tls: bool) -> Result<measure::Usage> {
    let o = remote::run_command(command(inp, who, tls)?)?;
    if !o.usage.status.success() || !o.report.is_delivered() {
        bail!(
            "{who} qmail-remote did not deliver ({}):\n{}",
            o.usage.status,
            o.report.render("  ")
        );
    }
    Ok(o.usage)
}
