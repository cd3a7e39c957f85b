//! Errors that are not outages, prices out of range, floods of unknown API keys, the two
//! fail-open policies, and a trusted header given twice: what callers get, what the
//! handler sees (nothing, when billing failed), what the ledger is asked, and what the
//! breaker and the counters make of it.
//!
//! Driven through a real axum server, or through the service called directly where the
//! order of `call`s must be exact (single flight and the lookup bound are decided in
//! `call`, before any future is polled). Nothing sleeps and hopes: waits poll a condition
//! against a deadline (`support::rig`).

mod http_support;
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::future::join_all;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use http_support::*;
use support::redis::RedisServer;
use support::rig::{pricing, wait_for_async, DEADLINE};
use tokio::sync::watch;
use tower::Service;
use tower_credits::account::AccountResolver;
use tower_credits::ledger::MAX_AMOUNT;
use tower_credits::pricing::{Price, Pricing};
use tower_credits::{
    AccountId, ApiKeyHash, CreditLayer, CreditService, Ledger, LedgerError, MemoryLedger,
    OutagePolicy, Protocol, RedisLedger, ResponseFuture,
};
use tower_credits::{LedgerAdmin, LedgerReports};

// ---------------------------------------------------------------------------------------
// A probing ledger: counts reserves and key lookups, can hold lookups on a gate, and can
// answer lookups with a corrupt-state error.
// ---------------------------------------------------------------------------------------

type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send>>;

#[derive(Clone)]
struct Probe<L> {
    inner: L,
    reserves: Arc<AtomicU64>,
    lookups: Arc<AtomicU64>,
    /// `true`: lookups answer; `false`: they wait until it is `true` again.
    gate: Arc<watch::Sender<bool>>,
    /// Lookups answer `LedgerError::Corrupt` (after the gate).
    corrupt_lookups: Arc<AtomicBool>,
}

impl<L: Ledger> Probe<L> {
    fn new(inner: L) -> Self {
        Self {
            inner,
            reserves: Arc::default(),
            lookups: Arc::default(),
            gate: Arc::new(watch::channel(true).0),
            corrupt_lookups: Arc::default(),
        }
    }

    fn reserves(&self) -> u64 {
        self.reserves.load(Ordering::SeqCst)
    }

    fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::SeqCst)
    }

    fn close_gate(&self) {
        self.gate.send_replace(false);
    }

    fn open_gate(&self) {
        self.gate.send_replace(true);
    }
}

macro_rules! pass {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $t:ty;)*) => {
        $(fn $name(&self, $($arg: $ty),*) -> <Self as Ledger>::Future<$t> {
            Box::pin(self.inner.$name($($arg),*))
        })*
    };
}

impl<L: Ledger> Ledger for Probe<L> {
    type Future<T: Send + 'static> = BoxFut<T>;

    fn reserve(
        &self,
        r: tower_credits::ledger::Reserve,
    ) -> Self::Future<tower_credits::ledger::ReserveOutcome> {
        self.reserves.fetch_add(1, Ordering::SeqCst);
        Box::pin(self.inner.reserve(r))
    }

    fn lookup_api_key(&self, key: &ApiKeyHash) -> Self::Future<Option<AccountId>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let mut open = self.gate.subscribe();
        let inner = self.inner.clone();
        let corrupt = self.corrupt_lookups.clone();
        let key = *key;
        Box::pin(async move {
            let _ = open.wait_for(|open| *open).await;
            if corrupt.load(Ordering::SeqCst) {
                return Err(LedgerError::Corrupt(
                    "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
                ));
            }
            inner.lookup_api_key(&key).await
        })
    }

    pass! {
        settle(s: tower_credits::ledger::Settle) -> tower_credits::ledger::Settlement;
        extend(e: tower_credits::ledger::Extend) -> tower_credits::ledger::Extended;
        grow(g: tower_credits::ledger::Grow) -> tower_credits::ledger::GrowOutcome;
        store_response(s: tower_credits::ledger::StoreResponse) -> bool;
    }
}

