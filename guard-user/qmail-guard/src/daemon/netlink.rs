//! Address and local-route changes from the kernel: an rtnetlink socket subscribed to the
//! IPv4/IPv6 address and route multicast groups. getifaddrs alone would never tell us that an
//! address was added to an existing link; this does, within microseconds.
use std::io;

use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use tokio::io::unix::AsyncFd;

use ipme::{is_local_route, route_messages};

/// Large enough that a burst (a script adding hundreds of addresses) rarely overflows; an
/// overflow is not fatal anyway: it triggers a full recompute.
const RCVBUF: usize = 4 << 20;

/// What a drain of the socket found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetlinkNews {
    /// An address changed, or a local route (of any table).
    pub relevant: bool,
    /// The kernel dropped notifications (ENOBUFS): only a full recompute is safe.
    pub overflow: bool,
}

pub struct NetlinkWatch {
    fd: AsyncFd<Socket>,
    buf: Vec<u8>,
}

impl NetlinkWatch {
    /// Subscribes before the first full computation, so no change between the two is lost.
    pub fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        for group in [
            libc::RTNLGRP_IPV4_IFADDR,
            libc::RTNLGRP_IPV6_IFADDR,
            libc::RTNLGRP_IPV4_ROUTE,
            libc::RTNLGRP_IPV6_ROUTE,
        ] {
            socket.add_membership(group)?;
        }
        // Best effort: the kernel caps SO_RCVBUF at net.core.rmem_max.
        let _ = socket.set_rx_buf_sz(RCVBUF);
        socket.set_non_blocking(true)?;
        Ok(NetlinkWatch {
            fd: super::fd::register(socket)?,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Waits until the socket has something to read.
    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        // Cleared before draining: anything arriving after this wakes us again.
        guard.clear_ready();
        Ok(())
    }

    /// Reads every queued notification without blocking and classifies them.
    pub fn drain(&mut self) -> io::Result<NetlinkNews> {
        let mut news = NetlinkNews::default();
        loop {
            let socket = self.fd.get_ref();
            match socket.recv(&mut &mut self.buf[..], libc::MSG_TRUNC) {
                Ok(n) if n > self.buf.len() => {
                    // Truncated: we cannot tell what it was, so assume it matters.
                    news.relevant = true;
                }
                Ok(n) => news.relevant |= classify(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(news),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => news.overflow = true,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether a datagram of notifications holds an address change or a local route change.
/// Anything unparsable counts as relevant: a needless recompute costs far less than a missed one.
pub fn classify(buf: &[u8]) -> bool {
    for msg in route_messages(buf) {
        let Ok(msg) = msg else { return true };
        match &msg.payload {
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_),
            ) => return true,
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r),
            ) if is_local_route(r) => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage};
    use netlink_packet_route::{
        address::AddressMessage,
        route::{RouteMessage, RouteType},
    };

    fn bytes(inner: RouteNetlinkMessage) -> Vec<u8> {
        let mut m = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(inner));
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        out
    }

    fn route(kind: RouteType, table: u8) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.kind = kind;
        r.header.table = table;
        r
    }

    #[test]
    fn classifies_notifications() {
        assert!(classify(&bytes(RouteNetlinkMessage::NewAddress(
            AddressMessage::default()
        ))));
        assert!(classify(&bytes(RouteNetlinkMessage::DelAddress(
            AddressMessage::default()
        ))));
        assert!(classify(&bytes(RouteNetlinkMessage::NewRoute(route(
            RouteType::Local,
            255
        )))));
        // A local route of the main table changes the set too.
        assert!(classify(&bytes(RouteNetlinkMessage::NewRoute(route(
            RouteType::Local,
            254
        )))));
        // A unicast route of the main table is routing churn, not an ipme change.
        assert!(!classify(&bytes(RouteNetlinkMessage::NewRoute(route(
            RouteType::Unicast,
            254
        )))));
        // Two messages in one datagram: the second one matters.
        let mut two = bytes(RouteNetlinkMessage::DelRoute(route(
            RouteType::Unicast,
            254,
        )));
        two.extend(bytes(RouteNetlinkMessage::DelRoute(route(
            RouteType::Local,
            255,
        ))));
        assert!(classify(&two));
        assert!(classify(b"garbage!"));
        assert!(!classify(b""));
    }

    /// Real kernel: the subscription works without privileges.
    #[tokio::test(flavor = "current_thread")]
    async fn subscribes_and_drains_empty() {
        let mut w = NetlinkWatch::new().unwrap();
        assert_eq!(w.drain().unwrap(), NetlinkNews::default());
    }
}
