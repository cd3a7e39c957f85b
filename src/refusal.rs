//! Why the layer answered instead of the service: [`Refusal`], with its figures, so an API
//! can answer refusals in its own error shape (see [`CreditLayer::refusal_response`]).
//!
//! [`CreditLayer::refusal_response`]: crate::CreditLayer::refusal_response

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderName, Response, StatusCode};

use crate::account::Unauthorized;
use crate::ledger::{AccountId, Insufficient};
use crate::wire::problem::{self, ProblemCtx, WireResponse};

/// A request the layer refused before the service ran, with the figures the caller needs.
///
/// The default answer is RFC 9457 problem JSON (gRPC: a trailers-only status), described
/// in the crate docs; [`CreditLayer::refusal_response`](crate::CreditLayer::refusal_response)
/// renders HTTP refusals in an API's own shape instead.
///
/// ```
/// use tower_credits::Refusal;
///
/// fn openai_code(refusal: &Refusal) -> &'static str {
///     match refusal {
///         Refusal::InsufficientCredits { .. } => "insufficient_quota",
///         Refusal::Unauthorized(_) => "invalid_api_key",
///         _ => "billing_unavailable",
///     }
/// }
/// # let _ = openai_code;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No account could be resolved: `401` (gRPC `UNAUTHENTICATED`).
    Unauthorized(Unauthorized),
    /// Not enough credits for even the least the call runs with: `402` (gRPC
    /// `FAILED_PRECONDITION`).
    InsufficientCredits {
        /// The account refused.
        account: AccountId,
        /// The least the call runs with.
        required: u64,
        /// What the account had available.
        available: i64,
        /// The overdraft the account may use.
        credit_limit: u64,
        /// The call's full price (its hold when affordable).
        price: u64,
    },
    /// The account has the most requests in flight it may have: `429`.
    TooManyHolds {
        /// Holds an account may have open at once.
        limit: u64,
    },
    /// The ledger is down or too slow, and the outage policy refuses: `503` with
    /// `Retry-After`.
    Unavailable,
    /// Too many unknown API keys are being looked up at once: `503` with `Retry-After: 1`.
    LedgerBusy,
    /// Billing failed on the server's side (not an outage, not the caller's fault): `500`.
    BillingError,
    /// The handler ran past the hold lifetime cap and was cancelled: `504`.
    LifetimeExceeded {
        /// The layer's cap.
        lifetime: Duration,
    },
    /// A billing request header holds something the layer cannot accept: `400`.
    InvalidHeader {
        /// The header.
        name: HeaderName,
        /// What it must hold.
        expected: &'static str,
    },
    /// The caller's `credits-max-cost` is below the least the route runs with: `412`.
    MaxCostExceeded {
        /// The route's price.
        price: u64,
        /// The least the route runs with, for a ranged price.
        min_price: Option<u64>,
        /// The caller's cap.
        max_cost: u64,
    },
    /// The caller asked for a quote, and the ledger cannot report balances: `501`.
    QuotesUnsupported,
    /// The request's `Idempotency-Key` belongs to a request still running (or whose
    /// response is still being stored): `409` with `Retry-After`.
    RequestInProgress,
    /// The request's `Idempotency-Key` was used for another request (another method,
    /// path, query or body): `422`.
    IdempotencyKeyReused,
    /// The request's `Idempotency-Key` belongs to a request that was committed but whose
    /// response cannot be replayed (too large to store, or lost in a crash): `409`. It is
    /// never run again: that would charge twice.
    ReplayUnavailable,
    /// A keyed request's body is larger than the layer buffers to fingerprint it: `413`.
    PayloadTooLarge {
        /// The most the layer buffers, in bytes.
        limit: usize,
    },
}

