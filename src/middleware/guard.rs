//! The drop guard: one open hold of one request, settled exactly once — explicitly when
//! the response says how, or when dropped (client gone, future dropped, panic unwinding).

use std::fmt;
use std::sync::Arc;

use super::settle::Settler;
use crate::charge::Charge;

/// What to do with a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Commit(u64),
    Refund,
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
    pub(crate) grpc: bool,
}

impl HoldCtx {
    /// `Credits-Remaining` after settling for `cost`.
    pub(crate) fn remaining(&self, cost: u64) -> i64 {
        self.available + self.charge.reserved() as i64 - cost as i64
    }
}

/// Settles a hold exactly once: explicitly, or when dropped (client gone, future dropped,
/// panic unwinding). Dropped before the response head, it refunds; dropped while a body
/// streams, a response known to have succeeded (a deferred HTTP charge) commits what the
/// `Charge` says so far, and anything else — a failed response, a gRPC stream whose status
/// never came — is refunded.
pub(crate) struct HoldGuard {
    settler: Arc<dyn Settler>,
    hold: Option<HoldCtx>,
    /// Set once the response head has left with a success: what a drop then commits.
    commit_on_drop: bool,
}

impl fmt::Debug for HoldGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HoldGuard")
            .field("hold", &self.hold)
            .finish()
    }
}

impl HoldGuard {
    pub(crate) fn new(settler: Arc<dyn Settler>, hold: HoldCtx) -> Self {
        Self {
            settler,
            hold: Some(hold),
            commit_on_drop: false,
        }
    }

    /// The response head left and the request succeeded; its body now streams.
    pub(crate) fn head_succeeded(&mut self) {
        self.commit_on_drop = true;
    }

    pub(crate) fn hold(&self) -> &HoldCtx {
        self.hold.as_ref().expect("guard used after settling")
    }

    pub(crate) fn hold_mut(&mut self) -> &mut HoldCtx {
        self.hold.as_mut().expect("guard used after settling")
    }

    pub(crate) fn settler(&self) -> &Arc<dyn Settler> {
        &self.settler
    }

    pub(crate) fn settle(&mut self, decision: Decision) {
        if let Some(hold) = self.hold.take() {
            hold.charge.close();
            self.settler.settle(&hold, decision);
        }
    }

    pub(crate) fn extend(&self) {
        if let Some(hold) = &self.hold {
            self.settler.extend(hold);
        }
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        if let Some(hold) = &self.hold {
            let decision = if self.commit_on_drop {
                Decision::Commit(hold.charge.cost())
            } else {
                Decision::Refund
            };
            self.settle(decision);
        }
    }
}