impl<L: Ledger + LedgerAdmin> LedgerAdmin for Probe<L> {
    pass! {
        top_up(t: tower_credits::TopUp) -> tower_credits::ledger::ToppedUp;
        configure(c: tower_credits::ledger::Configure) -> ();
        register_api_key(k: &ApiKeyHash, a: &AccountId) -> ();
        revoke_api_key(k: &ApiKeyHash) -> bool;
    }
}

impl<L: Ledger + LedgerReports> LedgerReports for Probe<L> {
    pass! {
        balance(a: &AccountId) -> tower_credits::Balance;
        usage(a: &AccountId) -> tower_credits::ledger::Usage;
    }
}

// ---------------------------------------------------------------------------------------
// The inner service: counts the requests that reached it.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Handler(Arc<AtomicU64>);

impl Handler {
    fn calls(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl Service<Request<Full<Bytes>>> for Handler {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
    }
}

/// An axum app whose `/v1/*` routes count their calls in `handler`.
fn app<L: Ledger>(layer: CreditLayer<L>, handler: Handler) -> Router {
    let h = handler.clone();
    let echo = move || {
        let h = h.clone();
        async move {
            h.0.fetch_add(1, Ordering::SeqCst);
            "echo"
        }
    };
    let h = handler;
    let other = move || {
        let h = h.clone();
        async move {
            h.0.fetch_add(1, Ordering::SeqCst);
            "other"
        }
    };
    Router::new()
        .route("/v1/echo", get(echo))
        .route("/v1/huge", get(other.clone()))
        .route("/v1/max", get(other))
        .layer(layer)
}

// ---------------------------------------------------------------------------------------
// Calling the service directly.
// ---------------------------------------------------------------------------------------

type Direct<L> = CreditService<Handler, L>;
type DirectFuture<L> = ResponseFuture<Handler, Full<Bytes>, L>;

/// A response read to the end.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn problem_type(&self) -> String {
        let json: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body));
        json["type"].as_str().unwrap_or_default().to_owned()
    }
}

fn keyed(key: &str) -> Request<Full<Bytes>> {
    Request::get("/v1/echo")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::default())
        .unwrap()
}

/// `call`s the service (the lookup bound and single flight are decided here, synchronously).
fn start<L: Ledger>(svc: &mut Direct<L>, key: &str) -> DirectFuture<L> {
    svc.call(keyed(key))
}

