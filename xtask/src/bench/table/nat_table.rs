//! The NAT loop: ours, measured, next to the unguarded and stock figures (quoted).

use std::fmt::Write as _;

use super::{All, not_measured};
use crate::bench::stats::{median, ms};
use crate::bench::stock;

pub(super) fn render(s: &mut String, a: &All) {
    let _ = writeln!(s, "## The NAT loop\n");
    let r = match &a.nat {
        Ok(r) => r,
        Err(e) => {
            not_measured(s, e);
            return;
        }
    };
    let runs = r.wall_ms[0].len();
    let _ = writeln!(
        s,
        "From qmail-remote's start to its report, median of {runs} runs, in the demo's scene (router DNAT + hairpin, dnsmasq MX → 198.51.100.25), \
         run as qmail-rspawn would (uid 65534, fd 0 the message, in the cgroup). Kernel refusals counted: {}.\n",
        r.refused_by_kernel
    );
    let _ = writeln!(
        s,
        "| path | outcome | wall | CPU | connections to the mail host |\n|---|---|---|---|---|"
    );
    let _ = writeln!(
        s,
        "| unguarded real qmail (measured earlier, quoted) | {} hops, then qmail-smtpd's hop counter bounces | {} | {} | {} |",
        stock::LOOP_HOPS,
        ms(stock::LOOP_WALL_MS),
        ms(stock::LOOP_CPU_MS),
        stock::LOOP_HOPS
    );
    let _ = writeln!(
        s,
        "| stock qmail, address in its ipme (measured earlier, quoted) | perm_ambigmx | {} | {} | 0 |",
        ms(stock::IPME_WALL_MS),
        ms(stock::IPME_CPU_MS)
    );
    let ours = [
        (
            "ours, unguarded",
            "first hop delivered (K): the loop starts",
        ),
        (
            "ours, address in moreipme",
            "perm_ambigmx by our loop rule (moreipme), no connect",
        ),
        (
            "ours, guard only (qmail-remote's home has no moreipme)",
            "perm_ambigmx from the guard's ELOOP",
        ),
    ];
    for (p, (label, outcome)) in ours.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {label} | {outcome} | {} | {} | {} in {runs} runs |",
            ms(median(&r.wall_ms[p])),
            ms(median(&r.cpu_ms[p])),
            r.connections[p]
        );
    }
    let _ = writeln!(
        s,
        "\nAgainst the unguarded loop: ×{:.0} less wall time and ×{:.0} less CPU for the guarded bounce.\n",
        stock::LOOP_WALL_MS / median(&r.wall_ms[2]).max(1e-3),
        stock::LOOP_CPU_MS / median(&r.cpu_ms[2]).max(1e-3)
    );
    let trials = r.zero_wall_ms.len();
    if trials > 0 {
        let _ = writeln!(
            s,
            "### NAT loop, nothing configured\n\n\
             No moreipme anywhere, `qmail-guard run` running, control/me = the local server's greeting name. \
             Per trial: from the first delivery's start to the end of the first delivery the kernel refuses \
             (the learned entry is forgotten between trials), median of {trials} trials.\n\n\
             | path | until the kernel refuses | connections to the mail host | deliveries |\n|---|---|---|---|"
        );
        let _ = writeln!(
            s,
            "| unguarded real qmail (measured earlier, quoted) | never: {} hops in {}, then qmail-smtpd's hop counter bounces | {} | {} |",
            stock::LOOP_HOPS,
            ms(stock::LOOP_WALL_MS),
            stock::LOOP_HOPS,
            stock::LOOP_HOPS
        );
        let _ = writeln!(
            s,
            "| ours, NAT loop, nothing configured | {} (first delivery: greeting, QUIT, #5.4.6; learned; next: ELOOP) | {:.1} per trial | {:.1} per trial |\n",
            ms(median(&r.zero_wall_ms)),
            r.zero_connections as f64 / trials as f64,
            r.zero_deliveries as f64 / trials as f64
        );
    }
}
