//! The open holds of one account in the [`MemoryLedger`](super::MemoryLedger), with their
//! expiry order.
//!
//! Most accounts have one or two holds open at a time (a request's), each open for a few
//! milliseconds. For those, a short list searched end to end beats a hash map and an
//! ordered index: nothing is hashed, nothing is re-balanced, and a first hold allocates
//! once instead of twice. An account with many open holds at once moves to the map and the
//! index, where each call stays logarithmic however many there are.

use std::collections::{BTreeSet, HashMap};

use foldhash::fast::RandomState;

/// A hold id as the ledger keys it (its `IdKey`).
type IdKey = u128;

/// How many open holds the short list keeps before it becomes a map and an index.
const FEW: usize = 8;

/// The open holds of one account, by id key.
pub(super) enum OpenHolds<H> {
    /// Up to [`FEW`] holds, in no order.
    Few(Vec<(IdKey, H)>),
    /// More: by key, and by expiry (ms) for the reclaims.
    Many {
        holds: HashMap<IdKey, H, RandomState>,
        expiry: BTreeSet<(u64, IdKey)>,
    },
}

/// What the list needs of a hold: when it expires.
pub(super) trait Expiring {
    /// When the hold expires (ms).
    fn expires_at_ms(&self) -> u64;
    /// Moves its expiry to `at` (ms).
    fn set_expires_at_ms(&mut self, at: u64);
}

impl<H> Default for OpenHolds<H> {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl<H: Expiring> OpenHolds<H> {
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Few(few) => few.len(),
            Self::Many { holds, .. } => holds.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn get(&self, key: IdKey) -> Option<&H> {
        match self {
            Self::Few(few) => few.iter().find(|(k, _)| *k == key).map(|(_, h)| h),
            Self::Many { holds, .. } => holds.get(&key),
        }
    }

    /// The hold of `key`, to change anything but its expiry (that is
    /// [`set_expiry`](Self::set_expiry)'s: the index must move with it).
    pub(super) fn get_mut(&mut self, key: IdKey) -> Option<&mut H> {
        match self {
            Self::Few(few) => few.iter_mut().find(|(k, _)| *k == key).map(|(_, h)| h),
            Self::Many { holds, .. } => holds.get_mut(&key),
        }
    }

    /// Adds a hold whose key is not open yet.
    pub(super) fn insert(&mut self, key: IdKey, hold: H) {
        debug_assert!(self.get(key).is_none(), "a key opened twice");
        match self {
            Self::Few(few) if few.len() < FEW => {
                if few.capacity() == 0 {
                    // Most accounts hold one at a time: room for one, not the default four.
                    few.reserve_exact(1);
                }
                few.push((key, hold));
            }
            Self::Few(few) => {
                let mut holds = HashMap::with_capacity_and_hasher(FEW * 2, RandomState::default());
                let mut expiry = BTreeSet::new();
                for (k, h) in few.drain(..).chain([(key, hold)]) {
                    expiry.insert((h.expires_at_ms(), k));
                    holds.insert(k, h);
                }
                *self = Self::Many { holds, expiry };
            }
            Self::Many { holds, expiry } => {
                expiry.insert((hold.expires_at_ms(), key));
                holds.insert(key, hold);
            }
        }
    }

    pub(super) fn remove(&mut self, key: IdKey) -> Option<H> {
        let removed = match self {
            Self::Few(few) => {
                let at = few.iter().position(|(k, _)| *k == key)?;
                Some(few.swap_remove(at).1)
            }
            Self::Many { holds, expiry } => {
                let hold = holds.remove(&key)?;
                expiry.remove(&(hold.expires_at_ms(), key));
                Some(hold)
            }
        };
        if self.is_empty() && matches!(self, Self::Many { .. }) {
            // A burst is over: back to the short list (and its memory to the allocator).
            *self = Self::default();
        }
        removed
    }

    /// Moves the expiry of the hold of `key` to `at` (ms); `None` if it is not open.
    pub(super) fn set_expiry(&mut self, key: IdKey, at: u64) -> Option<()> {
        match self {
            Self::Few(_) => self.get_mut(key).map(|h| h.set_expires_at_ms(at)),
            Self::Many { holds, expiry } => {
                let hold = holds.get_mut(&key)?;
                expiry.remove(&(hold.expires_at_ms(), key));
                hold.set_expires_at_ms(at);
                expiry.insert((at, key));
                Some(())
            }
        }
    }