async fn finish<L: Ledger>(fut: DirectFuture<L>) -> Reply {
    let response = fut.await.unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn finish_all<L: Ledger>(futs: Vec<DirectFuture<L>>) -> Vec<Reply> {
    tokio::time::timeout(DEADLINE, join_all(futs.into_iter().map(finish)))
        .await
        .expect("every request is answered")
}

/// Asserts a problem JSON refusal with this status and a `type` ending in `kind`.
fn assert_problem(
    status: StatusCode,
    content_type: Option<&str>,
    ty: &str,
    want: StatusCode,
    kind: &str,
) {
    assert_eq!(status, want, "status (type {ty:?})");
    assert_eq!(content_type, Some("application/problem+json"));
    assert!(
        ty.ends_with(kind),
        "problem type {ty:?} should end with {kind:?}"
    );
}

fn assert_answer_problem(answer: &Answer, want: StatusCode, kind: &str) {
    let ty = answer.json()["type"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_problem(
        answer.status,
        answer.header("content-type"),
        &ty,
        want,
        kind,
    );
}

fn assert_reply_problem(reply: &Reply, want: StatusCode, kind: &str) {
    assert_problem(
        reply.status,
        reply.header("content-type"),
        &reply.problem_type(),
        want,
        kind,
    );
}

async fn available_of<L: LedgerReports>(ledger: &L, account: &AccountId) -> i64 {
    ledger.balance(account).await.unwrap().available
}

async fn redis_ledger(server: &RedisServer, call_timeout: Duration) -> RedisLedger {
    RedisLedger::builder()
        .url(server.url())
        .call_timeout(call_timeout)
        .build()
        .await
        .expect("connect to the test redis-server")
}

// ---------------------------------------------------------------------------------------
// 1. Errors that are not outages.
// ---------------------------------------------------------------------------------------

/// Corrupted account keys make the reserve script fail with `WRONGTYPE`: a `500`
/// billing-error, one ledger call per request (no retry), the handler never runs even
/// under fail-open, the breaker (2 failures) never opens, and `billing_errors` counts
/// every one.
#[tokio::test]
async fn corrupt_redis_state_is_a_500_never_retried_never_served_and_never_trips_the_breaker() {
    let redis = RedisServer::start();
    let ledger = Probe::new(redis_ledger(&redis, Duration::from_secs(5)).await);
    let holds_acct = account(&ledger, "acct_bad_holds", "key-bad-holds", 100).await;
    let acct_acct = account(&ledger, "acct_bad_acct", "key-bad-acct", 100).await;
    let ok_acct = account(&ledger, "acct_fine", "key-fine", 100).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(&[("GET /v1/echo", 3)]))
        .circuit_breaker(2, Duration::from_secs(30))
        .on_outage(OutagePolicy::FailOpen);
    let handler = Handler::default();
    let server = Server::start(app(layer.clone(), handler.clone())).await;
    let client = http1();
    let url = server.url("/v1/echo");
    // Every key is used once: cached, and each account pays 3.
    for key in ["key-bad-holds", "key-bad-acct", "key-fine"] {
        let answer = send(&client, get_req(&url, Some(key))).await;
        assert_eq!(answer.status, StatusCode::OK, "{key}: {answer:?}");
        assert_eq!(answer.int("credits-cost"), 3);
    }
    assert_eq!(handler.calls(), 3);

    redis.cli(&["SET", &format!("credits:{{{holds_acct}}}:holds"), "x"]);
    redis.cli(&["SET", &format!("credits:{{{acct_acct}}}:acct"), "x"]);

    let (reserves, handled) = (ledger.reserves(), handler.calls());
    const BAD: u64 = 8;
    for i in 0..BAD {
        let key = if i % 2 == 0 {
            "key-bad-holds"
        } else {
            "key-bad-acct"
        };
        let answer = send(&client, get_req(&url, Some(key))).await;
        assert_answer_problem(&answer, StatusCode::INTERNAL_SERVER_ERROR, "billing-error");
        assert_eq!(
            answer.header("retry-after"),
            None,
            "a retry does not fix a bug"
        );
        assert_eq!(answer.header("credits-cost"), None);
    }
    assert_eq!(
        handler.calls(),
        handled,
        "never served unbilled, even under FailOpen"
    );
    assert_eq!(
        ledger.reserves() - reserves,
        BAD,
        "one reserve per request: never retried"
    );
    let stats = layer.stats();
    assert_eq!(stats.billing_errors, BAD);
    assert_eq!(
        (
            stats.outages,
            stats.served_unbilled,
            stats.breaker_fast_failures
        ),
        (0, 0, 0),
        "not an outage: {stats:?}"
    );
    assert!(layer.unbilled().snapshot().is_empty());

    // Eight errors in a row, a breaker that opens after two outages: still closed.
    let answer = send(&client, get_req(&url, Some("key-fine"))).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.int("credits-cost"), 3);
    assert_eq!(available_of(&ledger, &ok_acct).await, 94);
    assert_eq!(layer.stats().breaker_fast_failures, 0);
}

