//! Forecasts over real HTTP (and gRPC): a quote (`credits-quote: 1`) answers what a call
//! would hold without running it or touching a balance, and says exactly what the real call
//! then does; a spend cap (`credits-max-cost: N`) lowers a ranged route's hold or refuses
//! `412` before the handler runs; the readout (`GET /v1/credits`, `Price::Authenticated`)
//! tells the caller its balance and spend by route, for free.
//!
//! The quote and the readout run on the embedded `MemoryLedger` and on a `RedisLedger`
//! against a real `redis-server` (`tests/support/redis.rs`), with one generic body each.

#[path = "../examples/grpc/echo.rs"]
mod echo;
mod http_support;
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use http_support::*;
use serde_json::{json, Value};
use support::redis::RedisServer;
use support::rig::{assert_conserved, wait_until};
use tower_credits::ledger::{Configure, MAX_AMOUNT};
use tower_credits::pricing::Pricing;
use tower_credits::readout::CreditsReadout;
use tower_credits::{
    AccountId, AccountSettings, ApiKeyHash, Balance, Charge, CreditLayer, Ledger, LedgerAdmin,
    LedgerReports, MemoryLedger, RedisLedger, TopUp,
};

/// A ledger the generic test bodies run on.
trait TestLedger: Ledger + LedgerAdmin + LedgerReports {}
impl<L: Ledger + LedgerAdmin + LedgerReports> TestLedger for L {}

/// How many times each handler ran: a quote or a refusal must leave these alone.
#[derive(Clone, Default)]
struct Runs {
    echo: Arc<AtomicU64>,
    generate: Arc<AtomicU64>,
    fixed: Arc<AtomicU64>,
    big: Arc<AtomicU64>,
    health: Arc<AtomicU64>,
}

impl Runs {
    fn total(&self) -> u64 {
        [
            &self.echo,
            &self.generate,
            &self.fixed,
            &self.big,
            &self.health,
        ]
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .sum()
    }
}

#[derive(serde::Deserialize)]
struct Generate {
    tokens: u64,
}

/// The price list every fixture uses: `/v1/generate` holds 50 and runs with as little as
/// 10; `/v1/fixed` always holds 30; `/v1/big` costs more than any account here has.
fn price_list() -> Pricing {
    Pricing::new()
        .route("GET /v1/echo", 1)
        .route("POST /v1/generate", 50)
        .min_price(10)
        .route("GET /v1/fixed", 30)
        .route("GET /v1/big", 500)
        .authenticated("GET /v1/credits")
        .free("GET /health")
}

fn app<L: TestLedger>(ledger: L, runs: Runs, layer: CreditLayer<L>) -> Router {
    let (echo, generate, fixed, big, health) = (
        runs.echo.clone(),
        runs.generate.clone(),
        runs.fixed.clone(),
        runs.big.clone(),
        runs.health.clone(),
    );
    Router::new()
        .route(
            "/v1/echo",
            get(move || async move {
                echo.fetch_add(1, Ordering::SeqCst);
                "echo"
            }),
        )
        .route(
            "/v1/generate",
            // As the quickstart's generate: charges the tokens, at most what is held, and
            // says what it was given to spend.
            post(
                move |charge: Charge, Json(body): Json<Generate>| async move {
                    generate.fetch_add(1, Ordering::SeqCst);
                    let tokens = body.tokens.min(charge.reserved());
                    charge.set(tokens).unwrap();
                    Json(json!({
                        "reserved": charge.reserved(),
                        "generated_tokens": tokens,
                    }))
                },
            ),
        )
        .route(
            "/v1/fixed",
            get(move || async move {
                fixed.fetch_add(1, Ordering::SeqCst);
                "fixed"
            }),
        )
        .route(
            "/v1/big",
            get(move || async move {
                big.fetch_add(1, Ordering::SeqCst);
                "big"
            }),
        )
        .route_service("/v1/credits", CreditsReadout::new(ledger))
        .route(
            "/health",
            get(move || async move {
                health.fetch_add(1, Ordering::SeqCst);
                "ok"
            }),
        )
        .layer(layer)
}

struct Fixture<L> {
    ledger: L,
    server: Server,
    runs: Runs,
    client: HttpClient,
}

impl<L: TestLedger> Fixture<L> {
    async fn start(ledger: L, configure: impl FnOnce(CreditLayer<L>) -> CreditLayer<L>) -> Self {
        let runs = Runs::default();
        let layer = configure(
            CreditLayer::new(ledger.clone())
                .pricing(price_list())
                .low_balance_threshold(100)
                .top_up_url("https://example.com/billing"),
        );
        let server = Server::start(app(ledger.clone(), runs.clone(), layer)).await;
        Self {
            ledger,
            server,
            runs,
            client: http1(),
        }
    }

    async fn balance(&self, account: &AccountId) -> Balance {
        self.ledger.balance(account).await.unwrap()
    }

