//! Settling holds: the first try of a commit or refund, made in the request's task, the
//! accounting of every settle's final answer, and the count a graceful shutdown waits on.
//! What the first try leaves unanswered goes to the [keeper](super::keeper).

use std::fmt;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::Shared;
use super::guard::HoldCtx;
use super::keeper::{FirstTry, HoldWatch, Job};
use crate::events::Events;
use crate::ledger::{
    Ledger, LedgerError, Settle, SettleDecision, SettleOutcome, Settlement, StoreResponse,
};
use crate::outage::Stats;
use crate::wire::headers::CreditHeaders;

/// The type-erased side of [`Shared`] that bodies and guards need, so `ResponseBody` is not
/// generic over the ledger.
pub(crate) trait Settler: Send + Sync + 'static {
    /// Settles (`decision` is already clamped to the hold): the first try now, the rest by
    /// the keeper.
    fn settle(&self, hold: &HoldCtx, decision: SettleDecision);
    /// Hands a hold to the keeper's watch (renewals, lifetime cap, stall clock); it would
    /// expire at `expires`. `false` when there is no keeper to run it.
    fn watch(self: Arc<Self>, hold: &HoldCtx, watch: Arc<HoldWatch>, expires: Instant) -> bool;
    fn headers(&self) -> &CreditHeaders;
    /// `credits_requests_total`'s handles.
    #[cfg(feature = "metrics")]
    fn requests(&self) -> &crate::metrics::RequestCounters;
    /// Stores a keyed request's response for its replays: the first try now, the rest by
    /// the keeper (once; a lost store leaves the record unavailable for replays).
    fn store(&self, store: StoreResponse);
}

pub(crate) fn settle_call<L: Ledger>(
    ledger: &L,
    hold: &HoldCtx,
    decision: SettleDecision,
) -> L::Future<Settlement> {
    let charge = &hold.charge;
    let mut settle = Settle::new(charge.account(), charge.hold_id(), decision);
    if let Some(keyed) = &hold.keyed {
        settle = settle.idempotency(keyed.key);
    }
    ledger.settle(settle)
}

/// Counts a settle's final answer.
pub(crate) fn settled(
    stats: &Stats,
    events: Option<&Events>,
    hold: &HoldCtx,
    decision: SettleDecision,
    result: Result<Settlement, LedgerError>,
) {
    let account = hold.charge.account();
    let hold_id = hold.charge.hold_id();
    match (decision, result) {
        (SettleDecision::Commit(actual), Ok(s)) => match s.outcome {
            // A retried commit whose first try ran: committed once, with the same amount.
            SettleOutcome::Committed | SettleOutcome::AlreadyCommitted => {
                Stats::add(&stats.commits, 1);
                Stats::add(&stats.credits_committed, actual);
                for event in &s.events {
                    tracing::info!(%account, event = %event.id, kind = %event.kind, available = event.available, threshold = ?event.threshold, runway_secs = ?event.runway_secs, "credit event detected");
                }
                if let Some(events) = events {
                    events.deliver(s.events);
                }
            }
            outcome => {
                Stats::add(&stats.commits_lost, 1);
                Stats::add(&stats.credits_lost, actual);
                tracing::warn!(%account, hold = %hold_id, ?outcome, "commit found no open hold; its credits went back (unbilled)");
            }
        },
        (SettleDecision::Refund, Ok(_)) => Stats::add(&stats.refunds, 1),
        (decision, Err(error)) => {
            if let SettleDecision::Commit(actual) = decision {
                Stats::add(&stats.commits_lost, 1);
                Stats::add(&stats.credits_lost, actual);
            }
            tracing::error!(%account, hold = %hold_id, %error, ?decision, "settle failed for good; the hold will expire and be refunded");
        }
    }
}

