//! End to end through a real axum server on loopback: priced, held, run, settled, told.

mod http_support;
mod support;

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use http_support::*;
use support::rig::{assert_conserved, pricing, wait_until, DEADLINE};
use tokio::sync::Notify;
use tower::{Layer, ServiceExt};
use tower_credits::ledger::Configure;
use tower_credits::ledger::SettleOutcome;
use tower_credits::pricing::{Price, Pricing};
use tower_credits::{AccountSettings, Charge, CreditLayer, Ledger, MemoryLedger};
use tower_credits::{LedgerAdmin, LedgerReports};

#[derive(Clone, Default)]
struct Gates {
    /// Released by the test: lets `/v1/slow` finish and `/v1/stream` go past its first chunk.
    release: Arc<Notify>,
    /// Notified when `/v1/slow` has started.
    started: Arc<Notify>,
}

#[derive(serde::Deserialize)]
struct Generate {
    tokens: u64,
}

const ROUTES: &[(&str, u64)] = &[
    ("GET /v1/echo", 1),
    ("POST /v1/generate", 50),
    ("GET /v1/nocharge", 10),
    ("GET /v1/fail", 5),
    ("GET /v1/stream", 20),
    ("GET /v1/slow", 7),
    ("GET /v1/panic", 3),
    ("GET /v1/items/{id}", 2),
];

/// [`ROUTES`], and `GET /health` free.
fn price_list() -> Pricing {
    pricing(ROUTES).free("GET /health")
}

fn routes(gates: Gates) -> Router {
    Router::new()
        .route("/v1/echo", get(|| async { "echo" }))
        .route(
            "/v1/generate",
            post(|charge: Charge, Json(body): Json<Generate>| async move {
                // A cost past the hold is refused and records nothing: the hold is charged.
                let _ = charge.set(body.tokens);
                "generated"
            }),
        )
        .route("/v1/nocharge", get(|| async { "full price" }))
        .route(
            "/v1/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route("/v1/stream", get(stream))
        .route("/v1/slow", get(slow))
        .route(
            "/v1/panic",
            get(|| async {
                if true {
                    panic!("handler panicked on purpose");
                }
                "unreachable"
            }),
        )
        .route("/v1/items/{id}", get(|| async { "item" }))
        .route("/health", get(|| async { "ok" }))
        .with_state(gates)
}

/// Streams three chunks, each adding 2 credits; waits for the gate after the first one.
async fn stream(State(gates): State<Gates>, charge: Charge) -> Response<Body> {
    charge.defer();
    let chunks = futures_util::stream::unfold(0u32, move |i| {
        let charge = charge.clone();
        let gates = gates.clone();
        async move {
            if i == 3 {
                return None;
            }
            if i == 1 {
                gates.release.notified().await;
            }
            charge.add(2).unwrap();
            Some((
                Ok::<_, Infallible>(Bytes::from(format!("chunk{i};"))),
                i + 1,
            ))
        }
    });
    Response::new(Body::from_stream(chunks))
}

async fn slow(State(gates): State<Gates>) -> &'static str {
    gates.started.notify_one();
    gates.release.notified().await;
    "slow"
}

struct Fixture {
    ledger: MemoryLedger,
    server: Server,
    gates: Gates,
    layer: CreditLayer<MemoryLedger>,
}

async fn fixture_with(
    layer: impl FnOnce(CreditLayer<MemoryLedger>) -> CreditLayer<MemoryLedger>,
) -> Fixture {
    let ledger = MemoryLedger::new();
    let gates = Gates::default();
    let layer = layer(
        CreditLayer::new(ledger.clone())
            .pricing(price_list())
            .low_balance_threshold(100)
            .top_up_url("https://example.com/billing"),
    );
    let app = routes(gates.clone()).layer(layer.clone());
    Fixture {
        ledger,
        server: Server::start(app).await,
        gates,
        layer,
    }
}

async fn fixture() -> Fixture {
    fixture_with(|l| l).await
}

#[tokio::test]
async fn charged_request_says_cost_hold_and_remaining() {
    let f = fixture().await;
    let acct = account(&f.ledger, "acct_a", "key-a", 1000).await;
    let answer = send(&http1(), get_req(&f.server.url("/v1/echo"), Some("key-a"))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.int("credits-cost"), 1);
    assert_eq!(answer.int("credits-reserved"), 1);
    assert_eq!(answer.int("credits-remaining"), 999);
    assert_eq!(answer.header("credits-warning"), None);
    assert_eq!(available(&f.ledger, &acct).await, 999);
    let usage = f.ledger.usage(&acct).await.unwrap();
    assert_eq!(usage.by_route["/v1/echo"].calls, 1);
    assert_conserved(&f.ledger, &acct).await;
}

