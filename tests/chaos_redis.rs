//! Chaos: three replicas (each its own `CreditLayer` + `RedisLedger` behind its own axum
//! server, the first one also behind a tonic server) bill ten accounts on one
//! `redis-server` (`appendonly yes`, `appendfsync always`) while random requests succeed
//! with random costs, fail, panic, get cancelled, drop deferred streams or fail the gRPC
//! way, top-ups replay their idempotency keys, and a fault task kills, pauses, resumes and
//! restarts Redis. The second replica packs accounts (`pack_accounts`), the others do not.
//!
//! Bounded: the requests are released at a fixed rate by the pacing task for a fixed
//! schedule of faults (about 10 s), and every request must be answered within [`HANG`].
//! `CHAOS_SCALE` (default 1) multiplies the accounts, the workers and the rate.
//!
//! Seeds: every run draws its choices (request mix, costs, top-up keys, the fault schedule
//! and its timing) from one `u64` seed, taken from the clock unless `CHAOS_SEED` is set.
//! Any failure — an assertion at the end or a panic in the middle — prints the seed to
//! stderr (a guard prints it while the test unwinds). Replay it with
//!
//! ```text
//! CHAOS_SEED=<seed> cargo test --all-features --test chaos_redis -- --nocapture
//! ```
//!
//! (with the same `CHAOS_SCALE`). The same seed gives the same choices; the interleaving
//! with Redis and the scheduler is still the machine's.
//!
//! In the end (Redis up, pending settles drained, the test clock moved past every hold's
//! ttl, expired holds swept) the books must balance: per account
//! `topped_up = available + held + committed` (through `balance()` and on the raw hash),
//! nothing held, `available >= -credit_limit`, `topped_up` = the distinct top-up keys
//! (each credited once); every hold the handlers saw is closed the way its request went
//! (a success committed or expired, a failure refunded or expired, never committed), the
//! ledger committed exactly the credits of the holds it closed as committed (nothing
//! charged twice), and the layers' confirmed commits match the ledger. The summary block
//! printed at the end (`--nocapture`) gives every count.

#[path = "../examples/grpc/echo.rs"]
mod echo;
mod http_support;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use echo::{ChatRequest, CountRequest, EchoClient, EchoServer, SayReply, SayRequest, UploadChunk};
use futures_util::StreamExt;
use http::StatusCode;
use http_body_util::BodyExt;
use http_support::{account, get_req, http2, read, HttpClient, Server};
use prost::Message;
use support::redis::{RedisOptions, RedisServer};
use support::rig::{assert_balanced, pricing, wait_for_async, Rng, DEADLINE};
use tokio::sync::{oneshot, Semaphore};
use tower_credits::clock::ManualClock;
use tower_credits::ledger::Configure;
use tower_credits::ledger::HoldId;
use tower_credits::ledger::RedisLedger;
use tower_credits::{AccountId, AccountSettings, BillingStats, Charge, CreditLayer, Protocol};
use tower_credits::{LedgerAdmin, LedgerReports, TopUp};
use tower_http::catch_panic::CatchPanicLayer;

/// The replicas' per-call deadline.
const CALL_TIMEOUT: Duration = Duration::from_millis(150);
/// The replicas' hold ttl: settles are retried this long, then given up.
const HOLD_TTL: Duration = Duration::from_secs(2);
/// A request not answered within this hangs: the test fails.
const HANG: Duration = Duration::from_secs(5);
/// Replicas (axum servers, each with its own layer and ledger).
const REPLICAS: usize = 3;
/// Accounts, request workers and requests per second, before `CHAOS_SCALE`.
const ACCOUNTS: usize = 10;
const WORKERS: usize = 16;
const RATE_PER_SEC: usize = 300;
/// How long before a kill a commit may have run and still lost its reply with the server
/// (the append-only file's fsync comes before the reply): generous.
const KILL_WINDOW_MS: u64 = 500;
/// Closed hold ids are kept this much longer than any call needs them, so the audit at the
/// end sees how every hold of the run closed (the ledger forgets them within seconds).
const AUDIT_GRACE: Duration = Duration::from_secs(600);
/// Credits each account starts with (its seed top-up).
const SEED_CREDITS: u64 = 60;

const OK_PRICE: u64 = 10;
const FAIL_PRICE: u64 = 6;
const PANIC_PRICE: u64 = 4;
const BLOCK_PRICE: u64 = 3;
const STREAM_PRICE: u64 = 8;
const SAY_PRICE: u64 = 10;
/// The streaming methods' holds: a stream is charged what its handler metered (`add` per
/// item, message or chunk), at most this.
const COUNT_PRICE: u64 = 20;
const CHAT_PRICE: u64 = 20;
const UPLOAD_PRICE: u64 = 20;
/// What a completed stream costs (three chunks of 1) and what a dropped one has charged.
const STREAM_COST: u64 = 3;
const DROPPED_COST: u64 = 2;

const ROUTES: &[(&str, u64)] = &[
    ("GET /v1/ok", OK_PRICE),
    ("GET /v1/fail", FAIL_PRICE),
    ("GET /v1/panic", PANIC_PRICE),
    ("GET /v1/block", BLOCK_PRICE),
    ("GET /v1/stream", STREAM_PRICE),
    ("GET /v1/drop", STREAM_PRICE),
    (echo::SAY, SAY_PRICE),
    (echo::COUNT, COUNT_PRICE),
    (echo::CHAT, CHAT_PRICE),
    (echo::UPLOAD, UPLOAD_PRICE),
];

fn scale() -> usize {
    std::env::var("CHAOS_SCALE")
        .ok()
        .map(|s| s.parse().expect("CHAOS_SCALE is a positive integer"))
        .unwrap_or(1usize)
        .max(1)
}

/// The run's seed: `CHAOS_SEED` when set (a replay), else from the clock.
fn seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("CHAOS_SEED={s:?} is not a u64: {e}")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_nanos() as u64,
    }
}

/// Prints the seed when the test fails: its `Drop` runs while a panic unwinds the test
/// (a failed assertion, or a worker's panic surfacing through its `JoinHandle`).
struct SeedGuard {
    seed: u64,
    scale: usize,
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\nchaos FAILED with seed {seed} (scale {scale}); replay with:\n  \
                 CHAOS_SEED={seed} CHAOS_SCALE={scale} cargo test --all-features --test chaos_redis -- --nocapture\n",
                seed = self.seed,
                scale = self.scale,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the handlers saw: every hold, and what its request meant to do with it
// ---------------------------------------------------------------------------------------

/// What the layer will do with a hold whose handler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    /// A success: the layer commits this many credits (the `Charge`, clamped to the hold).
    Commit(u64),
    /// A failure (5xx, panic, cancelled, gRPC error): the layer refunds.
    Refund,
    /// A streaming call the client abandons mid-stream: the layer commits what the handler
    /// metered when the stream ended (the `Charge` as it was closed, clamped to the hold),
    /// known only at the end of the run.
    Metered,
}

#[derive(Debug, Clone)]
struct Seen {
    account: AccountId,
    hold: HoldId,
    intent: Intent,
    /// For [`Intent::Metered`]: the call's id (`x-chaos-call`), its method and its `Charge`.
    call: Option<(u64, String, Charge)>,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn record(&self, charge: &Charge, intent: Intent) {
        self.0.lock().unwrap().push(Seen {
            account: charge.account().clone(),
            hold: charge.hold_id().clone(),
            intent,
            call: None,
        });
    }

