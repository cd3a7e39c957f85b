//! Settling holds: the ledger calls that commit, refund and renew a hold, their retries
//! while the ledger does not answer, and the tracker a graceful shutdown drains.

use std::fmt;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;

use super::config::Shared;
use super::guard::{Decision, HoldCtx};
use crate::ledger::{Ledger, LedgerError, SettleOutcome, Settlement};
use crate::outage::{Breaker, Stats};
use crate::wire::headers::CreditHeaders;

/// The type-erased side of [`Shared`] that bodies and guards need, so `ResponseBody` is not
/// generic over the ledger.
pub(crate) trait Settler: Send + Sync + 'static {
    fn settle(&self, hold: &HoldCtx, decision: Decision);
    fn extend(&self, hold: &HoldCtx);
    fn headers(&self) -> &CreditHeaders;
    fn hold_ttl(&self) -> Duration;
}

/// First retry delay of a settle the ledger did not answer; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(25);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// What a background settle keeps: the ledger and the counters, cheap to clone.
struct Retrier<L> {
    ledger: L,
    breaker: Arc<Breaker>,
    stats: Arc<Stats>,
    hold_ttl: Duration,
}

fn settle_call<L: Ledger>(ledger: &L, hold: &HoldCtx, decision: Decision) -> L::Future<Settlement> {
    let charge = &hold.charge;
    match decision {
        Decision::Commit(actual) => ledger.commit(
            charge.account(),
            charge.hold_id(),
            actual.min(charge.reserved()),
        ),
        Decision::Refund => ledger.refund(charge.account(), charge.hold_id()),
    }
}

/// Counts a settle's final answer.
fn settled(
    stats: &Stats,
    hold: &HoldCtx,
    decision: Decision,
    result: Result<Settlement, LedgerError>,
) {
    let account = hold.charge.account();
    let hold_id = hold.charge.hold_id();
    match (decision, result) {
        (Decision::Commit(actual), Ok(s)) => match s.outcome {
            // A retried commit whose first try ran: committed once, with the same amount.
            SettleOutcome::Committed | SettleOutcome::AlreadyCommitted => {
                Stats::add(&stats.commits, 1);
                Stats::add(&stats.credits_committed, actual.min(hold.charge.reserved()));
                if s.threshold_crossed {
                    tracing::info!(%account, available = ?s.available, threshold = ?s.low_balance_threshold, "account fell below its low-balance threshold");
                }
            }
            outcome => {
                Stats::add(&stats.commits_lost, 1);
                Stats::add(&stats.credits_lost, actual.min(hold.charge.reserved()));
                tracing::warn!(%account, hold = %hold_id, ?outcome, "commit found no open hold; its credits went back (unbilled)");
            }
        },
        (Decision::Refund, Ok(_)) => Stats::add(&stats.refunds, 1),
        (decision, Err(error)) => {
            if let Decision::Commit(actual) = decision {
                Stats::add(&stats.commits_lost, 1);
                Stats::add(&stats.credits_lost, actual.min(hold.charge.reserved()));
            }
            tracing::error!(%account, hold = %hold_id, %error, ?decision, "settle failed for good; the hold will expire and be refunded");
        }
    }
}

