//! The [`Charge`] handle: what a handler tells the layer about the actual cost.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::ledger::{
    AccountId, BoxLedgerFuture, Grow, GrowOutcome, HoldId, Ledger, LedgerError, MAX_AMOUNT,
};

/// The closed bit of [`Inner::state`]: set once, when the charge is settled.
const CLOSED: u64 = 1 << 63;
/// No actual cost set yet (the low bits of the state): the price (the hold) is charged.
const UNSET: u64 = CLOSED - 1;

/// The hold of the current request, put in the request extensions by the
/// [`CreditLayer`](crate::CreditLayer).
///
/// A handler reads the account and the hold, and sets or adds the **actual** cost when it is
/// lower than the price. Without a call to [`set`](Charge::set) or [`add`](Charge::add) the
/// request is charged its price. A hold is the most a request may spend, like a card
/// pre-authorisation: a `set` or `add` past it is refused with
/// [`ChargeError::HoldExceeded`] and records nothing, so work past the hold is never free
/// by accident. A handler stops when it sees that error; one that goes on anyway is stopped
/// by the layer: a streamed frame produced after a refused `add` is not delivered, and the
/// stream ends cleanly, saying why (see [`CreditLayer`](crate::CreditLayer)). Meter a
/// piece of work before you send it.
///
/// A stream that needs more than its first hold asks for more with [`grow`](Charge::grow)
/// (one ledger call, refused when the balance does not allow it), or lets the layer do it
/// with [`StreamLimit::Grow`](crate::StreamLimit::Grow).
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
    /// Credits held; raised by a [`Charge::grow`] the ledger granted, never lowered.
    reserved: AtomicU64,
    /// Credits held by the reserve, before any grow: what `available` was measured after.
    first_hold: u64,
    /// The ledger that holds the credits, for [`Charge::grow`]; `None` when nothing is held
    /// (served unbilled).
    ledger: Option<Arc<dyn GrowHold>>,
    /// One grow at a time: each names the hold's new total from the one before.
    growing: tokio::sync::Mutex<()>,
    /// The actual cost (or [`UNSET`]) and the [`CLOSED`] bit in one word, so closing and
    /// reading the cost are one atomic step: what the headers say and what is committed
    /// are the same number, and a write after the close fails.
    state: AtomicU64,
    deferred: AtomicBool,
    billed: bool,
    /// `set`/`add` calls refused because they went past the hold, since the last
    /// [`Charge::grow`] the handler made.
    refused: AtomicU64,
    /// The account's available balance right after the reserve, when known.
    available: Option<i64>,
}

/// What a [`Charge`] said when it was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed {
    /// The actual cost set, unclamped; `None`: the handler never set or added one.
    pub(crate) actual: Option<u64>,
    pub(crate) reserved: u64,
}

impl Closed {
    /// What to commit: the actual cost, else the price (the settle clamps to the hold).
    pub(crate) fn to_commit(self) -> u64 {
        self.actual.unwrap_or(self.reserved)
    }
}

/// The ledger's [`grow`](Ledger::grow), object-safe: what a [`Charge`] keeps to grow its
/// hold (one per layer, shared by every charge).
pub(crate) trait GrowHold: Send + Sync + 'static {
    fn grow(&self, grow: Grow) -> BoxLedgerFuture<GrowOutcome>;
}

impl<L: Ledger> GrowHold for L {
    fn grow(&self, grow: Grow) -> BoxLedgerFuture<GrowOutcome> {
        Box::pin(Ledger::grow(self, grow))
    }
}