#[tokio::test]
async fn charge_lower_higher_and_absent() {
    let f = fixture().await;
    let acct = account(&f.ledger, "acct_b", "key-b", 1000).await;
    let url = f.server.url("/v1/generate");
    let client = http1();

    let lower = send(
        &client,
        post_json(&url, "key-b", serde_json::json!({"tokens": 12})),
    )
    .await;
    assert_eq!(
        (lower.int("credits-cost"), lower.int("credits-reserved")),
        (12, 50)
    );
    assert_eq!(lower.int("credits-remaining"), 988);

    let higher = send(
        &client,
        post_json(&url, "key-b", serde_json::json!({"tokens": 80})),
    )
    .await;
    assert_eq!(higher.status, StatusCode::OK);
    assert_eq!(
        higher.int("credits-cost"),
        50,
        "a cost past the hold is refused; the hold is charged"
    );
    assert_eq!(higher.int("credits-remaining"), 938);

    let absent = send(
        &client,
        get_req(&f.server.url("/v1/nocharge"), Some("key-b")),
    )
    .await;
    assert_eq!(absent.int("credits-cost"), 10, "no Charge::set: the price");
    assert_eq!(absent.int("credits-remaining"), 928);
    assert_eq!(available(&f.ledger, &acct).await, 928);
    assert_conserved(&f.ledger, &acct).await;
}

#[tokio::test]
async fn sequential_requests_see_exact_balances() {
    let f = fixture().await;
    let acct = account(&f.ledger, "acct_seq", "key-seq", 105).await;
    let client = http1();
    for i in 1..=10i64 {
        let answer = send(&client, get_req(&f.server.url("/v1/echo"), Some("key-seq"))).await;
        assert_eq!(answer.int("credits-remaining"), 105 - i);
        assert_eq!(available(&f.ledger, &acct).await, 105 - i);
        // Ten requests in a second are no spend history: no runway is forecast (the
        // conformance suite moves a clock past five minutes to see it appear).
        assert_eq!(answer.header("credits-runway"), None);
        // Threshold 100: the warning starts once the balance is below it.
        let remaining = 105 - i;
        match answer.header("credits-warning") {
            Some(w) => {
                assert!(remaining < 100);
                assert_eq!(
                    w,
                    format!("low-balance; remaining={remaining}; threshold=100")
                );
            }
            None => assert!(remaining >= 100),
        }
    }
}

#[tokio::test]
async fn insufficient_balance_is_a_402_problem_field_by_field() {
    let f = fixture().await;
    account(&f.ledger, "acct_poor", "key-poor", 3).await;
    let answer = send(
        &http1(),
        post_json(
            &f.server.url("/v1/generate"),
            "key-poor",
            serde_json::json!({"tokens": 1}),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        answer.header("retry-after"),
        None,
        "a 402 never says retry later"
    );
    let body = answer.json();
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys[0], "error", "the seed's field comes first");
    assert_eq!(body["error"], "Insufficient account balance");
    assert_eq!(body["title"], "Insufficient account balance");
    assert_eq!(
        body["type"],
        "urn:tower-credits:problem:insufficient-balance"
    );
    assert_eq!(body["status"], 402);
    assert_eq!(body["account"], "acct_poor");
    assert_eq!(body["required"], 50);
    assert_eq!(body["available"], 3);
    assert_eq!(body["shortfall"], 47);
    assert_eq!(body["top_up_url"], "https://example.com/billing");
    assert!(body.get("credit_limit").is_none(), "no overdraft, no field");
    assert_eq!(
        body["detail"],
        "This request costs 50 credits; 3 are available, 47 short. Top up at https://example.com/billing."
    );
}

