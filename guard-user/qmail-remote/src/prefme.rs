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
    let out: Vec<Candidate> = cands.iter().filter(|c| c.pref < prefme).cloned().collect();
    if out.is_empty() {
        Err(Ambiguous)
    } else {
        Ok(out)
    }
}

/// The loop rule for an address that turns out to be this host only when it is tried: the
/// kernel guard refuses the connect (ELOOP), or the peer proves to be ourselves. Such an address
/// counts exactly like an ipme address in [`eligible`]: it and every candidate of equal or worse
/// preference are "me" and are not tried; if no strictly better candidate exists the result is
/// perm_ambigmx, otherwise the better candidates' outcome stands (stock's rule had it known the
/// address from the start; docs/qmail-remote.md §2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LateMe {
    prefme: Option<u32>,
}

impl Default for LateMe {
    fn default() -> Self {
        Self::new()
    }
}

impl LateMe {
    /// Nothing found to be me yet.
    pub fn new() -> Self {
        LateMe { prefme: None }
    }

    /// `c` turned out to be this host.
    pub fn found(&mut self, c: &Candidate) {
        self.prefme = Some(self.prefme.map_or(c.pref, |p| p.min(c.pref)));
    }

    /// Whether `c` may still be tried.
    pub fn allows(&self, c: &Candidate) -> bool {
        self.prefme.is_none_or(|p| c.pref < p)
    }

    /// After the connect loop ended without a session: `Err(Ambiguous)` if an address was found
    /// to be me and no candidate of `cands` (the eligible list) is strictly better than it.
    pub fn verdict(&self, cands: &[Candidate]) -> Result<(), Ambiguous> {
        match self.prefme {
            Some(p) if !cands.iter().any(|c| c.pref < p) => Err(Ambiguous),
            _ => Ok(()),
        }
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
            name: None,
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

    #[test]
    fn late_me_is_the_same_rule() {
        let list = vec![
            c("192.0.2.1", 10),
            c("192.0.2.2", 20),
            c("192.0.2.3", 20),
            c("192.0.2.4", 30),
        ];
        // a refused backup MX: the better one's outcome stands, worse ones are not tried
        let mut l = LateMe::new();
        assert!(l.allows(&list[1]) && l.verdict(&list).is_ok());
        l.found(&list[1]);
        assert!(l.allows(&list[0]));
        assert!(!l.allows(&list[2]) && !l.allows(&list[3]));
        assert_eq!(l.verdict(&list), Ok(()));
        // the best MX is me: ambiguous, as if it were in moreipme
        let mut l = LateMe::new();
        l.found(&list[0]);
        assert_eq!(l.verdict(&list), Err(Ambiguous));
        assert!(list.iter().all(|x| !l.allows(x)));
        // a worse one found later never raises the horizon again
        l.found(&list[3]);
        assert_eq!(l.verdict(&list), Err(Ambiguous));
        // the same verdict stock gives with the address known up front
        struct One(IpAddr);
        impl IsMe for One {
            fn is_me(&self, ip: IpAddr) -> bool {
                ip == self.0
            }
        }
        for (i, x) in list.iter().enumerate() {
            let mut l = LateMe::new();
            l.found(x);
            let stock = eligible(&list, Some(&One(x.ip)));
            let late: Vec<Candidate> = list.iter().filter(|c| l.allows(c)).cloned().collect();
            match stock {
                Ok(v) => assert_eq!((v, l.verdict(&list)), (late, Ok(())), "case {i}"),
                Err(Ambiguous) => {
                    assert!(late.is_empty(), "case {i}");
                    assert_eq!(l.verdict(&list), Err(Ambiguous), "case {i}");
                }
            }
        }
    }
}
