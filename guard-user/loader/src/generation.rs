//! Atomic set changes with two generations of tries.
//!
//! The programs read the generation from `IPME_GEN` and look up the tries of index
//! `active_index(generation)`. A change of the set:
//! 1. waits until no program can still be reading the standby tries (a writer killed right
//!    after an earlier flip may have left readers on them),
//! 2. brings the standby tries to the new set by difference against their actual content (read
//!    back from the kernel, so a half-written standby is repaired),
//! 3. flips the generation with one map update: connects see the old set, then the new one,
//!    never a mixture, in both families at once,
//! 4. waits until no program still reads the previous tries, then brings them to the new set
//!    too, so the next change starts from a standby that differs only by that change.
//!
//! A writer killed at any instant leaves the set in force untouched: before the flip it only
//! wrote the standby; after it the new set is complete. This module is the sequence alone,
//! over a [`Writer`], so a model of the kernel can check it (see the tests).

use std::collections::BTreeMap;

use crate::diff::{Diff, diff};

/// The kernel operations a set change is made of.
pub trait Writer {
    type Error;
    /// Writes `key` = `tag` into trie `index` of family v4.
    fn write_v4(&mut self, index: usize, key: &(u32, [u8; 4]), tag: u32)
    -> Result<(), Self::Error>;
    fn remove_v4(&mut self, index: usize, key: &(u32, [u8; 4])) -> Result<(), Self::Error>;
    fn write_v6(
        &mut self,
        index: usize,
        key: &(u32, [u8; 16]),
        tag: u32,
    ) -> Result<(), Self::Error>;
    fn remove_v6(&mut self, index: usize, key: &(u32, [u8; 16])) -> Result<(), Self::Error>;
    /// Makes `generation` the one the programs read (one map update).
    fn flip(&mut self, generation: u32) -> Result<(), Self::Error>;
    /// Returns once every program run that started before the call has finished.
    fn barrier(&mut self) -> Result<(), Self::Error>;
    /// Records that both tries hold the set of `generation` (Some), or that they may differ
    /// (None). A writer that finds the mark for the generation in force reads one trie only.
    fn mark(&mut self, clean: Option<u32>) -> Result<(), Self::Error>;
}

pub type Map4 = BTreeMap<(u32, [u8; 4]), u32>;
pub type Map6 = BTreeMap<(u32, [u8; 16]), u32>;

/// The content of both tries of one family, by index.
#[derive(Debug, Clone, Default)]
pub struct Tries<M> {
    pub by_index: [M; 2],
}

/// One set change, computed from the tries' actual content.
#[derive(Debug, Clone)]
pub struct Change {
    pub generation: u32,
    standby4: Diff<(u32, [u8; 4])>,
    standby6: Diff<(u32, [u8; 16])>,
    active4: Diff<(u32, [u8; 4])>,
    active6: Diff<(u32, [u8; 16])>,
}

/// What a change did to the set in force.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Entries of the set in force added or retagged, and removed.
    pub upserted: usize,
    pub removed: usize,
    /// The generation in force afterwards.
    pub generation: u32,
    /// Whether the generation was flipped (the set in force changed).
    pub flipped: bool,
}

impl Change {
    /// The change from the tries' content (`v4`, `v6`, read from the kernel) to `new4`/`new6`,
    /// with `generation` in force.
    pub fn plan(
        generation: u32,
        v4: &Tries<Map4>,
        v6: &Tries<Map6>,
        new4: &Map4,
        new6: &Map6,
    ) -> Self {
        let a = guard_common::active_index(generation);
        let s = 1 - a;
        Change {
            generation,
            standby4: diff(&v4.by_index[s], new4),
            standby6: diff(&v6.by_index[s], new6),
            active4: diff(&v4.by_index[a], new4),
            active6: diff(&v6.by_index[a], new6),
        }
    }