impl<L: Ledger> Settler for Shared<L> {
    fn settle(&self, hold: &HoldCtx, decision: Decision) {
        if let Decision::Commit(actual) = decision {
            if actual > hold.charge.reserved() {
                let charge = &hold.charge;
                tracing::warn!(
                    account = %charge.account(),
                    hold = %charge.hold_id(),
                    reserved = charge.reserved(),
                    asked = actual,
                    "actual cost exceeds the hold; charged at the hold"
                );
            }
        }
        let mut first = settle_call(&self.ledger, hold, decision);
        let mut cx = Context::from_waker(Waker::noop());
        // Outside a tokio runtime (a guard dropped on a plain thread), a networked ledger's
        // future may panic on its first poll; that must not abort an unwinding thread.
        let polled = if tokio::runtime::Handle::try_current().is_ok() {
            Pin::new(&mut first).poll(&mut cx)
        } else {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Pin::new(&mut first).poll(&mut cx)
            })) {
                Ok(polled) => polled,
                Err(_) => {
                    tracing::error!("settle outside a tokio runtime failed; the hold will expire and be refunded");
                    return;
                }
            }
        };
        let first_answer = match polled {
            Poll::Ready(Ok(settlement)) => {
                self.breaker.record(true);
                return settled(&self.stats, hold, decision, Ok(settlement));
            }
            Poll::Ready(Err(error)) if !error.is_unavailable() => {
                return settled(&self.stats, hold, decision, Err(error));
            }
            Poll::Ready(Err(error)) => Some(Err(error)),
            Poll::Pending => None,
        };
        // Not answered yet, or the ledger is unreachable: finish in the background, retrying
        // with backoff while the hold lives. Settles are idempotent by hold id, so a retry
        // after a lost reply never moves credits twice; if every try fails, the hold expires
        // and the ledger gives the credits back.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                "no tokio runtime to finish a settle on; the hold will expire and be refunded"
            );
            return;
        };
        let ticket = self.pending.enter();
        // Only what the retries need, not the whole configuration (pricing table and all).
        let shared = Retrier {
            ledger: self.ledger.clone(),
            breaker: self.breaker.clone(),
            stats: self.stats.clone(),
            hold_ttl: self.hold_ttl,
        };
        let hold = hold.clone();
        runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + shared.hold_ttl;
            let mut delay = FIRST_RETRY_DELAY;
            let mut answer = match first_answer {
                Some(answer) => answer,
                None => first.await,
            };
            loop {
                match answer {
                    Err(error) if error.is_unavailable() => {
                        shared.breaker.record(false);
                        // Give up only once the hold has expired: a try that timed out may
                        // still be queued on the server and commit while the hold lives, so
                        // the last try goes out at the deadline, when nothing can commit
                        // the hold any more; its answer, if any, is the truth.
                        let now = tokio::time::Instant::now();
                        if now >= deadline {
                            break settled(&shared.stats, &hold, decision, Err(error));
                        }
                        tokio::time::sleep(delay.min(deadline - now)).await;
                        delay = (delay * 2).min(MAX_RETRY_DELAY);
                        Stats::add(&shared.stats.settle_retries, 1);
                        answer = settle_call(&shared.ledger, &hold, decision).await;
                    }
                    answer => {
                        if answer.is_ok() {
                            shared.breaker.record(true);
                        }
                        break settled(&shared.stats, &hold, decision, answer);
                    }
                }
            }
            drop(ticket);
        });
    }

    fn extend(&self, hold: &HoldCtx) {
        let charge = &hold.charge;
        let fut = self
            .ledger
            .extend(charge.account(), charge.hold_id(), self.hold_ttl);
        let hold_id = charge.hold_id().clone();
        drive(&self.pending, fut, move |result| {
            if let Err(error) = result {
                tracing::warn!(hold = %hold_id, %error, "could not renew hold");
            }
        });
    }

    fn headers(&self) -> &CreditHeaders {
        &self.headers
    }

    fn hold_ttl(&self) -> Duration {
        self.hold_ttl
    }
}

/// Runs a ledger call to completion without making the response wait for it: polled once
/// here (an in-memory ledger answers at once, a networked one sends its command), then, if
/// not done, finished on the runtime and counted in `pending` until it is.
pub(crate) fn drive<F, T>(
    pending: &PendingSettlements,
    fut: F,
    done: impl FnOnce(T) + Send + 'static,
) where
    F: Future<Output = T> + Send + Unpin + 'static,
    T: Send + 'static,
{
    let mut fut = fut;
    let mut cx = Context::from_waker(Waker::noop());
    if let Poll::Ready(out) = Pin::new(&mut fut).poll(&mut cx) {
        done(out);
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            let ticket = pending.enter();
            handle.spawn(async move {
                done(fut.await);
                drop(ticket);
            });
        }
        Err(_) => tracing::error!(
            "no tokio runtime to finish a settle on; the hold will expire and be refunded"
        ),
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
