//! What a response says about billing: the one place that decides whether a request is
//! committed, refunded, or waits for the end of its body.
//!
//! The shape follows tower-http's `classify` (a verdict at the response head, or one at the
//! end of the stream), with two differences that matter for money: a `4xx` is a failure,
//! and a gRPC response that never states a status is not a failure but an early end.
//!
//! **What is billed is server configuration, never a header.** A layer bills
//! [`Protocol::Http`] unless told otherwise ([`CreditLayer::protocol`], or per route with
//! [`Pricing::protocol`]); neither the request's nor the response's `content-type` changes
//! how a response is judged or how a refusal is written. A client cannot make a route free
//! by asking for `application/grpc`.
//!
//! # The rules
//!
//! | what happened | verdict | the hold |
//! |---|---|---|
//! | head with a success (HTTP: the success predicate, default below 400; gRPC: `grpc-status: 0` in the head) | [`Verdict::Success`] | committed: the [`Charge`](crate::Charge)'s cost |
//! | head with a failure (a failing status, a non-zero `grpc-status`) | [`Verdict::Failure`] | refunded (a `Charge` the handler metered with `set`/`add`: committed so far) |
//! | gRPC head without `grpc-status` | [`Verdict::Unknown`] | waits for the trailers |
//! | gRPC `CANCELLED` or `DEADLINE_EXCEEDED` (the caller reset the call, or its deadline ran out) | [`Verdict::Unknown`] | an early end: the `Charge` so far |
//! | trailers with `grpc-status: 0` / non-zero | success / failure | committed / refunded (a metered `Charge`: committed so far) |
//! | early end after the head (client reset, body dropped, body error, no status at all, a stalled reader, the hold lifetime cap) | — | committed: the `Charge` so far |
//! | inner service error, panic before the head | — | refunded |
//! | response future dropped, or the handler cut at the hold lifetime cap, before the head | — | refunded, unless the handler already called `set`/`add` (then the `Charge` so far) |
//!
//! The client chose to stop; the server did not fail: only an explicit failure refunds, and
//! not work its handler metered with `set`/`add` (a handler that wants a failure free calls
//! `charge.set(0)` first).
//!
//! A gRPC status in the head counts only for a trailers-only response (one whose body is
//! already over): a head that says `grpc-status` and then streams a body waits for the
//! trailers, so a handler or proxy that copies request headers into the response cannot
//! be made to forge a refund. On a layer or route billed as gRPC, a non-`200` answer with no
//! status is a failure (no gRPC server answered): do not bill plain HTTP routes as gRPC.
//!
//! [`CreditLayer::protocol`]: crate::CreditLayer::protocol
//! [`Pricing::protocol`]: crate::pricing::Pricing::protocol

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};

use crate::wire::grpc::grpc_status;

/// What a layer, or a route, bills: how success is read and how refusals are written.
///
/// ```
/// use tower_credits::{classify::Protocol, pricing::Pricing, CreditLayer, MemoryLedger};
///
/// // A tonic server: every route is gRPC.
/// let grpc = CreditLayer::new(MemoryLedger::new()).protocol(Protocol::Grpc);
///
/// // An axum app that also routes a gRPC service: HTTP, except that service.
/// let mixed = CreditLayer::new(MemoryLedger::new()).pricing(
///     Pricing::new()
///         .route("GET /v1/echo", 1)
///         .route("/echo.Echo/{*method}", 10)
///         .protocol("/echo.Echo/{*method}", Protocol::Grpc),
/// );
/// # let _ = (grpc, mixed);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// Plain HTTP (the default): success is a status the success predicate accepts
    /// (default: below 400); refusals are RFC 9457 problem JSON.
    #[default]
    Http,
    /// gRPC: success is `grpc-status: 0`, from the head (trailers-only responses) or the
    /// trailers; refusals are trailers-only responses with `grpc-status`, `grpc-message`
    /// and rich details.
    Grpc,
    /// gRPC-Web: as [`Grpc`](Self::Grpc), and the status is also read from the trailer
    /// frame tonic-web writes into the body (binary or `grpc-web-text`), so the layer bills
    /// correctly on either side of `tonic_web::GrpcWebLayer`.
    ///
    /// Put `GrpcWebLayer` **outside** the `CreditLayer` (added after it) where you can:
    /// only then are the credit trailers carried into the body for browsers to read.
    GrpcWeb,
}

impl Protocol {
    /// Whether refusals and statuses are gRPC's.
    pub(crate) fn is_grpc(self) -> bool {
        matches!(self, Protocol::Grpc | Protocol::GrpcWeb)
    }
}

