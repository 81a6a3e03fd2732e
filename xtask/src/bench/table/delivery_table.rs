//! qmail-remote per delivery, next to stock (quoted), the floor and `/bin/true`.

use std::fmt::Write as _;

use super::{All, Target, not_measured};
use crate::bench::delivery::{self, Figures, Who};
use crate::bench::stats::{group, mb, median, ms};
use crate::bench::stock;

pub(super) fn render(s: &mut String, a: &All, targets: &mut Vec<Target>) {
    let _ = writeln!(s, "## qmail-remote per delivery (loopback sink)\n");
    let figs = match &a.delivery {
        Ok(f) => f,
        Err(e) => {
            not_measured(s, e);
            for what in [
                "qmail-remote CPU ≤ stock",
                "qmail-remote wall ≤ 2 ms (4 KB)",
                "qmail-remote peak RSS ≤ 2.5 MB",
                "qmail-remote syscalls ≤ 130",
            ] {
                targets.push(Target::unmeasured(what));
            }
            return;
        }
    };
    let runs = figs.first().map_or(0, |f| f.cpu_ms.len());
    let _ = writeln!(
        s,
        "Median of {runs} runs, interleaved. CPU = user + system of the process (wait4). Wall = spawn to exit. Peak RSS = VmHWM of the program's own image at its exit (ptrace exit stop; \
         ru_maxrss would include the launcher's pre-exec image). Syscalls = `strace -f -c`, separate run. qmail-remote reaches the sink through control/smtproutes `:127.0.0.1:2525` (no DNS). \
         The floor is bench-client: the same SMTP dialogue and the already-encoded DATA bytes, sent with std::io::copy.\n"
    );
    let _ = writeln!(
        s,
        "| size | client | CPU | wall | peak RSS | syscalls |\n|---|---|---|---|---|---|"
    );
    let row = |s: &mut String, f: &Figures| {
        let who = match f.who {
            Who::Ours => "ours",
            Who::Floor => "floor (minimal Rust client, same bytes)",
            Who::Exec => "`/bin/true`: starting and ending a process, no delivery",
            Who::Stock => "stock (the given binary, same run)",
        };
        let _ = writeln!(
            s,
            "| {} | {who} | {} | {} | {} | {} |",
            if f.size == 0 {
                "–".to_string()
            } else {
                size_label(f.size)
            },
            ms(median(&f.cpu_ms)),
            ms(median(&f.wall_ms)),
            mb(median(&f.rss_kib)),
            f.syscalls.map_or("–".into(), group)
        );
    };
    for f in figs.iter().filter(|f| f.who == Who::Exec) {
        row(s, f);
    }
    let quoted = !a.stock_measured;
    if quoted {
        let _ = writeln!(
            s,
            "| 4 KB | stock qmail-remote (measured earlier, quoted) | {} | {} ({} with TCP_NODELAY) | {} | {} |",
            ms(stock::DELIVERY_4K_CPU_MS),
            ms(stock::DELIVERY_4K_WALL_MS),
            ms(stock::DELIVERY_4K_WALL_NODELAY_MS),
            stock::DELIVERY_RSS,
            stock::DELIVERY_SYSCALLS
        );
    }
    for f in figs.iter().filter(|f| f.size == delivery::SIZES[0]) {
        row(s, f);
    }
    if quoted {
        let _ = writeln!(
            s,
            "| 1 MB | stock qmail-remote (measured earlier, quoted) | {} | – | – | – |",
            ms(stock::DELIVERY_1M_CPU_MS)
        );
    }
    for f in figs.iter().filter(|f| f.size == delivery::SIZES[1]) {
        row(s, f);
    }
    let _ = writeln!(s);
    let ours = |size: usize| figs.iter().find(|f| f.size == size && f.who == Who::Ours);
    let stock_fig = |size: usize| figs.iter().find(|f| f.size == size && f.who == Who::Stock);
    for size in delivery::SIZES {
        if let (Some(o), Some(st)) = (ours(size), stock_fig(size)) {
            let _ = writeln!(
                s,
                "{}: ours / stock CPU = {:.2}, peak RSS = {:.2} (same run).\n",
                size_label(size),
                median(&o.cpu_ms) / median(&st.cpu_ms),
                median(&o.rss_kib) / median(&st.rss_kib)
            );
        }
    }
    if let Some(k4) = ours(delivery::SIZES[0]) {
        let rss = median(&k4.rss_kib);
        targets.push(Target {
            what: "qmail-remote plaintext peak RSS ≤ 2.0 MB (4 KB, static build)".into(),
            measured: mb(rss),
            met: Some(rss * 1024.0 / 1e6 <= stock::TARGET_PLAIN_RSS_MB),
        });
    }
    if let (Some(k4), Some(m1)) = (ours(delivery::SIZES[0]), ours(delivery::SIZES[1])) {
        let (c4, c1) = (median(&k4.cpu_ms), median(&m1.cpu_ms));
        targets.push(Target {
            what: "qmail-remote CPU ≤ stock (1.2 ms for 4 KB, 9.9 ms for 1 MB)".into(),
            measured: format!("{} and {}", ms(c4), ms(c1)),
            met: Some(c4 <= stock::DELIVERY_4K_CPU_MS && c1 <= stock::DELIVERY_1M_CPU_MS),
        });
        let w4 = median(&k4.wall_ms);
        targets.push(Target {
            what: "qmail-remote wall ≤ 2 ms (4 KB)".into(),
            measured: ms(w4),
            met: Some(w4 <= stock::TARGET_WALL_4K_MS),
        });
        let rss = median(&k4.rss_kib).max(median(&m1.rss_kib));
        targets.push(Target {
            what: "qmail-remote peak RSS ≤ 2.5 MB".into(),
            measured: format!("{} (largest of 4 KB, 1 MB)", mb(rss)),
            met: Some(rss * 1024.0 / 1e6 <= stock::TARGET_RSS_MB),
        });
        let sc = k4.syscalls.unwrap_or(u64::MAX);
        targets.push(Target {
            what: "qmail-remote syscalls ≤ 130 (4 KB)".into(),
            measured: k4.syscalls.map_or("–".into(), group),
            met: Some(sc <= stock::TARGET_SYSCALLS),
        });
    }
}

fn size_label(n: usize) -> String {
    if n >= 1024 * 1024 {
        format!("{} MB", n / (1024 * 1024))
    } else {
        format!("{} KB", n / 1024)
    }
}