#[tokio::test]
async fn insufficient_with_an_overdraft_counts_the_credit_limit() {
    let f = fixture().await;
    let acct = account(&f.ledger, "acct_od", "key-od", 10).await;
    f.ledger
        .configure(Configure::new(
            &acct,
            AccountSettings::new().credit_limit(30),
        ))
        .await
        .unwrap();
    let client = http1();
    // 10 + 30 overdraft = 40 spendable: a 50 hold is refused, 47 short... of 50 - 40 = 10.
    let answer = send(
        &client,
        post_json(
            &f.server.url("/v1/generate"),
            "key-od",
            serde_json::json!({"tokens": 1}),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYMENT_REQUIRED);
    let body = answer.json();
    assert_eq!(body["credit_limit"], 30);
    assert_eq!(body["available"], 10);
    assert_eq!(body["shortfall"], 10);
    // Smaller requests go into the overdraft, down to -30 and no further.
    for _ in 0..4 {
        let ok = send(
            &client,
            get_req(&f.server.url("/v1/nocharge"), Some("key-od")),
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK);
    }
    assert_eq!(available(&f.ledger, &acct).await, -30);
    let refused = send(&client, get_req(&f.server.url("/v1/echo"), Some("key-od"))).await;
    assert_eq!(refused.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(refused.json()["available"], -30);
    assert_eq!(refused.json()["shortfall"], 1);
}

#[tokio::test]
async fn every_bad_key_shape_is_a_401() {
    let f = fixture().await;
    let acct = account(&f.ledger, "acct_k", "good-key", 100).await;
    let url = f.server.url("/v1/echo");
    let client = http1();
    let long = format!("Bearer {}", "k".repeat(300));
    let shapes: Vec<(&str, Vec<&str>)> = vec![
        ("missing", vec![]),
        ("basic scheme", vec!["Basic Z29vZC1rZXk="]),
        ("empty bearer", vec!["Bearer "]),
        ("bad characters", vec!["Bearer good key"]),
        ("oversized", vec![long.as_str()]),
        ("unknown", vec!["Bearer not-a-key"]),
        ("two headers", vec!["Bearer good-key", "Bearer good-key"]),
    ];
    for (what, values) in shapes {
        let mut req = Request::get(&url);
        for v in &values {
            req = req.header("authorization", *v);
        }
        let answer = send(&client, req.body(Full::default()).unwrap()).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{what}");
        let body = answer.json();
        assert_eq!(body["status"], 401, "{what}");
        assert!(
            !body["detail"].as_str().unwrap().contains("good-key"),
            "{what}: key echoed"
        );
    }
    assert_eq!(
        available(&f.ledger, &acct).await,
        100,
        "401s charge nothing"
    );
}

#[tokio::test]
async fn free_routes_skip_the_ledger() {
    let f = fixture().await;
    let answer = send(&http1(), get_req(&f.server.url("/health"), None)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("credits-cost"), None);
}

#[tokio::test]
async fn unpriced_routes_follow_the_chosen_policy() {
    // Default: charged DEFAULT_UNPRICED (1), refunded when the route does not exist.
    let f = fixture().await;
    let acct = account(&f.ledger, "acct_u", "key-u", 10).await;
    let missing = send(&http1(), get_req(&f.server.url("/nope"), Some("key-u"))).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.int("credits-cost"), 0);
    assert_eq!(available(&f.ledger, &acct).await, 10);

    // Pass-through: no key needed, nothing billed.
    let f = fixture_with(|l| l.pricing(price_list().unpriced(Price::Free))).await;
    let missing = send(&http1(), get_req(&f.server.url("/nope"), None)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.header("credits-cost"), None);
}

#[tokio::test]
async fn layer_around_the_whole_router_matches_raw_paths() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_raw", "key-raw", 10).await;
    let layer = CreditLayer::new(ledger.clone()).pricing(price_list());
    // Wrapped around the router: no MatchedPath yet, patterns match the raw path.
    let svc = tower::ServiceExt::<Request<Body>>::map_response(
        layer.layer(routes(Gates::default())),
        |r: Response<tower_credits::ResponseBody<Body>>| r.map(Body::new),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, tower::make::Shared::new(svc))
            .await
            .unwrap();
    });
    let answer = send(
        &http1(),
        get_req(&format!("http://{addr}/v1/items/42"), Some("key-raw")),
    )
    .await;
    assert_eq!(answer.int("credits-cost"), 2);
    assert_eq!(
        ledger.usage(&acct).await.unwrap().by_route["/v1/items/{id}"].credits,
        2
    );
    task.abort();
}

#[tokio::test]
async fn failures_are_refunded_with_cost_zero() {
    let f = fixture().await;
    let acct = account(&f.ledger, "acct_f", "key-f", 100).await;
    let answer = send(&http1(), get_req(&f.server.url("/v1/fail"), Some("key-f"))).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.int("credits-cost"), 0);
    assert_eq!(answer.int("credits-reserved"), 5);
    assert_eq!(answer.int("credits-remaining"), 100);
    let b = f.ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (100, 0, 0));
}

