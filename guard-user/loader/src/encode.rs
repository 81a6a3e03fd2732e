//! How the ipme set is written into the kernel: one LPM trie key per prefix
//! (prefix length, address bytes in network order) and a tag saying which source put it there.

use std::collections::BTreeMap;

use guard_common::tag;
use ipme::{IpNet, IpmeSet, Source};

/// The tag stored in the tries for an entry of this source (`guard_common::tag::*`).
pub fn tag_of(source: &Source) -> u32 {
    match source {
        Source::Builtin => tag::BUILTIN,
        Source::Interface { .. } => tag::INTERFACE,
        Source::LocalRoute { .. } => tag::LOCAL_ROUTE,
        Source::MoreIpme { .. } => tag::MOREIPME,
        Source::NotIpme { .. } => tag::NOT_ME,
        Source::Learned { .. } => tag::LEARNED,
    }
}

/// The IPv4 entries as the `IPME_V4` trie holds them.
pub fn map_v4(set: &IpmeSet) -> BTreeMap<(u32, [u8; 4]), u32> {
    set.entries()
        .iter()
        .filter_map(|e| match e.net {
            IpNet::V4(n) => Some((
                (u32::from(n.prefix_len()), n.network().octets()),
                tag_of(&e.source),
            )),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// The IPv6 entries as the `IPME_V6` trie holds them.
pub fn map_v6(set: &IpmeSet) -> BTreeMap<(u32, [u8; 16]), u32> {
    set.entries()
        .iter()
        .filter_map(|e| match e.net {
            IpNet::V6(n) => Some((
                (u32::from(n.prefix_len()), n.network().octets()),
                tag_of(&e.source),
            )),
            IpNet::V4(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use ipme::{Entry, Inputs};

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

    #[test]
    fn tag_names_match_source_kinds() {
        for s in [
            Source::Builtin,
            Source::Interface { name: "x".into() },
            Source::LocalRoute {
                dev: "x".into(),
                table: 254,
            },
            Source::MoreIpme { line: 1 },
            Source::NotIpme { line: 1 },
            Source::Learned { at: 1 },
        ] {
            assert_eq!(tag::name(tag_of(&s)), s.kind());
        }
    }

    #[test]
    fn map_contents() {
        let inputs = Inputs {
            interfaces: vec![
                ("lo".into(), ip("127.0.0.1")),
                ("eth0".into(), ip("2001:db8::2")),
            ],
            local_routes: vec![ipme::LocalRoute {
                net: net("203.0.113.0/24"),
                dev: "lo".into(),
                table: 254,
            }],
            moreipme: vec![more(1, "198.51.100.0/24"), more(2, "2001:db8:1::/48")],
            notipme: vec![not(1, "198.51.100.7/32")],
            learned: vec![Entry {
                net: net("192.0.2.99/32"),
                source: Source::Learned { at: 7 },
            }],
        };
        let set = IpmeSet::compute(&inputs);
        let want_v4: BTreeMap<(u32, [u8; 4]), u32> = [
            ((8, [0, 0, 0, 0]), tag::BUILTIN),
            ((8, [127, 0, 0, 0]), tag::BUILTIN),
            ((32, [127, 0, 0, 1]), tag::INTERFACE),
            ((24, [203, 0, 113, 0]), tag::LOCAL_ROUTE),
            ((24, [198, 51, 100, 0]), tag::MOREIPME),
            ((32, [198, 51, 100, 7]), tag::NOT_ME),
            ((32, [192, 0, 2, 99]), tag::LEARNED),
        ]
        .into_iter()
        .collect();
        assert_eq!(map_v4(&set), want_v4);
        let v6 = |s: &str| ip(s).to_canonical();
        let oct = |s: &str| match v6(s) {
            IpAddr::V6(a) => a.octets(),
            IpAddr::V4(_) => unreachable!(),
        };
        let want_v6: BTreeMap<(u32, [u8; 16]), u32> = [
            ((128, oct("::")), tag::BUILTIN),
            ((128, oct("::1")), tag::BUILTIN),
            ((128, oct("2001:db8::2")), tag::INTERFACE),
            ((48, oct("2001:db8:1::")), tag::MOREIPME),
        ]
        .into_iter()
        .collect();
        assert_eq!(map_v6(&set), want_v6);

        let counts = set.count_by_source();
        let want: BTreeMap<&str, usize> = [
            ("builtin", 4),
            ("interface", 2),
            ("learned", 1),
            ("local-route", 1),
            ("moreipme", 2),
            ("notipme", 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(counts, want);
    }
}