    /// The balance once no hold is open (a Redis settle may land just after the head).
    async fn settled(&self, account: &AccountId) -> Balance {
        let ledger = self.ledger.clone();
        let acct = account.clone();
        wait_until("every hold settled", move || {
            let ledger = ledger.clone();
            let acct = acct.clone();
            async move { ledger.balance(&acct).await.unwrap().held == 0 }
        })
        .await;
        self.balance(account).await
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Answer {
        send(&self.client, req).await
    }
}

/// An account with `credits` and `settings`, reachable by API key `key`.
async fn open<L: TestLedger>(
    ledger: &L,
    name: &str,
    key: &str,
    credits: u64,
    settings: AccountSettings,
) -> AccountId {
    let account = AccountId::new(name).unwrap();
    ledger
        .configure(Configure::new(&account, settings))
        .await
        .unwrap();
    if credits > 0 {
        ledger
            .top_up(TopUp::new(&account, credits, format!("seed-{name}")))
            .await
            .unwrap();
    }
    ledger
        .register_api_key(&ApiKeyHash::of(key), &account)
        .await
        .unwrap();
    account
}

/// A request to `path` with optional key and extra headers (appended: a name given twice
/// is sent twice). `POST` requests carry `{"tokens": tokens}`.
fn request(
    method: &str,
    url: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    tokens: u64,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(url);
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if method == "POST" {
        req.header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                json!({ "tokens": tokens }).to_string(),
            )))
            .unwrap()
    } else {
        req.body(Full::default()).unwrap()
    }
}

fn quote_req(
    method: &str,
    url: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut headers = vec![("credits-quote", "1")];
    headers.extend_from_slice(extra);
    request(method, url, key, &headers, 0)
}

/// Checks what every quote of a billed route carries, and returns its body.
fn billed_quote(answer: &Answer) -> Value {
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert_eq!(
        answer.header("credits-cost"),
        None,
        "a quote charges nothing"
    );
    assert_eq!(answer.header("credits-hold-id"), None);
    let body = answer.json();
    let price = body["price"].as_u64().expect("price");
    let available = body["available"].as_i64().expect("available");
    // The hold a real call would place: all of the price, or on a ranged route that the
    // account can afford only in part, what it can afford.
    let hold = match body["max_affordable"].as_u64() {
        Some(most) if body["affordable"] == true => most,
        _ => price,
    };
    assert_eq!(answer.int("credits-reserved"), hold as i64);
    assert_eq!(answer.int("credits-remaining"), available - hold as i64);
    // The runway header and field say the same thing.
    match answer.header("credits-runway") {
        Some(secs) => assert_eq!(body["runway_secs"].as_u64(), Some(secs.parse().unwrap())),
        None => assert!(body["runway_secs"].is_null(), "{body}"),
    }
    for field in [
        "price",
        "available",
        "affordable",
        "shortfall",
        "max_affordable",
        "runway_secs",
        "price_version",
    ] {
        assert!(body.get(field).is_some(), "no {field} in {body}");
    }
    body
}

fn problem_type(answer: &Answer) -> String {
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json"),
        "{answer:?}"
    );
    answer.json()["type"].as_str().unwrap().to_owned()
}

fn assert_invalid_header(answer: &Answer, header: &str) {
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
    let kind = problem_type(answer);
    assert!(kind.ends_with("invalid-header"), "{kind}");
    assert_eq!(answer.json()["header"], header);
    assert_eq!(answer.header("credits-cost"), None);
}

// ---------------------------------------------------------------------------------------
// Quotes
// ---------------------------------------------------------------------------------------

async fn quote_prices_like_the_call_and_touches_nothing<L: TestLedger>(ledger: L) {
    let f = Fixture::start(ledger, |l| l).await;
    let acct = open(&f.ledger, "acct_q", "key-q", 1000, AccountSettings::new()).await;
    let before = f.balance(&acct).await;

    // A fixed-price route: no `min_price` in the answer.
    let echo = f
        .send(quote_req(
            "GET",
            &f.server.url("/v1/echo"),
            Some("key-q"),
            &[],
        ))
        .await;
    let body = billed_quote(&echo);
    assert_eq!(
        body,
        json!({
            "price": 1,
            "available": 1000,
            "affordable": true,
            "shortfall": 0,
            "max_affordable": 1,
            "runway_secs": null,
            "price_version": null,
        })
    );
    assert_eq!(echo.int("credits-remaining"), 999);
    assert_eq!(echo.header("credits-warning"), None);
    assert_eq!(echo.header("credits-price-version"), None);

    // A ranged route: its minimum is part of the answer; no body needed, none is read.
    let generate = f
        .send(quote_req(
            "POST",
            &f.server.url("/v1/generate"),
            Some("key-q"),
            &[],
        ))
        .await;
    let body = billed_quote(&generate);
    assert_eq!(
        body,
        json!({
            "price": 50,
            "min_price": 10,
            "available": 1000,
            "affordable": true,
            "shortfall": 0,
            "max_affordable": 50,
            "runway_secs": null,
            "price_version": null,
        })
    );
    assert_eq!(generate.int("credits-reserved"), 50);
    assert_eq!(generate.int("credits-remaining"), 950);

    // Quoting many times changes nothing: no handler ran, nothing held, nothing used.
    for _ in 0..5 {
        let again = f
            .send(quote_req(
                "GET",
                &f.server.url("/v1/fixed"),
                Some("key-q"),
                &[],
            ))
            .await;
        assert_eq!(billed_quote(&again)["price"], 30);
    }
    assert_eq!(f.runs.total(), 0, "a quote never runs the handler");
    let after = f.balance(&acct).await;
    assert_eq!(
        (
            after.available,
            after.held,
            after.committed,
            after.open_holds
        ),
        (before.available, 0, 0, 0)
    );
    assert!(f.ledger.usage(&acct).await.unwrap().by_route.is_empty());

    // The real call then does what the quote said.
    let real = f
        .send(request(
            "GET",
            &f.server.url("/v1/echo"),
            Some("key-q"),
            &[],
            0,
        ))
        .await;
    assert_eq!(real.status, StatusCode::OK);
    assert_eq!(
        (real.int("credits-reserved"), real.int("credits-remaining")),
        (1, 999)
    );
    assert_eq!(f.settled(&acct).await.available, 999);
    assert_conserved(&f.ledger, &acct).await;
}