    fn record_metered(&self, charge: &Charge, call: u64, method: &str) {
        self.0.lock().unwrap().push(Seen {
            account: charge.account().clone(),
            hold: charge.hold_id().clone(),
            intent: Intent::Metered,
            call: Some((call, method.to_owned(), charge.clone())),
        });
    }
}

#[derive(Clone)]
struct Hooks {
    log: Log,
    /// The pacing task's ticks (every 10 ms): `/v1/ok?ticks=n` and `/v1/stream` work for a
    /// few of them, so faults catch requests between their reserve and their settle.
    tick: tokio::sync::watch::Receiver<u64>,
    /// `/v1/block?tag=n` fires the sender under `n`, then never answers.
    blocked: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
}

#[derive(serde::Deserialize)]
struct Params {
    cost: Option<u64>,
    tag: Option<u64>,
    ticks: Option<u64>,
}

/// Waits for `n` ticks of the pacing task (at once once it has stopped).
async fn work(tick: &tokio::sync::watch::Receiver<u64>, n: u64) {
    let mut tick = tick.clone();
    for _ in 0..n {
        if tick.changed().await.is_err() {
            return;
        }
    }
}

const PANIC_MESSAGE: &str = "handler panicked on purpose (chaos)";

fn routes(hooks: Hooks) -> Router {
    Router::new()
        .route("/v1/ok", get(ok))
        .route(
            "/v1/fail",
            get(|State(h): State<Hooks>, charge: Charge| async move {
                h.log.record(&charge, Intent::Refund);
                (StatusCode::BAD_GATEWAY, "upstream failed")
            }),
        )
        .route(
            "/v1/panic",
            get(|State(h): State<Hooks>, charge: Charge| async move {
                h.log.record(&charge, Intent::Refund);
                if charge.reserved() > 0 {
                    panic!("{PANIC_MESSAGE}");
                }
                "unreachable"
            }),
        )
        .route("/v1/block", get(block))
        .route("/v1/stream", get(stream))
        .route("/v1/drop", get(dropped))
        .with_state(hooks)
}

/// Charges `?cost=`, bounded by the hold (a `Charge` refuses a cost past it).
async fn ok(State(h): State<Hooks>, charge: Charge, Query(p): Query<Params>) -> &'static str {
    let cost = p.cost.expect("cost");
    work(&h.tick, p.ticks.unwrap_or(0)).await;
    charge.set(cost.min(charge.reserved())).unwrap();
    h.log
        .record(&charge, Intent::Commit(cost.min(charge.reserved())));
    "ok"
}

async fn block(State(h): State<Hooks>, charge: Charge, Query(p): Query<Params>) -> &'static str {
    h.log.record(&charge, Intent::Refund);
    if let Some(entered) = h.blocked.lock().unwrap().remove(&p.tag.expect("tag")) {
        let _ = entered.send(());
    }
    std::future::pending::<()>().await;
    "never"
}

/// A deferred charge: three chunks of 1 credit, settled at the end (trailers).
async fn stream(State(h): State<Hooks>, charge: Charge) -> Response {
    charge.defer();
    charge.set(0).unwrap();
    h.log.record(&charge, Intent::Commit(STREAM_COST));
    let chunks = futures_util::stream::iter(0..STREAM_COST).then(move |i| {
        let charge = charge.clone();
        let tick = h.tick.clone();
        async move {
            if i == STREAM_COST - 1 {
                work(&tick, 1).await;
            }
            charge.add(1).unwrap();
            Ok::<_, Infallible>(Bytes::from(format!("chunk{i};")))
        }
    });
    Response::new(Body::from_stream(chunks))
}

/// A deferred charge of 2 whose stream never ends: the client drops it after the first
/// chunk, and the layer commits what the charge says.
async fn dropped(State(h): State<Hooks>, charge: Charge) -> Response {
    charge.defer();
    charge.set(DROPPED_COST).unwrap();
    h.log.record(&charge, Intent::Commit(DROPPED_COST));
    let first = futures_util::stream::once(async { Ok::<_, Infallible>(Bytes::from("first;")) });
    Response::new(Body::from_stream(
        first.chain(futures_util::stream::pending()),
    ))
}

/// Records the holds of gRPC calls (between the layer and the echo service): the intent is
/// in the `x-chaos-cost` metadata (absent: the call is meant to fail).
#[derive(Clone)]
struct Record<S> {
    inner: S,
    log: Log,
}

impl<S, B> tower::Service<http::Request<B>> for Record<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> S::Future {
        if let Some(charge) = req.extensions().get::<Charge>() {
            if let Some(call) = req.headers().get("x-chaos-call") {
                let call = call.to_str().unwrap().parse().unwrap();
                self.log.record_metered(charge, call, req.uri().path());
                return self.inner.call(req);
            }
            let intent = match req.headers().get("x-chaos-cost") {
                Some(cost) => Intent::Commit(cost.to_str().unwrap().parse().unwrap()),
                None => Intent::Refund,
            };
            self.log.record(charge, intent);
        }
        self.inner.call(req)
    }
}

/// Keeps the expected panics out of the output; any other panic is reported as usual.
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

// ---------------------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------------------

/// What one worker saw.
#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<&'static str, u64>,
    /// Credits the responses said were charged (200 heads, stream trailers, gRPC trailers),
    /// plus what dropped streams had charged.
    told: u64,
}

impl Tally {
    fn count(&mut self, outcome: &'static str) {
        *self.outcomes.entry(outcome).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.told += other.told;
    }
}

/// One top-up idempotency key: its amount never changes, it is used 1 to 3 times.
#[derive(Clone)]
struct TopUpKey {
    account: AccountId,
    key: String,
    amount: u64,
    uses_left: u64,
}

#[derive(Default)]
struct TopUps {
    /// Keys that still have uses left.
    open: Vec<TopUpKey>,
    /// Every key ever used: account, amount.
    all: BTreeMap<String, (AccountId, u64)>,
    /// Keys the ledger confirmed at least once.
    confirmed: BTreeMap<String, u64>,
    calls: u64,
    replays: u64,
    failed: u64,
    next: u64,
}

/// A streaming call the client abandoned mid-stream, as the client saw it.
#[derive(Debug, Clone)]
struct StreamCall {
    /// Its `x-chaos-call` id.
    id: u64,
    method: &'static str,
    /// What the layer may commit for it, as far as the client can tell: Count streams
    /// produce ahead of the reader (`lo < hi`); a Chat or an Upload is known exactly.
    lo: u64,
    hi: u64,
    /// Wall-clock ms: when the call began, and when the client abandoned it.
    started_ms: u64,
    ended_ms: u64,
}

struct Env {
    urls: Vec<String>,
    grpc: String,
    grpc_addr: SocketAddr,
    streams: Mutex<Vec<StreamCall>>,
    keys: Vec<(AccountId, String)>,
    ledgers: Vec<RedisLedger>,
    hooks: Hooks,
    top_ups: Mutex<TopUps>,
    tags: AtomicU64,
}

/// A response read to the end within [`HANG`], or a hang.
async fn bounded<F: std::future::Future>(what: &str, call: F) -> F::Output {
    tokio::time::timeout(HANG, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for more than {HANG:?}"))
}

/// A refusal the layer answers while the ledger is down or the account is short.
fn refusal(status: StatusCode) -> Option<&'static str> {
    match status {
        StatusCode::SERVICE_UNAVAILABLE => Some("503 ledger unavailable"),
        StatusCode::PAYMENT_REQUIRED => Some("402 insufficient"),
        _ => None,
    }
}

