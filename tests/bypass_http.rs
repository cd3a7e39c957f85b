//! HTTP billing bypasses, end to end through a real axum server on loopback: the protocol is
//! server configuration, never a header a caller sends; HEAD is priced as the GET of the
//! same path; a path priced under another method never falls through to free pass-through.

mod http_support;
mod support;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::Full;
use http_support::*;
use support::rig::assert_conserved;
use tower_credits::pricing::{Price, Pricing};
use tower_credits::{CreditLayer, MemoryLedger};

const CREDIT_HEADERS: [&str; 3] = ["credits-cost", "credits-reserved", "credits-remaining"];

/// Answers 200 with the request's `Content-Type` as its own, and no `grpc-status`: what a
/// caller who claims to speak gRPC would like the layer to misread as "no status yet".
async fn reflect(headers: HeaderMap) -> impl axum::response::IntoResponse {
    let content_type = headers
        .get("content-type")
        .cloned()
        .unwrap_or_else(|| http::HeaderValue::from_static("text/plain"));
    ([("content-type", content_type)], "reflected")
}

fn routes() -> Router {
    Router::new()
        .route("/v1/reflect", get(reflect).post(reflect))
        .route("/v1/echo", get(|| async { "echo" }))
        .route("/v1/x", get(|| async { "x" }))
        .route("/health", get(|| async { "ok" }))
}

fn price_list() -> Pricing {
    Pricing::new()
        .route("GET /v1/reflect", 7)
        .route("POST /v1/reflect", 7)
        .route("GET /v1/echo", 3)
        .route("GET /v1/x", 3)
        .route("HEAD /v1/x", 1)
        .free("GET /health")
}

struct Fixture {
    ledger: MemoryLedger,
    server: Server,
}

async fn fixture(pricing: Pricing) -> Fixture {
    let ledger = MemoryLedger::new();
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing)
        .top_up_url("https://example.com/billing");
    Fixture {
        server: Server::start(routes().layer(layer)).await,
        ledger,
    }
}

fn request(method: Method, url: &str, key: Option<&str>, grpc: bool) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(url);
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    if grpc {
        req = req
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    req.body(Full::default()).unwrap()
}

// ---- the protocol is configuration, not a header ------------------------------------------

#[tokio::test]
async fn a_grpc_content_type_reflected_in_a_200_is_charged_by_the_http_status() {
    let f = fixture(price_list()).await;
    let acct = account(&f.ledger, "acct_rf", "key-rf", 100).await;
    for (client, method) in [(http1(), Method::GET), (http2(), Method::POST)] {
        let answer = send(
            &client,
            request(
                method.clone(),
                &f.server.url("/v1/reflect"),
                Some("key-rf"),
                true,
            ),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{method}");
        assert_eq!(answer.header("content-type"), Some("application/grpc"));
        assert_eq!(answer.header("grpc-status"), None);
        assert_eq!(answer.trailer("grpc-status"), None);
        // Charged in the head, as any HTTP 200 with a fixed price is: not held until a
        // grpc-status that never comes, not refunded at the end of the body.
        assert_eq!(
            answer.int("credits-cost"),
            7,
            "{method}: {:?}",
            answer.headers
        );
        assert_eq!(answer.int("credits-reserved"), 7);
    }
    let b = assert_conserved(&f.ledger, &acct).await;
    assert_eq!((b.available, b.held, b.committed), (86, 0, 14));
}

#[tokio::test]
async fn a_poor_caller_claiming_grpc_on_an_http_route_gets_a_402_problem() {
    let f = fixture(price_list()).await;
    let acct = account(&f.ledger, "acct_pg", "key-pg", 2).await;
    for (what, grpc) in [("grpc content-type", true), ("plain", false)] {
        let answer = send(
            &http2(),
            request(
                Method::GET,
                &f.server.url("/v1/reflect"),
                Some("key-pg"),
                grpc,
            ),
        )
        .await;
        assert_eq!(answer.status, StatusCode::PAYMENT_REQUIRED, "{what}");
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json"),
            "{what}"
        );
        assert_eq!(answer.header("cache-control"), Some("no-store"), "{what}");
        assert_eq!(answer.header("grpc-status"), None, "{what}");
        let body = answer.json();
        assert_eq!(body["status"], 402, "{what}");
        assert_eq!(body["required"], 7, "{what}");
        assert_eq!(body["available"], 2, "{what}");
    }
    let b = assert_conserved(&f.ledger, &acct).await;
    assert_eq!((b.available, b.held, b.committed), (2, 0, 0));
}

