//! (a) Without the guard: qmail-remote delivers loop.test's mail to this very host.

use anyhow::{Result, bail};

use super::say;
use super::world::World;
use crate::kit::nat;

pub fn run(w: &World) -> Result<()> {
    say::heading("(a) Without the guard: qmail-remote delivers to itself");
    let r = w.remote();
    say::line(
        "qmail-rspawn runs qmail-remote for the queued message (fd 0 the message, fd 1+2 one pipe, uid 65534, in qmail's cgroup):",
    );
    say::cmd(&r.shown());
    let before = w.exim_arrivals().len();
    let o = r.run()?;
    say::line(&format!(
        "report after {} ({} CPU):",
        say::ms(o.usage.wall),
        say::ms(o.usage.cpu)
    ));
    say::out(&o.report.render(""));
    if !o.report.is_delivered() {
        bail!(
            "step (a) expected a delivery (K), got: {}",
            o.report.render("")
        );
    }
    let arrivals = w.exim_arrivals();
    say::line(
        "Exim on the mail host logged the arrival — from the router's address, i.e. through the hairpin:",
    );
    for l in arrivals.iter().skip(before) {
        say::out(l);
    }
    say::line(&format!(
        "MX {} → {} → DNAT → {}: the message went out and came straight back. That is the first hop of the loop:",
        nat::DOMAIN,
        nat::PUBLIC,
        nat::MAIL_V4
    ));
    say::line(
        "a real qmail here queues it for loop.test again and sends it to itself again, hop after hop. Measured with an",
    );
    say::line(
        "unmodified qmail: 50 SMTP hops, 1.65 s and 271 ms of CPU until qmail-smtpd's hop counter bounces it —",
    );
    say::line("per message, and every bounce of a bounce loops too.");
    Ok(())
}