/// A refusal the layer answers a gRPC call with while the ledger is down or the account is
/// short (a trailers-only response).
fn grpc_refusal(code: tonic::Code) -> Option<&'static str> {
    match code {
        tonic::Code::Unavailable => Some("gRPC UNAVAILABLE ledger unavailable"),
        tonic::Code::FailedPrecondition => Some("gRPC FAILED_PRECONDITION insufficient"),
        _ => None,
    }
}

// ---- a raw HTTP/2 gRPC client: it resets a stream exactly when told (as in bypass_grpc) ----

/// One HTTP/2 connection to the gRPC replica; its connection task ends with it.
struct RawH2 {
    send: h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// A gRPC length-prefixed message: flag 0 (uncompressed), big-endian length, bytes.
fn grpc_frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(0);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame.into()
}

impl RawH2 {
    async fn connect(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, connection) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(async move {
            let _ = connection.await;
        });
        Self { send, addr, conn }
    }

    /// Opens a call of `path` with the caller's key and `metadata`; the request stream stays
    /// open.
    async fn open(
        &mut self,
        path: &str,
        key: &str,
        metadata: &[(&str, String)],
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let mut request = http::Request::post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {key}"));
        for (name, value) in metadata {
            request = request.header(*name, value.as_str());
        }
        let mut send = bounded("an HTTP/2 stream slot", self.send.clone().ready())
            .await
            .expect("the gRPC connection is up");
        send.send_request(request.body(()).unwrap(), false)
            .expect("a new stream")
    }
}

/// The `grpc-status` of a trailers-only answer (a refusal), if the head has one.
fn head_status(head: &http::HeaderMap) -> Option<tonic::Code> {
    head.get("grpc-status")
        .map(|v| tonic::Code::from_i32(v.to_str().unwrap().parse().unwrap()))
}

/// The response messages of a raw call.
struct RawReplies {
    rx: h2::RecvStream,
    buf: BytesMut,
}

impl RawReplies {
    /// The next message (capacity released so the server keeps sending); `None` at the end
    /// of the body.
    async fn next<M: Message + Default>(&mut self) -> Option<M> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    assert_eq!(self.buf[0], 0, "uncompressed messages");
                    self.buf.advance(5);
                    return Some(M::decode(self.buf.split_to(len).freeze()).unwrap());
                }
            }
            let data = self.rx.data().await?.expect("a DATA frame");
            self.rx.flow_control().release_capacity(data.len()).unwrap();
            self.buf.extend_from_slice(&data);
        }
    }
}

/// Waits until the upload named `id` has received `n` chunks (its handler metered them),
/// failing the test after the shared deadline.
async fn chunks_received(id: &str, n: u32) {
    wait_for_async(
        &format!("upload {id} to receive {n} chunks"),
        DEADLINE,
        || async { (echo::chunks_received(id) >= n).then_some(()) },
    )
    .await
}

/// A Count (server-streaming) call through tonic: the client reads `k` items of a longer
/// stream, then drops it (tonic resets the stream). The handler adds per item it produced,
/// and it produces ahead of the reader: the commit lies between what was read and what the
/// whole stream would have cost, clamped to the hold.
async fn count_dropped(
    env: &Env,
    grpc: &mut EchoClient,
    rng: &mut Rng,
    key: &str,
    tally: &mut Tally,
) {
    let id = env.tags.fetch_add(1, Ordering::Relaxed);
    let started_ms = now_ms();
    let k = rng.range(1, 5);
    let per_item = rng.range(1, 3);
    // A short stream (it may end on the server before the reset) or an endless one (held
    // back only by flow control: metered far past the hold).
    let n = if rng.range(0, 1) == 0 {
        rng.range(k + 1, 12)
    } else {
        1_000_000
    };
    let mut request = tonic::Request::new(CountRequest {
        n: n as u32,
        credits_per_item: per_item,
        fail_code: 0,
    });
    let md = request.metadata_mut();
    md.insert("authorization", format!("Bearer {key}").parse().unwrap());
    md.insert("x-chaos-call", id.to_string().parse().unwrap());
    match bounded("a Count call", grpc.count(request)).await {
        Ok(response) => {
            let mut items = response.into_inner();
            for i in 0..k {
                let item = bounded("a Count item", items.message())
                    .await
                    .unwrap_or_else(|s| panic!("Count item {i}: {s:?}"))
                    .expect("the stream is longer");
                assert_eq!(item.message, format!("item {i}"));
            }
            drop(items);
            env.streams.lock().unwrap().push(StreamCall {
                id,
                method: echo::COUNT,
                lo: (k * per_item).min(COUNT_PRICE),
                hi: (n * per_item).min(COUNT_PRICE),
                started_ms,
                ended_ms: now_ms(),
            });
            tally.count("gRPC Count stream dropped by the client after k items");
        }
        Err(status) => tally.count(
            grpc_refusal(status.code())
                .unwrap_or_else(|| panic!("unexpected gRPC status {status:?}")),
        ),
    }
}

/// What the handler's `add`s of `credits` per piece, `m` pieces, commit on a hold of
/// `price`: each `add` past the hold is refused and records nothing.
fn paid(m: u64, credits: u64, price: u64) -> u64 {
    m.min(price / credits) * credits
}

/// A Chat (bidi) call on the raw client: `m` messages, each paid one answered (a message
/// past the hold ends the stream instead), then the client resets the stream (RST_STREAM
/// CANCEL). Committed: what the hold paid for.
async fn chat_reset(env: &Env, raw: &mut RawH2, rng: &mut Rng, key: &str, tally: &mut Tally) {
    let id = env.tags.fetch_add(1, Ordering::Relaxed);
    let started_ms = now_ms();
    let m = rng.range(1, 4);
    let credits = rng.range(1, 8);
    let message = |i: u64| {
        grpc_frame(&ChatRequest {
            message: format!("m{i}"),
            credits,
        })
    };
    let (response, mut tx) = raw
        .open(echo::CHAT, key, &[("x-chaos-call", id.to_string())])
        .await;
    // Fails only if a refusal already closed the stream: the head below says so.
    let _ = tx.send_data(message(0), false);
    let response = bounded("a Chat head", response)
        .await
        .expect("the gRPC replica answers");
    if let Some(code) = head_status(response.headers()) {
        tally.count(grpc_refusal(code).unwrap_or_else(|| panic!("Chat refused with {code:?}")));
        return;
    }
    let mut replies = RawReplies {
        rx: response.into_body(),
        buf: BytesMut::new(),
    };
    let paid_messages = m.min(CHAT_PRICE / credits);
    for i in 0..m {
        if i > 0 && tx.send_data(message(i), false).is_err() {
            break;
        }
        let reply: Option<SayReply> = bounded("a Chat reply", replies.next()).await;
        if i < paid_messages {
            let reply = reply.expect("a reply to every paid message");
            assert_eq!(reply.message, format!("echo: m{i}"));
        } else {
            assert!(reply.is_none(), "a reply past the hold: {reply:?}");
            break;
        }
    }
    tx.send_reset(h2::Reason::CANCEL);
    drop(replies);
    let charged = paid(m, credits, CHAT_PRICE);
    env.streams.lock().unwrap().push(StreamCall {
        id,
        method: echo::CHAT,
        lo: charged,
        hi: charged,
        started_ms,
        ended_ms: now_ms(),
    });
    tally.told += charged;
    tally.count("gRPC Chat (bidi) reset by the client after a few messages");
}