#[tokio::test]
async fn custom_success_predicate_decides_what_is_charged() {
    let f = fixture_with(|l| {
        l.success_when(|s| s.is_success() || s == StatusCode::INTERNAL_SERVER_ERROR)
    })
    .await;
    let acct = account(&f.ledger, "acct_p", "key-p", 100).await;
    let answer = send(&http1(), get_req(&f.server.url("/v1/fail"), Some("key-p"))).await;
    assert_eq!(answer.int("credits-cost"), 5);
    assert_eq!(available(&f.ledger, &acct).await, 95);
}

#[tokio::test]
async fn a_panicking_handler_is_refunded_and_the_panic_propagates() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_panic", "key-panic", 100).await;
    let layer = CreditLayer::new(ledger.clone()).pricing(price_list());
    // CatchPanicLayer outside ours: it only answers 500 if the panic reached it.
    let app = routes(Gates::default())
        .layer(layer)
        .layer(tower_http::catch_panic::CatchPanicLayer::new());
    let server = Server::start(app).await;
    let answer = send(
        &http1(),
        get_req(&server.url("/v1/panic"), Some("key-panic")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (100, 0, 0));
}

#[tokio::test]
async fn an_inner_service_error_is_refunded_and_returned() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_err", "key-err", 100).await;
    let svc = CreditLayer::new(ledger.clone())
        .pricing(Pricing::new().route("/x", 9))
        .layer(tower::service_fn(|_: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, _>(std::io::Error::other("inner failed"))
        }));
    let err = svc
        .oneshot(get_req("http://localhost/x", Some("key-err")))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "inner failed");
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held), (100, 0));
}

#[tokio::test]
async fn a_failing_ledger_fails_closed_with_503() {
    let layer = CreditLayer::new(DownLedger).pricing(price_list());
    let server = Server::start(routes(Gates::default()).layer(layer)).await;
    let answer = send(&http1(), get_req(&server.url("/v1/echo"), Some("any-key"))).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    assert!(!text.contains("10.0.0.7"), "internals leaked: {text}");
    assert_eq!(answer.json()["status"], 503);
}

#[tokio::test]
async fn a_full_body_settles_once() {
    let f = fixture().await;
    let acct = account(&f.ledger, "acct_once", "key-once", 100).await;
    let answer = send(
        &http2(),
        get_req(&f.server.url("/v1/nocharge"), Some("key-once")),
    )
    .await;
    assert_eq!(answer.body, Bytes::from_static(b"full price"));
    assert!(f.layer.pending_settlements().drain(DEADLINE).await);
    let usage = f.ledger.usage(&acct).await.unwrap();
    assert_eq!(usage.by_route["/v1/nocharge"].calls, 1);
    assert_eq!(f.ledger.balance(&acct).await.unwrap().committed, 10);
}

#[tokio::test]
async fn a_deferred_stream_settles_once_at_the_end_with_trailers() {
    let f = fixture().await;
    let acct = account(&f.ledger, "acct_s", "key-s", 100).await;
    f.gates.release.notify_one(); // let the stream run through
    let answer = send(
        &http2(),
        get_req(&f.server.url("/v1/stream"), Some("key-s")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, Bytes::from_static(b"chunk0;chunk1;chunk2;"));
    // The head carried the hold and a lower bound; the trailers carry the final figures.
    assert_eq!(answer.int("credits-reserved"), 20);
    assert_eq!(answer.int("credits-remaining"), 80);
    assert!(answer.header("credits-hold-id").is_some());
    assert_eq!(answer.header("credits-cost"), None);
    assert_eq!(answer.trailer("credits-cost"), Some("6"));
    assert_eq!(answer.trailer("credits-remaining"), Some("94"));
    let b = f.ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (94, 0, 6));
    assert_eq!(
        f.ledger.usage(&acct).await.unwrap().by_route["/v1/stream"].calls,
        1
    );
}

