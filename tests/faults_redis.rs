//! Faults through the whole stack: a real axum server, `CreditLayer`, `RedisLedger` with a
//! short call deadline, and a real `redis-server` that the tests kill, pause and restart.
//!
//! Each test asserts what it names: nothing hangs (every request is bounded by [`HANG`], a
//! hang check, not a speed claim), refusals are `503` problem JSON with `Retry-After`, the
//! breaker fails fast, the service recovers by itself, and the books balance afterwards —
//! per account `topped_up = available + held + committed` (through `balance()` and on the
//! raw hash), no hold left open, and what the ledger committed is what the layer says the
//! ledger confirmed. Waits poll a condition against a deadline; holds are expired by moving
//! the ledger's test clock, never by waiting.
//!
//! The raw hash is read in either form (`RedisServer::books`): the ledgers here pack
//! accounts, the default.

mod http_support;
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use http_support::{account, get_req, http1, http2, send, Answer, HttpClient, Server};
use support::redis::{RedisOptions, RedisServer};
use support::rig::{assert_balanced, pricing, wait_for_async, wait_until, DEADLINE};
use tokio::sync::{oneshot, Notify};
use tower_credits::clock::ManualClock;
use tower_credits::ledger::RedisLedger;
use tower_credits::ledger::{HoldId, SettleOutcome};
use tower_credits::LedgerReports;
use tower_credits::{AccountId, Balance, Charge, CreditLayer, Ledger, LedgerError, OutagePolicy};
use tower_http::catch_panic::CatchPanicLayer;

/// The ledger's per-call deadline in these tests.
const CALL_TIMEOUT: Duration = Duration::from_millis(150);
/// A request not answered within this hangs: the test fails.
const HANG: Duration = Duration::from_secs(5);
/// Hold ttl of the layers (unless a test sets its own).
const HOLD_TTL: Duration = Duration::from_secs(10);
/// Credits each account starts with.
const START: u64 = 1_000_000;

/// Price of `GET /v1/work`; the handler charges `?cost=` (at most this).
const WORK_PRICE: u64 = 5;
const GATED_PRICE: u64 = 4;
const PANIC_PRICE: u64 = 3;
const BLOCK_PRICE: u64 = 2;

const ROUTES: &[(&str, u64)] = &[
    ("GET /v1/work", WORK_PRICE),
    ("GET /v1/gated", GATED_PRICE),
    ("GET /v1/panic", PANIC_PRICE),
    ("GET /v1/block", BLOCK_PRICE),
];

/// What the handlers share with the test.
#[derive(Clone, Default)]
struct Hooks {
    /// Notified when `/v1/gated` has its `Charge`.
    entered: Arc<Notify>,
    /// Lets `/v1/gated` answer.
    release: Arc<Notify>,
    /// The `Charge` of the last `/v1/gated` request (its hold id).
    charge: Arc<Mutex<Option<Charge>>>,
    /// `/v1/block?tag=n` fires the sender under `n`, then never answers.
    blocked: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
}

#[derive(serde::Deserialize)]
struct Params {
    cost: Option<u64>,
    tag: Option<u64>,
}

fn routes(hooks: Hooks) -> Router {
    Router::new()
        .route(
            "/v1/work",
            // `Option<Charge>`: a request served unbilled (fail open) has no `Charge`, and
            // the plain extractor would refuse it with a 500.
            get(
                |charge: Option<Charge>, Query(p): Query<Params>| async move {
                    if let (Some(charge), Some(cost)) = (charge, p.cost) {
                        charge.set(cost.min(charge.reserved())).unwrap();
                    }
                    "done"
                },
            ),
        )
        .route(
            "/v1/gated",
            get(|State(hooks): State<Hooks>, charge: Charge| async move {
                *hooks.charge.lock().unwrap() = Some(charge);
                hooks.entered.notify_one();
                hooks.release.notified().await;
                "gated"
            }),
        )
        .route("/v1/panic", get(panicking))
        .route(
            "/v1/block",
            get(
                |State(hooks): State<Hooks>, Query(p): Query<Params>| async move {
                    let tag = p.tag.expect("tag");
                    if let Some(entered) = hooks.blocked.lock().unwrap().remove(&tag) {
                        let _ = entered.send(());
                    }
                    std::future::pending::<()>().await;
                    "never"
                },
            ),
        )
        .with_state(hooks)
}