/// A lookup the ledger answers with a corrupt-state error: the request that made it, and
/// every request that waited on it (single flight), get the `500` — never `503`, and never
/// served unbilled, even under `FailOpenAnyKey`.
#[tokio::test]
async fn a_corrupt_answer_to_a_key_lookup_is_a_500_for_every_waiter_under_fail_open_any_key() {
    corrupt_lookup_with_waiters(OutagePolicy::FailOpenAnyKey).await;
}

/// The same under the default `FailClosed`: the waiters get the `500` too, not a `503`
/// that invites a retry.
#[tokio::test]
async fn a_corrupt_answer_to_a_key_lookup_is_a_500_for_every_waiter_under_fail_closed() {
    corrupt_lookup_with_waiters(OutagePolicy::FailClosed).await;
}

async fn corrupt_lookup_with_waiters(policy: OutagePolicy) {
    let ledger = Probe::new(MemoryLedger::new());
    ledger.corrupt_lookups.store(true, Ordering::SeqCst);
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(&[("GET /v1/echo", 2)]))
        .on_outage(policy);
    let handler = Handler::default();
    let mut svc: Direct<_> = CreditService::new(handler.clone(), &layer);

    // Alone.
    let reply = finish(start(&mut svc, "key-lonely")).await;
    assert_reply_problem(&reply, StatusCode::INTERNAL_SERVER_ERROR, "billing-error");
    assert_eq!(handler.calls(), 0);
    assert_eq!(layer.stats().billing_errors, 1);

    // With followers: one lookup, held on the gate until all of them wait on it.
    ledger.close_gate();
    let lookups = ledger.lookups();
    let futs: Vec<_> = (0..10).map(|_| start(&mut svc, "key-shared")).collect();
    assert_eq!(ledger.lookups() - lookups, 1, "single flight");
    ledger.open_gate();
    let replies = finish_all(futs).await;
    let seen: Vec<(u16, String)> = replies
        .iter()
        .map(|r| {
            let what = match r.header("content-type") {
                Some("application/problem+json") => r.problem_type(),
                other => other.unwrap_or("").to_owned(),
            };
            (r.status.as_u16(), what)
        })
        .collect();
    assert_eq!(
        handler.calls(),
        0,
        "the handler ran for a request whose lookup failed with corrupt state: {seen:?}; stats {:?}, unbilled {:?}",
        layer.stats(),
        layer.unbilled().snapshot()
    );
    assert_eq!(layer.stats().served_unbilled, 0);
    for reply in &replies {
        assert!(
            reply.status == StatusCode::INTERNAL_SERVER_ERROR
                && reply.problem_type().ends_with("billing-error"),
            "every waiter of a corrupt lookup should get the 500 billing-error; got {seen:?}"
        );
    }
    assert_eq!(layer.stats().billing_errors, 11, "{:?}", layer.stats());
    assert_eq!(
        layer.stats().outages,
        0,
        "not an outage: {:?}",
        layer.stats()
    );
}

// ---------------------------------------------------------------------------------------
// 2. A pricing closure's price out of range.
// ---------------------------------------------------------------------------------------

fn huge_pricing() -> Pricing {
    Pricing::from_fn(|_, path| match path {
        "/v1/huge" => Price::Hold(MAX_AMOUNT + 1),
        "/v1/max" => Price::Hold(MAX_AMOUNT),
        _ => Price::Hold(1),
    })
}

