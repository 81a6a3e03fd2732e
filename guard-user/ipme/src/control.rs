//! Parser for `control/moreipme` and `control/notipme`.
//!
//! One entry per line: `a.b.c.d`, `a.b.c.d/m.m.m.m` (moreipme-0.6 dotted netmask),
//! `a.b.c.d/N`, an IPv6 address, `ipv6/N`. `#` starts a comment; blank lines and surrounding
//! whitespace are ignored. Unlike 0.6 (which silently skips bad lines and drops the last
//! character of an unterminated last line), every bad line is an error naming file, line and fix.

use std::fs;
use std::io::{self, Read as _};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

use super::{ControlKind, Entry, IpNet, IpmeError, Ipv4Net, Ipv6Net, canonical_net};

/// Parse the text of a control file. Pure; errors carry the file label and 1-based line.
pub fn parse_control(kind: ControlKind, text: &str) -> Result<Vec<Entry>, IpmeError> {
    let mut entries = Vec::new();
    // `lines` splits on LF, drops a CR before it, and keeps an unterminated last line whole.
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        // Editors on some systems prepend a byte-order mark; it is not part of the address.
        let raw = if idx == 0 {
            raw.strip_prefix('\u{feff}').unwrap_or(raw)
        } else {
            raw
        };
        let content = raw.split_once('#').map_or(raw, |(before, _)| before);
        let content = content.trim_matches(|c: char| c.is_ascii_whitespace());
        if content.is_empty() {
            continue;
        }
        let net = parse_entry(content)
            .and_then(|net| refuse_builtin_exception(kind, net))
            .and_then(|net| refuse_too_wide(kind, net))
            .map_err(|reason| IpmeError::Parse {
                file: kind.file(),
                line,
                reason,
            })?;
        entries.push(Entry {
            net,
            source: kind.source(line),
        });
    }
    Ok(entries)
}

/// The largest control file read: far beyond any real moreipme (a million prefixes is about
/// 16 MiB), small enough that a mistaken or hostile file cannot exhaust memory.
pub const MAX_CONTROL_BYTES: u64 = 16 << 20;

/// Read and parse `<qmail_home>/control/{moreipme,notipme}`. A missing file is empty (as in
/// qmail); any other read error is reported, because silently ignoring e.g. an unreadable
/// notipme would turn exceptions back into "me".
pub fn read_control(qmail_home: &Path, kind: ControlKind) -> Result<Vec<Entry>, IpmeError> {
    match read_bounded(qmail_home, kind)? {
        // Lossy: a non-UTF-8 byte then shows up as a bad line with its number, not as a
        // whole-file error.
        Some(bytes) => parse_control(kind, &String::from_utf8_lossy(&bytes)),
        None => Ok(Vec::new()),
    }
}

/// The bytes of a control file; None if it does not exist. Only a regular file (a symlink to
/// one is fine: qmail installations symlink control files) of at most [`MAX_CONTROL_BYTES`] is
/// read. It is opened with O_NONBLOCK, so a FIFO cannot block the open, and checked with
/// fstat on the opened descriptor before any read, so a device or a FIFO is never read.
fn read_bounded(qmail_home: &Path, kind: ControlKind) -> Result<Option<Vec<u8>>, IpmeError> {
    let path = qmail_home.join(kind.file());
    let unusable = |reason: String| IpmeError::Unusable {
        file: kind.file(),
        reason,
    };
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IpmeError::Read { path, source }),
    };
    let meta = file.metadata().map_err(|source| IpmeError::Read {
        path: path.clone(),
        source,
    })?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(unusable(format!(
            "is {what}, not a regular file; nothing was changed: replace {} with a regular \
             file (a symlink to one is fine)",
            path.display()
        )));
    }
    let too_big = |size: u64| {
        unusable(format!(
            "is {size} bytes, more than the limit of {MAX_CONTROL_BYTES} (16 MiB); nothing was \
             changed: shorten {}",
            path.display()
        ))
    };
    if meta.len() > MAX_CONTROL_BYTES {
        return Err(too_big(meta.len()));
    }
    // The file may grow between fstat and read: never read more than the limit allows.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_CONTROL_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| IpmeError::Read {
            path: path.clone(),
            source,
        })?;
    if bytes.len() as u64 > MAX_CONTROL_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