async fn panicking() -> &'static str {
    panic!("{PANIC_MESSAGE}");
}

const PANIC_MESSAGE: &str = "handler panicked on purpose (fault test)";

/// Keeps the expected panics of `/v1/panic` out of the test output; any other panic is
/// reported as usual.
fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let expected = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m == PANIC_MESSAGE);
            if !expected {
                default(info);
            }
        }));
    });
}

/// One Redis server, one ledger behind one layer behind one axum server, and a patient
/// ledger on the same test clock to set up and check.
struct Rig {
    server: RedisServer,
    clock: ManualClock,
    layer: CreditLayer<RedisLedger>,
    /// Call deadline of 5 s: reads the books after the faults, on a busy machine too.
    patient: RedisLedger,
    http: Server,
    hooks: Hooks,
    accounts: Vec<(AccountId, String)>,
}

impl Rig {
    async fn start(
        options: RedisOptions,
        accounts: usize,
        configure: impl FnOnce(CreditLayer<RedisLedger>) -> CreditLayer<RedisLedger>,
    ) -> Self {
        quiet_expected_panics();
        let server = RedisServer::start_with(options);
        let clock = ManualClock::new();
        let ledger = RedisLedger::builder()
            .url(server.url())
            .call_timeout(CALL_TIMEOUT)
            .test_clock(clock.clone())
            .build()
            .await
            .expect("connect to the test redis-server");
        let patient = RedisLedger::builder()
            .url(server.url())
            .call_timeout(Duration::from_secs(5))
            .test_clock(clock.clone())
            .build()
            .await
            .expect("connect to the test redis-server");
        let mut accts = Vec::new();
        for i in 0..accounts {
            let (name, key) = (format!("acct_f{i}"), format!("key-f{i}"));
            accts.push((account(&patient, &name, &key, START).await, key));
        }
        let layer = configure(
            CreditLayer::new(ledger)
                .pricing(pricing(ROUTES))
                .hold_ttl(HOLD_TTL),
        );
        let hooks = Hooks::default();
        let app = routes(hooks.clone())
            .layer(layer.clone())
            .layer(CatchPanicLayer::new());
        Self {
            server,
            clock,
            layer,
            patient,
            http: Server::start(app).await,
            hooks,
            accounts: accts,
        }
    }

    fn url(&self, path: &str) -> String {
        self.http.url(path)
    }

    /// One paid request per account, so every API key is in the layer's cache (a key
    /// lookup needs the ledger too). Returns the credits charged.
    async fn warm(&self) -> u64 {
        let client = http1();
        for (_, key) in &self.accounts {
            let answer = bounded(&client, get_req(&self.url("/v1/work?cost=1"), Some(key))).await;
            assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        }
        // The commits are answered in the background: another connection could read the
        // books before them.
        self.drain().await;
        self.accounts.len() as u64
    }

    /// `held` of an account, read straight from Redis (in either form).
    fn raw_held(&self, account: &AccountId) -> i64 {
        self.server.books(account.as_str()).held
    }

    /// The account's books once every hold is closed: `balance()` reclaims at most 64
    /// expired holds per call, so it is called until none is open. Checks conservation
    /// through `balance()` and on the raw hash, and that nothing is held.
    async fn closed_books(&self, account: &AccountId) -> Balance {
        let b = wait_for_async("every hold of the account closed", DEADLINE, || async {
            let b = self.patient.balance(account).await.ok()?;
            (b.open_holds == 0).then_some(b)
        })
        .await;
        assert_balanced(&b);
        assert_eq!(b.held, 0, "{account}: {b:?}");
        assert_eq!(b.topped_up, START, "{account}: {b:?}");
        let books = self.server.books(account.as_str());
        let (topped_up, committed, held) = (books.topped_up, books.committed, books.held);
        assert_eq!(
            (topped_up, committed, held),
            (b.topped_up as i64, b.committed as i64, 0),
            "{account}: the raw hash agrees with balance()"
        );
        let holds = format!("credits:{{{account}}}:holds");
        assert_eq!(self.server.cli(&["HLEN", &holds]), "0", "{account}");
        b
    }