async fn quote_of_a_capped_call_is_the_capped_hold<L: TestLedger>(ledger: L) {
    let f = Fixture::start(ledger, |l| l).await;
    let acct = open(&f.ledger, "acct_qc", "key-qc", 1000, AccountSettings::new()).await;
    let url = f.server.url("/v1/generate");

    let quote = f
        .send(quote_req(
            "POST",
            &url,
            Some("key-qc"),
            &[("credits-max-cost", "20")],
        ))
        .await;
    let body = billed_quote(&quote);
    assert_eq!(
        (
            &body["price"],
            &body["min_price"],
            &body["max_affordable"],
            &body["affordable"]
        ),
        (&json!(20), &json!(10), &json!(20), &json!(true))
    );
    assert_eq!(
        (
            quote.int("credits-reserved"),
            quote.int("credits-remaining")
        ),
        (20, 980)
    );

    // A cap above the price does not raise it.
    let quote = f
        .send(quote_req(
            "POST",
            &url,
            Some("key-qc"),
            &[("credits-max-cost", "60")],
        ))
        .await;
    assert_eq!(billed_quote(&quote)["price"], 50);

    // A cap below the minimum: the quote is refused as the call would be.
    let refused = f
        .send(quote_req(
            "POST",
            &url,
            Some("key-qc"),
            &[("credits-max-cost", "5")],
        ))
        .await;
    assert_eq!(
        refused.status,
        StatusCode::PRECONDITION_FAILED,
        "{refused:?}"
    );
    assert!(problem_type(&refused).ends_with("max-cost-exceeded"));
    assert_eq!(f.runs.total(), 0);
    assert_eq!(f.balance(&acct).await.available, 1000);

    // The real call under the same cap holds what the quote said, and the handler gets it.
    let real = f
        .send(request(
            "POST",
            &url,
            Some("key-qc"),
            &[("credits-max-cost", "20")],
            40,
        ))
        .await;
    assert_eq!(real.status, StatusCode::OK, "{real:?}");
    assert_eq!(real.int("credits-reserved"), 20);
    assert_eq!(real.int("credits-cost"), 20);
    assert_eq!(real.int("credits-remaining"), 980);
    assert_eq!(real.json()["reserved"], 20);
    assert_eq!(real.json()["generated_tokens"], 20);
    let b = f.settled(&acct).await;
    assert_eq!((b.available, b.committed), (980, 20));
    assert_conserved(&f.ledger, &acct).await;
}

/// The real call does what its quote said: served holding `max_affordable` when
/// affordable, else refused `402` from the same balance.
fn assert_call_matches_quote(quote: &Value, real: &Answer) {
    if quote["affordable"] == true {
        assert_eq!(real.status, StatusCode::OK, "quote {quote}, real {real:?}");
        assert_eq!(
            real.int("credits-reserved"),
            quote["max_affordable"].as_i64().unwrap(),
            "the hold is what the quote said could be held: {quote}"
        );
    } else {
        assert_eq!(
            real.status,
            StatusCode::PAYMENT_REQUIRED,
            "quote {quote}, real {real:?}"
        );
        let problem = real.json();
        assert_eq!(problem["available"], quote["available"], "{problem}");
        if let Some(price) = problem.get("price") {
            assert_eq!(*price, quote["price"], "{problem}");
        }
        if let Some(most) = problem.get("max_affordable") {
            assert_eq!(*most, quote["max_affordable"], "{problem}");
        }
        if quote.get("min_price").is_none() {
            // A fixed price: the least is the price, both say the same shortfall.
            assert_eq!(problem["required"], quote["price"], "{problem}");
            assert_eq!(problem["shortfall"], quote["shortfall"], "{problem}");
        }
    }
}