/// An Upload (client-streaming) call on the raw client: `m` chunks, then, once the handler
/// has received (and metered) them, the client resets the stream before its end. Committed:
/// what the hold paid for.
async fn upload_reset(env: &Env, raw: &mut RawH2, rng: &mut Rng, key: &str, tally: &mut Tally) {
    let id = env.tags.fetch_add(1, Ordering::Relaxed);
    let started_ms = now_ms();
    let m = rng.range(1, 4);
    let credits = rng.range(1, 8);
    let name = format!("chaos-upload-{id}");
    let (mut response, mut tx) = raw
        .open(
            echo::UPLOAD,
            key,
            &[
                ("x-chaos-call", id.to_string()),
                (echo::UPLOAD_ID, name.clone()),
            ],
        )
        .await;
    for i in 0..m {
        let chunk = UploadChunk {
            data: vec![i as u8; 32],
            credits,
        };
        // Fails only if a refusal already closed the stream: the head says so.
        let _ = tx.send_data(grpc_frame(&chunk), false);
    }
    // The handler answers only at the end of the upload: a head first is a refusal.
    let refused = bounded("an Upload", async {
        tokio::select! {
            head = &mut response => Some(head.expect("the gRPC replica answers")),
            () = chunks_received(&name, m as u32) => None,
        }
    })
    .await;
    if let Some(head) = refused {
        let code = head_status(head.headers())
            .unwrap_or_else(|| panic!("an upload answered before its end: {head:?}"));
        tally.count(grpc_refusal(code).unwrap_or_else(|| panic!("Upload refused with {code:?}")));
        return;
    }
    tx.send_reset(h2::Reason::CANCEL);
    drop(response);
    let charged = paid(m, credits, UPLOAD_PRICE);
    env.streams.lock().unwrap().push(StreamCall {
        id,
        method: echo::UPLOAD,
        lo: charged,
        hi: charged,
        started_ms,
        ended_ms: now_ms(),
    });
    tally.told += charged;
    tally.count("gRPC Upload (client streaming) reset before its end");
}

async fn worker(env: Arc<Env>, permits: Arc<Semaphore>, mut rng: Rng) -> Tally {
    let client = http2();
    let mut grpc = bounded("the gRPC connect", EchoClient::connect(env.grpc.clone()))
        .await
        .expect("connect to the gRPC replica");
    let mut raw = bounded("the raw HTTP/2 connect", RawH2::connect(env.grpc_addr)).await;
    let mut tally = Tally::default();
    while let Ok(permit) = permits.acquire().await {
        permit.forget();
        let (account, key) = env.keys[rng.next() as usize % env.keys.len()].clone();
        let base = env.urls[rng.next() as usize % env.urls.len()].clone();
        match rng.range(0, 109) {
            0..=7 => top_up(&env, &mut rng, &account, &mut tally).await,
            8..=39 => {
                // Sometimes past the price: the handler bounds its work by the hold.
                let cost = rng.range(0, OK_PRICE + 3);
                let ticks = rng.range(0, 5);
                let url = format!("{base}/v1/ok?cost={cost}&ticks={ticks}");
                let answer = bounded("GET /v1/ok", send(&client, &url, &key)).await;
                match answer.status {
                    StatusCode::OK => {
                        let told = answer.int("credits-cost") as u64;
                        assert_eq!(told, cost.min(OK_PRICE));
                        tally.told += told;
                        tally.count("200 charged");
                    }
                    s => tally.count(refusal(s).unwrap_or_else(|| panic!("{answer:?}"))),
                }
            }
            40..=47 => {
                let answer = bounded(
                    "GET /v1/fail",
                    send(&client, &format!("{base}/v1/fail"), &key),
                )
                .await;
                match answer.status {
                    StatusCode::BAD_GATEWAY => {
                        assert_eq!(answer.header("credits-cost"), Some("0"));
                        tally.count("5xx from the handler (refunded)");
                    }
                    s => tally.count(refusal(s).unwrap_or_else(|| panic!("{answer:?}"))),
                }
            }
            48..=55 => {
                let answer = bounded(
                    "GET /v1/panic",
                    send(&client, &format!("{base}/v1/panic"), &key),
                )
                .await;
                match answer.status {
                    StatusCode::INTERNAL_SERVER_ERROR => tally.count("panic (500, refunded)"),
                    s => tally.count(refusal(s).unwrap_or_else(|| panic!("{answer:?}"))),
                }
            }
            56..=63 => cancel(&env, &client, &base, &key, &mut tally).await,
            64..=71 => {
                let answer = bounded(
                    "GET /v1/stream",
                    send(&client, &format!("{base}/v1/stream"), &key),
                )
                .await;
                match answer.status {
                    StatusCode::OK => {
                        let told = answer.trailer("credits-cost").expect("cost in trailers");
                        assert_eq!(told, STREAM_COST.to_string());
                        tally.told += STREAM_COST;
                        tally.count("200 deferred stream (cost in trailers)");
                    }
                    s => tally.count(refusal(s).unwrap_or_else(|| panic!("{answer:?}"))),
                }
            }
            72..=79 => {
                let req = get_req(&format!("{base}/v1/drop"), Some(&key));
                let response = bounded("GET /v1/drop", client.request(req))
                    .await
                    .expect("the replica answers");
                if response.status() == StatusCode::OK {
                    let mut body = response.into_body();
                    let first = bounded("the first chunk", body.frame()).await;
                    assert!(first.is_some_and(|f| f.is_ok()), "no first chunk");
                    drop(body);
                    tally.told += DROPPED_COST;
                    tally.count("deferred stream dropped by the client");
                } else {
                    let answer = read(response).await;
                    tally.count(refusal(answer.status).unwrap_or_else(|| panic!("{answer:?}")));
                }
            }
            95..=99 => count_dropped(&env, &mut grpc, &mut rng, &key, &mut tally).await,
            100..=104 => chat_reset(&env, &mut raw, &mut rng, &key, &mut tally).await,
            105..=109 => upload_reset(&env, &mut raw, &mut rng, &key, &mut tally).await,
            _ => {
                let fail = rng.range(0, 2) == 0;
                let tokens = rng.range(0, SAY_PRICE + 2);
                let mut request = tonic::Request::new(SayRequest {
                    message: "chaos".into(),
                    tokens: Some(tokens),
                    fail_code: if fail {
                        rng.pick(&[tonic::Code::Internal, tonic::Code::Aborted]) as i32
                    } else {
                        0
                    },
                });
                let md = request.metadata_mut();
                md.insert("authorization", format!("Bearer {key}").parse().unwrap());
                if !fail {
                    let cost = tokens.min(SAY_PRICE).to_string();
                    md.insert("x-chaos-cost", cost.parse().unwrap());
                }
                match bounded("a gRPC call", grpc.say(request)).await {
                    Ok(reply) => {
                        assert!(!fail);
                        let told: u64 = reply
                            .metadata()
                            .get("credits-cost")
                            .unwrap()
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        assert_eq!(told, tokens.min(SAY_PRICE));
                        tally.told += told;
                        tally.count("gRPC OK charged");
                    }
                    Err(status) => tally.count(match status.code() {
                        tonic::Code::Internal | tonic::Code::Aborted if fail => {
                            "gRPC error status (refunded)"
                        }
                        tonic::Code::Unavailable => "gRPC UNAVAILABLE ledger unavailable",
                        tonic::Code::FailedPrecondition => "gRPC FAILED_PRECONDITION insufficient",
                        _ => panic!("unexpected gRPC status {status:?}"),
                    }),
                }
            }
        }
    }
    tally
}

async fn send(client: &HttpClient, url: &str, key: &str) -> http_support::Answer {
    http_support::send(client, get_req(url, Some(key))).await
}

