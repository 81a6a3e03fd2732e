//! Candidate addresses for a host (docs/qmail-remote.md §2.5): IP literals, MX with qmail's tie-breaking, A
//! fallback, and IPv6 (AAAA, `[IPv6:…]`).
//!
//! The algorithm is generic over [`Resolve`] so it is tested without a network; the real
//! resolver is in `resolver.rs`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::rc::Rc;

use futures_util::future::{join, join_all};

use super::control::scan_ulong;

/// One address to try, with the preference of the MX it came from (0 for A fallback/literals).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The address.
    pub ip: IpAddr,
    /// MX preference (u32 so the loop rule's 100000/300000 sentinels fit).
    pub pref: u32,
    /// The host name the address came from, for the per-host TLS files: the MX exchange as
    /// answered, the domain itself without MX, the relay as written; none for IP literals
    /// (docs/qmail-remote-tls.md §3.1).
    pub name: Option<Rc<[u8]>>,
}

/// A failed lookup: soft = try again later, hard = the name or data does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Temporary (SERVFAIL, timeout, network, REFUSED, malformed).
    #[error("temporary DNS failure")]
    Soft,
    /// Permanent (NXDOMAIN, no data, a name that cannot be encoded).
    #[error("permanent DNS failure")]
    Hard,
}

/// Query types we ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qtype {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
}

/// A DNS backend. Names are raw bytes as given (no IDNA), looked up without the search list.
pub trait Resolve {
    /// MX records `(preference, exchange)` in answer order; `Ok(vec![])` when the answer holds
    /// no MX record (e.g. only a CNAME).
    fn mx(&self, name: &[u8]) -> impl Future<Output = Result<Vec<(u16, Vec<u8>)>, DnsError>>;
    /// Addresses of one type in answer order.
    fn addrs(&self, name: &[u8], t: Qtype) -> impl Future<Output = Result<Vec<IpAddr>, DnsError>>;
}

/// stock ip_scan: `d.d.d.d`, each part leading digits, the whole string consumed. Octets wrap
/// modulo 256 like stock.
fn scan_quad(s: &[u8]) -> Option<(Ipv4Addr, usize)> {
    let mut d = [0u8; 4];
    let mut pos = 0;
    for (k, octet) in d.iter_mut().enumerate() {
        if k > 0 {
            if s.get(pos) != Some(&b'.') {
                return None;
            }
            pos += 1;
        }
        let (v, n) = scan_ulong(&s[pos..]);
        if n == 0 {
            return None;
        }
        *octet = v as u8;
        pos += n;
    }
    Some((Ipv4Addr::from(d), pos))
}

/// An IP literal host: `d.d.d.d`, `[d.d.d.d]`, `[IPv6:…]` (tag case-insensitive) or a bare IPv6
/// address (a string with colons can never be a DNS name). No DNS is done for these.
pub fn literal(host: &[u8]) -> Option<IpAddr> {
    if let Some((ip, n)) = scan_quad(host)
        && n == host.len()
    {
        return Some(IpAddr::V4(ip));
    }
    if let [b'[', inner @ .., b']'] = host {
        if let Some((ip, n)) = scan_quad(inner)
            && n == inner.len()
        {
            return Some(IpAddr::V4(ip));
        }
        if inner.len() > 5 && inner[..5].eq_ignore_ascii_case(b"IPv6:") {
            return parse_v6(&inner[5..]);
        }
        return None;
    }
    if host.contains(&b':') {
        return parse_v6(host);
    }
    None
}

