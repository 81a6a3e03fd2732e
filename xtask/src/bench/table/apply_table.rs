//! Apply time of a large set (attach, a one-entry sync with it in force) against a small one.

use std::fmt::Write as _;

use super::{All, not_measured};
use crate::bench::apply::BASELINE;
use crate::bench::stats::median;

pub(super) fn render(s: &mut String, a: &All) {
    let _ = writeln!(s, "## Apply time of a whole set\n");
    let r = match &a.apply {
        Ok(r) => r,
        Err(e) => {
            not_measured(s, e);
            return;
        }
    };
    let _ = writeln!(
        s,
        "`qmail-guard attach` with N entries in control/moreipme (fresh pins: load, fill both \
         generations, attach), then `qmail-guard sync` after one entry was added (computes N + 1, \
         writes the difference, flips the generation), then `detach --all`; the sizes interleaved, \
         medians over {} rounds. Wall time of the whole command, process start included.\n",
        r.rows.first().map_or(0, |r| r.attach.len())
    );
    let _ = writeln!(
        s,
        "| entries | attach | × {BASELINE} entries | sync adding one | × {BASELINE} entries |\n|---|---|---|---|---|"
    );
    let (Some(base_attach), Some(base_sync)) = (
        r.rows.first().map(|b| median(&b.attach)),
        r.rows.first().map(|b| median(&b.sync_one)),
    ) else {
        return;
    };
    for row in &r.rows {
        let (at, sy) = (median(&row.attach), median(&row.sync_one));
        let _ = writeln!(
            s,
            "| {} | {:.3} s | {:.1} | {:.3} s | {:.1} |",
            row.entries,
            at,
            at / base_attach,
            sy,
            sy / base_sync
        );
    }
    let _ = writeln!(s);
}
