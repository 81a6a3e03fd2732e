//! (c) A client that is not ours, under the guard: its connect is refused, so no program in
//! qmail's cgroup can start the loop — whatever it knows about moreipme.

use anyhow::{Result, bail};

use super::world::World;
use super::{client, say};
use crate::kit::bpftool;
use crate::kit::spawn::Placement;

pub fn run(w: &World) -> Result<()> {
    say::heading("(c) A client that is not ours cannot start the loop either");
    let mail = w.scene.mail.path();
    say::line(
        "Python's smtplib from a shell on the mail host, outside qmail's cgroup (not guarded):",
    );
    say::cmd(&client::shown());
    let outside = client::run(&Placement::netns(&mail))?;
    say::out(&outside);
    if !outside.starts_with("connected") {
        bail!("expected the unguarded client to connect through the NAT, got: {outside}");
    }
    say::line(
        "— it reached the mail host itself through the port forward. The same client inside qmail's cgroup:",
    );
    say::cmd(&format!(
        "echo $$ > {}/cgroup.procs; {}",
        w.cgroup.path().display(),
        client::shown()
    ));
    let inside = client::run(&Placement::cgroup_netns(w.cgroup.path(), &mail))?;
    say::out(&inside);
    if !inside.contains("ELOOP") {
        bail!("expected ELOOP inside the guarded cgroup, got: {inside}");
    }
    let (v4, _) = bpftool::refused(&w.guard.map("STATS"))?;
    say::line(&format!(
        "ELOOP (\"Too many levels of symbolic links\") comes from the kernel before any packet is sent; refused_v4 is now {v4}."
    ));
    if let Some(d) = &w.daemon {
        let lines: Vec<String> = d
            .log()
            .into_iter()
            .filter(|l| l.contains("refused"))
            .collect();
        if let Some(l) = lines.last() {
            say::line("The daemon's log line for it:");
            say::out(l);
        }
    }
    say::line(
        "Any program in qmail's cgroup — qmail-remote, stock or ours, a queue-runner script, swaks — is refused alike:",
    );
    say::line("the loop cannot start, whoever would start it.");
    Ok(())
}
