//! The hold keeper: one worker task per layer does every piece of billing work a request
//! leaves behind — settles the ledger did not answer at once, renewals of running
//! handlers, watches of bodies that settle at their end — so no request spawns a task.
//!
//! Each test asserts what it names, on a real `redis-server` where the ledger matters:
//! no task per request, a stalled reader is committed at what its `Charge` says and frees
//! its account, a renewal hit by a paused Redis is retried, the lifetime cap cancels and
//! refunds, and a graceful shutdown waits for the settles still in flight.
//!
//! Nothing sleeps and hopes: every wait polls a condition against a deadline. The few
//! `sleep`s schedule a fault (when to pause Redis); no assertion is about how long
//! anything took.

mod http_support;
mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use http_support::{account, get_req, http1, send, HttpClient, Server};
use support::redis::RedisServer;
use support::rig::{assert_conserved, pricing, wait_for_async, wait_until, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tower::{Layer, ServiceExt};
use tower_credits::ledger::RedisLedger;
use tower_credits::ledger::{Extend, Extended, Reserve, ReserveOutcome, Settle, Settlement};
use tower_credits::{
    AccountId, ApiKeyHash, Balance, Charge, CreditLayer, Ledger, LedgerError, LedgerReports,
    MemoryLedger,
};

/// A request not answered within this hangs: the test fails (a hang check, not a speed
/// claim).
const HANG: Duration = Duration::from_secs(10);

/// A Redis ledger on `url` with the call deadline `call_timeout`.
async fn redis_ledger(url: &str, call_timeout: Duration) -> RedisLedger {
    RedisLedger::builder()
        .url(url)
        .call_timeout(call_timeout)
        .build()
        .await
        .expect("connect to the test redis-server")
}

/// A ledger with a call deadline of 5 s: reads the books, also on a busy machine.
async fn patient(server: &RedisServer) -> RedisLedger {
    redis_ledger(&server.url(), Duration::from_secs(5)).await
}

/// The account's balance once no hold is open, checked for conservation.
async fn settled_books<L: LedgerReports>(ledger: &L, account: &AccountId) -> Balance {
    wait_for_async("every hold of the account settled", DEADLINE, || async {
        let b = ledger.balance(account).await.ok()?;
        (b.held == 0 && b.open_holds == 0).then_some(())
    })
    .await;
    assert_conserved(ledger, account).await
}

// ---------------------------------------------------------------------------------------
// 1. No task per request.
// ---------------------------------------------------------------------------------------

type TestBody = UnsyncBoxBody<Bytes, Infallible>;

/// 200 handlers blocked and 200 deferred bodies open at once on a Redis ledger: the
/// runtime's live tasks do not grow with them (the keeper, started by a first request, does
/// all the work). Once released, every hold settles and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_task_per_request() {
    const N: usize = 200;
    const BLOCK_PRICE: u64 = 2;
    const STREAM_PRICE: u64 = 3;
    const WARM_PRICE: u64 = 1;
    const START: u64 = 1_000_000;

    let server = RedisServer::start();
    let ledger = patient(&server).await;
    let acct = account(&ledger, "acct_tasks", "key-tasks", START).await;

    let (gate_tx, gate_rx) = watch::channel(false);
    let entered = Arc::new(AtomicUsize::new(0));
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(&[
            ("GET /v1/warm", WARM_PRICE),
            ("GET /v1/block", BLOCK_PRICE),
            ("GET /v1/stream", STREAM_PRICE),
        ]))
        .hold_ttl(Duration::from_secs(60));
    let svc = layer.layer(tower::service_fn({
        let entered = entered.clone();
        move |req: Request<Full<Bytes>>| {
            let mut gate = gate_rx.clone();
            let entered = entered.clone();
            async move {
                let charge = req.extensions().get::<Charge>().cloned().expect("billed");
                let body: TestBody = match req.uri().path() {
                    "/v1/warm" => {
                        // Deferred: the body is watched, which starts the keeper.
                        charge.defer();
                        Full::new(Bytes::from_static(b"warm")).boxed_unsync()
                    }
                    "/v1/block" => {
                        entered.fetch_add(1, Ordering::AcqRel);
                        gate.wait_for(|open| *open).await.expect("gate");
                        Full::new(Bytes::from_static(b"blocked")).boxed_unsync()
                    }
                    "/v1/stream" => {
                        // A body whose only chunk waits for the gate: it stays pending.
                        charge.defer();
                        let chunk = futures_util::stream::once(async move {
                            gate.wait_for(|open| *open).await.expect("gate");
                            charge.add(1).expect("the charge is open");
                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"chunk")))
                        });
                        StreamBody::new(chunk).boxed_unsync()
                    }
                    other => panic!("unexpected path {other}"),
                };
                Ok::<_, Infallible>(Response::new(body))
            }
        }
    }));

    // One billed request first: the keeper's worker (and the ledger's connection) exist.
    let warm = svc
        .clone()
        .oneshot(get_req("/v1/warm", Some("key-tasks")))
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::OK);
    let collected = warm.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["credits-cost"], "1");
    assert!(
        layer.pending_settlements().drain(DEADLINE).await,
        "the warm-up commit did not land"
    );

    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();

    // Every request is driven in this task: nothing here spawns.
    let mut blocked: FuturesUnordered<_> = (0..N)
        .map(|_| svc.clone().oneshot(get_req("/v1/block", Some("key-tasks"))))
        .collect();
    let mut streams: FuturesUnordered<_> = (0..N)
        .map(|_| {
            svc.clone()
                .oneshot(get_req("/v1/stream", Some("key-tasks")))
        })
        .collect();

    let drive_blocked = async {
        let mut answers = Vec::with_capacity(N);
        while let Some(answer) = blocked.next().await {
            answers.push(answer.unwrap());
        }
        answers
    };
    let check = async {
        // The deferred responses: their heads are out, their bodies stay open.
        let mut open = Vec::with_capacity(N);
        while let Some(response) = streams.next().await {
            let response = response.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["credits-reserved"], "3");
            open.push(response);
        }
        wait_until("every blocked handler to run", || async {
            entered.load(Ordering::Acquire) == N
        })
        .await;
        wait_until("the keeper to watch every open body", || async {
            layer.stats().keeper_running >= N as u64
        })
        .await;

        let b = ledger.balance(&acct).await.unwrap();
        assert_eq!(
            b.held,
            N as u64 * (BLOCK_PRICE + STREAM_PRICE),
            "every request holds: {b:?}"
        );
        let alive = metrics.num_alive_tasks();
        eprintln!(
            "tasks: {baseline} before, {alive} with {N} handlers and {N} bodies open; {:?}",
            layer.stats()
        );
        assert!(
            alive <= baseline + 2,
            "live tasks grew from {baseline} to {alive} with {N} requests and {N} bodies open"
        );
        gate_tx.send_replace(true);
        open
    };
    let (answers, open) = tokio::join!(drive_blocked, check);

    for answer in &answers {
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()["credits-cost"], BLOCK_PRICE.to_string());
    }
    let bodies: FuturesUnordered<_> = open
        .into_iter()
        .map(|response| response.into_body().collect())
        .collect();
    let bodies: Vec<_> = bodies.collect().await;
    for body in bodies {
        let body = body.expect("a deferred body failed");
        assert_eq!(body.trailers().unwrap()["credits-cost"], "1");
    }

    assert!(
        layer.pending_settlements().drain(DEADLINE).await,
        "pending settles did not drain: {:?}",
        layer.pending_settlements()
    );
    let b = settled_books(&ledger, &acct).await;
    let expected = WARM_PRICE + N as u64 * BLOCK_PRICE + N as u64;
    assert_eq!(b.committed, expected, "{b:?}");
    assert_eq!(b.topped_up, START);
    let stats = layer.stats();
    assert_eq!(stats.commits, 1 + 2 * N as u64, "{stats:?}");
    assert_eq!(stats.credits_committed, expected, "{stats:?}");
    assert_eq!(
        (stats.commits_lost, stats.credits_lost),
        (0, 0),
        "{stats:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. A stalled reader.
// ---------------------------------------------------------------------------------------

/// Chunks of the long stream: 1024 × 64 KiB = 64 MiB, far more than loopback buffers hold.
const STALL_CHUNKS: u64 = 1024;
const STALL_CHUNK: usize = 64 * 1024;
const STALL_PRICE: u64 = 2 * STALL_CHUNKS;

#[derive(Clone, Default)]
struct StallHooks {
    /// The `Charge` of the last `/v1/stream` request.
    charge: Arc<Mutex<Option<Charge>>>,
}

/// A deferred charge of 1 per chunk over a long stream.
async fn long_stream(State(hooks): State<StallHooks>, charge: Charge) -> Response<Body> {
    charge.defer();
    *hooks.charge.lock().unwrap() = Some(charge.clone());
    let chunk = Bytes::from(vec![b'x'; STALL_CHUNK]);
    let chunks = futures_util::stream::iter(0..STALL_CHUNKS).map(move |_| {
        // After the keeper settled the hold the charge is closed: nothing more is added
        // (and the layer does not poll this stream any more anyway).
        let _ = charge.add(1);
        Ok::<_, Infallible>(chunk.clone())
    });
    Response::new(Body::from_stream(chunks))
}

/// A reader that stops reading a deferred stream (keeping its connection open) is
/// committed at what the `Charge` had added, after the stall timeout, and does not pin
/// its hold: with one open hold allowed per account, its next request is served. When it
/// reads again, the stream ends cut short (no terminating chunk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_committed_and_frees_its_account() {
    const START: u64 = 1_000_000;
    let server = RedisServer::start();
    let books = patient(&server).await;
    let acct = account(&books, "acct_stall", "key-stall", START).await;
    let ledger = RedisLedger::builder()
        .url(server.url())
        .call_timeout(Duration::from_secs(2))
        .max_open_holds(1)
        .build()
        .await
        .expect("connect to the test redis-server");
    let layer = CreditLayer::new(ledger)
        .pricing(pricing(&[
            ("GET /v1/stream", STALL_PRICE),
            ("GET /v1/echo", 1),
        ]))
        .hold_ttl(Duration::from_secs(2))
        .stall_timeout(Duration::from_millis(300));
    let hooks = StallHooks::default();
    let app = Router::new()
        .route("/v1/stream", get(long_stream))
        .route("/v1/echo", get(|| async { "echo" }))
        .with_state(hooks.clone())
        .layer(layer.clone());
    let http = Server::start(app).await;
    let before = layer.stats();

    // A raw HTTP/1.1 client: nothing buffers on its side but the kernel.
    let mut tcp = tokio::net::TcpStream::connect(http.addr).await.unwrap();
    tcp.write_all(
        b"GET /v1/stream HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer key-stall\r\n\r\n",
    )
    .await
    .unwrap();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let head_end = loop {
        let n = tokio::time::timeout(HANG, tcp.read(&mut buf))
            .await
            .expect("the response hung")
            .unwrap();
        assert!(n > 0, "the server closed the connection early");
        received.extend_from_slice(&buf[..n]);
        if let Some(at) = find(&received, b"\r\n\r\n") {
            if received.len() >= at + 4 + 128 * 1024 {
                break at;
            }
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("credits-reserved: {STALL_PRICE}")),
        "{head}"
    );
    // The reader stops reading here; `tcp` stays open.

    let b = wait_for_async("the stalled body's hold to settle", DEADLINE, || async {
        let b = books.balance(&acct).await.ok()?;
        (b.held == 0).then_some(b)
    })
    .await;
    let charge = hooks
        .charge
        .lock()
        .unwrap()
        .clone()
        .expect("the handler ran");
    let added = charge.actual().expect("the stream added chunks");
    assert!(
        added < STALL_CHUNKS,
        "the stream ran to its end ({added} chunks): the reader never stalled it"
    );
    assert!(added > 0);
    assert_eq!(
        b.committed, added,
        "committed what the charge had added when the reader stalled: {b:?}"
    );
    assert!(b.committed <= STALL_PRICE);
    assert_eq!(b.available, (START - added) as i64, "{b:?}");
    assert!(
        charge.add(1).is_err(),
        "the charge is closed once the keeper settled it"
    );
    // The ledger applied the commit; the keeper counts it once the reply is back.
    let stats = wait_for_async("the keeper to count the commit", DEADLINE, || {
        let stats = layer.stats();
        async move { (stats.commits > before.commits).then_some(stats) }
    })
    .await;
    assert_eq!(stats.commits, before.commits + 1, "{stats:?}");
    assert_eq!(stats.credits_committed, before.credits_committed + added);

    // The account is free again: its one open hold is gone.
    let answer = tokio::time::timeout(
        HANG,
        send(&http1(), get_req(&http.url("/v1/echo"), Some("key-stall"))),
    )
    .await
    .expect("the second request hung");
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.int("credits-cost"), 1);

    // Reading again: the layer ends the body with `ReaderStalled`, hyper closes the
    // connection, and the chunked body has no terminating chunk.
    let tail = tokio::time::timeout(HANG, async {
        let mut tail = Vec::new();
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return tail,
                Ok(n) => tail.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the stalled connection was never closed");
    received.extend_from_slice(&tail);
    assert!(
        find(&received[head_end..], b"\r\n0\r\n").is_none(),
        "a stalled body must end cut short, not with a terminating chunk"
    );

    let b = settled_books(&books, &acct).await;
    assert_eq!(b.committed, added + 1, "{b:?}");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// 3. A renewal hit by a paused Redis.
// ---------------------------------------------------------------------------------------

type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send>>;

/// How an `extend` call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Renewal {
    Renewed,
    NotOpen,
    Failed(String),
}

/// A `RedisLedger` that records how every `extend` ended.
#[derive(Clone)]
struct Recording {
    inner: RedisLedger,
    renewals: Arc<Mutex<Vec<Renewal>>>,
}

impl Recording {
    fn renewals(&self) -> Vec<Renewal> {
        self.renewals.lock().unwrap().clone()
    }
}

/// Only the hot path: a wrapper the layer bills through needs nothing else.
impl Ledger for Recording {
    type Future<T: Send + 'static> = Boxed<T>;

    fn reserve(&self, reserve: Reserve) -> Boxed<ReserveOutcome> {
        Box::pin(self.inner.reserve(reserve))
    }
    fn settle(&self, settle: Settle) -> Boxed<Settlement> {
        Box::pin(self.inner.settle(settle))
    }
    fn extend(&self, extend: Extend) -> Boxed<Extended> {
        let call = self.inner.extend(extend);
        let renewals = self.renewals.clone();
        Box::pin(async move {
            let result = call.await;
            let renewal = match &result {
                Ok(Extended::Until(_)) => Renewal::Renewed,
                Ok(_) => Renewal::NotOpen,
                Err(e) => Renewal::Failed(e.to_string()),
            };
            renewals.lock().unwrap().push(renewal);
            result
        })
    }
    fn grow(&self, grow: tower_credits::ledger::Grow) -> Boxed<tower_credits::ledger::GrowOutcome> {
        Box::pin(self.inner.grow(grow))
    }
    fn store_response(&self, store: tower_credits::ledger::StoreResponse) -> Boxed<bool> {
        Box::pin(self.inner.store_response(store))
    }
    fn lookup_api_key(&self, k: &ApiKeyHash) -> Boxed<Option<AccountId>> {
        Box::pin(self.inner.lookup_api_key(k))
    }
}

/// Redis is paused around a running handler's first renewal (at a third of the 2 s TTL),
/// so that renewal times out; the keeper retries it, it lands once Redis is back, and the
/// request then commits its full price: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_survives_a_paused_redis() {
    const PRICE: u64 = 7;
    const START: u64 = 1_000;
    let ttl = Duration::from_secs(2);
    let server = RedisServer::start();
    let books = patient(&server).await;
    let acct = account(&books, "acct_renew", "key-renew", START).await;
    let ledger = Recording {
        inner: redis_ledger(&server.url(), Duration::from_millis(50)).await,
        renewals: Arc::default(),
    };
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(&[("GET /v1/slow", PRICE)]))
        .hold_ttl(ttl);
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let svc = layer.layer(tower::service_fn({
        let (entered, release) = (entered.clone(), release.clone());
        move |_req: Request<Full<Bytes>>| {
            let (entered, release) = (entered.clone(), release.clone());
            async move {
                entered.notify_one();
                release.notified().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"slow"))))
            }
        }
    }));

    let call = tokio::spawn(svc.oneshot(get_req("/v1/slow", Some("key-renew"))));
    tokio::time::timeout(HANG, entered.notified())
        .await
        .expect("the handler runs");
    let started = tokio::time::Instant::now();
    // The schedule of the fault: the first renewal is due a third of the TTL (667 ms)
    // after the hold; Redis is paused before it, and resumed once it has failed.
    tokio::time::sleep_until(started + ttl / 4).await;
    server.pause();
    wait_until("a renewal to fail on the paused server", || async {
        ledger
            .renewals()
            .iter()
            .any(|r| matches!(r, Renewal::Failed(_)))
    })
    .await;
    server.resume();
    wait_until("a renewal to land after the failed one", || async {
        let renewals = ledger.renewals();
        let failed = renewals
            .iter()
            .position(|r| matches!(r, Renewal::Failed(_)))
            .expect("a renewal failed");
        renewals[failed..].contains(&Renewal::Renewed)
    })
    .await;
    release.notify_one();

    let response = tokio::time::timeout(HANG, call)
        .await
        .expect("the request hung")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["credits-cost"], PRICE.to_string());
    let renewals = ledger.renewals();
    eprintln!("renewals: {renewals:?}; {:?}", layer.stats());
    assert!(
        !renewals.contains(&Renewal::NotOpen),
        "the hold was lost: {renewals:?}"
    );

    assert!(
        layer.pending_settlements().drain(DEADLINE).await,
        "pending settles did not drain"
    );
    let b = settled_books(&books, &acct).await;
    assert_eq!(b.committed, PRICE, "{b:?}");
    assert_eq!(b.available, (START - PRICE) as i64, "{b:?}");
    let stats = layer.stats();
    assert_eq!(
        (stats.commits_lost, stats.credits_lost),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(
        (stats.commits, stats.credits_committed),
        (1, PRICE),
        "{stats:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. The lifetime cap.
// ---------------------------------------------------------------------------------------

/// Sets its flag when dropped: the handler's future was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A handler that never answers is cancelled past the hold lifetime cap: its future is
/// dropped, the hold refunded, and the caller gets a `504` problem JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifetime_cap_cancels_and_refunds() {
    const START: u64 = 100;
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_cap", "key-cap", START).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(&[("GET /v1/forever", 5)]))
        .hold_ttl(Duration::from_millis(300))
        .max_hold_lifetime(Duration::from_millis(700));
    let entered = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let svc = layer.layer(tower::service_fn({
        let (entered, dropped) = (entered.clone(), dropped.clone());
        move |_req: Request<Full<Bytes>>| {
            let guard = DropFlag(dropped.clone());
            let entered = entered.clone();
            async move {
                let _guard = guard;
                entered.store(true, Ordering::Release);
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"never"))))
            }
        }
    }));

    let response = tokio::time::timeout(HANG, svc.oneshot(get_req("/v1/forever", Some("key-cap"))))
        .await
        .expect("the lifetime cap never cancelled the handler")
        .unwrap();
    assert!(entered.load(Ordering::Acquire), "the handler ran");
    assert!(
        dropped.load(Ordering::Acquire),
        "the handler's future was dropped"
    );
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        json["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("hold-lifetime-exceeded")),
        "{json}"
    );
    assert_eq!(json["status"], 504, "{json}");

    let b = assert_conserved(&ledger, &acct).await;
    assert_eq!(
        (b.available, b.held, b.committed),
        (START as i64, 0, 0),
        "refunded in full: {b:?}"
    );
    let stats = layer.stats();
    assert_eq!(
        (stats.holds, stats.refunds, stats.commits),
        (1, 1, 0),
        "{stats:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Graceful shutdown on a paused Redis.
// ---------------------------------------------------------------------------------------

/// A request's commit cannot land while Redis is paused: it is pending; `shutdown` waits
/// for it (Redis resumes meanwhile) and returns `true` with the commit landed. A settle
/// after the shutdown that the ledger does not answer at once is counted lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_settles_on_a_paused_redis() {
    const PRICE: u64 = 4;
    const START: u64 = 1_000;
    let server = RedisServer::start();
    let books = patient(&server).await;
    let acct = account(&books, "acct_shutdown", "key-shutdown", START).await;
    let ledger = redis_ledger(&server.url(), Duration::from_millis(150)).await;
    let layer = CreditLayer::new(ledger)
        .pricing(pricing(&[("GET /v1/gated", PRICE), ("GET /v1/echo", 1)]))
        .hold_ttl(Duration::from_secs(3));
    #[derive(Clone, Default)]
    struct Gate {
        entered: Arc<Notify>,
        release: Arc<Notify>,
    }
    let gate = Gate::default();
    let app = Router::new()
        .route(
            "/v1/gated",
            get(|State(gate): State<Gate>| async move {
                gate.entered.notify_one();
                gate.release.notified().await;
                "gated"
            }),
        )
        .route("/v1/echo", get(|| async { "echo" }))
        .with_state(gate.clone())
        .layer(layer.clone());
    let http = Server::start(app).await;
    let client = http1();

    // Warm-up: the API key is cached, the keeper runs.
    let warm = send(
        &client,
        get_req(&http.url("/v1/echo"), Some("key-shutdown")),
    )
    .await;
    assert_eq!(warm.status, StatusCode::OK, "{warm:?}");
    assert!(layer.pending_settlements().drain(DEADLINE).await);
    let before = layer.stats();

    let gated = |client: HttpClient| {
        let url = http.url("/v1/gated");
        tokio::spawn(async move {
            tokio::time::timeout(HANG, send(&client, get_req(&url, Some("key-shutdown"))))
                .await
                .expect("the request hung")
        })
    };

    let entered = gate.entered.notified();
    let call = gated(client.clone());
    tokio::time::timeout(HANG, entered)
        .await
        .expect("the handler runs");
    server.pause();
    gate.release.notify_one();
    let answer = call.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.int("credits-cost"), PRICE as i64);
    wait_until("the commit to be pending", || async {
        layer.pending_settlements().len() == 1
    })
    .await;
    let stats = layer.stats();
    assert_eq!(
        stats.commits, before.commits,
        "nothing confirmed yet: {stats:?}"
    );

    // Redis comes back while the shutdown waits: once the keeper has retried the commit
    // after the shutdown began. `shutdown` must return true only once the pending commit
    // has landed, which the assertions below check on the ledger itself.
    let retries = layer.stats().settle_retries;
    let resume = async {
        wait_until("a settle retry while the shutdown waits", || async {
            layer.stats().settle_retries > retries
        })
        .await;
        server.resume();
    };
    let (finished, ()) = tokio::join!(layer.shutdown(Duration::from_secs(10)), resume);
    assert!(finished, "the shutdown did not wait for the pending commit");
    assert!(layer.pending_settlements().is_empty());
    let stats = layer.stats();
    assert_eq!(stats.commits, before.commits + 1, "{stats:?}");
    assert_eq!(
        stats.credits_committed,
        before.credits_committed + PRICE,
        "{stats:?}"
    );
    assert_eq!(
        (stats.commits_lost, stats.credits_lost),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(
        (stats.keeper_queued, stats.keeper_running),
        (0, 0),
        "{stats:?}"
    );
    let b = settled_books(&books, &acct).await;
    assert_eq!(b.committed, 1 + PRICE, "the commit landed: {b:?}");

    // After the shutdown: a request whose commit the paused ledger does not answer at once
    // is counted lost (the keeper takes no more work).
    let entered = gate.entered.notified();
    let call = gated(client.clone());
    tokio::time::timeout(HANG, entered)
        .await
        .expect("the handler runs");
    server.pause();
    gate.release.notify_one();
    let answer = call.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.int("credits-cost"), PRICE as i64);
    wait_until("the commit after shutdown to be counted lost", || async {
        layer.stats().credits_lost == PRICE
    })
    .await;
    let stats = layer.stats();
    assert_eq!(stats.commits_lost, 1, "{stats:?}");
    assert!(layer.pending_settlements().is_empty());
    server.resume();

    // Once Redis is back the hold expires (its ttl is 3 s) and its credits go back: what
    // the ledger committed is what the layer says the ledger confirmed.
    let b = settled_books(&books, &acct).await;
    let stats = layer.stats();
    eprintln!("after shutdown: {b:?}; {stats:?}");
    assert_eq!(
        b.committed, stats.credits_committed,
        "the ledger charged a commit the layer counted lost: {stats:?}"
    );
    assert_eq!(b.committed, 1 + PRICE, "{b:?}");
    assert_eq!(b.available, (START - 1 - PRICE) as i64, "{b:?}");
}
