//! The Markdown report: one table per question, ratios against baselines of the same run,
//! figures from the issues labelled as such, and the verdict on each target.

use std::fmt::Write as _;
use std::time::Duration;

use super::delivery::Figures;
use super::plan::Plan;
use super::{apply, connect, natloop, storm, tls, update};

mod apply_table;
mod connect_tables;
mod delivery_table;
mod nat_table;
mod storm_table;
mod tls_table;
mod update_table;

/// A section's outcome: its results, or why it has none.
pub type Section<T> = Result<T, String>;

pub struct All {
    pub machine: String,
    pub plan: Plan,
    pub elapsed: Duration,
    pub connect: Section<connect::Results>,
    pub update: Section<Option<update::Results>>,
    pub apply: Section<apply::Results>,
    pub delivery: Section<Vec<Figures>>,
    pub tls: Section<tls::Results>,
    /// `--stock-qmail-remote` was given: stock rows are measured, not quoted.
    pub stock_measured: bool,
    pub nat: Section<natloop::Results>,
    pub storm: Section<Option<storm::Results>>,
}

/// One target's verdict row.
struct Target {
    what: String,
    measured: String,
    met: Option<bool>,
}

impl Target {
    fn unmeasured(what: &str) -> Target {
        Target {
            what: what.into(),
            measured: "–".into(),
            met: None,
        }
    }
}

pub fn render(a: &All) -> String {
    let mut s = String::new();
    let mut targets = Vec::new();
    let _ = writeln!(s, "# qmail-guard benchmark\n");
    let _ = writeln!(
        s,
        "{}; measured in {:.0} s{}.\n",
        a.machine,
        a.elapsed.as_secs_f64(),
        if a.plan.quick {
            " — QUICK RUN (--quick): smoke test, not for publishing"
        } else {
            ""
        }
    );
    connect_tables::render(&mut s, a, &mut targets);
    update_table::render(&mut s, a, &mut targets);
    apply_table::render(&mut s, a);
    delivery_table::render(&mut s, a, &mut targets);
    tls_table::render(&mut s, a, &mut targets);
    nat_table::render(&mut s, a);
    storm_table::render(&mut s, a, &mut targets);
    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(s, "| target | measured | verdict |\n|---|---|---|");
    for t in targets {
        let v = match t.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        let _ = writeln!(s, "| {} | {} | {v} |", t.what, t.measured);
    }
    s
}

fn not_measured(s: &mut String, why: &str) {
    let _ = writeln!(s, "Not measured: {why}\n");
}