/// The client hangs up while its handler is blocked (HTTP/2: the stream is reset).
async fn cancel(env: &Env, client: &HttpClient, base: &str, key: &str, tally: &mut Tally) {
    let tag = env.tags.fetch_add(1, Ordering::Relaxed);
    let (entered_tx, entered) = oneshot::channel();
    env.hooks.blocked.lock().unwrap().insert(tag, entered_tx);
    let (client, url, key) = (
        client.clone(),
        format!("{base}/v1/block?tag={tag}"),
        key.to_owned(),
    );
    let mut call = tokio::spawn(async move { send(&client, &url, &key).await });
    let outcome = bounded("GET /v1/block", async {
        tokio::select! {
            Ok(()) = entered => {
                call.abort();
                let _ = (&mut call).await;
                "cancelled by the client (refunded)"
            }
            answer = &mut call => {
                let answer = answer.expect("the request task");
                refusal(answer.status).unwrap_or_else(|| panic!("{answer:?}"))
            }
        }
    })
    .await;
    env.hooks.blocked.lock().unwrap().remove(&tag);
    tally.count(outcome);
}

/// A top-up with a new key, or a replay of an open one (same amount).
async fn top_up(env: &Env, rng: &mut Rng, account: &AccountId, tally: &mut Tally) {
    let chosen = {
        let mut t = env.top_ups.lock().unwrap();
        let reuse = !t.open.is_empty() && rng.range(0, 1) == 0;
        let mut k = if reuse {
            let i = rng.next() as usize % t.open.len();
            t.open.swap_remove(i)
        } else {
            t.next += 1;
            let k = TopUpKey {
                account: account.clone(),
                key: format!("pay-{}", t.next),
                amount: rng.range(10, 80),
                uses_left: rng.range(1, 3),
            };
            t.all.insert(k.key.clone(), (k.account.clone(), k.amount));
            k
        };
        k.uses_left -= 1;
        if k.uses_left > 0 {
            t.open.push(k.clone());
        }
        t.calls += 1;
        k
    };
    let ledger = &env.ledgers[rng.next() as usize % env.ledgers.len()];
    let result = bounded(
        "a top-up",
        ledger.top_up(TopUp::new(&chosen.account, chosen.amount, &chosen.key)),
    )
    .await;
    let mut t = env.top_ups.lock().unwrap();
    match result {
        Ok(done) => {
            assert_eq!(done.amount, chosen.amount);
            if done.replayed {
                t.replays += 1;
            }
            t.confirmed.insert(chosen.key, chosen.amount);
            tally.count("top-up");
        }
        Err(e) if e.is_unavailable() => {
            t.failed += 1;
            tally.count("top-up failed (ledger unavailable)");
        }
        Err(e) => panic!("top-up {}: {e}", chosen.key),
    }
}

// ---------------------------------------------------------------------------------------
// The faults
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL, then a restart after this long.
    Kill(Duration),
    /// SIGSTOP, then SIGCONT after this long.
    Pause(Duration),
}

#[derive(Default, Debug)]
struct Injected {
    kills: u64,
    /// When each kill longer than the hold ttl began (wall-clock ms).
    long_kills_at_ms: Vec<u64>,
    pauses: u64,
    restarts: u64,
    /// Every fault, from its start to the restart or SIGCONT (wall-clock ms).
    windows: Vec<(u64, u64)>,
}

/// A shuffled schedule: two short kills, one kill longer than the hold ttl (settles in
/// flight are given up: unbilled revenue), two pauses past the call deadline but shorter
/// than the hold ttl.
fn schedule(rng: &mut Rng) -> Vec<Fault> {
    let ms = |rng: &mut Rng, lo, hi| Duration::from_millis(rng.range(lo, hi));
    let mut faults = vec![
        Fault::Kill(ms(rng, 150, 500)),
        Fault::Kill(ms(rng, 150, 500)),
        Fault::Kill(HOLD_TTL + ms(rng, 500, 1000)),
        Fault::Pause(ms(rng, 300, 800)),
        Fault::Pause(ms(rng, 300, 800)),
    ];
    for i in (1..faults.len()).rev() {
        let j = rng.next() as usize % (i + 1);
        faults.swap(i, j);
    }
    faults
}

/// Paces the requests for the whole schedule (a calm spell before each fault and one at
/// the end), injects the faults, then closes the permits. Its sleeps are
/// its pace: nothing waits on them for correctness.
async fn drive(
    mut server: RedisServer,
    faults: &[Fault],
    pacer: Pacer,
    rng: &mut Rng,
) -> (RedisServer, Injected) {
    let mut injected = Injected::default();
    for &fault in faults {
        pacer
            .pace_for(Duration::from_millis(rng.range(700, 1200)))
            .await;
        match fault {
            Fault::Kill(down) => {
                let at = now_ms();
                tokio::task::block_in_place(|| server.kill());
                injected.kills += 1;
                if down > HOLD_TTL {
                    injected.long_kills_at_ms.push(at);
                }
                pacer.pace_for(down).await;
                tokio::task::block_in_place(|| server.restart());
                injected.restarts += 1;
                injected.windows.push((at, now_ms()));
            }
            Fault::Pause(stopped) => {
                let at = now_ms();
                tokio::task::block_in_place(|| server.pause());
                injected.pauses += 1;
                pacer.pace_for(stopped).await;
                tokio::task::block_in_place(|| server.resume());
                injected.windows.push((at, now_ms()));
            }
        }
    }
    pacer.pace_for(Duration::from_millis(1000)).await;
    pacer.permits.close();
    (server, injected)
}

/// The pace of the run: every 10 ms it releases `per_tick` requests (never letting a
/// backlog build up) and ticks the handlers' clock.
struct Pacer {
    permits: Arc<Semaphore>,
    per_tick: usize,
    tick: tokio::sync::watch::Sender<u64>,
}

impl Pacer {
    async fn pace_for(&self, spell: Duration) {
        let until = tokio::time::Instant::now() + spell;
        // The load's clock: one tick every 10 ms releases the next requests.
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        while tokio::time::Instant::now() < until {
            ticks.tick().await;
            if self.permits.available_permits() < self.per_tick * 4 {
                self.permits.add_permits(self.per_tick);
            }
            self.tick.send_modify(|t| *t += 1);
        }
    }
}

/// Wall-clock ms, the clock Redis `TIME` reads on this machine.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------
// The books
// ---------------------------------------------------------------------------------------

/// `HGETALL` of a key, as field → value.
fn hash(server: &RedisServer, key: &str) -> BTreeMap<String, String> {
    let out = server.cli(&["HGETALL", key]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len().is_multiple_of(2), "HGETALL {key}: {out}");
    lines
        .chunks(2)
        .map(|kv| (kv[0].to_owned(), kv[1].to_owned()))
        .collect()
}

