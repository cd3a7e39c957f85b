//! The store outage policy, the circuit breaker and settle retries, driven through a real
//! axum server with a ledger that can be switched off.

mod http_support;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use http_support::*;
use support::rig::{pricing, wait_until, DEADLINE};
use tokio::sync::Notify;
use tower_credits::clock::ManualClock;
use tower_credits::ledger::SettleOutcome;
use tower_credits::{Charge, CreditLayer, Ledger, MemoryLedger, OutagePolicy};
use tower_credits::{LedgerAdmin, LedgerReports};

const ROUTES: &[(&str, u64)] = &[
    ("GET /v1/echo", 3),
    ("GET /v1/gated", 4),
    ("GET /v1/who", 2),
];

#[derive(Clone, Default)]
struct Gate {
    /// Notified when the gated handler has its Charge.
    entered: Arc<Notify>,
    /// Lets the gated handler answer.
    release: Arc<Notify>,
    charge: Arc<Mutex<Option<Charge>>>,
}

fn app(layer: CreditLayer<SwitchLedger>, gate: Gate) -> Router {
    Router::new()
        .route("/v1/echo", get(|| async { "echo" }))
        .route(
            "/v1/who",
            get(|charge: Charge| async move {
                format!("{} billed={}", charge.account(), charge.is_billed())
            }),
        )
        .route(
            "/v1/gated",
            get(move |charge: Charge| {
                let gate = gate.clone();
                async move {
                    *gate.charge.lock().unwrap() = Some(charge);
                    gate.entered.notify_one();
                    gate.release.notified().await;
                    "gated"
                }
            }),
        )
        .layer(layer)
}

#[tokio::test]
async fn fail_closed_answers_503_and_the_breaker_stops_calling_a_dead_ledger() {
    let ledger = SwitchLedger::new(MemoryLedger::new());
    let acct = account(&ledger, "acct_fc", "key-fc", 100).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(ROUTES))
        .circuit_breaker(3, Duration::from_secs(3600));
    let server = Server::start(app(layer.clone(), Gate::default())).await;
    let client = http1();
    let url = server.url("/v1/echo");
    assert_eq!(
        send(&client, get_req(&url, Some("key-fc"))).await.status,
        StatusCode::OK
    );

    ledger.set_down(true);
    let before = ledger.calls();
    for _ in 0..10 {
        let answer = send(&client, get_req(&url, Some("key-fc"))).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert_eq!(answer.json()["title"], "Billing unavailable");
    }
    // Three failures open the breaker: the other seven never reached the ledger.
    assert_eq!(ledger.calls() - before, 3);
    let stats = layer.stats();
    assert_eq!(stats.outages, 10);
    assert_eq!(stats.breaker_fast_failures, 7);
    ledger.set_down(false);
    assert_eq!(
        available(&ledger.inner, &acct).await,
        97,
        "only the first request paid"
    );
}

#[tokio::test]
async fn the_breaker_probes_and_recovers_once_the_ledger_is_back() {
    let ledger = SwitchLedger::new(MemoryLedger::new());
    account(&ledger, "acct_rc", "key-rc", 100).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(ROUTES))
        .circuit_breaker(1, Duration::from_millis(20));
    let server = Server::start(app(layer.clone(), Gate::default())).await;
    let client = http1();
    let url = server.url("/v1/echo");
    send(&client, get_req(&url, Some("key-rc"))).await; // warm the key cache
    ledger.set_down(true);
    assert_eq!(
        send(&client, get_req(&url, Some("key-rc"))).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    ledger.set_down(false);
    wait_until("a request succeeds again", || {
        let client = client.clone();
        let url = url.clone();
        async move { send(&client, get_req(&url, Some("key-rc"))).await.status == StatusCode::OK }
    })
    .await;
}

#[tokio::test]
async fn fail_open_serves_unbilled_and_counts_it_per_account() {
    let ledger = SwitchLedger::new(MemoryLedger::new());
    let acct = account(&ledger, "acct_fo", "key-fo", 100).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(ROUTES))
        .on_outage(OutagePolicy::FailOpen);
    let server = Server::start(app(layer.clone(), Gate::default())).await;
    let client = http1();
    let url = server.url("/v1/echo");
    assert_eq!(
        send(&client, get_req(&url, Some("key-fo"))).await.status,
        StatusCode::OK
    );

    ledger.set_down(true);
    for _ in 0..4 {
        let answer = send(&client, get_req(&url, Some("key-fo"))).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("credits-cost"), None, "nothing billed");
    }
    // Handlers that extract `Charge` still work, told that nothing is billed.
    let who = send(&client, get_req(&server.url("/v1/who"), Some("key-fo"))).await;
    assert_eq!(who.status, StatusCode::OK);
    assert_eq!(who.body, "acct_fo billed=false");
    // An uncached key cannot be checked while the ledger is down: under `FailOpen` it is
    // refused, not served unverified (that takes `FailOpenAnyKey`).
    let answer = send(&client, get_req(&url, Some("never-seen"))).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    ledger.set_down(false);

    let unbilled = layer.unbilled().snapshot();
    let mine = unbilled[&Some(acct.clone())];
    assert_eq!((mine.requests, mine.credits), (5, 14));
    assert!(!unbilled.contains_key(&None));
    assert_eq!(layer.stats().served_unbilled, 5);
    assert_eq!(layer.unbilled().take().len(), 1);
    assert!(layer.unbilled().snapshot().is_empty(), "take resets");
    assert_eq!(available(&ledger.inner, &acct).await, 97);
}