    /// Waits until no settle runs in the background.
    async fn drain(&self) {
        assert!(
            self.layer.pending_settlements().drain(DEADLINE).await,
            "pending settles did not drain: {:?}",
            self.layer.pending_settlements()
        );
    }
}

/// A request answered within [`HANG`], read to the end.
async fn bounded(
    client: &HttpClient,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Answer {
    tokio::time::timeout(HANG, send(client, req))
        .await
        .unwrap_or_else(|_| panic!("a request hung for more than {HANG:?}"))
}

/// A fail-closed refusal: `503`, problem JSON, `Retry-After`, no internals.
fn assert_unavailable(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json"),
        "{answer:?}"
    );
    assert_eq!(answer.header("retry-after"), Some("1"));
    let json = answer.json();
    assert_eq!(json["status"], 503);
    let text = String::from_utf8_lossy(&answer.body);
    assert!(
        !text.contains("127.0.0.1") && !text.to_lowercase().contains("redis"),
        "the refusal leaks internals: {text}"
    );
}

/// Concurrent `GET /v1/work` traffic, one worker per account, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    unavailable: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<u64>>,
}

impl Load {
    fn start(rig: &Rig, workers_per_account: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let unavailable = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for (_, key) in &rig.accounts {
            for _ in 0..workers_per_account {
                let (stop, ok, unavailable) = (stop.clone(), ok.clone(), unavailable.clone());
                let key = key.clone();
                let base = rig.url("/v1/work");
                workers.push(tokio::spawn(async move {
                    let client = http1();
                    let mut charged = 0;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        n += 1;
                        let cost = 1 + n % WORK_PRICE;
                        let url = format!("{base}?cost={cost}");
                        let answer = bounded(&client, get_req(&url, Some(&key))).await;
                        match answer.status {
                            StatusCode::OK => {
                                assert_eq!(answer.int("credits-cost"), cost as i64);
                                charged += cost;
                                ok.fetch_add(1, Ordering::AcqRel);
                            }
                            StatusCode::SERVICE_UNAVAILABLE => {
                                assert_unavailable(&answer);
                                unavailable.fetch_add(1, Ordering::AcqRel);
                            }
                            other => panic!("unexpected {other}: {answer:?}"),
                        }
                        // Fast failures answer at once: let the other tasks run.
                        tokio::task::yield_now().await;
                    }
                    charged
                }));
            }
        }
        Self {
            stop,
            ok,
            unavailable,
            workers,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Acquire)
    }

    fn unavailable(&self) -> u64 {
        self.unavailable.load(Ordering::Acquire)
    }

    /// Stops the workers: `(200s, 503s, credits the 200s said they cost)`, counted once
    /// every worker has ended.
    async fn stop(self) -> (u64, u64, u64) {
        let Self {
            stop,
            ok,
            unavailable,
            workers,
        } = self;
        stop.store(true, Ordering::Release);
        let mut charged = 0;
        for worker in workers {
            charged += worker.await.expect("a load worker failed");
        }
        (
            ok.load(Ordering::Acquire),
            unavailable.load(Ordering::Acquire),
            charged,
        )
    }
}

