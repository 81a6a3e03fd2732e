//! qmail's loop rule (docs/qmail-remote.md §2.6): never deliver to ourselves or to an MX that is not strictly
//! better than us.

use std::net::IpAddr;

use super::dns::Candidate;

/// "Is this address one of mine?" — the shared ipme set in production, a list in tests.
pub trait IsMe {
    /// True if `ip` is this host (interfaces, moreipme, …, minus notipme).
    fn is_me(&self, ip: IpAddr) -> bool;
}

impl IsMe for ipme::IpmeSet {
    fn is_me(&self, ip: IpAddr) -> bool {
        ipme::IpmeSet::is_me(self, ip)
    }
}

/// We are a best-preference MX (or the host's A record): stock perm_ambigmx.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("listed as a best-preference MX or A for the host")]
pub struct Ambiguous;

/// The addresses that may be tried, in order. `me` is `None` for a smtproutes relay: stock sets
/// prefme to 300000 there, so the check is off (the kernel guard still covers relays).
pub fn eligible(cands: &[Candidate], me: Option<&dyn IsMe>) -> Result<Vec<Candidate>, Ambiguous> {
    let prefme = match me {
        None => 300_000,
        Some(me) => cands
            .iter()
            .filter(|c| me.is_me(c.ip))
            .map(|c| c.pref)
            .fold(100_000, u32::min),
    };
    let out: Vec<Candidate> = cands.iter().copied().filter(|c| c.pref < prefme).collect();
    if out.is_empty() {
        Err(Ambiguous)
    } else {
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Me(Vec<IpAddr>);
    impl IsMe for Me {
        fn is_me(&self, ip: IpAddr) -> bool {
            self.0.contains(&ip)
        }
    }

    fn c(ip: &str, pref: u32) -> Candidate {
        Candidate {
            ip: ip.parse().unwrap(),
            pref,
        }
    }

    #[test]
    fn rule() {
        let me = Me(vec!["192.0.2.25".parse().unwrap()]);
        let list = vec![
            c("192.0.2.1", 5),
            c("192.0.2.25", 10),
            c("192.0.2.2", 10),
            c("192.0.2.3", 20),
        ];
        // backup MX: only strictly better ones
        assert_eq!(eligible(&list, Some(&me)), Ok(vec![c("192.0.2.1", 5)]));
        // best MX (tied with a peer) → ambiguous
        assert_eq!(eligible(&list[1..], Some(&me)), Err(Ambiguous));
        // A record / literal of ourselves
        assert_eq!(eligible(&[c("192.0.2.25", 0)], Some(&me)), Err(Ambiguous));
        // not me: everything, in order
        assert_eq!(eligible(&list[2..], Some(&me)).map(|v| v.len()), Ok(2));
        // relay: no check at all
        assert_eq!(
            eligible(&[c("192.0.2.25", 0)], None),
            Ok(vec![c("192.0.2.25", 0)])
        );
        // no candidates at all is also "ambiguous" in stock's loop (caller maps empty to nomx first)
        assert_eq!(eligible(&[], Some(&me)), Err(Ambiguous));
    }
}