#[tokio::test]
async fn a_client_that_disconnects_mid_request_is_refunded() {
    let f = fixture().await;
    let acct = account(&f.ledger, "acct_dc", "key-dc", 100).await;
    let client = http2();
    let started = f.gates.started.notified();
    let request = tokio::spawn({
        let client = client.clone();
        let url = f.server.url("/v1/slow");
        async move { client.request(get_req(&url, Some("key-dc"))).await }
    });
    started.await;
    assert_eq!(
        f.ledger.balance(&acct).await.unwrap().held,
        7,
        "held while running"
    );
    request.abort(); // the HTTP/2 stream is reset; hyper drops the service future
    let ledger = f.ledger.clone();
    let acct2 = acct.clone();
    wait_until("the hold is refunded", move || {
        let ledger = ledger.clone();
        let acct = acct2.clone();
        async move {
            let b = ledger.balance(&acct).await.unwrap();
            b.held == 0 && b.available == 100
        }
    })
    .await;
    assert_eq!(f.ledger.balance(&acct).await.unwrap().committed, 0);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_pays_what_was_streamed() {
    let f = fixture().await;
    let acct = account(&f.ledger, "acct_ms", "key-ms", 100).await;
    let response = http2()
        .request(get_req(&f.server.url("/v1/stream"), Some("key-ms")))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, Bytes::from_static(b"chunk0;"));
    drop(body); // gone after the first chunk (2 credits)
    let ledger = f.ledger.clone();
    let acct2 = acct.clone();
    wait_until("the hold settles", move || {
        let ledger = ledger.clone();
        let acct = acct2.clone();
        async move { ledger.balance(&acct).await.unwrap().held == 0 }
    })
    .await;
    let b = f.ledger.balance(&acct).await.unwrap();
    assert_eq!(
        (b.available, b.committed),
        (98, 2),
        "deferred: what the Charge said so far"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_requests_on_five_credits_exactly_five_succeed() {
    let f = fixture().await;
    let acct = account(&f.ledger, "acct_race", "key-race", 5).await;
    let client = http1();
    let url = f.server.url("/v1/echo");
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move { send(&client, get_req(&url, Some("key-race"))).await.status })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::PAYMENT_REQUIRED => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, refused), (5, 59));
    let b = f.ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (0, 0, 5));
}

#[tokio::test]
async fn charge_is_frozen_once_the_head_left() {
    let ledger = MemoryLedger::new();
    account(&ledger, "acct_fz", "key-fz", 100).await;
    let kept: Arc<std::sync::Mutex<Option<Charge>>> = Default::default();
    let keep = kept.clone();
    let app = Router::new()
        .route(
            "/v1/echo",
            get(move |charge: Charge| {
                let keep = keep.clone();
                async move {
                    *keep.lock().unwrap() = Some(charge);
                    "ok"
                }
            }),
        )
        .layer(CreditLayer::new(ledger.clone()).pricing(price_list()));
    let server = Server::start(app).await;
    send(&http1(), get_req(&server.url("/v1/echo"), Some("key-fz"))).await;
    let charge = kept.lock().unwrap().take().unwrap();
    assert_eq!(
        charge.set(0),
        Err(tower_credits::ChargeError::AlreadySettled)
    );
    // And a late settle of the same hold is a no-op that says so.
    let again = ledger
        .refund(charge.account(), charge.hold_id())
        .await
        .unwrap();
    assert_eq!(again.outcome, SettleOutcome::AlreadyCommitted);
}

#[tokio::test]
async fn price_version_is_sent_back() {
    let f = fixture_with(|l| l.pricing(price_list().version("2026-11"))).await;
    account(&f.ledger, "acct_v", "key-v", 10).await;
    let answer = send(&http1(), get_req(&f.server.url("/v1/echo"), Some("key-v"))).await;
    assert_eq!(answer.header("credits-price-version"), Some("2026-11"));
}

#[tokio::test]
async fn other_resolvers_find_the_paying_account() {
    use tower_credits::account::{AccountResolver, Unauthorized};
    use tower_credits::AccountId;
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_res", "key-res", 100).await;
    let client = http1();

    // An API key in a header of our choosing.
    let layer = CreditLayer::new(ledger.clone())
        .pricing(price_list())
        .account_resolver(AccountResolver::api_key_header("api-key"));
    let server = Server::start(routes(Gates::default()).layer(layer)).await;
    let req = Request::get(server.url("/v1/echo"))
        .header("api-key", "key-res")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client, req).await.int("credits-cost"), 1);
    // ... and a Bearer header is not read by it.
    let bearer = send(&client, get_req(&server.url("/v1/echo"), Some("key-res"))).await;
    assert_eq!(bearer.status, StatusCode::UNAUTHORIZED);

    // An AccountId put in the extensions by an upstream auth layer.
    let layer = CreditLayer::new(ledger.clone())
        .pricing(price_list())
        .account_resolver(AccountResolver::extension());
    let auth = tower::util::MapRequestLayer::new(|mut req: Request<Body>| {
        if req.headers().contains_key("x-session") {
            req.extensions_mut()
                .insert(AccountId::new("acct_res").unwrap());
        }
        req
    });
    let server = Server::start(routes(Gates::default()).layer(layer).layer(auth)).await;
    let req = Request::get(server.url("/v1/echo"))
        .header("x-session", "s1")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client, req).await.int("credits-cost"), 1);
    let anonymous = send(&client, get_req(&server.url("/v1/echo"), None)).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // A closure.
    let layer = CreditLayer::new(ledger.clone())
        .pricing(price_list())
        .account_resolver(AccountResolver::from_fn(|req| {
            let tenant = req.uri.query().and_then(|q| q.strip_prefix("tenant="));
            AccountId::new(tenant.ok_or(Unauthorized::Missing)?)
                .map_err(|_| Unauthorized::InvalidAccount)
        }));
    let server = Server::start(routes(Gates::default()).layer(layer)).await;
    let ok = send(
        &client,
        get_req(&server.url("/v1/echo?tenant=acct_res"), None),
    )
    .await;
    assert_eq!(ok.int("credits-cost"), 1);
    assert_eq!(available(&ledger, &acct).await, 97);
}

