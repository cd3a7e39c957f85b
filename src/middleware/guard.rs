//! The drop guard: one open hold of one request, settled exactly once — explicitly when
//! the response says how, or when dropped (client gone, future dropped, panic unwinding) —
//! and [`decide`], the one function that turns what happened into a commit or a refund.
//!
//! | dropped | settles |
//! |---|---|
//! | before the response head, the handler never touched its `Charge` | refund |
//! | before the response head, after `Charge::set`/`add` (a cancelled upload) | commit: the `Charge` so far |
//! | after the response head (client reset, body dropped, body error) | commit: the `Charge` so far |
//!
//! An explicit failure (a failing status, a non-OK `grpc-status`, an inner error, a panic
//! before the head) is settled as a refund before the guard is dropped.

use std::fmt;
use std::sync::Arc;

use super::classify::Verdict;
use super::settle::Settler;
use crate::charge::Charge;

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
    /// The response said failure, or the inner service failed or panicked before the head.
    Failure,
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
            Verdict::Failure => End::Failure,
            Verdict::Unknown => End::Early,
        }
    }
}

/// The settle decision, written once: only an explicit failure refunds; a client that
/// stopped early pays for what its `Charge` says so far.
pub(crate) fn decide(end: End, charge: &Charge) -> Decision {
    let so_far = || Decision::Commit(charge.actual().unwrap_or(charge.reserved()));
    match end {
        End::Success | End::Early => so_far(),
        End::Failure => Decision::Refund,
        // Work the handler already accounted for was done, even if no one reads the answer.
        End::BeforeHead if charge.actual().is_some() => so_far(),
        End::BeforeHead => Decision::Refund,
    }
}

/// One open hold of one request.
#[derive(Clone, Debug)]
pub(crate) struct HoldCtx {
    pub(crate) charge: Charge,
    /// The account's available balance right after the reserve.
    pub(crate) available: i64,
    /// The account's threshold, else the layer's.
    pub(crate) threshold: Option<u64>,
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
pub(crate) struct HoldGuard {
    settler: Arc<dyn Settler>,
    hold: HoldCtx,
    /// The response head has left: a drop is an early end, not a cancelled call.
    head_sent: bool,
    settled: bool,
}

impl fmt::Debug for HoldGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HoldGuard")
            .field("hold", &self.hold)
            .field("head_sent", &self.head_sent)
            .field("settled", &self.settled)
            .finish()
    }
}

impl HoldGuard {
    pub(crate) fn new(settler: Arc<dyn Settler>, hold: HoldCtx) -> Self {
        Self {
            settler,
            hold,
            head_sent: false,
            settled: false,
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

    /// Freezes the `Charge` and settles as `end` decides; returns the decision.
    pub(crate) fn settle(mut self, end: End) -> Decision {
        self.settle_once(end)
    }

    fn settle_once(&mut self, end: End) -> Decision {
        // Frozen before it is read, so a late `set` fails instead of going unbilled.
        self.hold.charge.close();
        let decision = decide(end, &self.hold.charge);
        if !self.settled {
            self.settled = true;
            self.settler.settle(&self.hold, decision);
        }
        decision
    }

    pub(crate) fn extend(&self) {
        self.settler.extend(&self.hold);
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        if !self.settled {
            let end = if self.head_sent {
                End::Early
            } else {
                End::BeforeHead
            };
            self.settle_once(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{AccountId, HoldId};

    fn charge() -> Charge {
        Charge::new(AccountId::new("a").unwrap(), HoldId::generate(), 20)
    }

    #[test]
    fn only_an_explicit_failure_refunds() {
        let fixed = charge();
        assert_eq!(decide(End::Success, &fixed), Decision::Commit(20));
        assert_eq!(decide(End::Early, &fixed), Decision::Commit(20));
        assert_eq!(decide(End::Failure, &fixed), Decision::Refund);
        assert_eq!(decide(End::BeforeHead, &fixed), Decision::Refund);

        let used = charge();
        used.add(7).unwrap();
        assert_eq!(decide(End::Early, &used), Decision::Commit(7));
        assert_eq!(decide(End::BeforeHead, &used), Decision::Commit(7));
        assert_eq!(decide(End::Failure, &used), Decision::Refund);
    }
}