async fn quote_says_what_a_short_account_gets<L: TestLedger>(ledger: L) {
    let f = Fixture::start(ledger, |l| l).await;
    let url = f.server.url("/v1/generate");

    // 5 credits on a fixed price of 30: short by 25, and the real call says so.
    let poor = open(
        &f.ledger,
        "acct_poor",
        "key-poor",
        5,
        AccountSettings::new(),
    )
    .await;
    let quote = f
        .send(quote_req(
            "GET",
            &f.server.url("/v1/fixed"),
            Some("key-poor"),
            &[],
        ))
        .await;
    let body = billed_quote(&quote);
    assert_eq!(
        body,
        json!({
            "price": 30,
            "available": 5,
            "affordable": false,
            "shortfall": 25,
            "max_affordable": 0,
            "runway_secs": null,
            "price_version": null,
        })
    );
    assert_eq!(quote.int("credits-remaining"), -25);
    assert_eq!(
        quote.header("credits-warning"),
        Some("low-balance; remaining=-25; threshold=100")
    );
    let real = f
        .send(request(
            "GET",
            &f.server.url("/v1/fixed"),
            Some("key-poor"),
            &[],
            0,
        ))
        .await;
    assert_call_matches_quote(&body, &real);
    assert_eq!(
        (&real.json()["required"], &real.json()["shortfall"]),
        (&json!(30), &json!(25))
    );
    assert_eq!(f.runs.fixed.load(Ordering::SeqCst), 0);

    // 5 credits on the ranged route: below its minimum of 10, nothing can run.
    let quote = f.send(quote_req("POST", &url, Some("key-poor"), &[])).await;
    let body = billed_quote(&quote);
    assert_eq!(
        body,
        json!({
            "price": 50,
            "min_price": 10,
            "available": 5,
            "affordable": false,
            "shortfall": 45,
            "max_affordable": 0,
            "runway_secs": null,
            "price_version": null,
        })
    );
    let real = f
        .send(request("POST", &url, Some("key-poor"), &[], 12))
        .await;
    assert_call_matches_quote(&body, &real);
    assert_eq!(f.runs.generate.load(Ordering::SeqCst), 0);
    let b = f.balance(&poor).await;
    assert_eq!((b.available, b.held, b.committed), (5, 0, 0));

    // 30 credits on the ranged route: short of the full 50 by 20, but 30 is within the
    // range: the call is served holding 30, and its handler is told so.
    let mid = open(&f.ledger, "acct_mid", "key-mid", 30, AccountSettings::new()).await;
    let quote = f.send(quote_req("POST", &url, Some("key-mid"), &[])).await;
    let body = billed_quote(&quote);
    assert_eq!(
        (
            &body["price"],
            &body["affordable"],
            &body["shortfall"],
            &body["max_affordable"]
        ),
        (&json!(50), &json!(true), &json!(20), &json!(30))
    );
    let real = f
        .send(request("POST", &url, Some("key-mid"), &[], 25))
        .await;
    assert_call_matches_quote(&body, &real);
    assert_eq!(
        (real.int("credits-reserved"), real.int("credits-cost")),
        (30, 25)
    );
    assert_eq!(real.json()["reserved"], 30);
    assert_eq!(f.settled(&mid).await.available, 5);
    // And under a cap of 5, refused 412 before anything, though 5 are there.
    let capped = f
        .send(quote_req(
            "POST",
            &url,
            Some("key-mid"),
            &[("credits-max-cost", "5")],
        ))
        .await;
    assert_eq!(capped.status, StatusCode::PRECONDITION_FAILED);

    // An overdraft counts: 45 credits with a credit limit of 10 afford the whole 50.
    let over = open(
        &f.ledger,
        "acct_over",
        "key-over",
        45,
        AccountSettings::new().credit_limit(10),
    )
    .await;
    let quote = f.send(quote_req("POST", &url, Some("key-over"), &[])).await;
    let body = billed_quote(&quote);
    assert_eq!(
        (
            &body["available"],
            &body["affordable"],
            &body["shortfall"],
            &body["max_affordable"]
        ),
        (&json!(45), &json!(true), &json!(0), &json!(50))
    );
    assert_eq!(quote.int("credits-remaining"), -5);
    let real = f
        .send(request("POST", &url, Some("key-over"), &[], 50))
        .await;
    assert_call_matches_quote(&body, &real);
    assert_eq!(
        (real.int("credits-reserved"), real.int("credits-remaining")),
        (50, -5)
    );
    assert_eq!(f.settled(&over).await.available, -5);
    // Now 5 spendable with the overdraft: below the minimum, refused.
    let quote = f.send(quote_req("POST", &url, Some("key-over"), &[])).await;
    let body = billed_quote(&quote);
    assert_eq!(
        (
            &body["available"],
            &body["affordable"],
            &body["shortfall"],
            &body["max_affordable"]
        ),
        (&json!(-5), &json!(false), &json!(45), &json!(0))
    );
    let real = f
        .send(request("POST", &url, Some("key-over"), &[], 1))
        .await;
    assert_call_matches_quote(&body, &real);
    assert_eq!(f.runs.generate.load(Ordering::SeqCst), 2);

    assert_conserved(&f.ledger, &poor).await;
    assert_conserved(&f.ledger, &mid).await;
    assert_conserved(&f.ledger, &over).await;
}

