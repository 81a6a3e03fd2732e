//! `MxScene`: a sending host and a network of mail servers, for qmail-remote's DNS tests.
//!
//! ```text
//!  netns "client" (qmail-remote, dnsmasq)          netns "servers"
//!  lo   127.0.0.1 (dnsmasq :53)                    lo   the server addresses a test asks for
//!  eth0 192.0.2.10/24 2001:db8:ff::10/64 ──veth── up0  192.0.2.1/24 2001:db8:ff::1/64
//!  default routes via the servers netns            SMTP sinks bound to the lo addresses
//! ```
//! Server addresses live in the other namespace because every address of the client's own
//! namespace is "me" to qmail-remote's loop rule.

use crate::netns::Netns;
use crate::unique::unique_name;

/// The client's own addresses.
pub const CLIENT_V4: &str = "192.0.2.10";
pub const CLIENT_V6: &str = "2001:db8:ff::10";

/// Two namespaces joined by a veth.
pub struct MxScene {
    pub client: Netns,
    pub servers: Netns,
}

impl MxScene {
    /// Builds the scene with `server_addrs` (v4 or v6, no prefix) on the servers' loopback.
    pub fn new(server_addrs: &[&str]) -> MxScene {
        let client = Netns::new(&unique_name());
        let servers = Netns::new(&unique_name());
        Netns::veth(&client, "eth0", &servers, "up0");
        client.add_addr("eth0", &format!("{CLIENT_V4}/24"));
        client.add_addr("eth0", &format!("{CLIENT_V6}/64"));
        servers.add_addr("up0", "192.0.2.1/24");
        servers.add_addr("up0", "2001:db8:ff::1/64");
        client.ip(&["route", "add", "default", "via", "192.0.2.1"]);
        client.ip(&["-6", "route", "add", "default", "via", "2001:db8:ff::1"]);
        for a in server_addrs {
            let len = if a.contains(':') { 128 } else { 32 };
            servers.add_addr("lo", &format!("{a}/{len}"));
        }
        MxScene { client, servers }
    }
}
