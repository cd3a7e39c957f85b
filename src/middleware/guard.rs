//! The drop guard: one open hold of one request, settled exactly once — explicitly when
//! the response says how, by the keeper when it cuts the hold (lifetime cap, stalled
//! reader), or when dropped (client gone, future dropped, panic unwinding). What each end
//! decides is the [settlement policy](super::settlement).

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

use super::keeper::HoldWatch;
use super::settle::Settler;
use super::settlement::{decide, overrun, End};
use crate::charge::Charge;
use crate::ledger::SettleDecision;
use crate::wire::headers::Thresholds;

/// One open hold of one request.
#[derive(Clone, Debug)]
pub(crate) struct HoldCtx {
    pub(crate) charge: Charge,
    /// The account's available balance right after the reserve.
    pub(crate) available: i64,
    /// The account's thresholds, else the layer's.
    pub(crate) thresholds: Thresholds,
    /// Seconds the balance lasts at the account's recent spend rate, as of the reserve.
    pub(crate) runway_secs: Option<u64>,
    /// What its stream does at the hold.
    pub(crate) stream_limit: crate::StreamLimit,
    /// The idempotency key its reserve claimed, if any.
    /// Boxed: rare, and a hold context is moved with each state of the request.
    pub(crate) keyed: Option<Box<super::record::KeyedHold>>,
}

impl HoldCtx {
    /// `Credits-Remaining` after settling for `cost`.
    pub(crate) fn remaining(&self, cost: u64) -> i64 {
        // `available` was measured after the first hold; a grow since took more of it.
        self.available + self.charge.first_hold() as i64 - cost as i64
    }
}

/// Closes the hold's `Charge` and settles it as `end` decides: the one way every holder of
/// a hold (guard, body, keeper) settles it. `None` when someone else closed it first.
///
/// Exactly once because closing the `Charge` is the settle's ticket: whoever closes it
/// first settles, and no one else.
pub(crate) fn settle_hold(
    settler: &dyn Settler,
    hold: &HoldCtx,
    end: End,
) -> Option<SettleDecision> {
    // Closed and read in one step: a late `set` fails instead of going unbilled.
    let closed = hold.charge.close()?;
    if let Some(over) = overrun(&closed) {
        tracing::warn!(
            account = %hold.charge.account(),
            hold = %hold.charge.hold_id(),
            reserved = closed.reserved,
            over,
            "actual cost exceeds the hold; charged at the hold"
        );
    }
    let decision = decide(end, &closed);
    #[cfg(feature = "metrics")]
    count(settler.requests(), end, decision);
    settler.settle(hold, decision);
    Some(decision)
}

/// Counts a billed request by how it ended, in `credits_requests_total`.
#[cfg(feature = "metrics")]
fn count(requests: &crate::metrics::RequestCounters, end: End, decision: SettleDecision) {
    use crate::metrics::{Outcome, Reason};
    let outcome = match decision {
        SettleDecision::Commit(_) => Outcome::Billed,
        _ => Outcome::Refunded,
    };
    let reason = match end {
        End::Success => Reason::Ok,
        End::Early | End::BeforeHead => Reason::Cancelled,
        End::Failure | End::FailureAfterBody | End::Error => Reason::Failed,
    };
    requests.count(outcome, reason);
}

/// Settles a hold exactly once: explicitly with [`settle`](Self::settle), or when dropped
/// (see the [settlement policy](super::settlement)).
pub(crate) struct HoldGuard {
    settler: Arc<dyn Settler>,
    hold: HoldCtx,
    /// The response head has left: a drop is an early end, not a cancelled call.
    head_sent: bool,
    /// The keeper's watch of this hold, once the request outlived its first renewal or
    /// its body settles at its end.
    watch: Option<WatchHandle>,
}

/// The request's side of a [`HoldWatch`]: tells the keeper when the hold's holder is gone.
struct WatchHandle(Arc<HoldWatch>);

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.0.gone();
    }
}

impl fmt::Debug for HoldGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HoldGuard")
            .field("hold", &self.hold)
            .field("head_sent", &self.head_sent)
            .field("watched", &self.watch.is_some())
            .finish()
    }
}

impl HoldGuard {
    pub(crate) fn new(settler: Arc<dyn Settler>, hold: HoldCtx) -> Self {
        Self {
            settler,
            hold,
            head_sent: false,
            watch: None,
        }
    }

    pub(crate) fn hold(&self) -> &HoldCtx {
        &self.hold
    }

    pub(crate) fn settler(&self) -> &Arc<dyn Settler> {
        &self.settler
    }

    /// Hands the hold to the keeper's watch (renewals, the lifetime cap, the stall clock),
    /// once. `expires`: when the hold expires unless renewed; `cap_at`: the lifetime cap.
    pub(crate) fn watch(&mut self, expires: Instant, cap_at: Instant) -> Option<&HoldWatch> {
        if self.watch.is_none() {
            let watch = Arc::new(HoldWatch::new(cap_at));
            if self
                .settler
                .clone()
                .watch(&self.hold, watch.clone(), expires)
            {
                self.watch = Some(WatchHandle(watch));
            }
        }
        self.watched()
    }

    /// The keeper's watch, if it has one.
    pub(crate) fn watched(&self) -> Option<&HoldWatch> {
        self.watch.as_ref().map(|handle| &*handle.0)
    }

    /// The response head left without a failure; the body now streams (and settles at its
    /// end).
    pub(crate) fn head_sent(&mut self) {
        self.head_sent = true;
        if let Some(watch) = self.watched() {
            watch.streaming();
        }
    }

    /// Settles as `end` decides; returns the decision, or `None` when the keeper already
    /// settled this hold (it cut it). The hold stays readable, for the figures the response
    /// says; the drop then settles nothing (the `Charge` is closed).
    pub(crate) fn settle(&mut self, end: End) -> Option<SettleDecision> {
        settle_hold(&*self.settler, &self.hold, end)
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let end = if self.head_sent {
            End::Early
        } else {
            End::BeforeHead
        };
        settle_hold(&*self.settler, &self.hold, end);
    }
}