async fn quote_warns_and_forecasts_the_runway<L: TestLedger>(ledger: L) {
    let f = Fixture::start(ledger, |l| l.pricing(price_list().version("2026-11"))).await;
    let acct = open(&f.ledger, "acct_w", "key-w", 160, AccountSettings::new()).await;
    let url = f.server.url("/v1/generate");

    // 160 - 50 = 110: above the layer's threshold of 100, no warning.
    let quote = f.send(quote_req("POST", &url, Some("key-w"), &[])).await;
    let body = billed_quote(&quote);
    assert_eq!(body["price_version"], "2026-11");
    assert_eq!(quote.header("credits-price-version"), Some("2026-11"));
    assert_eq!(quote.header("credits-warning"), None);
    assert!(body["runway_secs"].is_null(), "nothing spent yet: {body}");

    // Spend 20, then 160 - 20 - 50 = 90 would be below the threshold: warned.
    for _ in 0..20 {
        let real = f
            .send(request(
                "GET",
                &f.server.url("/v1/echo"),
                Some("key-w"),
                &[],
                0,
            ))
            .await;
        assert_eq!(real.status, StatusCode::OK);
    }
    assert_eq!(f.settled(&acct).await.available, 140);
    let quote = f.send(quote_req("POST", &url, Some("key-w"), &[])).await;
    let body = billed_quote(&quote);
    assert_eq!(quote.int("credits-remaining"), 90);
    assert_eq!(
        quote.header("credits-warning"),
        Some("low-balance; remaining=90; threshold=100")
    );
    // Twenty commits within a second are not a history: no runway is forecast yet (the
    // conformance suite moves a clock to see it appear; billed_quote checked that the body
    // and the header agree).
    assert!(body["runway_secs"].is_null(), "{body}");
    assert!(quote.header("credits-runway").is_none());

    // The account's own threshold wins over the layer's.
    f.ledger
        .configure(Configure::new(
            &acct,
            AccountSettings::new().low_balance_threshold(50),
        ))
        .await
        .unwrap();
    let quote = f.send(quote_req("POST", &url, Some("key-w"), &[])).await;
    billed_quote(&quote);
    assert_eq!(quote.header("credits-warning"), None, "90 is above 50");
    assert_eq!(f.balance(&acct).await.available, 140);
}

async fn quote_of_a_free_route_needs_no_key_and_bad_asks_are_400<L: TestLedger>(ledger: L) {
    let f = Fixture::start(ledger, |l| l).await;
    let acct = open(&f.ledger, "acct_f", "key-f", 100, AccountSettings::new()).await;

    // A free route: price 0, with or without a key, and nothing about a balance.
    for key in [None, Some("key-f"), Some("no-such-key")] {
        let free = f
            .send(quote_req("GET", &f.server.url("/health"), key, &[]))
            .await;
        assert_eq!(free.status, StatusCode::OK, "{free:?}");
        assert_eq!(free.header("content-type"), Some("application/json"));
        assert_eq!(free.header("cache-control"), Some("no-store"));
        let body = free.json();
        assert_eq!(body["price"], 0);
        assert_eq!(body["affordable"], true);
        assert_eq!(body["shortfall"], 0);
        assert!(body.get("min_price").is_none());
        for name in ["credits-cost", "credits-reserved", "credits-remaining"] {
            assert_eq!(free.header(name), None, "{name} on a free quote");
        }
    }
    assert_eq!(
        f.runs.health.load(Ordering::SeqCst),
        0,
        "the free handler did not run"
    );

    // A billed route: the caller must be known.
    let url = f.server.url("/v1/echo");
    let unknown = f
        .send(quote_req("GET", &url, Some("no-such-key"), &[]))
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED, "{unknown:?}");
    assert!(problem_type(&unknown).ends_with("unauthorized"));
    let anonymous = f.send(quote_req("GET", &url, None, &[])).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // `credits-quote` is `1`, once, or a 400.
    for bad in [
        vec!["yes"],
        vec!["2"],
        vec!["0"],
        vec!["true"],
        vec![""],
        vec!["1", "1"],
    ] {
        let headers: Vec<(&str, &str)> = bad.iter().map(|v| ("credits-quote", *v)).collect();
        let answer = f
            .send(request("GET", &url, Some("key-f"), &headers, 0))
            .await;
        assert_invalid_header(&answer, "credits-quote");
        // And on a free route too: the header is read before anything else.
        let answer = f
            .send(request("GET", &f.server.url("/health"), None, &headers, 0))
            .await;
        assert_invalid_header(&answer, "credits-quote");
    }
    assert_eq!(f.runs.total(), 0);
    let b = f.balance(&acct).await;
    assert_eq!((b.available, b.held, b.committed), (100, 0, 0));
}

#[tokio::test]
async fn memory_quote_prices_like_the_call_and_touches_nothing() {
    quote_prices_like_the_call_and_touches_nothing(MemoryLedger::new()).await;
}

#[tokio::test]
async fn memory_quote_of_a_capped_call_is_the_capped_hold() {
    quote_of_a_capped_call_is_the_capped_hold(MemoryLedger::new()).await;
}

#[tokio::test]
async fn memory_quote_says_what_a_short_account_gets() {
    quote_says_what_a_short_account_gets(MemoryLedger::new()).await;
}

