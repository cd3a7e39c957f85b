//! Refunds of reserves that got no answer, driven by one worker per ledger.
//!
//! A script may still run after its caller gave up (a timeout, a dropped future), so a
//! reserve that got no answer is refunded by its hold id: if it ran, the hold goes back;
//! if not, the refund's tombstone keeps the late reserve from holding. During an outage
//! that is one refund per refused request: they go down one channel to one task, which
//! retries each with backoff until its hold's TTL has passed (after which the hold, if
//! any, is reclaimed as expired anyway). No request spawns a task.

use std::sync::{OnceLock, Weak};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Inner, RedisLedger};
use crate::backoff::Backoff;
use crate::ledger::{AccountId, HoldId, Ledger};

/// A reserve to refund: the account, the hold id, and how long the hold could live.
type Refund = (AccountId, HoldId, Duration);

/// The channel to the ledger's refund worker, started on first use.
#[derive(Default)]
pub(super) struct Unanswered {
    tx: OnceLock<mpsc::UnboundedSender<Refund>>,
}

impl Unanswered {
    /// Queues the refund of `hold`; without a runtime, the hold expires instead.
    pub(super) fn refund(
        &self,
        ledger: &RedisLedger,
        account: AccountId,
        hold: HoldId,
        ttl: Duration,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            // A weak handle: the worker ends once the last clone of the ledger is gone.
            runtime.spawn(work(std::sync::Arc::downgrade(&ledger.inner), rx));
            tx
        });
        let _ = tx.send((account, hold, ttl));
    }
}

async fn work(ledger: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Refund>) {
    let mut refunds = FuturesUnordered::new();
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some((account, hold, ttl)) => {
                    let Some(inner) = ledger.upgrade() else { return };
                    refunds.push(refund(RedisLedger { inner }, account, hold, ttl));
                }
                None => break,
            },
            Some(()) = refunds.next(), if !refunds.is_empty() => {}
        }
    }
    while refunds.next().await.is_some() {}
}

async fn refund(ledger: RedisLedger, account: AccountId, hold: HoldId, ttl: Duration) {
    let deadline = Instant::now() + ttl;
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        match ledger.refund(&account, &hold).await {
            Ok(settlement) => {
                tracing::debug!(
                    %account, %hold, outcome = ?settlement.outcome,
                    "refunded a reserve that got no answer"
                );
                return;
            }
            Err(err) if err.is_unavailable() && Instant::now() + backoff.peek() < deadline => {
                tokio::time::sleep(backoff.delay()).await;
            }
            Err(err) => {
                tracing::warn!(
                    %account, %hold, error = %err,
                    "could not refund a reserve that got no answer; \
                     the hold, if any, goes back when its ttl passes"
                );
                return;
            }
        }
    }
}
