//! The standard ipme configuration of the guard tests: which remote addresses exist, what
//! control/moreipme and control/notipme say, and so which destinations are "me".
//!
//! The expected verdicts below follow from the *rules* (docs/architecture.md: longest prefix wins,
//! notipme is an exception, built-ins and interface addresses are always me), not from the
//! implementation.

use crate::guard::Guard;
use crate::topology::MailHost;

/// A single moreipme address, written as the file's last line *without* a newline.
pub const MORE_SINGLE: &str = "198.51.100.50";
/// What qmail's moreipme-0.6 reads for that last line (it loses the last digit): not "me".
pub const MORE_SINGLE_TRUNCATED: &str = "198.51.100.5";
/// A member of the moreipme range 203.0.113.0/255.255.255.0 (0.6 dotted-netmask syntax).
pub const MORE_V4_MEMBER: &str = "203.0.113.7";
/// A notipme exception inside that range.
pub const NOTIPME_V4: &str = "203.0.113.9";
/// A member of the moreipme range 2001:db8:1::/48.
pub const MORE_V6_MEMBER: &str = "2001:db8:1::7";
/// A notipme exception inside that range.
pub const NOTIPME_V6: &str = "2001:db8:1::9";
/// Addresses in no set: some other mail host.
pub const OTHER_V4: &str = "198.51.100.7";
pub const OTHER_V6: &str = "2001:db8:2::7";

/// Every remote address above; they live on the peer, so all of them really connect.
pub const REMOTE: [&str; 8] = [
    MORE_SINGLE,
    MORE_SINGLE_TRUNCATED,
    MORE_V4_MEMBER,
    NOTIPME_V4,
    MORE_V6_MEMBER,
    NOTIPME_V6,
    OTHER_V4,
    OTHER_V6,
];

/// control/moreipme: a comment, 0.6 dotted netmask, a blank line, IPv6 CIDR, and a last line
/// without newline.
pub const MOREIPME: &str =
    "# moreipme of the guard tests\n203.0.113.0/255.255.255.0\n\n2001:db8:1::/48\n198.51.100.50";
/// control/notipme: one exception in each moreipme range.
pub const NOTIPME: &str = "203.0.113.9\n2001:db8:1::9\n";

/// Destinations that are "me" whatever the configuration: the built-ins, as the kernel
/// rewrites 0.0.0.0 and :: to loopback after the hook.
pub const ALWAYS_ME: [&str; 6] = [
    "127.0.0.1",
    "127.0.0.2",
    "0.0.0.0",
    "::1",
    "::",
    "::ffff:127.0.0.1",
];

/// The standard scene: the mail host with every remote address reachable.
pub fn mail_host() -> MailHost {
    MailHost::new(&REMOTE)
}

/// Writes the standard control/moreipme and control/notipme.
pub fn write_control(guard: &Guard) {
    guard.write_control("moreipme", MOREIPME);
    guard.write_control("notipme", NOTIPME);
}
