//! What the daemon says about itself: the one-line status (systemd STATUS=, logs), input errors
//! reported once per change, and the state file `qmail-guard status` reads.
use std::io;

use guard_loader::{
    PinDir, SyncReport,
    state::{self, DaemonInfo, LastRefusal},
};
use ipme::{Chain, IpmeError};
use tracing::{error, info, warn};

/// The status line: entries, what is guarded, what is awaited, whether input is broken.
pub fn status_line(
    entries: usize,
    attached: &[String],
    waiting: &[String],
    input_error: bool,
) -> String {
    let mut s = format!("{entries} entries");
    if !attached.is_empty() {
        s.push_str(&format!("; guarding {}", attached.join(", ")));
    }
    if !waiting.is_empty() {
        s.push_str(&format!("; waiting for {}", waiting.join(", ")));
    }
    if input_error {
        s.push_str("; control file error, last good set in force");
    }
    s
}

/// The input problems currently in force, logged when they change (or when the control files
/// changed and are still wrong, so an operator who just saved the file sees why).
#[derive(Debug, Default)]
pub struct InputErrors {
    current: Option<String>,
}

impl InputErrors {
    pub fn any(&self) -> bool {
        self.current.is_some()
    }

    pub fn current(&self) -> Option<String> {
        self.current.clone()
    }

    /// Logs `errors` if they differ from the last report (or `control_changed`); true if the
    /// set of problems changed.
    pub fn report(&mut self, errors: &[IpmeError], control_changed: bool) -> bool {
        let joined = (!errors.is_empty()).then(|| {
            errors
                .iter()
                .map(|e| Chain(e).to_string())
                .collect::<Vec<_>>()
                .join("; ")
        });
        if joined == self.current && !(control_changed && joined.is_some()) {
            return false;
        }
        for e in errors {
            match e {
                IpmeError::Parse { file, .. } => {
                    error!("{}; the last good {file} stays in force", Chain(e))
                }
                _ => error!("{}; its last good contents stay in force", Chain(e)),
            }
        }
        if joined.is_none() {
            info!("the control files are valid again");
        }
        let changed = joined != self.current;
        self.current = joined;
        changed
    }
}

/// Logs an error once until it changes or clears (a map that refuses updates is retried every
/// second; the log should say so once).
#[derive(Debug, Default)]
pub struct OnceError(Option<String>);

impl OnceError {
    /// True if `msg` is new (and should be logged).
    pub fn set(&mut self, msg: String) -> bool {
        if self.0.as_ref() == Some(&msg) {
            return false;
        }
        self.0 = Some(msg);
        true
    }

    /// True if there was an error (and its end should be logged).
    pub fn clear(&mut self) -> bool {
        self.0.take().is_some()
    }
}

/// The state file (`/run/qmail-guard/…json`): informational, so a failure to write it is
/// warned about once and never fails the daemon.
pub struct StateFile {
    pins: PinDir,
    warned: bool,
    started: u64,
}

impl StateFile {
    pub fn new(pins: PinDir) -> Self {
        StateFile {
            pins,
            warned: false,
            started: state::now_unix(),
        }
    }

    pub fn record_sync(&mut self, report: &SyncReport) {
        let r = state::record_sync(&self.pins, "daemon", report);
        self.result(r);
    }

    pub fn record_refusal(&mut self, refusal: &LastRefusal) {
        let r = state::record_refusal(&self.pins, refusal);
        self.result(r);
    }

    pub fn write_daemon(&mut self, targets: Vec<String>, input_error: Option<String>) {
        let mut st = state::load(&self.pins);
        st.daemon = Some(DaemonInfo {
            pid: std::process::id(),
            started_unix_time: self.started,
            targets,
            input_error,
        });
        let r = state::store(&self.pins, &st);
        self.result(r);
    }

    fn result(&mut self, r: io::Result<()>) {
        if let Err(e) = r
            && !self.warned
        {
            self.warned = true;
            warn!(
                "cannot write {}: {e}; `qmail-guard status` will not show the last sync nor the last refusal",
                state::path(&self.pins).display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(line: usize) -> IpmeError {
        IpmeError::Parse {
            file: "control/moreipme",
            line,
            reason: "bad".into(),
        }
    }

    #[test]
    fn status_line_parts() {
        assert_eq!(status_line(4, &[], &[], false), "4 entries");
        let a = vec!["qmail.service (/cg/q)".to_string()];
        let w = vec!["/cg/x".to_string()];
        assert_eq!(
            status_line(6, &a, &w, true),
            "6 entries; guarding qmail.service (/cg/q); waiting for /cg/x; control file error, last good set in force"
        );
    }

    #[test]
    fn input_errors_change_once() {
        let mut e = InputErrors::default();
        assert!(!e.report(&[], false));
        assert!(e.report(&[parse_error(3)], false));
        assert!(e.any());
        // Same problem again: not a change, not logged again ...
        assert!(!e.report(&[parse_error(3)], false));
        // ... unless the file was just saved (logged, but the problem did not change).
        assert!(!e.report(&[parse_error(3)], true));
        assert!(e.report(&[parse_error(4)], false));
        assert!(e.report(&[], true));
        assert!(!e.any());
    }

    #[test]
    fn once_error() {
        let mut o = OnceError::default();
        assert!(!o.clear());
        assert!(o.set("full".into()));
        assert!(!o.set("full".into()));
        assert!(o.set("other".into()));
        assert!(o.clear());
        assert!(!o.clear());
    }
}
