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
