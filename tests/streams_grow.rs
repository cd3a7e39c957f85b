//! Streams that grow their hold (`StreamLimit::Grow`) while the account affords it, on the
//! in-memory ledger, a Redis server and a Redis Cluster: every delivered event is paid,
//! no account goes below zero however many streams grow at once, a stream that never
//! grows costs no extra ledger call, and each growth is one.
//!
//! Adversarial twins: a handler that ignores `HoldExceeded` once its account is spent is
//! still cut; a client that hangs up mid-stream pays for what was produced, not the hold.

mod http_support;
#[macro_use]
mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::response::sse::{Event, Sse};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::stream::{self, Stream};
use http::Request;
use http_body_util::{BodyExt, Full};
use http_support::sse::{data_and_credits, metered_sse};
use http_support::{account, http1, http2, send, Server};
use support::rig::{assert_conserved, wait_until};
use tower_credits::ledger::{
    Extend, Extended, Grow, GrowOutcome, Reserve, ReserveOutcome, Settle, Settlement,
};
use tower_credits::pricing::Pricing;
use tower_credits::{
    AccountId, ApiKeyHash, Charge, CreditLayer, Ledger, LedgerAdmin, LedgerReports, MemoryLedger,
    StreamLimit,
};

/// What each growth adds, and the route's first hold.
const STEP: u64 = 20;

/// A ledger wrapper that counts the grows the layer asks for.
#[derive(Clone)]
struct CountGrows<L> {
    inner: L,
    grows: Arc<AtomicU64>,
}

impl<L: Ledger> Ledger for CountGrows<L> {
    type Future<T: Send + 'static> = L::Future<T>;

    fn reserve(&self, reserve: Reserve) -> Self::Future<ReserveOutcome> {
        self.inner.reserve(reserve)
    }
    fn settle(&self, settle: Settle) -> Self::Future<Settlement> {
        self.inner.settle(settle)
    }
    fn extend(&self, extend: Extend) -> Self::Future<Extended> {
        self.inner.extend(extend)
    }
    fn grow(&self, grow: Grow) -> Self::Future<GrowOutcome> {
        self.grows.fetch_add(1, Ordering::SeqCst);
        self.inner.grow(grow)
    }
    fn store_response(&self, store: tower_credits::ledger::StoreResponse) -> Self::Future<bool> {
        self.inner.store_response(store)
    }
    fn lookup_api_key(&self, key: &ApiKeyHash) -> Self::Future<Option<AccountId>> {
        self.inner.lookup_api_key(key)
    }
}

/// Events produced one per permit the test hands out, each metered 1 credit.
async fn paced(
    charge: Charge,
    axum::Extension(permits): axum::Extension<Arc<tokio::sync::Semaphore>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    charge.defer();
    let events = stream::unfold((charge, permits, 0u64), |(charge, permits, i)| async move {
        permits.acquire().await.ok()?.forget();
        charge.add(1).ok()?;
        let event = Ok(Event::default().data(format!("{{\"i\":{i}}}")));
        Some((event, (charge, permits, i + 1)))
    });
    Sse::new(events)
}

struct App {
    server: Server,
    grows: Arc<AtomicU64>,
    permits: Arc<tokio::sync::Semaphore>,
}

async fn app<L: Ledger>(ledger: L) -> App {
    let grows = Arc::new(AtomicU64::new(0));
    let counted = CountGrows {
        inner: ledger,
        grows: grows.clone(),
    };
    let layer = CreditLayer::new(counted).pricing(
        Pricing::new()
            .route("GET /v1/stream", STEP)
            .stream_limit(StreamLimit::grow(STEP))
            .route("GET /v1/paced", STEP)
            .stream_limit(StreamLimit::grow(STEP))
            .route("GET /v1/fixed", STEP),
    );
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let router = Router::new()
        .route("/v1/stream", get(metered_sse))
        .route("/v1/fixed", get(metered_sse))
        .route("/v1/paced", get(paced))
        .layer(layer)
        .layer(axum::Extension(permits.clone()));
    App {
        server: Server::start(router).await,
        grows,
        permits,
    }
}

fn get_req(url: &str, key: &str) -> Request<Full<Bytes>> {
    Request::get(url)
        .header("authorization", format!("Bearer {key}"))
        .body(Full::default())
        .unwrap()
}

