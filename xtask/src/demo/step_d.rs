//! (d) Nothing configured: no moreipme entry. qmail-remote reaches its own SMTP server through
//! the port forward, recognises its greeting, stops before MAIL FROM and bounces; the daemon
//! learns the address from the spool and the kernel refuses it from then on.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::say;
use super::world::World;
use crate::kit::{bpftool, nat};

/// The name Exim greets with in the scene (its primary_hostname).
const GREETING_NAME: &str = "mx.example.test";

pub fn run(w: &World) -> Result<()> {
    say::heading("(d) Nothing configured: qmail-remote knows its own greeting, the guard learns");
    let Some(d) = &w.daemon else {
        say::line("(`qmail-guard run` is not in this build: learning needs the daemon; skipped.)");
        return Ok(());
    };
    let more = w.home.path().join("control/moreipme");
    say::line(&format!(
        "Forget what (b) configured: no moreipme, so nothing tells qmail or the guard that {} is this host.",
        nat::PUBLIC
    ));
    say::cmd(&format!("rm {}", more.display()));
    std::fs::remove_file(&more).context("cannot remove control/moreipme")?;
    wait_check(w, false)?;
    say::line(&format!(
        "The mail host's SMTP server greets as {GREETING_NAME} (a qmail-smtpd greets with control/smtpgreeting, else control/me);"
    ));
    say::line("qmail-remote compares every peer's greeting and EHLO reply with that name:");
    say::cmd(&format!(
        "echo {GREETING_NAME} > {}/control/me",
        w.home.path().display()
    ));
    w.home.write_control("me", &format!("{GREETING_NAME}\n"));
    let arrivals = w.exim_arrivals().len();
    let (refused_before, _) = bpftool::refused(&w.guard.map("STATS"))?;

    say::line("\n(d.1) The delivery:");
    let o = deliver(w)?;
    if w.exim_arrivals().len() != arrivals {
        bail!("the message reached the mail host's own server");
    }
    say::line(&format!(
        "perm_ambigmx after {}: it connected, met its own greeting and sent QUIT before MAIL FROM; no message reached Exim.",
        say::ms(o.usage.wall)
    ));
    say::line("qmail-remote dropped the address into the guard's spool; the daemon learned it:");
    match d.wait_log("learned:", Duration::from_secs(3)) {
        Some(l) => say::out(&l),
        None => bail!("the daemon logged no learned address within 3 s"),
    }
    let p = w.guard.run(&[
        "print",
        "--qmail-home",
        &w.home.path().display().to_string(),
    ]);
    say::cmd(&format!(
        "qmail-guard print --qmail-home {} | grep {}",
        w.home.path().display(),
        nat::PUBLIC
    ));
    let p = p?;
    say::out(
        &p.lines()
            .filter(|l| l.starts_with(nat::PUBLIC))
            .collect::<Vec<_>>()
            .join("\n"),
    );

    say::line(
        "\n(d.2) The next delivery makes no connection at all: the kernel refuses the learned address:",
    );
    let o = deliver(w)?;
    let (refused, _) = bpftool::refused(&w.guard.map("STATS"))?;
    if refused <= refused_before {
        bail!("the second delivery was not refused by the kernel");
    }
    say::line(&format!(
        "perm_ambigmx after {} from ELOOP; refused_v4 {refused_before} → {refused}. The entry lives 30 days after it was last seen",
        say::ms(o.usage.wall)
    ));
    say::line(&format!(
        "(--learn-expiry); `qmail-guard forget {}` removes it, control/loopcheck = 0 turns the check off.",
        nat::PUBLIC
    ));
    Ok(())
}

/// Polls `qmail-guard check PUBLIC` until it says `refused` (true) or `allowed` (false).
fn wait_check(w: &World, refused: bool) -> Result<()> {
    let t = Instant::now();
    loop {
        let out = w.guard.output(&["check", nat::PUBLIC, "25"])?;
        if out.status.code() == Some(if refused { 0 } else { 1 }) {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(5) {
            bail!(
                "the daemon did not apply the change: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn deliver(w: &World) -> Result<crate::kit::remote::Outcome> {
    let r = w.remote();
    say::cmd(&r.shown());
    let o = r.run()?;
    say::out(&o.report.render(""));
    if !o.report.is_ambigmx() {
        bail!(
            "expected perm_ambigmx (#5.4.6), got: {}",
            o.report.render("")
        );
    }
    Ok(o)
}