/// `Price::Hold(MAX_AMOUNT + 1)`: `500` billing-error, no ledger call at all (not even a key
/// lookup), the handler never runs, `billing_errors` counts it. `MAX_AMOUNT` itself is a
/// price like any other (here: not enough credits, `402`).
#[tokio::test]
async fn a_price_above_max_amount_is_a_500_without_any_ledger_call() {
    let ledger = SwitchLedger::new(MemoryLedger::new());
    let acct = account(&ledger, "acct_price", "key-price", 100).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(huge_pricing())
        .on_outage(OutagePolicy::FailOpenAnyKey);
    let handler = Handler::default();
    let server = Server::start(app(layer.clone(), handler.clone())).await;
    let client = http1();
    let huge = server.url("/v1/huge");

    // An uncached key: the price is refused before the key is looked up.
    let calls = ledger.calls();
    let answer = send(&client, get_req(&huge, Some("key-price"))).await;
    assert_answer_problem(&answer, StatusCode::INTERNAL_SERVER_ERROR, "billing-error");
    assert_eq!(ledger.calls(), calls, "no ledger call");
    assert_eq!(handler.calls(), 0);

    // A cached key.
    let answer = send(&client, get_req(&server.url("/v1/echo"), Some("key-price"))).await;
    assert_eq!(answer.status, StatusCode::OK);
    let calls = ledger.calls();
    for _ in 0..3 {
        let answer = send(&client, get_req(&huge, Some("key-price"))).await;
        assert_answer_problem(&answer, StatusCode::INTERNAL_SERVER_ERROR, "billing-error");
    }
    assert_eq!(ledger.calls(), calls, "no ledger call");
    assert_eq!(handler.calls(), 1, "only the echo ran");
    let stats = layer.stats();
    assert_eq!(stats.billing_errors, 4);
    assert_eq!((stats.outages, stats.served_unbilled), (0, 0));

    // The boundary: MAX_AMOUNT is held like any price, and refused for want of credits.
    let answer = send(&client, get_req(&server.url("/v1/max"), Some("key-price"))).await;
    assert_eq!(answer.status, StatusCode::PAYMENT_REQUIRED, "{answer:?}");
    assert_eq!(layer.stats().billing_errors, 4);
    assert_eq!(available(&ledger.inner, &acct).await, 99);
    assert_eq!(handler.calls(), 1);
}

/// The same refusal on a gRPC route is `INTERNAL` (13), trailers-only.
#[tokio::test]
async fn a_price_above_max_amount_is_internal_on_grpc() {
    let ledger = SwitchLedger::new(MemoryLedger::new());
    account(&ledger, "acct_grpc", "key-grpc", 100).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(Pricing::from_fn(|_, _| Price::Hold(u64::MAX)))
        .protocol(Protocol::Grpc);
    let handler = Handler::default();
    let mut svc: Direct<_> = CreditService::new(handler.clone(), &layer);
    let calls = ledger.calls();
    let reply = finish(start(&mut svc, "key-grpc")).await;
    assert_eq!(reply.status, StatusCode::OK, "gRPC refusals are HTTP 200");
    assert_eq!(reply.header("grpc-status"), Some("13"), "{reply:?}");
    assert_eq!(ledger.calls(), calls);
    assert_eq!(handler.calls(), 0);
    assert_eq!(layer.stats().billing_errors, 1);
}

// ---------------------------------------------------------------------------------------
// 3. Unknown keys: single flight, a bound, a breaker of their own.
// ---------------------------------------------------------------------------------------