/// Redis is killed (SIGKILL) under concurrent load: requests get `503` problem JSON with
/// `Retry-After`, none hangs, the breaker turns later ones into fast failures; Redis comes
/// back (append-only file, `appendfsync always`) and the service recovers by itself; every
/// hold is closed in the end and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_load_fails_closed_fast_and_recovers_without_losing_credits() {
    let mut rig = Rig::start(RedisOptions::aof_always(), 4, |l| {
        l.circuit_breaker(3, Duration::from_millis(200))
    })
    .await;
    let warm = rig.warm().await;
    let load = Load::start(&rig, 2);
    wait_until("requests succeed before the fault", || async {
        load.ok() >= 40
    })
    .await;

    rig.server.kill();
    let before = load.unavailable();
    wait_until("refusals, some of them breaker fast failures", || async {
        load.unavailable() >= before + 20 && rig.layer.stats().breaker_fast_failures > 0
    })
    .await;

    rig.server.restart();
    let ok_before = load.ok();
    wait_for_async("the service to recover by itself", DEADLINE, || async {
        (load.ok() > ok_before + 10).then_some(())
    })
    .await;
    let (ok, unavailable, charged) = load.stop().await;
    rig.drain().await;

    // Holds still open (a reserve whose reply died with the server is refunded in the
    // background, else it expires): move past every ttl.
    rig.clock.advance(HOLD_TTL + Duration::from_secs(1));
    let mut committed = 0;
    for (account, _) in &rig.accounts {
        committed += rig.closed_books(account).await.committed;
    }
    let stats = rig.layer.stats();
    eprintln!("killed mid-load: {ok} ok, {unavailable} unavailable; {stats:?}");
    assert!(unavailable >= 20 && stats.breaker_fast_failures > 0);
    assert_eq!(
        stats.commits + stats.commits_lost,
        ok + rig.accounts.len() as u64
    );
    assert_eq!(
        committed, stats.credits_committed,
        "the ledger committed what the layer saw confirmed"
    );
    assert_eq!(
        charged + warm,
        stats.credits_committed + stats.credits_lost,
        "every 200's cost is committed or counted lost"
    );
}

/// Redis stops answering (SIGSTOP) for longer than the call deadline, then resumes:
/// requests during the pause get `503` within the bound; afterwards the reserves that
/// timed out (and may have run once the server woke up) are refunded in the background,
/// commits that timed out are retried, and no hold is left — without moving the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_past_the_deadline_answers_503_then_leaks_no_hold() {
    let rig = Rig::start(RedisOptions::default(), 4, |l| {
        l.circuit_breaker(3, Duration::from_millis(200))
    })
    .await;
    let warm = rig.warm().await;
    let load = Load::start(&rig, 2);
    wait_until("requests succeed before the fault", || async {
        load.ok() >= 40
    })
    .await;

    // A probe with the layer's call deadline, on a connection of its own that the load
    // does not touch.
    let probe = RedisLedger::builder()
        .url(rig.server.url())
        .call_timeout(CALL_TIMEOUT)
        .build()
        .await
        .expect("connect to the test redis-server");
    let (probed, _) = &rig.accounts[0];
    probe.balance(probed).await.expect("the probe's warm-up");

    rig.server.pause();
    let before = load.unavailable();
    wait_until(
        "refusals while paused, some breaker fast failures",
        || async {
            load.unavailable() >= before + 20 && rig.layer.stats().breaker_fast_failures > 0
        },
    )
    .await;
    // Paused past the deadline: a call made now ends on its call deadline (`Timeout` of
    // exactly `CALL_TIMEOUT`), not with a reply.
    let r = probe.balance(probed).await;
    assert!(
        matches!(r, Err(LedgerError::Timeout(t)) if t == CALL_TIMEOUT),
        "paused past the deadline: {r:?}"
    );
    rig.server.resume();

    let ok_before = load.ok();
    wait_for_async("the service to recover by itself", DEADLINE, || async {
        (load.ok() > ok_before + 10).then_some(())
    })
    .await;
    let (ok, unavailable, charged) = load.stop().await;
    rig.drain().await;

    // No clock move: what the pause left open is closed by the background refunds and
    // the settle retries.
    for (account, _) in &rig.accounts {
        wait_for_async(
            "the background refunds to close every hold",
            DEADLINE,
            || async { (rig.raw_held(account) == 0).then_some(()) },
        )
        .await;
    }
    let mut committed = 0;
    for (account, _) in &rig.accounts {
        committed += rig.closed_books(account).await.committed;
    }
    let stats = rig.layer.stats();
    eprintln!("paused: {ok} ok, {unavailable} unavailable; {stats:?}");
    assert_eq!(
        stats.commits_lost, 0,
        "the pause was shorter than the hold ttl"
    );
    assert_eq!(committed, stats.credits_committed);
    assert_eq!(charged + warm, stats.credits_committed);
}

