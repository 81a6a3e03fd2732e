//! The NAT loop scene (docs/architecture.md), shared by the demo and the bench:
//!
//! ```text
//!  netns qgx<pid>-mail (the mail host)                netns qgx<pid>-router (NAT router)
//!  lo   127.0.0.1, dnsmasq on :53                     up0 192.0.2.1/24
//!  eth0 192.0.2.10/24 ───────────── veth ──────────── nftables: 198.51.100.25:25 → DNAT
//!  default route via 192.0.2.1                            192.0.2.10:25, hairpin masquerade
//! ```
//! 198.51.100.25 is the mail host's public address: no interface holds it, so qmail's own
//! ipme check cannot know it is "me". dnsmasq answers `MX loop.test` with it.

use std::path::PathBuf;

use anyhow::Result;
use guard_tests::Netns;
use guard_tests::dnsmasq::Dnsmasq;

use super::harness::attempt;
use super::names;

/// The forwarded public address.
pub const PUBLIC: &str = "198.51.100.25";
/// The mail host's interface address (the DNAT target).
pub const MAIL_V4: &str = "192.0.2.10";
/// The router's address on the shared link.
pub const ROUTER_V4: &str = "192.0.2.1";
pub const MAIL_DEV: &str = "eth0";
pub const ROUTER_DEV: &str = "up0";
/// The looping mail domain and its MX host name.
pub const DOMAIN: &str = "loop.test";
pub const MX_HOST: &str = "mx.loop.test";
/// SMTP.
pub const SMTP: u16 = 25;

/// Both namespaces; Drop deletes them (veth, nftables and routes go with them).
pub struct NatScene {
    pub mail: Netns,
    pub router: Netns,
}

impl NatScene {
    pub fn new() -> Result<NatScene> {
        attempt("building the NAT scene", || {
            let mail = Netns::new(&names::name("mail"));
            let router = Netns::new(&names::name("router"));
            Netns::veth(&mail, MAIL_DEV, &router, ROUTER_DEV);
            mail.add_addr(MAIL_DEV, &format!("{MAIL_V4}/24"));
            router.add_addr(ROUTER_DEV, &format!("{ROUTER_V4}/24"));
            mail.ip(&["route", "add", "default", "via", ROUTER_V4]);
            router.sysctl("net.ipv4.ip_forward", "1");
            // The hairpin leaves where it came in; an ICMP redirect to the host itself is noise.
            router.sysctl("net.ipv4.conf.all.send_redirects", "0");
            router.sysctl(&format!("net.ipv4.conf.{ROUTER_DEV}.send_redirects"), "0");
            router.nft(&ruleset());
            NatScene { mail, router }
        })
    }

    /// dnsmasq in the mail host's namespace answering `MX loop.test` → 198.51.100.25, with
    /// /etc/netns/<mail>/resolv.conf pointing at it. Drop stops it and removes that file.
    pub fn dns(&self) -> Result<Dnsmasq> {
        let mx = format!("mx-host={DOMAIN},{MX_HOST},10");
        let a = format!("host-record={MX_HOST},{PUBLIC}");
        attempt("starting dnsmasq", || {
            Dnsmasq::start(&self.mail, &[mx.as_str(), a.as_str()])
        })
    }

    /// The resolv.conf that `ip netns exec` would bind-mount for the mail host.
    pub fn resolv_conf(&self) -> PathBuf {
        PathBuf::from("/etc/netns")
            .join(self.mail.name())
            .join("resolv.conf")
    }
}

/// The router's port forward, in nft syntax (also printed by the demo).
pub fn ruleset() -> String {
    format!(
        "table ip qgx_nat {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {PUBLIC} tcp dport {SMTP} dnat to {MAIL_V4}:{SMTP}
    }}
    chain post {{
        type nat hook postrouting priority srcnat; policy accept;
        ip daddr {MAIL_V4} tcp dport {SMTP} iifname \"{ROUTER_DEV}\" oifname \"{ROUTER_DEV}\" masquerade
    }}
}}
"
    )
}
