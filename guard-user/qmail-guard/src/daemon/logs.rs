//! Logging: where the daemon's messages go, and the refusal records of the kernel programs.
//!
//! The programs write one aya-log record per refused connect into their `AYA_LOGS` ring
//! buffer; the daemon drains it (found through the pinned program's id, so it also works for
//! programs loaded by an earlier `attach`) and re-emits each record through `tracing`: to
//! stderr by default, to the journal (with priorities) when systemd connected us to it.
use std::{
    io,
    panic::{AssertUnwindSafe, catch_unwind},
};

use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::Level;
use tracing_subscriber::{
    filter::LevelFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// Target of the refusal events (`qmail_guard::refusal`), so filters can pick them out.
pub const REFUSAL_TARGET: &str = "qmail_guard::refusal";

/// Installs the global subscriber. `QMAIL_GUARD_LOG` (error, warn, info, debug, trace) sets the
/// level, info by default. `JOURNAL_STREAM` is set by systemd when our output goes to the
/// journal: then records go to journald natively, keeping their priority.
pub fn init_logging() {
    let level = std::env::var("QMAIL_GUARD_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let journald = std::env::var_os("JOURNAL_STREAM")
        .is_some()
        .then(tracing_journald::layer)
        .and_then(Result::ok);
    let registry = tracing_subscriber::registry().with(level);
    let result = match journald {
        Some(j) => registry.with(j).try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(io::stderr)
                    .with_ansi(false)
                    .with_target(false),
            )
            .try_init(),
    };
    // Already initialised (tests): keep the existing subscriber.
    let _ = result;
}

/// Forwards aya-log records (the `log` crate) to `tracing`, at their own level.
pub struct Forward;

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = sanitize(&record.args().to_string());
        match record.level() {
            log::Level::Error => tracing::event!(target: REFUSAL_TARGET, Level::ERROR, "{msg}"),
            log::Level::Warn => tracing::event!(target: REFUSAL_TARGET, Level::WARN, "{msg}"),
            log::Level::Info => tracing::event!(target: REFUSAL_TARGET, Level::INFO, "{msg}"),
            log::Level::Debug => tracing::event!(target: REFUSAL_TARGET, Level::DEBUG, "{msg}"),
            log::Level::Trace => tracing::event!(target: REFUSAL_TARGET, Level::TRACE, "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// One line, whatever the task name holds: the programs log all 16 bytes of `comm`, so its NUL
/// padding is dropped here, and control characters (a process chooses its own name) are
/// escaped so that a name cannot forge or split log lines.
pub fn sanitize(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for c in msg.chars() {
        match c {
            '\0' => {}
            c if c.is_control() => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// The refusal log reader of one loaded program set.
pub struct RefusalLog {
    fd: AsyncFd<EbpfLogger<Forward>>,
    program_id: u32,
}

impl RefusalLog {
    /// Attaches to the `AYA_LOGS` ring buffer referenced by program `program_id`.
    pub fn open(program_id: u32) -> Result<Self, String> {
        let logger = EbpfLogger::init_from_id_with_logger(program_id, Forward)
            .map_err(|e| format!("cannot read the refusal log of program {program_id}: {e}"))?;
        let fd = super::fd::register_with_interest(logger, Interest::READABLE)
            .map_err(|e| format!("cannot poll the refusal log: {e}"))?;
        let mut log = RefusalLog { fd, program_id };
        // Records written while no daemon ran are still in the ring: report them now.
        log.flush();
        Ok(log)
    }

    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Emits every queued record.
    pub fn flush(&mut self) {
        let logger = self.fd.get_mut();
        // aya-log unwraps on a malformed record; one bad record must not kill the daemon that
        // keeps the guard current.
        if catch_unwind(AssertUnwindSafe(|| logger.flush())).is_err() {
            tracing::error!("dropped a malformed refusal log record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_drops_padding_and_escapes_controls() {
        assert_eq!(
            sanitize("refused pid=1 comm=qmail-remote\0\0\0\0 dst=192.0.2.1:25 source=interface"),
            "refused pid=1 comm=qmail-remote dst=192.0.2.1:25 source=interface"
        );
        assert_eq!(sanitize("comm=a\nb\x1b[31m"), "comm=a\\nb\\u{1b}[31m");
    }
}
