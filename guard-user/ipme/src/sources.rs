//! The kernel's view of local addresses: interface addresses (getifaddrs) and the `RTN_LOCAL`
//! routes of the local routing table (a synchronous netlink dump, so callers need no runtime).

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{IpNet, IpmeError, Ipv4Net, Ipv6Net};

/// The kernel's local table (`ip route show table local`).
const RT_TABLE_LOCAL: u32 = 255;
/// A dump interrupted by a concurrent change is retried this many times.
const DUMP_ATTEMPTS: usize = 5;
/// Sequence number of our (only) request on the socket.
const SEQ: u32 = 1;

/// Every address of every interface: secondaries, IPv6, link-local and addresses of interfaces
/// that are down included, because Linux (weak host model) accepts all of them as local.
pub fn interfaces() -> Result<Vec<(String, IpAddr)>, IpmeError> {
    let list = if_addrs::get_if_addrs().map_err(IpmeError::Interfaces)?;
    Ok(list
        .into_iter()
        .map(|i| {
            let ip = i.ip();
            (i.name, ip)
        })
        .collect())
}

/// The `RTN_LOCAL` routes of the local table, IPv4 and IPv6, with their device names.
///
/// Only table 255 counts: it is the one the kernel consults for locality. A local route in
/// another table is reached only through policy rules (TPROXY setups put `local 0.0.0.0/0` in
/// such a table) and does not make the address local for ordinary traffic.
pub fn local_routes() -> Result<Vec<(IpNet, String)>, IpmeError> {
    for _ in 0..DUMP_ATTEMPTS {
        if let Some(routes) = dump_local_routes().map_err(IpmeError::Netlink)? {
            return Ok(routes);
        }
    }
    Err(IpmeError::Netlink(io::Error::other(format!(
        "route dump interrupted by concurrent changes {DUMP_ATTEMPTS} times"
    ))))
}

/// One dump of all routes; `None` if the kernel flagged it inconsistent (NLM_F_DUMP_INTR).
fn dump_local_routes() -> io::Result<Option<Vec<(IpNet, String)>>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // With strict checking (Linux >= 4.20) the kernel honours the table and type in the
    // request and dumps only the local table, instead of every route (a full BGP table is a
    // million); older kernels ignore the filter and `local_route` below still filters.
    let _ = socket.set_netlink_get_strict_chk(true);

    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = SEQ;
    // AF_UNSPEC: both families in one dump.
    let mut filter = RouteMessage::default();
    filter.header.table = RT_TABLE_LOCAL as u8;
    filter.header.kind = RouteType::Local;
    let mut request = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetRoute(filter)),
    );
    request.finalize();
    let mut out = vec![0u8; request.buffer_len()];
    request.serialize(&mut out);
    socket.send(&out, 0)?;

    let mut routes = Vec::new();
    let mut interrupted = false;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // Peek the datagram size first so a large one is never truncated.
        let size =
            retry_eintr(|| socket.recv(&mut &mut buf[..], libc::MSG_PEEK | libc::MSG_TRUNC))?;
        if size > buf.len() {
            buf.resize(size, 0);
        }
        let size = retry_eintr(|| socket.recv(&mut &mut buf[..], 0))?;
        let mut offset = 0;
        while offset < size {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..size])
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad netlink message: {e}"),
                    )
                })?;
            let len = msg.header.length as usize;
            if msg.header.sequence_number == SEQ {
                if msg.header.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => {
                        return Ok((!interrupted).then_some(routes));
                    }
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                        if let Some(r) = local_route(&route) {
                            routes.push(r);
                        }
                    }
                    _ => {}
                }
            }
            // Messages are 4-byte aligned; a zero length would loop forever.
            let step = (len + 3) & !3;
            if step == 0 {
                break;
            }
            offset += step;
        }
    }
}