#[tokio::test]
async fn memory_quote_warns_and_forecasts_the_runway() {
    quote_warns_and_forecasts_the_runway(MemoryLedger::new()).await;
}

#[tokio::test]
async fn memory_quote_of_a_free_route_needs_no_key_and_bad_asks_are_400() {
    quote_of_a_free_route_needs_no_key_and_bad_asks_are_400(MemoryLedger::new()).await;
}

/// Call deadline of the Redis ledgers here: generous, only a bound on a hang.
const PATIENT: Duration = Duration::from_secs(5);

async fn redis_ledger(server: &RedisServer) -> RedisLedger {
    RedisLedger::builder()
        .url(server.url())
        .call_timeout(PATIENT)
        .build()
        .await
        .expect("connect to the test redis-server")
}

#[tokio::test]
async fn redis_quote_prices_like_the_call_and_touches_nothing() {
    let server = RedisServer::start();
    quote_prices_like_the_call_and_touches_nothing(redis_ledger(&server).await).await;
}

#[tokio::test]
async fn redis_quote_of_a_capped_call_is_the_capped_hold() {
    let server = RedisServer::start();
    quote_of_a_capped_call_is_the_capped_hold(redis_ledger(&server).await).await;
}

#[tokio::test]
async fn redis_quote_says_what_a_short_account_gets() {
    let server = RedisServer::start();
    quote_says_what_a_short_account_gets(redis_ledger(&server).await).await;
}

#[tokio::test]
async fn redis_quote_warns_and_forecasts_the_runway() {
    let server = RedisServer::start();
    quote_warns_and_forecasts_the_runway(redis_ledger(&server).await).await;
}

#[tokio::test]
async fn redis_quote_of_a_free_route_needs_no_key_and_bad_asks_are_400() {
    let server = RedisServer::start();
    quote_of_a_free_route_needs_no_key_and_bad_asks_are_400(redis_ledger(&server).await).await;
}

// ---------------------------------------------------------------------------------------
// Spend cap
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_max_cost_is_a_400_and_charges_nothing() {
    let f = Fixture::start(MemoryLedger::new(), |l| l).await;
    let acct = open(&f.ledger, "acct_m", "key-m", 1000, AccountSettings::new()).await;
    let too_big = (MAX_AMOUNT + 1).to_string();
    assert_eq!(too_big, "9007199254740992");
    for bad in [
        vec!["-1"],
        vec!["1e3"],
        vec!["abc"],
        vec![""],
        vec!["+5"],
        vec!["5.0"],
        vec![too_big.as_str()],
        vec!["99999999999999999999"],
        vec!["20", "20"],
        vec!["5", "60"],
    ] {
        let headers: Vec<(&str, &str)> = bad.iter().map(|v| ("credits-max-cost", *v)).collect();
        for (method, path) in [("GET", "/v1/fixed"), ("POST", "/v1/generate")] {
            let answer = f
                .send(request(
                    method,
                    &f.server.url(path),
                    Some("key-m"),
                    &headers,
                    12,
                ))
                .await;
            assert_invalid_header(&answer, "credits-max-cost");
        }
    }
    assert_eq!(f.runs.total(), 0);
    let b = f.balance(&acct).await;
    assert_eq!((b.available, b.held, b.committed), (1000, 0, 0));

    // The largest amount is a valid cap (and leaves the price as it is).
    let max = MAX_AMOUNT.to_string();
    let answer = f
        .send(request(
            "GET",
            &f.server.url("/v1/fixed"),
            Some("key-m"),
            &[("credits-max-cost", max.as_str())],
            0,
        ))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.int("credits-reserved"), 30);
}

#[tokio::test]
async fn a_cap_below_a_fixed_price_is_412_and_at_or_above_it_holds_the_price() {
    let f = Fixture::start(MemoryLedger::new(), |l| l).await;
    let acct = open(&f.ledger, "acct_x", "key-x", 1000, AccountSettings::new()).await;
    let url = f.server.url("/v1/fixed");

    for cap in ["29", "1", "0"] {
        let refused = f
            .send(request(
                "GET",
                &url,
                Some("key-x"),
                &[("credits-max-cost", cap)],
                0,
            ))
            .await;
        assert_eq!(
            refused.status,
            StatusCode::PRECONDITION_FAILED,
            "{refused:?}"
        );
        assert!(problem_type(&refused).ends_with("max-cost-exceeded"));
        let body = refused.json();
        assert_eq!(body["status"], 412);
        assert_eq!(body["price"], 30);
        assert_eq!(body["min_price"], 30, "a fixed price is its own minimum");
        assert_eq!(body["max_cost"], cap.parse::<u64>().unwrap());
        assert_eq!(refused.header("credits-cost"), None);
        assert_eq!(refused.header("credits-reserved"), None);
    }
    assert_eq!(
        f.runs.fixed.load(Ordering::SeqCst),
        0,
        "the handler never ran"
    );
    let b = f.balance(&acct).await;
    assert_eq!(
        (b.available, b.held, b.committed, b.open_holds),
        (1000, 0, 0, 0)
    );

    let mut expected = 1000;
    for cap in ["30", "31", "1000"] {
        let served = f
            .send(request(
                "GET",
                &url,
                Some("key-x"),
                &[("credits-max-cost", cap)],
                0,
            ))
            .await;
        assert_eq!(served.status, StatusCode::OK, "{served:?}");
        expected -= 30;
        assert_eq!(
            (
                served.int("credits-reserved"),
                served.int("credits-cost"),
                served.int("credits-remaining")
            ),
            (30, 30, expected)
        );
    }
    assert_eq!(f.runs.fixed.load(Ordering::SeqCst), 3);
    let b = f.balance(&acct).await;
    assert_eq!((b.available, b.held, b.committed), (910, 0, 90));
    assert_conserved(&f.ledger, &acct).await;
}

