//! Refusals: RFC 9457 `application/problem+json` for HTTP, trailers-only statuses for gRPC.
//!
//! | case | HTTP | gRPC |
//! |---|---|---|
//! | no or unknown account | `401` | `UNAUTHENTICATED` |
//! | balance too low | `402`, never `Retry-After` | `FAILED_PRECONDITION` + `google.rpc.ErrorInfo{reason: "INSUFFICIENT_BALANCE"}` (+ `Help` link) |
//! | too many open holds | `429` | `RESOURCE_EXHAUSTED` |
//! | ledger down or slow | `503` + `Retry-After` | `UNAVAILABLE` |
//! | too many unknown API keys being checked at once | `503` + `Retry-After: 1` (`ledger-busy`) | `UNAVAILABLE` |
//! | a malformed `credits-quote` or `credits-max-cost` | `400` (`invalid-header`) | `INVALID_ARGUMENT` |
//! | `credits-max-cost` below the least the route runs with | `412` (`max-cost-exceeded`, with `price`, `min_price`, `max_cost`) | `FAILED_PRECONDITION` + `ErrorInfo{reason: "MAX_COST_EXCEEDED"}` |
//! | billing failed on our side (an unexpected ledger reply, a script error, a price out of range) | `500` (`billing-error`) | `INTERNAL` |
//! | a handler ran past the hold lifetime cap | `504` (`hold-lifetime-exceeded`) | `DEADLINE_EXCEEDED` |
//!
//! The `402` body keeps the field `"error": "Insufficient account balance"` that existing
//! clients match on:
//!
//! ```json
//! {
//!   "error": "Insufficient account balance",
//!   "type": "urn:tower-credits:problem:insufficient-balance",
//!   "title": "Insufficient account balance",
//!   "status": 402,
//!   "detail": "This request costs 10 credits; 3 are available, 7 short. Top up at https://example.com/billing.",
//!   "account": "acct_42",
//!   "required": 10,
//!   "available": 3,
//!   "shortfall": 7,
//!   "price": 10,
//!   "max_affordable": 0,
//!   "top_up_url": "https://example.com/billing"
//! }
//! ```

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{Map, Value};

use super::grpc::{grpc_insufficient, grpc_max_cost_exceeded, grpc_refusal, GrpcCode};
use crate::account::Unauthorized;
use crate::ledger::{AccountId, Insufficient};

/// A refusal as it goes on the wire: a problem JSON body, or none (a gRPC trailers-only
/// response). The middleware wraps the body into its own response body type.
pub(crate) type WireResponse = Response<Option<Bytes>>;

/// Default base of the problem `type` URIs.
pub const DEFAULT_PROBLEM_TYPE_BASE: &str = "urn:tower-credits:problem:";

/// The `error` and `title` of a `402`, as clients of the seed API already match it.
pub const INSUFFICIENT_BALANCE: &str = "Insufficient account balance";

/// Where refusals take their wording from.
pub(crate) struct ProblemCtx<'a> {
    pub(crate) type_base: &'a str,
    pub(crate) top_up_url: Option<&'a str>,
    pub(crate) retry_after_secs: u64,
    pub(crate) grpc: bool,
}

