//! The settlement policy, written once: how a billed request ended, whether that is known at
//! the response head or only at the end of its body, and what it decides — commit (clamped
//! to the hold) or refund.
//!
//! The table of what each end settles is written once, in the [`classify`](crate::classify)
//! module docs; [`decide`] is that table.
//!
//! A handler that metered its work with `set`/`add` is taken at its word, failure or not:
//! otherwise a caller could read every item of a metered stream and then make it fail (a
//! malformed last message, an id that does not exist), or reset a client-streaming upload so
//! that the handler answers an error first, and get all of it refunded. A handler that wants
//! a failure to be free calls `charge.set(0)` before failing; a fixed-price call (no
//! `set`/`add`) that fails is refunded. Every commit is clamped to the hold: a hold is the
//! most a request may spend.
//!
//! These are pure functions over plain values; the guard, the body and the keeper apply
//! them.

use crate::charge::Closed;
use crate::classify::{Classified, Verdict};
use crate::ledger::SettleDecision;

/// How a billed request ended, as far as billing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The response (head, or trailers) said success.
    Success,
    /// The response head said failure: the caller got nothing but the error.
    Failure,
    /// The trailers said failure, after a body the caller read.
    FailureAfterBody,
    /// The inner service returned an error or panicked before the head: the server did
    /// not answer.
    Error,
    /// The head left without a failure, and the rest never said anything: the client reset
    /// the stream, dropped the body, the body failed, no status ever came, the reader
    /// stalled, or the stream ran past the hold lifetime cap.
    Early,
    /// No head left: the response future was dropped (the client went away while the
    /// handler ran), or the layer cut the handler at the hold lifetime cap.
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

/// The settle decision: only an explicit failure refunds; a client that stopped early pays
/// for what its `Charge` says so far. `charge` is the charge as it was closed, so what is
/// committed and what the headers say are one reading. A commit is clamped to the hold.
pub(crate) fn decide(end: End, charge: &Closed) -> SettleDecision {
    let commit = || SettleDecision::Commit(charge.to_commit().min(charge.reserved));
    match end {
        End::Success | End::Early => commit(),
        End::Error => SettleDecision::Refund,
        // Work the handler metered was done, even if no one reads the answer or the call
        // ends in an error status.
        End::Failure | End::FailureAfterBody | End::BeforeHead if charge.actual.is_some() => {
            commit()
        }
        End::Failure | End::FailureAfterBody | End::BeforeHead => SettleDecision::Refund,
    }
}

/// How far the handler's cost ran past its hold (it is charged at the hold), if it did.
pub(crate) fn overrun(charge: &Closed) -> Option<u64> {
    charge
        .actual
        .filter(|&actual| actual > charge.reserved)
        .map(|actual| actual - charge.reserved)
}

/// What a decision costs the caller.
pub(crate) fn cost_of(decision: SettleDecision) -> u64 {
    match decision {
        SettleDecision::Commit(actual) => actual,
        _ => 0,
    }
}

/// What the settle waits for when it cannot happen at the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Awaiting {
    /// The head said success; the handler's cost is known when the body ends.
    Cost,
    /// The verdict comes at the end of the body (trailers, a gRPC-Web trailer frame).
    Verdict,
}

/// Settle at the response head, or wait for the end of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtHead {
    Now(End),
    AtEnd(Awaiting),
}

/// Decides at the head: settle now, or when the body ends. `deferred`: the handler's cost
/// is known only at the end of the body; `body_ended`: the body is already over (hyper will
/// not poll it, so its end is now); `at_end` asks the classifier about an end without
/// trailers.
pub(crate) fn at_head(
    classified: Classified,
    deferred: bool,
    body_ended: bool,
    at_end: impl FnOnce() -> Verdict,
) -> AtHead {
    match classified {
        Classified::Ready(Verdict::Failure) => AtHead::Now(End::Failure),
        Classified::Ready(Verdict::Success) if !deferred || body_ended => AtHead::Now(End::Success),
        Classified::Ready(Verdict::Success) => AtHead::AtEnd(Awaiting::Cost),
        _ if body_ended => AtHead::Now(End::at_body_end(at_end())),
        _ => AtHead::AtEnd(Awaiting::Verdict),
    }
}

