//! ipmeprint: print the ipme set in the moreipme-0.6 format.
//!
//! `<ip>/<mask> is me` lines (IPv4 with a dotted netmask, as 0.6 prints them; IPv6 as
//! `addr/len`), then `<ip>/<mask> is not me` lines. Exit 111 on a temporary (read/system)
//! error, 100 on a bad control line, as qmail programs do.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser as _;
use ipme::{Entry, IpNet, IpmeSet};
use qmail_guard::ipmeprint_args::Args;

const EXIT_PERMANENT: u8 = 100;
const EXIT_TEMPORARY: u8 = 111;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // --help/--version go to stdout with success; usage errors are permanent.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_PERMANENT)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let home = ipme::qmail_home(args.qmail_home);
    let set = match IpmeSet::load_guarded(&home) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ipmeprint: {}", ipme::Chain(&e));
            return ExitCode::from(if e.is_parse() {
                EXIT_PERMANENT
            } else {
                EXIT_TEMPORARY
            });
        }
    };
    match print(&set, args.verbose) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipmeprint: unable to write output: {e}");
            ExitCode::from(EXIT_TEMPORARY)
        }
    }
}

fn print(set: &IpmeSet, verbose: bool) -> io::Result<()> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    for l in lines(set.entries(), verbose) {
        writeln!(out, "{l}")?;
    }
    out.flush()
}

/// "Is me" lines first, then "is not me"; with `verbose`, the sources start in one column.
fn lines(entries: &[Entry], verbose: bool) -> Vec<String> {
    let ordered: Vec<&Entry> = [true, false]
        .into_iter()
        .flat_map(|me| entries.iter().filter(move |e| e.is_me() == me))
        .collect();
    let heads: Vec<String> = ordered.iter().map(|e| head(e)).collect();
    if !verbose {
        return heads;
    }
    let width = heads.iter().map(String::len).max().unwrap_or(0);
    heads
        .iter()
        .zip(&ordered)
        .map(|(h, e)| format!("{h:<width$}  # {}", e.source))
        .collect()
}

fn head(e: &Entry) -> String {
    let net = match e.net {
        IpNet::V4(n) => format!("{}/{}", n.network(), n.netmask()),
        IpNet::V6(n) => format!("{}/{}", n.network(), n.prefix_len()),
    };
    let what = if e.is_me() { "is me" } else { "is not me" };
    format!("{net} {what}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipme::Source;

    #[test]
    fn verbose_sources_start_in_one_column() {
        let e = |net: &str, source| Entry {
            net: net.parse().expect("test prefix"),
            source,
        };
        let entries = [
            e("127.0.0.0/8", Source::Builtin),
            e("2001:db8::/32", Source::MoreIpme { line: 2 }),
            e("192.0.2.7/32", Source::NotIpme { line: 1 }),
        ];
        let l = lines(&entries, true);
        assert_eq!(l.len(), 3);
        assert!(
            l[2].starts_with("192.0.2.7/255.255.255.255 is not me  # "),
            "{l:?}"
        );
        let cols: Vec<usize> = l.iter().filter_map(|s| s.find("  # ")).collect();
        assert_eq!(cols, vec![cols[2]; 3], "{l:#?}");
        assert_eq!(lines(&entries, false)[0], "127.0.0.0/255.0.0.0 is me");
    }
}
