//! qmail-rspawn's view of a qmail-remote run (docs/qmail-remote.md §1.5–1.7), re-implemented from the rules of
//! qmail-rspawn.c `report()`, plus a strict check of the output grammar.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// What qmail-send receives: the status letter (K, Z or D) followed by the text.
pub fn condense(status: ExitStatus, s: &[u8]) -> Vec<u8> {
    if status.signal().is_some() {
        return b"Zqmail-remote crashed.\n".to_vec();
    }
    match status.code() {
        Some(0) => {}
        Some(111) => return b"ZUnable to run qmail-remote.\n".to_vec(),
        _ => return b"DUnable to run qmail-remote.\n".to_vec(),
    }
    if s.is_empty() {
        return b"Zqmail-remote produced no output.\n".to_vec();
    }
    // result: the first NUL-terminated record starting with K, Z or D; none → permanent
    let mut result = -1;
    let mut j = 0;
    for k in 0..s.len() {
        if s[k] == 0 {
            match s[j] {
                b'K' => {
                    result = 1;
                    break;
                }
                b'Z' => {
                    result = 0;
                    break;
                }
                b'D' => break,
                _ => {}
            }
            j = k + 1;
        }
    }
    let orr = match s[0] {
        b's' => 0,
        b'h' => -1,
        _ => result,
    };
    let mut out = vec![match orr {
        1 => b'K',
        0 => b'Z',
        _ => b'D',
    }];
    // C string starting at i (up to the next NUL or the end)
    let cstr = |i: usize| -> &[u8] {
        let rest = &s[i.min(s.len())..];
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    };
    let mut k = 1;
    while k < s.len() {
        let c = s[k];
        k += 1;
        if c == 0 {
            out.extend_from_slice(cstr(1));
            if result <= orr && k < s.len() && matches!(s[k], b'Z' | b'D' | b'K') {
                out.extend_from_slice(cstr(k + 1));
            }
            break;
        }
    }
    out
}

/// The records of an output, each without its NUL. Panics (fails the test) unless the output
/// follows the grammar: recipient records (r/h/s) then exactly one K/Z/D record, every record
/// NUL-terminated, nothing after — anything else (e.g. stray stderr text) would be misread.
pub fn records(s: &[u8]) -> Vec<Vec<u8>> {
    assert!(
        s.last() == Some(&0),
        "output does not end with NUL: {:?}",
        show(s)
    );
    let recs: Vec<Vec<u8>> = s[..s.len() - 1]
        .split(|&b| b == 0)
        .map(<[u8]>::to_vec)
        .collect();
    let (last, rcpts) = recs.split_last().expect("at least one record");
    assert!(
        matches!(last.first(), Some(b'K' | b'Z' | b'D')),
        "last record is not a message report: {:?}",
        show(s)
    );
    for r in rcpts {
        assert!(
            matches!(r.first(), Some(b'r' | b'h' | b's')),
            "record before the message report is not a recipient report: {:?}",
            show(s)
        );
    }
    recs
}

/// Readable rendering of an output: NUL shown as `\0`.
pub fn show(s: &[u8]) -> String {
    String::from_utf8_lossy(s).replace('\0', "\\0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> ExitStatus {
        ExitStatus::from_raw(0)
    }

    #[test]
    fn table_of_spec_1_7() {
        assert_eq!(condense(ok(), b"r\0Kt\n\0"), b"Kt\n");
        assert_eq!(condense(ok(), b"ht1\n\0Dt2\n\0"), b"Dt1\nt2\n");
        assert_eq!(condense(ok(), b"st1\n\0Dt2\n\0"), b"Zt1\nt2\n");
        assert_eq!(condense(ok(), b"r\0Zt\n\0"), b"Zt\n");
        assert_eq!(condense(ok(), b"r\0Dt\n\0"), b"Dt\n");
        assert_eq!(condense(ok(), b"Dt\n\0"), b"Dt\n");
        assert_eq!(condense(ok(), b"Zt\n\0"), b"Zt\n");
        assert_eq!(condense(ok(), b"r\0"), b"D");
        assert_eq!(condense(ok(), b"Kt"), b"D");
        assert_eq!(condense(ok(), b""), b"Zqmail-remote produced no output.\n");
        assert_eq!(
            condense(ExitStatus::from_raw(9), b"Kx\0"),
            b"Zqmail-remote crashed.\n"
        );
        assert_eq!(
            condense(ExitStatus::from_raw(101 << 8), b"Kx\0"),
            b"DUnable to run qmail-remote.\n"
        );
        assert_eq!(
            condense(ExitStatus::from_raw(111 << 8), b"Kx\0"),
            b"ZUnable to run qmail-remote.\n"
        );
    }
}