fn problem(
    ctx: &ProblemCtx<'_>,
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: String,
    extra: Map<String, Value>,
) -> WireResponse {
    let mut body = Map::new();
    if status == StatusCode::PAYMENT_REQUIRED {
        // First, as in the seed API: `{"error": "Insufficient account balance", ...}`.
        body.insert("error".into(), INSUFFICIENT_BALANCE.into());
    }
    body.insert("type".into(), format!("{}{slug}", ctx.type_base).into());
    body.insert("title".into(), title.into());
    body.insert("status".into(), status.as_u16().into());
    body.insert("detail".into(), detail.into());
    body.extend(extra);
    let bytes = serde_json::to_vec(&Value::Object(body)).expect("JSON of plain values");
    let mut response = Response::new(Some(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn shortfall_detail(
    required: u64,
    price: Option<u64>,
    available: i64,
    credit_limit: u64,
    shortfall: u64,
) -> String {
    let credits = |n: i128| if n == 1 { "credit" } else { "credits" };
    let mut detail = format!(
        "This request costs {required} {}; {available} {} available",
        credits(required as i128),
        if available == 1 { "is" } else { "are" }
    );
    if let Some(price) = price.filter(|&price| price > required) {
        detail = format!(
            "This request needs at least {required} {} (up to {price}); {available} {} available",
            credits(required as i128),
            if available == 1 { "is" } else { "are" }
        );
    }
    if credit_limit > 0 {
        detail.push_str(&format!(" with an overdraft of {credit_limit}"));
    }
    detail.push_str(&format!(", {shortfall} short."));
    detail
}

pub(crate) fn insufficient(
    ctx: &ProblemCtx<'_>,
    account: &AccountId,
    refusal: &Insufficient,
    price: u64,
) -> WireResponse {
    let shortfall = refusal.shortfall();
    let mut detail = shortfall_detail(
        refusal.required,
        Some(price),
        refusal.available,
        refusal.credit_limit,
        shortfall,
    );
    match ctx.top_up_url {
        Some(url) => detail.push_str(&format!(" Top up at {url}.")),
        None => detail.push_str(" Top up the account to continue."),
    }
    if ctx.grpc {
        return grpc_insufficient(ctx, account, refusal, shortfall, detail);
    }
    let mut extra = Map::new();
    extra.insert("account".into(), account.as_str().into());
    extra.insert("required".into(), refusal.required.into());
    extra.insert("available".into(), refusal.available.into());
    extra.insert("shortfall".into(), shortfall.into());
    // `required` is the least the call runs with; `price`, its full hold; what the account
    // could hold now is below `required`, so nothing can be served.
    extra.insert("price".into(), price.into());
    let spendable = (refusal.available as i128 + refusal.credit_limit as i128).max(0);
    let max_affordable = (price as i128).min(spendable) as u64;
    extra.insert(
        "max_affordable".into(),
        if max_affordable < refusal.required {
            0
        } else {
            max_affordable
        }
        .into(),
    );
    if refusal.credit_limit > 0 {
        extra.insert("credit_limit".into(), refusal.credit_limit.into());
    }
    if let Some(url) = ctx.top_up_url {
        extra.insert("top_up_url".into(), url.into());
    }
    let mut response = problem(
        ctx,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient-balance",
        INSUFFICIENT_BALANCE,
        detail,
        extra,
    );
    // A balance changes with every top-up: no cache may answer for the ledger.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) fn unauthorized(ctx: &ProblemCtx<'_>, why: &Unauthorized) -> WireResponse {
    if ctx.grpc {
        return grpc_refusal(GrpcCode::Unauthenticated, &why.detail());
    }
    let mut response = problem(
        ctx,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        why.detail(),
        Map::new(),
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

pub(crate) fn too_many_holds(ctx: &ProblemCtx<'_>, limit: u64) -> WireResponse {
    let detail = format!(
        "This account already has {limit} requests in flight, the most allowed. Retry when one finishes."
    );
    if ctx.grpc {
        return grpc_refusal(GrpcCode::ResourceExhausted, &detail);
    }
    let mut extra = Map::new();
    extra.insert("limit".into(), limit.into());
    problem(
        ctx,
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-holds",
        "Too many requests in flight",
        detail,
        extra,
    )
}

pub(crate) fn lifetime_exceeded(
    ctx: &ProblemCtx<'_>,
    lifetime: std::time::Duration,
) -> WireResponse {
    let detail = format!(
        "This request ran longer than the {} s a request may hold credits; it was cancelled and nothing was charged.",
        lifetime.as_secs()
    );
    if ctx.grpc {
        return grpc_refusal(GrpcCode::DeadlineExceeded, &detail);
    }
    problem(
        ctx,
        StatusCode::GATEWAY_TIMEOUT,
        "hold-lifetime-exceeded",
        "Request ran too long",
        detail,
        Map::new(),
    )
}

pub(crate) fn invalid_header(ctx: &ProblemCtx<'_>, name: &str, expected: &str) -> WireResponse {
    let detail =
        format!("The `{name}` header is not valid: expected {expected}. Nothing was charged.");
    if ctx.grpc {
        return grpc_refusal(GrpcCode::InvalidArgument, &detail);
    }
    let mut extra = Map::new();
    extra.insert("header".into(), name.into());
    problem(
        ctx,
        StatusCode::BAD_REQUEST,
        "invalid-header",
        "Invalid header",
        detail,
        extra,
    )
}

pub(crate) fn max_cost_exceeded(
    ctx: &ProblemCtx<'_>,
    price: u64,
    min_price: Option<u64>,
    max_cost: u64,
) -> WireResponse {
    let least = min_price.unwrap_or(price);
    let detail = format!(
        "This request needs at least {least} credits to run, more than the {max_cost} your `credits-max-cost` allows. Nothing was charged."
    );
    if ctx.grpc {
        return grpc_max_cost_exceeded(ctx, price, min_price, max_cost, detail);
    }
    let mut extra = Map::new();
    extra.insert("price".into(), price.into());
    extra.insert("min_price".into(), least.into());
    extra.insert("max_cost".into(), max_cost.into());
    problem(
        ctx,
        StatusCode::PRECONDITION_FAILED,
        "max-cost-exceeded",
        "Spend cap below the price",
        detail,
        extra,
    )
}

pub(crate) fn quotes_unsupported(ctx: &ProblemCtx<'_>) -> WireResponse {
    let detail = "This service's ledger does not report balances, so it cannot quote.";
    if ctx.grpc {
        return grpc_refusal(GrpcCode::Unimplemented, detail);
    }
    problem(
        ctx,
        StatusCode::NOT_IMPLEMENTED,
        "quotes-unsupported",
        "Quotes unsupported",
        detail.into(),
        Map::new(),
    )
}

pub(crate) fn billing_error(ctx: &ProblemCtx<'_>) -> WireResponse {
    let detail = "Billing failed on our side; nothing was charged. This is not something a retry fixes: the service's operators have been told.";
    if ctx.grpc {
        return grpc_refusal(GrpcCode::Internal, detail);
    }
    problem(
        ctx,
        StatusCode::INTERNAL_SERVER_ERROR,
        "billing-error",
        "Billing error",
        detail.into(),
        Map::new(),
    )
}

pub(crate) fn ledger_busy(ctx: &ProblemCtx<'_>) -> WireResponse {
    let detail =
        "Too many API keys are being checked right now; nothing was charged. Retry shortly.";
    if ctx.grpc {
        return grpc_refusal(GrpcCode::Unavailable, detail);
    }
    let mut response = problem(
        ctx,
        StatusCode::SERVICE_UNAVAILABLE,
        "ledger-busy",
        "Billing busy",
        detail.into(),
        Map::new(),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
    response
}

pub(crate) fn unavailable(ctx: &ProblemCtx<'_>) -> WireResponse {
    let detail = "Billing is unavailable right now; nothing was charged. Retry shortly.";
    if ctx.grpc {
        return grpc_refusal(GrpcCode::Unavailable, detail);
    }
    let mut response = problem(
        ctx,
        StatusCode::SERVICE_UNAVAILABLE,
        "ledger-unavailable",
        "Billing unavailable",
        detail.into(),
        Map::new(),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(ctx.retry_after_secs));
    response
}

/// The idempotency refusals: a request in progress (`409`, `Retry-After`), a reused key
/// (`422`), a replay that cannot be made (`409`), a keyed body too large (`413`). Nothing
/// was charged for any of them.
pub(crate) fn idempotency(ctx: &ProblemCtx<'_>, refusal: &crate::Refusal) -> WireResponse {
    use crate::Refusal as R;
    let title = match refusal {
        R::RequestInProgress => "Request in progress",
        R::IdempotencyKeyReused => "Idempotency key reused",
        R::ReplayUnavailable => "Replay unavailable",
        _ => "Payload too large",
    };
    let detail = format!("{refusal}. Nothing was charged for this request.");
    let mut extra = Map::new();
    if let R::PayloadTooLarge { limit } = refusal {
        extra.insert("limit".into(), (*limit).into());
    }
    let mut response = problem(ctx, refusal.status(), refusal.code(), title, detail, extra);
    if matches!(refusal, R::RequestInProgress) {
        let after = HeaderValue::from(ctx.retry_after_secs);
        response.headers_mut().insert(header::RETRY_AFTER, after);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_reads_well() {
        assert_eq!(
            shortfall_detail(10, None, 3, 0, 7),
            "This request costs 10 credits; 3 are available, 7 short."
        );
        assert_eq!(
            shortfall_detail(1, Some(1), -5, 5, 1),
            "This request costs 1 credit; -5 are available with an overdraft of 5, 1 short."
        );
        assert_eq!(
            shortfall_detail(10, Some(50), 4, 0, 6),
            "This request needs at least 10 credits (up to 50); 4 are available, 6 short."
        );
    }
}
