//! Idempotent requests end to end, through a real axum server and hyper client, on the
//! in-memory ledger, a Redis server and a Redis Cluster: a retried call is answered from
//! its first response and never charged twice.
//!
//! Adversarial twins: 8 duplicates racing, one key reused for another body, one key on
//! two accounts, a replica that dies between the commit and the store, a key kept past
//! its retention, a malformed key, a body too large to fingerprint.

mod http_support;
#[macro_use]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use http_support::{account, http1, send, Answer, Server};
use support::rig::{assert_conserved, wait_until};
use tower_credits::clock::ManualClock;
use tower_credits::idempotency::IdempotencyLayer;
use tower_credits::ledger::idempotency::STORE_GRACE;
use tower_credits::ledger::{
    Extend, Extended, Grow, GrowOutcome, Reserve, ReserveOutcome, Settle, Settlement, StoreResponse,
};
use tower_credits::pricing::Pricing;
use tower_credits::{
    AccountId, ApiKeyHash, Charge, CreditLayer, Ledger, LedgerAdmin, LedgerError, LedgerReports,
    TopUp,
};

/// How many times the handler ran.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicU64>);

#[derive(serde::Deserialize)]
struct Generate {
    tokens: u64,
}

/// Charges `tokens` and answers which run this was: a replay shows the first run's number.
async fn generate(
    charge: Charge,
    Extension(runs): Extension<Runs>,
    Json(body): Json<Generate>,
) -> Json<serde_json::Value> {
    charge.set(body.tokens).expect("within the hold");
    let run = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    Json(serde_json::json!({ "tokens": body.tokens, "run": run }))
}

async fn app<L: Ledger>(ledger: L, runs: Runs) -> Server {
    let credits = CreditLayer::new(ledger).pricing(Pricing::new().route("POST /v1/generate", 50));
    let router = Router::new()
        .route("/v1/generate", post(generate))
        .layer(credits)
        .layer(IdempotencyLayer::new().max_request_body(1024))
        .layer(Extension(runs));
    Server::start(router).await
}

fn keyed(server: &Server, api_key: &str, key: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut req = Request::post(server.url("/v1/generate"))
        .header("authorization", format!("Bearer {api_key}"))
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// Sends until the answer is not "in progress" (the first response's store may still be
/// on its way), with the rig's deadline.
async fn settled_answer(server: &Server, api_key: &str, key: &str, body: &str) -> Answer {
    let last = std::sync::Mutex::new(None);
    wait_until("the retry is answered", || async {
        let answer = send(&http1(), keyed(server, api_key, Some(key), body)).await;
        let in_progress = answer.status == 409
            && answer.json()["type"]
                .as_str()
                .unwrap()
                .ends_with("request-in-progress");
        *last.lock().unwrap() = Some(answer);
        !in_progress
    })
    .await;
    last.into_inner().unwrap().unwrap()
}

/// A retry gets the first response's bytes, says it is a replay, costs nothing, and the
/// handler does not run again.
async fn a_replay_returns_the_same_bytes_and_charges_nothing<
    L: Ledger + LedgerAdmin + LedgerReports,
>(
    ledger: L,
) {
    let acct = account(&ledger, "acct_replay", "key-replay", 100).await;
    let runs = Runs::default();
    let server = app(ledger.clone(), runs.clone()).await;
    let body = r#"{"tokens": 12}"#;
    let first = send(
        &http1(),
        keyed(&server, "key-replay", Some("order-1"), body),
    )
    .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("credits-cost"), Some("12"));
    assert_eq!(first.header("idempotent-replayed"), None);

    let replay = settled_answer(&server, "key-replay", "order-1", body).await;
    assert_eq!(replay.status, 200, "{replay:?}");
    assert_eq!(replay.body, first.body, "the same bytes");
    assert_eq!(replay.header("content-type"), first.header("content-type"));
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.header("credits-cost"), Some("0"));
    assert_eq!(replay.header("credits-remaining"), Some("88"));
    assert_eq!(runs.0.load(Ordering::SeqCst), 1, "the handler ran once");
    let b = assert_conserved(&ledger, &acct).await;
    assert_eq!((b.committed, b.held), (12, 0));
}