/// Shorter prefixes than these in moreipme or notipme are refused.
const WIDEST_V4: u8 = 8;
const WIDEST_V6: u8 = 16;

/// A moreipme `0.0.0.0/0` would bounce every delivery permanently, a notipme `::/0` would
/// switch the guard off for IPv6: prefixes wider than /8 (IPv4) or /16 (IPv6) are mistakes.
fn refuse_too_wide(kind: ControlKind, net: IpNet) -> Result<IpNet, String> {
    let (len, floor) = match canonical_net(net) {
        IpNet::V4(n) => (n.prefix_len(), WIDEST_V4),
        IpNet::V6(n) => (n.prefix_len(), WIDEST_V6),
    };
    if len >= floor {
        return Ok(net);
    }
    let what = match kind {
        ControlKind::MoreIpme => "this host",
        ControlKind::NotIpme => "not this host",
    };
    Err(format!(
        "{net} would treat a large part of the internet as {what}: prefixes shorter than /{floor} \
         are refused; list the networks you mean (at most /{WIDEST_V4} for IPv4, \
         /{WIDEST_V6} for IPv6)"
    ))
}

/// A notipme entry inside 0.0.0.0/8, 127.0.0.0/8, :: or ::1 would let qmail connect to
/// itself (the kernel delivers those to this host whatever the entry says): refuse it, so the
/// guard's always-local promise (docs/architecture.md) holds.
fn refuse_builtin_exception(kind: ControlKind, net: IpNet) -> Result<IpNet, String> {
    if kind == ControlKind::NotIpme {
        let net = canonical_net(net);
        if let Some(b) = super::set::builtin_nets().find(|b| b.contains(&net)) {
            return Err(format!(
                "{net} is inside {b}, which always leads back to this host; it cannot be an \
                 exception: remove this line"
            ));
        }
    }
    Ok(net)
}

/// Parse one trimmed, comment-free, non-empty entry. The error is the reason text.
fn parse_entry(s: &str) -> Result<IpNet, String> {
    if let Some(pos) = s.find(|c: char| c.is_ascii_whitespace()) {
        let rest = s[pos..].trim_start();
        return Err(format!(
            "unexpected text {rest:?} after {:?}: write one address or prefix per line, \
             without spaces (comments start with #)",
            &s[..pos]
        ));
    }
    let (addr, mask) = match s.split_once('/') {
        Some((a, m)) => (a, Some(m)),
        None => (s, None),
    };
    if addr.is_empty() {
        return Err("missing address before /".to_string());
    }
    if addr.contains(':') {
        parse_v6(addr, mask)
    } else {
        parse_v4(addr, mask)
    }
}

fn parse_v4(addr_s: &str, mask: Option<&str>) -> Result<IpNet, String> {
    let addr: Ipv4Addr = addr_s.parse().map_err(|_| {
        format!(
            "{addr_s:?} is not an IPv4 address: expected a.b.c.d (each part 0-255, no leading \
             zeros), a.b.c.d/N, a.b.c.d/m.m.m.m, or an IPv6 address"
        )
    })?;
    let prefix = match mask {
        None => 32,
        Some(m) if m.contains('.') => dotted_prefix(m)?,
        Some(m) => prefix_len(m, 32, "IPv4")?,
    };
    let net = Ipv4Net::new(addr, prefix).map_err(|e| e.to_string())?;
    if net.network() != addr {
        // Suggest the fix in the form the user wrote.
        let suggestion = match mask {
            Some(m) if m.contains('.') => format!("{}/{m}", net.network()),
            _ => format!("{}/{prefix}", net.network()),
        };
        return Err(format!("host bits set; did you mean {suggestion}?"));
    }
    Ok(IpNet::V4(net))
}

