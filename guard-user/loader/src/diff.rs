//! Minimal updates that turn one map's contents into another's, for live BPF maps.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// What to change in a map. Apply `upsert` first, then `remove`: while the update runs, every
/// address that is "me" before and after stays covered (a prefix is never removed before its
/// replacement is in place).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff<K> {
    /// New keys, and keys whose tag changed.
    pub upsert: Vec<(K, u32)>,
    /// Keys that are no longer present.
    pub remove: Vec<K>,
}

impl<K> Default for Diff<K> {
    fn default() -> Self {
        Diff {
            upsert: Vec::new(),
            remove: Vec::new(),
        }
    }
}

impl<K> Diff<K> {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

/// The changes from `old` to `new`, both in key order. One merge pass: O(old + new).
pub fn diff<K: Ord + Clone>(old: &BTreeMap<K, u32>, new: &BTreeMap<K, u32>) -> Diff<K> {
    let mut d = Diff::default();
    let mut o = old.iter().peekable();
    let mut n = new.iter().peekable();
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some((ok, _)), None) => {
                d.remove.push((*ok).clone());
                o.next();
            }
            (None, Some((nk, nv))) => {
                d.upsert.push(((*nk).clone(), **nv));
                n.next();
            }
            (Some((ok, ov)), Some((nk, nv))) => match ok.cmp(nk) {
                Ordering::Less => {
                    d.remove.push((*ok).clone());
                    o.next();
                }
                Ordering::Greater => {
                    d.upsert.push(((*nk).clone(), **nv));
                    n.next();
                }
                Ordering::Equal => {
                    if ov != nv {
                        d.upsert.push(((*nk).clone(), **nv));
                    }
                    o.next();
                    n.next();
                }
            },
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(items: &[(u32, u32)]) -> BTreeMap<u32, u32> {
        items.iter().copied().collect()
    }

    #[test]
    fn empty_cases() {
        let e = map(&[]);
        assert!(diff(&e, &e).is_empty());
        let m = map(&[(1, 2), (3, 4)]);
        assert!(diff(&m, &m).is_empty());
        let d = diff(&e, &m);
        assert_eq!(d.upsert, [(1, 2), (3, 4)]);
        assert!(d.remove.is_empty());
        let d = diff(&m, &e);
        assert!(d.upsert.is_empty());
        assert_eq!(d.remove, [1, 3]);
        assert!(Diff::<u32>::default().is_empty());
    }

    #[test]
    fn add_change_remove() {
        let old = map(&[(1, 5), (2, 5), (4, 3), (9, 1)]);
        let new = map(&[(0, 2), (2, 5), (4, 1), (5, 5), (10, 3)]);
        let d = diff(&old, &new);
        assert_eq!(d.upsert, [(0, 2), (4, 1), (5, 5), (10, 3)]);
        assert_eq!(d.remove, [1, 9]);
    }

    #[test]
    fn applying_the_diff_gives_new() {
        let old = map(&[(1, 1), (2, 2), (3, 3), (7, 7)]);
        let new = map(&[(2, 20), (3, 3), (4, 4)]);
        let d = diff(&old, &new);
        let mut m = old.clone();
        for (k, v) in &d.upsert {
            m.insert(*k, *v);
        }
        for k in &d.remove {
            m.remove(k);
        }
        assert_eq!(m, new);
    }

    #[test]
    fn lpm_keys() {
        let old: BTreeMap<(u32, [u8; 4]), u32> =
            [((32, [192, 0, 2, 1]), 3), ((8, [127, 0, 0, 0]), 2)]
                .into_iter()
                .collect();
        let new: BTreeMap<(u32, [u8; 4]), u32> =
            [((8, [127, 0, 0, 0]), 2), ((24, [198, 51, 100, 0]), 5)]
                .into_iter()
                .collect();
        let d = diff(&old, &new);
        assert_eq!(d.upsert, [((24, [198, 51, 100, 0]), 5)]);
        assert_eq!(d.remove, [(32, [192, 0, 2, 1])]);
    }
}
