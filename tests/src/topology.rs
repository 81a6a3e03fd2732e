//! `MailHost`: the standard scene of a guard test.
//!
//! ```text
//!  netns "host" (the mail host)                      netns "peer" (router + other hosts)
//!  lo      127.0.0.1/8 ::1                            lo  the REMOTE addresses a test asks for
//!  eth0    192.0.2.10/24 2001:db8:ff::10/64  ──veth── up0 192.0.2.1/24 2001:db8:ff::1/64
//!  default routes via the peer                        listener on [::]:LISTEN_PORTS
//!  listener on [::]:LISTEN_PORTS
//!  cgroup: guarded processes (probes) join it before entering the netns
//! ```
//! Addresses that must *not* be interface addresses of the mail host (moreipme entries,
//! "some other host") live on the peer, so that before the guard is attached every target
//! really connects: a later ELOOP can only come from the guard.

use crate::cgroup::Cgroup;
use crate::listener::Listener;
use crate::netns::Netns;
use crate::probe::{self, ProbeResult};
use crate::unique::unique_name;

/// The mail host's interface addresses.
pub const HOST_V4: &str = "192.0.2.10";
pub const HOST_V6: &str = "2001:db8:ff::10";
/// The peer's (router's) addresses on the shared link.
pub const PEER_V4: &str = "192.0.2.1";
pub const PEER_V6: &str = "2001:db8:ff::1";
/// Names of the veth ends.
pub const HOST_DEV: &str = "eth0";
pub const PEER_DEV: &str = "up0";
/// Ports with a listener in both namespaces: SMTP, an unguarded port, and a spare.
pub const LISTEN_PORTS: [u16; 3] = [25, 2525, 2526];

/// Two namespaces joined by a veth, listeners on both sides, and an (unguarded) cgroup.
pub struct MailHost {
    // Field order is drop order: listeners die before their namespaces go.
    pub host_listener: Listener,
    pub peer_listener: Listener,
    pub cgroup: Cgroup,
    pub host: Netns,
    pub peer: Netns,
}

impl MailHost {
    /// Builds the scene; `remote` are addresses (v4 or v6, without prefix) put on the peer's
    /// loopback and reachable from the mail host through its default routes.
    pub fn new(remote: &[&str]) -> MailHost {
        let host = Netns::new(&unique_name());
        let peer = Netns::new(&unique_name());
        Netns::veth(&host, HOST_DEV, &peer, PEER_DEV);
        host.add_addr(HOST_DEV, &format!("{HOST_V4}/24"));
        host.add_addr(HOST_DEV, &format!("{HOST_V6}/64"));
        peer.add_addr(PEER_DEV, &format!("{PEER_V4}/24"));
        peer.add_addr(PEER_DEV, &format!("{PEER_V6}/64"));
        host.ip(&["route", "add", "default", "via", PEER_V4]);
        host.ip(&["-6", "route", "add", "default", "via", PEER_V6]);
        for a in remote {
            let len = if a.contains(':') { 128 } else { 32 };
            peer.add_addr("lo", &format!("{a}/{len}"));
        }
        let host_listener = Listener::new(&host, "::", &LISTEN_PORTS);
        let peer_listener = Listener::new(&peer, "::", &LISTEN_PORTS);
        let cgroup = Cgroup::new(&unique_name());
        MailHost {
            host_listener,
            peer_listener,
            cgroup,
            host,
            peer,
        }
    }

    /// A TCP connect from a process in the cgroup, inside the mail host's netns.
    pub fn connect(&self, addr: &str, port: u16) -> ProbeResult {
        probe::connect(Some(&self.cgroup), &self.host, addr, port)
    }

    /// The same connect from a process outside the cgroup.
    pub fn connect_outside(&self, addr: &str, port: u16) -> ProbeResult {
        probe::connect(None, &self.host, addr, port)
    }

    /// `guard-probe KIND ADDR PORT` (connect, tfo, child-connect) from inside the cgroup.
    pub fn probe(&self, kind: &str, addr: &str, port: u16) -> ProbeResult {
        probe::spawn_probe(
            Some(&self.cgroup),
            &self.host,
            &[kind, addr, &port.to_string()],
        )
    }

    /// Asserts that every `(addr, port)` connects from inside the cgroup: the scene works and
    /// a later refusal is the guard's doing.
    pub fn assert_all_connect(&self, targets: &[(&str, u16)], when: &str) {
        let failed: Vec<_> = targets
            .iter()
            .map(|&(a, p)| (a, p, self.connect(a, p)))
            .filter(|(_, _, r)| *r != ProbeResult::Ok)
            .collect();
        assert!(
            failed.is_empty(),
            "{when}: expected every connect to succeed, these did not: {failed:?}"
        );
    }

    /// Asserts the result of a connect from inside the cgroup for each target.
    pub fn assert_connects(&self, expected: &[(&str, u16, ProbeResult)], when: &str) {
        let wrong: Vec<String> = expected
            .iter()
            .filter_map(|&(a, p, want)| {
                let got = self.connect(a, p);
                (got != want).then(|| format!("[{a}]:{p}: expected {want:?}, got {got:?}"))
            })
            .collect();
        assert!(wrong.is_empty(), "{when}:\n  {}", wrong.join("\n  "));
    }
}
