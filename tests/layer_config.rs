//! A layer's configuration: frozen per layer (a clone reconfigured gets its own keeper,
//! breakers and counters), setters that refuse what they cannot use, and refusals rendered
//! in an API's own error shape.

mod http_support;
mod support;

#[allow(dead_code)]
#[path = "../examples/custom_ledger/recording.rs"]
mod recording;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use http_support::{account, get_req};
use recording::{Recorded, RecordingLedger};
use support::rig::pricing;
use tower::{Layer, ServiceExt};
use tower_credits::{CreditLayer, MemoryLedger, Refusal};

/// A handler that answers after `wait` (virtual time): long enough to be renewed.
fn slow(
    wait: Duration,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_req: Request<Full<Bytes>>| async move {
        tokio::time::sleep(wait).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
    })
}

/// The TTLs the ledger was asked to renew holds for, in order.
fn renewals(ledger: &RecordingLedger<MemoryLedger>) -> Vec<Duration> {
    ledger
        .log()
        .into_iter()
        .filter_map(|op| match op {
            Recorded::Extend(extend) => Some(extend.hold_ttl()),
            _ => None,
        })
        .collect()
}

/// A layer cloned and then given another hold TTL renews its holds with its own TTL, even
/// after its original's keeper started first, and counts only its own requests.
#[tokio::test(start_paused = true)]
async fn a_cloned_reconfigured_layer_keeps_its_own_ttl() {
    let ledger = RecordingLedger::new(MemoryLedger::new());
    account(&ledger, "acct_ttl", "key-ttl", 1_000).await;
    let long = CreditLayer::new(ledger.clone())
        .pricing(pricing(&[("GET /v1/slow", 5)]))
        .hold_ttl(Duration::from_secs(60));
    let short = long.clone().hold_ttl(Duration::from_secs(3));

    // The original renews first: its keeper starts with its 60 s TTL.
    let svc = long.layer(slow(Duration::from_secs(21)));
    let response = svc
        .oneshot(get_req("/v1/slow", Some("key-ttl")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(renewals(&ledger), [Duration::from_secs(60)]);

    let svc = short.layer(slow(Duration::from_millis(1_500)));
    let response = svc
        .oneshot(get_req("/v1/slow", Some("key-ttl")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        renewals(&ledger),
        [Duration::from_secs(60), Duration::from_secs(3)],
        "the clone renewed with its original's TTL"
    );
    assert_eq!(long.stats().holds, 1, "{:?}", long.stats());
    assert_eq!(short.stats().holds, 1, "{:?}", short.stats());
}

#[test]
#[should_panic(expected = "the hold lifetime cap must not be zero")]
fn a_zero_lifetime_cap_is_refused() {
    let _ = CreditLayer::new(MemoryLedger::new()).max_hold_lifetime(Duration::ZERO);
}

#[test]
#[should_panic(expected = "at least one failure")]
fn a_breaker_that_never_opens_is_refused() {
    let _ = CreditLayer::new(MemoryLedger::new()).circuit_breaker(0, Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "retry_after must be at least a second")]
fn a_zero_retry_after_is_refused() {
    let _ = CreditLayer::new(MemoryLedger::new()).retry_after(Duration::ZERO);
}

/// An OpenAI-style error body: `{"error": {"message", "type", "code"}}`.
fn openai(refusal: &Refusal) -> Option<Response<Bytes>> {
    let kind = match refusal {
        Refusal::InsufficientCredits { .. } => "insufficient_quota",
        Refusal::Unauthorized(_) => "invalid_request_error",
        _ => return None,
    };
    let body = serde_json::json!({"error": {
        "message": refusal.to_string(),
        "type": kind,
        "code": refusal.code(),
        "shortfall": refusal.shortfall(),
    }});
    Response::builder()
        .status(refusal.status())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(body.to_string()))
        .ok()
}

async fn json_of(
    response: Response<tower_credits::ResponseBody<Full<Bytes>>>,
) -> serde_json::Value {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// A layer with a refusal hook answers a `402` and a `401` in the API's own shape, with the
/// refusal's figures, keeps `WWW-Authenticate` on the `401`, and leaves the refusals the
/// hook declines in the default problem JSON.
#[tokio::test]
async fn refusals_render_in_the_apis_own_shape() {
    let ledger = MemoryLedger::new();
    account(&ledger, "acct_poor", "key-poor", 3).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(&[("GET /v1/paid", 10)]))
        .refusal_response(openai);
    let svc = layer.layer(slow(Duration::ZERO));

    let response = svc
        .clone()
        .oneshot(get_req("/v1/paid", Some("key-poor")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    let json = json_of(response).await;
    assert_eq!(json["error"]["type"], "insufficient_quota", "{json}");
    assert_eq!(json["error"]["code"], "insufficient-balance", "{json}");
    assert_eq!(json["error"]["shortfall"], 7, "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("needs 10 credits, 3 are available, 7 short"),
        "{message}"
    );

    let response = svc
        .clone()
        .oneshot(get_req("/v1/paid", Some("no-such-key")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    let json = json_of(response).await;
    assert_eq!(json["error"]["type"], "invalid_request_error", "{json}");

    // Declined by the hook: the default problem JSON.
    let bad = Request::get("/v1/paid")
        .header("authorization", "Bearer key-poor")
        .header("credits-max-cost", "abc")
        .body(Full::default())
        .unwrap();
    let response = svc.oneshot(bad).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
}

/// Second review, finding 4: a free route reads no billing header but the quote: a
/// malformed `credits-max-cost` on `GET /health` is ignored, and `credits-quote` keeps its
/// pinned answer (price 0).
#[tokio::test]
async fn a_free_route_ignores_billing_headers() {
    let layer = CreditLayer::new(MemoryLedger::new())
        .pricing(tower_credits::pricing::Pricing::new().free("GET /health"));
    let svc = layer.layer(slow(Duration::ZERO));
    let health = |name: &'static str, value: &'static str| {
        Request::get("/health")
            .header(name, value)
            .body(Full::default())
            .unwrap()
    };
    let response = svc
        .clone()
        .oneshot(health("credits-max-cost", "abc"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = svc.oneshot(health("credits-quote", "1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let json = json_of(response).await;
    assert_eq!(json["price"], 0, "{json}");
}