/// A stream longer than its first hold grows it step by step and delivers all of it,
/// paid; it ends with its cost and no stop. A stream within its first hold makes no grow
/// call, and a route that does not grow is cut at its hold, as before.
async fn a_growing_stream_delivers_what_it_pays_for<L: Ledger + LedgerAdmin + LedgerReports>(
    ledger: L,
) {
    let acct = account(&ledger, "acct_grow", "key-grow", 1_000).await;
    let app = app(ledger.clone()).await;

    let short = send(
        &http1(),
        get_req(&app.server.url("/v1/stream?n=5"), "key-grow"),
    )
    .await;
    let (data, credits) = data_and_credits(&short.body);
    assert_eq!(data.len(), 5);
    assert_eq!(credits["cost"], 5, "{credits}");
    assert_eq!(
        app.grows.load(Ordering::SeqCst),
        0,
        "no growth within the hold"
    );

    let long = send(
        &http2(),
        get_req(&app.server.url("/v1/stream?n=50"), "key-grow"),
    )
    .await;
    let (data, credits) = data_and_credits(&long.body);
    assert_eq!(data.len(), 50, "every event delivered");
    assert_eq!(credits["cost"], 50, "{credits}");
    assert_eq!(credits["remaining"], 1_000 - 5 - 50, "{credits}");
    assert_eq!(credits.get("stop"), None, "{credits}");
    // Grown whenever the hold was spent before the next event: after events 20 and 40,
    // to 60 in all.
    assert_eq!(credits["reserved"], 60, "{credits}");
    assert_eq!(app.grows.load(Ordering::SeqCst), 2, "one grow per step");

    let fixed = send(
        &http1(),
        get_req(&app.server.url("/v1/fixed?n=50"), "key-grow"),
    )
    .await;
    let (data, credits) = data_and_credits(&fixed.body);
    assert_eq!(
        data.len(),
        STEP as usize,
        "a route that does not grow ends at its hold"
    );
    assert_eq!(credits["stop"], "hold-exhausted", "{credits}");
    assert_eq!(app.grows.load(Ordering::SeqCst), 2);

    let b = assert_conserved(&ledger, &acct).await;
    assert_eq!((b.committed, b.held), (5 + 50 + STEP, 0));
}

/// Adversarial twin: an account with 30 credits asks for 50 events. The stream grows by
/// what is left (10), delivers exactly 30, ends with `"stop":"hold-exhausted"` and is
/// charged 30, whether its handler stops by itself or ignores the refusals.
async fn a_stream_stops_when_its_account_runs_out<L: Ledger + LedgerAdmin + LedgerReports>(
    ledger: L,
) {
    for polite in [true, false] {
        let name = format!("acct_poor_{polite}");
        let key = format!("key-poor-{polite}");
        let acct = account(&ledger, &name, &key, 30).await;
        let app = app(ledger.clone()).await;
        let url = app.server.url(&format!("/v1/stream?n=50&polite={polite}"));
        let answer = send(&http1(), get_req(&url, &key)).await;
        assert_eq!(answer.status, 200);
        let (data, credits) = data_and_credits(&answer.body);
        assert_eq!(
            data.len(),
            30,
            "polite={polite}: every delivered event is paid"
        );
        assert_eq!(credits["stop"], "hold-exhausted", "{credits}");
        assert_eq!(
            (credits["cost"].as_u64(), credits["remaining"].as_i64()),
            (Some(30), Some(0)),
            "{credits}"
        );
        let b = assert_conserved(&ledger, &acct).await;
        assert_eq!(
            (b.committed, b.available, b.held),
            (30, 0, 0),
            "polite={polite}"
        );
    }
}

/// 16 streams of one account grow at once, together wanting far more than it has: none
/// overspends, every delivered event is paid (each stream's cost is its event count),
/// and what the account paid is what all the streams delivered.
async fn sixteen_growing_streams_never_overspend<L: Ledger + LedgerAdmin + LedgerReports>(
    ledger: L,
) {
    const CREDITS: u64 = 500;
    let acct = account(&ledger, "acct_race", "key-race", CREDITS).await;
    let app = app(ledger.clone()).await;
    let client = http2();
    let url = app.server.url("/v1/stream?n=100");
    let streams = (0..16).map(|_| {
        let (client, req) = (client.clone(), get_req(&url, "key-race"));
        async move { send(&client, req).await }
    });
    let answers = futures_util::future::join_all(streams).await;
    let mut delivered = 0;
    for answer in &answers {
        if answer.status == 402 {
            continue; // refused up front: the account had less than a first hold left
        }
        assert_eq!(answer.status, 200);
        let (data, credits) = data_and_credits(&answer.body);
        assert_eq!(credits["cost"], data.len() as u64, "{credits}");
        delivered += data.len() as u64;
    }
    let b = assert_conserved(&ledger, &acct).await;
    assert_eq!(b.held, 0);
    assert!(b.available >= 0, "overspent: {b:?}");
    assert_eq!(
        b.committed, delivered,
        "paid for exactly what was delivered"
    );
    assert!(delivered > 0);
}