impl<L: Ledger> Settler for Shared<L> {
    fn settle(&self, hold: &HoldCtx, decision: SettleDecision) {
        // The first poll happens here, in the request's task: an in-memory ledger answers
        // at once, a networked one puts its command on the connection before the response
        // head leaves, so the caller's next request sees this one settled.
        let mut first = settle_call(&self.ledger, hold, decision);
        let mut cx = Context::from_waker(Waker::noop());
        // Outside a tokio runtime (a guard dropped on a plain thread), a networked ledger's
        // future may panic on its first poll; that must not abort an unwinding thread. An
        // in-process ledger's never needs one.
        let polled = if L::IN_PROCESS || tokio::runtime::Handle::try_current().is_ok() {
            Pin::new(&mut first).poll(&mut cx)
        } else {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Pin::new(&mut first).poll(&mut cx)
            })) {
                Ok(polled) => polled,
                Err(_) => {
                    tracing::error!("settle outside a tokio runtime failed; the hold will expire and be refunded");
                    return lost(&self.stats, decision);
                }
            }
        };
        let first = match polled {
            Poll::Ready(Ok(settlement)) => {
                self.breaker.record(true);
                return settled(
                    &self.stats,
                    self.events.as_ref(),
                    hold,
                    decision,
                    Ok(settlement),
                );
            }
            Poll::Ready(Err(error)) if !error.is_unavailable() => {
                return settled(
                    &self.stats,
                    self.events.as_ref(),
                    hold,
                    decision,
                    Err(error),
                );
            }
            Poll::Ready(Err(error)) => FirstTry::Unavailable(error),
            Poll::Pending => FirstTry::Pending(first),
        };
        // Not answered yet, or the ledger is unreachable: the keeper waits and retries.
        let job = Job::Settle {
            hold: hold.clone(),
            decision,
            first,
            ticket: self.pending.enter(),
        };
        if let Err(Job::Settle { hold, decision, .. }) = self.keeper.send(job, || self.worker_ctx())
        {
            tracing::error!(hold = %hold.charge.hold_id(), "no hold keeper (shut down, or no runtime); this settle was sent once and the hold expires if it did not land");
            lost(&self.stats, decision);
        }
    }

    fn watch(self: Arc<Self>, hold: &HoldCtx, watch: Arc<HoldWatch>, expires: Instant) -> bool {
        let job = Job::Watch {
            hold: hold.clone(),
            watch,
            settler: self.clone(),
            expires,
        };
        if self.keeper.send(job, || self.worker_ctx()).is_err() {
            tracing::warn!(hold = %hold.charge.hold_id(), "no hold keeper (shut down, or no runtime); hold not renewed");
            return false;
        }
        true
    }

    fn headers(&self) -> &CreditHeaders {
        &self.headers
    }

    #[cfg(feature = "metrics")]
    fn requests(&self) -> &crate::metrics::RequestCounters {
        &self.requests
    }

    fn store(&self, store: StoreResponse) {
        // Sent from the request's task, so it goes out with the body's end; the keeper
        // waits for the answer. Outside a runtime there is no one to send it.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut call = self.ledger.store_response(store);
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(&mut call).poll(&mut cx).is_ready() {
            return;
        }
        if self
            .keeper
            .send(Job::Store(call), || self.worker_ctx())
            .is_err()
        {
            tracing::warn!("no hold keeper (shut down); a response stored for replays may be lost");
        }
    }
}

/// Counts a commit no ledger confirmed (a refund that never landed costs nothing: the
/// hold's expiry gives the credits back all the same).
fn lost(stats: &Stats, decision: SettleDecision) {
    if let SettleDecision::Commit(actual) = decision {
        Stats::add(&stats.commits_lost, 1);
        Stats::add(&stats.credits_lost, actual);
    }
}

/// Settles still in flight: a graceful shutdown waits for them so that no hold is left to
/// expire.
///
/// ```
/// # use std::time::Duration;
/// # use tower_credits::{CreditLayer, MemoryLedger};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = CreditLayer::new(MemoryLedger::new());
/// let pending = layer.pending_settlements();
/// // ... serve with `with_graceful_shutdown`, then:
/// assert!(pending.drain(Duration::from_secs(5)).await);
/// # let _ = layer; }
/// ```
#[derive(Clone, Default)]
pub struct PendingSettlements {
    inner: Arc<PendingInner>,
}

#[derive(Default)]
struct PendingInner {
    count: AtomicUsize,
    idle: Notify,
}

impl fmt::Debug for PendingSettlements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingSettlements")
            .field("len", &self.len())
            .finish()
    }
}

pub(crate) struct Ticket(Arc<PendingInner>);

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl PendingSettlements {
    pub(crate) fn enter(&self) -> Ticket {
        self.inner.count.fetch_add(1, Ordering::AcqRel);
        Ticket(self.inner.clone())
    }

    /// Settles still running in the background.
    pub fn len(&self) -> usize {
        self.inner.count.load(Ordering::Acquire)
    }

    /// Whether no settle is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until no settle is running, at most `timeout`; `true` if all finished.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let mut idle = pin!(self.inner.idle.notified());
                idle.as_mut().enable();
                if self.is_empty() {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}
