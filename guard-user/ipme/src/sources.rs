//! The kernel's view of local addresses: interface addresses (getifaddrs) and the `RTN_LOCAL`
//! routes of every routing table (a synchronous netlink dump, so callers need no runtime).

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
const RT_TABLE_MAIN: u32 = 254;
const RT_TABLE_DEFAULT: u32 = 253;
/// Outside the local table, a local route wider than this is not taken as "me" (see
/// [`local_routes`]); the same floor as for control-file prefixes.
const WIDEST_V4: u8 = 8;
const WIDEST_V6: u8 = 16;

/// An `RTN_LOCAL` route: the kernel delivers traffic to `net` to this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRoute {
    /// Host bits are zero.
    pub net: IpNet,
    /// Device name (`if<N>` if it vanished meanwhile, `?` without one).
    pub dev: String,
    /// Routing table id (255 local, 254 main, 253 default, or a custom table).
    pub table: u32,
}

/// `local`, `main`, `default` or the table's number, as `ip route` spells them.
pub fn table_name(table: u32) -> String {
    match table {
        RT_TABLE_LOCAL => "local".to_string(),
        RT_TABLE_MAIN => "main".to_string(),
        RT_TABLE_DEFAULT => "default".to_string(),
        n => n.to_string(),
    }
}
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

/// The `RTN_LOCAL` routes of every routing table, IPv4 and IPv6, with device and table.
///
/// `ip route add local P dev lo table main` makes the kernel deliver P locally just like the
/// local table does, and a custom table may be selected for qmail's traffic by a policy rule,
/// so every table counts: an address the kernel may deliver here is "me" (fail closed).
/// One exception keeps mail flowing: outside the local table, a local route wider than /8
/// (IPv4) or /16 (IPv6) is left out. That is the TPROXY pattern (`local 0.0.0.0/0 dev lo table
/// 100` behind an fwmark rule), which intercepts marked traffic only; taking it as "me" would
/// bounce every delivery.
pub fn local_routes() -> Result<Vec<LocalRoute>, IpmeError> {
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
fn dump_local_routes() -> io::Result<Option<Vec<LocalRoute>>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // With strict checking (Linux >= 4.20) the kernel honours the type in the request and
    // dumps only local routes (of all tables: table 0), instead of every route (a full BGP
    // table is a million); older kernels ignore the filter and `local_route` below filters.
    let _ = socket.set_netlink_get_strict_chk(true);

    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = SEQ;
    // AF_UNSPEC: both families in one dump.
    let mut filter = RouteMessage::default();
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
        for msg in route_messages(&buf[..size]) {
            let msg = msg?;
            if msg.header.sequence_number != SEQ {
                continue;
            }
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
    }
}

/// The rtnetlink messages of one datagram, in order (the one framing both the route dump and
/// the daemon's notification reader use). Stops at the first message that does not parse
/// (yielding its error) or whose length would not advance.
pub fn route_messages(
    buf: &[u8],
) -> impl Iterator<Item = io::Result<NetlinkMessage<RouteNetlinkMessage>>> + '_ {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest) {
            Ok(msg) => {
                // Messages are 4-byte aligned; a zero length would loop forever.
                let step = (msg.header.length as usize + 3) & !3;
                rest = if step == 0 || step > rest.len() {
                    &[]
                } else {
                    &rest[step..]
                };
                Some(Ok(msg))
            }
            Err(e) => {
                rest = &[];
                Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad netlink message: {e}"),
                )))
            }
        }
    })
}

fn retry_eintr(mut f: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Whether a route (e.g. from a netlink notification) is an `RTN_LOCAL` route of any table,
/// i.e. one that may change the ipme set.
pub fn is_local_route(route: &RouteMessage) -> bool {
    route.header.kind == RouteType::Local
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

/// The route if it is an `RTN_LOCAL` route that makes its prefix "me" (see [`local_routes`]).
fn local_route(route: &RouteMessage) -> Option<LocalRoute> {
    if !is_local_route(route) {
        return None;
    }
    let table = route_table(route);
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
    let too_wide = match net {
        IpNet::V4(n) => n.prefix_len() < WIDEST_V4,
        IpNet::V6(n) => n.prefix_len() < WIDEST_V6,
    };
    if table != RT_TABLE_LOCAL && too_wide {
        return None;
    }
    let dev = oif.map_or_else(|| "?".to_string(), ifname);
    Some(LocalRoute {
        net: net.trunc(),
        dev,
        table,
    })
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
        for LocalRoute { net: n, dev, .. } in routes {
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
            routes
                .iter()
                .any(|r| r.net == lo8 && r.dev == "lo" && r.table == RT_TABLE_LOCAL),
            "{routes:?}"
        );
        // Each IPv4 interface address has a local route too.
        let host: IpNet = "127.0.0.1/32".parse().unwrap();
        assert!(routes.iter().any(|r| r.net == host), "{routes:?}");
        // Host bits are zero, and no broadcast/multicast routes slipped in.
        for r in &routes {
            assert_eq!(r.net, r.net.trunc());
            assert!(!r.net.addr().is_multicast(), "{r:?}");
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
        assert_eq!(r.net, "203.0.113.0/24".parse::<IpNet>().unwrap());
        assert_eq!(r.table, 255);
        assert!(local_route(&route(RouteType::Broadcast, 255, Some(a), 32)).is_none());
        assert!(local_route(&route(RouteType::Unicast, 255, Some(a), 24)).is_none());
        // Local routes of the main table and of custom tables count too.
        let r = local_route(&route(RouteType::Local, 254, Some(a), 25)).unwrap();
        assert_eq!((r.table, table_name(r.table).as_str()), (254, "main"));
        let mut big = route(RouteType::Local, 252, Some(a), 24);
        big.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(local_route(&big).unwrap().table, 1000);
        // A TPROXY-style `local default` in table 100 is not taken as "me"; in the local table
        // it is (the kernel then really delivers everything here).
        assert!(local_route(&route(RouteType::Local, 100, None, 0)).is_none());
        assert!(local_route(&route(RouteType::Local, 254, Some(a), 7)).is_none());
        let r = local_route(&route(RouteType::Local, 255, None, 0)).unwrap();
        assert_eq!(r.net, "0.0.0.0/0".parse::<IpNet>().unwrap());
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let r = local_route(&route(RouteType::Local, 255, Some(v6), 128)).unwrap();
        assert_eq!(r.net, "::1/128".parse::<IpNet>().unwrap());
        let v6net: IpAddr = "2001:db8::".parse().unwrap();
        assert!(local_route(&route(RouteType::Local, 100, Some(v6net), 15)).is_none());
        assert!(local_route(&route(RouteType::Local, 100, Some(v6net), 16)).is_some());
    }

    #[test]
    fn table_names() {
        assert_eq!(table_name(255), "local");
        assert_eq!(table_name(253), "default");
        assert_eq!(table_name(100), "100");
    }
}