#[tokio::test]
async fn a_grpc_content_type_does_not_turn_a_401_into_a_grpc_status() {
    let f = fixture(price_list()).await;
    let answer = send(
        &http1(),
        request(Method::GET, &f.server.url("/v1/reflect"), None, true),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.header("grpc-status"), None);
    assert_eq!(answer.json()["status"], 401);
}

// ---- HEAD is priced as GET -----------------------------------------------------------------

#[tokio::test]
async fn head_of_a_free_get_passes_without_a_key() {
    let f = fixture(price_list()).await;
    let answer = send(
        &http1(),
        request(Method::HEAD, &f.server.url("/health"), None, false),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    for name in CREDIT_HEADERS {
        assert_eq!(answer.header(name), None, "{name}");
    }
}

#[tokio::test]
async fn head_of_a_priced_get_is_held_and_charged_the_get_price() {
    let f = fixture(price_list()).await;
    let acct = account(&f.ledger, "acct_hd", "key-hd", 100).await;
    let answer = send(
        &http1(),
        request(
            Method::HEAD,
            &f.server.url("/v1/echo"),
            Some("key-hd"),
            false,
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.is_empty());
    assert_eq!(
        answer.int("credits-reserved"),
        3,
        "the GET price, not the default"
    );
    assert_eq!(answer.int("credits-cost"), 3);
    assert_eq!(answer.int("credits-remaining"), 97);
    // Without a key it is refused like the GET, not passed through.
    let anonymous = send(
        &http1(),
        request(Method::HEAD, &f.server.url("/v1/echo"), None, false),
    )
    .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let b = assert_conserved(&f.ledger, &acct).await;
    assert_eq!((b.available, b.held, b.committed), (97, 0, 3));
}

#[tokio::test]
async fn an_explicit_head_rule_wins_over_the_get_price() {
    let f = fixture(price_list()).await;
    let acct = account(&f.ledger, "acct_hx", "key-hx", 100).await;
    let head = send(
        &http2(),
        request(Method::HEAD, &f.server.url("/v1/x"), Some("key-hx"), false),
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.int("credits-reserved"), 1);
    assert_eq!(head.int("credits-cost"), 1);
    let get = send(
        &http2(),
        request(Method::GET, &f.server.url("/v1/x"), Some("key-hx"), false),
    )
    .await;
    assert_eq!(get.int("credits-cost"), 3);
    let b = assert_conserved(&f.ledger, &acct).await;
    assert_eq!((b.available, b.held, b.committed), (96, 0, 4));
}

// ---- a path priced under another method is never free -------------------------------------

#[tokio::test]
async fn another_method_on_a_priced_path_is_held_under_free_unpriced_and_refunded_by_the_405() {
    let f = fixture(price_list().unpriced(Price::Free)).await;
    let acct = account(&f.ledger, "acct_405", "key-405", 10).await;
    let url = f.server.url("/v1/echo");

    let anonymous = send(&http1(), request(Method::POST, &url, None, false)).await;
    assert_eq!(
        anonymous.status,
        StatusCode::UNAUTHORIZED,
        "held (a key is needed), not passed through"
    );

    let answer = send(
        &http1(),
        request(Method::POST, &url, Some("key-405"), false),
    )
    .await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.int("credits-reserved"), 1, "the unpriced default");
    assert_eq!(answer.int("credits-cost"), 0, "refunded by the 405");
    assert_eq!(answer.int("credits-remaining"), 10);

    // A path priced nowhere still passes through under `Price::Free`.
    let nowhere = send(
        &http1(),
        request(Method::POST, &f.server.url("/nope"), None, false),
    )
    .await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    assert_eq!(nowhere.header("credits-cost"), None);

    let b = assert_conserved(&f.ledger, &acct).await;
    assert_eq!((b.available, b.held, b.committed), (10, 0, 0));
}
