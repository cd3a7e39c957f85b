//! The gRPC side of the wire format: reading `grpc-status`, and refusals written the gRPC
//! way (trailers-only responses with `grpc-status`, `grpc-message` and, with the `tonic`
//! feature, rich `google.rpc` details).

#[cfg(feature = "tonic")]
use bytes::Bytes;
use http::header;
#[cfg(not(feature = "tonic"))]
use http::{HeaderValue, Response};

use super::problem::{ProblemCtx, WireResponse};
use crate::ledger::{AccountId, Insufficient};

/// gRPC status codes used here (numbering from `google.rpc.Code`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum GrpcCode {
    #[cfg_attr(feature = "tonic", allow(dead_code))]
    FailedPrecondition = 9,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
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

/// A trailers-only gRPC response: status and message in the headers, empty body.
pub(super) fn grpc_refusal(code: GrpcCode, message: &str) -> WireResponse {
    #[cfg(feature = "tonic")]
    {
        tonic::Status::new(tonic::Code::from_i32(code as i32), message).into_http::<Option<Bytes>>()
    }
    #[cfg(not(feature = "tonic"))]
    {
        let mut response = Response::new(None);
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

/// The trailers of a gRPC stream the layer ended at its hold: `RESOURCE_EXHAUSTED`, with
/// `ErrorInfo{reason: "HOLD_EXHAUSTED"}` and the figures when built with `tonic`.
pub(crate) fn hold_exhausted(trailers: &mut http::HeaderMap, reserved: u64, cost: u64) {
    let message = format!(
        "the stream reached the {reserved} credits held for it and was ended; {cost} charged"
    );
    let mut status = grpc_hold_exhausted(reserved, cost, message);
    status.headers_mut().remove(header::CONTENT_TYPE);
    for (name, value) in status.headers() {
        trailers.insert(name.clone(), value.clone());
    }
}

#[cfg(feature = "tonic")]
fn grpc_hold_exhausted(reserved: u64, cost: u64, message: String) -> WireResponse {
    use std::collections::HashMap;
    use tonic_types::{ErrorDetails, StatusExt};

    let metadata = HashMap::from([
        ("reserved".to_owned(), reserved.to_string()),
        ("cost".to_owned(), cost.to_string()),
    ]);
    let details = ErrorDetails::with_error_info("HOLD_EXHAUSTED", "tower-credits", metadata);
    tonic::Status::with_error_details(tonic::Code::ResourceExhausted, message, details)
        .into_http::<Option<Bytes>>()
}

#[cfg(not(feature = "tonic"))]
fn grpc_hold_exhausted(_: u64, _: u64, message: String) -> WireResponse {
    grpc_refusal(GrpcCode::ResourceExhausted, &message)
}

#[cfg(feature = "tonic")]
pub(super) fn grpc_insufficient(
    ctx: &ProblemCtx<'_>,
    account: &AccountId,
    refusal: &Insufficient,
    shortfall: u64,
    detail: String,
) -> WireResponse {
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
    tonic::Status::with_error_details(tonic::Code::FailedPrecondition, detail, details)
        .into_http::<Option<Bytes>>()
}

#[cfg(not(feature = "tonic"))]
pub(super) fn grpc_insufficient(
    _: &ProblemCtx<'_>,
    _: &AccountId,
    _: &Insufficient,
    _: u64,
    detail: String,
) -> WireResponse {
    grpc_refusal(GrpcCode::FailedPrecondition, &detail)
}

#[cfg(feature = "tonic")]
pub(super) fn grpc_max_cost_exceeded(
    _: &ProblemCtx<'_>,
    price: u64,
    min_price: Option<u64>,
    max_cost: u64,
    detail: String,
) -> WireResponse {
    use std::collections::HashMap;
    use tonic_types::{ErrorDetails, StatusExt};

    let metadata = HashMap::from([
        ("price".to_owned(), price.to_string()),
        (
            "min_price".to_owned(),
            min_price.unwrap_or(price).to_string(),
        ),
        ("max_cost".to_owned(), max_cost.to_string()),
    ]);
    let details = ErrorDetails::with_error_info("MAX_COST_EXCEEDED", "tower-credits", metadata);
    tonic::Status::with_error_details(tonic::Code::FailedPrecondition, detail, details)
        .into_http::<Option<Bytes>>()
}

#[cfg(not(feature = "tonic"))]
pub(super) fn grpc_max_cost_exceeded(
    _: &ProblemCtx<'_>,
    _: u64,
    _: Option<u64>,
    _: u64,
    detail: String,
) -> WireResponse {
    grpc_refusal(GrpcCode::FailedPrecondition, &detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