fn parse_v6(s: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(s)
        .ok()?
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// stock's tie-breaking generator: x := x*69069+1, seeded with now + (pid << 16).
///
/// Computed in 32 bits, as on the platforms qmail was written for. With a 64-bit C `unsigned
/// long` (every 64-bit Linux build of stock) x soon exceeds 2^32, `x/2 < 2147483647/n` is then
/// almost never true, and ties silently fall back to DNS answer order; 32 bits restores the
/// intended uniform choice.
#[derive(Clone, Copy, Debug)]
pub struct Lcg(pub u32);

impl Lcg {
    /// The stock seed: `now() + (getpid() << 16)`, truncated to 32 bits.
    pub fn stock_seed(now: u64, pid: u32) -> Self {
        Lcg((now as u32).wrapping_add(pid.wrapping_shl(16)))
    }

    /// True if the newcomer among `numsame` equal candidates replaces the current choice.
    fn pick(&mut self, numsame: u32) -> bool {
        self.0 = self.0.wrapping_mul(69069).wrapping_add(1);
        (self.0 / 2) < (2_147_483_647 / numsame)
    }
}

/// The MX exchanges in the order stock tries them: repeatedly the lowest remaining preference,
/// ties broken by the generator exactly like dns.c (including its swap-remove order).
pub fn order_mx(mut mx: Vec<(u16, Vec<u8>)>, rng: &mut Lcg) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::with_capacity(mx.len());
    while !mx.is_empty() {
        let mut i = 0;
        let mut numsame = 1u32;
        for j in 1..mx.len() {
            if mx[j].0 < mx[i].0 {
                i = j;
                numsame = 1;
            } else if mx[j].0 == mx[i].0 {
                numsame += 1;
                if rng.pick(numsame) {
                    i = j;
                }
            }
        }
        out.push(mx.swap_remove(i));
    }
    out
}

/// Addresses of one host name: A (and AAAA if `ipv6`), v4 first. Any address makes it a
/// success; otherwise soft if any query was soft (a temporary AAAA failure must not bounce),
/// success-without-addresses if any query answered without addresses, else hard.
async fn host_addrs<R: Resolve>(r: &R, name: &[u8], ipv6: bool) -> Result<Vec<IpAddr>, DnsError> {
    let v4 = r.addrs(name, Qtype::A);
    let (a, aaaa) = if ipv6 {
        let (a, b) = join(v4, r.addrs(name, Qtype::Aaaa)).await;
        (a, Some(b))
    } else {
        (v4.await, None)
    };
    let results: Vec<Result<Vec<IpAddr>, DnsError>> = std::iter::once(a).chain(aaaa).collect();
    let addrs: Vec<IpAddr> = results.iter().flatten().flatten().copied().collect();
    if !addrs.is_empty() {
        return Ok(addrs);
    }
    if results.contains(&Err(DnsError::Soft)) {
        return Err(DnsError::Soft);
    }
    if results.iter().any(Result::is_ok) {
        return Ok(addrs);
    }
    Err(DnsError::Hard)
}

/// Within each run of equal preference, IPv4 addresses go before IPv6 (stable): IPv4 is the
/// path every qmail peer has proven; IPv6 is the fallback.
fn v4_first(c: &mut [Candidate]) {
    let mut start = 0;
    while start < c.len() {
        let end = start
            + c[start..]
                .iter()
                .take_while(|x| x.pref == c[start].pref)
                .count();
        c[start..end].sort_by_key(|x| x.ip.is_ipv6());
        start = end;
    }
}

/// Addresses of a relay (smtproutes): a literal, or A/AAAA of the name; no MX (stock dns_ip).
pub async fn relay_ip<R: Resolve>(
    r: &R,
    host: &[u8],
    ipv6: bool,
) -> Result<Vec<Candidate>, DnsError> {
    if let Some(ip) = literal(host) {
        return Ok(vec![Candidate {
            ip,
            pref: 0,
            name: None,
        }]);
    }
    let name: Rc<[u8]> = Rc::from(host);
    let mut c: Vec<Candidate> = host_addrs(r, host, ipv6)
        .await?
        .into_iter()
        .map(|ip| Candidate {
            ip,
            pref: 0,
            name: Some(name.clone()),
        })
        .collect();
    v4_first(&mut c);
    Ok(c)
}

/// The result of an MX lookup: addresses in try order and stock's "soft" flag (an exchange had a
/// temporary failure; with zero addresses that means temp_dns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxResult {
    /// Addresses in the order they will be tried.
    pub candidates: Vec<Candidate>,
    /// Some exchange failed temporarily.
    pub soft: bool,
}

