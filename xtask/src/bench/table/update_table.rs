//! The update-latency table of `qmail-guard run`.

use std::fmt::Write as _;

use super::{All, Target, not_measured};
use crate::bench::stats::{ms, quantile};
use crate::bench::stock;

pub(super) fn render(s: &mut String, a: &All, targets: &mut Vec<Target>) {
    let _ = writeln!(s, "## Update latency (`qmail-guard run`)\n");
    let what = "update p99 ≤ 5 ms (address add, moreipme rename)";
    let r = match &a.update {
        Ok(Some(r)) => r,
        Ok(None) => {
            not_measured(s, "daemon missing (`qmail-guard run` is not in this build)");
            targets.push(Target {
                measured: "not measured: daemon missing".into(),
                ..Target::unmeasured(what)
            });
            return;
        }
        Err(e) => {
            not_measured(s, e);
            targets.push(Target::unmeasured(what));
            return;
        }
    };
    let _ = writeln!(
        s,
        "From the change to the first connect (from the guarded cgroup) in the new state; a client connects every ~0.1 ms. \
         Addresses are changed by a running `ip -batch` (no process start in the window), moreipme by rename(2). {} timeouts (> 2 s).\n",
        r.timeouts
    );
    let _ = writeln!(
        s,
        "| event → effect | trials | p50 | p99 | max |\n|---|---|---|---|---|"
    );
    let mut p99s = Vec::new();
    for (label, v, counted) in [
        ("`ip addr add` → first refused connect", &r.addr_add, true),
        ("`ip addr del` → first allowed connect", &r.addr_del, false),
        (
            "moreipme replaced by rename → first refused connect",
            &r.rename,
            true,
        ),
    ] {
        let p99 = quantile(v, 0.99);
        if counted {
            p99s.push(p99);
        }
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {} |",
            v.len(),
            ms(quantile(v, 0.5)),
            ms(p99),
            ms(quantile(v, 1.0))
        );
    }
    let _ = writeln!(s);
    let worst = p99s.iter().copied().fold(0.0, f64::max);
    targets.push(Target {
        what: what.into(),
        measured: format!(
            "p99 {} (add), {} (rename)",
            ms(quantile(&r.addr_add, 0.99)),
            ms(quantile(&r.rename, 0.99))
        ),
        met: Some(worst <= stock::TARGET_UPDATE_P99_MS && r.timeouts == 0),
    });
}
