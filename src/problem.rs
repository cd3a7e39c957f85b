//! Refusals: RFC 9457 `application/problem+json` for HTTP, trailers-only statuses for gRPC.
//!
//! | case | HTTP | gRPC |
//! |---|---|---|
//! | no or unknown account | `401` | `UNAUTHENTICATED` |
//! | balance too low | `402`, never `Retry-After` | `FAILED_PRECONDITION` + `google.rpc.ErrorInfo{reason: "INSUFFICIENT_BALANCE"}` (+ `Help` link) |
//! | too many open holds | `429` | `RESOURCE_EXHAUSTED` |
//! | ledger down or slow | `503` + `Retry-After` | `UNAVAILABLE` |
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
//!   "top_up_url": "https://example.com/billing"
//! }
//! ```

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{Map, Value};

use crate::account::Unauthorized;
use crate::body::ResponseBody;
use crate::ledger::{AccountId, Insufficient};

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

/// gRPC status codes used here (numbering from `google.rpc.Code`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum GrpcCode {
    #[cfg_attr(feature = "tonic", allow(dead_code))]
    FailedPrecondition = 9,
    ResourceExhausted = 8,
    Unauthenticated = 16,
    Unavailable = 14,
}

/// `content-type: application/grpc…`: the caller is a gRPC client.
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `grpc-status` of a header or trailer map, when present and numeric: ASCII digits (the
/// gRPC spec's `1*DIGIT`) between optional blanks. Anything else, `+0` or a non-ASCII space
/// included, is no status, as for a gRPC client.
pub(crate) fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    let digits = headers.get("grpc-status")?.as_bytes().trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn problem<B>(
    ctx: &ProblemCtx<'_>,
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: String,
    extra: Map<String, Value>,
) -> Response<ResponseBody<B>> {
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
    let mut response = Response::new(ResponseBody::full(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn shortfall_detail(required: u64, available: i64, credit_limit: u64, shortfall: u64) -> String {
    let credits = |n: i128| if n == 1 { "credit" } else { "credits" };
    let mut detail = format!(
        "This request costs {required} {}; {available} {} available",
        credits(required as i128),
        if available == 1 { "is" } else { "are" }
    );
    if credit_limit > 0 {
        detail.push_str(&format!(" with an overdraft of {credit_limit}"));
    }
    detail.push_str(&format!(", {shortfall} short."));
    detail
}

pub(crate) fn insufficient<B>(
    ctx: &ProblemCtx<'_>,
    account: &AccountId,
    refusal: &Insufficient,
) -> Response<ResponseBody<B>> {
    let shortfall = refusal.shortfall();
    let mut detail = shortfall_detail(
        refusal.required,
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
    if refusal.credit_limit > 0 {
        extra.insert("credit_limit".into(), refusal.credit_limit.into());
    }
    if let Some(url) = ctx.top_up_url {
        extra.insert("top_up_url".into(), url.into());
    }
    problem(
        ctx,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient-balance",
        INSUFFICIENT_BALANCE,
        detail,
        extra,
    )
}

pub(crate) fn unauthorized<B>(
    ctx: &ProblemCtx<'_>,
    why: &Unauthorized,
) -> Response<ResponseBody<B>> {
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

pub(crate) fn too_many_holds<B>(ctx: &ProblemCtx<'_>, limit: u64) -> Response<ResponseBody<B>> {
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

pub(crate) fn unavailable<B>(ctx: &ProblemCtx<'_>) -> Response<ResponseBody<B>> {
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

/// A trailers-only gRPC response: status and message in the headers, empty body.
fn grpc_refusal<B>(code: GrpcCode, message: &str) -> Response<ResponseBody<B>> {
    #[cfg(feature = "tonic")]
    {
        tonic::Status::new(tonic::Code::from_i32(code as i32), message).into_http()
    }
    #[cfg(not(feature = "tonic"))]
    {
        let mut response = Response::new(ResponseBody::empty());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(code as u32));
        // gRPC percent-encodes the message (a top-up URL may hold `%` or non-ASCII).
        let mut encoded = String::with_capacity(message.len());
        for b in message.bytes() {
            if (b' '..=b'~').contains(&b) && b != b'%' {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        headers.insert(
            "grpc-message",
            HeaderValue::from_str(&encoded).expect("printable ASCII"),
        );
        response
    }
}

#[cfg(feature = "tonic")]
fn grpc_insufficient<B>(
    ctx: &ProblemCtx<'_>,
    account: &AccountId,
    refusal: &Insufficient,
    shortfall: u64,
    detail: String,
) -> Response<ResponseBody<B>> {
    use std::collections::HashMap;
    use tonic_types::{ErrorDetails, StatusExt};

    let mut metadata = HashMap::from([
        ("account".to_owned(), account.as_str().to_owned()),
        ("required".to_owned(), refusal.required.to_string()),
        ("available".to_owned(), refusal.available.to_string()),
        ("shortfall".to_owned(), shortfall.to_string()),
    ]);
    if refusal.credit_limit > 0 {
        metadata.insert("credit_limit".into(), refusal.credit_limit.to_string());
    }
    let mut details =
        ErrorDetails::with_error_info("INSUFFICIENT_BALANCE", "tower-credits", metadata);
    if let Some(url) = ctx.top_up_url {
        details.add_help_link("Top up credits", url);
    }
    tonic::Status::with_error_details(tonic::Code::FailedPrecondition, detail, details).into_http()
}

#[cfg(not(feature = "tonic"))]
fn grpc_insufficient<B>(
    _: &ProblemCtx<'_>,
    _: &AccountId,
    _: &Insufficient,
    _: u64,
    detail: String,
) -> Response<ResponseBody<B>> {
    grpc_refusal(GrpcCode::FailedPrecondition, &detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_reads_well() {
        assert_eq!(
            shortfall_detail(10, 3, 0, 7),
            "This request costs 10 credits; 3 are available, 7 short."
        );
        assert_eq!(
            shortfall_detail(1, -5, 5, 1),
            "This request costs 1 credit; -5 are available with an overdraft of 5, 1 short."
        );
    }

    #[test]
    fn grpc_detection() {
        let mut h = http::HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(grpc_status(&h), Some(0));
        h.insert("grpc-status", HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&h), None);
    }
}