/// What a response (or the end of its body) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The request succeeded: commit the [`Charge`](crate::Charge)'s cost.
    Success,
    /// The request failed: refund the whole hold.
    Failure,
    /// Not said. At the head: wait for the end of the body. At the end: an early end,
    /// committed at what the `Charge` says so far.
    Unknown,
}

/// What a classifier answers at the response head: a verdict now, or "ask me again at the
/// end of the body" (tower-http's `ClassifiedResponse::Ready` / `RequiresEos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Classified {
    /// The head decides. [`Verdict::Unknown`] here is an end with no verdict (the caller
    /// cancelled): committed at what the `Charge` says so far.
    Ready(Verdict),
    /// The verdict comes at the end of the body: [`Classify::classify_end`] is asked then,
    /// with the trailers, if any.
    AtEnd,
}

/// The response head as a classifier sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ResponseHead<'a> {
    /// The HTTP status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: &'a HeaderMap,
    /// Whether the body is already over (`Body::is_end_stream`): for gRPC, a trailers-only
    /// response, whose status in the head is final.
    pub body_ended: bool,
}

impl<'a> ResponseHead<'a> {
    /// A head with this status and headers; `body_ended` as [`ResponseHead::body_ended`].
    pub fn new(status: StatusCode, headers: &'a HeaderMap, body_ended: bool) -> Self {
        Self {
            status,
            headers,
            body_ended,
        }
    }
}

/// Decides what a response says about billing. The layer holds one per protocol; the
/// defaults are [`HttpStatus`] and [`GrpcStatus`]. Whether the settle then happens at the
/// head or at the end of the body is the layer's (a deferred `Charge` waits for the end).
///
/// ```
/// use http::HeaderMap;
/// use tower_credits::classify::{Classified, Classify, Protocol, ResponseHead, Verdict};
/// use tower_credits::{CreditLayer, MemoryLedger};
///
/// /// Bills only 2xx; anything else is refunded.
/// struct Only2xx;
///
/// impl Classify for Only2xx {
///     fn classify_head(&self, head: ResponseHead<'_>) -> Classified {
///         Classified::Ready(if head.status.is_success() { Verdict::Success } else { Verdict::Failure })
///     }
///     fn classify_end(&self, _: Option<&HeaderMap>) -> Verdict {
///         Verdict::Unknown
///     }
/// }
///
/// let layer = CreditLayer::new(MemoryLedger::new()).classifier(Protocol::Http, Only2xx);
/// # let _ = layer;
/// ```
pub trait Classify: Send + Sync + 'static {
    /// The verdict at the response head, or [`Classified::AtEnd`].
    fn classify_head(&self, head: ResponseHead<'_>) -> Classified;

    /// The verdict at the end of the body, from its trailers (HTTP trailers, or the
    /// gRPC-Web trailer frame), if any. Asked only when the head said
    /// [`Classified::AtEnd`] or `Ready(Unknown)`; answering `Unknown` commits what the
    /// `Charge` says so far.
    fn classify_end(&self, trailers: Option<&HeaderMap>) -> Verdict;
}

/// The HTTP classifier: a status the predicate accepts is a success, any other a failure;
/// the end of the body changes nothing.
#[derive(Clone)]
pub struct HttpStatus {
    success: Arc<dyn Fn(StatusCode) -> bool + Send + Sync>,
}

impl HttpStatus {
    /// Success below 400.
    pub fn new() -> Self {
        Self::success_when(|status| status.as_u16() < 400)
    }

    /// Success when `f` says so.
    pub fn success_when(f: impl Fn(StatusCode) -> bool + Send + Sync + 'static) -> Self {
        Self {
            success: Arc::new(f),
        }
    }
}

impl Default for HttpStatus {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for HttpStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpStatus").finish_non_exhaustive()
    }
}

impl Classify for HttpStatus {
    fn classify_head(&self, head: ResponseHead<'_>) -> Classified {
        Classified::Ready(if (self.success)(head.status) {
            Verdict::Success
        } else {
            Verdict::Failure
        })
    }

    fn classify_end(&self, _: Option<&HeaderMap>) -> Verdict {
        Verdict::Unknown
    }
}

/// The gRPC classifier: `grpc-status` in the head (a trailers-only response) or in the
/// trailers; `0` is a success, any other code a failure — except `CANCELLED` (1) and
/// `DEADLINE_EXCEEDED` (4), which say the *caller* ended the call (it reset the stream, or
/// its deadline ran out): those are early ends, committed at what the `Charge` says so far,
/// like a reset the layer sees itself. (A handler whose own upstream timed out should
/// answer `UNAVAILABLE`, not `DEADLINE_EXCEEDED`.) An HTTP status other than `200` is a
/// failure (no gRPC server answered). A response that never states a status is an early
/// end, not a failure.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcStatus;