    /// Runs the sequence described in the module documentation.
    pub fn apply<W: Writer>(&self, w: &mut W) -> Result<Outcome, W::Error> {
        let a = guard_common::active_index(self.generation);
        let s = 1 - a;
        let set_changes = !self.active4.is_empty() || !self.active6.is_empty();
        let standby_changes = !self.standby4.is_empty() || !self.standby6.is_empty();
        let mut out = Outcome {
            upserted: self.active4.upsert.len() + self.active6.upsert.len(),
            removed: self.active4.remove.len() + self.active6.remove.len(),
            generation: self.generation,
            flipped: false,
        };
        if standby_changes {
            w.mark(None)?;
            w.barrier()?;
            write(w, s, &self.standby4, &self.standby6)?;
        }
        if !set_changes {
            // The set in force is already the new one (nothing to flip); at most the standby
            // was repaired. Both tries now hold it, also after a writer killed just before
            // its last mark.
            w.mark(Some(self.generation))?;
            return Ok(out);
        }
        // The mark names the generation in force, so the flip itself makes it stale.
        let next = self.generation.wrapping_add(1);
        w.flip(next)?;
        out.generation = next;
        out.flipped = true;
        w.barrier()?;
        write(w, a, &self.active4, &self.active6)?;
        w.mark(Some(next))?;
        Ok(out)
    }
}