#[tokio::test]
async fn a_grpc_content_type_on_an_http_route_is_still_charged() {
    let f = fixture().await;
    let acct = account(&f.ledger, "acct_ct", "key-ct", 100).await;
    let req = Request::post(f.server.url("/v1/generate"))
        .header("authorization", "Bearer key-ct")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"{\"tokens\": 12}")))
        .unwrap();
    let answer = send(&http1(), req).await;
    // axum rejects the body (wrong content type): a 4xx, refunded...
    assert!(answer.status.is_client_error());
    assert_eq!(available(&f.ledger, &acct).await, 100);
    // ...but a route that answers 200 is charged by its HTTP status, not by a grpc-status
    // the response never carries.
    let req = Request::get(f.server.url("/v1/nocharge"))
        .header("authorization", "Bearer key-ct")
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    let answer = send(&http1(), req).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.int("credits-cost"), 10);
    assert_eq!(available(&f.ledger, &acct).await, 90);
}

#[tokio::test]
async fn a_deferred_charge_is_refunded_when_the_caller_leaves_before_the_head() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_dh", "key-dh", 100).await;
    let started = Arc::new(Notify::new());
    let entered = started.clone();
    let svc = CreditLayer::new(ledger.clone())
        .pricing(Pricing::new().route("/x", 30))
        .layer(tower::service_fn(move |req: Request<Full<Bytes>>| {
            let entered = entered.clone();
            async move {
                req.extensions().get::<Charge>().unwrap().defer();
                entered.notify_one();
                std::future::pending::<()>().await;
                Ok::<Response<Full<Bytes>>, Infallible>(Response::new(Full::default()))
            }
        }));
    let call = tokio::spawn(svc.oneshot(get_req("http://localhost/x", Some("key-dh"))));
    started.notified().await;
    call.abort();
    let _ = call.await;
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (100, 0, 0));
}

/// A failing status is refunded when the handler metered nothing, and charged what it
/// metered when it did (a handler that wants its failure free says `set(0)`), even if the
/// body is dropped.
#[tokio::test]
async fn a_failed_response_is_refunded_unless_the_handler_metered_it() {
    for (metered, cost) in [(None, 0), (Some(7), 7), (Some(0), 0)] {
        let ledger = MemoryLedger::new();
        let acct = account(&ledger, "acct_fd", "key-fd", 100).await;
        let svc = CreditLayer::new(ledger.clone())
            .pricing(Pricing::new().route("/x", 30))
            .layer(tower::service_fn(
                move |req: Request<Full<Bytes>>| async move {
                    let charge = req.extensions().get::<Charge>().unwrap().clone();
                    charge.defer();
                    if let Some(n) = metered {
                        charge.set(n).unwrap();
                    }
                    let mut response =
                        Response::new(Body::from_stream(futures_util::stream::pending::<
                            Result<Bytes, Infallible>,
                        >()));
                    *response.status_mut() = StatusCode::BAD_GATEWAY;
                    Ok::<_, Infallible>(response)
                },
            ));
        let response = svc
            .oneshot(get_req("http://localhost/x", Some("key-fd")))
            .await
            .unwrap();
        assert_eq!(
            response.headers()["credits-cost"],
            cost.to_string().as_str()
        );
        drop(response);
        let b = ledger.balance(&acct).await.unwrap();
        assert_eq!(
            (b.available, b.held, b.committed),
            (100 - cost as i64, 0, cost),
            "metered {metered:?}"
        );
    }
}
