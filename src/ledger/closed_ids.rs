//! The recently closed hold ids of one account in the [`MemoryLedger`](super::MemoryLedger),
//! with how each closed and when it is forgotten.
//!
//! A settle leaves its id for its hold's TTL + 1 s, so a repeated settle or reserve gets
//! its first answer. An account used now and then keeps one or two at a time: those live
//! inline, in the account's activity box, so a call on a cold account allocates no table
//! for them (with a million accounts, such a call's allocations were most of its time:
//! `docs/performance.md`, "The scale bench drew a few hundred accounts"). A busy account
//! moves to a map and a heap by forget-at time, where each call stays logarithmic however
//! many ids it keeps.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use foldhash::fast::RandomState;
use smallvec::SmallVec;

use super::SettleOutcome;

/// A hold id as the ledger keys it (its `IdKey`).
type IdKey = u128;

/// How many closed ids the short list keeps before it becomes a map and a heap; the first
/// [`INLINE`] of them without an allocation.
const FEW: usize = 8;
const INLINE: usize = 2;

/// The closed ids of one account, by id key.
pub(super) enum ClosedIds {
    /// Up to [`FEW`] ids, in no order: (key, how it closed, forget-at ms).
    Few(SmallVec<[(IdKey, SettleOutcome, u64); INLINE]>),
    /// More: by key, and by forget-at time (ms), earliest first, so pruning looks only at
    /// the due ones (holds of different TTLs are not forgotten in closing order).
    Many {
        done: HashMap<IdKey, SettleOutcome, RandomState>,
        forget: BinaryHeap<Reverse<(u64, IdKey)>>,
    },
}

impl Default for ClosedIds {
    fn default() -> Self {
        Self::Few(SmallVec::new())
    }
}

impl ClosedIds {
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Few(few) => few.len(),
            Self::Many { done, .. } => done.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How `key` closed, if it is remembered.
    #[inline]
    pub(super) fn get(&self, key: IdKey) -> Option<SettleOutcome> {
        match self {
            Self::Few(few) => few.iter().find(|(k, ..)| *k == key).map(|&(_, how, _)| how),
            Self::Many { done, .. } => done.get(&key).copied(),
        }
    }

    /// Remembers how `key` closed until `forget_at` (ms). A key remembered already keeps
    /// its first forget-at time (and the heap no second entry for it).
    pub(super) fn insert(&mut self, key: IdKey, how: SettleOutcome, forget_at: u64) {
        match self {
            Self::Few(few) => {
                if let Some(entry) = few.iter_mut().find(|(k, ..)| *k == key) {
                    entry.1 = how;
                } else if few.len() < FEW {
                    few.push((key, how, forget_at));
                } else {
                    let mut done =
                        HashMap::with_capacity_and_hasher(FEW * 2, RandomState::default());
                    let mut forget = BinaryHeap::with_capacity(FEW * 2);
                    for (k, h, at) in few.drain(..).chain([(key, how, forget_at)]) {
                        done.insert(k, h);
                        forget.push(Reverse((at, k)));
                    }
                    *self = Self::Many { done, forget };
                }
            }
            Self::Many { done, forget } => {
                if done.insert(key, how).is_none() {
                    forget.push(Reverse((forget_at, key)));
                }
            }
        }
    }

    /// When the earliest remembered id is forgotten (ms), if any is remembered.
    pub(super) fn earliest(&self) -> Option<u64> {
        match self {
            Self::Few(few) => few.iter().map(|&(_, _, at)| at).min(),
            Self::Many { forget, .. } => forget.peek().map(|Reverse((at, _))| *at),
        }
    }

    /// Forgets up to `limit` ids whose forget-at time has come by `now_ms`, earliest first.
    pub(super) fn forget_due(&mut self, now_ms: u64, limit: usize) {
        match self {
            Self::Few(few) => {
                let mut left = limit;
                few.retain(|(_, _, at)| {
                    if *at <= now_ms && left > 0 {
                        left -= 1;
                        false
                    } else {
                        true
                    }
                });
            }
            Self::Many { done, forget } => {
                for _ in 0..limit {
                    match forget.peek() {
                        Some(Reverse((at, _))) if *at <= now_ms => {
                            let Reverse((_, key)) = forget.pop().expect("checked above");
                            done.remove(&key);
                        }
                        _ => break,
                    }
                }
                if done.is_empty() {
                    // A burst is over: back to the short list (and its memory to the
                    // allocator).
                    *self = Self::default();
                }
            }
        }
    }

    /// Forgets every id at once.
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The short list and the map answer alike, across the move from one to the other and
    /// back: checked against a plain map, by a seeded sequence of inserts and forgets.
    #[test]
    fn the_short_list_and_the_map_answer_alike() {
        let mut closed = ClosedIds::default();
        let mut model: std::collections::BTreeMap<IdKey, (SettleOutcome, u64)> = Default::default();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut now = 0u64;
        let mut was_many = false;
        for _ in 0..20_000 {
            let r = next();
            let key = (r % 40) as IdKey;
            if r % 3 == 0 {
                now += r % 7;
                let limit = (r % 5) as usize;
                closed.forget_due(now, limit);
                // The model forgets the same: the due ones, earliest first.
                let mut due: Vec<(u64, IdKey)> = model
                    .iter()
                    .filter(|(_, (_, at))| *at <= now)
                    .map(|(k, (_, at))| (*at, *k))
                    .collect();
                due.sort();
                if matches!(closed, ClosedIds::Few(_)) {
                    // The short list forgets any due ids (no order needed: all are due).
                    let gone: Vec<IdKey> = model
                        .keys()
                        .filter(|k| closed.get(**k).is_none())
                        .copied()
                        .collect();
                    assert!(gone.len() <= limit.min(due.len()));
                    for k in gone {
                        assert!(model[&k].1 <= now, "forgot {k} before its time");
                        model.remove(&k);
                    }
                } else {
                    for (_, k) in due.into_iter().take(limit) {
                        model.remove(&k);
                    }
                }
            } else {
                let at = now + r % 50;
                match model.entry(key) {
                    std::collections::btree_map::Entry::Occupied(mut known) => {
                        let how = if r % 2 == 0 {
                            SettleOutcome::Committed
                        } else {
                            SettleOutcome::Refunded
                        };
                        closed.insert(key, how, at);
                        known.get_mut().0 = how;
                    }
                    std::collections::btree_map::Entry::Vacant(new) => {
                        closed.insert(key, SettleOutcome::Expired, at);
                        new.insert((SettleOutcome::Expired, at));
                    }
                }
            }
            was_many |= matches!(closed, ClosedIds::Many { .. });
            assert_eq!(closed.len(), model.len());
            assert_eq!(closed.earliest(), model.values().map(|(_, at)| *at).min());
            for k in 0..40 {
                assert_eq!(closed.get(k), model.get(&k).map(|(how, _)| *how), "key {k}");
            }
        }
        assert!(was_many, "the sequence reached the map");
        closed.clear();
        assert!(closed.is_empty());
    }
}
