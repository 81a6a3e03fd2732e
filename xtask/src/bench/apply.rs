//! Apply time of a whole set: `qmail-guard attach` with N entries in control/moreipme (a fresh
//! pin directory: load, fill both generations, attach) and `qmail-guard sync` adding one
//! entry with N in force (computes N + 1, writes the difference, flips the generation),
//! against the same commands with 10 entries, interleaved in the same run.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result};
use guard_tests::{Cgroup, Netns};

use super::fill;
use super::plan::Plan;
use super::update::TempHome;
use crate::kit::guard::Guard;
use crate::kit::harness::attempt;
use crate::kit::{interrupt, names};

/// The baseline set: the fixed costs (process start, program load, attach) and little else.
pub const BASELINE: usize = 10;
/// The entry `sync` adds (documentation range: never among the generated entries).
const ADDED: &str = "198.51.100.77";

/// Seconds per repetition, per set size (the baseline first).
pub struct Row {
    pub entries: usize,
    pub attach: Vec<f64>,
    pub sync_one: Vec<f64>,
}

pub struct Results {
    pub rows: Vec<Row>,
}

struct Size {
    row: Row,
    base: String,
    home: TempHome,
    cgroup: Cgroup,
    guard: Guard,
}

pub fn run(plan: &Plan, qmail_guard: &Path) -> Result<Results> {
    let big = plan.sizes.iter().copied().max().unwrap_or(BASELINE);
    let reps = if plan.quick { 2 } else { 3 };
    let netns = attempt("creating the namespace", || Netns::new(&names::name("apl")))?;
    let mut sizes = Vec::new();
    for n in [BASELINE, big] {
        let role = format!("apl{n}");
        let home = TempHome::new(&role)?;
        let cgroup = attempt("creating the cgroup", || Cgroup::new(&names::name(&role)))?;
        let guard = Guard::new(qmail_guard.to_path_buf(), &netns.path(), &home.0, &role)?;
        let mut base = String::with_capacity(n * 16);
        for a in fill::addresses(n) {
            base.push_str(&format!("{}.{}.{}.{}\n", a[0], a[1], a[2], a[3]));
        }
        sizes.push(Size {
            row: Row {
                entries: n,
                attach: Vec::new(),
                sync_one: Vec::new(),
            },
            base,
            home,
            cgroup,
            guard,
        });
    }
    println!(
        "  {reps} × (attach, sync adding one entry, detach) with {BASELINE} and {big} entries, interleaved …"
    );
    for rep in 0..reps {
        for s in &mut sizes {
            interrupt::check()?;
            let moreipme = s.home.0.join("control/moreipme");
            replace(&moreipme, &s.base)?;
            let t = Instant::now();
            s.guard.attach(s.cgroup.path())?;
            s.row.attach.push(t.elapsed().as_secs_f64());

            replace(&moreipme, &format!("{}{ADDED}\n", s.base))?;
            let home = s.home.0.display().to_string();
            let t = Instant::now();
            s.guard.run(&["sync", "--qmail-home", &home])?;
            s.row.sync_one.push(t.elapsed().as_secs_f64());

            s.guard.run(&["detach", "--all"])?;
            println!(
                "    {} entries, round {}: attach {:.2} s, sync +1 {:.2} s",
                s.row.entries,
                rep + 1,
                s.row.attach[rep],
                s.row.sync_one[rep]
            );
        }
    }
    Ok(Results {
        rows: sizes.into_iter().map(|s| s.row).collect(),
    })
}

/// Writes `path` by rename, as an administrator's editor would.
fn replace(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))
}