#[tokio::test]
async fn a_cap_within_a_ranged_route_lowers_the_hold_the_handler_sees() {
    let f = Fixture::start(MemoryLedger::new(), |l| l).await;
    let acct = open(&f.ledger, "acct_r", "key-r", 1000, AccountSettings::new()).await;
    let url = f.server.url("/v1/generate");

    // (cap, tokens asked) → hold, the Charge's reserved(), cost.
    let mut available = 1000i64;
    for (cap, tokens, hold, cost) in [
        (Some("20"), 40, 20, 20),
        (Some("20"), 7, 20, 7),
        (Some("10"), 40, 10, 10),
        (Some("50"), 60, 50, 50),
        (Some("60"), 60, 50, 50),
        (None, 60, 50, 50),
    ] {
        let headers: Vec<(&str, &str)> = cap.map(|c| ("credits-max-cost", c)).into_iter().collect();
        let served = f
            .send(request("POST", &url, Some("key-r"), &headers, tokens))
            .await;
        assert_eq!(served.status, StatusCode::OK, "{cap:?}: {served:?}");
        available -= cost;
        assert_eq!(
            (
                served.int("credits-reserved"),
                served.int("credits-cost"),
                served.int("credits-remaining")
            ),
            (hold, cost, available),
            "cap {cap:?}, tokens {tokens}"
        );
        let body = served.json();
        assert_eq!(
            body["reserved"], hold,
            "Charge::reserved() under cap {cap:?}"
        );
        assert_eq!(body["generated_tokens"], tokens.min(hold as u64));
    }
    assert_eq!(f.runs.generate.load(Ordering::SeqCst), 6);

    // Below the route's minimum of 10: refused before the handler, nothing held.
    for cap in ["9", "5", "0"] {
        let refused = f
            .send(request(
                "POST",
                &url,
                Some("key-r"),
                &[("credits-max-cost", cap)],
                1,
            ))
            .await;
        assert_eq!(
            refused.status,
            StatusCode::PRECONDITION_FAILED,
            "{refused:?}"
        );
        assert!(problem_type(&refused).ends_with("max-cost-exceeded"));
        let body = refused.json();
        assert_eq!(
            (&body["price"], &body["min_price"], &body["max_cost"]),
            (&json!(50), &json!(10), &json!(cap.parse::<u64>().unwrap()))
        );
    }
    assert_eq!(f.runs.generate.load(Ordering::SeqCst), 6);
    let b = f.balance(&acct).await;
    assert_eq!(
        (b.available, b.held, b.committed),
        (available, 0, 1000 - available as u64)
    );
    assert_eq!(
        f.ledger.usage(&acct).await.unwrap().by_route["/v1/generate"].calls,
        6
    );
    assert_conserved(&f.ledger, &acct).await;
}

