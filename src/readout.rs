//! The caller's own readout: balance, spend by route and runway, for the calling key,
//! without calling a paid route.
//!
//! [`CreditsReadout`] is a tower service you mount where callers can reach it, behind the
//! [`CreditLayer`](crate::CreditLayer) with the route priced
//! [`Price::Authenticated`](crate::pricing::Price::Authenticated): the layer resolves the
//! caller's account (refusing unknown keys as usual) and holds nothing; the readout answers
//! `200 application/json`:
//!
//! ```json
//! {
//!   "account": "acct_42",
//!   "available": 958,
//!   "held": 0,
//!   "committed": 42,
//!   "credit_limit": 0,
//!   "thresholds": [100],
//!   "runway_secs": 86400,
//!   "routes": [
//!     { "route": "/v1/echo", "calls": 30, "credits": 30, "average_cost": 1.0 },
//!     { "route": "/v1/generate", "calls": 1, "credits": 12, "average_cost": 12.0 }
//!   ]
//! }
//! ```
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_credits::pricing::Pricing;
//! use tower_credits::readout::CreditsReadout;
//! use tower_credits::{CreditLayer, MemoryLedger};
//!
//! let ledger = MemoryLedger::new();
//! let layer = CreditLayer::new(ledger.clone())
//!     .pricing(Pricing::new().route("GET /v1/echo", 1).authenticated("GET /v1/credits"));
//! let app = Router::new()
//!     .route("/v1/echo", get(|| async { "echo" }))
//!     .route_service("/v1/credits", CreditsReadout::new(ledger))
//!     .layer(layer);
//! # let _: Router = app;
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use tower_service::Service;

use crate::ledger::audit::PageQuery;
use crate::ledger::{AccountId, LedgerError, LedgerReports, RouteUsage};

/// Answers the calling account's balance and spend by route; see the [module docs](self).
#[derive(Clone)]
pub struct CreditsReadout<L> {
    ledger: L,
}

impl<L> fmt::Debug for CreditsReadout<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditsReadout").finish_non_exhaustive()
    }
}

impl<L: LedgerReports> CreditsReadout<L> {
    /// A readout of `ledger`.
    pub fn new(ledger: L) -> Self {
        Self { ledger }
    }
}

impl<L: LedgerReports, B> Service<Request<B>> for CreditsReadout<L> {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let account = match caller(&req) {
            Ok(account) => account,
            Err(answer) => return Box::pin(async { Ok(answer) }),
        };
        let balance = self.ledger.balance(&account);
        let usage = self.ledger.usage(&account);
        Box::pin(async move {
            let (balance, usage) = match (balance.await, usage.await) {
                (Ok(b), Ok(u)) => (b, u),
                (Err(LedgerError::UnknownAccount), _) | (_, Err(LedgerError::UnknownAccount)) => {
                    (Default::default(), Default::default())
                }
                (Err(error), _) | (_, Err(error)) => return Ok(unavailable(&error)),
            };
            let routes: Vec<Value> = usage
                .by_route
                .iter()
                .map(|(route, used)| {
                    json!({
                        "route": route,
                        "calls": used.calls,
                        "credits": used.credits,
                        "average_cost": average_cost(used),
                    })
                })
                .collect();
            Ok(answer(
                StatusCode::OK,
                &json!({
                    "account": account.as_str(),
                    "available": balance.available,
                    "held": balance.held,
                    "committed": balance.committed,
                    "credit_limit": balance.credit_limit,
                    "thresholds": balance.thresholds,
                    "runway_secs": balance.runway_secs,
                    "routes": routes,
                }),
            ))
        })
    }
}

/// The caller's own audit trail, newest first: every reserve, grow, commit, refund,
/// expiry and top-up of the calling account with the totals after it. Mounted like
/// [`CreditsReadout`] (priced [`Price::Authenticated`](crate::pricing::Price::Authenticated)
/// behind the credit layer), at `GET /v1/credits/history?cursor=&limit=&since=`; answers
/// `{"account", "entries", "next"}` (`next`: the cursor of the older page), `400` for a bad
/// parameter.
///
/// ```
/// use axum::{routing::get, Router};
/// use tower_credits::pricing::Pricing;
/// use tower_credits::readout::CreditsHistory;
/// use tower_credits::{CreditLayer, MemoryLedger};
///
/// let ledger = MemoryLedger::new();
/// let layer = CreditLayer::new(ledger.clone())
///     .pricing(Pricing::new().authenticated("GET /v1/credits/history"));
/// let app = Router::new()
///     .route_service("/v1/credits/history", CreditsHistory::new(ledger))
///     .layer(layer);
/// # let _: Router = app;
/// ```
#[derive(Clone)]
pub struct CreditsHistory<L> {
    ledger: L,
}

impl<L> fmt::Debug for CreditsHistory<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditsHistory").finish_non_exhaustive()
    }
}

impl<L: LedgerReports> CreditsHistory<L> {
    /// The caller's history in `ledger`.
    pub fn new(ledger: L) -> Self {
        Self { ledger }
    }
}

impl<L: LedgerReports, B> Service<Request<B>> for CreditsHistory<L> {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let account = match caller(&req) {
            Ok(account) => account,
            Err(answer) => return Box::pin(async { Ok(answer) }),
        };
        let page = match PageQuery::parse(req.uri().query()) {
            Ok(page) => page,
            Err(detail) => {
                let body = json!({"title": "Bad history query", "status": 400, "detail": detail});
                return Box::pin(async move { Ok(answer(StatusCode::BAD_REQUEST, &body)) });
            }
        };
        let read = self
            .ledger
            .history(&account, page.cursor.as_deref(), page.limit);
        Box::pin(async move {
            let entries = match read.await {
                Ok(entries) => page.trim(entries),
                Err(error) => return Ok(unavailable(&error)),
            };
            Ok(answer(
                StatusCode::OK,
                &json!({
                    "account": account.as_str(),
                    "entries": entries.entries,
                    "next": entries.next,
                }),
            ))
        })
    }
}

fn not_behind_the_layer() -> Response<Full<Bytes>> {
    answer(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({
            "title": "Readout not behind the credit layer",
            "status": 500,
            "detail": "Price this route `Price::Authenticated` in the CreditLayer in front of it.",
        }),
    )
}

fn unavailable(error: &LedgerError) -> Response<Full<Bytes>> {
    tracing::error!(%error, "readout: the ledger did not answer");
    let mut response = answer(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({
            "title": "Billing unavailable",
            "status": 503,
            "detail": "Balances cannot be read right now. Retry shortly.",
        }),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
    response
}

/// The account the layer resolved, or the answer for a readout mounted without it.
#[allow(clippy::result_large_err)]
fn caller<B>(req: &Request<B>) -> Result<AccountId, Response<Full<Bytes>>> {
    // Put there by the layer for a route priced `Price::Authenticated`.
    req.extensions()
        .get::<AccountId>()
        .cloned()
        .ok_or_else(not_behind_the_layer)
}

/// Credits per call on a route (0 before its first commit): the readout's `average_cost`.
pub(crate) fn average_cost(used: &RouteUsage) -> f64 {
    if used.calls == 0 {
        0.0
    } else {
        used.credits as f64 / used.calls as f64
    }
}

fn answer(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("JSON of plain values");
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
