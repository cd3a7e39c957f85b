//! The admin API end to end, on the embedded ledger and on a real `redis-server`: the whole
//! app (a billed route, the credit layer, the admin router nested after it) driven through
//! axum, every pinned route and every refusal, and nothing written by a refusal.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::redis::RedisServer;
use tower::ServiceExt;
use tower_credits::account::AccountResolver;
use tower_credits::admin::{AdminRouter, AdminToken};
use tower_credits::ledger::MAX_AMOUNT;
use tower_credits::pricing::Pricing;
use tower_credits::{
    AccountId, ApiKeyHash, CreditLayer, LedgerAdmin, LedgerReports, MemoryLedger, RedisLedger,
};

const TOKEN: &str = "test-admin-token-0123456789";

/// The app a user builds: one billed route, then the admin router outside the layer.
/// Keys are not cached, so a revoked key stops working at once.
fn app<L: LedgerAdmin + LedgerReports>(ledger: L) -> Router {
    let credits = CreditLayer::new(ledger.clone())
        .pricing(Pricing::new().route("GET /v1/echo", 1))
        .account_resolver(AccountResolver::api_key().key_ttl(Duration::ZERO, Duration::ZERO));
    Router::new()
        .route("/v1/echo", get(|| async { "echo" }))
        .layer(credits)
        .nest(
            "/admin",
            AdminRouter::new(ledger, AdminToken::new(TOKEN).unwrap()).into_router(),
        )
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Value,
}

impl Answer {
    /// Asserts an RFC 9457 problem of `status` whose `type` ends in `slug`.
    #[track_caller]
    fn problem(&self, status: StatusCode, slug: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json",
            "body: {}",
            self.body
        );
        assert_eq!(
            self.body["type"],
            format!("urn:tower-credits:problem:{slug}"),
            "body: {}",
            self.body
        );
        assert_eq!(self.body["status"], status.as_u16());
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
    }
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn admin(method: Method, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("/admin{path}"))
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
}

async fn get_json(app: &Router, path: &str) -> Answer {
    send(app, admin(Method::GET, path).body(Body::empty()).unwrap()).await
}

async fn send_json(app: &Router, method: Method, path: &str, body: &str) -> Answer {
    let request = admin(method, path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    send(app, request).await
}

async fn top_up(app: &Router, account: &str, amount: Value, key: &str) -> Answer {
    let body = json!({ "amount": amount, "idempotency_key": key }).to_string();
    send_json(
        app,
        Method::POST,
        &format!("/accounts/{account}/top-ups"),
        &body,
    )
    .await
}

fn acct(id: &str) -> AccountId {
    AccountId::new(id).unwrap()
}

async fn redis_ledger(server: &RedisServer) -> RedisLedger {
    RedisLedger::builder()
        .url(server.url())
        .call_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("connect to the test redis-server")
}

/// Each scenario runs on both ledgers.
macro_rules! on_both_ledgers {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(tower_credits::MemoryLedger::new()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let server = crate::support::redis::RedisServer::start();
                    super::$scenario(super::redis_ledger(&server).await).await;
                }
            )*
        }
    };
}

on_both_ledgers!(
    guard,
    account_reads,
    top_ups,
    top_up_refusals_write_nothing,
    settings,
    api_keys,
    malformed_requests,
);

async fn guard<L: LedgerAdmin + LedgerReports>(ledger: L) {
    let app = app(ledger);
    let cases: [(&str, Option<String>); 5] = [
        ("/admin/accounts/acct_a", None),
        ("/admin/accounts/acct_a", Some(format!("Bearer {TOKEN}x"))),
        (
            "/admin/accounts/acct_a",
            Some("Bearer wrong-token-0123456789".into()),
        ),
        ("/admin/accounts/acct_a", Some(format!("Basic {TOKEN}"))),
        // An unknown path is refused before routing: no stranger learns which exist.
        ("/admin/no/such/path", None),
    ];
    for (path, authorization) in cases {
        let mut request = Request::get(path);
        if let Some(value) = &authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let answer = send(&app, request.body(Body::empty()).unwrap()).await;
        answer.problem(StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(
            answer.headers[header::WWW_AUTHENTICATE],
            "Bearer",
            "{path} {authorization:?}"
        );
    }
    // The admin token is not an API key: the billed route refuses it.
    let echo = Request::get("/v1/echo")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, echo).await.status, StatusCode::UNAUTHORIZED);
    // With the token, the routes answer, unbilled (the layer would want an API key).
    get_json(&app, "/accounts/acct_a")
        .await
        .problem(StatusCode::NOT_FOUND, "unknown-account");
    get_json(&app, "/no/such/path")
        .await
        .problem(StatusCode::NOT_FOUND, "not-found");
    send(
        &app,
        admin(Method::DELETE, "/accounts/acct_a")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
}