/// 8 duplicates at once: charged exactly once, each answered `200` (the call or its
/// replay) or `409` (in progress).
async fn eight_concurrent_duplicates_are_charged_once<L: Ledger + LedgerAdmin + LedgerReports>(
    ledger: L,
) {
    let acct = account(&ledger, "acct_dup", "key-dup", 100).await;
    let runs = Runs::default();
    let server = app(ledger.clone(), runs.clone()).await;
    let client = http1();
    let sends = (0..8).map(|_| {
        let req = keyed(&server, "key-dup", Some("order-dup"), r#"{"tokens": 7}"#);
        let client = client.clone();
        async move { send(&client, req).await }
    });
    let answers = futures_util::future::join_all(sends).await;
    for answer in &answers {
        assert!(answer.status == 200 || answer.status == 409, "{answer:?}");
    }
    assert!(answers.iter().any(|a| a.status == 200));
    assert_eq!(runs.0.load(Ordering::SeqCst), 1, "the handler ran once");
    wait_until("the first settles", || async {
        ledger.balance(&acct).await.unwrap().held == 0
    })
    .await;
    let b = assert_conserved(&ledger, &acct).await;
    assert_eq!(b.committed, 7, "charged once");
}

/// The same key with another body is `422`; the same key from another account is another
/// key (two charges); a refused call is not stored, so its retry runs.
async fn keys_are_per_request_and_per_account<L: Ledger + LedgerAdmin + LedgerReports>(ledger: L) {
    let a = account(&ledger, "acct_k1", "key-k1", 100).await;
    let b = account(&ledger, "acct_k2", "key-k2", 100).await;
    let poor = account(&ledger, "acct_k3", "key-k3", 10).await;
    let runs = Runs::default();
    let server = app(ledger.clone(), runs.clone()).await;

    let first = send(
        &http1(),
        keyed(&server, "key-k1", Some("k"), r#"{"tokens": 5}"#),
    )
    .await;
    assert_eq!(first.status, 200);
    let reused = send(
        &http1(),
        keyed(&server, "key-k1", Some("k"), r#"{"tokens": 6}"#),
    )
    .await;
    assert_eq!(reused.status, 422, "{reused:?}");
    assert!(reused.json()["type"]
        .as_str()
        .unwrap()
        .ends_with("idempotency-key-reused"));
    let other = send(
        &http1(),
        keyed(&server, "key-k2", Some("k"), r#"{"tokens": 5}"#),
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("idempotent-replayed"), None);

    let refused = send(
        &http1(),
        keyed(&server, "key-k3", Some("p"), r#"{"tokens": 5}"#),
    )
    .await;
    assert_eq!(refused.status, 402);
    ledger.top_up(TopUp::new(&poor, 100, "more")).await.unwrap();
    let retried = send(
        &http1(),
        keyed(&server, "key-k3", Some("p"), r#"{"tokens": 5}"#),
    )
    .await;
    assert_eq!(
        retried.status, 200,
        "a refusal is not stored: the retry runs"
    );

    assert_eq!(runs.0.load(Ordering::SeqCst), 3);
    for (acct, committed) in [(&a, 5), (&b, 5), (&poor, 5)] {
        wait_until("settled", || async {
            ledger.balance(acct).await.unwrap().held == 0
        })
        .await;
        assert_eq!(assert_conserved(&ledger, acct).await.committed, committed);
    }
}

/// A malformed key is `400`, a keyed body over the limit `413`; neither runs nor charges.
async fn bad_keys_and_large_bodies_are_refused<L: Ledger + LedgerAdmin + LedgerReports>(ledger: L) {
    let acct = account(&ledger, "acct_bad", "key-bad", 100).await;
    let runs = Runs::default();
    let server = app(ledger.clone(), runs.clone()).await;
    for bad in ["\"unterminated", "two words", "\"\""] {
        let answer = send(
            &http1(),
            keyed(&server, "key-bad", Some(bad), r#"{"tokens": 1}"#),
        )
        .await;
        assert_eq!(answer.status, 400, "{bad:?}: {answer:?}");
        assert!(answer.json()["type"]
            .as_str()
            .unwrap()
            .ends_with("invalid-header"));
    }
    let big = format!(r#"{{"tokens": 1, "pad": "{}"}}"#, "x".repeat(2048));
    let answer = send(&http1(), keyed(&server, "key-bad", Some("big"), &big)).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    // Unkeyed, the same body is not buffered, and runs.
    let answer = send(&http1(), keyed(&server, "key-bad", None, &big)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
    assert_eq!(assert_conserved(&ledger, &acct).await.committed, 1);
}

/// A ledger whose `store_response` never lands: the replica that served the first call
/// died between its commit and its store.
#[derive(Clone)]
struct DiesBeforeStoring<L>(L);

impl<L: Ledger> Ledger for DiesBeforeStoring<L> {
    type Future<T: Send + 'static> =
        futures_util::future::BoxFuture<'static, Result<T, LedgerError>>;

    fn reserve(&self, r: Reserve) -> Self::Future<ReserveOutcome> {
        Box::pin(self.0.reserve(r))
    }
    fn settle(&self, s: Settle) -> Self::Future<Settlement> {
        Box::pin(self.0.settle(s))
    }
    fn extend(&self, e: Extend) -> Self::Future<Extended> {
        Box::pin(self.0.extend(e))
    }
    fn grow(&self, g: Grow) -> Self::Future<GrowOutcome> {
        Box::pin(self.0.grow(g))
    }
    fn store_response(&self, _: StoreResponse) -> Self::Future<bool> {
        Box::pin(async { Err(LedgerError::Unavailable("the replica died".into())) })
    }
    fn lookup_api_key(&self, k: &ApiKeyHash) -> Self::Future<Option<AccountId>> {
        Box::pin(self.0.lookup_api_key(k))
    }
}

/// The crash window: the first call was committed by a replica that died before storing
/// its response. Another replica tells retries it is in progress for the store grace,
/// then that its replay is unavailable; it never runs the call again.
async fn a_call_committed_by_a_dead_replica_never_runs_again<
    L: Ledger + LedgerAdmin + LedgerReports,
>(
    ledger: L,
    clock: ManualClock,
) {
    let acct = account(&ledger, "acct_crash", "key-crash", 100).await;
    let runs = Runs::default();
    let dying = app(DiesBeforeStoring(ledger.clone()), runs.clone()).await;
    let survivor = app(ledger.clone(), runs.clone()).await;
    let body = r#"{"tokens": 9}"#;
    let first = send(&http1(), keyed(&dying, "key-crash", Some("c"), body)).await;
    assert_eq!(first.status, 200);
    wait_until("the commit lands", || async {
        ledger.balance(&acct).await.unwrap().held == 0
    })
    .await;

    let early = send(&http1(), keyed(&survivor, "key-crash", Some("c"), body)).await;
    assert_eq!(early.status, 409, "{early:?}");
    assert!(early.json()["type"]
        .as_str()
        .unwrap()
        .ends_with("request-in-progress"));
    assert!(early.header("retry-after").is_some());

    clock.advance(STORE_GRACE + Duration::from_secs(1));
    let late = send(&http1(), keyed(&survivor, "key-crash", Some("c"), body)).await;
    assert_eq!(late.status, 409, "{late:?}");
    assert!(late.json()["type"]
        .as_str()
        .unwrap()
        .ends_with("replay-unavailable"));
    assert_eq!(runs.0.load(Ordering::SeqCst), 1, "never run again");
    assert_eq!(assert_conserved(&ledger, &acct).await.committed, 9);
}

/// Past its retention a key is new again: the call runs (and is charged) once more.
async fn a_key_past_its_retention_is_new_again<L: Ledger + LedgerAdmin + LedgerReports>(
    ledger: L,
    clock: ManualClock,
) {
    let acct = account(&ledger, "acct_ret", "key-ret", 100).await;
    let runs = Runs::default();
    let server = app(ledger.clone(), runs.clone()).await;
    let body = r#"{"tokens": 4}"#;
    assert_eq!(
        send(&http1(), keyed(&server, "key-ret", Some("r"), body))
            .await
            .status,
        200
    );
    let replay = settled_answer(&server, "key-ret", "r", body).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));

    clock.advance(Duration::from_secs(24 * 60 * 60 + 1));
    let again = send(&http1(), keyed(&server, "key-ret", Some("r"), body)).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), None);
    assert_eq!(runs.0.load(Ordering::SeqCst), 2);
    wait_until("settled", || async {
        ledger.balance(&acct).await.unwrap().held == 0
    })
    .await;
    assert_eq!(assert_conserved(&ledger, &acct).await.committed, 8);
}

on_every_ledger!(
    a_replay_returns_the_same_bytes_and_charges_nothing,
    eight_concurrent_duplicates_are_charged_once,
    keys_are_per_request_and_per_account,
    bad_keys_and_large_bodies_are_refused,
);

mod clocked {
    use super::*;

    on_every_clocked_ledger!(
        a_call_committed_by_a_dead_replica_never_runs_again,
        a_key_past_its_retention_is_new_again,
    );
}