/// Redis dies between a request's reserve and its commit. The handler still answers 200;
/// the commit is retried until the hold's ttl and then counted lost (unbilled revenue, the
/// seller's loss). Redis comes back; once the ttl has passed the hold expires and the
/// credits go back; a late commit of that hold is a no-op that says `Expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_cannot_reach_redis_is_given_up_and_the_hold_expires() {
    let ttl = Duration::from_millis(500);
    let mut rig = Rig::start(RedisOptions::aof_always(), 1, |l| l.hold_ttl(ttl)).await;
    rig.warm().await;
    let (account, key) = rig.accounts[0].clone();
    let before = rig.patient.balance(&account).await.unwrap();

    let client = http1();
    let req = get_req(&rig.url("/v1/gated"), Some(&key));
    let entered = rig.hooks.entered.notified();
    let call = tokio::spawn(async move { bounded(&client, req).await });
    tokio::time::timeout(HANG, entered)
        .await
        .expect("the handler runs");
    let hold = held_by(&rig.hooks);
    assert_eq!(rig.raw_held(&account), GATED_PRICE as i64);

    rig.server.kill();
    rig.hooks.release.notify_one();
    let answer = call.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.int("credits-cost"), GATED_PRICE as i64);

    wait_until("the commit to be given up", || async {
        rig.layer.stats().commits_lost == 1
    })
    .await;
    rig.drain().await;
    let stats = rig.layer.stats();
    assert_eq!(stats.credits_lost, GATED_PRICE, "{stats:?}");
    assert!(stats.settle_retries > 0, "{stats:?}");

    rig.server.restart();
    // The append-only file kept the hold; the ttl has not passed on the test clock's
    // terms until it is moved.
    rig.clock.advance(ttl + Duration::from_secs(1));
    let b = rig.closed_books(&account).await;
    assert_eq!(
        (b.available, b.committed),
        (before.available, before.committed),
        "the credits of the lost commit came back"
    );
    let late = rig
        .patient
        .commit(&account, &hold, GATED_PRICE)
        .await
        .unwrap();
    assert_eq!((late.outcome, late.committed), (SettleOutcome::Expired, 0));
    let b = rig.closed_books(&account).await;
    assert_eq!(b.available, before.available);
}

/// Graceful shutdown on Redis, where a settle can really be pending: the server is paused
/// (SIGSTOP) after a request's reserve, so its commit is in flight, then retried, and
/// `pending_settlements()` counts it; `drain` cannot finish while the server is stopped,
/// and once it answers again `drain` returns `true` and the commit has landed — in the
/// layer's stats and in the books.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_commits_in_flight_on_a_paused_server() {
    let rig = Rig::start(RedisOptions::default(), 1, |l| l).await;
    rig.warm().await;
    let (account, key) = rig.accounts[0].clone();
    let before = rig.patient.balance(&account).await.unwrap();
    let stats_before = rig.layer.stats();
    assert!(rig.layer.pending_settlements().is_empty());

    let client = http1();
    let req = get_req(&rig.url("/v1/gated"), Some(&key));
    let entered = rig.hooks.entered.notified();
    let call = tokio::spawn(async move { bounded(&client, req).await });
    tokio::time::timeout(HANG, entered)
        .await
        .expect("the handler runs");
    rig.server.pause();
    rig.hooks.release.notify_one();
    let answer = call.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.int("credits-cost"), GATED_PRICE as i64);

    // The server cannot answer: the commit is pending, and no drain can finish.
    wait_until("the commit to be pending", || async {
        !rig.layer.pending_settlements().is_empty()
    })
    .await;
    assert_eq!(rig.layer.pending_settlements().len(), 1);
    assert!(
        !rig.layer
            .pending_settlements()
            .drain(CALL_TIMEOUT * 2)
            .await,
        "a drain finished while the server was stopped"
    );
    assert_eq!(rig.layer.pending_settlements().len(), 1);
    let stats = rig.layer.stats();
    assert_eq!(stats.commits, stats_before.commits, "nothing confirmed yet");
    assert_eq!(stats.commits_lost, 0, "{stats:?}");

    // Shutdown: the server answers again, and the drain waits for the commit to land.
    rig.server.resume();
    assert!(
        rig.layer.pending_settlements().drain(DEADLINE).await,
        "pending settles did not drain: {:?}",
        rig.layer.pending_settlements()
    );
    assert!(rig.layer.pending_settlements().is_empty());
    let stats = rig.layer.stats();
    assert_eq!(stats.commits, stats_before.commits + 1, "{stats:?}");
    assert_eq!(
        stats.credits_committed,
        stats_before.credits_committed + GATED_PRICE,
        "{stats:?}"
    );
    assert_eq!(
        (stats.commits_lost, stats.credits_lost),
        (0, 0),
        "{stats:?}"
    );
    let b = rig.closed_books(&account).await;
    assert_eq!(
        (b.available, b.committed),
        (
            before.available - GATED_PRICE as i64,
            before.committed + GATED_PRICE
        ),
        "the commit landed once"
    );
}

