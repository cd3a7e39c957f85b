//! The in-memory ledger's outbox: detected events in an in-process queue, each leased to
//! the dispatcher that is delivering it, with the same contract as the Redis outbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{AccountId, CreditEvent, DeadLetter, EventKind};
use crate::clock::Clock;

pub(crate) struct MemoryOutbox {
    clock: Arc<dyn Clock>,
    lease_ms: u64,
    replica: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The next receipt: events are kept by it, so the oldest comes first.
    next: u64,
    pending: BTreeMap<u64, Pending>,
    dead: Vec<DeadLetter>,
}

struct Pending {
    event: CreditEvent,
    leased_until_ms: u64,
}

impl MemoryOutbox {
    pub(crate) fn new(clock: Arc<dyn Clock>, lease: Duration) -> Self {
        Self {
            clock,
            lease_ms: lease.as_millis() as u64,
            replica: format!("memory-{}", uuid::Uuid::now_v7().simple()),
            state: Mutex::default(),
        }
    }

    /// A new event of `account`, with a receipt no event of this ledger had, and an id no
    /// event of any process had (the key is salted with this ledger's random name).
    pub(crate) fn new_event(
        &self,
        kind: EventKind,
        account: &AccountId,
        available: i64,
        now_ms: u64,
    ) -> CreditEvent {
        let seq = {
            let mut state = self.state.lock();
            state.next += 1;
            state.next
        };
        CreditEvent::new(
            kind,
            account.clone(),
            available,
            now_ms,
            format!("{}.{seq}", self.replica),
        )
        .with_receipt(seq.to_string())
    }

    /// Keeps `event` (made by [`Self::new_event`]), leased to this
    /// process from `now_ms`; returns it.
    pub(crate) fn push(&self, event: CreditEvent, now_ms: u64) -> CreditEvent {
        let seq: u64 = event
            .receipt
            .parse()
            .expect("receipts of this outbox are numbers");
        self.state.lock().pending.insert(
            seq,
            Pending {
                event: event.clone(),
                leased_until_ms: now_ms.saturating_add(self.lease_ms),
            },
        );
        event
    }

    fn seq(event: &CreditEvent) -> Option<u64> {
        event.receipt.parse().ok()
    }
}

impl MemoryOutbox {
    pub(crate) fn replica(&self) -> &str {
        &self.replica
    }

    pub(crate) fn claim(&self, lease: Duration, max: usize) -> Vec<CreditEvent> {
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        state
            .pending
            .values_mut()
            .filter(|p| p.leased_until_ms <= now)
            .take(max)
            .map(|p| {
                p.leased_until_ms = now.saturating_add(lease.as_millis() as u64);
                p.event.clone()
            })
            .collect()
    }

    pub(crate) fn renew(&self, event: &CreditEvent, lease: Duration) -> bool {
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        // One process, one replica: the lease is ours while the event waits.
        match MemoryOutbox::seq(event).and_then(|s| state.pending.get_mut(&s)) {
            Some(p) => {
                p.leased_until_ms = now.saturating_add(lease.as_millis() as u64);
                true
            }
            None => false,
        }
    }

    pub(crate) fn ack(&self, event: &CreditEvent) {
        if let Some(seq) = MemoryOutbox::seq(event) {
            self.state.lock().pending.remove(&seq);
        }
    }

    pub(crate) fn dead_letter(&self, event: &CreditEvent, reason: &str) {
        let mut state = self.state.lock();
        if let Some(seq) = MemoryOutbox::seq(event) {
            if let Some(p) = state.pending.remove(&seq) {
                state.dead.push(DeadLetter::new(p.event, reason));
            }
        }
    }

    /// Moves a dead letter back to the queue, unleased.
    pub(crate) fn requeue(&self, dead: &DeadLetter) -> bool {
        let mut state = self.state.lock();
        let Some(i) = state.dead.iter().position(|d| d.receipt == dead.receipt) else {
            return false;
        };
        let letter = state.dead.remove(i);
        let Some(seq) = MemoryOutbox::seq(&letter.event) else {
            return false;
        };
        state.pending.insert(
            seq,
            Pending {
                event: letter.event,
                leased_until_ms: 0,
            },
        );
        true
    }

    pub(crate) fn dead_letters(&self, account: &AccountId) -> Vec<DeadLetter> {
        let state = self.state.lock();
        state
            .dead
            .iter()
            .filter(|d| &d.event.account == account)
            .cloned()
            .collect()
    }

    pub(crate) fn pending(&self, account: &AccountId) -> Vec<CreditEvent> {
        let state = self.state.lock();
        state
            .pending
            .values()
            .filter(|p| &p.event.account == account)
            .map(|p| p.event.clone())
            .collect()
    }
}
