//! Credit leases end to end: a real axum server, the credit layer over `Leased` over a real
//! Redis, one caller at a steady rate. Once its account is busy the requests stop reaching
//! Redis (counted in `INFO commandstats`), every response still says what it cost and what
//! is left (one less each time, across flushes), and a graceful stop commits exactly what
//! was served.

mod http_support;
mod support;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use http_support::*;
use support::redis::RedisServer;
use support::rig::{wait_for_async, DEADLINE};
use tower_credits::ledger::{Leased, RedisLedger};
use tower_credits::pricing::Pricing;
use tower_credits::{CreditLayer, LedgerReports};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_caller_is_billed_without_a_store_call_per_request() {
    let redis = RedisServer::start();
    let ledger = RedisLedger::builder()
        .url(redis.url())
        .call_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let account = account(&ledger, "acct_lease_http", "key-lease", 1_000_000).await;
    let leased = Leased::new(ledger.clone())
        .board(ledger.lease_board())
        .busy_at(20)
        .flush_every(Duration::from_millis(200));
    let flusher = leased.spawn_flusher();
    let layer = CreditLayer::new(leased.clone()).pricing(Pricing::new().route("GET /v1/echo", 1));
    let app = Router::new()
        .route("/v1/echo", get(|| async { "echo" }))
        .layer(layer.clone());
    let server = Server::start(app).await;
    let client = http1();
    let url = server.url("/v1/echo");

    let mut served = 0u64;
    let mut last_remaining: Option<i64> = None;
    let call = || {
        let (client, url) = (client.clone(), url.clone());
        async move { send(&client, get_req(&url, Some("key-lease"))).await }
    };
    // Until the flusher has leased the account: the caller sees nothing change.
    wait_for_async("the account to be leased", DEADLINE, || {
        let (call, leased) = (call(), leased.clone());
        async move {
            let answer = call.await;
            assert_eq!(answer.status, StatusCode::OK);
            (!leased.leased_accounts().is_empty()).then_some(())
        }
    })
    .await;
    let before = redis.script_calls();
    for _ in 0..400 {
        let answer = call().await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("credits-cost"), Some("1"));
        let remaining = answer.int("credits-remaining");
        if let Some(last) = last_remaining {
            assert_eq!(remaining, last - 1, "one less each request, across flushes");
        }
        last_remaining = Some(remaining);
        served += 1;
    }
    let calls = redis.script_calls() - before;
    // Two calls per flush (next block, previous commit), one flush per 200 ms: far from
    // the 800 a per-request hold would cost, whatever the machine's speed.
    assert!(
        calls * 20 <= served,
        "{calls} script calls for {served} requests (at most one per 20)"
    );

    // A graceful stop: the layer drains, the leases commit and return.
    assert!(layer.shutdown(Duration::from_secs(5)).await);
    leased.shutdown().await.unwrap();
    flusher.abort();
    let b = ledger.balance(&account).await.unwrap();
    assert_eq!(b.held, 0, "every block returned: {b:?}");
    assert_eq!(
        b.available,
        last_remaining.unwrap(),
        "what the last response said is what the ledger has"
    );
    assert_eq!(b.topped_up as i64, b.available + b.committed as i64);
}