/// A commit that times out on a paused server stays queued on the connection and runs when
/// the server wakes up. The layer must not count it lost while it can still commit: it
/// keeps trying until the hold's ttl has passed, so the ledger and the layer's stats agree
/// whenever the server wakes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_queued_on_a_paused_server_is_not_counted_lost_while_it_can_still_run() {
    let ttl = Duration::from_secs(2);
    let rig = Rig::start(RedisOptions::default(), 1, |l| l.hold_ttl(ttl)).await;
    rig.warm().await;
    let (account, key) = rig.accounts[0].clone();
    let before = rig.patient.balance(&account).await.unwrap();

    let client = http1();
    let req = get_req(&rig.url("/v1/gated"), Some(&key));
    let entered = rig.hooks.entered.notified();
    let call = tokio::spawn(async move { bounded(&client, req).await });
    tokio::time::timeout(HANG, entered)
        .await
        .expect("the handler runs");
    rig.server.pause();
    rig.hooks.release.notify_one();
    assert_eq!(call.await.unwrap().status, StatusCode::OK);

    // Wake the server up the moment the layer gives the commit up.
    wait_until("the commit to be given up", || async {
        rig.layer.stats().commits_lost == 1
    })
    .await;
    rig.server.resume();
    rig.drain().await;

    let stats = rig.layer.stats();
    // Real time has passed the hold's ttl by now (the test clock was not moved).
    let b = rig.closed_books(&account).await;
    assert_eq!(
        b.committed, stats.credits_committed,
        "the ledger charged a commit the layer counted lost: {stats:?}"
    );
    assert_eq!(b.available, before.available, "{stats:?}");
}

/// The hold id of the last `/v1/gated` request.
fn held_by(hooks: &Hooks) -> HoldId {
    hooks
        .charge
        .lock()
        .unwrap()
        .as_ref()
        .expect("the handler kept its charge")
        .hold_id()
        .clone()
}