/// Decides at the end of the body: `verdict` asks the classifier (with the trailers).
pub(crate) fn at_body_end(awaiting: Awaiting, verdict: impl FnOnce() -> Verdict) -> End {
    match awaiting {
        Awaiting::Cost => End::Success,
        Awaiting::Verdict => End::at_body_end(verdict()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charge::Charge;
    use crate::ledger::{AccountId, HoldId};

    fn closed(added: Option<u64>) -> Closed {
        let charge = Charge::new(AccountId::new("a").unwrap(), HoldId::generate(), 20, None);
        if let Some(n) = added {
            charge.add(n).unwrap();
        }
        charge.close().unwrap()
    }

    const COMMIT: fn(u64) -> SettleDecision = SettleDecision::Commit;
    const REFUND: SettleDecision = SettleDecision::Refund;

    #[test]
    fn only_an_explicit_failure_refunds() {
        let fixed = closed(None);
        let used = closed(Some(7));
        let table = [
            (End::Success, fixed, COMMIT(20)),
            (End::Early, fixed, COMMIT(20)),
            (End::Failure, fixed, REFUND),
            (End::BeforeHead, fixed, REFUND),
            (End::Error, fixed, REFUND),
            (End::FailureAfterBody, fixed, REFUND),
            (End::Early, used, COMMIT(7)),
            (End::BeforeHead, used, COMMIT(7)),
            (End::Failure, used, COMMIT(7)),
            (End::FailureAfterBody, used, COMMIT(7)),
            (End::Error, used, REFUND),
            // A metered handler that wants its failure free says so.
            (End::FailureAfterBody, closed(Some(0)), COMMIT(0)),
        ];
        for (end, charge, want) in table {
            assert_eq!(decide(end, &charge), want, "{end:?} {charge:?}");
        }
    }

    #[test]
    fn every_commit_is_clamped_to_the_hold() {
        // A ledger-level figure past the hold (a charge refuses one, but a decision never
        // trusts that): clamped.
        let over = Closed {
            actual: Some(55),
            reserved: 20,
        };
        for end in [End::Success, End::Early, End::BeforeHead, End::Failure] {
            assert_eq!(decide(end, &over), COMMIT(20), "{end:?}");
        }
        assert_eq!(overrun(&over), Some(35));
        assert_eq!(overrun(&closed(Some(20))), None);
        assert_eq!(overrun(&closed(None)), None);
    }

    #[test]
    fn the_head_settles_now_or_waits_for_the_end() {
        use Classified::{AtEnd as Wait, Ready};
        let unknown = || Verdict::Unknown;
        let table = [
            // (classified, deferred, body ended) -> at head
            (
                Ready(Verdict::Success),
                false,
                false,
                AtHead::Now(End::Success),
            ),
            (
                Ready(Verdict::Success),
                true,
                false,
                AtHead::AtEnd(Awaiting::Cost),
            ),
            (
                Ready(Verdict::Success),
                true,
                true,
                AtHead::Now(End::Success),
            ),
            (
                Ready(Verdict::Failure),
                true,
                false,
                AtHead::Now(End::Failure),
            ),
            (
                Ready(Verdict::Unknown),
                false,
                false,
                AtHead::AtEnd(Awaiting::Verdict),
            ),
            (
                Ready(Verdict::Unknown),
                false,
                true,
                AtHead::Now(End::Early),
            ),
            (Wait, false, false, AtHead::AtEnd(Awaiting::Verdict)),
            (Wait, true, true, AtHead::Now(End::Early)),
        ];
        for (classified, deferred, ended, want) in table {
            assert_eq!(
                at_head(classified, deferred, ended, unknown),
                want,
                "{classified:?} deferred={deferred} ended={ended}"
            );
        }
        assert_eq!(
            at_head(Wait, false, true, || Verdict::Failure),
            AtHead::Now(End::FailureAfterBody)
        );
        assert_eq!(
            at_body_end(Awaiting::Cost, || Verdict::Failure),
            End::Success
        );
        assert_eq!(
            at_body_end(Awaiting::Verdict, || Verdict::Failure),
            End::FailureAfterBody
        );
    }
}