/// Why [`Charge::grow`] did not raise the hold. The hold is as it was; the stream goes on
/// within it, or stops.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrowError {
    /// The charge was already settled: there is no hold left to grow.
    #[error("the charge was already settled")]
    AlreadySettled,
    /// The account cannot afford the raise: nothing changed.
    #[error("the account cannot afford {requested} more credits ({available} available)")]
    Insufficient {
        /// The raise asked for (for a partial grow, the least of it).
        requested: u64,
        /// The account's available balance.
        available: i64,
        /// The account's overdraft allowance.
        credit_limit: u64,
    },
    /// The ledger no longer has the hold open (it expired, or the layer settled it).
    #[error("the hold is no longer open in the ledger")]
    NotOpen,
    /// The request is served unbilled ([`OutagePolicy::FailOpen`](crate::OutagePolicy)):
    /// nothing is held, so nothing grows; the work stays bounded by the price.
    #[error("the request is served unbilled; its hold cannot grow")]
    Unbilled,
    /// The ledger failed (unreachable, timed out, or refused the call). A timed-out grow
    /// may still have raised the hold in the ledger: the extra is released at the settle.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Why a [`Charge`] could not be changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChargeError {
    /// The charge was already settled: the response head left without
    /// [`defer`](Charge::defer), or the deferred body ended.
    #[error("the charge was already settled; call `Charge::defer` before the response head to change it later")]
    AlreadySettled,
    /// The cost would go past the hold, the most this request may spend: nothing was
    /// recorded. Stop the work (a stream ends; the layer says why to the caller).
    #[error("a cost of {requested} credits would exceed the {reserved} held for this request")]
    HoldExceeded {
        /// Credits held.
        reserved: u64,
        /// The cost the `set` or `add` asked for.
        requested: u64,
    },
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Charge")
            .field("account", &self.inner.account)
            .field("hold_id", &self.inner.hold_id)
            .field("reserved", &self.reserved())
            .field("actual", &self.actual())
            .field("deferred", &self.is_deferred())
            .field("billed", &self.is_billed())
            .finish()
    }
}

impl Charge {
    /// A billed charge whose hold cannot grow (tests); `available`: the account's balance
    /// right after the reserve.
    #[cfg(test)]
    pub(crate) fn new(
        account: AccountId,
        hold_id: HoldId,
        reserved: u64,
        available: Option<i64>,
    ) -> Self {
        Self::with_billing(account, hold_id, reserved, true, available, None)
    }

    /// A billed charge whose hold [`grow`](Self::grow)s in `ledger`.
    pub(crate) fn held_in(
        ledger: Arc<dyn GrowHold>,
        account: AccountId,
        hold_id: HoldId,
        reserved: u64,
        available: i64,
    ) -> Self {
        Self::with_billing(
            account,
            hold_id,
            reserved,
            true,
            Some(available),
            Some(ledger),
        )
    }

    /// The charge of a request served unbilled because the ledger was down
    /// ([`OutagePolicy::FailOpen`](crate::OutagePolicy::FailOpen)): nothing is held, and what
    /// the handler sets is not committed anywhere.
    pub(crate) fn unbilled(account: AccountId, price: u64) -> Self {
        Self::with_billing(account, HoldId::generate(), price, false, None, None)
    }