/// `ZRANGE key 0 -1 WITHSCORES`, as member → score (ms).
fn zset(server: &RedisServer, key: &str) -> HashMap<String, u64> {
    let out = server.cli(&["ZRANGE", key, "0", "-1", "WITHSCORES"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len().is_multiple_of(2), "ZRANGE {key}: {out}");
    lines
        .chunks(2)
        .map(|kv| (kv[0].to_owned(), kv[1].parse().unwrap()))
        .collect()
}

/// `held` (a packed account's third figure, after `v`'s format mark; else its field) and
/// the sum of the open holds in `:holds`, read in one script (atomically: a background
/// refund may still be running).
fn held_and_open_holds(server: &RedisServer, account: &AccountId) -> (i64, i64) {
    const SCRIPT: &str = "local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0') \
        local v = redis.call('HGET', KEYS[1], 'v') \
        if v then \
          local r = {cmsgpack.unpack(v)} \
          if r[1] == false then table.remove(r, 1) end \
          held = r[3] \
        end \
        local sum, kv = 0, redis.call('HGETALL', KEYS[2]) \
        for i = 1, #kv, 2 do \
          if not string.find(kv[i], ':') then sum = sum + tonumber(kv[i + 1]) end \
        end \
        return {held, sum}";
    let (acct, holds) = (
        format!("credits:{{{account}}}:acct"),
        format!("credits:{{{account}}}:holds"),
    );
    let out = server.cli(&["EVAL", SCRIPT, "2", &acct, &holds]);
    let v: Vec<i64> = out.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(v.len(), 2, "{out}");
    (v[0], v[1])
}

fn sum_stats(layers: &[CreditLayer<RedisLedger>]) -> BillingStats {
    let mut total = BillingStats::default();
    for s in layers.iter().map(CreditLayer::stats) {
        total.holds += s.holds;
        total.commits += s.commits;
        total.credits_committed += s.credits_committed;
        total.refunds += s.refunds;
        total.settle_retries += s.settle_retries;
        total.commits_lost += s.commits_lost;
        total.credits_lost += s.credits_lost;
        total.outages += s.outages;
        total.breaker_fast_failures += s.breaker_fast_failures;
        total.served_unbilled += s.served_unbilled;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_nothing_lost_nothing_charged_twice() {
    quiet_expected_panics();
    let started = Instant::now();
    let scale = scale();
    let seed = seed();
    let _seed_guard = SeedGuard { seed, scale };
    eprintln!("chaos: seed {seed}, scale {scale} (replay with CHAOS_SEED={seed})");
    let mut rng = Rng::new(seed);

    let server = RedisServer::start_with(RedisOptions::aof_always());
    let clock = ManualClock::new();
    // The same closed-id grace as the replicas (call timeout + 1 s + the audit's), so every
    // `done` score means the same thing.
    // It makes the accounts, in fields (the second replica packs them as it bills them).
    let patient = RedisLedger::builder()
        .url(server.url())
        .pack_accounts(false)
        .call_timeout(Duration::from_secs(5))
        .extra_closed_grace(AUDIT_GRACE + CALL_TIMEOUT - Duration::from_secs(5))
        .test_clock(clock.clone())
        .build()
        .await
        .unwrap();

    // Accounts: every third may overdraw by 100 credits.
    let mut keys = Vec::new();
    let mut credit_limits = HashMap::new();
    for i in 0..ACCOUNTS * scale {
        let (name, key) = (format!("acct_c{i}"), format!("key-c{i}"));
        let account = account(&patient, &name, &key, SEED_CREDITS).await;
        let limit = if i % 3 == 0 { 100 } else { 0 };
        patient
            .configure(Configure::new(
                &account,
                AccountSettings::new().credit_limit(limit),
            ))
            .await
            .unwrap();
        credit_limits.insert(account.clone(), limit);
        keys.push((account, key));
    }

    // Three replicas, each its own ledger, layer and axum server; the first also serves gRPC.
    let (tick, tick_rx) = tokio::sync::watch::channel(0u64);
    let hooks = Hooks {
        log: Log::default(),
        tick: tick_rx,
        blocked: Arc::default(),
    };
    let mut layers = Vec::new();
    let mut servers = Vec::new();
    let mut ledgers = Vec::new();
    // The second replica packs accounts (`pack_accounts`), the others do not: the accounts,
    // made in fields, are moved to `v` by its first write to each, in the middle of the
    // run, and kept packed by every replica after.
    for replica in 0..REPLICAS {
        let ledger = RedisLedger::builder()
            .url(server.url())
            .call_timeout(CALL_TIMEOUT)
            .extra_closed_grace(AUDIT_GRACE)
            .test_clock(clock.clone())
            .pack_accounts(replica == 1)
            .build()
            .await
            .unwrap();
        let layer = CreditLayer::new(ledger.clone())
            .pricing(pricing(ROUTES))
            .hold_ttl(HOLD_TTL)
            .circuit_breaker(3, Duration::from_millis(200));
        let app = routes(hooks.clone())
            .layer(layer.clone())
            .layer(CatchPanicLayer::new());
        servers.push(Server::start(app).await);
        layers.push(layer);
        ledgers.push(ledger);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = listener.local_addr().unwrap();
    // The same ledger, billing the tonic server as gRPC: a layer reconfigured from a clone
    // has its own keeper, breaker and counters, so it is summed and drained as a fourth.
    let grpc_layer = layers[0].clone().protocol(Protocol::Grpc);
    layers.push(grpc_layer.clone());
    let log = hooks.log.clone();
    let grpc_server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(grpc_layer)
            .layer(tower::layer::layer_fn(move |inner| Record {
                inner,
                log: log.clone(),
            }))
            .add_service(EchoServer)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let env = Arc::new(Env {
        urls: servers.iter().map(|s| s.url("")).collect(),
        grpc: format!("http://{grpc_addr}"),
        grpc_addr,
        streams: Mutex::default(),
        keys: keys.clone(),
        ledgers: ledgers.clone(),
        hooks: hooks.clone(),
        top_ups: Mutex::default(),
        tags: AtomicU64::new(0),
    });
    // Warm every replica's key cache (a key lookup needs the ledger too).
    let warm = http2();
    for url in &env.urls {
        for (_, key) in &keys {
            let answer = bounded(
                "a warm-up",
                send(&warm, &format!("{url}/v1/ok?cost=1"), key),
            )
            .await;
            assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        }
    }
    let warm_credits = (env.urls.len() * keys.len()) as u64;

    // The run.
    let permits = Arc::new(Semaphore::new(0));
    let workers: Vec<_> = (0..WORKERS * scale)
        .map(|w| {
            let rng = Rng::new(seed ^ (w as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
            tokio::spawn(worker(env.clone(), permits.clone(), rng))
        })
        .collect();
    let faults = schedule(&mut rng);
    let pacer = Pacer {
        permits,
        per_tick: (RATE_PER_SEC * scale / 100).max(1),
        tick,
    };
    let (server, injected) = drive(server, &faults, pacer, &mut rng).await;
    let run_time = started.elapsed();
    let mut tally = Tally::default();
    for w in workers {
        tally.merge(w.await.expect("a worker failed"));
    }

    // Settle everything: drain, replay the top-ups that never got an answer (a payment
    // provider retries until it hears back), check holds against `held`, then move past
    // every ttl and sweep.
    for layer in &layers {
        assert!(
            layer.pending_settlements().drain(DEADLINE).await,
            "pending settles did not drain"
        );
    }
    let (all_keys, mut confirmed, top_up_stats) = {
        let t = env.top_ups.lock().unwrap();
        (
            t.all.clone(),
            t.confirmed.clone(),
            (t.calls, t.replays, t.failed),
        )
    };
    // The checker's connection died with a kill: it reconnects on its first failed call.
    wait_for_async("the checking ledger to reconnect", DEADLINE, || async {
        patient.balance(&keys[0].0).await.ok()
    })
    .await;
    let confirmed_in_run = confirmed.len();
    let mut replayed_at_the_end = 0;
    let mut ran_unanswered = 0;
    for (key, (account, amount)) in &all_keys {
        if !confirmed.contains_key(key) {
            let done = patient
                .top_up(TopUp::new(account, *amount, key))
                .await
                .unwrap();
            replayed_at_the_end += 1;
            if done.replayed {
                ran_unanswered += 1;
            }
            confirmed.insert(key.clone(), *amount);
        }
    }
    for (account, _) in &keys {
        let (held, open) = held_and_open_holds(&server, account);
        assert_eq!(held, open, "{account}: held is the sum of its open holds");
    }
    clock.advance(Duration::from_secs(60));
    // Redis was killed and paused under load: a due-index entry written right after its
    // script may have been lost with the connection. The full repair pass enters every
    // account with open holds again (what the sweeper's slow repair pass does by steps).
    patient.repair_due_index().await.unwrap();
    let mut swept = 0;
    loop {
        let n = patient.sweep_expired().await.unwrap();
        swept += n;
        if n == 0 {
            break;
        }
    }

    // Per account: the raw hash (before any call that could reclaim), then `balance()`.
    let seen = hooks.log.0.lock().unwrap().clone();
    let mut ledger_committed = 0u64;
    let mut committed_holds = 0u64;
    let mut expired_commit_holds = 0u64;
    let mut expired_commit_credits = 0u64;
    let mut failed_but_charged = 0u64;
    let mut charged_twice = 0i64;
    let mut lowest_available = i64::MAX;
    // Credits of commits the ledger made just before a kill longer than the hold ttl.
    let mut committed_at_a_long_kill = 0u64;
    // The abandoned streams: how the ledger closed each hold, and per method what the
    // ledger's usage hash says it committed vs what the closed `Charge`s say.
    let mut stream_closed: HashMap<String, String> = HashMap::new();
    let stream_methods = [echo::COUNT, echo::CHAT, echo::UPLOAD];
    let mut usage_by_method: BTreeMap<&str, u64> = BTreeMap::new();
    let mut metered_by_method: BTreeMap<&str, u64> = BTreeMap::new();
    let mut packed_accounts = 0;
    for (account, _) in &keys {
        let books = server.books(account.as_str());
        let (topped_up, committed, held) = (books.topped_up, books.committed, books.held);
        packed_accounts += u64::from(books.packed);
        let available = topped_up - committed - held;
        assert_eq!(held, 0, "{account}: nothing held at the end");
        let holds = format!("credits:{{{account}}}:holds");
        assert_eq!(
            server.cli(&["HLEN", &holds]),
            "0",
            "{account}: no open hold"
        );
        lowest_available = lowest_available.min(available);
        assert!(
            available >= -(credit_limits[account] as i64),
            "{account}: available {available} below -{}",
            credit_limits[account]
        );
        let expected_top_ups = SEED_CREDITS
            + confirmed
                .iter()
                .filter(|(k, _)| &all_keys[*k].0 == account)
                .map(|(_, amount)| amount)
                .sum::<u64>();
        assert_eq!(
            topped_up as u64, expected_top_ups,
            "{account}: every distinct top-up key credited once"
        );
        let b = patient.balance(account).await.unwrap();
        assert_eq!(
            (
                b.available,
                b.held as i64,
                b.committed as i64,
                b.topped_up as i64
            ),
            (available, held, committed, topped_up),
            "{account}: balance() agrees with the raw hash"
        );
        assert_balanced(&b);

        // Every hold a handler saw, against how the ledger closed it.
        // `done` scores are forget time (ms) * 4 + how (1 committed, 2 refunded, 3 expired);
        // the forget time is the later of the close and the hold's expiry, plus the grace.
        let done = zset(&server, &format!("credits:{{{account}}}:done"));
        let closed: BTreeMap<&str, String> = done
            .iter()
            .map(|(id, score)| {
                let how = ["", "committed", "refunded", "expired"][(score % 4) as usize];
                (id.as_str(), how.to_owned())
            })
            .collect();
        let grace_ms = (CALL_TIMEOUT + Duration::from_secs(1) + AUDIT_GRACE).as_millis() as u64;
        // Between the close and a hold TTL after it.
        let closed_by: HashMap<&str, u64> = done
            .iter()
            .map(|(id, score)| (id.as_str(), score / 4 - grace_ms))
            .collect();
        let mut mine: HashMap<&str, Intent> = HashMap::new();
        let mut committed_here = 0u64;
        for s in seen.iter().filter(|s| &s.account == account) {
            // An abandoned stream commits its `Charge` as it was closed, clamped to the hold.
            let intent = match (s.intent, &s.call) {
                (Intent::Metered, Some((_, method, charge))) => {
                    assert!(
                        charge.actual().is_some(),
                        "{account}: stream hold {} was never metered",
                        s.hold
                    );
                    let how = closed.get(s.hold.as_str()).map(String::as_str);
                    if how == Some("committed") {
                        let m = stream_methods
                            .iter()
                            .find(|m| **m == method.as_str())
                            .expect("a streaming method");
                        *metered_by_method.entry(m).or_default() += charge.cost();
                    }
                    Intent::Commit(charge.cost())
                }
                (intent, _) => intent,
            };
            mine.insert(s.hold.as_str(), intent);
            let how = closed
                .get(s.hold.as_str())
                .unwrap_or_else(|| panic!("{account}: hold {} not closed ({s:?})", s.hold));
            if s.call.is_some() {
                stream_closed.insert(s.hold.to_string(), how.clone());
            }
            match (intent, how.as_str()) {
                (Intent::Commit(c), "committed") => {
                    committed_here += c;
                    committed_holds += 1;
                    // Closed at most a TTL before `at` (the forget time says no more).
                    let at = closed_by[s.hold.as_str()];
                    let ttl_ms = HOLD_TTL.as_millis() as u64;
                    if injected
                        .long_kills_at_ms
                        .iter()
                        .any(|&kill| at <= kill + 50 + ttl_ms && at + KILL_WINDOW_MS >= kill)
                    {
                        committed_at_a_long_kill += c;
                    }
                }
                (Intent::Commit(c), "expired") => {
                    expired_commit_holds += 1;
                    expired_commit_credits += c;
                }
                (Intent::Refund, "refunded" | "expired") => {}
                (Intent::Refund, "committed") => failed_but_charged += 1,
                (intent, how) => {
                    panic!(
                        "{account}: hold {} meant {intent:?}, closed {how} ({s:?})",
                        s.hold
                    )
                }
            }
        }
        // Holds no handler saw (a reserve whose reply was lost, refunded in the background)
        // never commit.
        for (id, how) in &closed {
            if !mine.contains_key(*id) {
                assert_ne!(how, "committed", "{account}: unseen hold {id} committed");
            }
        }
        charged_twice += committed - committed_here as i64;
        ledger_committed += committed as u64;
        // The ledger's own record, by route, of what it committed on the streaming methods.
        let usage = hash(&server, &format!("credits:{{{account}}}:usage"));
        for (field, value) in &usage {
            if let Some(m) = stream_methods
                .iter()
                .find(|m| field.starts_with("credits:") && field.ends_with(**m))
            {
                *usage_by_method.entry(m).or_default() += value.parse::<u64>().unwrap();
            }
        }
    }
    // The packing replica billed accounts made in fields: they were moved to `v` mid-run.
    assert!(
        packed_accounts > 0,
        "no account was packed by the packing replica"
    );

    // The abandoned streams, call by call: each has its hold, was charged what the client
    // can account for and at most its hold; one that ran while Redis was healthy (no fault
    // from a second before it began to half a second after the client abandoned it) was
    // committed.
    let streams = env.streams.lock().unwrap().clone();
    let by_call: HashMap<u64, &Seen> = seen
        .iter()
        .filter_map(|s| s.call.as_ref().map(|c| (c.0, s)))
        .collect();
    assert_eq!(
        by_call.len(),
        streams.len(),
        "every stream hold the handlers saw is one the client abandoned"
    );
    #[derive(Default)]
    struct StreamStats {
        calls: u64,
        committed: u64,
        credits: u64,
        past_the_hold: u64,
        expired: u64,
        healthy: u64,
    }
    let mut stream_stats: BTreeMap<&str, StreamStats> = BTreeMap::new();
    let mut count_metered = 0u64;
    for call in &streams {
        let s = by_call
            .get(&call.id)
            .unwrap_or_else(|| panic!("stream call {call:?} has no hold"));
        let charge = &s.call.as_ref().unwrap().2;
        let (actual, cost) = (charge.actual().unwrap(), charge.cost());
        assert!(
            call.lo <= cost && cost <= call.hi && cost <= charge.reserved(),
            "stream {call:?}: charged {cost} (metered {actual}, hold {})",
            charge.reserved()
        );
        if call.method == echo::COUNT {
            count_metered += cost;
        }
        let how = &stream_closed[s.hold.as_str()];
        let healthy = injected
            .windows
            .iter()
            .all(|&(from, to)| call.ended_ms + 500 < from || call.started_ms > to + 1000);
        let st = stream_stats.entry(call.method).or_default();
        st.calls += 1;
        if actual > charge.reserved() {
            st.past_the_hold += 1;
        }
        match how.as_str() {
            "committed" => {
                st.committed += 1;
                st.credits += cost;
            }
            "expired" => st.expired += 1,
            how => panic!("stream {call:?} (hold {}) closed {how}", s.hold),
        }
        if healthy {
            st.healthy += 1;
            assert_eq!(
                how, "committed",
                "stream {call:?} (hold {}) abandoned while Redis was healthy",
                s.hold
            );
        }
    }

    let stats = sum_stats(&layers);
    let total: u64 = tally.outcomes.values().sum();
    let mut summary = String::new();
    let line = |s: &mut String, text: String| {
        s.push_str("  ");
        s.push_str(&text);
        s.push('\n');
    };
    summary.push_str(&format!(
        "chaos summary: seed {seed}, scale {scale}, {} accounts, {REPLICAS} replicas + gRPC, \
         hold ttl {HOLD_TTL:?}, call timeout {CALL_TIMEOUT:?}, run {run_time:.1?}, total {:.1?}\n",
        keys.len(),
        started.elapsed()
    ));
    line(
        &mut summary,
        format!("operations: {total} (+{} warm-up requests)", warm_credits),
    );
    for (outcome, n) in &tally.outcomes {
        line(&mut summary, format!("  {n:>6}  {outcome}"));
    }
    line(
        &mut summary,
        format!(
            "faults injected: {} ({} kills, {} of them down past the hold ttl; {} restarts; \
             {} pauses, SIGSTOP past the call deadline then SIGCONT): {faults:?}",
            faults.len(),
            injected.kills,
            injected.long_kills_at_ms.len(),
            injected.restarts,
            injected.pauses
        ),
    );
    line(
        &mut summary,
        format!(
            "top-ups: {} keys, {} calls ({} answered as replays), {} failed during faults; \
             {} keys confirmed during the run, {} replayed at the end ({} of which had run \
             unanswered); each key credited once",
            all_keys.len(),
            top_up_stats.0,
            top_up_stats.1,
            top_up_stats.2,
            confirmed_in_run,
            replayed_at_the_end,
            ran_unanswered
        ),
    );
    line(
        &mut summary,
        format!(
            "layers: {} holds, {} commits confirmed ({} credits), {} refunds, {} settle \
             retries, {} outages ({} breaker fast failures)",
            stats.holds,
            stats.commits,
            stats.credits_committed,
            stats.refunds,
            stats.settle_retries,
            stats.outages,
            stats.breaker_fast_failures
        ),
    );
    line(
        &mut summary,
        format!(
            "ledger: {ledger_committed} credits committed over {committed_holds} holds; \
             {expired_commit_holds} holds of successful requests expired ({expired_commit_credits} \
             credits); {swept} expired holds swept"
        ),
    );
    line(
        &mut summary,
        format!(
            "unbilled revenue (credits_lost): {} credits over {} lost commits",
            stats.credits_lost, stats.commits_lost
        ),
    );
    line(
        &mut summary,
        format!(
            "charged twice: {charged_twice} | failed requests charged: {failed_but_charged} | \
             held at the end: 0 | conservation: ok on {} accounts | lowest available at the \
             end: {lowest_available} (credit limits 0 or 100)",
            keys.len()
        ),
    );
    line(
        &mut summary,
        format!(
            "ledger committed vs layers confirmed: {ledger_committed} vs {} credits{}",
            stats.credits_committed,
            match ledger_committed as i64 - stats.credits_committed as i64 {
                0 => " (equal)".to_owned(),
                d => format!(
                    " (difference {d}: a commit ran as Redis was killed past the hold ttl, its \
                     reply lost and no later try answered in time; at most \
                     {committed_at_a_long_kill} credits closed right before such a kill)"
                ),
            }
        ),
    );
    let mut healthy_streams = 0;
    for m in stream_methods {
        let st = stream_stats.remove(m).unwrap_or_default();
        healthy_streams += st.healthy;
        line(
            &mut summary,
            format!(
                "abandoned {m} streams: {} ({} while Redis was healthy, all committed at most \
                 the hold); {} committed ({} credits, {} by the ledger's usage), {} metered \
                 past the hold (committed the hold), {} expired under faults",
                st.calls,
                st.healthy,
                st.committed,
                st.credits,
                usage_by_method.get(m).copied().unwrap_or(0),
                st.past_the_hold,
                st.expired
            ),
        );
    }
    println!("{summary}");

    // The ledger's usage on the streaming routes is what their closed charges said.
    for m in stream_methods {
        assert_eq!(
            usage_by_method.get(m).copied().unwrap_or(0),
            metered_by_method.get(m).copied().unwrap_or(0),
            "{m}: ledger usage vs committed stream charges\n{summary}"
        );
    }
    assert!(
        healthy_streams > 0,
        "no stream was abandoned while Redis was healthy\n{summary}"
    );

    assert_eq!(charged_twice, 0, "{summary}");
    assert_eq!(failed_but_charged, 0, "{summary}");
    // What the clients were told was charged (or, for the dropped Count streams, what
    // their handlers metered), every commit decision the layers made.
    assert_eq!(
        tally.told + warm_credits + count_metered,
        stats.credits_committed + stats.credits_lost,
        "{summary}"
    );
    // Every commit decision is either confirmed or lost on the layers' side, and either
    // committed or expired on the ledger's.
    assert_eq!(
        ledger_committed + expired_commit_credits,
        stats.credits_committed + stats.credits_lost,
        "{summary}"
    );
    // The layers never report a commit the ledger does not have...
    assert!(stats.credits_committed <= ledger_committed, "{summary}");
    // ...and the ledger has none the layers did not see confirmed, but for a commit that
    // ran just as Redis was killed for longer than the hold ttl: its reply died with the
    // server and no later try was answered before the ttl, so the layer counts it lost.
    // Such a commit closed right before a long kill: that bounds the difference.
    let residual = ledger_committed - stats.credits_committed;
    assert!(
        residual <= committed_at_a_long_kill,
        "the ledger committed {residual} credits the layers did not see confirmed, more \
         than the {committed_at_a_long_kill} credits committed right before a long kill\n{summary}"
    );
    if injected.long_kills_at_ms.is_empty() {
        assert_eq!(residual, 0, "{summary}");
    }

    grpc_server.abort();
    drop(servers);
    let _ = &server;
}
