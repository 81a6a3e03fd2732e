//! Command line: `qmail-remote host sender recip [recip ...]` (docs/qmail-remote.md §1.2). Arguments are raw
//! bytes (no UTF-8 requirement: addresses may carry 8-bit bytes).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// Fewer than three arguments after argv[0]: perm_usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("usage: qmail-remote host sender recip [recip ...]")]
pub struct Usage;

/// The parsed arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// Everything after the last `@` of the recipient, as qmail-rspawn passes it.
    pub host: Vec<u8>,
    /// Envelope sender (may be empty, or `#@[]`).
    pub sender: Vec<u8>,
    /// At least one recipient.
    pub recips: Vec<Vec<u8>>,
}

impl Args {
    /// From the full argv (argv[0] included).
    pub fn parse(argv: Vec<OsString>) -> Result<Args, Usage> {
        let mut it = argv.into_iter().skip(1).map(OsString::into_vec);
        let (Some(host), Some(sender)) = (it.next(), it.next()) else {
            return Err(Usage);
        };
        let recips: Vec<Vec<u8>> = it.collect();
        if recips.is_empty() {
            return Err(Usage);
        }
        Ok(Args {
            host,
            sender,
            recips,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parse() {
        assert_eq!(Args::parse(a(&[])), Err(Usage));
        assert_eq!(Args::parse(a(&["qr", "h", "s"])), Err(Usage));
        let p = Args::parse(a(&["qr", "h", "", "r1", "r2"])).unwrap();
        assert_eq!(p.host, b"h");
        assert_eq!(p.sender, b"");
        assert_eq!(p.recips, vec![b"r1".to_vec(), b"r2".to_vec()]);
    }
}
