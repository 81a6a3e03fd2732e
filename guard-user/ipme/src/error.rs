//! Errors of the ipme module.

use std::io;
use std::path::PathBuf;

/// Why the ipme set could not be computed.
///
/// Messages are complete on one line (the cause is part of the text) because qmail tools print
/// them as `prog: <error>`.
#[derive(Debug, thiserror::Error)]
pub enum IpmeError {
    /// A bad control-file line: `control/moreipme:LINE: reason`. Permanent until the file is
    /// fixed (ipmeprint exits 100).
    #[error("{file}:{line}: {reason}")]
    Parse {
        /// Label relative to the qmail home, e.g. `control/moreipme`.
        file: &'static str,
        /// 1-based line number.
        line: usize,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// A control file exists but cannot be read (a directory, permissions, I/O).
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// getifaddrs failed.
    #[error("cannot list interface addresses: {0}")]
    Interfaces(#[source] io::Error),
    /// The netlink dump of the local routing table failed.
    #[error("cannot read the kernel's local routing table: {0}")]
    Netlink(#[source] io::Error),
}

impl IpmeError {
    /// True for a bad control line (a configuration error that retrying will not fix);
    /// false for read/system errors, which are temporary.
    pub fn is_parse(&self) -> bool {
        matches!(self, IpmeError::Parse { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        let e = IpmeError::Parse {
            file: "control/moreipme",
            line: 7,
            reason: "bad".into(),
        };
        assert_eq!(e.to_string(), "control/moreipme:7: bad");
        assert!(e.is_parse());
        let e = IpmeError::Read {
            path: "/var/qmail/control/notipme".into(),
            source: io::Error::from_raw_os_error(libc::EISDIR),
        };
        assert!(
            e.to_string()
                .starts_with("cannot read /var/qmail/control/notipme: ")
        );
        assert!(!e.is_parse());
    }
}