#[tokio::test]
async fn a_settle_that_cannot_reach_the_ledger_is_retried_and_applied_once() {
    let ledger = SwitchLedger::new(MemoryLedger::new());
    let acct = account(&ledger, "acct_rt", "key-rt", 100).await;
    let layer = CreditLayer::new(ledger.clone()).pricing(pricing(ROUTES));
    let gate = Gate::default();
    let server = Server::start(app(layer.clone(), gate.clone())).await;
    let client = http1();
    let request = tokio::spawn({
        let client = client.clone();
        let url = server.url("/v1/gated");
        async move { send(&client, get_req(&url, Some("key-rt"))).await }
    });
    gate.entered.notified().await;
    ledger.set_down(true); // the commit at the response head fails
    gate.release.notify_one();
    let answer = request.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.int("credits-cost"), 4);
    wait_until("a retry was made", || async {
        layer.stats().settle_retries >= 1
    })
    .await;
    assert_eq!(
        ledger.inner.balance(&acct).await.unwrap().held,
        4,
        "still held"
    );

    ledger.set_down(false);
    assert!(layer.pending_settlements().drain(DEADLINE).await);
    let b = ledger.inner.balance(&acct).await.unwrap();
    assert_eq!(
        (b.available, b.held, b.committed),
        (96, 0, 4),
        "committed exactly once"
    );
    let stats = layer.stats();
    assert_eq!(
        (stats.commits, stats.credits_committed, stats.commits_lost),
        (1, 4, 0)
    );
}

#[tokio::test]
async fn a_settle_lost_for_good_expires_and_the_credits_come_back() {
    let clock = ManualClock::new();
    let ledger = SwitchLedger::new(MemoryLedger::builder().clock(clock.clone()).build());
    let acct = account(&ledger, "acct_lost", "key-lost", 100).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(ROUTES))
        .hold_ttl(Duration::from_millis(200));
    let gate = Gate::default();
    let server = Server::start(app(layer.clone(), gate.clone())).await;
    let request = tokio::spawn({
        let client = http1();
        let url = server.url("/v1/gated");
        async move { send(&client, get_req(&url, Some("key-lost"))).await }
    });
    gate.entered.notified().await;
    ledger.set_down(true);
    gate.release.notify_one();
    assert_eq!(request.await.unwrap().status, StatusCode::OK);
    // Retries stop once the hold's TTL has passed: the commit is lost (the seller's loss).
    assert!(layer.pending_settlements().drain(DEADLINE).await);
    let stats = layer.stats();
    assert_eq!(
        (stats.commits, stats.commits_lost, stats.credits_lost),
        (0, 1, 4)
    );

    ledger.set_down(false);
    clock.advance(Duration::from_secs(1));
    let b = ledger.inner.balance(&acct).await.unwrap();
    assert_eq!(
        (b.available, b.held, b.committed),
        (100, 0, 0),
        "the hold expired"
    );
    let charge = gate.charge.lock().unwrap().take().unwrap();
    let late = ledger
        .inner
        .commit(&acct, charge.hold_id(), 4)
        .await
        .unwrap();
    assert_eq!(
        late.outcome,
        SettleOutcome::Expired,
        "a late commit moves nothing"
    );
    assert_eq!(available(&ledger.inner, &acct).await, 100);
}

#[tokio::test]
async fn too_many_open_holds_is_a_429_naming_the_limit() {
    let ledger = SwitchLedger::new(MemoryLedger::builder().max_open_holds(1).build());
    let acct = account(&ledger, "acct_429", "key-429", 100).await;
    let layer = CreditLayer::new(ledger.clone()).pricing(pricing(ROUTES));
    let gate = Gate::default();
    let server = Server::start(app(layer, gate.clone())).await;
    let client = http1();
    let first = tokio::spawn({
        let client = client.clone();
        let url = server.url("/v1/gated");
        async move { send(&client, get_req(&url, Some("key-429"))).await }
    });
    gate.entered.notified().await;
    let second = send(&client, get_req(&server.url("/v1/echo"), Some("key-429"))).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.json()["limit"], 1);
    assert!(second.json()["detail"]
        .as_str()
        .unwrap()
        .contains("1 requests in flight"));
    gate.release.notify_one();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(available(&ledger.inner, &acct).await, 96);
}

#[tokio::test]
async fn a_probe_answered_with_a_refusal_still_closes_the_breaker() {
    let ledger = SwitchLedger::new(MemoryLedger::new());
    account(&ledger, "acct_rich", "key-rich", 100).await;
    // A key whose account the ledger has never seen: the reserve answers `UnknownAccount`.
    ledger
        .register_api_key(
            &tower_credits::ApiKeyHash::of("key-broke"),
            &tower_credits::AccountId::new("acct_ghost").unwrap(),
        )
        .await
        .unwrap();
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(ROUTES))
        .circuit_breaker(1, Duration::from_millis(10));
    let server = Server::start(app(layer, Gate::default())).await;
    let client = http1();
    let url = server.url("/v1/echo");
    for key in ["key-rich", "key-broke"] {
        send(&client, get_req(&url, Some(key))).await; // warm the key cache
    }
    ledger.set_down(true);
    let down = send(&client, get_req(&url, Some("key-rich"))).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    ledger.set_down(false);
    // The first request after the cooldown is the probe; the ledger answers it "unknown
    // account" (a 402 with nothing available).
    wait_until("the probe gets the ledger's answer", || {
        let client = client.clone();
        let url = url.clone();
        async move {
            send(&client, get_req(&url, Some("key-broke"))).await.status
                == StatusCode::PAYMENT_REQUIRED
        }
    })
    .await;
    // That answer proves the ledger is back: the breaker is closed for everyone.
    let rich = send(&client, get_req(&url, Some("key-rich"))).await;
    assert_eq!(rich.status, StatusCode::OK);
}
