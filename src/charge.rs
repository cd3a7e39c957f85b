//! The [`Charge`] handle: what a handler tells the layer about the actual cost.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::ledger::{AccountId, HoldId};

/// No actual cost set yet: the price (the hold) is charged.
const UNSET: u64 = u64::MAX;

/// The hold of the current request, put in the request extensions by the
/// [`CreditLayer`](crate::CreditLayer).
///
/// A handler reads the account and the hold, and sets or adds the **actual** cost when it is
/// lower (or higher) than the price. Without a call to [`set`](Charge::set) or
/// [`add`](Charge::add) the request is charged its price. The actual cost is clamped to the
/// hold: a hold is the most a request may spend, like a card pre-authorisation, so an
/// overrun is logged (a `tracing` warning) and charged at the hold.
///
/// The charge is settled when the response head leaves the service, so a caller's next
/// request sees it. A handler that only knows the cost at the end of a streamed body calls
/// [`defer`](Charge::defer): the charge then settles when the body ends, and the final
/// figures go in trailers.
///
/// # As an axum extractor
///
/// With the `axum` feature, `Charge` is an extractor. It is only there for routes the layer
/// billed: extracting it on a free route, or without the layer, is rejected with
/// `500 Internal Server Error` (a wiring mistake, not the caller's fault). Use
/// `Option<Charge>` on handlers that also serve free routes.
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use axum::{routing::post, Json, Router};
/// use tower_credits::Charge;
///
/// #[derive(serde::Deserialize)]
/// struct Generate { tokens: u64 }
///
/// async fn generate(charge: Charge, Json(body): Json<Generate>) -> String {
///     // The route holds 50; charge what was really used.
///     charge.set(body.tokens).expect("not settled yet");
///     format!("generated {} tokens for {}", body.tokens, charge.account())
/// }
///
/// let app = Router::new().route("/v1/generate", post(generate));
/// # let _: Router = app;
/// # }
/// ```
///
/// # Streaming
///
/// ```
/// use tower_credits::Charge;
///
/// fn on_stream_start(charge: &Charge) {
///     charge.defer(); // the cost grows with the stream
/// }
/// fn on_chunk(charge: &Charge, tokens: u64) {
///     let _ = charge.add(tokens); // ok until the body ends
/// }
/// ```
#[derive(Clone)]
pub struct Charge {
    inner: Arc<Inner>,
}

struct Inner {
    account: AccountId,
    hold_id: HoldId,
    reserved: u64,
    actual: AtomicU64,
    deferred: AtomicBool,
    closed: AtomicBool,
    billed: bool,
}

/// Why a [`Charge`] could not be changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChargeError {
    /// The charge was already settled: the response head left without
    /// [`defer`](Charge::defer), or the deferred body ended.
    #[error("the charge was already settled; call `Charge::defer` before the response head to change it later")]
    AlreadySettled,
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Charge")
            .field("account", &self.inner.account)
            .field("hold_id", &self.inner.hold_id)
            .field("reserved", &self.inner.reserved)
            .field("actual", &self.actual())
            .field("deferred", &self.is_deferred())
            .field("billed", &self.is_billed())
            .finish()
    }
}

impl Charge {
    pub(crate) fn new(account: AccountId, hold_id: HoldId, reserved: u64) -> Self {
        Self::with_billing(account, hold_id, reserved, true)
    }

    /// The charge of a request served unbilled because the ledger was down
    /// ([`OutagePolicy::FailOpen`](crate::OutagePolicy::FailOpen)): nothing is held, and what
    /// the handler sets is not committed anywhere.
    pub(crate) fn unbilled(account: AccountId, price: u64) -> Self {
        Self::with_billing(account, HoldId::generate(), price, false)
    }