/// Adversarial twin: a client that hangs up mid-stream is charged what the handler
/// produced before it left, not the (grown) hold.
async fn a_client_that_hangs_up_pays_what_was_produced<L: Ledger + LedgerAdmin + LedgerReports>(
    ledger: L,
) {
    let acct = account(&ledger, "acct_gone", "key-gone", 1_000).await;
    let app = app(ledger.clone()).await;
    let client = http2();
    let response = client
        .request(get_req(&app.server.url("/v1/paced"), "key-gone"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // 25 events: past the first hold, so the hold grew once.
    app.permits.add_permits(25);
    let mut body = response.into_body();
    let mut read = Vec::new();
    while data_and_credits(&read).0.len() < 25 {
        let frame = body.frame().await.expect("more events").unwrap();
        if let Ok(data) = frame.into_data() {
            read.extend_from_slice(&data);
        }
    }
    drop(body);
    wait_until("the hung-up stream settles", || async {
        ledger.balance(&acct).await.unwrap().held == 0
    })
    .await;
    let b = assert_conserved(&ledger, &acct).await;
    assert_eq!(b.committed, 25, "charged what was produced: {b:?}");
    assert_eq!(
        app.grows.load(Ordering::SeqCst),
        1,
        "grown once, at event 20"
    );
}

on_every_ledger!(
    a_growing_stream_delivers_what_it_pays_for,
    a_stream_stops_when_its_account_runs_out,
    sixteen_growing_streams_never_overspend,
    a_client_that_hangs_up_pays_what_was_produced,
);

/// `Charge::grow` from a handler: granted while the account affords it (the refusal
/// before it no longer counts against the stream), refused with the figures after.
#[tokio::test]
async fn a_handler_grows_its_own_hold() {
    async fn handler(charge: Charge) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        charge.defer();
        let events = stream::unfold((charge, 0u64), |(charge, i)| async move {
            if charge.add(5).is_err() {
                // Out of hold: ask for room for this event, once.
                charge.grow(5).await.ok()?;
                charge.add(5).ok()?;
            }
            Some((Ok(Event::default().data(format!("{i}"))), (charge, i + 1)))
        });
        Sse::new(events)
    }
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_self", "key-self", 32).await;
    let layer = CreditLayer::new(ledger.clone()).pricing(Pricing::new().route("GET /own", 10));
    let server = Server::start(Router::new().route("/own", get(handler)).layer(layer)).await;
    let answer = send(&http1(), get_req(&server.url("/own"), "key-self")).await;
    let (data, credits) = data_and_credits(&answer.body);
    // 10 held, grown by 5 four times (30), the fifth grow refused with 2 left.
    assert_eq!(data.len(), 6);
    assert_eq!(
        (credits["cost"].as_u64(), credits["reserved"].as_u64()),
        (Some(30), Some(30))
    );
    assert_eq!(credits["stop"], "hold-exhausted", "{credits}");
    let b = assert_conserved(&ledger, &acct).await;
    assert_eq!((b.committed, b.available, b.held), (30, 2, 0));
}

/// A `Charge` on a request served unbilled (fail-open, the ledger down) never grows: the
/// work stays bounded by the price.
#[tokio::test]
async fn an_unbilled_charge_never_grows() {
    async fn handler(charge: Charge) -> String {
        match charge.grow(5).await {
            Err(tower_credits::GrowError::Unbilled) => format!("unbilled {}", charge.reserved()),
            other => format!("unexpected {other:?}"),
        }
    }
    let layer = CreditLayer::new(http_support::DownLedger)
        .account_resolver(tower_credits::account::AccountResolver::trusted_header(
            "x-account",
        ))
        .on_outage(tower_credits::OutagePolicy::FailOpen)
        .pricing(Pricing::new().route("GET /own", 10));
    let server = Server::start(Router::new().route("/own", get(handler)).layer(layer)).await;
    let req = Request::get(server.url("/own"))
        .header("x-account", "acct_open")
        .body(Full::default())
        .unwrap();
    let answer = send(&http1(), req).await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], b"unbilled 10");
}
