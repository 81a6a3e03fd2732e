//! The ipme set: computation from [`Inputs`] and longest-prefix lookup.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::{
    Entry, Inputs, IpNet, IpmeError, Ipv4Net, Ipv6Net, Source, canonical_net, gather,
    gather_guarded,
};

/// Always "me": the kernel sends connections to 0.0.0.0 (and 0/8 on some paths), `::` and
/// loopback to this host.
const BUILTINS: [(IpAddr, u8); 4] = [
    (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8),
    (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
    (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128),
    (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
];

/// The built-in prefixes as networks.
pub(super) fn builtin_nets() -> impl Iterator<Item = IpNet> {
    BUILTINS
        .into_iter()
        .filter_map(|(addr, len)| IpNet::new(addr, len).ok())
}

/// The computed set: one entry per prefix, sorted by (address, prefix length), IPv4 first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpmeSet {
    entries: Vec<Entry>,
    /// Distinct prefix lengths present, longest first, so a lookup tries only those.
    lens_v4: Vec<u8>,
    lens_v6: Vec<u8>,
}

impl IpmeSet {
    /// Pure: adds the built-ins, normalises every prefix ([`canonical_net`]) and keeps one entry
    /// per prefix (notipme > builtin > interface > local route > moreipme). O(n log n): one sort.
    pub fn compute(inputs: &Inputs) -> IpmeSet {
        let mut all = Vec::with_capacity(
            BUILTINS.len()
                + inputs.interfaces.len()
                + inputs.local_routes.len()
                + inputs.moreipme.len()
                + inputs.notipme.len()
                + inputs.learned.len(),
        );
        all.extend(builtin_nets().map(|net| Entry {
            net,
            source: Source::Builtin,
        }));
        for (name, addr) in &inputs.interfaces {
            all.push(Entry {
                net: IpNet::from(addr.to_canonical()),
                source: Source::Interface { name: name.clone() },
            });
        }
        for r in &inputs.local_routes {
            all.push(Entry {
                net: canonical_net(r.net),
                source: Source::LocalRoute {
                    dev: r.dev.clone(),
                    table: r.table,
                },
            });
        }
        for e in inputs
            .moreipme
            .iter()
            .chain(&inputs.notipme)
            .chain(&inputs.learned)
        {
            all.push(Entry {
                net: canonical_net(e.net),
                source: e.source.clone(),
            });
        }
        all.sort_unstable_by(|a, b| {
            a.net
                .cmp(&b.net)
                .then_with(|| a.source.cmp_precedence(&b.source))
        });
        // Keeps the first of each run of equal prefixes: the winner, by the sort above.
        all.dedup_by(|later, kept| later.net == kept.net);
        Self::from_sorted(all)
    }

    fn from_sorted(entries: Vec<Entry>) -> IpmeSet {
        let (mut v4, mut v6) = ([false; 33], [false; 129]);
        for e in &entries {
            match e.net {
                IpNet::V4(n) => v4[usize::from(n.prefix_len())] = true,
                IpNet::V6(n) => v6[usize::from(n.prefix_len())] = true,
            }
        }
        let lens = |present: &[bool]| -> Vec<u8> {
            (0..present.len())
                .rev()
                .filter(|&l| present[l])
                .filter_map(|l| u8::try_from(l).ok())
                .collect()
        };
        IpmeSet {
            lens_v4: lens(&v4),
            lens_v6: lens(&v6),
            entries,
        }
    }

    /// Gather qmail's inputs from this host and `qmail_home` (no learned addresses), then
    /// compute: the set qmail-remote's loop rule uses.
    pub fn load(qmail_home: &Path) -> Result<IpmeSet, IpmeError> {
        Ok(Self::compute(&gather(qmail_home)?))
    }

    /// The set the kernel guard enforces: [`IpmeSet::load`] plus the learned addresses that
    /// have not expired. Everything that writes the maps uses this, so no writer ever drops
    /// the learned entries.
    pub fn load_guarded(qmail_home: &Path) -> Result<IpmeSet, IpmeError> {
        Ok(Self::compute(&gather_guarded(
            qmail_home,
            crate::learn::now_unix(),
        )?))
    }

    /// All entries, one per prefix, sorted (IPv4 first, then by address and prefix length).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The longest-prefix entry containing `addr` (possibly a notipme exception).
    /// `::ffff:a.b.c.d` is looked up as IPv4, as connect6 does.
    pub fn lookup(&self, addr: IpAddr) -> Option<&Entry> {
        // One binary search per prefix length present; entries are sorted by IpNet's order.
        let find = |net: IpNet| {
            self.entries
                .binary_search_by(|e| e.net.cmp(&net))
                .ok()
                .map(|i| &self.entries[i])
        };
        match addr.to_canonical() {
            IpAddr::V4(a) => self
                .lens_v4
                .iter()
                .filter_map(|&len| Ipv4Net::new(a, len).ok())
                .find_map(|n| find(IpNet::V4(n.trunc()))),
            IpAddr::V6(a) => self
                .lens_v6
                .iter()
                .filter_map(|&len| Ipv6Net::new(a, len).ok())
                .find_map(|n| find(IpNet::V6(n.trunc()))),
        }
    }

    /// True if the longest matching prefix is a "me" entry.
    pub fn is_me(&self, addr: IpAddr) -> bool {
        self.lookup(addr).is_some_and(Entry::is_me)
    }

    /// Number of entries per source kind, keyed by [`Source::kind`].
    pub fn count_by_source(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for e in &self.entries {
            *counts.entry(e.source.kind()).or_insert(0) += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn more(line: usize, s: &str) -> Entry {
        Entry {
            net: net(s),
            source: Source::MoreIpme { line },
        }
    }

    fn not(line: usize, s: &str) -> Entry {
        Entry {
            net: net(s),
            source: Source::NotIpme { line },
        }
    }

    fn iface(name: &str) -> Source {
        Source::Interface { name: name.into() }
    }

    fn route(dev: &str) -> Source {
        Source::LocalRoute {
            dev: dev.into(),
            table: 255,
        }
    }

    /// A local route of the local table.
    fn lr(n: &str, dev: &str) -> crate::LocalRoute {
        crate::LocalRoute {
            net: net(n),
            dev: dev.into(),
            table: 255,
        }
    }

    fn source_of(set: &IpmeSet, s: &str) -> Option<Source> {
        set.entries()
            .iter()
            .find(|e| e.net == net(s))
            .map(|e| e.source.clone())
    }

    #[test]
    fn builtins_always_present() {
        let set = IpmeSet::compute(&Inputs::default());
        let nets: Vec<_> = set.entries().iter().map(|e| e.net.to_string()).collect();
        assert_eq!(nets, ["0.0.0.0/8", "127.0.0.0/8", "::/128", "::1/128"]);
        assert!(set.entries().iter().all(|e| e.source == Source::Builtin));
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.255.254",
            "::",
            "::1",
        ] {
            assert!(set.is_me(ip(a)), "{a}");
        }
        for a in [
            "1.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "::2",
            "2001:db8::1",
            "192.0.2.1",
        ] {
            assert!(!set.is_me(ip(a)), "{a}");
            assert!(set.lookup(ip(a)).is_none(), "{a}");
        }
    }

    #[test]
    fn interfaces_and_routes() {
        let inputs = Inputs {
            interfaces: vec![
                ("eth0".into(), ip("192.0.2.2")),
                ("eth0".into(), ip("192.0.2.3")), // secondary
                ("eth0".into(), ip("fe80::fc:ff:fe00:1")),
                ("lo".into(), ip("127.0.0.1")),
            ],
            local_routes: vec![
                lr("203.0.113.0/24", "lo"),
                lr("127.0.0.0/8", "lo"),
                lr("127.0.0.1/32", "lo"),
                lr("192.0.2.2/32", "eth0"),
            ],
            ..Default::default()
        };
        let set = IpmeSet::compute(&inputs);
        assert_eq!(source_of(&set, "192.0.2.3/32"), Some(iface("eth0")));
        assert_eq!(
            source_of(&set, "fe80::fc:ff:fe00:1/128"),
            Some(iface("eth0"))
        );
        assert_eq!(source_of(&set, "203.0.113.0/24"), Some(route("lo")));
        assert!(set.is_me(ip("203.0.113.77")));
        assert!(set.is_me(ip("fe80::fc:ff:fe00:1")));
        assert!(!set.is_me(ip("192.0.2.4")));
        // One entry per prefix.
        let mut nets: Vec<_> = set.entries().iter().map(|e| e.net).collect();
        let n = nets.len();
        nets.dedup();
        assert_eq!(nets.len(), n);
    }

    #[test]
    fn dedup_priority() {
        let inputs = Inputs {
            interfaces: vec![
                ("lo".into(), ip("127.0.0.1")),
                ("eth1".into(), ip("192.0.2.2")),
                ("eth0".into(), ip("192.0.2.2")),
            ],
            local_routes: vec![
                lr("127.0.0.0/8", "lo"),
                lr("127.0.0.1/32", "lo"),
                lr("192.0.2.2/32", "eth0"),
                lr("203.0.113.0/24", "lo"),
            ],
            moreipme: vec![
                more(1, "127.0.0.0/8"),
                more(2, "192.0.2.2/32"),
                more(3, "203.0.113.0/24"),
                more(5, "198.51.100.0/24"),
                more(4, "198.51.100.0/24"),
                more(6, "::1/128"),
            ],
            notipme: vec![],
            learned: vec![],
        };
        let set = IpmeSet::compute(&inputs);
        // builtin > local route > moreipme
        assert_eq!(source_of(&set, "127.0.0.0/8"), Some(Source::Builtin));
        assert_eq!(source_of(&set, "::1/128"), Some(Source::Builtin));
        // interface > local route
        assert_eq!(source_of(&set, "127.0.0.1/32"), Some(iface("lo")));
        // interface > local route > moreipme; same kind: smallest name, independent of order
        assert_eq!(source_of(&set, "192.0.2.2/32"), Some(iface("eth0")));
        // local route > moreipme
        assert_eq!(source_of(&set, "203.0.113.0/24"), Some(route("lo")));
        // moreipme vs moreipme: first line
        assert_eq!(
            source_of(&set, "198.51.100.0/24"),
            Some(Source::MoreIpme { line: 4 })
        );
        assert_eq!(set.len(), 8);
    }

    #[test]
    fn notipme_wins_on_same_prefix() {
        let inputs = Inputs {
            interfaces: vec![("eth0".into(), ip("192.0.2.2"))],
            local_routes: vec![lr("203.0.113.0/24", "lo")],
            moreipme: vec![more(1, "198.51.100.0/24")],
            notipme: vec![
                not(1, "198.51.100.0/24"),
                not(2, "192.0.2.2/32"),
                not(3, "203.0.113.0/24"),
            ],
            learned: vec![],
        };
        let set = IpmeSet::compute(&inputs);
        for (a, line) in [("198.51.100.9", 1), ("192.0.2.2", 2), ("203.0.113.1", 3)] {
            assert!(!set.is_me(ip(a)), "{a}");
            assert_eq!(set.lookup(ip(a)).unwrap().source, Source::NotIpme { line });
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let inputs = Inputs {
            moreipme: vec![
                more(1, "10.0.0.0/8"),
                more(2, "10.1.2.0/24"),
                more(3, "10.1.2.128/25"),
                more(4, "2001:db8::/32"),
                more(5, "2001:db8:1:2::/64"),
            ],
            notipme: vec![
                not(1, "10.1.0.0/16"),
                not(2, "10.1.2.130/32"),
                not(3, "2001:db8:1::/48"),
            ],
            ..Default::default()
        };
        let set = IpmeSet::compute(&inputs);
        let cases = [
            ("10.9.9.9", true),      // /8 me
            ("10.1.9.9", false),     // /16 not me inside /8
            ("10.1.2.1", true),      // /24 me inside the notipme /16
            ("10.1.2.129", true),    // /25 me
            ("10.1.2.130", false),   // /32 not me inside /25
            ("2001:db8:9::1", true), // /32
            ("2001:db8:1:9::1", false),
            ("2001:db8:1:2::5", true), // /64 me inside notipme /48
            ("11.0.0.1", false),
        ];
        for (a, me) in cases {
            assert_eq!(set.is_me(ip(a)), me, "{a}");
        }
        assert_eq!(
            set.lookup(ip("10.1.2.130")).unwrap().net,
            net("10.1.2.130/32")
        );
        assert_eq!(
            set.lookup(ip("10.1.2.129")).unwrap().net,
            net("10.1.2.128/25")
        );
        assert_eq!(
            set.lookup(ip("10.1.9.9")).unwrap().source,
            Source::NotIpme { line: 1 }
        );
    }

    #[test]
    fn notipme_can_carve_a_builtin() {
        // compute keeps moreipme-0.6's longest-prefix rule; the parser is what rejects such
        // notipme lines (control::tests::notipme_cannot_exclude_builtins).
        let inputs = Inputs {
            notipme: vec![not(1, "127.0.0.2/32")],
            ..Default::default()
        };
        let set = IpmeSet::compute(&inputs);
        assert!(!set.is_me(ip("127.0.0.2")));
        assert!(set.is_me(ip("127.0.0.3")));
    }

    #[test]
    fn v4_mapped_lookup() {
        let inputs = Inputs {
            interfaces: vec![("eth0".into(), ip("192.0.2.2"))],
            moreipme: vec![more(1, "198.51.100.0/24")],
            notipme: vec![not(1, "198.51.100.7/32")],
            ..Default::default()
        };
        let set = IpmeSet::compute(&inputs);
        assert!(set.is_me(ip("::ffff:192.0.2.2")));
        assert!(set.is_me(ip("::ffff:198.51.100.1")));
        assert!(!set.is_me(ip("::ffff:198.51.100.7")));
        assert!(set.is_me(ip("::ffff:127.0.0.1")));
        assert!(set.is_me(ip("::ffff:0.0.0.0")));
        assert!(!set.is_me(ip("::ffff:192.0.2.3")));
        assert_eq!(
            set.lookup(ip("::ffff:192.0.2.2")).unwrap().source,
            iface("eth0")
        );
        // v4-mapped inputs land in the IPv4 table.
        let inputs = Inputs {
            interfaces: vec![("x".into(), ip("::ffff:192.0.2.9"))],
            local_routes: vec![lr("::ffff:203.0.113.0/120", "lo")],
            moreipme: vec![more(1, "::ffff:198.51.100.0/120")],
            ..Default::default()
        };
        let set = IpmeSet::compute(&inputs);
        let find = |n: &str| {
            set.entries()
                .iter()
                .find(|e| e.net == net(n))
                .map(|e| &e.source)
        };
        assert_eq!(find("192.0.2.9/32"), Some(&iface("x")));
        assert_eq!(find("203.0.113.0/24"), Some(&route("lo")));
        assert_eq!(find("198.51.100.0/24"), Some(&Source::MoreIpme { line: 1 }));
        // Only the built-ins are IPv6.
        assert_eq!(
            set.entries()
                .iter()
                .filter(|e| e.net.addr().is_ipv6())
                .count(),
            2
        );
        assert!(set.is_me(ip("192.0.2.9")));
    }

    #[test]
    fn entries_sorted_and_host_bits_zero() {
        let inputs = Inputs {
            local_routes: vec![lr("203.0.113.9/24", "lo")], // host bits from a caller
            moreipme: vec![
                more(1, "2001:db8::/32"),
                more(2, "10.0.0.0/8"),
                more(3, "10.0.0.0/16"),
            ],
            ..Default::default()
        };
        let set = IpmeSet::compute(&inputs);
        let nets: Vec<_> = set.entries().iter().map(|e| e.net).collect();
        let mut sorted = nets.clone();
        sorted.sort();
        assert_eq!(nets, sorted);
        assert!(nets.iter().all(|n| *n == n.trunc()));
        assert_eq!(source_of(&set, "203.0.113.0/24"), Some(route("lo")));
        // compute is deterministic regardless of input order.
        let mut rev = inputs.clone();
        rev.moreipme.reverse();
        assert_eq!(IpmeSet::compute(&rev), set);
    }

    #[test]
    fn million_entries() {
        // The benchmark size; the timing bound is for release builds (see xtask bench), here
        // it only has to work and stay correct.
        let moreipme: Vec<Entry> = (0..1_000_000u32)
            .map(|i| Entry {
                net: IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 2)), 30).unwrap()),
                source: Source::MoreIpme {
                    line: i as usize + 1,
                },
            })
            .collect();
        let inputs = Inputs {
            moreipme,
            ..Default::default()
        };
        let t = std::time::Instant::now();
        let set = IpmeSet::compute(&inputs);
        let elapsed = t.elapsed();
        eprintln!("compute with 1M moreipme entries: {elapsed:?}");
        assert_eq!(set.len(), 1_000_004);
        assert!(set.is_me(ip("10.0.0.1")));
        // 10.0.0.0 + 4 * 1M addresses ends just before 10.61.9.0.
        assert!(set.is_me(ip("10.61.8.255")));
        assert!(!set.is_me(ip("10.61.9.0")));
        assert!(!set.is_me(ip("11.0.0.1")));
        assert_eq!(
            set.entries()
                .iter()
                .filter(|e| e.net.addr().is_ipv4())
                .count(),
            1_000_002
        );
        if !cfg!(debug_assertions) {
            assert!(elapsed.as_millis() < 1000, "{elapsed:?}");
        }
    }
}