/// Fifty requests with the same unknown key while its lookup is in flight: one lookup,
/// fifty `401`s.
#[tokio::test]
async fn fifty_requests_for_one_unknown_key_make_one_lookup() {
    let ledger = Probe::new(MemoryLedger::new());
    let layer = CreditLayer::new(ledger.clone());
    let handler = Handler::default();
    let mut svc: Direct<_> = CreditService::new(handler.clone(), &layer);
    ledger.close_gate();
    let futs: Vec<_> = (0..50).map(|_| start(&mut svc, "made-up-key")).collect();
    assert_eq!(ledger.lookups(), 1, "one lead, 49 followers");
    ledger.open_gate();
    let replies = finish_all(futs).await;
    assert_eq!(ledger.lookups(), 1, "single flight per key");
    for reply in &replies {
        assert_reply_problem(reply, StatusCode::UNAUTHORIZED, "");
    }
    assert_eq!(handler.calls(), 0);
    assert_eq!(layer.stats().key_lookups_shed, 0);
    // Cached as unknown: no second lookup.
    let reply = finish(start(&mut svc, "made-up-key")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(ledger.lookups(), 1);
}

/// With `max_concurrent_key_lookups(8)` and eight lookups in flight, every other uncached
/// key is refused at once (`503` ledger-busy, `Retry-After: 1`, counted), while a cached
/// key is billed as usual; once the lookups answer, new keys are looked up again.
#[tokio::test]
async fn unknown_keys_past_the_bound_are_shed_and_cached_keys_still_pay() {
    let ledger = Probe::new(MemoryLedger::new());
    let acct = account(&ledger, "acct_known", "key-known", 100).await;
    let layer = CreditLayer::new(ledger.clone()).max_concurrent_key_lookups(8);
    let handler = Handler::default();
    let mut svc: Direct<_> = CreditService::new(handler.clone(), &layer);
    assert_eq!(
        finish(start(&mut svc, "key-known")).await.status,
        StatusCode::OK
    );
    let lookups = ledger.lookups();

    ledger.close_gate();
    let mut futs: Vec<_> = (0..20).map(|_| start(&mut svc, "made-up-same")).collect();
    futs.extend((0..200).map(|i| start(&mut svc, &format!("made-up-{i}"))));
    // One lookup for the shared key, seven for the first distinct ones; the rest shed.
    assert_eq!(ledger.lookups() - lookups, 8);
    assert_eq!(layer.stats().key_lookups_shed, 193);

    // A cached key is not affected by the flood.
    let reply = finish(start(&mut svc, "key-known")).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("credits-cost"), Some("1"));

    ledger.open_gate();
    let replies = finish_all(futs).await;
    let mut by_kind: HashMap<(u16, String), usize> = HashMap::new();
    for reply in &replies {
        let ty = reply.problem_type();
        let kind = ty.rsplit(':').next().unwrap_or_default().to_owned();
        *by_kind.entry((reply.status.as_u16(), kind)).or_default() += 1;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_reply_problem(reply, StatusCode::SERVICE_UNAVAILABLE, "ledger-busy");
            assert_eq!(reply.header("retry-after"), Some("1"));
        } else {
            assert_reply_problem(reply, StatusCode::UNAUTHORIZED, "");
        }
    }
    assert_eq!(
        by_kind[&(503, "ledger-busy".to_owned())],
        193,
        "{by_kind:?}"
    );
    assert_eq!(by_kind.values().sum::<usize>(), 220);
    assert_eq!(handler.calls(), 2, "only the known key was served");
    assert_eq!(available_of(&ledger, &acct).await, 98);

    // The lookups are done: a new key is looked up, not shed.
    let reply = finish(start(&mut svc, "made-up-later")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(ledger.lookups() - lookups, 9);
    assert_eq!(layer.stats().key_lookups_shed, 193);
}

/// Second review, finding 6: a flood of made-up keys fills every lookup slot against a slow
/// ledger. A key the ledger recently said is valid, whose cache entry has lapsed (here: keys
/// are not cached at all), still gets a slot of its own and is billed, not refused `503`.
#[tokio::test]
async fn a_key_seen_valid_keeps_a_lookup_slot_during_a_flood() {
    let ledger = Probe::new(MemoryLedger::new());
    let acct = account(&ledger, "acct_regular", "key-regular", 100).await;
    let uncached = AccountResolver::api_key().key_ttl(Duration::ZERO, Duration::ZERO);
    let layer = CreditLayer::new(ledger.clone())
        .account_resolver(uncached)
        .max_concurrent_key_lookups(8);
    let handler = Handler::default();
    let mut svc: Direct<_> = CreditService::new(handler.clone(), &layer);
    assert_eq!(
        finish(start(&mut svc, "key-regular")).await.status,
        StatusCode::OK
    );

    ledger.close_gate();
    let flood: Vec<_> = (0..64)
        .map(|i| start(&mut svc, &format!("made-up-{i}")))
        .collect();
    let shed = layer.stats().key_lookups_shed;
    assert_eq!(shed, 56, "eight lookups in flight, the rest shed");
    let regular = start(&mut svc, "key-regular");
    assert_eq!(
        layer.stats().key_lookups_shed,
        shed,
        "the regular caller's key was shed by the flood"
    );
    ledger.open_gate();
    let reply = tokio::time::timeout(DEADLINE, finish(regular))
        .await
        .expect("answered");
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("credits-cost"), Some("1"));
    finish_all(flood).await;
    assert_eq!(available_of(&ledger, &acct).await, 98);
}

