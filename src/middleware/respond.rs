//! What the caller sees of billing: refusals (the user's shape, else problem JSON or a gRPC
//! status), quotes, and the head of a billed response — settled there, or handed to the
//! body when the cost or the verdict comes at its end.

use http::{HeaderValue, Response};
use tokio::time::Instant;

use super::body::{BodySettle, ResponseBody, StreamKind};
use super::config::Shared;
use super::grpc_web::TrailerScanner;
use super::guard::HoldGuard;
use super::record::Recorder;
use super::settlement::{at_head, cost_of, AtHead};
use crate::classify::{Protocol, ResponseHead};
use crate::ledger::{Balance, Ledger};
use crate::refusal::{rendered, Refusal};
use crate::wire::headers::{self, Thresholds};
use crate::wire::problem::WireResponse;
use crate::wire::{grpc, quote::Quote};

/// Writes a refusal the way the route's protocol is refused (never chosen by a header):
/// the user's own shape for HTTP when the layer has one, else the default.
pub(crate) fn refuse<L: Ledger>(
    shared: &Shared<L>,
    protocol: Protocol,
    refusal: &Refusal,
) -> WireResponse {
    #[cfg(feature = "metrics")]
    shared.requests.count(
        crate::metrics::Outcome::Refused,
        crate::metrics::Reason::of(refusal),
    );
    let default = refusal.to_wire(&shared.problem_ctx(protocol.is_grpc()));
    if protocol.is_grpc() {
        return grpc_web_status(default, protocol);
    }
    match shared
        .render_refusal
        .as_ref()
        .and_then(|render| render(refusal))
    {
        Some(custom) => rendered(default, custom),
        None => default,
    }
}

fn grpc_web_status(mut response: WireResponse, protocol: Protocol) -> WireResponse {
    if protocol == Protocol::GrpcWeb {
        // A trailers-only gRPC-Web response: the status in the headers, an empty body.
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web+proto"),
        );
    }
    response
}

/// A quote: what the call would hold, and what the account has (`None`: a free route).
pub(crate) fn quoted<L: Ledger>(
    shared: &Shared<L>,
    price: u64,
    min_price: Option<u64>,
    balance: Option<&Balance>,
) -> WireResponse {
    #[cfg(feature = "metrics")]
    shared
        .requests
        .count(crate::metrics::Outcome::Free, crate::metrics::Reason::Quote);
    let quote = match balance {
        Some(balance) => Quote {
            price,
            min_price,
            available: Some(balance.available),
            credit_limit: balance.credit_limit,
            thresholds: Thresholds::new(balance.thresholds.clone(), shared.low_balance_threshold),
            runway_secs: balance.runway_secs,
            price_version: shared.pricing.version_header().cloned(),
        },
        None => Quote {
            price_version: shared.pricing.version_header().cloned(),
            ..Quote::default()
        },
    };
    quote.into_response(&shared.headers)
}

/// The response head is out: settle now and say so in headers, or hand the hold to the
/// body when the verdict or the cost comes at its end.
pub(crate) fn finish<L: Ledger, B: http_body::Body>(
    shared: &Shared<L>,
    protocol: Protocol,
    mut guard: HoldGuard,
    response: Response<B>,
    // When the hold expires and meets its cap, asked only if the body settles it.
    times: impl FnOnce() -> (Instant, Instant),
) -> Response<ResponseBody<B>> {
    let (mut parts, body) = response.into_parts();
    let names = &shared.headers;
    if let Some(version) = shared.pricing.version_header() {
        parts
            .headers
            .insert(names.price_version.clone(), version.clone());
    }
    if protocol == Protocol::Http && grpc::is_grpc(&parts.headers) {
        shared.warn_grpc_response_on_http();
    }
    let classifier = shared.classifiers.get(protocol).clone();
    let ended = body.is_end_stream();
    let classified =
        classifier.classify_head(ResponseHead::new(parts.status, &parts.headers, ended));
    let deferred = guard.hold().charge.is_deferred();
    let awaiting = match at_head(classified, deferred, ended, || {
        classifier.classify_end(None)
    }) {
        AtHead::Now(end) => {
            let cost = guard.settle(end).map_or(0, cost_of);
            let hold = guard.hold();
            headers::write_settled(
                &mut parts.headers,
                names,
                hold.charge.reserved(),
                cost,
                hold.remaining(cost),
                &hold.thresholds,
                hold.runway_secs,
            );
            let recorder = record(guard.settler(), hold, &parts);
            let body = ResponseBody::inner(body);
            let body = match recorder {
                Some(recorder) => body.recording(recorder),
                None => body,
            };
            return Response::from_parts(parts, body);
        }
        AtHead::AtEnd(awaiting) => awaiting,
    };
    // Settled at body end: the head carries the hold and a lower bound of the balance.
    let hold = guard.hold().clone();
    let (expires, cap_at) = times();
    guard.watch(expires, cap_at);
    guard.head_sent();
    headers::write_pending(
        &mut parts.headers,
        names,
        hold.charge.reserved(),
        hold.available,
        hold.charge.hold_id(),
        &hold.thresholds,
        hold.runway_secs,
    );
    let scanner = (protocol == Protocol::GrpcWeb)
        .then(|| TrailerScanner::for_response(&parts.headers))
        .flatten();
    let kind = stream_kind(protocol, &parts.headers);
    if matches!(kind, StreamKind::Http | StreamKind::Sse) {
        headers::announce_trailers(&mut parts.headers, names);
    }
    let recorder = record(guard.settler(), &hold, &parts);
    let settle = BodySettle::new(guard, awaiting, classifier, scanner, kind);
    let body = ResponseBody::settling(body, settle);
    let body = match recorder {
        Some(recorder) => body.recording(recorder),
        None => body,
    };
    Response::from_parts(parts, body)
}

/// A keyed request's response is copied for its replays, from its head on.
fn record(
    settler: &std::sync::Arc<dyn super::settle::Settler>,
    hold: &super::guard::HoldCtx,
    parts: &http::response::Parts,
) -> Option<Box<Recorder>> {
    let keyed = *hold.keyed.clone()?;
    Some(Recorder::new(
        settler.clone(),
        hold.clone(),
        keyed,
        parts.status,
        &parts.headers,
    ))
}

/// How a body settled at its end tells its end: by protocol, and for HTTP by content type
/// (an event stream gets a final `credits` event).
fn stream_kind(protocol: Protocol, headers: &http::HeaderMap) -> StreamKind {
    match protocol {
        Protocol::Grpc => StreamKind::Grpc,
        Protocol::GrpcWeb => StreamKind::GrpcWeb,
        _ if headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream")) =>
        {
            StreamKind::Sse
        }
        _ => StreamKind::Http,
    }
}