fn retry_eintr(mut f: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Whether a route (e.g. from a netlink notification) is an `RTN_LOCAL` route of the local
/// table, i.e. one that changes the ipme set.
pub fn is_local_table_route(route: &RouteMessage) -> bool {
    route.header.kind == RouteType::Local && route_table(route) == RT_TABLE_LOCAL
}

/// Tables > 255 only appear in RTA_TABLE; the header byte is then RT_TABLE_COMPAT.
fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// The prefix and device of a route if it is an `RTN_LOCAL` route of the local table.
fn local_route(route: &RouteMessage) -> Option<(IpNet, String)> {
    if !is_local_table_route(route) {
        return None;
    }
    let mut dst = None;
    let mut oif = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = Some(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let len = route.header.destination_prefix_length;
    // No RTA_DST means the zero prefix (`local default`).
    let net = match (dst, route.header.address_family) {
        (Some(RouteAddress::Inet(a)), _) => IpNet::V4(Ipv4Net::new(*a, len).ok()?),
        (Some(RouteAddress::Inet6(a)), _) => IpNet::V6(Ipv6Net::new(*a, len).ok()?),
        (None, netlink_packet_route::AddressFamily::Inet) => {
            IpNet::V4(Ipv4Net::new([0, 0, 0, 0].into(), len).ok()?)
        }
        (None, netlink_packet_route::AddressFamily::Inet6) => {
            IpNet::V6(Ipv6Net::new([0u16; 8].into(), len).ok()?)
        }
        _ => return None,
    };
    let dev = oif.map_or_else(|| "?".to_string(), ifname);
    Some((net.trunc(), dev))
}

/// Interface name of an index; `if<N>` if it vanished meanwhile.
fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires; on success it holds a
    // NUL-terminated name.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("if{index}");
    }
    // SAFETY: non-null return points into buf, NUL-terminated.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Real kernel, no mocks: loopback is always configured.
    #[test]
    fn interfaces_has_loopback() {
        let ifs = interfaces().unwrap();
        assert!(
            ifs.iter()
                .any(|(_, ip)| *ip == IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{ifs:?}"
        );
    }

    /// Link-local addresses must not be filtered out (if-addrs drops them without its
    /// `link-local` feature); each one also has a local route, so compare the two sources.
    #[test]
    fn interfaces_include_link_local() {
        let ifs = interfaces().unwrap();
        let routes = local_routes().unwrap();
        for (n, dev) in routes {
            if let IpNet::V6(n) = n
                && n.prefix_len() == 128
                && (n.addr().segments()[0] & 0xffc0) == 0xfe80
            {
                let want = IpAddr::V6(n.addr());
                assert!(
                    ifs.iter().any(|(name, ip)| *ip == want && *name == dev),
                    "{want} on {dev} missing from {ifs:?}"
                );
            }
        }
    }

    #[test]
    fn local_routes_has_127_8() {
        let routes = local_routes().unwrap();
        let lo8: IpNet = "127.0.0.0/8".parse().unwrap();
        assert!(
            routes.iter().any(|(n, dev)| *n == lo8 && dev == "lo"),
            "{routes:?}"
        );
        // Each IPv4 interface address has a local route too.
        let host: IpNet = "127.0.0.1/32".parse().unwrap();
        assert!(routes.iter().any(|(n, _)| *n == host), "{routes:?}");
        // Host bits are zero, and no broadcast/multicast routes slipped in.
        for (n, _) in &routes {
            assert_eq!(*n, n.trunc());
            assert!(!n.addr().is_multicast(), "{n}");
        }
    }

    fn route(kind: RouteType, table: u8, dst: Option<IpAddr>, len: u8) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.kind = kind;
        m.header.table = table;
        m.header.destination_prefix_length = len;
        m.header.address_family = match dst {
            Some(IpAddr::V6(_)) => netlink_packet_route::AddressFamily::Inet6,
            _ => netlink_packet_route::AddressFamily::Inet,
        };
        if let Some(d) = dst {
            m.attributes.push(RouteAttribute::Destination(d.into()));
        }
        m.attributes.push(RouteAttribute::Oif(1));
        m
    }

    #[test]
    fn local_route_filter() {
        let a: IpAddr = "203.0.113.0".parse().unwrap();
        let r = local_route(&route(RouteType::Local, 255, Some(a), 24)).unwrap();
        assert_eq!(r.0, "203.0.113.0/24".parse::<IpNet>().unwrap());
        assert!(local_route(&route(RouteType::Broadcast, 255, Some(a), 32)).is_none());
        assert!(local_route(&route(RouteType::Unicast, 255, Some(a), 24)).is_none());
        // A TPROXY-style `local default` in table 100 is not local for ordinary traffic.
        assert!(local_route(&route(RouteType::Local, 100, None, 0)).is_none());
        let mut big = route(RouteType::Local, 252, Some(a), 24);
        big.attributes.push(RouteAttribute::Table(1000));
        assert!(local_route(&big).is_none());
        let r = local_route(&route(RouteType::Local, 255, None, 0)).unwrap();
        assert_eq!(r.0, "0.0.0.0/0".parse::<IpNet>().unwrap());
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let r = local_route(&route(RouteType::Local, 255, Some(v6), 128)).unwrap();
        assert_eq!(r.0, "::1/128".parse::<IpNet>().unwrap());
    }
}