/// Redis stopped (SIGSTOP): a flood of made-up keys is shed past the bound, and the
/// lookups in flight time out — against the lookups' own breaker. The billing breaker
/// (3 failures, 60 s) never sees them: once Redis is back, a cached key is billed at once.
#[tokio::test]
async fn lookup_timeouts_do_not_open_the_billing_breaker() {
    let redis = RedisServer::start();
    let ledger = redis_ledger(&redis, Duration::from_millis(250)).await;
    let acct = account(&ledger, "acct_flood", "key-flood", 100).await;
    let layer = CreditLayer::new(ledger.clone())
        .max_concurrent_key_lookups(8)
        .circuit_breaker(3, Duration::from_secs(60));
    let handler = Handler::default();
    let mut svc: Direct<_> = CreditService::new(handler.clone(), &layer);
    assert_eq!(
        finish(start(&mut svc, "key-flood")).await.status,
        StatusCode::OK
    );

    redis.pause();
    let mut futs: Vec<_> = (0..20).map(|_| start(&mut svc, "made-up-same")).collect();
    futs.extend((0..200).map(|i| start(&mut svc, &format!("made-up-{i}"))));
    assert_eq!(layer.stats().key_lookups_shed, 193);
    let replies = finish_all(futs).await;
    let mut busy = 0;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        let ty = reply.problem_type();
        if ty.ends_with("ledger-busy") {
            busy += 1;
        } else {
            assert!(ty.ends_with("ledger-unavailable"), "{ty}");
        }
    }
    assert_eq!(busy, 193);
    assert_eq!(handler.calls(), 1);

    redis.resume();
    // The ledger's own connection answers again (not through the layer: its breaker is
    // left alone).
    wait_for_async("redis answers again", DEADLINE, || async {
        ledger.balance(&acct).await.ok()
    })
    .await;
    let reply = finish(start(&mut svc, "key-flood")).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "billing breaker opened by lookup timeouts? {reply:?}, stats {:?}",
        layer.stats()
    );
    assert_eq!(reply.header("credits-cost"), Some("1"));
    assert_eq!(layer.stats().breaker_fast_failures, 0);
    assert_eq!(available_of(&ledger, &acct).await, 98);
}

// ---------------------------------------------------------------------------------------
// 4. FailOpen against FailOpenAnyKey.
// ---------------------------------------------------------------------------------------

/// Under `FailOpen`, a cached key is served unbilled during an outage, but a key that could
/// not be verified is refused `503`.
#[tokio::test]
async fn fail_open_serves_cached_keys_and_refuses_unverified_ones() {
    let ledger = SwitchLedger::new(MemoryLedger::new());
    let acct = account(&ledger, "acct_fo", "key-fo", 100).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(&[("GET /v1/echo", 3)]))
        .on_outage(OutagePolicy::FailOpen);
    let handler = Handler::default();
    let server = Server::start(app(layer.clone(), handler.clone())).await;
    let client = http1();
    let url = server.url("/v1/echo");
    assert_eq!(
        send(&client, get_req(&url, Some("key-fo"))).await.status,
        StatusCode::OK
    );

    ledger.set_down(true);
    let answer = send(&client, get_req(&url, Some("key-fo"))).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.header("credits-cost"), None, "nothing billed");
    assert_eq!(handler.calls(), 2);

    let answer = send(&client, get_req(&url, Some("never-seen"))).await;
    assert_answer_problem(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "ledger-unavailable",
    );
    assert!(answer.header("retry-after").is_some());
    assert_eq!(handler.calls(), 2, "an unverified key is not served");
    ledger.set_down(false);

    let unbilled = layer.unbilled().snapshot();
    assert_eq!(unbilled.len(), 1, "{unbilled:?}");
    let mine = unbilled[&Some(acct.clone())];
    assert_eq!((mine.requests, mine.credits), (1, 3));
    assert_eq!(layer.stats().served_unbilled, 1);
    assert_eq!(available(&ledger.inner, &acct).await, 97);
}

