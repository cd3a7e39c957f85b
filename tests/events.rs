//! Low-balance, runway and depletion events, end to end: a real layer over real HTTP, a
//! real webhook receiver (HTTPS with a generated certificate, or loopback HTTP) that
//! verifies every signature and counts deliveries, on the embedded ledger, on a real
//! `redis-server` and on a Redis Cluster; two replicas on one Redis, the one that detected
//! an event killed before it delivered (or after it delivered and before it acknowledged).

mod http_support;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use http_support::*;
use support::receiver::{reference, Receiver};
use support::redis::{RedisCluster, RedisServer};
use support::rig::{wait_for_async, wait_until, DEADLINE};
use tower::ServiceExt;
use tower_credits::events::{CreditEvent, EventOutbox};
use tower_credits::events::{Dispatcher, Events, RetryPolicy, Webhook};
use tower_credits::ledger::RedisLedgerBuilder;
use tower_credits::ledger::{Configure, HoldId, Reserve};
use tower_credits::pricing::Pricing;
use tower_credits::{
    AccountId, AccountSettings, ApiKeyHash, CreditLayer, Ledger, LedgerAdmin, LedgerReports,
    MemoryLedger, RedisLedger, TopUp,
};

const SECRET: &str = "whsec_2Lrkhj70NcextOYSydLiiQyw7hu8HwbT";

trait TestLedger: Ledger + LedgerAdmin + LedgerReports + EventOutbox + Clone {}
impl<L: Ledger + LedgerAdmin + LedgerReports + EventOutbox + Clone> TestLedger for L {}

/// A webhook to `receiver`, trusting its certificate.
fn hook(receiver: &Receiver) -> Webhook {
    let hook = Webhook::new(&receiver.url(), SECRET).unwrap();
    match receiver.ca_pem() {
        Some(pem) => hook.add_root_certificate_pem(&pem).unwrap(),
        None => hook,
    }
}

/// Retries fast enough for a test.
fn quick_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy::new(attempts)
        .first_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(100))
}

/// A dispatcher of `ledger` posting to `receiver`.
fn dispatcher<L: TestLedger>(ledger: &L, receiver: &Receiver, attempts: u32) -> Events {
    Dispatcher::new(ledger.clone())
        .webhook(hook(receiver))
        .retry(quick_retries(attempts))
        .lease(Duration::from_secs(2))
        .scan_every(Duration::from_millis(100))
        .spawn()
}

/// `GET /v1/echo` costs 1, `GET /v1/fail` holds 2 and fails (refunded).
fn app<L: TestLedger>(ledger: L, events: Events) -> Router {
    Router::new()
        .route("/v1/echo", get(|| async { "echo" }))
        .route(
            "/v1/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .layer(
            CreditLayer::new(ledger)
                .pricing(
                    Pricing::new()
                        .route("GET /v1/echo", 1)
                        .route("GET /v1/fail", 2),
                )
                .events(events),
        )
}

/// An account reachable by `key`, with `credits` and `thresholds`.
async fn account<L: TestLedger>(
    ledger: &L,
    name: &str,
    key: &str,
    credits: u64,
    thresholds: &[u64],
) -> AccountId {
    let account = AccountId::new(name).unwrap();
    let settings = thresholds
        .iter()
        .fold(AccountSettings::new(), |s, &t| s.low_balance_threshold(t));
    ledger
        .configure(Configure::new(&account, settings))
        .await
        .unwrap();
    ledger
        .top_up(TopUp::new(&account, credits, format!("seed-{name}")))
        .await
        .unwrap();
    ledger
        .register_api_key(&ApiKeyHash::of(key), &account)
        .await
        .unwrap();
    account
}

/// Waits until nothing of `account` waits in the outbox: every event delivered and
/// acknowledged (or dead-lettered).
async fn drained<L: TestLedger>(ledger: &L, account: &AccountId) {
    wait_until("the outbox to drain", || async {
        ledger.pending(account).await.unwrap().is_empty()
    })
    .await;
}