fn with_metadata<T>(message: T, pairs: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (name, value) in pairs {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    request
}

#[tokio::test]
async fn grpc_cap_below_the_price_is_failed_precondition_max_cost_exceeded() {
    use echo::{EchoClient, EchoServer, SayRequest};
    use tonic::Code;
    use tonic_types::StatusExt;
    use tower_credits::Protocol;

    let ledger = MemoryLedger::new();
    let acct = open(&ledger, "acct_g", "key-g", 100, AccountSettings::new()).await;
    let layer = CreditLayer::new(ledger.clone())
        .protocol(Protocol::Grpc)
        .pricing(Pricing::new().route("/echo.Echo/Say", 10));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(EchoServer)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _server = Abort(server);
    let mut client = EchoClient::connect(format!("http://{addr}")).await.unwrap();
    let say = |tokens| SayRequest {
        message: "hi".into(),
        tokens,
        fail_code: 0,
    };

    let status = client
        .say(with_metadata(
            say(Some(4)),
            &[("authorization", "Bearer key-g"), ("credits-max-cost", "5")],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "MAX_COST_EXCEEDED");
    assert_eq!(info.domain, "tower-credits");
    assert_eq!(info.metadata["price"], "10");
    assert_eq!(info.metadata["min_price"], "10");
    assert_eq!(info.metadata["max_cost"], "5");
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (100, 0, 0));

    // A malformed cap is INVALID_ARGUMENT; a cap at the price is served.
    let status = client
        .say(with_metadata(
            say(Some(4)),
            &[
                ("authorization", "Bearer key-g"),
                ("credits-max-cost", "abc"),
            ],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let reply = client
        .say(with_metadata(
            say(Some(4)),
            &[
                ("authorization", "Bearer key-g"),
                ("credits-max-cost", "10"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(reply.metadata().get("credits-reserved").unwrap(), "10");
    assert_eq!(reply.metadata().get("credits-cost").unwrap(), "4");
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (96, 0, 4));
}

// ---------------------------------------------------------------------------------------
// Readout
// ---------------------------------------------------------------------------------------

async fn readout_tells_balance_and_spend_by_route_for_free<L: TestLedger>(ledger: L) {
    let f = Fixture::start(ledger, |l| l).await;
    let acct = open(
        &f.ledger,
        "acct_read",
        "key-read",
        100,
        AccountSettings::new().low_balance_threshold(100),
    )
    .await;
    let other = open(
        &f.ledger,
        "acct_other",
        "key-other",
        10,
        AccountSettings::new().credit_limit(25),
    )
    .await;

    // Mixed traffic: three echo calls at 1, a generate charged 12, a refused 402, a
    // generate capped at 20 asking for 40, a spend cap refused 412 and a quote.
    let key = Some("key-read");
    for _ in 0..3 {
        let r = f
            .send(request("GET", &f.server.url("/v1/echo"), key, &[], 0))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = f
        .send(request("POST", &f.server.url("/v1/generate"), key, &[], 12))
        .await;
    assert_eq!(r.int("credits-cost"), 12);
    let r = f
        .send(request("GET", &f.server.url("/v1/big"), key, &[], 0))
        .await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED, "{r:?}");
    let r = f
        .send(request(
            "POST",
            &f.server.url("/v1/generate"),
            key,
            &[("credits-max-cost", "20")],
            40,
        ))
        .await;
    assert_eq!((r.int("credits-reserved"), r.int("credits-cost")), (20, 20));
    let r = f
        .send(request(
            "POST",
            &f.server.url("/v1/generate"),
            key,
            &[("credits-max-cost", "3")],
            40,
        ))
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = f
        .send(quote_req("GET", &f.server.url("/v1/fixed"), key, &[]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let settled = f.settled(&acct).await;
    assert_eq!((settled.available, settled.committed), (65, 35));

    let url = f.server.url("/v1/credits");
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let readout = f.send(get_req(&url, key)).await;
        assert_eq!(readout.status, StatusCode::OK, "{readout:?}");
        assert_eq!(readout.header("content-type"), Some("application/json"));
        assert_eq!(readout.header("cache-control"), Some("no-store"));
        assert_eq!(
            readout.header("credits-cost"),
            None,
            "the readout is not billed"
        );
        bodies.push(readout.json());
    }
    for body in &bodies {
        assert!(
            body["runway_secs"].is_null(),
            "a few seconds of spend are no history for a runway: {body}"
        );
        let mut without_runway = body.clone();
        without_runway
            .as_object_mut()
            .unwrap()
            .remove("runway_secs");
        assert_eq!(
            without_runway,
            json!({
                "account": "acct_read",
                "available": 65,
                "held": 0,
                "committed": 35,
                "credit_limit": 0,
                "thresholds": [100],
                "routes": [
                    { "route": "/v1/echo", "calls": 3, "credits": 3, "average_cost": 1.0 },
                    { "route": "/v1/generate", "calls": 2, "credits": 32, "average_cost": 16.0 },
                ],
            })
        );
    }
    // Reading it twice cost nothing and recorded nothing.
    let after = f.balance(&acct).await;
    assert_eq!((after.available, after.held, after.committed), (65, 0, 35));
    let usage = f.ledger.usage(&acct).await.unwrap();
    assert_eq!(
        usage.by_route.keys().collect::<Vec<_>>(),
        ["/v1/echo", "/v1/generate"]
    );
    assert_conserved(&f.ledger, &acct).await;

    // Another account sees only its own figures: no threshold of its own, an overdraft.
    let readout = f.send(get_req(&url, Some("key-other"))).await;
    assert_eq!(readout.status, StatusCode::OK);
    assert_eq!(
        readout.json(),
        json!({
            "account": "acct_other",
            "available": 10,
            "held": 0,
            "committed": 0,
            "credit_limit": 25,
            "thresholds": [],
            "runway_secs": null,
            "routes": [],
        })
    );
    assert_eq!(f.balance(&other).await.available, 10);

    // Unknown callers are refused as on a billed route.
    let anonymous = f.send(get_req(&url, None)).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{anonymous:?}");
    assert!(problem_type(&anonymous).ends_with("unauthorized"));
    let unknown = f.send(get_req(&url, Some("no-such-key"))).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED, "{unknown:?}");
    assert!(problem_type(&unknown).ends_with("unauthorized"));
    assert_eq!(f.balance(&acct).await.available, 65);
}

#[tokio::test]
async fn memory_readout_tells_balance_and_spend_by_route_for_free() {
    readout_tells_balance_and_spend_by_route_for_free(MemoryLedger::new()).await;
}

#[tokio::test]
async fn redis_readout_tells_balance_and_spend_by_route_for_free() {
    let server = RedisServer::start();
    readout_tells_balance_and_spend_by_route_for_free(redis_ledger(&server).await).await;
}