/// Under `FailOpenAnyKey`, a key that could not be verified is served unbilled and counted
/// under `None`; a cached key under its account.
#[tokio::test]
async fn fail_open_any_key_serves_unverified_keys_unbilled_under_none() {
    let ledger = SwitchLedger::new(MemoryLedger::new());
    let acct = account(&ledger, "acct_any", "key-any", 100).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(&[("GET /v1/echo", 3)]))
        .on_outage(OutagePolicy::FailOpenAnyKey);
    let handler = Handler::default();
    let server = Server::start(app(layer.clone(), handler.clone())).await;
    let client = http1();
    let url = server.url("/v1/echo");
    assert_eq!(
        send(&client, get_req(&url, Some("key-any"))).await.status,
        StatusCode::OK
    );

    ledger.set_down(true);
    for key in ["never-seen", "key-any"] {
        let answer = send(&client, get_req(&url, Some(key))).await;
        assert_eq!(answer.status, StatusCode::OK, "{key}: {answer:?}");
        assert_eq!(answer.header("credits-cost"), None, "nothing billed");
    }
    ledger.set_down(false);
    assert_eq!(handler.calls(), 3);

    let unbilled = layer.unbilled().snapshot();
    let unknown = unbilled[&None];
    assert_eq!((unknown.requests, unknown.credits), (1, 3));
    assert_eq!(unbilled[&Some(acct.clone())].requests, 1);
    assert_eq!(layer.stats().served_unbilled, 2);
    assert_eq!(available(&ledger.inner, &acct).await, 97);
}

// ---------------------------------------------------------------------------------------
// 5. A trusted header given twice.
// ---------------------------------------------------------------------------------------

/// `trusted_header("x-account")`: twice (equal or not) is `401` and nothing runs; once is
/// served and billed to that account.
#[tokio::test]
async fn a_trusted_header_given_twice_is_refused() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_th", "key-th", 100).await;
    let other = account(&ledger, "acct_other", "key-other", 100).await;
    let layer = CreditLayer::new(ledger.clone())
        .account_resolver(AccountResolver::trusted_header("x-account"))
        .pricing(pricing(&[("GET /v1/echo", 2)]));
    let handler = Handler::default();
    let server = Server::start(app(layer.clone(), handler.clone())).await;
    let client = http1();
    let url = server.url("/v1/echo");
    let req = |values: &[&str]| {
        values
            .iter()
            .fold(Request::get(&url), |r, v| r.header("x-account", *v))
            .body(Full::default())
            .unwrap()
    };

    for values in [
        &["acct_th", "acct_th"][..],
        &["acct_th", "acct_other"],
        &["acct_other", "acct_th"],
    ] {
        let answer = send(&client, req(values)).await;
        assert_answer_problem(&answer, StatusCode::UNAUTHORIZED, "");
        assert_eq!(answer.header("credits-cost"), None);
    }
    assert_eq!(handler.calls(), 0);

    let answer = send(&client, req(&["acct_th"])).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.int("credits-cost"), 2);
    assert_eq!(handler.calls(), 1);
    assert_eq!(available(&ledger, &acct).await, 98);
    assert_eq!(available(&ledger, &other).await, 100);
}