/// Every delivery was signed right (the receiver checks each with `events::verify` and
/// with the reference algorithm, and refuses it unless both pass), carried its id in the
/// signed `webhook-id`, and (on a clean run) no id came twice.
fn assert_clean(receiver: &Receiver) {
    assert_eq!(receiver.rejected(), 0, "a delivery failed verification");
    let ids = receiver.ids();
    let headers: Vec<String> = receiver
        .event_id_headers()
        .into_iter()
        .map(|h| h.unwrap_or_default())
        .collect();
    assert_eq!(ids, headers, "webhook-id names the body's id");
    // Each signature the dispatcher made, checked again with the reference algorithm at
    // the time it was sent.
    for record in receiver.records() {
        assert_eq!(
            reference::verify(
                SECRET,
                &record.headers,
                &record.raw_body,
                record.timestamp as i64
            ),
            Ok(()),
            "{:?}",
            record.event_id
        );
    }
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "an event was delivered twice: {ids:?}"
    );
}

/// The quickstart's `demo-poor` (5 credits, thresholds 100 and 4), over HTTPS: its first
/// echo fires `balance.low` for 100, its second for 4, more spending fires nothing, its
/// first 402 fires `balance.depleted` and the next none. `credits-warning` names the
/// lowest threshold above what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_poor_is_warned_twice_then_told_it_is_depleted() {
    let receiver = Receiver::https(SECRET).await;
    let ledger = MemoryLedger::new();
    let events = dispatcher(&ledger, &receiver, 5);
    let acct = account(&ledger, "acct_poor", "demo-poor", 5, &[100, 4]).await;
    let server = Server::start(app(ledger.clone(), events.clone())).await;
    let client = http1();
    let echo = || get_req(&server.url("/v1/echo"), Some("demo-poor"));

    let started = Instant::now();
    let r = send(&client, echo()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("credits-warning"),
        Some("low-balance; remaining=4; threshold=100")
    );
    receiver.wait_for_deliveries(1).await;
    let first_latency = started.elapsed();
    let e = &receiver.events()[0];
    assert_eq!(e["type"], "balance.low");
    assert_eq!(
        (e["account"].as_str(), e["available"].as_i64()),
        (Some("acct_poor"), Some(4))
    );
    assert_eq!(
        (e["threshold"].as_u64(), e["runway_secs"].is_null()),
        (Some(100), true)
    );
    assert!(e["created_at"].as_str().unwrap().ends_with('Z'));

    let r = send(&client, echo()).await;
    assert_eq!(
        r.header("credits-warning"),
        Some("low-balance; remaining=3; threshold=4")
    );
    receiver.wait_for_deliveries(2).await;
    assert_eq!(receiver.events()[1]["threshold"], 4);

    for remaining in [2, 1, 0] {
        let r = send(&client, echo()).await;
        assert_eq!(r.int("credits-remaining"), remaining);
    }
    for _ in 0..2 {
        let r = send(&client, echo()).await;
        assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
    }
    receiver.wait_for_deliveries(3).await;
    drained(&ledger, &acct).await;
    let all = receiver.events();
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_eq!(all[2]["type"], "balance.depleted");
    assert_eq!(
        (all[2]["available"].as_i64(), all[2]["threshold"].is_null()),
        (Some(0), true)
    );
    assert_clean(&receiver);
    assert!(ledger.dead_letters(&acct).await.unwrap().is_empty());
    assert_eq!(events.stats().delivered(), 3);
    println!(
        "delivery latency over HTTPS, clean run: first event {first_latency:?} from the request; \
         worst detection-to-ack {} ms",
        events.stats().max_latency_ms()
    );
}