fn parse_v6(addr_s: &str, mask: Option<&str>) -> Result<IpNet, String> {
    if let Some((base, zone)) = addr_s.split_once('%') {
        return Err(format!(
            "zone index %{zone} is not allowed: write {base:?} without it (addresses are \
             matched without zones)"
        ));
    }
    let addr: Ipv6Addr = addr_s.parse().map_err(|_| {
        format!("{addr_s:?} is not an IPv6 address (expected e.g. 2001:db8::1 or 2001:db8::/48)")
    })?;
    let prefix = match mask {
        None => 128,
        Some(m) if m.contains('.') => {
            return Err(format!(
                "an IPv6 address takes a prefix length (like {addr_s}/64), not a dotted netmask"
            ));
        }
        Some(m) => prefix_len(m, 128, "IPv6")?,
    };
    let net = Ipv6Net::new(addr, prefix).map_err(|e| e.to_string())?;
    if net.network() != addr {
        return Err(format!(
            "host bits set; did you mean {}/{prefix}?",
            net.network()
        ));
    }
    // A v4-mapped entry is stored as IPv4, where lookups of such addresses go.
    Ok(canonical_net(IpNet::V6(net)))
}

/// A moreipme-0.6 dotted netmask: must be contiguous ones then zeros.
fn dotted_prefix(m: &str) -> Result<u8, String> {
    let mask: Ipv4Addr = m.parse().map_err(|_| {
        format!("{m:?} is not a netmask: expected a dotted netmask like 255.255.255.0 or a prefix length like 24")
    })?;
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    if ones + bits.trailing_zeros() != 32 {
        return Err(format!(
            "netmask {m} is not contiguous: all its one bits must come before its zero bits \
             (like 255.255.255.0)"
        ));
    }
    // ones <= 32, always fits.
    Ok(ones as u8)
}

