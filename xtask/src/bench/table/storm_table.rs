//! The daemon's CPU under a refusal storm, against the same daemon idle.

use std::fmt::Write as _;

use super::{All, Target, not_measured};
use crate::bench::storm::STORM_RATE;

pub(super) fn render(s: &mut String, a: &All, targets: &mut Vec<Target>) {
    let _ = writeln!(s, "## The daemon under a refusal storm\n");
    let what = format!(
        "daemon CPU during {} refusals/s ≤ 10 % of a core",
        STORM_RATE
    );
    let r = match &a.storm {
        Ok(Some(r)) => r,
        Ok(None) => {
            not_measured(s, "this build has no daemon");
            targets.push(Target::unmeasured(&what));
            return;
        }
        Err(e) => {
            not_measured(s, e);
            targets.push(Target::unmeasured(&what));
            return;
        }
    };
    let _ = writeln!(
        s,
        "A process in the guarded cgroup makes {} refused connects ({:.0}/s reached); the daemon \
         logs at most 10 of them per second (`--log-rate`) and one summary per second.\n",
        r.refused, r.rate
    );
    let _ = writeln!(
        s,
        "| | daemon CPU (share of one core) | refusal lines | summary lines |\n|---|---|---|---|"
    );
    let _ = writeln!(
        s,
        "| idle (baseline) | {:.2} % | – | – |",
        r.idle_cpu * 100.0
    );
    let _ = writeln!(
        s,
        "| storm | {:.2} % | {} | {} |\n",
        r.storm_cpu * 100.0,
        r.lines,
        r.summaries
    );
    targets.push(Target {
        what,
        measured: format!("{:.2} %", r.storm_cpu * 100.0),
        met: Some(r.storm_cpu <= 0.10),
    });
}