/// Applies one diff per family to trie `index`: new and changed entries first, then removals.
fn write<W: Writer>(
    w: &mut W,
    index: usize,
    d4: &Diff<(u32, [u8; 4])>,
    d6: &Diff<(u32, [u8; 16])>,
) -> Result<(), W::Error> {
    for (k, t) in &d4.upsert {
        w.write_v4(index, k, *t)?;
    }
    for (k, t) in &d6.upsert {
        w.write_v6(index, k, *t)?;
    }
    for k in &d4.remove {
        w.remove_v4(index, k)?;
    }
    for k in &d6.remove {
        w.remove_v6(index, k)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! A model of the kernel: two LPM tries per family and the generation, with the readers'
    //! view (the longest-prefix verdict in the active tries) checked after every operation.
    use super::*;
    use proptest::prelude::*;

    /// Readers see the trie a program run picked when it started; a barrier ends every run.
    /// `readable[i]` is true while a program run may still look at trie `i`.
    #[derive(Debug, Clone)]
    struct Model {
        generation: u32,
        v4: [Map4; 2],
        readable: [bool; 2],
        /// Operations left before the writer is "killed" (None: never).
        budget: Option<usize>,
        /// Every verdict function the readers could observe, as addresses → tag.
        seen: Vec<Vec<Option<u32>>>,
        probes: Vec<[u8; 4]>,
        wrote_readable: bool,
        clean: Option<u32>,
        /// The mark claimed both tries equal while they differed.
        false_clean: bool,
    }

    #[derive(Debug)]
    struct Killed;

    /// Longest-prefix match as the kernel's LPM trie: the entry with the longest prefix that
    /// covers `addr`.
    fn lpm(m: &Map4, addr: [u8; 4]) -> Option<u32> {
        let a = u32::from_be_bytes(addr);
        m.iter()
            .filter(|((len, data), _)| {
                let mask = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
                a & mask == u32::from_be_bytes(*data) & mask
            })
            .max_by_key(|((len, _), _)| *len)
            .map(|(_, t)| *t)
    }

    impl Model {
        fn view(&self, index: usize) -> Vec<Option<u32>> {
            self.probes
                .iter()
                .map(|p| lpm(&self.v4[index], *p))
                .collect()
        }
        fn observe(&mut self) {
            for i in 0..2 {
                if self.readable[i] {
                    let v = self.view(i);
                    self.seen.push(v);
                }
            }
        }
        fn step(&mut self) -> Result<(), Killed> {
            match &mut self.budget {
                Some(0) => Err(Killed),
                Some(n) => {
                    *n -= 1;
                    Ok(())
                }
                None => Ok(()),
            }
        }
        fn touch(&mut self, index: usize) {
            if self.readable[index] {
                self.wrote_readable = true;
            }
        }
        fn check_mark(&mut self) {
            if self.clean == Some(self.generation) && self.v4[0] != self.v4[1] {
                self.false_clean = true;
            }
        }
    }

    impl Writer for Model {
        type Error = Killed;
        fn write_v4(&mut self, i: usize, k: &(u32, [u8; 4]), t: u32) -> Result<(), Killed> {
            self.step()?;
            self.touch(i);
            self.v4[i].insert(*k, t);
            self.observe();
            self.check_mark();
            Ok(())
        }
        fn remove_v4(&mut self, i: usize, k: &(u32, [u8; 4])) -> Result<(), Killed> {
            self.step()?;
            self.touch(i);
            self.v4[i].remove(k);
            self.observe();
            self.check_mark();
            Ok(())
        }
        fn write_v6(&mut self, _: usize, _: &(u32, [u8; 16]), _: u32) -> Result<(), Killed> {
            unreachable!("the model has no IPv6 entries")
        }
        fn remove_v6(&mut self, _: usize, _: &(u32, [u8; 16])) -> Result<(), Killed> {
            unreachable!("the model has no IPv6 entries")
        }
        fn flip(&mut self, g: u32) -> Result<(), Killed> {
            self.step()?;
            self.generation = g;
            // Runs that started before the flip may still read the previous tries.
            self.readable[guard_common::active_index(g)] = true;
            self.observe();
            Ok(())
        }
        fn barrier(&mut self) -> Result<(), Killed> {
            self.step()?;
            self.readable = [false, false];
            self.readable[guard_common::active_index(self.generation)] = true;
            Ok(())
        }
        fn mark(&mut self, clean: Option<u32>) -> Result<(), Killed> {
            self.step()?;
            self.clean = clean;
            self.check_mark();
            Ok(())
        }
    }

    fn key() -> impl Strategy<Value = (u32, [u8; 4])> {
        // Prefixes inside 198.51.100.0/26 and its parents, so they overlap a lot.
        (22u32..=32, 0u8..64).prop_map(|(len, last)| {
            let a = u32::from_be_bytes([198, 51, 100, last]);
            let mask = u32::MAX << (32 - len);
            (len, (a & mask).to_be_bytes())
        })
    }

    fn set() -> impl Strategy<Value = Map4> {
        // Tags: 1 = notipme, 3 = interface, 5 = moreipme.
        prop::collection::btree_map(key(), prop::sample::select(vec![1u32, 3, 5]), 0..12)
    }

    fn probes() -> Vec<[u8; 4]> {
        // Every address the keys can distinguish, and some outside them.
        let mut p: Vec<[u8; 4]> = (0..64u8).map(|x| [198, 51, 100, x]).collect();
        p.push([198, 51, 100, 200]);
        p.extend([[198, 51, 101, 7], [198, 51, 96, 1], [198, 51, 111, 255]]);
        p
    }

    fn model(generation: u32, active: Map4, standby: Map4, budget: Option<usize>) -> Model {
        let a = guard_common::active_index(generation);
        let mut v4 = [Map4::new(), Map4::new()];
        v4[a] = active;
        v4[1 - a] = standby;
        let mut readable = [false, false];
        readable[a] = true;
        Model {
            generation,
            v4,
            readable,
            budget,
            seen: Vec::new(),
            probes: probes(),
            wrote_readable: false,
            clean: None,
            false_clean: false,
        }
    }

    /// What a writer reads: one trie when the mark says both are equal, else both.
    fn change(m: &Model, new: &Map4) -> Change {
        let a = guard_common::active_index(m.generation);
        let tries = Tries {
            by_index: if m.clean == Some(m.generation) {
                [m.v4[a].clone(), m.v4[a].clone()]
            } else {
                m.v4.clone()
            },
        };
        Change::plan(m.generation, &tries, &Tries::default(), new, &Map6::new())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// From any old set (with any half-written standby), every state a reader can see
        /// during the change is exactly the old set's or the new set's, and the change ends
        /// with both tries holding the new set.
        #[test]
        fn readers_see_old_or_new_only(
            old in set(), new in set(), standby in set(), generation in any::<u32>(),
        ) {
            let mut m = model(generation, old.clone(), standby, None);
            let old_view = m.view(guard_common::active_index(generation));
            let new_view: Vec<_> = m.probes.iter().map(|p| lpm(&new, *p)).collect();
            let c = change(&m, &new);
            let out = c.apply(&mut m).unwrap();
            for v in &m.seen {
                prop_assert!(v == &old_view || v == &new_view, "a reader saw a mixed set");
            }
            prop_assert!(!m.wrote_readable, "wrote a trie that a program may be reading");
            prop_assert!(!m.false_clean, "the mark said both tries were equal while they differed");
            prop_assert_eq!(&m.v4[0], &new);
            prop_assert_eq!(&m.v4[1], &new);
            prop_assert_eq!(out.flipped, old != new);
            prop_assert_eq!(out.generation, if old != new { generation.wrapping_add(1) } else { generation });
        }

        /// A writer killed after any number of operations leaves the old or the new set in
        /// force, and the next change (from the tries as they are) converges.
        #[test]
        fn a_killed_writer_leaves_old_or_new_and_the_next_change_converges(
            old in set(), new in set(), standby in set(), generation in any::<u32>(), kill_at in 0usize..40,
        ) {
            let mut m = model(generation, old.clone(), standby, Some(kill_at));
            let old_view = m.view(guard_common::active_index(generation));
            let new_view: Vec<_> = m.probes.iter().map(|p| lpm(&new, *p)).collect();
            let _ = change(&m, &new).apply(&mut m);
            let in_force = m.view(guard_common::active_index(m.generation));
            prop_assert!(in_force == old_view || in_force == new_view);
            // The next writer: a fresh process, every earlier run may still be reading.
            m.budget = None;
            m.readable = [true, true];
            m.seen.clear();
            let c = change(&m, &new);
            c.apply(&mut m).unwrap();
            for v in &m.seen {
                prop_assert!(v == &old_view || v == &new_view, "a reader saw a mixed set");
            }
            prop_assert_eq!(&m.v4[0], &new);
            prop_assert_eq!(&m.v4[1], &new);
            prop_assert!(!m.false_clean, "the mark said both tries were equal while they differed");
            prop_assert_eq!(m.clean, Some(m.generation));
        }

        /// Three changes in a row, each from what the previous left (the mark lets later
        /// writers read one trie): readers only ever see one of the sets.
        #[test]
        fn consecutive_changes_read_one_trie_and_stay_atomic(
            sets in prop::collection::vec(set(), 2..5), generation in any::<u32>(),
        ) {
            let mut m = model(generation, sets[0].clone(), sets[0].clone(), None);
            m.clean = Some(generation);
            for w in sets.windows(2) {
                let (old, new) = (&w[0], &w[1]);
                let old_view: Vec<_> = m.probes.iter().map(|p| lpm(old, *p)).collect();
                let new_view: Vec<_> = m.probes.iter().map(|p| lpm(new, *p)).collect();
                m.seen.clear();
                change(&m, new).apply(&mut m).unwrap();
                for v in &m.seen {
                    prop_assert!(v == &old_view || v == &new_view, "a reader saw a mixed set");
                }
                prop_assert!(!m.wrote_readable && !m.false_clean);
                prop_assert_eq!(&m.v4[0], new);
                prop_assert_eq!(&m.v4[1], new);
            }
        }
    }

    /// The case: A = 198.51.100.0/24 me; B = .25 me + /24 not me. Writing B in key order
    /// into the live trie made .25 connectable for a moment; here no reader ever sees that.
    #[test]
    fn a_to_b_never_allows_25() {
        let a: Map4 = [((24, [198, 51, 100, 0]), 5)].into_iter().collect();
        let b: Map4 = [((24, [198, 51, 100, 0]), 1), ((32, [198, 51, 100, 25]), 5)]
            .into_iter()
            .collect();
        for (from, to) in [(&a, &b), (&b, &a)] {
            let mut m = model(0, from.clone(), from.clone(), None);
            change(&m, to).apply(&mut m).unwrap();
            let i25 = m
                .probes
                .iter()
                .position(|p| *p == [198, 51, 100, 25])
                .unwrap();
            assert!(m.seen.iter().all(|v| v[i25] == Some(5)));
            assert_eq!(m.generation, 1);
        }
    }
}
