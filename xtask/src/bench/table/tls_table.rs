//! qmail-remote per 4 KB delivery with STARTTLS, next to plaintext and the TLS-patched C
//! qmail-remote (measured with `--stock-qmail-remote`, else quoted).

use std::fmt::Write as _;

use super::{All, Target, not_measured};
use crate::bench::stats::{mb, median, ms};
use crate::bench::stock;
use crate::bench::tls::Row;

pub(super) fn render(s: &mut String, a: &All, targets: &mut Vec<Target>) {
    let _ = writeln!(
        s,
        "## qmail-remote per 4 KB delivery with STARTTLS (Exim)\n"
    );
    let r = match &a.tls {
        Ok(r) => r,
        Err(e) => {
            not_measured(s, e);
            targets.push(Target::unmeasured("STARTTLS 4 KB CPU ≤ TLS-patched C"));
            targets.push(Target::unmeasured("STARTTLS 4 KB peak RSS ≤ TLS-patched C"));
            return;
        }
    };
    let runs = r.rows.first().map_or(0, |f| f.cpu_ms.len());
    let _ = writeln!(
        s,
        "Median of {runs} runs, interleaved (order rotated every round). Exim (the tests' private copy) on 127.0.0.1 with a \
         certificate from a CA made for the run ({}); the plaintext rows go to a second Exim that offers no STARTTLS. \
         qmail-remote reaches them through control/smtproutes (IP literals: opportunistic STARTTLS). CPU = user + system \
         of the client (wait4); wall = spawn to exit; peak RSS = VmHWM at exit.\n",
        r.cipher
    );
    let _ = writeln!(
        s,
        "| client | session | CPU | wall | peak RSS |\n|---|---|---|---|---|"
    );
    let label = |row: &Row| {
        let who = if row.who == "ours" {
            "ours"
        } else {
            "stock (the given binary, same run)"
        };
        let sess = if row.tls { "STARTTLS" } else { "plaintext" };
        (who, sess)
    };
    for row in &r.rows {
        let (who, sess) = label(row);
        let _ = writeln!(
            s,
            "| {who} | {sess} | {} | {} | {} |",
            ms(median(&row.cpu_ms)),
            ms(median(&row.wall_ms)),
            mb(median(&row.rss_kib))
        );
    }
    let measured = r.rows.iter().any(|x| x.who == "stock");
    if !measured {
        let _ = writeln!(
            s,
            "| TLS-patched C qmail-remote, OpenSSL (quoted, not measured here) | STARTTLS | {} | – | {} |\n\
             | TLS-patched C qmail-remote (quoted, not measured here) | plaintext | {} | – | {} |",
            ms(stock::TLS_4K_CPU_MS),
            mb(stock::TLS_4K_RSS_KIB),
            ms(stock::TLS_PLAIN_4K_CPU_MS),
            mb(stock::TLS_PLAIN_4K_RSS_KIB)
        );
    }
    if r.stock_without_tls {
        let _ = writeln!(
            s,
            "\nThe given stock binary did not use STARTTLS (Exim logged no TLS): its STARTTLS row is a plaintext delivery."
        );
    }
    let _ = writeln!(s);
    let find = |who: &str, tls: bool| r.rows.iter().find(|x| x.who == who && x.tls == tls);
    let Some(ours) = find("ours", true) else {
        return;
    };
    let (cpu, rss) = (median(&ours.cpu_ms), median(&ours.rss_kib));
    let (ref_cpu, ref_rss, how) = match find("stock", true) {
        Some(st) if !r.stock_without_tls => {
            let (c, k) = (median(&st.cpu_ms), median(&st.rss_kib));
            let _ = writeln!(
                s,
                "STARTTLS: ours / stock CPU = {:.2}, peak RSS = {:.2} (same run).\n",
                cpu / c,
                rss / k
            );
            (c, k, "same run")
        }
        _ => (stock::TLS_4K_CPU_MS, stock::TLS_4K_RSS_KIB, "quoted"),
    };
    targets.push(Target {
        what: format!("STARTTLS 4 KB CPU ≤ TLS-patched C ({}, {how})", ms(ref_cpu)),
        measured: ms(cpu),
        met: Some(cpu <= ref_cpu),
    });
    targets.push(Target {
        what: format!(
            "STARTTLS 4 KB peak RSS ≤ TLS-patched C ({}, {how})",
            mb(ref_rss)
        ),
        measured: mb(rss),
        met: Some(rss <= ref_rss),
    });
}