/// stock dns_mxip, with IPv6: literal; MX (hard failure or no MX records → A/AAAA of the host
/// with preference 0); exchanges in generator order, each resolved, soft failures flagged and
/// hard ones skipped.
pub async fn mx_ip<R: Resolve>(
    r: &R,
    host: &[u8],
    ipv6: bool,
    rng: &mut Lcg,
) -> Result<MxResult, DnsError> {
    if let Some(ip) = literal(host) {
        return Ok(MxResult {
            candidates: vec![Candidate {
                ip,
                pref: 0,
                name: None,
            }],
            soft: false,
        });
    }
    let mx = match r.mx(host).await {
        Err(DnsError::Soft) => return Err(DnsError::Soft),
        Err(DnsError::Hard) => Vec::new(),
        Ok(mx) => mx,
    };
    if mx.is_empty() {
        let candidates = relay_ip(r, host, ipv6).await?;
        return Ok(MxResult {
            candidates,
            soft: false,
        });
    }
    let ordered = order_mx(mx, rng);
    // Resolve every exchange concurrently; order is decided above, not by arrival.
    let lookups = ordered.iter().map(|(_, name)| async move {
        if let Some(ip) = literal(name) {
            // stock quirk kept: an exchange that is an IP literal gets preference 0
            return (Ok(vec![ip]), true);
        }
        if name.is_empty() {
            // Null MX (RFC 7505, "0 ."): no address; stock's lookup of "" fails hard too
            return (Err(DnsError::Hard), false);
        }
        (host_addrs(r, name, ipv6).await, false)
    });
    let results = join_all(lookups).await;
    let mut candidates = Vec::new();
    let mut soft = false;
    for ((pref, exchange), (res, is_literal)) in ordered.iter().zip(results) {
        let name: Option<Rc<[u8]>> = (!is_literal).then(|| Rc::from(exchange.as_slice()));
        match res {
            Ok(addrs) => candidates.extend(addrs.into_iter().map(|ip| Candidate {
                ip,
                pref: if is_literal { 0 } else { u32::from(*pref) },
                name: name.clone(),
            })),
            Err(DnsError::Soft) => soft = true,
            Err(DnsError::Hard) => {}
        }
    }
    v4_first(&mut candidates);
    Ok(MxResult { candidates, soft })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    type MxAnswer = Result<Vec<(u16, Vec<u8>)>, DnsError>;

    #[derive(Default)]
    struct Fake {
        mx: HashMap<Vec<u8>, MxAnswer>,
        a: HashMap<(Vec<u8>, bool), Result<Vec<IpAddr>, DnsError>>,
    }

    impl Resolve for Fake {
        async fn mx(&self, name: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, DnsError> {
            self.mx.get(name).cloned().unwrap_or(Err(DnsError::Hard))
        }
        async fn addrs(&self, name: &[u8], t: Qtype) -> Result<Vec<IpAddr>, DnsError> {
            self.a
                .get(&(name.to_vec(), t == Qtype::Aaaa))
                .cloned()
                .unwrap_or(Err(DnsError::Hard))
        }
    }

    fn block<F: Future>(f: F) -> F::Output {
        // The fake never returns Pending, so one poll with a no-op waker completes it.
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("fake resolver pending"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn literals() {
        assert_eq!(literal(b"192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(literal(b"[192.0.2.1]"), Some(ip("192.0.2.1")));
        assert_eq!(literal(b"192.0.2.257"), Some(ip("192.0.2.1")));
        assert_eq!(literal(b"192.0.2"), None);
        assert_eq!(literal(b"192.0.2.1x"), None);
        assert_eq!(literal(b"[192.0.2.1"), None);
        assert_eq!(literal(b"[IPv6:2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(literal(b"[ipv6:2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(literal(b"2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(literal(b"[IPv6:nonsense]"), None);
        assert_eq!(literal(b"example.com"), None);
    }

    #[test]
    fn seed_is_32_bit() {
        let s = Lcg::stock_seed(1_700_000_000, 70000);
        assert_eq!(s.0, 1_700_000_000u32.wrapping_add(70000u32 << 16));
    }

    #[test]
    fn mx_order_lowest_first_ties_spread() {
        let mx = vec![
            (20, b"c".to_vec()),
            (10, b"a".to_vec()),
            (10, b"b".to_vec()),
            (30, b"d".to_vec()),
        ];
        let mut seen_a_first = 0;
        for seed in 0..200u64 {
            let o = order_mx(
                mx.clone(),
                &mut Lcg((seed as u32).wrapping_mul(0x9e37_79b9)),
            );
            let prefs: Vec<u16> = o.iter().map(|x| x.0).collect();
            assert_eq!(prefs, vec![10, 10, 20, 30]);
            if o[0].1 == b"a" {
                seen_a_first += 1;
            }
        }
        assert!(
            seen_a_first > 40 && seen_a_first < 160,
            "ties not random: {seen_a_first}"
        );
    }

    #[test]
    fn mx_fallback_and_soft() {
        let mut f = Fake::default();
        f.a.insert((b"h".to_vec(), false), Ok(vec![ip("192.0.2.1")]));
        f.a.insert((b"h".to_vec(), true), Ok(vec![ip("2001:db8::1")]));
        let r = block(mx_ip(&f, b"h", true, &mut Lcg(1))).unwrap();
        assert_eq!(
            r.candidates
                .iter()
                .map(|c| (c.ip, c.pref))
                .collect::<Vec<_>>(),
            vec![(ip("192.0.2.1"), 0), (ip("2001:db8::1"), 0)]
        );
        // ipv6 off: no AAAA query result used
        let r = block(mx_ip(&f, b"h", false, &mut Lcg(1))).unwrap();
        assert_eq!(r.candidates.len(), 1);
        // MX soft → soft; A fallback hard → hard
        f.mx.insert(b"s".to_vec(), Err(DnsError::Soft));
        assert_eq!(
            block(mx_ip(&f, b"s", true, &mut Lcg(1))),
            Err(DnsError::Soft)
        );
        assert_eq!(
            block(mx_ip(&f, b"nx", true, &mut Lcg(1))),
            Err(DnsError::Hard)
        );
        // exchanges: one soft, one hard, one good; literal exchange gets pref 0
        f.mx.insert(
            b"m".to_vec(),
            Ok(vec![
                (10, b"soft".to_vec()),
                (20, b"hard".to_vec()),
                (30, b"h".to_vec()),
                (40, b"192.0.2.9".to_vec()),
            ]),
        );
        f.a.insert((b"soft".to_vec(), false), Err(DnsError::Soft));
        let r = block(mx_ip(&f, b"m", true, &mut Lcg(1))).unwrap();
        assert!(r.soft);
        assert_eq!(
            r.candidates
                .iter()
                .map(|c| (c.ip, c.pref))
                .collect::<Vec<_>>(),
            vec![
                (ip("192.0.2.1"), 30),
                (ip("2001:db8::1"), 30),
                (ip("192.0.2.9"), 0)
            ]
        );
        // null MX: no candidates, not soft → perm_nomx
        f.mx.insert(b"null".to_vec(), Ok(vec![(0, Vec::new())]));
        let r = block(mx_ip(&f, b"null", true, &mut Lcg(1))).unwrap();
        assert!(r.candidates.is_empty() && !r.soft);
    }

    #[test]
    fn v4_before_v6_within_preference() {
        let mut f = Fake::default();
        f.mx.insert(
            b"d".to_vec(),
            Ok(vec![(10, b"x".to_vec()), (10, b"y".to_vec())]),
        );
        for (n, v4, v6) in [
            ("x", "192.0.2.1", "2001:db8::1"),
            ("y", "192.0.2.2", "2001:db8::2"),
        ] {
            f.a.insert((n.as_bytes().to_vec(), false), Ok(vec![ip(v4)]));
            f.a.insert((n.as_bytes().to_vec(), true), Ok(vec![ip(v6)]));
        }
        let r = block(mx_ip(&f, b"d", true, &mut Lcg(5))).unwrap();
        let v6: Vec<bool> = r.candidates.iter().map(|c| c.ip.is_ipv6()).collect();
        assert_eq!(v6, vec![false, false, true, true]);
    }

    #[test]
    fn host_addrs_combination() {
        let mut f = Fake::default();
        // A no data (Ok empty), AAAA hard → Ok(empty) → perm_nomx later, not perm_dns
        f.a.insert((b"e".to_vec(), false), Ok(vec![]));
        assert_eq!(block(relay_ip(&f, b"e", true)), Ok(vec![]));
        // A no data, AAAA soft → soft
        f.a.insert((b"e6".to_vec(), false), Ok(vec![]));
        f.a.insert((b"e6".to_vec(), true), Err(DnsError::Soft));
        assert_eq!(block(relay_ip(&f, b"e6", true)), Err(DnsError::Soft));
        // A hard, AAAA soft → soft
        f.a.insert((b"s".to_vec(), true), Err(DnsError::Soft));
        assert_eq!(block(relay_ip(&f, b"s", true)), Err(DnsError::Soft));
        // A soft, AAAA has an address → use it
        f.a.insert((b"v6".to_vec(), false), Err(DnsError::Soft));
        f.a.insert((b"v6".to_vec(), true), Ok(vec![ip("2001:db8::5")]));
        assert_eq!(
            block(relay_ip(&f, b"v6", true)).unwrap()[0].ip,
            ip("2001:db8::5")
        );
    }
}