/// Under concurrent HTTP/2 load, some clients hang up while their handler is blocked and
/// some handlers panic (`CatchPanicLayer` outside the layer answers 500): every hold is
/// committed or refunded — none left held — and what is committed is exactly the cost of
/// the 200 responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_and_panics_under_load_leave_no_hold_and_charge_only_successes() {
    let rig = Rig::start(RedisOptions::default(), 3, |l| l).await;
    let warm = rig.warm().await;
    let client = http2();
    let requests = 150u64;
    let mut tasks = Vec::new();
    for i in 0..requests {
        let (account, key) = rig.accounts[i as usize % rig.accounts.len()].clone();
        let client = client.clone();
        let hooks = rig.hooks.clone();
        let base = rig.url("");
        tasks.push(tokio::spawn(async move {
            match i % 5 {
                // Panics: 500 from CatchPanicLayer, refunded.
                0 => {
                    let answer =
                        bounded(&client, get_req(&format!("{base}/v1/panic"), Some(&key))).await;
                    assert!(
                        answer.status == StatusCode::INTERNAL_SERVER_ERROR
                            || answer.status == StatusCode::SERVICE_UNAVAILABLE,
                        "{answer:?}"
                    );
                    (account, "panic", answer.status, 0)
                }
                // The client hangs up while the handler is blocked.
                1 => {
                    let (entered_tx, entered) = oneshot::channel();
                    hooks.blocked.lock().unwrap().insert(i, entered_tx);
                    let url = format!("{base}/v1/block?tag={i}");
                    let call =
                        tokio::spawn(async move { send(&client, get_req(&url, Some(&key))).await });
                    // A 503 (a reserve that timed out) never reaches the handler.
                    let status = match tokio::time::timeout(HANG, entered).await {
                        Ok(Ok(())) => {
                            call.abort();
                            let _ = call.await;
                            StatusCode::OK
                        }
                        _ => {
                            let answer = call.await.unwrap();
                            assert_unavailable(&answer);
                            StatusCode::SERVICE_UNAVAILABLE
                        }
                    };
                    (account, "abort", status, 0)
                }
                n => {
                    let url = format!("{base}/v1/work?cost={n}");
                    let answer = bounded(&client, get_req(&url, Some(&key))).await;
                    let cost = match answer.status {
                        StatusCode::OK => answer.int("credits-cost") as u64,
                        _ => {
                            assert_unavailable(&answer);
                            0
                        }
                    };
                    (account, "ok", answer.status, cost)
                }
            }
        }));
    }
    let mut charged: HashMap<AccountId, u64> = HashMap::new();
    let mut outcomes: HashMap<(&str, StatusCode), u64> = HashMap::new();
    for task in tasks {
        let (account, kind, status, cost) = task.await.expect("a request task failed");
        *charged.entry(account).or_default() += cost;
        *outcomes.entry((kind, status)).or_default() += 1;
    }
    rig.drain().await;

    // Redis stayed up: every hold is settled without moving the clock.
    for (account, _) in &rig.accounts {
        wait_for_async("every hold to be settled", DEADLINE, || async {
            (rig.raw_held(account) == 0).then_some(())
        })
        .await;
        let b = rig.closed_books(account).await;
        assert_eq!(
            b.committed,
            charged[account] + 1,
            "{account}: committed = the costs of its 200s (and the warm-up)"
        );
    }
    let stats = rig.layer.stats();
    eprintln!("disconnects and panics: {outcomes:?}; {stats:?}");
    assert_eq!(stats.commits_lost, 0);
    assert_eq!(
        stats.credits_committed,
        charged.values().sum::<u64>() + warm
    );
    assert!(
        outcomes[&("panic", StatusCode::INTERNAL_SERVER_ERROR)] > 0
            && outcomes[&("abort", StatusCode::OK)] > 0,
        "both faults happened: {outcomes:?}"
    );
}

/// Under `OutagePolicy::FailOpen`, a dead Redis does not stop the service: requests are
/// served unbilled, and counted per account (the key cache still knows whose they are).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_serves_unbilled_while_redis_is_dead_and_counts_per_account() {
    let mut rig = Rig::start(RedisOptions::default(), 2, |l| {
        l.on_outage(OutagePolicy::FailOpen)
            .circuit_breaker(3, Duration::from_secs(3600))
    })
    .await;
    rig.warm().await;
    rig.server.kill();

    let client = http1();
    let per_account = 6u64;
    for (_, key) in &rig.accounts {
        for _ in 0..per_account {
            let url = rig.url("/v1/work?cost=2");
            let answer = bounded(&client, get_req(&url, Some(key))).await;
            assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
            assert_eq!(answer.header("credits-cost"), None, "not billed");
            assert_eq!(&answer.body[..], b"done");
        }
    }
    let unbilled = rig.layer.unbilled().snapshot();
    for (account, _) in &rig.accounts {
        let count = unbilled[&Some(account.clone())];
        assert_eq!(
            (count.requests, count.credits),
            (per_account, per_account * WORK_PRICE),
            "{account}: counted at the price held"
        );
    }
    assert!(!unbilled.contains_key(&None));
    let stats = rig.layer.stats();
    assert_eq!(
        stats.served_unbilled,
        per_account * rig.accounts.len() as u64
    );
    assert!(stats.breaker_fast_failures > 0, "{stats:?}");
}