/// 64 concurrent requests crossing one threshold: one event, delivered once.
async fn one_event_for_64_concurrent_commits<L: TestLedger>(ledger: L) {
    let receiver = Receiver::http(SECRET).await;
    let events = dispatcher(&ledger, &receiver, 5);
    let acct = account(&ledger, "acct_race", "race-key", 128, &[96]).await;
    let server = Server::start(app(ledger.clone(), events.clone())).await;
    let client = http1();
    let mut calls = Vec::new();
    for _ in 0..64 {
        let (client, url) = (client.clone(), server.url("/v1/echo"));
        calls.push(tokio::spawn(async move {
            send(&client, get_req(&url, Some("race-key"))).await.status
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    receiver.wait_for_deliveries(1).await;
    drained(&ledger, &acct).await;
    assert_eq!(receiver.deliveries(), 1, "{:#?}", receiver.events());
    assert_eq!(receiver.events()[0]["threshold"], 96);
    assert_clean(&receiver);
    assert_eq!(ledger.balance(&acct).await.unwrap().available, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_for_64_concurrent_commits_in_memory() {
    one_event_for_64_concurrent_commits(MemoryLedger::new()).await;
}

/// A Redis ledger for these tests: generous call deadlines, and an event lease well inside
/// the tests' deadline (should a settle's first answer be lost, the scan claims the event).
async fn redis_ledger(builder: RedisLedgerBuilder) -> RedisLedger {
    builder
        .call_timeout(Duration::from_secs(2))
        .event_lease(Duration::from_secs(2))
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_for_64_concurrent_commits_on_redis() {
    let redis = RedisServer::start();
    let ledger = redis_ledger(RedisLedger::builder().url(redis.url())).await;
    one_event_for_64_concurrent_commits(ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_for_64_concurrent_commits_on_cluster() {
    let cluster = RedisCluster::start();
    let ledger = redis_ledger(RedisLedger::builder().cluster_urls(cluster.urls())).await;
    one_event_for_64_concurrent_commits(ledger).await;
}

/// A refund gives credits back without re-arming; only a top-up that lifts the balance
/// back to the threshold does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_top_up_re_arms() {
    let receiver = Receiver::http(SECRET).await;
    let ledger = MemoryLedger::new();
    let events = dispatcher(&ledger, &receiver, 5);
    let acct = account(&ledger, "acct_rearm", "rearm-key", 8, &[8]).await;
    let server = Server::start(app(ledger.clone(), events)).await;
    let client = http1();
    let call = |path: &str| get_req(&server.url(path), Some("rearm-key"));

    assert_eq!(
        send(&client, call("/v1/echo"))
            .await
            .int("credits-remaining"),
        7
    );
    receiver.wait_for_deliveries(1).await;
    // A failed call holds 2 and gives it back: 7 again, below 8, nothing new.
    let r = send(&client, call("/v1/fail")).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        send(&client, call("/v1/echo"))
            .await
            .int("credits-remaining"),
        6
    );
    ledger.top_up(TopUp::new(&acct, 4, "pay-2")).await.unwrap(); // 10: re-armed
    assert_eq!(
        send(&client, call("/v1/echo"))
            .await
            .int("credits-remaining"),
        9
    );
    assert_eq!(
        send(&client, call("/v1/echo"))
            .await
            .int("credits-remaining"),
        8
    );
    assert_eq!(
        send(&client, call("/v1/echo"))
            .await
            .int("credits-remaining"),
        7
    );
    receiver.wait_for_deliveries(2).await;
    drained(&ledger, &acct).await;
    let all = receiver.events();
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(
        (all[0]["available"].as_i64(), all[1]["available"].as_i64()),
        (Some(7), Some(7))
    );
    assert_clean(&receiver);
}

/// A receiver that fails its first 3 deliveries gets the event on the 4th attempt, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_event_after_retries() {
    let receiver = Receiver::https(SECRET).await.fail_first(3);
    let ledger = MemoryLedger::new();
    let events = dispatcher(&ledger, &receiver, 5);
    let acct = account(&ledger, "acct_retry", "retry-key", 1, &[]).await;
    let server = Server::start(app(ledger.clone(), events.clone())).await;
    let client = http1();
    let r = send(&client, get_req(&server.url("/v1/echo"), Some("retry-key"))).await;
    assert_eq!(r.int("credits-remaining"), 0);
    let r = send(&client, get_req(&server.url("/v1/echo"), Some("retry-key"))).await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
    receiver.wait_for_deliveries(1).await;
    drained(&ledger, &acct).await;
    assert_eq!((receiver.failed(), receiver.deliveries()), (3, 1));
    assert_eq!(receiver.events()[0]["type"], "balance.depleted");
    assert_eq!(events.stats().failed_attempts(), 3);
    assert_eq!(events.stats().dead_lettered(), 0);
    assert_clean(&receiver);
}

/// A delivery that runs out of retries is kept as a dead letter, counted, never dropped;
/// requeued once the receiver is fixed, it is delivered with its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_nobody_takes_is_kept_as_a_dead_letter() {
    let receiver = Receiver::http(SECRET).await.fail_first(usize::MAX);
    let ledger = MemoryLedger::new();
    let events = dispatcher(&ledger, &receiver, 3);
    let acct = account(&ledger, "acct_dead", "dead-key", 0, &[]).await;
    let server = Server::start(app(ledger.clone(), events.clone())).await;
    let r = send(&http1(), get_req(&server.url("/v1/echo"), Some("dead-key"))).await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
    let dead = wait_for_async("a dead letter", DEADLINE, || async {
        let dead = ledger.dead_letters(&acct).await.unwrap();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("500"), "{}", dead[0].reason);
    assert_eq!(receiver.failed(), 3);
    assert_eq!(receiver.deliveries(), 0);
    assert!(ledger.pending(&acct).await.unwrap().is_empty());
    assert_eq!(events.stats().dead_lettered(), 1);

    // The receiver is fixed; the operator requeues the dead letter: delivered, same id.
    receiver.set_fail_first(0);
    assert!(ledger.requeue(&dead[0]).await.unwrap());
    receiver.wait_for_deliveries(1).await;
    drained(&ledger, &acct).await;
    assert_eq!(receiver.ids(), vec![dead[0].event.id.clone()]);
    assert!(ledger.dead_letters(&acct).await.unwrap().is_empty());
    assert_clean(&receiver);
}

/// Replica A detects an event, then dies: either before it delivered (`deliver_first`
/// false) or after it delivered and before it acknowledged. Replica B, on the same Redis,
/// claims it once A's lease lapses and delivers it with the same id.
async fn kill_the_detecting_replica(
    deliver_first: bool,
) -> (Receiver, CreditEvent, Events, Duration) {
    let redis = RedisServer::start();
    let receiver = Receiver::http(SECRET).await;
    let lease = Duration::from_millis(1_500);
    let replica_a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (url, a_hook) = (redis.url(), hook(&receiver));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let detected = replica_a
        .spawn(async move {
            let ledger = RedisLedger::builder()
                .url(url)
                .call_timeout(Duration::from_secs(2))
                .event_lease(lease)
                .build()
                .await
                .unwrap();
            let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
            // A's delivery: maybe posts, then never returns (A is about to die).
            let events = Dispatcher::new(ledger.clone())
                .on_event(move |event| {
                    let (hook, tx) = (a_hook.clone(), tx.clone());
                    async move {
                        if deliver_first {
                            hook.send(&event.id, event.to_json()).await?;
                        }
                        if let Some(tx) = tx.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                })
                // A's lease covers one attempt: its send timeout plus the lease.
                .send_timeout(Duration::from_secs(2))
                .lease(lease)
                .scan_every(Duration::from_secs(3600))
                .spawn();
            let acct = account(&ledger, "acct_replicas", "replica-key", 10, &[5]).await;
            let app = app(ledger.clone(), events);
            let req = get_req("http://replica-a/v1/echo", Some("replica-key"));
            let req = req.map(axum::body::Body::new);
            let mut last = None;
            for _ in 0..6 {
                let resp = app.clone().oneshot(req_clone(&req)).await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                last = Some(ledger.pending(&acct).await.unwrap());
            }
            let pending = last.unwrap();
            assert_eq!(pending.len(), 1, "{pending:?}");
            pending[0].clone()
        })
        .await
        .unwrap();
    rx.await.expect("replica A started its delivery");
    let killed_at = Instant::now();
    // Kill A: its tasks, its connection and its dispatcher are gone mid-delivery.
    replica_a.shutdown_background();
    if deliver_first {
        assert_eq!(receiver.deliveries(), 1, "A delivered before it died");
    } else {
        assert_eq!(receiver.deliveries(), 0);
    }

    let ledger_b = redis_ledger(RedisLedger::builder().url(redis.url())).await;
    assert_ne!(ledger_b.replica(), "", "each instance is its own replica");
    let events_b = Dispatcher::new(ledger_b.clone())
        .webhook(hook(&receiver))
        .retry(quick_retries(5))
        .lease(lease)
        .scan_every(Duration::from_millis(100))
        .spawn();
    let want = if deliver_first { 2 } else { 1 };
    receiver.wait_for_deliveries(want).await;
    let cost = killed_at.elapsed();
    drained(&ledger_b, &detected.account).await;
    assert_eq!(receiver.deliveries(), want);
    assert_eq!(events_b.stats().claimed(), 1);
    // Keep the server up until B is done with it.
    drop(redis);
    (receiver, detected, events_b, cost)
}

/// Builds a copy of a bodiless request.
fn req_clone(req: &http::Request<axum::body::Body>) -> http::Request<axum::body::Body> {
    let mut copy = http::Request::builder().method(req.method()).uri(req.uri());
    for (name, value) in req.headers() {
        copy = copy.header(name, value);
    }
    copy.body(axum::body::Body::empty()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_before_delivering_leaves_the_event_to_another() {
    let (receiver, detected, _events, cost) = kill_the_detecting_replica(false).await;
    assert_eq!(receiver.ids(), vec![detected.id.clone()]);
    assert_clean(&receiver);
    println!(
        "a replica killed before delivering cost {cost:?} of delay (the lease of its \
         attempt: send timeout 2 s + lease 1.5 s; then a scan, every 0.1 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_before_acknowledging_costs_at_most_a_duplicate_with_the_same_id() {
    let (receiver, detected, _events, cost) = kill_the_detecting_replica(true).await;
    assert_eq!(
        receiver.ids(),
        vec![detected.id.clone(), detected.id.clone()]
    );
    assert_eq!(receiver.rejected(), 0);
    println!("a replica killed before acknowledging cost one duplicate, {cost:?} later");
}

/// A caller who lets holds lapse to get credits back, or retries a refused request, gets
/// no extra events: each crossing fires once, whatever the caller does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_make_events_fire_twice() {
    let receiver = Receiver::http(SECRET).await;
    let ledger = MemoryLedger::new();
    let events = dispatcher(&ledger, &receiver, 5);
    let acct = account(&ledger, "acct_noisy", "noisy-key", 3, &[2]).await;
    let server = Server::start(app(ledger.clone(), events)).await;
    let client = http1();
    for _ in 0..20 {
        send(&client, get_req(&server.url("/v1/echo"), Some("noisy-key"))).await;
        send(&client, get_req(&server.url("/v1/fail"), Some("noisy-key"))).await;
    }
    // Reserves straight on the ledger, abandoned (they expire): no event either.
    for i in 0..5 {
        let hold = HoldId::new(format!("lapse-{i}")).unwrap();
        let _ = ledger
            .reserve(Reserve::new(acct.clone(), hold, 1).ttl(Duration::from_millis(1)))
            .await
            .unwrap();
    }
    receiver.wait_for_deliveries(2).await;
    drained(&ledger, &acct).await;
    // Each delivery runs (and retries) on its own: the order of arrival is not the order
    // of detection.
    let mut kinds: Vec<_> = receiver
        .events()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["balance.depleted", "balance.low"]);
    assert_clean(&receiver);
}

/// A callback that panics, then one that hangs, are failed attempts: the dispatcher lives
/// on, claims the event again once its lease lapses, and delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_that_panics_or_hangs_does_not_stop_delivery() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let ledger = MemoryLedger::builder()
        .event_lease(Duration::from_millis(200))
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (calls_in, seen_in) = (calls.clone(), seen.clone());
    let events = Dispatcher::new(ledger.clone())
        .on_event(move |event| {
            let n = calls_in.fetch_add(1, Ordering::SeqCst);
            let seen = seen_in.clone();
            async move {
                match n {
                    0 => panic!("a receiver bug"),
                    1 => std::future::pending::<()>().await,
                    _ => seen.lock().unwrap().push(event.id.clone()),
                }
                Ok(())
            }
        })
        .retry(quick_retries(5))
        .send_timeout(Duration::from_millis(100))
        .lease(Duration::from_millis(200))
        .scan_every(Duration::from_millis(50))
        .spawn();
    let acct = account(&ledger, "acct_panics", "panics-key", 0, &[]).await;
    let hold = HoldId::new("refused").unwrap();
    let tower_credits::ledger::ReserveOutcome::Insufficient(refusal) = ledger
        .reserve(Reserve::new(acct.clone(), hold, 1))
        .await
        .unwrap()
    else {
        panic!("not refused")
    };
    let id = refusal.events[0].id.clone();
    events.deliver(refusal.events);
    drained(&ledger, &acct).await;
    assert_eq!(*seen.lock().unwrap(), vec![id]);
    assert!(calls.load(Ordering::SeqCst) >= 3);
    assert!(events.stats().failed_attempts() >= 1, "the hang timed out");
}
