//! API-key lookups that reach the ledger: single-flighted per key and bounded, with their
//! own circuit breaker, so a flood of made-up keys costs one ledger call per distinct key
//! at most [`max_concurrent_key_lookups`](crate::CreditLayer::max_concurrent_key_lookups)
//! at a time, and cannot trip the breaker that guards billing for everyone.
//!
//! Keys seen valid recently (their cache entry expired, say) have lookup slots of their
//! own, as many again: a flood of made-up keys against a slow ledger cannot take every slot
//! and turn a paying caller away.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::api_key::ApiKeyHash;
use crate::ledger::AccountId;
use crate::outage::Breaker;

/// Lookups in flight of one layer.
pub(crate) struct KeyLookups {
    in_flight: Mutex<InFlight>,
    /// Lookups of each kind (recently valid keys, other keys) allowed at once.
    max: usize,
    /// Keys the ledger recently said are valid: they look up in slots of their own.
    seen_valid: quick_cache::sync::Cache<ApiKeyHash, ()>,
    /// Opened by lookups that time out; billing's own breaker never sees them.
    pub(crate) breaker: Breaker,
}

/// Keys being looked up, each with whether it was recently seen valid, and the count of
/// each kind.
#[derive(Default)]
struct InFlight {
    keys: HashMap<ApiKeyHash, (watch::Receiver<Option<Answer>>, bool)>,
    known: usize,
    other: usize,
}

impl InFlight {
    fn count(&mut self, known: bool) -> &mut usize {
        if known {
            &mut self.known
        } else {
            &mut self.other
        }
    }
}

/// How many recently valid keys keep slots of their own.
const SEEN_VALID_CAPACITY: usize = 100_000;

/// What the lead lookup of a key found, as its followers need it.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    /// The ledger answered: the key's account, or `None` for an unknown key.
    Found(Option<AccountId>),
    /// The ledger was unreachable: the outage policy applies.
    Outage,
    /// The ledger answered with an error that is not an outage: a billing error.
    Error,
    /// The lead request went away before the answer: look it up again.
    Abandoned,
}

/// Waits for the lead's answer.
pub(crate) type Follower = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// What a request whose key is not cached does.
pub(crate) enum Lookup {
    /// Ask the ledger, and tell the followers with [`LookupLead::answer`].
    Lead(LookupLead),
    /// Another request asks the ledger for the same key: wait for its answer.
    Follow(Follower),
    /// Too many distinct keys are being looked up.
    Busy,
}

/// The one lookup of a key in flight.
pub(crate) struct LookupLead {
    lookups: Arc<KeyLookups>,
    hash: ApiKeyHash,
    done: watch::Sender<Option<Answer>>,
}

impl LookupLead {
    /// Tells the followers what the ledger said (after the cache has it).
    pub(crate) fn answer(&self, answer: Answer) {
        self.done.send_replace(Some(answer));
    }
}

impl Drop for LookupLead {
    fn drop(&mut self) {
        let mut in_flight = self.lookups.in_flight.lock();
        if let Some((_, known)) = in_flight.keys.remove(&self.hash) {
            *in_flight.count(known) -= 1;
        }
        drop(in_flight);
        self.done.send_if_modified(|answer| {
            answer.get_or_insert(Answer::Abandoned);
            true
        });
    }
}

impl KeyLookups {
    pub(crate) fn new(max: usize, breaker_failures: u32, breaker_cooldown: Duration) -> Self {
        Self {
            in_flight: Mutex::default(),
            max,
            seen_valid: quick_cache::sync::Cache::new(SEEN_VALID_CAPACITY),
            breaker: Breaker::new(breaker_failures, breaker_cooldown),
        }
    }

    pub(crate) fn begin(self: &Arc<Self>, hash: ApiKeyHash) -> Lookup {
        let mut in_flight = self.in_flight.lock();
        if let Some((done, _)) = in_flight.keys.get(&hash) {
            let mut done = done.clone();
            return Lookup::Follow(Box::pin(async move {
                match done.wait_for(Option::is_some).await {
                    Ok(answer) => answer.clone().unwrap_or(Answer::Abandoned),
                    Err(_) => Answer::Abandoned,
                }
            }));
        }
        let known = self.seen_valid.get(&hash).is_some();
        if *in_flight.count(known) >= self.max {
            return Lookup::Busy;
        }
        *in_flight.count(known) += 1;
        let (done, wait) = watch::channel(None);
        in_flight.keys.insert(hash, (wait, known));
        Lookup::Lead(LookupLead {
            lookups: self.clone(),
            hash,
            done,
        })
    }
}

impl KeyLookups {
    /// The ledger said `hash` is a valid key: its next lookups use the slots kept for
    /// known keys.
    pub(crate) fn seen_valid(&self, hash: ApiKeyHash) {
        self.seen_valid.insert(hash, ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_lookup_per_key_and_a_bound_on_keys() {
        let lookups = Arc::new(KeyLookups::new(2, 5, Duration::from_secs(1)));
        let a = ApiKeyHash::of("a");
        let Lookup::Lead(lead_a) = lookups.begin(a) else {
            panic!("first lookup of a key leads")
        };
        let Lookup::Follow(follow_a) = lookups.begin(a) else {
            panic!("a second lookup of the same key follows")
        };
        let Lookup::Lead(_lead_b) = lookups.begin(ApiKeyHash::of("b")) else {
            panic!("another key leads")
        };
        assert!(matches!(lookups.begin(ApiKeyHash::of("c")), Lookup::Busy));
        lead_a.answer(Answer::Found(None));
        drop(lead_a);
        assert!(matches!(follow_a.await, Answer::Found(None)));
        assert!(matches!(
            lookups.begin(ApiKeyHash::of("c")),
            Lookup::Lead(_)
        ));
        // A lead that goes away without an answer sends its followers to look again.
        let Lookup::Lead(lead) = lookups.begin(ApiKeyHash::of("d")) else {
            panic!("leads")
        };
        let Lookup::Follow(follow) = lookups.begin(ApiKeyHash::of("d")) else {
            panic!("follows")
        };
        drop(lead);
        assert!(matches!(follow.await, Answer::Abandoned));
    }

    #[test]
    fn keys_seen_valid_keep_slots_of_their_own() {
        let lookups = Arc::new(KeyLookups::new(2, 5, Duration::from_secs(1)));
        let good = ApiKeyHash::of("good");
        lookups.seen_valid(good);
        let _flood: Vec<_> = ["x", "y"]
            .map(|k| match lookups.begin(ApiKeyHash::of(k)) {
                Lookup::Lead(lead) => lead,
                _ => panic!("a free slot"),
            })
            .into();
        assert!(matches!(lookups.begin(ApiKeyHash::of("z")), Lookup::Busy));
        assert!(
            matches!(lookups.begin(good), Lookup::Lead(_)),
            "a key seen valid has a slot the flood cannot take"
        );
    }
}
