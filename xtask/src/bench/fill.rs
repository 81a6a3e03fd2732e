//! Deterministic ipme entries for the 10 / 10k / 1M sets.
//!
//! Single addresses spread uniformly over the unicast IPv4 space, so the trie is evenly deep
//! everywhere: a lookup for any destination walks about log2(n) nodes, the realistic worst
//! case for a set of that size (a set packed into one private prefix would let lookups for
//! other destinations stop at the root and flatter the guard). They are map keys only — no
//! packet is ever sent to them. The documentation ranges, where all benchmark traffic goes, are
//! left out, so no destination becomes "me" by accident.

use std::collections::HashSet;

/// `n` distinct addresses, the same for every run (fixed seed).
pub fn addresses(n: usize) -> Vec<[u8; 4]> {
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < n {
        // xorshift64*: fast, deterministic, good enough to spread keys.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let a = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32;
        let o = a.to_be_bytes();
        if usable(o) && seen.insert(a) {
            out.push(o);
        }
    }
    out
}

fn usable(o: [u8; 4]) -> bool {
    let doc = matches!(
        (o[0], o[1], o[2]),
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113)
    );
    // 0/8 and 127/8 are built-ins already; 224/3 is multicast and reserved.
    o[0] != 0 && o[0] != 127 && o[0] < 224 && !doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_deterministic_and_outside_the_traffic_ranges() {
        let a = addresses(10_000);
        assert_eq!(a, addresses(10_000));
        let set: HashSet<_> = a.iter().collect();
        assert_eq!(set.len(), a.len());
        assert!(a.iter().all(|&o| usable(o)));
        assert!(!usable([198, 51, 100, 7]));
        assert!(!usable([127, 0, 0, 1]));
    }
}
