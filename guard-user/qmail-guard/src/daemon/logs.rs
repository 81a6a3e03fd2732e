//! Logging: where the daemon's messages go, and the refusal records of the kernel programs.
//!
//! The programs write one aya-log record per refused connect into their `AYA_LOGS` ring
//! buffer; the daemon drains it (found through the pinned program's id, so it also works for
//! programs loaded by an earlier `attach`) and re-emits each record through `tracing`: to
//! stderr by default, to the journal (with priorities) when systemd connected us to it.
use std::{
    io,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use guard_loader::{GuardMaps, PinDir, state::LastRefusal};

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

/// Default of `--log-rate`: refusal lines per second.
pub const DEFAULT_LOG_RATE: u32 = 10;

/// The lines the current second may still show, shared with [`Forward`] (which the ring
/// buffer reader owns, so it must be Sync).
#[derive(Debug, Default)]
pub struct Budget {
    remaining: AtomicU32,
    /// Lines shown since the reader was opened.
    shown: AtomicU64,
    /// Records read but not shown since the last summary.
    discarded: AtomicU64,
    /// Records are read as they come (not the backlog found at open, whose time is unknown).
    live: AtomicBool,
    /// The newest record read live, shown or not, until taken.
    last: Mutex<Option<String>>,
}

impl Budget {
    fn take(&self) -> bool {
        self.remaining
            .try_update(Relaxed, Relaxed, |r| r.checked_sub(1))
            .is_ok()
    }
}

/// Forwards aya-log records (the `log` crate) to `tracing`, at their own level, while the
/// budget lasts; beyond it a record is only counted, not even formatted.
pub struct Forward {
    budget: Arc<Budget>,
}

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // aya-log hands over an already formatted message: keeping it is one copy.
        if self.budget.live.load(Relaxed) {
            let mut last = self.budget.last.lock().unwrap_or_else(|p| p.into_inner());
            *last = Some(record.args().to_string());
        }
        if !self.budget.take() {
            self.budget.discarded.fetch_add(1, Relaxed);
            return;
        }
        self.budget.shown.fetch_add(1, Relaxed);
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

/// The refusal log reader of one loaded program set, at most `limit` lines per second.
///
/// A refusal storm must not cost the daemon a core nor flood the journal: once a second's
/// lines are used up, the reader stops reading the ring buffer until the next second (the
/// kernel then drops records cheaply when the ring is full; its refusal counters stay exact).
/// At the second's end it empties the ring without formatting and logs one summary,
/// `… N more refusals suppressed`, where N comes from the STATS counters, so lines plus
/// summaries account for every refusal. Seconds are wall-clock seconds, so no clock second
/// holds more than `limit` refusal lines and one summary.
pub struct RefusalLog {
    fd: AsyncFd<EbpfLogger<Forward>>,
    program_id: u32,
    budget: Arc<Budget>,
    limit: u32,
    /// End of the current second (wall clock, as a monotonic deadline).
    window_end: tokio::time::Instant,
    /// The budget ran out: the ring is not read until `window_end`.
    paused: bool,
    /// The STATS map, for the exact count of suppressed refusals.
    stats: Option<GuardMaps>,
    /// Refusals counted by STATS when the reader was opened.
    baseline: u64,
    /// Refusals already reported as suppressed.
    reported: u64,
}

impl RefusalLog {
    /// Attaches to the `AYA_LOGS` ring buffer referenced by program `program_id`.
    pub fn open(program_id: u32, pins: &PinDir, limit: u32) -> Result<Self, String> {
        let budget = Arc::new(Budget::default());
        let forward = Forward {
            budget: Arc::clone(&budget),
        };
        let logger = EbpfLogger::init_from_id_with_logger(program_id, forward)
            .map_err(|e| format!("cannot read the refusal log of program {program_id}: {e}"))?;
        let fd = super::fd::register_with_interest(logger, Interest::READABLE)
            .map_err(|e| format!("cannot poll the refusal log: {e}"))?;
        let mut log = RefusalLog {
            fd,
            program_id,
            budget,
            limit,
            window_end: next_second(),
            paused: false,
            stats: GuardMaps::open(pins).ok(),
            baseline: 0,
            reported: 0,
        };
        // Records written while no daemon ran are still in the ring: report them now, the
        // ones beyond the budget as a count.
        log.budget.remaining.store(limit, Relaxed);
        log.read_ring();
        let before = log.budget.discarded.swap(0, Relaxed);
        if before > 0 {
            suppressed_line(before, limit);
        }
        log.baseline = log.counted().unwrap_or(0);
        log.budget.shown.store(0, Relaxed);
        log.paused = log.budget.remaining.load(Relaxed) == 0;
        log.budget.live.store(true, Relaxed);
        Ok(log)
    }

    /// The newest refusal read since the last call, stamped with the time now.
    pub fn take_last(&self) -> Option<LastRefusal> {
        let msg = self
            .budget
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        super::refusal::parse(&msg, guard_loader::state::now_unix())
    }

    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    /// Ready when records wait, or, while paused, when the second is over.
    pub async fn readable(&self) -> io::Result<()> {
        if self.paused {
            tokio::time::sleep_until(self.window_end).await;
            return Ok(());
        }
        let mut guard = self.fd.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Emits queued records within this second's budget; at a second's end, the summary.
    pub fn flush(&mut self) {
        if tokio::time::Instant::now() >= self.window_end {
            self.next_window();
        }
        if !self.paused {
            self.read_ring();
            self.paused = self.budget.remaining.load(Relaxed) == 0;
        }
    }

    /// At exit: the last summary, if one is due.
    pub fn finish(&mut self) {
        self.flush();
        if self.paused {
            self.summarize();
        }
    }

    fn next_window(&mut self) {
        if self.paused {
            self.summarize();
        }
        self.budget.remaining.store(self.limit, Relaxed);
        self.paused = false;
        self.window_end = next_second();
    }

    /// Empties the ring without showing anything, then reports what was not shown.
    fn summarize(&mut self) {
        self.budget.remaining.store(0, Relaxed);
        self.read_ring();
        let discarded = self.budget.discarded.swap(0, Relaxed);
        let n = match self.counted() {
            Some(c) => c
                .saturating_sub(self.baseline)
                .saturating_sub(self.budget.shown.load(Relaxed) + self.reported),
            // Without STATS only the records read are known (the kernel may have dropped more).
            None => discarded,
        };
        if n > 0 {
            self.reported += n;
            suppressed_line(n, self.limit);
        }
    }

    /// Refusals counted by the programs (both families), if STATS is readable.
    fn counted(&self) -> Option<u64> {
        let s = self.stats.as_ref()?.stats().ok()?;
        Some(s.refused_v4 + s.refused_v6)
    }

    fn read_ring(&mut self) {
        let logger = self.fd.get_mut();
        // aya-log unwraps on a malformed record; one bad record must not kill the daemon that
        // keeps the guard current.
        if catch_unwind(AssertUnwindSafe(|| logger.flush())).is_err() {
            tracing::error!("dropped a malformed refusal log record");
        }
    }
}

fn suppressed_line(n: u64, limit: u32) {
    tracing::event!(
        target: REFUSAL_TARGET,
        Level::INFO,
        "… {n} more refusals suppressed (at most {limit} refusal lines per second, --log-rate; `qmail-guard status` counts every refusal)"
    );
}

/// The next whole second of the wall clock, as a deadline of the monotonic clock.
fn next_second() -> tokio::time::Instant {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(1) - Duration::from_nanos(u64::from(since.subsec_nanos()));
    tokio::time::Instant::now() + left
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

    #[test]
    fn budget_counts_down_and_refuses_at_zero() {
        let b = Budget::default();
        b.remaining.store(2, Relaxed);
        assert!(b.take() && b.take());
        assert!(!b.take());
        assert_eq!(b.remaining.load(Relaxed), 0);
    }

    #[test]
    fn windows_end_on_whole_seconds() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let left = next_second() - tokio::time::Instant::now();
            assert!(left <= Duration::from_secs(1));
        });
    }
}