    fn with_billing(account: AccountId, hold_id: HoldId, reserved: u64, billed: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                account,
                hold_id,
                reserved,
                actual: AtomicU64::new(UNSET),
                deferred: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                billed,
            }),
        }
    }

    /// `false` when the ledger was unreachable and the layer serves the request unbilled
    /// under [`OutagePolicy::FailOpen`](crate::OutagePolicy::FailOpen): the handler can still
    /// read the account and set a cost, but nothing is held or committed. (When even the
    /// account could not be resolved, there is no `Charge` at all: extract `Option<Charge>`
    /// on fail-open services.)
    pub fn is_billed(&self) -> bool {
        self.inner.billed
    }

    /// The account paying for this request.
    pub fn account(&self) -> &AccountId {
        &self.inner.account
    }

    /// The hold's id.
    pub fn hold_id(&self) -> &HoldId {
        &self.inner.hold_id
    }

    /// Credits held for this request: the most it can cost.
    pub fn reserved(&self) -> u64 {
        self.inner.reserved
    }

    /// The actual cost set so far, if any (unclamped).
    pub fn actual(&self) -> Option<u64> {
        match self.inner.actual.load(Ordering::Acquire) {
            UNSET => None,
            n => Some(n),
        }
    }

    /// What will be committed if the request succeeds now: the actual cost, clamped to the
    /// hold, or the hold when none was set.
    pub fn cost(&self) -> u64 {
        self.actual()
            .map_or(self.inner.reserved, |a| a.min(self.inner.reserved))
    }

    /// Sets the actual cost.
    pub fn set(&self, credits: u64) -> Result<(), ChargeError> {
        self.check_open()?;
        self.inner
            .actual
            .store(credits.min(UNSET - 1), Ordering::Release);
        Ok(())
    }

    /// Adds to the actual cost (starting from 0 if none was set); returns the new total.
    pub fn add(&self, credits: u64) -> Result<u64, ChargeError> {
        self.check_open()?;
        let mut current = self.inner.actual.load(Ordering::Acquire);
        loop {
            let base = if current == UNSET { 0 } else { current };
            let next = base.saturating_add(credits).min(UNSET - 1);
            match self.inner.actual.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(next),
                Err(seen) => current = seen,
            }
        }
    }

    /// Settles at the end of the response body instead of at the response head, for costs
    /// known only when a stream ends. Call it before the handler returns.
    pub fn defer(&self) {
        self.inner.deferred.store(true, Ordering::Release);
    }

    /// Whether [`defer`](Self::defer) was called.
    pub fn is_deferred(&self) -> bool {
        self.inner.deferred.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<(), ChargeError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(ChargeError::AlreadySettled)
        } else {
            Ok(())
        }
    }

    /// Freezes the charge: later `set`/`add` fail.
    pub(crate) fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
    }
}

#[cfg(feature = "axum")]
mod extract {
    use axum::extract::{FromRequestParts, OptionalFromRequestParts};
    use axum::response::{IntoResponse, Response};
    use http::request::Parts;
    use http::StatusCode;

    use super::Charge;

    /// Rejection of the [`Charge`] extractor: the request was not billed by a
    /// [`CreditLayer`](crate::CreditLayer) (a free route, or the layer is missing).
    ///
    /// Answers `500 Internal Server Error` with a plain-text body.
    #[derive(Debug, Clone, Copy, Default)]
    #[non_exhaustive]
    pub struct MissingCharge;

    impl IntoResponse for MissingCharge {
        fn into_response(self) -> Response {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "No `Charge` in the request: is this route billed by a CreditLayer?",
            )
                .into_response()
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for Charge {
        type Rejection = MissingCharge;

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<Charge>()
                .cloned()
                .ok_or(MissingCharge)
        }
    }

    impl<S: Send + Sync> OptionalFromRequestParts<S> for Charge {
        type Rejection = std::convert::Infallible;

        async fn from_request_parts(
            parts: &mut Parts,
            _: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            Ok(parts.extensions.get::<Charge>().cloned())
        }
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use extract::MissingCharge;

#[cfg(test)]
mod tests {
    use super::*;

    fn charge() -> Charge {
        Charge::new(AccountId::new("a").unwrap(), HoldId::new("h").unwrap(), 50)
    }

    #[test]
    fn cost_defaults_to_the_hold_and_clamps() {
        let c = charge();
        assert_eq!(c.cost(), 50);
        c.set(12).unwrap();
        assert_eq!(c.cost(), 12);
        c.set(80).unwrap();
        assert_eq!((c.actual(), c.cost()), (Some(80), 50));
    }

    #[test]
    fn add_accumulates_and_close_freezes() {
        let c = charge();
        assert_eq!(c.add(3).unwrap(), 3);
        assert_eq!(c.add(4).unwrap(), 7);
        c.close();
        assert_eq!(c.set(1), Err(ChargeError::AlreadySettled));
        assert_eq!(c.add(1), Err(ChargeError::AlreadySettled));
        assert_eq!(c.cost(), 7);
    }
}