/// A ledger on `server` whose calls each have `call_timeout`.
async fn ledger_with_deadline(server: &RedisServer, call_timeout: Duration) -> RedisLedger {
    RedisLedger::builder()
        .url(server.url())
        .call_timeout(call_timeout)
        .build()
        .await
        .expect("connect")
}

/// A ledger call made (not yet polled) on a thread without a tokio runtime does not panic:
/// the layer settles a body dropped on a plain thread by making the call first and
/// catching a panic of its first poll only (`middleware::settle`). Found by review: a
/// call deadline made eagerly started its timer, which needs a runtime, when made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_made_outside_a_runtime_does_not_panic() {
    let server = RedisServer::start();
    let l = ledger_with_deadline(&server, Duration::from_secs(5)).await;
    let a = account(&l, "acct_plain", "key-plain", 100).await;
    let h = HoldId::new("h1").unwrap();
    l.reserve(tower_credits::ledger::Reserve::new(
        a.clone(),
        h.clone(),
        10,
    ))
    .await
    .unwrap();
    let made = std::thread::spawn(move || {
        let _unpolled = l.commit(&a, &h, 5);
    })
    .join();
    assert!(made.is_ok(), "making a commit outside a runtime panicked");
}

/// The same through the layer: the body of a deferred charge, dropped unread on a plain
/// thread, does not panic out of its guard's `Drop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_dropped_on_a_plain_thread_does_not_panic() {
    use tower::{Layer, ServiceExt};
    let server = RedisServer::start();
    let l = ledger_with_deadline(&server, Duration::from_secs(5)).await;
    account(&l, "acct_body", "key-body", 100).await;
    let layer = CreditLayer::new(l.clone()).pricing(pricing(&[("GET /v1/work", 5)]));
    let svc = layer.layer(tower::service_fn(
        |req: http::Request<http_body_util::Full<bytes::Bytes>>| async move {
            // Its cost known at the body's end: the body's guard keeps the hold.
            req.extensions().get::<Charge>().expect("billed").defer();
            let frames = futures_util::stream::iter(vec![Ok::<_, std::convert::Infallible>(
                http_body::Frame::data(bytes::Bytes::from_static(b"work")),
            )]);
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::StreamBody::new(
                frames,
            )))
        },
    ));
    let response = svc
        .oneshot(get_req("http://x/v1/work", Some("key-body")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let dropped = std::thread::spawn(move || drop(response)).join();
    assert!(
        dropped.is_ok(),
        "dropping the body on a plain thread panicked"
    );
}

/// The call deadline runs from a call's first poll, not from when it was made: a top-up
/// made, then awaited after longer than the call timeout, is answered (each of its two
/// steps, the claim and the account's script, gets the whole timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_deadline_runs_from_the_first_poll() {
    let server = RedisServer::start();
    // Long enough that a loaded machine answers within it; the test waits past it once.
    let timeout = Duration::from_secs(2);
    let l = ledger_with_deadline(&server, timeout).await;
    let a = account(&l, "acct_late", "key-late", 100).await;
    let top_up =
        tower_credits::LedgerAdmin::top_up(&l, tower_credits::TopUp::new(&a, 7, "pay-late"));
    // Left unpolled past its timeout (the scenario itself, not a wait for a condition).
    tokio::time::sleep(timeout + Duration::from_millis(200)).await;
    let answer = top_up.await;
    assert!(answer.is_ok(), "a top-up polled late: {answer:?}");
}