    fn with_billing(
        account: AccountId,
        hold_id: HoldId,
        reserved: u64,
        billed: bool,
        available: Option<i64>,
        ledger: Option<Arc<dyn GrowHold>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                account,
                hold_id,
                reserved: AtomicU64::new(reserved),
                first_hold: reserved,
                ledger,
                growing: tokio::sync::Mutex::new(()),
                state: AtomicU64::new(UNSET),
                deferred: AtomicBool::new(false),
                billed,
                refused: AtomicU64::new(0),
                available,
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

    /// Credits held for this request: the most it can cost. On a route with a minimum
    /// price ([`Pricing::min_price`](crate::pricing::Pricing::min_price)) the hold may be
    /// less than the price (a caller's `credits-max-cost`, or what its balance affords):
    /// **bound the work by it** (an AI handler cuts `max_tokens` to it), since a cost
    /// above the hold is refused ([`ChargeError::HoldExceeded`]).
    /// It grows when [`grow`](Self::grow) (or the layer's
    /// [`StreamLimit::Grow`](crate::StreamLimit::Grow)) raised the hold.
    pub fn reserved(&self) -> u64 {
        self.inner.reserved.load(Ordering::Acquire)
    }

    /// Credits of the hold not yet metered: how much more work this request may do.
    pub fn remaining_hold(&self) -> u64 {
        let reserved = self.reserved();
        reserved - self.actual().unwrap_or(0).min(reserved)
    }

    /// Asks the ledger to raise the hold by `credits`, all or nothing, when the account's
    /// balance allows it: one ledger call. Returns the hold's new total
    /// ([`reserved`](Self::reserved)). A stream that would go past its hold calls it before
    /// metering more, and stops when it is refused.
    ///
    /// ```
    /// use tower_credits::{Charge, ChargeError};
    ///
    /// async fn meter(charge: &Charge, cost: u64) -> bool {
    ///     match charge.add(cost) {
    ///         Ok(_) => true,
    ///         Err(ChargeError::HoldExceeded { .. }) => {
    ///             // Ask for room for this piece and the next few, then try once more.
    ///             charge.grow(cost.max(20)).await.is_ok() && charge.add(cost).is_ok()
    ///         }
    ///         Err(_) => false,
    ///     }
    /// }
    /// ```
    ///
    /// Grows run one at a time per charge. A grow that fails leaves the hold as it was.
    ///
    /// A refused `add` or `set` before a successful grow no longer counts against the
    /// stream: the handler recovered, and the layer does not end it for that refusal.
    pub async fn grow(&self, credits: u64) -> Result<u64, GrowError> {
        let total = self.raise(credits, false).await?;
        self.inner.refused.store(0, Ordering::Release);
        Ok(total)
    }

    /// Raises the hold by `credits`, or (`partial`) by as much as the account affords, at
    /// least 1. Returns the new total.
    pub(crate) async fn raise(&self, credits: u64, partial: bool) -> Result<u64, GrowError> {
        let _one_at_a_time = self.inner.growing.lock().await;
        if self.is_closed() {
            return Err(GrowError::AlreadySettled);
        }
        let Some(ledger) = &self.inner.ledger else {
            return Err(GrowError::Unbilled);
        };
        let current = self.reserved();
        if credits == 0 {
            return Ok(current);
        }
        let to = current
            .checked_add(credits)
            .filter(|&to| to <= MAX_AMOUNT)
            .ok_or(LedgerError::AmountOutOfRange {
                amount: current.saturating_add(credits),
                max: MAX_AMOUNT,
            })?;
        let mut grow = Grow::to(&self.inner.account, &self.inner.hold_id, to);
        if partial {
            grow = grow.at_least(current + 1);
        }
        match ledger.grow(grow).await? {
            GrowOutcome::Grown(grown) => {
                // Raised only once the ledger holds it: a `set` or `add` within the new
                // total is then covered.
                let now = self
                    .inner
                    .reserved
                    .fetch_max(grown.amount, Ordering::AcqRel);
                Ok(now.max(grown.amount))
            }
            GrowOutcome::Insufficient(refusal) => Err(GrowError::Insufficient {
                requested: refusal.required,
                available: refusal.available,
                credit_limit: refusal.credit_limit,
            }),
            _ => Err(GrowError::NotOpen),
        }
    }

    /// The account's balance once this request is settled at `cost`, as the layer will
    /// report it in `credits-remaining`: for a handler that writes the same figures in its
    /// own final chunk (an OpenAI-style usage chunk, say). `None` when the request is not
    /// billed.
    pub fn remaining_after(&self, cost: u64) -> Option<i64> {
        let cost = cost.min(self.reserved());
        self.inner
            .available
            .map(|available| available + self.first_hold() as i64 - cost as i64)
    }

    /// Credits the reserve held, before any grow: the balance it reported was measured
    /// after holding this much.
    pub(crate) fn first_hold(&self) -> u64 {
        self.inner.first_hold
    }

    /// How many `set`/`add` calls were refused for going past the hold (since the
    /// handler's last successful [`grow`](Self::grow)): the layer ends a stream whose
    /// handler goes on after one.
    pub(crate) fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Acquire)
    }

    /// The actual cost set so far, if any.
    pub fn actual(&self) -> Option<u64> {
        match self.inner.state.load(Ordering::Acquire) & !CLOSED {
            UNSET => None,
            n => Some(n),
        }
    }

    /// What will be committed if the request succeeds now: the actual cost, clamped to the
    /// hold, or the hold when none was set.
    pub fn cost(&self) -> u64 {
        let reserved = self.reserved();
        self.actual().map_or(reserved, |a| a.min(reserved))
    }

    /// Sets the actual cost; refused past the hold ([`ChargeError::HoldExceeded`]).
    pub fn set(&self, credits: u64) -> Result<(), ChargeError> {
        self.update(|_| credits).map(drop)
    }

    /// Adds to the actual cost (starting from 0 if none was set); returns the new total.
    /// Refused past the hold ([`ChargeError::HoldExceeded`]): nothing is recorded.
    pub fn add(&self, credits: u64) -> Result<u64, ChargeError> {
        self.update(|current| current.unwrap_or(0).saturating_add(credits))
    }

    /// Replaces the actual cost unless the charge is closed, in one atomic step.
    fn update(&self, next: impl Fn(Option<u64>) -> u64) -> Result<u64, ChargeError> {
        let mut seen = self.inner.state.load(Ordering::Acquire);
        loop {
            if seen & CLOSED != 0 {
                return Err(ChargeError::AlreadySettled);
            }
            let current = (seen != UNSET).then_some(seen);
            let value = next(current).min(UNSET - 1);
            let reserved = self.reserved();
            if value > reserved {
                self.inner.refused.fetch_add(1, Ordering::AcqRel);
                return Err(ChargeError::HoldExceeded {
                    reserved,
                    requested: value,
                });
            }
            match self.inner.state.compare_exchange_weak(
                seen,
                value,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(value),
                Err(now) => seen = now,
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

    /// Whether the charge was closed (settled).
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Closes the charge and reads it, in one atomic step: later `set`/`add` fail. Only the
    /// first call gets the figures; a later one gets `None` (the charge was settled).
    pub(crate) fn close(&self) -> Option<Closed> {
        let before = self.inner.state.fetch_or(CLOSED, Ordering::AcqRel);
        (before & CLOSED == 0).then(|| Closed {
            actual: (before != UNSET).then_some(before),
            reserved: self.reserved(),
        })
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
        Charge::new(
            AccountId::new("a").unwrap(),
            HoldId::new("h").unwrap(),
            50,
            Some(100),
        )
    }

    #[test]
    fn cost_defaults_to_the_hold() {
        let c = charge();
        assert_eq!((c.cost(), c.remaining_hold()), (50, 50));
        c.set(12).unwrap();
        assert_eq!((c.cost(), c.remaining_hold()), (12, 38));
        assert_eq!(c.remaining_after(12), Some(138));
    }

    /// Adversarial twin: a handler that meters past its hold is refused, records nothing,
    /// and the refusal is counted for the layer to end the stream.
    #[test]
    fn nothing_past_the_hold_is_recorded() {
        let c = charge();
        assert_eq!(
            c.set(80),
            Err(ChargeError::HoldExceeded {
                reserved: 50,
                requested: 80
            })
        );
        assert_eq!((c.actual(), c.refused()), (None, 1));
        assert_eq!(c.add(50).unwrap(), 50);
        assert_eq!(c.remaining_hold(), 0);
        assert_eq!(
            c.add(1),
            Err(ChargeError::HoldExceeded {
                reserved: 50,
                requested: 51
            })
        );
        assert_eq!((c.actual(), c.cost(), c.refused()), (Some(50), 50, 2));
        assert_eq!(
            c.add(u64::MAX).unwrap_err(),
            ChargeError::HoldExceeded {
                reserved: 50,
                requested: UNSET - 1
            }
        );
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

    #[test]
    fn close_reads_once_and_a_later_write_fails() {
        let c = charge();
        c.set(5).unwrap();
        let closed = c.close().expect("the first close reads the charge");
        assert_eq!((closed.actual, closed.to_commit()), (Some(5), 5));
        assert_eq!(c.set(6), Err(ChargeError::AlreadySettled));
        assert_eq!(c.close(), None, "a second close must not settle again");
        assert_eq!(c.actual(), Some(5));

        let untouched = charge();
        let closed = untouched.close().unwrap();
        assert_eq!((closed.actual, closed.to_commit()), (None, 50));
    }

    /// Writers race the close: every write that returned `Ok` is in what the close read,
    /// and none that failed is, whatever the interleaving.
    #[test]
    fn every_acknowledged_write_is_in_the_closed_figure() {
        for _ in 0..200 {
            let c = Charge::new(
                AccountId::new("a").unwrap(),
                HoldId::generate(),
                1 << 40,
                None,
            );
            let writers: Vec<_> = (0..4)
                .map(|_| {
                    let c = c.clone();
                    std::thread::spawn(move || {
                        let mut acknowledged = 0;
                        while c.add(1).is_ok() {
                            acknowledged += 1;
                        }
                        acknowledged
                    })
                })
                .collect();
            std::thread::yield_now();
            let closed = c.close().expect("closed once");
            let acknowledged: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
            assert_eq!(closed.actual.unwrap_or(0), acknowledged);
        }
    }
}