    /// When the earliest open hold expires (ms), if any is open.
    pub(super) fn earliest_expiry(&self) -> Option<u64> {
        match self {
            Self::Few(few) => few.iter().map(|(_, h)| h.expires_at_ms()).min(),
            Self::Many { expiry, .. } => expiry.first().map(|&(at, _)| at),
        }
    }

    /// Takes out the earliest open hold if it expired by `now_ms`.
    pub(super) fn pop_expired(&mut self, now_ms: u64) -> Option<(IdKey, H)> {
        let popped = match self {
            Self::Few(few) => {
                let (at, _) = few
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (_, h))| h.expires_at_ms())?;
                if few[at].1.expires_at_ms() > now_ms {
                    return None;
                }
                Some(few.swap_remove(at))
            }
            Self::Many { holds, expiry } => {
                let &(at, key) = expiry.first()?;
                if at > now_ms {
                    return None;
                }
                expiry.pop_first();
                holds.remove(&key).map(|hold| (key, hold))
            }
        };
        if self.is_empty() && matches!(self, Self::Many { .. }) {
            *self = Self::default();
        }
        popped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Hold(u64);

    impl Expiring for Hold {
        fn expires_at_ms(&self) -> u64 {
            self.0
        }
        fn set_expires_at_ms(&mut self, at: u64) {
            self.0 = at;
        }
    }

    /// Drives a list and a plain model with the same operations, past the short list's
    /// size and back, and checks they agree after each one.
    #[test]
    fn the_short_list_and_the_map_keep_the_same_holds_in_the_same_expiry_order() {
        use std::collections::BTreeMap;
        let mut list = OpenHolds::default();
        let mut model: BTreeMap<IdKey, Hold> = BTreeMap::new();
        // A fixed pseudo-random walk: inserts, removes, extends and expiries.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut now = 0;
        // Phases that fill and drain the list, so it crosses between its two forms.
        let (mut was_many, mut crossings) = (false, 0);
        for step in 0..20_000 {
            let key = u128::from(next(40));
            let inserts = if (step / 500) % 2 == 0 { 6 } else { 0 };
            match next(10) {
                op if op < inserts && !model.contains_key(&key) => {
                    let hold = Hold(now + 1 + next(50));
                    list.insert(key, hold);
                    model.insert(key, hold);
                }
                op if op < inserts => {}
                6 | 8 | 9 => assert_eq!(list.remove(key), model.remove(&key), "{step}"),
                5 => {
                    let at = now + 1 + next(50);
                    let found = model.get_mut(&key).map(|h| h.0 = at);
                    assert_eq!(list.set_expiry(key, at), found, "{step}");
                }
                7 => {
                    now += next(5);
                    let earliest = model.iter().min_by_key(|(k, h)| (h.0, **k));
                    let due = earliest.filter(|(_, h)| h.0 <= now).map(|(k, h)| (*k, *h));
                    let popped = list.pop_expired(now);
                    // Among holds of one expiry any may come first.
                    assert_eq!(popped.map(|(_, h)| h.0), due.map(|(_, h)| h.0), "{step}");
                    if let Some((key, _)) = popped {
                        assert!(model.remove(&key).is_some(), "{step}");
                    }
                }
                _ => {}
            }
            assert_eq!(list.len(), model.len(), "{step}");
            assert_eq!(
                list.earliest_expiry(),
                model.values().map(|h| h.0).min(),
                "{step}"
            );
            for (k, h) in &model {
                assert_eq!(list.get(*k), Some(h), "{step}");
            }
            let many = matches!(list, OpenHolds::Many { .. });
            crossings += usize::from(many != was_many);
            was_many = many;
        }
        assert!(
            crossings >= 10,
            "crossed between the forms {crossings} times"
        );
    }

    #[test]
    fn a_burst_moves_to_the_map_and_back_when_it_is_over() {
        let mut list = OpenHolds::default();
        for key in 0..=FEW as u128 {
            list.insert(key, Hold(100 - key as u64));
        }
        assert!(matches!(list, OpenHolds::Many { .. }));
        assert_eq!(list.earliest_expiry(), Some(100 - FEW as u64));
        for key in 0..=FEW as u128 {
            assert!(list.remove(key).is_some());
        }
        assert!(matches!(&list, OpenHolds::Few(few) if few.capacity() == 0));
    }
}
