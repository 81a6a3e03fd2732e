//! `LoopScene`: the NAT loop nobody configured, for the greeting-check tests.
//!
//! ```text
//!  netns "host" (the mail host)                     netns "router"
//!  eth0 192.0.2.10/24 ──────────────veth────────────  up0 192.0.2.1/24
//!  default route via the router                       DNAT 198.51.100.25:25 → 192.0.2.10:25,
//!  SMTP server on 192.0.2.10:25 greeting as             hairpin masquerade
//!    mail.nat.test (the host's own qmail-smtpd)       lo 198.51.100.7 (a better MX, port closed)
//!  dnsmasq: nat.test MX 10 → 198.51.100.25,
//!    backup.test MX 5 → 198.51.100.7, MX 10 → 198.51.100.25
//!  cgroup: qmail-remote runs in it
//! ```
//! The qmail home (shared by qmail-guard and qmail-remote) has `control/me` =
//! `mail.nat.test` and no moreipme: nothing tells qmail that 198.51.100.25 is this host.

use crate::cgroup::Cgroup;
use crate::dnsmasq::Dnsmasq;
use crate::netns::Netns;
use crate::smtp_sink::{Reply, Script, SmtpSink};
use crate::unique::unique_name;

/// The router's public address, forwarded to the mail host.
pub const PUBLIC: &str = "198.51.100.25";
/// A better MX of `backup.test` whose port is closed (connection refused).
pub const BETTER_MX: &str = "198.51.100.7";
pub const HOST_V4: &str = "192.0.2.10";
pub const ROUTER_V4: &str = "192.0.2.1";
/// The name the mail host's own SMTP server greets with (and `control/me`).
pub const OUR_NAME: &str = "mail.nat.test";
/// MX → PUBLIC only (we are the best MX).
pub const BEST_MX_DOMAIN: &str = "nat.test";
/// MX 5 → BETTER_MX, MX 10 → PUBLIC.
pub const BACKUP_MX_DOMAIN: &str = "backup.test";

pub struct LoopScene {
    // Field order is drop order: the server and dnsmasq go before their namespace.
    pub smtpd: SmtpSink,
    pub dns: Dnsmasq,
    pub cgroup: Cgroup,
    pub host: Netns,
    pub router: Netns,
}

impl LoopScene {
    pub fn new() -> LoopScene {
        let host = Netns::new(&unique_name());
        let router = Netns::new(&unique_name());
        Netns::veth(&host, "eth0", &router, "up0");
        host.add_addr("eth0", &format!("{HOST_V4}/24"));
        router.add_addr("up0", &format!("{ROUTER_V4}/24"));
        router.add_addr("lo", &format!("{BETTER_MX}/32"));
        host.ip(&["route", "add", "default", "via", ROUTER_V4]);
        router.sysctl("net.ipv4.ip_forward", "1");
        router.sysctl("net.ipv4.conf.all.send_redirects", "0");
        router.sysctl("net.ipv4.conf.up0.send_redirects", "0");
        router.nft(&format!(
            "table ip qgt_nat {{
                chain pre {{
                    type nat hook prerouting priority -100; policy accept;
                    ip daddr {PUBLIC} tcp dport 25 dnat to {HOST_V4}:25
                }}
                chain post {{
                    type nat hook postrouting priority 100; policy accept;
                    ip daddr {HOST_V4} tcp dport 25 oifname \"up0\" iifname \"up0\" masquerade
                }}
            }}"
        ));
        let dns = Dnsmasq::start(
            &host,
            &[
                &format!("mx-host={BEST_MX_DOMAIN},mx.{BEST_MX_DOMAIN},10"),
                &format!("host-record=mx.{BEST_MX_DOMAIN},{PUBLIC}"),
                &format!("mx-host={BACKUP_MX_DOMAIN},mx1.{BACKUP_MX_DOMAIN},5"),
                &format!("mx-host={BACKUP_MX_DOMAIN},mx.{BEST_MX_DOMAIN},10"),
                &format!("host-record=mx1.{BACKUP_MX_DOMAIN},{BETTER_MX}"),
            ],
        );
        // The host's own SMTP server, as qmail-smtpd greets: `220 NAME ESMTP`, `250 NAME`.
        let script = Script {
            greeting: Reply::line(&format!("220 {OUR_NAME} ESMTP")),
            helo: Reply::line(&format!("250-{OUR_NAME}\n250 PIPELINING")),
            ..Script::default()
        };
        let smtpd = SmtpSink::start(Some(&host), &format!("{HOST_V4}:25"), script);
        LoopScene {
            smtpd,
            dns,
            cgroup: Cgroup::new(&unique_name()),
            host,
            router,
        }
    }
}

impl Default for LoopScene {
    fn default() -> Self {
        Self::new()
    }
}