impl Refusal {
    /// The HTTP status of the default answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refusal::InsufficientCredits { .. } => StatusCode::PAYMENT_REQUIRED,
            Refusal::TooManyHolds { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Unavailable | Refusal::LedgerBusy => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::BillingError => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::LifetimeExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
            Refusal::InvalidHeader { .. } => StatusCode::BAD_REQUEST,
            Refusal::MaxCostExceeded { .. } => StatusCode::PRECONDITION_FAILED,
            Refusal::QuotesUnsupported => StatusCode::NOT_IMPLEMENTED,
            Refusal::RequestInProgress | Refusal::ReplayUnavailable => StatusCode::CONFLICT,
            Refusal::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// The stable code of the refusal: the last part of the default problem `type`
    /// (`insufficient-balance`, `unauthorized`, …).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::InsufficientCredits { .. } => "insufficient-balance",
            Refusal::TooManyHolds { .. } => "too-many-holds",
            Refusal::Unavailable => "ledger-unavailable",
            Refusal::LedgerBusy => "ledger-busy",
            Refusal::BillingError => "billing-error",
            Refusal::LifetimeExceeded { .. } => "hold-lifetime-exceeded",
            Refusal::InvalidHeader { .. } => "invalid-header",
            Refusal::MaxCostExceeded { .. } => "max-cost-exceeded",
            Refusal::QuotesUnsupported => "quotes-unsupported",
            Refusal::RequestInProgress => "request-in-progress",
            Refusal::IdempotencyKeyReused => "idempotency-key-reused",
            Refusal::ReplayUnavailable => "replay-unavailable",
            Refusal::PayloadTooLarge { .. } => "payload-too-large",
        }
    }

    /// Credits missing for the call to run, for [`InsufficientCredits`](Self::InsufficientCredits).
    pub fn shortfall(&self) -> Option<u64> {
        match self {
            Refusal::InsufficientCredits {
                required,
                available,
                credit_limit,
                ..
            } => Some(Insufficient::new(*required, *available, *credit_limit).shortfall()),
            _ => None,
        }
    }

    /// The default answer: problem JSON, or a gRPC trailers-only status.
    pub(crate) fn to_wire(&self, ctx: &ProblemCtx<'_>) -> WireResponse {
        match self {
            Refusal::Unauthorized(why) => problem::unauthorized(ctx, why),
            Refusal::InsufficientCredits {
                account,
                required,
                available,
                credit_limit,
                price,
            } => {
                let figures = Insufficient::new(*required, *available, *credit_limit);
                problem::insufficient(ctx, account, &figures, *price)
            }
            Refusal::TooManyHolds { limit } => problem::too_many_holds(ctx, *limit),
            Refusal::Unavailable => problem::unavailable(ctx),
            Refusal::LedgerBusy => problem::ledger_busy(ctx),
            Refusal::BillingError => problem::billing_error(ctx),
            Refusal::LifetimeExceeded { lifetime } => problem::lifetime_exceeded(ctx, *lifetime),
            Refusal::InvalidHeader { name, expected } => {
                problem::invalid_header(ctx, name.as_str(), expected)
            }
            Refusal::MaxCostExceeded {
                price,
                min_price,
                max_cost,
            } => problem::max_cost_exceeded(ctx, *price, *min_price, *max_cost),
            Refusal::QuotesUnsupported => problem::quotes_unsupported(ctx),
            Refusal::RequestInProgress
            | Refusal::IdempotencyKeyReused
            | Refusal::ReplayUnavailable
            | Refusal::PayloadTooLarge { .. } => problem::idempotency(ctx, self),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unauthorized(why) => f.write_str(&why.detail()),
            Refusal::InsufficientCredits {
                required,
                available,
                ..
            } => write!(
                f,
                "Insufficient account balance: this request needs {required} credits, {available} are available, {} short",
                self.shortfall().unwrap_or(0)
            ),
            Refusal::TooManyHolds { limit } => {
                write!(f, "{limit} requests of this account are in flight, the most allowed")
            }
            Refusal::Unavailable => f.write_str("Billing is unavailable; retry shortly"),
            Refusal::LedgerBusy => f.write_str("Too many API keys are being checked; retry shortly"),
            Refusal::BillingError => f.write_str("Billing failed on the server's side"),
            Refusal::LifetimeExceeded { lifetime } => {
                write!(f, "The request ran past the {lifetime:?} it may hold credits")
            }
            Refusal::InvalidHeader { name, expected } => {
                write!(f, "The `{name}` header must be {expected}")
            }
            Refusal::MaxCostExceeded { price, max_cost, .. } => write!(
                f,
                "This request costs {price} credits, above the {max_cost} allowed by the request"
            ),
            Refusal::QuotesUnsupported => f.write_str("This server cannot quote prices"),
            Refusal::RequestInProgress => f.write_str(
                "A request with this Idempotency-Key is still in progress; retry shortly",
            ),
            Refusal::IdempotencyKeyReused => f.write_str(
                "This Idempotency-Key was used for another request; use a new key for a new request",
            ),
            Refusal::ReplayUnavailable => f.write_str(
                "The request with this Idempotency-Key was completed and charged, but its response cannot be replayed; it will not run again",
            ),
            Refusal::PayloadTooLarge { limit } => write!(
                f,
                "A request with an Idempotency-Key may carry at most {limit} bytes of body"
            ),
        }
    }
}

/// Renders HTTP refusals in an API's own error shape; `None` keeps the default.
pub(crate) type RenderRefusal =
    std::sync::Arc<dyn Fn(&Refusal) -> Option<Response<Bytes>> + Send + Sync>;

/// The headers a refusal keeps whatever its body: they tell clients how to retry or
/// authenticate, and that a balance must not be cached.
const KEPT_HEADERS: [HeaderName; 3] = [
    header::RETRY_AFTER,
    header::WWW_AUTHENTICATE,
    header::CACHE_CONTROL,
];

/// A refusal in the user's shape, keeping the default's retry, auth and cache headers where
/// the user's answer has none.
pub(crate) fn rendered(default: WireResponse, mut custom: Response<Bytes>) -> WireResponse {
    for name in KEPT_HEADERS {
        if let Some(value) = default.headers().get(&name) {
            if !custom.headers().contains_key(&name) {
                custom.headers_mut().insert(name, value.clone());
            }
        }
    }
    custom.map(Some)
}