async fn account_reads<L: LedgerAdmin + LedgerReports>(ledger: L) {
    let app = app(ledger.clone());
    let unknown = get_json(&app, "/accounts/acct_new").await;
    unknown.problem(StatusCode::NOT_FOUND, "unknown-account");
    assert_eq!(unknown.body["account"], "acct_new");

    assert_eq!(
        top_up(&app, "acct_new", json!(100), "pay-1").await.status,
        StatusCode::OK
    );
    let answer = get_json(&app, "/accounts/acct_new").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.body,
        json!({
            "account": "acct_new",
            "available": 100,
            "held": 0,
            "committed": 0,
            "credit_limit": 0,
            "thresholds": [],
        })
    );
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
}

async fn top_ups<L: LedgerAdmin + LedgerReports>(ledger: L) {
    let app = app(ledger.clone());
    let first = top_up(&app, "acct_t", json!(250), "pay-250").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.body,
        json!({"account": "acct_t", "amount": 250, "replayed": false, "available": 250})
    );

    // A replay answers the first result and credits nothing.
    let replay = top_up(&app, "acct_t", json!(250), "pay-250").await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(
        replay.body,
        json!({"account": "acct_t", "amount": 250, "replayed": true, "available": 250})
    );
    assert_eq!(
        ledger.balance(&acct("acct_t")).await.unwrap().available,
        250
    );

    // The same key with another amount, or on another account: 409, nothing credited.
    let other_amount = top_up(&app, "acct_t", json!(999), "pay-250").await;
    other_amount.problem(StatusCode::CONFLICT, "top-up-conflict");
    assert_eq!(other_amount.body["first_amount"], 250);
    let other_account = top_up(&app, "acct_u", json!(250), "pay-250").await;
    other_account.problem(StatusCode::CONFLICT, "top-up-conflict");
    assert_eq!(other_account.body["claimed_by"], "acct_t");
    assert_eq!(
        ledger.balance(&acct("acct_t")).await.unwrap().topped_up,
        250
    );
    get_json(&app, "/accounts/acct_u")
        .await
        .problem(StatusCode::NOT_FOUND, "unknown-account");

    // The largest amount a ledger takes is accepted.
    let max = top_up(&app, "acct_max", json!(MAX_AMOUNT), "pay-max").await;
    assert_eq!(max.status, StatusCode::OK, "{}", max.body);
    assert_eq!(max.body["available"], MAX_AMOUNT);
    // One more credit would take the total past it: refused, nothing written.
    top_up(&app, "acct_max", json!(1), "pay-max-plus-1")
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-input");
    let balance = ledger.balance(&acct("acct_max")).await.unwrap();
    assert_eq!(balance.topped_up, MAX_AMOUNT);
    // …and the refused key stayed free.
    assert_eq!(
        top_up(&app, "acct_t", json!(1), "pay-max-plus-1")
            .await
            .status,
        StatusCode::OK
    );
}

