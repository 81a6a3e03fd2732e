//! (b) The guard attached with the public address in control/moreipme: the same delivery
//! bounces with perm_ambigmx in milliseconds; the kernel's maps and counters show why.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::say;
use super::world::World;
use crate::kit::daemon::{self, Daemon};
use crate::kit::remote::Outcome;
use crate::kit::{bpftool, nat};

pub fn run(w: &mut World) -> Result<()> {
    say::heading("(b) With the guard: the same delivery bounces with perm_ambigmx (#5.4.6)");
    say::line(&format!(
        "Tell qmail that {} is this host, and attach the guard to qmail's cgroup:",
        nat::PUBLIC
    ));
    say::cmd(&format!(
        "echo {} >> {}/control/moreipme",
        nat::PUBLIC,
        w.home.path().display()
    ));
    std::fs::write(
        w.home.path().join("control/moreipme"),
        format!("{}\n", nat::PUBLIC),
    )
    .context("cannot write control/moreipme")?;
    let mut shown = vec!["qmail-guard".to_string()];
    shown.extend(w.guard.attach_args(w.cgroup.path()));
    shown.extend(["--pin-dir".into(), w.guard.pin_dir().display().to_string()]);
    say::cmd(&shown.join(" "));
    say::out(&w.guard.attach(w.cgroup.path())?);
    say::line(
        "qmail-guard exits; the programs, maps and links stay pinned, so the guard stays in force.",
    );

    if daemon::available(&w.guard) {
        say::line("Start the daemon too (it keeps the set current and logs each refusal):");
        say::cmd(&format!(
            "qmail-guard run --cgroup {} --qmail-home {} --pin-dir {} &",
            w.cgroup.path().display(),
            w.home.path().display(),
            w.guard.pin_dir().display()
        ));
        w.daemon = Some(Daemon::start(&w.guard, w.cgroup.path())?);
    } else {
        say::line(
            "(`qmail-guard run`, the daemon that logs each refusal, is not in this build: the kernel's refusal counter shows them instead.)",
        );
    }

    say::line("\n(b.1) The same delivery:");
    let o = deliver(w)?;
    say::line(&format!(
        "perm_ambigmx after {}: our qmail-remote reads the same control/moreipme through the same ipme module as the guard,",
        say::ms(o.usage.wall)
    ));
    say::line(
        "so its own loop rule (stock prefme: its best MX is itself) stopped it before any connection: the kernel counter is still",
    );
    show_counter(w)?;

    say::line(
        "\n(b.2) A path qmail's own rule never checks: an smtproutes relay (stock qmail skips the loop rule for relays;",
    );
    say::line(
        "a qmail-remote that does not read moreipme would miss the address just the same). Only the kernel can stop this one:",
    );
    let routes = w.home.path().join("control/smtproutes");
    say::cmd(&format!(
        "echo {}:{} > {}",
        nat::DOMAIN,
        nat::PUBLIC,
        routes.display()
    ));
    std::fs::write(&routes, format!("{}:{}\n", nat::DOMAIN, nat::PUBLIC))
        .context("cannot write control/smtproutes")?;
    let o = deliver(w);
    // Restore the scene whatever happened, before looking at the result.
    std::fs::remove_file(&routes).context("cannot remove control/smtproutes")?;
    let o = o?;
    say::line(&format!(
        "perm_ambigmx after {}: connect() to {}:25 failed with ELOOP, which only qmail-guard returns, and qmail-remote",
        say::ms(o.usage.wall),
        nat::PUBLIC
    ));
    say::line(
        "turned it into the permanent #5.4.6 bounce instead of a loop or a week of retries. The refusal, counted by the kernel:",
    );
    show_counter(w)?;
    if let Some(d) = &w.daemon {
        say::line("and logged by qmail-guard run:");
        match d.wait_log("refused", Duration::from_secs(3)) {
            Some(l) => say::out(&l),
            None => say::out("(no refusal line in the daemon's log within 3 s)"),
        }
    }

    say::line(
        "\nWhy: the guard's IPv4 trie (one longest-prefix lookup per connect to a guarded port; the tag says where each entry comes from):",
    );
    let v4 = w.guard.map("IPME_V4");
    say::cmd(&format!("bpftool map dump pinned {}", v4.display()));
    say::out(&bpftool::lpm_lines(&v4)?.join("\n"));
    say::cmd(&format!(
        "qmail-guard status --pin-dir {}",
        w.guard.pin_dir().display()
    ));
    say::out(&w.guard.run(&["status"])?);
    say::cmd(&format!(
        "qmail-guard check {} 25 --pin-dir {}",
        nat::PUBLIC,
        w.guard.pin_dir().display()
    ));
    let out = w.guard.output(&["check", nat::PUBLIC, "25"])?;
    say::out(&String::from_utf8_lossy(&out.stdout));
    Ok(())
}

/// Runs the delivery, prints the report, and insists on perm_ambigmx.
fn deliver(w: &World) -> Result<Outcome> {
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

fn show_counter(w: &World) -> Result<()> {
    let stats = w.guard.map("STATS");
    say::cmd(&format!("bpftool map dump pinned {}", stats.display()));
    let (v4, v6) = bpftool::refused(&stats)?;
    say::out(&format!(
        "refused_v4 = {v4}, refused_v6 = {v6} (summed over CPUs)"
    ));
    Ok(())
}