/// A decimal prefix length, at most `max`.
fn prefix_len(m: &str, max: u8, family: &str) -> Result<u8, String> {
    if m.is_empty() {
        return Err("missing prefix length after /".to_string());
    }
    if !m.bytes().all(|b| b.is_ascii_digit()) {
        return Err(if family == "IPv4" {
            format!("{m:?} is not a prefix length (0-32) or a dotted netmask (like 255.255.255.0)")
        } else {
            format!("{m:?} is not a prefix length (0-{max})")
        });
    }
    // Only overflow can fail here (all digits); such a number is too long anyway.
    let n: u32 = m.parse().unwrap_or(u32::MAX);
    if n > u32::from(max) {
        return Err(format!(
            "prefix length /{m} is too long for {family} (at most /{max})"
        ));
    }
    Ok(n as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Source;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn more(text: &str) -> Result<Vec<Entry>, IpmeError> {
        parse_control(ControlKind::MoreIpme, text)
    }

    fn nets(text: &str) -> Vec<IpNet> {
        more(text).unwrap().into_iter().map(|e| e.net).collect()
    }

    /// The error of a one-line file, as displayed.
    fn err(text: &str) -> String {
        more(text).unwrap_err().to_string()
    }

    #[test]
    fn ipv4_forms() {
        assert_eq!(nets("198.51.100.7\n"), [net("198.51.100.7/32")]);
        assert_eq!(nets("198.51.100.0/24\n"), [net("198.51.100.0/24")]);
        assert_eq!(
            nets("198.51.100.0/255.255.255.0\n"),
            [net("198.51.100.0/24")]
        );
        assert_eq!(nets("10.0.0.0/255.0.0.0\n"), [net("10.0.0.0/8")]);
        assert_eq!(
            nets("198.51.100.128/255.255.255.128"),
            [net("198.51.100.128/25")]
        );
        assert_eq!(nets("10.0.0.0/255.0.0.0"), [net("10.0.0.0/8")]);
        assert_eq!(nets("1.2.3.4/32"), [net("1.2.3.4/32")]);
        assert_eq!(nets("1.2.3.4/255.255.255.255"), [net("1.2.3.4/32")]);
        // Leading zeros in the prefix length are harmless decimal.
        assert_eq!(nets("1.2.3.0/024"), [net("1.2.3.0/24")]);
    }

    #[test]
    fn ipv6_forms() {
        assert_eq!(nets("2001:db8::1"), [net("2001:db8::1/128")]);
        assert_eq!(nets("2001:db8::/48"), [net("2001:db8::/48")]);
        assert_eq!(nets("2001:DB8:0:0::/64"), [net("2001:db8::/64")]);
        assert_eq!(nets("2001::/16"), [net("2001::/16")]);
        assert_eq!(nets("::1"), [net("::1/128")]);
        assert_eq!(nets("fe80::1"), [net("fe80::1/128")]);
        // v4-mapped entries are stored as IPv4, where such addresses are looked up.
        assert_eq!(nets("::ffff:198.51.100.7"), [net("198.51.100.7/32")]);
        assert_eq!(nets("::ffff:198.51.100.0/120"), [net("198.51.100.0/24")]);
    }

    #[test]
    fn sources_and_line_numbers() {
        let text = "# header\n\n198.51.100.1\n  \n2001:db8::/32 # doc\n";
        let got = more(text).unwrap();
        assert_eq!(
            got,
            [
                Entry {
                    net: net("198.51.100.1/32"),
                    source: Source::MoreIpme { line: 3 }
                },
                Entry {
                    net: net("2001:db8::/32"),
                    source: Source::MoreIpme { line: 5 }
                },
            ]
        );
        let got = parse_control(ControlKind::NotIpme, "\n1.2.3.4\n").unwrap();
        assert_eq!(got[0].source, Source::NotIpme { line: 2 });
    }

    #[test]
    fn comments_whitespace_crlf() {
        let text = "# whole-line comment\r\n\
                    \t 198.51.100.1 \t\r\n\
                    198.51.100.2# trailing, no space\r\n\
                    198.51.100.0/24   # trailing\r\n\
                    \r\n\
                    \t\r\n\
                    #198.51.100.99\n\
                    2001:db8::/48\t#v6\r\n";
        assert_eq!(
            nets(text),
            [
                net("198.51.100.1/32"),
                net("198.51.100.2/32"),
                net("198.51.100.0/24"),
                net("2001:db8::/48"),
            ]
        );
        assert_eq!(nets(""), []);
        assert_eq!(nets("\n\n# only comments\n   \n"), []);
        assert_eq!(nets("\u{feff}1.2.3.4\n"), [net("1.2.3.4/32")]);
    }

    #[test]
    fn last_line_without_newline_keeps_last_digit() {
        // moreipme-0.6 would read 1.2.3.4 here.
        assert_eq!(nets("1.2.3.45"), [net("1.2.3.45/32")]);
        assert_eq!(
            nets("1.1.1.1\n1.2.3.45"),
            [net("1.1.1.1/32"), net("1.2.3.45/32")]
        );
        assert_eq!(nets("1.2.3.0/24"), [net("1.2.3.0/24")]);
        assert_eq!(nets("2001:db8::45"), [net("2001:db8::45/128")]);
        assert_eq!(nets("1.2.3.45\r"), [net("1.2.3.45/32")]);
    }

    #[test]
    fn error_names_file_and_line() {
        assert!(err("1.2.3.4\n\n1.2.3\n").starts_with("control/moreipme:3: "));
        let e = parse_control(ControlKind::NotIpme, "# x\nbogus").unwrap_err();
        assert!(e.to_string().starts_with("control/notipme:2: "), "{e}");
        match e {
            IpmeError::Parse { file, line, .. } => {
                assert_eq!((file, line), ("control/notipme", 2));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_addresses() {
        for bad in [
            "1.2.3",
            "1.2.3.256",
            "1.2.3.4.5",
            "01.2.3.4",
            "localhost",
            "1.2.3.-1",
            "*",
        ] {
            let e = err(bad);
            assert!(e.starts_with("control/moreipme:1: "), "{e}");
            assert!(e.contains("is not an IPv4 address"), "{bad}: {e}");
        }
        assert!(err("/24").contains("missing address before /"));
    }

    #[test]
    fn bad_masks() {
        let e = err("1.2.3.0/255.0.255.0");
        assert!(e.contains("not contiguous"), "{e}");
        let e = err("1.2.3.0/0.255.255.255");
        assert!(e.contains("not contiguous"), "{e}");
        let e = err("1.2.3.0/255.255.256.0");
        assert!(e.contains("is not a netmask"), "{e}");
        let e = err("1.2.3.0/255.255.255");
        assert!(e.contains("is not a netmask"), "{e}");
        let e = err("1.2.3.0/");
        assert!(e.contains("missing prefix length"), "{e}");
        let e = err("1.2.3.0/abc");
        assert!(e.contains("is not a prefix length"), "{e}");
        let e = err("1.2.3.0/+24");
        assert!(e.contains("is not a prefix length"), "{e}");
        let e = err("1.2.3.0/24/8");
        assert!(e.contains("is not a prefix length"), "{e}");
    }

    #[test]
    fn prefix_too_long() {
        let e = err("1.2.3.4/33");
        assert_eq!(
            e,
            "control/moreipme:1: prefix length /33 is too long for IPv4 (at most /32)"
        );
        let e = err("1.2.3.4/99999999999999");
        assert!(e.contains("too long for IPv4"), "{e}");
        let e = err("2001:db8::/129");
        assert!(e.contains("too long for IPv6 (at most /128)"), "{e}");
    }

    #[test]
    fn host_bits_set() {
        assert_eq!(
            err("198.51.100.7/24"),
            "control/moreipme:1: host bits set; did you mean 198.51.100.0/24?"
        );
        assert_eq!(
            err("198.51.100.7/255.255.255.0"),
            "control/moreipme:1: host bits set; did you mean 198.51.100.0/255.255.255.0?"
        );
        assert_eq!(
            err("2001:db8::1/48"),
            "control/moreipme:1: host bits set; did you mean 2001:db8::/48?"
        );
    }

    #[test]
    fn garbage_after_address() {
        let e = err("1.2.3.4 foo");
        assert!(
            e.contains("unexpected text \"foo\" after \"1.2.3.4\""),
            "{e}"
        );
        let e = err("1.2.3.4 /24");
        assert!(e.contains("unexpected text"), "{e}");
        let e = err("2001:db8::1\tx # comment");
        assert!(e.contains("unexpected text \"x\""), "{e}");
        // Without whitespace it is simply not an address.
        let e = err("1.2.3.4foo");
        assert!(e.contains("is not an IPv4 address"), "{e}");
        let e = err("1.2.3.4,1.2.3.5");
        assert!(e.contains("is not an IPv4 address"), "{e}");
    }

    #[test]
    fn bad_ipv6() {
        for bad in [
            "2001:db8::g",
            "2001:db8:::1",
            "1:2:3:4:5:6:7:8:9",
            ":",
            "2001:db8::1::",
        ] {
            let e = err(bad);
            assert!(e.contains("is not an IPv6 address"), "{bad}: {e}");
        }
        let e = err("2001:db8::/255.255.0.0");
        assert!(e.contains("not a dotted netmask"), "{e}");
        let e = err("fe80::1%eth0");
        assert!(e.contains("zone index %eth0"), "{e}");
        let e = err("2001:db8::/x");
        assert!(e.contains("is not a prefix length (0-128)"), "{e}");
    }

    #[test]
    fn first_bad_line_is_reported() {
        let e = err("1.2.3.4\n1.2.3.999\nalso bad\n");
        assert!(e.starts_with("control/moreipme:2: "), "{e}");
    }

    #[test]
    fn million_lines() {
        let text: String = (0..1_000_000u32)
            .map(|i| format!("{}/30\n", Ipv4Addr::from(0x0a00_0000 | (i << 2))))
            .collect();
        let t = std::time::Instant::now();
        let got = more(&text).unwrap();
        eprintln!("parse 1M lines: {:?}", t.elapsed());
        assert_eq!(got.len(), 1_000_000);
        assert_eq!(got[999_999].source, Source::MoreIpme { line: 1_000_000 });
    }

    #[test]
    fn read_missing_dir_and_file() {
        let dir = std::env::temp_dir().join(format!("ipme-control-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // Missing qmail home / control dir / file: empty.
        assert_eq!(read_control(&dir, ControlKind::MoreIpme).unwrap(), []);
        fs::create_dir_all(dir.join("control")).unwrap();
        assert_eq!(read_control(&dir, ControlKind::NotIpme).unwrap(), []);

        fs::write(
            dir.join("control/moreipme"),
            "# x\n198.51.100.0/24\n2001:db8::1",
        )
        .unwrap();
        let got = read_control(&dir, ControlKind::MoreIpme).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].source, Source::MoreIpme { line: 3 });

        // Non-UTF-8 bytes become a bad line with its number.
        fs::write(dir.join("control/moreipme"), b"1.2.3.4\n1.2.\xff.4\n").unwrap();
        let e = read_control(&dir, ControlKind::MoreIpme).unwrap_err();
        assert!(e.to_string().starts_with("control/moreipme:2: "), "{e}");

        // A directory in place of the file: one line naming the file, nothing read.
        fs::create_dir(dir.join("control/notipme")).unwrap();
        let e = read_control(&dir, ControlKind::NotIpme).unwrap_err();
        assert!(matches!(e, IpmeError::Unusable { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("control/notipme: is a directory, not a regular file"),
            "{e}"
        );
        assert!(e.is_parse());

        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn notipme_cannot_exclude_builtins() {
        for bad in [
            "127.0.0.2",
            "127.0.0.0/8",
            "0.0.0.0",
            "::1",
            "::",
            "::ffff:127.0.0.9",
        ] {
            let e = parse_control(ControlKind::NotIpme, &format!("# c\n{bad}\n")).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("control/notipme:2: "), "{text}");
            assert!(text.contains("always leads back to this host"), "{text}");
        }
        // The same lines are fine in moreipme, and a wider notipme is not an exception *inside*.
        assert!(parse_control(ControlKind::MoreIpme, "127.0.0.2\n::1\n").is_ok());
        assert!(parse_control(ControlKind::NotIpme, "128.0.0.0/8\n").is_ok());
    }

    #[test]
    fn too_wide_prefixes_are_refused() {
        for bad in [
            "0.0.0.0/0",
            "::/0",
            "10.0.0.0/7",
            "0.0.0.0/0.0.0.0",
            "2000::/15",
        ] {
            let e = err(bad);
            assert!(
                e.contains("would treat a large part of the internet as this host"),
                "{bad}: {e}"
            );
        }
        // A v4-mapped prefix is judged as the IPv4 prefix it stands for.
        assert!(err("::ffff:0:0/96").contains("large part of the internet"));
        let e = parse_control(ControlKind::NotIpme, "::/0\n").unwrap_err();
        assert!(e.to_string().contains("as not this host"), "{e}");
        assert_eq!(nets("10.0.0.0/8\n2001::/16\n").len(), 2);
    }

    /// Real files: a FIFO, a device, a symlink to a device and an oversized file are refused
    /// with one line each, without blocking or reading; a symlink to a regular file is read.
    #[test]
    fn unusable_control_files() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("ipme-unusable-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("control")).unwrap();
        let file = dir.join("control/moreipme");
        let first_line = || {
            let t = std::time::Instant::now();
            let e = read_control(&dir, ControlKind::MoreIpme).unwrap_err();
            assert!(t.elapsed() < std::time::Duration::from_secs(2));
            let text = e.to_string();
            assert!(text.starts_with("control/moreipme: "), "{text}");
            assert!(!text.contains('\n'), "{text}");
            assert!(e.is_parse());
            text
        };

        let c = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(first_line().contains("is a FIFO"));
        fs::remove_file(&file).unwrap();

        symlink("/dev/zero", &file).unwrap();
        assert!(first_line().contains("is a character device"));
        fs::remove_file(&file).unwrap();

        let big = dir.join("big");
        let f = fs::File::create(&big).unwrap();
        f.set_len(17 << 20).unwrap();
        symlink(&big, &file).unwrap();
        assert!(first_line().contains("more than the limit of 16777216"));
        fs::remove_file(&file).unwrap();

        fs::write(&big, "198.51.100.1\n").unwrap();
        symlink(&big, &file).unwrap();
        assert_eq!(read_control(&dir, ControlKind::MoreIpme).unwrap().len(), 1);

        fs::remove_dir_all(&dir).unwrap();
    }
}