/// `CANCELLED` and `DEADLINE_EXCEEDED`: the caller ended the call.
const ENDED_BY_CALLER: [u32; 2] = [1, 4];

impl Classify for GrpcStatus {
    fn classify_head(&self, head: ResponseHead<'_>) -> Classified {
        let verdict = match grpc_status(head.headers) {
            // A status in the head is final only for a trailers-only response: with a body
            // to come, the trailers say how it ended (a handler or proxy that copies request
            // headers into the response cannot forge a refund).
            Some(_) if !head.body_ended && head.status == StatusCode::OK => {
                return Classified::AtEnd
            }
            Some(0) => Verdict::Success,
            Some(code) if ENDED_BY_CALLER.contains(&code) => Verdict::Unknown,
            Some(_) => Verdict::Failure,
            None if head.status != StatusCode::OK => Verdict::Failure,
            None => return Classified::AtEnd,
        };
        Classified::Ready(verdict)
    }

    fn classify_end(&self, trailers: Option<&HeaderMap>) -> Verdict {
        match trailers.and_then(grpc_status) {
            Some(0) => Verdict::Success,
            Some(code) if ENDED_BY_CALLER.contains(&code) => Verdict::Unknown,
            Some(_) => Verdict::Failure,
            None => Verdict::Unknown,
        }
    }
}

/// The classifiers of one layer, one per protocol.
#[derive(Clone)]
pub(crate) struct Classifiers {
    pub(crate) http: Arc<dyn Classify>,
    pub(crate) grpc: Arc<dyn Classify>,
    pub(crate) grpc_web: Arc<dyn Classify>,
}

impl Default for Classifiers {
    fn default() -> Self {
        Self {
            http: Arc::new(HttpStatus::new()),
            grpc: Arc::new(GrpcStatus),
            grpc_web: Arc::new(GrpcStatus),
        }
    }
}

impl Classifiers {
    pub(crate) fn get(&self, protocol: Protocol) -> &Arc<dyn Classify> {
        match protocol {
            Protocol::Http => &self.http,
            Protocol::Grpc => &self.grpc,
            Protocol::GrpcWeb => &self.grpc_web,
        }
    }

    pub(crate) fn set(&mut self, protocol: Protocol, classifier: Arc<dyn Classify>) {
        match protocol {
            Protocol::Http => self.http = classifier,
            Protocol::Grpc => self.grpc = classifier,
            Protocol::GrpcWeb => self.grpc_web = classifier,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_status(code: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static(code));
        h
    }

    #[test]
    fn http_judges_by_status_only() {
        let c = HttpStatus::new();
        let mut grpcish = HeaderMap::new();
        grpcish.insert("content-type", HeaderValue::from_static("application/grpc"));
        assert_eq!(
            c.classify_head(ResponseHead::new(StatusCode::OK, &grpcish, false)),
            Classified::Ready(Verdict::Success)
        );
        let none = HeaderMap::new();
        assert_eq!(
            c.classify_head(ResponseHead::new(StatusCode::NOT_FOUND, &none, true)),
            Classified::Ready(Verdict::Failure)
        );
        assert_eq!(c.classify_end(Some(&with_status("13"))), Verdict::Unknown);
    }

    #[test]
    fn grpc_reads_head_then_trailers() {
        let c = GrpcStatus;
        let head = |status, headers: &HeaderMap, ended| {
            c.classify_head(ResponseHead::new(status, headers, ended))
        };
        let ready = Classified::Ready;
        let (ok, none) = (StatusCode::OK, HeaderMap::new());
        assert_eq!(head(ok, &with_status("0"), true), ready(Verdict::Success));
        assert_eq!(head(ok, &with_status("5"), true), ready(Verdict::Failure));
        // A status in the head of a response that streams a body is not final.
        assert_eq!(head(ok, &with_status("5"), false), Classified::AtEnd);
        assert_eq!(head(ok, &with_status("0"), false), Classified::AtEnd);
        assert_eq!(head(ok, &none, false), Classified::AtEnd);
        assert_eq!(
            head(StatusCode::BAD_GATEWAY, &none, false),
            ready(Verdict::Failure)
        );
        assert_eq!(c.classify_end(Some(&with_status("0"))), Verdict::Success);
        assert_eq!(c.classify_end(Some(&with_status("2"))), Verdict::Failure);
        assert_eq!(c.classify_end(None), Verdict::Unknown);
        assert_eq!(c.classify_end(Some(&with_status("x"))), Verdict::Unknown);
        // Ended by the caller (a reset seen by the handler, a deadline): an early end.
        for code in ["1", "4"] {
            assert_eq!(head(ok, &with_status(code), true), ready(Verdict::Unknown));
            assert_eq!(c.classify_end(Some(&with_status(code))), Verdict::Unknown);
        }
    }
}
