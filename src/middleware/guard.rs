//! The drop guard: one open hold of one request, settled exactly once — explicitly when
//! the response says how, or when dropped (client gone, future dropped, panic unwinding) —
//! and [`decide`], the one function that turns what happened into a commit or a refund.
//!
//! | how the request ended | settles |
//! |---|---|
//! | success | commit: the `Charge` (its price unless the handler set a cost) |
//! | the response said failure (a failing status, a non-OK `grpc-status`), `Charge` untouched | refund |
//! | the response said failure after the handler metered its work with `set`/`add` | commit: the `Charge` so far |
//! | inner service error, panic, handler cancelled past the lifetime cap | refund |
//! | dropped before the head, `Charge` untouched | refund |
//! | dropped before the head after `set`/`add` (a cancelled upload) | commit: the `Charge` so far |
//! | after the head: client reset, body dropped, body error, no status | commit: the `Charge` so far |
//!
//! A handler that metered its work with `set`/`add` is taken at its word, failure or not:
//! otherwise a caller could read every item of a metered stream and then make it fail (a
//! malformed last message, an id that does not exist), or reset a client-streaming upload so
//! that the handler answers an error first, and get all of it refunded. A handler that wants
//! a failure to be free calls `charge.set(0)` before failing; a fixed-price call (no
//! `set`/`add`) that fails is refunded.

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

use super::classify::Verdict;
use super::settle::Settler;
use crate::charge::{Charge, Closed};
use crate::wire::headers::Thresholds;

/// What to do with a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Commit this much (the `Charge`'s actual cost, unclamped: the settle clamps to the
    /// hold and logs an overrun).
    Commit(u64),
    Refund,
}

/// How a billed request ended, as far as billing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The response (head, or trailers) said success.
    Success,
    /// The response head said failure: the caller got nothing but the error.
    Failure,
    /// The trailers said failure, after a body the caller read.
    FailureAfterBody,
    /// The inner service returned an error or panicked before the head, or the handler was
    /// cancelled past the hold lifetime cap: the server did not answer.
    Error,
    /// The head left without a failure, and the rest never said anything: the client reset
    /// the stream, dropped the body, the body failed, or no status ever came.
    Early,
    /// The response future was dropped before the head: the client went away while the
    /// handler ran.
    BeforeHead,
}

impl End {
    /// The end a verdict at the end of the body stands for.
    pub(crate) fn at_body_end(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Success => End::Success,
            Verdict::Failure => End::FailureAfterBody,
            Verdict::Unknown => End::Early,
        }
    }
}

/// The settle decision, written once: only an explicit failure refunds; a client that
/// stopped early pays for what its `Charge` says so far. `charge` is the charge as it was
/// closed, so what is committed and what the headers say are one reading.
pub(crate) fn decide(end: End, charge: &Closed) -> Decision {
    match end {
        End::Success | End::Early => Decision::Commit(charge.to_commit()),
        End::Error => Decision::Refund,
        // Work the handler metered was done, even if no one reads the answer or the call
        // ends in an error status.
        End::Failure | End::FailureAfterBody | End::BeforeHead if charge.actual.is_some() => {
            Decision::Commit(charge.to_commit())
        }
        End::Failure | End::FailureAfterBody | End::BeforeHead => Decision::Refund,
    }
}

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
}

impl HoldCtx {
    /// `Credits-Remaining` after settling for `cost`.
    pub(crate) fn remaining(&self, cost: u64) -> i64 {
        self.available + self.charge.reserved() as i64 - cost as i64
    }

    /// What a decision costs the caller, as the headers report it.
    pub(crate) fn cost_of(&self, decision: Decision) -> u64 {
        match decision {
            Decision::Commit(actual) => actual.min(self.charge.reserved()),
            Decision::Refund => 0,
        }
    }
}

/// Settles a hold exactly once: explicitly with [`settle`](Self::settle), or when dropped,
/// by [`decide`] (see the [module docs](self)).
///
/// Exactly once because closing the `Charge` is the settle's ticket: whoever closes it
/// first (this guard, or the keeper ending a stalled body) settles, and no one else.
pub(crate) struct HoldGuard {
    settler: Arc<dyn Settler>,
    hold: HoldCtx,
    /// The response head has left: a drop is an early end, not a cancelled call.
    head_sent: bool,
}

impl fmt::Debug for HoldGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HoldGuard")
            .field("hold", &self.hold)
            .field("head_sent", &self.head_sent)
            .finish()
    }
}

impl HoldGuard {
    pub(crate) fn new(settler: Arc<dyn Settler>, hold: HoldCtx) -> Self {
        Self {
            settler,
            hold,
            head_sent: false,
        }
    }

    /// The response head left without a failure; the body now streams.
    pub(crate) fn head_sent(&mut self) {
        self.head_sent = true;
    }

    pub(crate) fn hold(&self) -> &HoldCtx {
        &self.hold
    }

    pub(crate) fn settler(&self) -> &Arc<dyn Settler> {
        &self.settler
    }

    /// Closes the `Charge` and settles as `end` decides; returns the decision, or `None`
    /// when the keeper already settled this hold (its reader stalled).
    pub(crate) fn settle(self, end: End) -> Option<Decision> {
        self.settle_once(end)
    }

    fn settle_once(&self, end: End) -> Option<Decision> {
        // Closed and read in one step: a late `set` fails instead of going unbilled.
        let closed = self.hold.charge.close()?;
        let decision = decide(end, &closed);
        self.settler.settle(&self.hold, decision);
        Some(decision)
    }

    /// Renews the hold, which would expire at `expires`.
    pub(crate) fn extend(&self, expires: Instant) {
        self.settler.extend(&self.hold, expires);
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let end = if self.head_sent {
            End::Early
        } else {
            End::BeforeHead
        };
        self.settle_once(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{AccountId, HoldId};

    fn closed(added: Option<u64>) -> Closed {
        let charge = Charge::new(AccountId::new("a").unwrap(), HoldId::generate(), 20);
        if let Some(n) = added {
            charge.add(n).unwrap();
        }
        charge.close().unwrap()
    }

    #[test]
    fn only_an_explicit_failure_refunds() {
        let fixed = closed(None);
        assert_eq!(decide(End::Success, &fixed), Decision::Commit(20));
        assert_eq!(decide(End::Early, &fixed), Decision::Commit(20));
        assert_eq!(decide(End::Failure, &fixed), Decision::Refund);
        assert_eq!(decide(End::BeforeHead, &fixed), Decision::Refund);

        assert_eq!(decide(End::Error, &fixed), Decision::Refund);

        let used = closed(Some(7));
        assert_eq!(decide(End::Early, &used), Decision::Commit(7));
        assert_eq!(decide(End::BeforeHead, &used), Decision::Commit(7));
        assert_eq!(decide(End::Failure, &used), Decision::Commit(7));
        assert_eq!(decide(End::FailureAfterBody, &used), Decision::Commit(7));
        assert_eq!(decide(End::FailureAfterBody, &fixed), Decision::Refund);
        assert_eq!(decide(End::Error, &used), Decision::Refund);

        // A metered handler that wants its failure free says so.
        assert_eq!(
            decide(End::FailureAfterBody, &closed(Some(0))),
            Decision::Commit(0)
        );
    }
}