async fn top_up_refusals_write_nothing<L: LedgerAdmin + LedgerReports>(ledger: L) {
    let app = app(ledger.clone());
    assert_eq!(
        top_up(&app, "acct_r", json!(10), "seed").await.status,
        StatusCode::OK
    );
    let path = "/accounts/acct_r/top-ups";
    let over = (MAX_AMOUNT + 1).to_string();
    let invalid_amounts = [
        r#"{"amount": -5, "idempotency_key": "k1"}"#.to_owned(),
        r#"{"amount": 0, "idempotency_key": "k2"}"#.to_owned(),
        format!(r#"{{"amount": {over}, "idempotency_key": "k3"}}"#),
        r#"{"amount": 18446744073709551616, "idempotency_key": "k4"}"#.to_owned(),
        r#"{"amount": 1e300, "idempotency_key": "k5"}"#.to_owned(),
        r#"{"amount": -1e300, "idempotency_key": "k6"}"#.to_owned(),
        r#"{"amount": 2.5, "idempotency_key": "k7"}"#.to_owned(),
        r#"{"amount": "10", "idempotency_key": "k8"}"#.to_owned(),
        r#"{"amount": true, "idempotency_key": "k9"}"#.to_owned(),
    ];
    for body in &invalid_amounts {
        let answer = send_json(&app, Method::POST, path, body).await;
        answer.problem(StatusCode::BAD_REQUEST, "invalid-field");
        assert_eq!(answer.body["field"], "amount", "{body}");
    }
    // A missing (or null) key or amount: 422.
    for (body, field) in [
        (r#"{"amount": 10}"#, "idempotency_key"),
        (
            r#"{"amount": 10, "idempotency_key": null}"#,
            "idempotency_key",
        ),
        (r#"{"idempotency_key": "k10"}"#, "amount"),
        (r#"{}"#, "amount"),
    ] {
        let answer = send_json(&app, Method::POST, path, body).await;
        answer.problem(StatusCode::UNPROCESSABLE_ENTITY, "missing-field");
        assert_eq!(answer.body["field"], field, "{body}");
    }
    // A key that is not a string, or not a valid payment id.
    send_json(
        &app,
        Method::POST,
        path,
        r#"{"amount": 10, "idempotency_key": 7}"#,
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "invalid-field");
    send_json(
        &app,
        Method::POST,
        path,
        r#"{"amount": 10, "idempotency_key": "a\nb"}"#,
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "invalid-input");
    send_json(
        &app,
        Method::POST,
        path,
        r#"{"amount": 10, "idempotency_key": ""}"#,
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "invalid-input");
    // A field the route does not know (a typo must not be ignored).
    let typo = send_json(
        &app,
        Method::POST,
        path,
        r#"{"amount": 10, "idempotency_key": "k11", "acount": "x"}"#,
    )
    .await;
    typo.problem(StatusCode::UNPROCESSABLE_ENTITY, "unknown-field");
    assert_eq!(typo.body["field"], "acount");

    let balance = ledger.balance(&acct("acct_r")).await.unwrap();
    assert_eq!(
        (balance.available, balance.topped_up),
        (10, 10),
        "nothing credited"
    );
    // None of the refused keys was taken: each still credits.
    for key in ["k1", "k3", "k10", "k11"] {
        assert_eq!(
            top_up(&app, "acct_r", json!(1), key).await.status,
            StatusCode::OK,
            "{key}"
        );
    }
    // A refused top-up of an account that does not exist does not create it.
    send_json(
        &app,
        Method::POST,
        "/accounts/acct_none/top-ups",
        r#"{"amount": 0, "idempotency_key": "z"}"#,
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "invalid-field");
    get_json(&app, "/accounts/acct_none")
        .await
        .problem(StatusCode::NOT_FOUND, "unknown-account");
}

async fn settings<L: LedgerAdmin + LedgerReports>(ledger: L) {
    let app = app(ledger.clone());
    let path = "/accounts/acct_s/settings";
    let answer = send_json(
        &app,
        Method::PUT,
        path,
        r#"{"credit_limit": 50, "thresholds": [100, "10%"], "runway_horizon_secs": 3600}"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"account": "acct_s", "credit_limit": 50, "thresholds": [100, "10%"], "runway_horizon_secs": 3600})
    );
    assert_eq!(
        top_up(&app, "acct_s", json!(5000), "pay-s").await.status,
        StatusCode::OK
    );
    let read = get_json(&app, "/accounts/acct_s").await;
    assert_eq!(read.body["credit_limit"], 50);
    // 10% of the last top-up (5000) is 500; highest first.
    assert_eq!(read.body["thresholds"], json!([500, 100]));
    let balance = ledger.balance(&acct("acct_s")).await.unwrap();
    assert_eq!(balance.runway_horizon, Duration::from_secs(3600));

    // Refusals change nothing.
    for (body, status, slug) in [
        (
            r#"{"thresholds": ["150%"]}"#,
            StatusCode::BAD_REQUEST,
            "invalid-field",
        ),
        (
            r#"{"thresholds": ["ten%"]}"#,
            StatusCode::BAD_REQUEST,
            "invalid-field",
        ),
        (
            r#"{"thresholds": [-1]}"#,
            StatusCode::BAD_REQUEST,
            "invalid-field",
        ),
        (
            r#"{"thresholds": 100}"#,
            StatusCode::BAD_REQUEST,
            "invalid-field",
        ),
        (
            r#"{"thresholds": [1,2,3,4,5,6,7,8,9]}"#,
            StatusCode::BAD_REQUEST,
            "invalid-input",
        ),
        (
            r#"{"credit_limit": -1}"#,
            StatusCode::BAD_REQUEST,
            "invalid-field",
        ),
        (
            r#"{"credit_limit": 9007199254740992}"#,
            StatusCode::BAD_REQUEST,
            "invalid-field",
        ),
        (
            r#"{"runway_horizon_secs": 999999999}"#,
            StatusCode::BAD_REQUEST,
            "invalid-field",
        ),
        (
            r#"{"runway_horizon_secs": -3}"#,
            StatusCode::BAD_REQUEST,
            "invalid-field",
        ),
        (
            r#"{"credit_limit": 1, "overdraft": 2}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-field",
        ),
        (r#"[]"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
    ] {
        let answer = send_json(&app, Method::PUT, path, body).await;
        answer.problem(status, slug);
    }
    assert_eq!(ledger.balance(&acct("acct_s")).await.unwrap(), balance);

    // PUT replaces: a field left out takes its default.
    let answer = send_json(&app, Method::PUT, path, "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["credit_limit"], 0);
    assert_eq!(answer.body["thresholds"], json!([]));
    assert_eq!(answer.body["runway_horizon_secs"], 86_400);
}

async fn api_keys<L: LedgerAdmin + LedgerReports>(ledger: L) {
    let app = app(ledger.clone());
    send(
        &app,
        admin(Method::POST, "/accounts/acct_k/keys")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .problem(StatusCode::NOT_FOUND, "unknown-account");
    assert_eq!(
        top_up(&app, "acct_k", json!(10), "pay-k").await.status,
        StatusCode::OK
    );

    let created = send(
        &app,
        admin(Method::POST, "/accounts/acct_k/keys")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.headers[header::CACHE_CONTROL], "no-store");
    let key = created.body["key"].as_str().unwrap().to_owned();
    let hash = created.body["hash"].as_str().unwrap().to_owned();
    assert!(key.starts_with("tck_") && key.len() == 4 + 64, "{key}");
    assert_eq!(
        hash,
        ApiKeyHash::of(&key).to_hex(),
        "the hash is the key's SHA-256"
    );
    assert_eq!(created.body["account"], "acct_k");
    // The ledger knows the key only by its hash.
    assert_eq!(
        ledger.lookup_api_key(&ApiKeyHash::of(&key)).await.unwrap(),
        Some(acct("acct_k"))
    );
    // A second key is another key.
    let second = send(
        &app,
        admin(Method::POST, "/accounts/acct_k/keys")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_ne!(second.body["key"], created.body["key"]);

    // The key bills the account through the layer.
    let echo = || {
        Request::get("/v1/echo")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&app, echo()).await.status, StatusCode::OK);
    // The commit goes out with the response, not before it.
    support::rig::wait_until("the echo's commit", || {
        let ledger = ledger.clone();
        async move { ledger.balance(&acct("acct_k")).await.unwrap().committed == 1 }
    })
    .await;

    // Revoked by its hash: 204, then the key is refused; a second revoke is 404.
    let revoke = || {
        admin(Method::DELETE, &format!("/keys/{hash}"))
            .body(Body::empty())
            .unwrap()
    };
    let revoked = send(&app, revoke()).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_eq!(
        ledger.lookup_api_key(&ApiKeyHash::of(&key)).await.unwrap(),
        None
    );
    assert_eq!(send(&app, echo()).await.status, StatusCode::UNAUTHORIZED);
    send(&app, revoke())
        .await
        .problem(StatusCode::NOT_FOUND, "unknown-key");
    for bad in ["abc", "zz", &"g".repeat(64)] {
        send(
            &app,
            admin(Method::DELETE, &format!("/keys/{bad}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-key-hash");
    }
}

async fn malformed_requests<L: LedgerAdmin + LedgerReports>(ledger: L) {
    let app = app(ledger.clone());
    let path = "/accounts/acct_m/top-ups";
    // Not JSON, truncated JSON, JSON that is not an object, no content type.
    send_json(&app, Method::POST, path, "{not json")
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-body");
    send_json(&app, Method::POST, path, r#"{"amount": 1"#)
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-body");
    send_json(&app, Method::POST, path, "[1, 2]")
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    send_json(&app, Method::POST, path, "")
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-body");
    let untyped = admin(Method::POST, path)
        .body(Body::from(r#"{"amount": 1, "idempotency_key": "k"}"#))
        .unwrap();
    send(&app, untyped)
        .await
        .problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid-body");
    // Bad account ids: a hash-tag brace, a space, too long, non-ASCII.
    let long = "a".repeat(129);
    for bad in ["acct%7Bx%7D", "acct%20x", long.as_str(), "%C3%A9t%C3%A9"] {
        get_json(&app, &format!("/accounts/{bad}"))
            .await
            .problem(StatusCode::BAD_REQUEST, "invalid-account-id");
        send_json(
            &app,
            Method::POST,
            &format!("/accounts/{bad}/top-ups"),
            r#"{"amount": 1, "idempotency_key": "k"}"#,
        )
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-account-id");
    }
    // Invalid percent-encoding in the path.
    get_json(&app, "/accounts/%FF%FE")
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-path");
    // None of it wrote anything.
    get_json(&app, "/accounts/acct_m")
        .await
        .problem(StatusCode::NOT_FOUND, "unknown-account");
}

/// `without_token`: the user's own auth layer guards the router instead.
#[tokio::test]
async fn own_auth_layer_instead_of_a_token() {
    async fn only_ops(
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        if request
            .headers()
            .get("x-ops-team")
            .is_some_and(|v| v == "yes")
        {
            next.run(request).await
        } else {
            axum::response::IntoResponse::into_response(StatusCode::FORBIDDEN)
        }
    }
    let ledger = MemoryLedger::new();
    let admin_router = AdminRouter::without_token(ledger.clone())
        .into_router()
        .layer(axum::middleware::from_fn(only_ops));
    let app = Router::new().nest("/admin", admin_router);
    let request = |ops: bool| {
        let mut builder = Request::post("/admin/accounts/acct_o/top-ups")
            .header(header::CONTENT_TYPE, "application/json");
        if ops {
            builder = builder.header("x-ops-team", "yes");
        }
        builder
            .body(Body::from(r#"{"amount": 7, "idempotency_key": "o-1"}"#))
            .unwrap()
    };
    assert_eq!(
        send(&app, request(false)).await.status,
        StatusCode::FORBIDDEN
    );
    let answer = send(&app, request(true)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(ledger.balance(&acct("acct_o")).await.unwrap().available, 7);
}

/// A store that cannot be reached: `503` problem JSON with `Retry-After`, on every route
/// that calls it.
#[tokio::test]
async fn ledger_down_is_503() {
    let mut server = RedisServer::start();
    let ledger = RedisLedger::builder()
        .url(server.url())
        .call_timeout(Duration::from_millis(500))
        .build()
        .await
        .expect("connect to the test redis-server");
    let app = app(ledger);
    assert_eq!(
        top_up(&app, "acct_d", json!(5), "pay-d").await.status,
        StatusCode::OK
    );
    server.kill();
    let answers = [
        get_json(&app, "/accounts/acct_d").await,
        top_up(&app, "acct_d", json!(5), "pay-d2").await,
        send_json(&app, Method::PUT, "/accounts/acct_d/settings", "{}").await,
        send(
            &app,
            admin(Method::POST, "/accounts/acct_d/keys")
                .body(Body::empty())
                .unwrap(),
        )
        .await,
        send(
            &app,
            admin(Method::DELETE, &format!("/keys/{}", "0".repeat(64)))
                .body(Body::empty())
                .unwrap(),
        )
        .await,
    ];
    for answer in answers {
        answer.problem(StatusCode::SERVICE_UNAVAILABLE, "ledger-unavailable");
        assert_eq!(answer.headers[header::RETRY_AFTER], "1");
    }
}

/// A body past axum's limit (2 MB): `413` problem JSON, nothing credited.
#[tokio::test]
async fn oversized_body_is_413() {
    let ledger = MemoryLedger::new();
    let app = app(ledger.clone());
    let padding = "x".repeat(3 * 1024 * 1024);
    let body = format!(r#"{{"amount": 5, "idempotency_key": "big", "pad": "{padding}"}}"#);
    send_json(&app, Method::POST, "/accounts/acct_big/top-ups", &body)
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE, "invalid-body");
    assert!(
        ledger.balance(&acct("acct_big")).await.is_err(),
        "nothing written"
    );
}
