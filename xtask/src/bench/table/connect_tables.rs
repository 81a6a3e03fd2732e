//! The connect() tables: unguarded destinations, the program's run time, refused connects.

use std::fmt::Write as _;

use super::{All, Target, not_measured};
use crate::bench::connect::Dest;
use crate::bench::connect::scene::{Policy, short};
use crate::bench::stats::{ns, ratio};

pub(super) fn render(s: &mut String, a: &All, targets: &mut Vec<Target>) {
    let _ = writeln!(
        s,
        "## connect() from a guarded cgroup to an unguarded destination\n"
    );
    let r = match &a.connect {
        Ok(r) => r,
        Err(e) => {
            not_measured(s, e);
            targets.push(Target::unmeasured("guard overhead within noise"));
            targets.push(Target::unmeasured(
                "refused connect cheaper than the kernel's RST path",
            ));
            return;
        }
    };
    let _ = writeln!(
        s,
        "ns per connect() call: the median over {} rounds of each round's batch median ({} connects per batch). \
         Each variant has its own namespace, cgroup and long-lived client, identical but for the policy, and every round runs one batch \
         of each variant and destination in turn, so a drift of the machine hits all of them alike. Ratio against *no program* in the \
         same run. The client closes with RST (SO_LINGER 0), so no TIME_WAIT builds up. The listeners' backlog ({}) exceeds any batch and \
         each batch waits until its listener has accepted every connection, so no accept queue overflows; \
         a round in which ListenOverflows, ListenDrops or TCPSynRetrans grew in any namespace is not counted but run again ({}).\n",
        r.rounds,
        r.iters,
        crate::bench::listen::BACKLOG,
        if r.redone.is_empty() {
            "none was in this run".to_string()
        } else {
            format!(
                "{} in this run; the run's output names the counters",
                r.redone.len()
            )
        }
    );
    let bare = r.policies.iter().position(|p| *p == Policy::Bare);
    let mut head = "| destination |".to_string();
    let mut sep = "|---|".to_string();
    for p in &r.policies {
        let _ = write!(head, " {} |", p.label());
        sep.push_str("---|");
    }
    let _ = writeln!(s, "{head}\n{sep}");
    for (d, label) in [
        (Dest::FreePort, "127.0.0.1:2525 — port not guarded"),
        (
            Dest::Other,
            "198.51.100.7:25 — guarded port, address in no set (full trie lookup)",
        ),
    ] {
        let base = bare.map_or(0.0, |b| r.median(b, d));
        let mut row = format!("| {label} |");
        for v in 0..r.policies.len() {
            let m = r.median(v, d);
            let _ = write!(row, " {} {} |", ns(m), ratio(m, base));
        }
        let _ = writeln!(s, "{row}");
    }
    if let Some(b) = bare {
        let noise = r.iqr(b, Dest::Other);
        let base = r.median(b, Dest::Other);
        let _ = writeln!(
            s,
            "\nNoise: the interquartile range of the baseline's round figures is {} ({:.1} %) for 198.51.100.7:25 and {} for 127.0.0.1:2525.\n",
            ns(noise),
            100.0 * noise / base.max(1.0),
            ns(r.iqr(b, Dest::FreePort))
        );
        // Within noise: every guard variant's overhead is at most the baseline's IQR.
        let worst = r
            .policies
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p, Policy::Guard(_)))
            .map(|(v, p)| (*p, r.median(v, Dest::Other) - base))
            .max_by(|x, y| x.1.total_cmp(&y.1));
        if let Some((p, over)) = worst {
            targets.push(Target {
                what: "guard overhead within noise (unguarded destination)".into(),
                measured: format!(
                    "worst {}: {:+.0} ns ({:+.1} %) against a noise (IQR) of {}",
                    p.label(),
                    over,
                    100.0 * over / base.max(1.0),
                    ns(noise)
                ),
                met: Some(over <= noise),
            });
        }
    }

    let _ = writeln!(
        s,
        "## The guard's program run time (kernel.bpf_stats_enabled=1)\n"
    );
    let _ = writeln!(
        s,
        "connect4's run_time_ns / run_cnt over batches of {} connects, median of {} rounds — these include the two clock reads the stats themselves add per run, which is why they are off while connect() is timed above.\n",
        a.plan.stats_iters, a.plan.stats_rounds
    );
    let mut head = "| path |".to_string();
    let mut sep = "|---|".to_string();
    for (p, _) in &r.prog_ns {
        let _ = write!(head, " {} |", p.label());
        sep.push_str("---|");
    }
    let _ = writeln!(s, "{head}\n{sep}");
    for (i, label) in [
        "port not guarded (one hash lookup)",
        "guarded port, address in no set (hash + LPM miss)",
        "refused (LPM hit, per-CPU counter, log record, ELOOP)",
    ]
    .iter()
    .enumerate()
    {
        let mut row = format!("| {label} |");
        for (_, v) in &r.prog_ns {
            let _ = write!(row, " {} |", ns(v[i]));
        }
        let _ = writeln!(s, "{row}");
    }

    let _ = writeln!(s, "\n## Refused connect\n");
    let _ = writeln!(
        s,
        "ns per refused connect() call (same rounds as above); ratio against the kernel's own refusal of a closed port.\n"
    );
    let _ = writeln!(
        s,
        "| refusal | errno | ns per connect() | ratio |\n|---|---|---|---|"
    );
    let base = bare.map_or(0.0, |b| r.median(b, Dest::Refused));
    for (v, p) in r.policies.iter().enumerate() {
        let (label, errno) = match p {
            Policy::Bare => (
                "kernel: closed port 127.0.0.1:2599, SYN answered by RST".to_string(),
                "ECONNREFUSED",
            ),
            Policy::Guard(n) => (
                format!(
                    "guard ({} entries): 127.0.0.1:25 refused in the hook",
                    short(*n)
                ),
                "ELOOP",
            ),
            Policy::Nft(n) => (
                format!(
                    "nftables ({} entries): 127.0.0.1:25, `reject with tcp reset`",
                    short(*n)
                ),
                "ECONNREFUSED",
            ),
        };
        let m = r.median(v, Dest::Refused);
        let _ = writeln!(s, "| {label} | {errno} | {} | {} |", ns(m), ratio(m, base));
    }
    let _ = writeln!(s);
    let worst_guard = r
        .policies
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p, Policy::Guard(_)))
        .map(|(v, _)| r.median(v, Dest::Refused))
        .fold(f64::NAN, f64::max);
    if bare.is_some() && !worst_guard.is_nan() {
        targets.push(Target {
            what: "refused connect cheaper than the kernel's RST path".into(),
            measured: format!("guard ≤ {} vs RST {}", ns(worst_guard), ns(base)),
            met: Some(worst_guard < base),
        });
    }
}
