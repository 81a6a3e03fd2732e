//! Figures measured outside this benchmark, quoted from the issues as constants and always
//! labelled as such in the table: they were not measured in the same run.

/// stock C qmail-remote, 4 KB delivery to a loopback sink.
pub const DELIVERY_4K_CPU_MS: f64 = 1.2;
pub const DELIVERY_4K_WALL_MS: f64 = 44.0;
/// The same with TCP_NODELAY (stock pays a Nagle/delayed-ACK stall without it).
pub const DELIVERY_4K_WALL_NODELAY_MS: f64 = 1.5;
pub const DELIVERY_RSS: &str = "1.1–1.35 MB";
pub const DELIVERY_SYSCALLS: u64 = 102;
/// stock, 1 MB.
pub const DELIVERY_1M_CPU_MS: f64 = 9.9;

/// an unguarded, unmodified qmail looping through NAT until qmail-smtpd's hop
/// counter bounced the message.
pub const LOOP_HOPS: u32 = 50;
pub const LOOP_WALL_MS: f64 = 1650.0;
pub const LOOP_CPU_MS: f64 = 271.0;
/// stock qmail's own ipme path (the address known): bounce without a connection.
pub const IPME_WALL_MS: f64 = 32.0;
pub const IPME_CPU_MS: f64 = 6.3;

/// Targets (issues 3, 4).
pub const TARGET_WALL_4K_MS: f64 = 2.0;
pub const TARGET_RSS_MB: f64 = 2.5;
pub const TARGET_SYSCALLS: u64 = 130;
pub const TARGET_UPDATE_P99_MS: f64 = 5.0;

/// The TLS-patched C qmail-remote (notqmail + qmail-tls 20231230, OpenSSL 3.0.19), 4 KB to Exim
/// 4.96 with STARTTLS (TLS 1.3) and in plaintext (`notlshosts`): the anchor figures of
/// docs/qmail-remote-tls.md's source, measured elsewhere.
pub const TLS_4K_CPU_MS: f64 = 5.49;
pub const TLS_4K_RSS_KIB: f64 = 6568.0;
pub const TLS_PLAIN_4K_CPU_MS: f64 = 2.56;
pub const TLS_PLAIN_4K_RSS_KIB: f64 = 3340.0;
/// Target: statically linked plaintext delivery.
pub const TARGET_PLAIN_RSS_MB: f64 = 2.0;

/// A stock qmail-remote to measure side by side (`--stock-qmail-remote`).
#[derive(Debug, Clone)]
pub struct Binary {
    /// The executable.
    pub path: std::path::PathBuf,
    /// Its compiled-in qmail home (conf-qmail), where the bench home is bind-mounted.
    pub home: std::path::PathBuf,
}

/// For a stock binary: gives the calling thread (and the children it spawns) a private mount
/// namespace in which the bench's qmail home appears at the binary's compiled-in home, so
/// stock reads the same control files as ours. Nothing is visible outside the thread.
pub fn enter_home(stock: Option<&Binary>, home: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::{Context as _, bail};
    use std::os::unix::ffi::OsStrExt as _;
    let Some(s) = stock else {
        return Ok(());
    };
    if !s.home.is_dir() {
        bail!(
            "{} does not exist: create an empty directory there (the benchmark mounts its qmail home over it, privately) or pass --stock-qmail-home",
            s.home.display()
        );
    }
    let c = |p: &std::path::Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let binds = [(c(home)?, c(&s.home)?)];
    // SAFETY: unshare/mount on valid C strings, affecting this thread only.
    unsafe { guard_tests::nsenter::private_binds(&binds) }.with_context(|| {
        format!(
            "bind-mounting the qmail home on {} in a private mount namespace",
            s.home.display()
        )
    })?;
    Ok(())
}
