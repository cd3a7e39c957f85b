//! Holds are renewed every half TTL while the handler runs and while a deferred body
//! streams, so a long request never loses its hold. Time is virtual: tokio's clock is
//! paused and the ledger's clock is a `ManualClock` moved in step with it.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::{mpsc, oneshot};
use tower::{Layer, ServiceExt};
use tower_credits::clock::ManualClock;
use tower_credits::pricing::Pricing;
use tower_credits::{AccountId, ApiKeyHash, Charge, CreditLayer, MemoryLedger};
use tower_credits::{LedgerAdmin, LedgerReports, TopUp};

const TTL: Duration = Duration::from_secs(10);

async fn setup() -> (MemoryLedger, ManualClock, AccountId) {
    let clock = ManualClock::new();
    let ledger = MemoryLedger::builder().clock(clock.clone()).build();
    let acct = AccountId::new("acct_long").unwrap();
    ledger.top_up(TopUp::new(&acct, 100, "seed")).await.unwrap();
    ledger
        .register_api_key(&ApiKeyHash::of("key-long"), &acct)
        .await
        .unwrap();
    (ledger, clock, acct)
}

fn request() -> Request<Full<Bytes>> {
    Request::get("/long")
        .header("authorization", "Bearer key-long")
        .body(Full::default())
        .unwrap()
}

/// Moves both clocks forward by `by`, letting the renewal timers fire.
async fn elapse(clock: &ManualClock, by: Duration) {
    for _ in 0..4 {
        clock.advance(by / 4);
        tokio::time::advance(by / 4).await;
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_long_handler_keeps_its_hold() {
    let (ledger, clock, acct) = setup().await;
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let finish_rx = std::sync::Arc::new(std::sync::Mutex::new(Some(finish_rx)));
    let svc = CreditLayer::new(ledger.clone())
        .pricing(Pricing::new().route("/long", 30))
        .hold_ttl(TTL)
        .layer(tower::service_fn(move |_req: Request<Full<Bytes>>| {
            let finish = finish_rx.lock().unwrap().take().unwrap();
            async move {
                let _ = finish.await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
            }
        }));
    let call = tokio::spawn(svc.oneshot(request()));
    // Five TTLs pass while the handler runs.
    for _ in 0..10 {
        elapse(&clock, TTL / 2).await;
        assert_eq!(ledger.balance(&acct).await.unwrap().held, 30, "hold lost");
    }
    finish_tx.send(()).unwrap();
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.headers()["credits-cost"], "30");
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (70, 0, 30));
}

#[tokio::test(start_paused = true)]
async fn a_long_deferred_stream_keeps_its_hold() {
    let (ledger, clock, acct) = setup().await;
    let (chunks_tx, chunks_rx) = mpsc::channel::<Bytes>(4);
    let chunks_rx = std::sync::Arc::new(std::sync::Mutex::new(Some(chunks_rx)));
    let svc = CreditLayer::new(ledger.clone())
        .pricing(Pricing::new().route("/long", 30))
        .hold_ttl(TTL)
        .layer(tower::service_fn(move |req: Request<Full<Bytes>>| {
            let charge = req.extensions().get::<Charge>().unwrap().clone();
            charge.defer();
            let rx = chunks_rx.lock().unwrap().take().unwrap();
            let stream = futures_util::stream::unfold(rx, move |mut rx| {
                let charge = charge.clone();
                async move {
                    let chunk = rx.recv().await?;
                    charge.add(1).unwrap();
                    Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
                }
            });
            async move { Ok::<_, Infallible>(Response::new(StreamBody::new(stream))) }
        }));
    let response = svc.oneshot(request()).await.unwrap();
    let reader = tokio::spawn(async move { response.into_body().collect().await.unwrap() });
    for i in 0..10 {
        chunks_tx.send(Bytes::from(format!("{i};"))).await.unwrap();
        elapse(&clock, TTL / 2).await;
        assert_eq!(ledger.balance(&acct).await.unwrap().held, 30, "hold lost");
    }
    drop(chunks_tx);
    let collected = reader.await.unwrap();
    assert_eq!(collected.trailers().unwrap()["credits-cost"], "10");
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (90, 0, 10));
}

/// A reader slower than the hold's TTL, but within the stall timeout, keeps its hold.
#[tokio::test(start_paused = true)]
async fn a_slow_reader_within_the_stall_timeout_does_not_lose_the_hold() {
    let (ledger, clock, acct) = setup().await;
    let svc = CreditLayer::new(ledger.clone())
        .pricing(Pricing::new().route("/long", 30))
        .hold_ttl(TTL)
        .stall_timeout(TTL * 10)
        .layer(tower::service_fn(move |req: Request<Full<Bytes>>| {
            let charge = req.extensions().get::<Charge>().unwrap().clone();
            charge.defer();
            charge.set(7).unwrap();
            async move {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"slowly read"))))
            }
        }));
    let response = svc.oneshot(request()).await.unwrap();
    // Nobody polls the body for three TTLs (a caller that reads slowly).
    for _ in 0..6 {
        elapse(&clock, TTL / 2).await;
        assert_eq!(ledger.balance(&acct).await.unwrap().held, 30, "hold lost");
    }
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["credits-cost"], "7");
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (93, 0, 7));
}

/// A reader that stops reading for the stall timeout (default: half the TTL) is committed
/// at what its `Charge` says, before the hold can expire, and its body ends in an error.
#[tokio::test(start_paused = true)]
async fn a_stalled_reader_is_committed_before_its_hold_expires() {
    let (ledger, clock, acct) = setup().await;
    let svc = CreditLayer::new(ledger.clone())
        .pricing(Pricing::new().route("/long", 30))
        .hold_ttl(TTL)
        .layer(tower::service_fn(move |req: Request<Full<Bytes>>| {
            let charge = req.extensions().get::<Charge>().unwrap().clone();
            charge.defer();
            charge.set(7).unwrap();
            async move {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"never read"))))
            }
        }));
    let response = svc.oneshot(request()).await.unwrap();
    assert_eq!(ledger.balance(&acct).await.unwrap().held, 30);
    // Less than the TTL later: committed, though the hold would still have been alive.
    elapse(&clock, TTL * 3 / 4).await;
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (93, 0, 7));
    let error = response.into_body().collect().await.unwrap_err();
    assert!(
        error
            .downcast_ref::<tower_credits::ReaderStalled>()
            .is_some(),
        "{error}"
    );
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (93, 0, 7));
}
