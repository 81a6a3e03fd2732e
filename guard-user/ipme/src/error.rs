//! Errors of the ipme module.

use std::io;
use std::path::PathBuf;

/// Why the ipme set could not be computed.
///
/// The message says what failed; the source, where there is one, says why. Print the chain
/// with [`crate::Chain`] (`prog: what failed: why`).
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
    /// A control file that is not something to read: a FIFO, a device, a directory, or larger
    /// than [`crate::MAX_CONTROL_BYTES`]. `control/moreipme: reason`. Permanent until fixed.
    #[error("{file}: {reason}")]
    Unusable {
        /// Label relative to the qmail home, e.g. `control/moreipme`.
        file: &'static str,
        /// What it is and what to do.
        reason: String,
    },
    /// A control file exists but cannot be read (permissions, I/O).
    #[error("cannot read {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// getifaddrs failed.
    #[error("cannot list interface addresses")]
    Interfaces(#[source] io::Error),
    /// The netlink dump of the local routing table failed.
    #[error("cannot read the kernel's local routing table")]
    Netlink(#[source] io::Error),
}

/// Displays an error and its sources on one line, each once, in order: `what: why: deeper why`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

impl IpmeError {
    /// True for a bad control line or an unusable control file (a configuration error that
    /// retrying will not fix); false for read/system errors, which are temporary.
    pub fn is_parse(&self) -> bool {
        matches!(self, IpmeError::Parse { .. } | IpmeError::Unusable { .. })
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
        assert_eq!(e.to_string(), "cannot read /var/qmail/control/notipme");
        assert_eq!(
            crate::Chain(&e).to_string(),
            format!(
                "cannot read /var/qmail/control/notipme: {}",
                io::Error::from_raw_os_error(libc::EISDIR)
            )
        );
        assert!(!e.is_parse());
    }
}
