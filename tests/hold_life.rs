//! A hold's life from reserve to settle, as the keeper's one watch per hold keeps it: the
//! stall clock runs only while a frame the server handed over is left unread, and the
//! lifetime cap has its own timer and settles like any other early end (the second review's
//! findings 1–3). Time is tokio's paused clock: the waits below are virtual, so the tests
//! are exact and take no wall-clock time.

mod http_support;
mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use http_support::{account, get_req};
use support::rig::{assert_conserved, pricing};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tower::{Layer, ServiceExt};
use tower_credits::{
    Charge, CreditLayer, HoldLifetimeExceeded, LedgerReports, MemoryLedger, ReaderStalled,
};

/// Sets a flag when dropped: the handler's future was cancelled.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Finding 1: a server with nothing to send for many stall timeouts, while the client keeps
/// reading, is not a stalled reader: the stream goes on and is billed for what it sent.
#[tokio::test(start_paused = true)]
async fn an_idle_server_is_not_a_stalled_reader() {
    const START: u64 = 1_000;
    const STALL: Duration = Duration::from_millis(100);
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_idle", "key-idle", START).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(&[("GET /v1/stream", 100)]))
        .hold_ttl(Duration::from_secs(3))
        .stall_timeout(STALL);
    let (tx, rx) = mpsc::channel::<u64>(1);
    let rx = Arc::new(parking_lot::Mutex::new(Some(rx)));
    let svc = layer.layer(tower::service_fn(move |req: Request<Full<Bytes>>| {
        let rx = rx.lock().take().expect("one request");
        async move {
            let charge = req.extensions().get::<Charge>().cloned().expect("billed");
            charge.defer();
            let chunks = ReceiverStream::new(rx).map(move |i| {
                charge.add(1).expect("open while streaming");
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk{i};"))))
            });
            Ok::<_, Infallible>(Response::new(StreamBody::new(chunks)))
        }
    }));

    let response = svc
        .oneshot(get_req("/v1/stream", Some("key-idle")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    tx.send(0).await.unwrap();
    let first = body.frame().await.expect("a frame").expect("no error");
    assert_eq!(first.into_data().unwrap(), "chunk0;");

    // The reader waits for the next frame; the server sends nothing for 20 stall timeouts.
    let reader = tokio::spawn(async move {
        let next = body
            .frame()
            .await
            .expect("a frame")
            .map(|f| f.into_data().ok());
        (body, next)
    });
    tokio::time::sleep(STALL * 20).await;
    tx.send(1).await.unwrap();
    let (mut body, next) = reader.await.unwrap();
    let next = next.unwrap_or_else(|e| panic!("an idle server's stream was cut: {e}"));
    assert_eq!(next.as_deref(), Some(&b"chunk1;"[..]));
    drop(tx);
    while let Some(frame) = body.frame().await {
        frame.expect("the stream ends cleanly");
    }
    let b = assert_conserved(&ledger, &acct).await;
    assert_eq!((b.committed, b.held), (2, 0), "billed what it sent: {b:?}");
    assert_eq!(layer.stats().commits, 1);
}

/// Finding 1, the other side: a frame handed over and left unread for the stall timeout is
/// a stalled reader: committed at what was metered, and the body ends with
/// [`ReaderStalled`].
#[tokio::test(start_paused = true)]
async fn a_frame_left_unread_is_a_stalled_reader() {
    const START: u64 = 1_000;
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_unread", "key-unread", START).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(&[("GET /v1/stream", 100)]))
        .hold_ttl(Duration::from_secs(3))
        .stall_timeout(Duration::from_millis(100));
    let svc = layer.layer(tower::service_fn(|req: Request<Full<Bytes>>| async move {
        let charge = req.extensions().get::<Charge>().cloned().expect("billed");
        charge.defer();
        let chunks = tokio_stream::iter(0..50).map(move |i| {
            charge.add(1).expect("open while streaming");
            Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk{i};"))))
        });
        Ok::<_, Infallible>(Response::new(StreamBody::new(chunks)))
    }));
    let response = svc
        .oneshot(get_req("/v1/stream", Some("key-unread")))
        .await
        .unwrap();
    let mut body = response.into_body();
    for _ in 0..3 {
        body.frame().await.expect("a frame").expect("no error");
    }
    // The reader stops reading: the keeper's stall clock runs from the third frame.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!(
        (b.committed, b.held),
        (3, 0),
        "committed what was sent: {b:?}"
    );
    let error = body
        .frame()
        .await
        .expect("says why it ended")
        .expect_err("a stalled body ends with an error");
    assert!(error.downcast_ref::<ReaderStalled>().is_some(), "{error:?}");
    assert_conserved(&ledger, &acct).await;
}

/// Findings 2 and 3: a client-streaming handler that metered 46 chunks and then never
/// answers is cut at the lifetime cap — on the cap's own timer, not at the next renewal
/// (a third of a minute away) — and committed the 46 it metered, not refunded.
#[tokio::test(start_paused = true)]
async fn the_lifetime_cap_fires_on_time_and_bills_what_was_metered() {
    const START: u64 = 1_000;
    const CAP: Duration = Duration::from_secs(5);
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_cap", "key-cap", START).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(&[("GET /v1/upload", 100)]))
        .hold_ttl(Duration::from_secs(60))
        .max_hold_lifetime(CAP);
    let dropped = Arc::new(AtomicBool::new(false));
    let svc = layer.layer(tower::service_fn({
        let dropped = dropped.clone();
        move |req: Request<Full<Bytes>>| {
            let flag = DropFlag(dropped.clone());
            async move {
                let _flag = flag;
                let charge = req.extensions().get::<Charge>().cloned().expect("billed");
                for _ in 0..46 {
                    charge.add(1).expect("open");
                }
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"never"))))
            }
        }
    }));

    let started = tokio::time::Instant::now();
    let response = svc
        .oneshot(get_req("/v1/upload", Some("key-cap")))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= CAP && took < CAP + Duration::from_secs(1),
        "the cap fired after {took:?} (virtual), not at {CAP:?}"
    );
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(dropped.load(Ordering::Acquire), "the handler was cancelled");
    let b = assert_conserved(&ledger, &acct).await;
    assert_eq!(
        (b.committed, b.held, b.available),
        (46, 0, (START - 46) as i64),
        "the metered work is billed: {b:?}"
    );
    let stats = layer.stats();
    assert_eq!((stats.commits, stats.refunds), (1, 0), "{stats:?}");
}

/// A fixed-price handler (nothing metered) cut at the cap is refunded: it never answered.
#[tokio::test(start_paused = true)]
async fn a_fixed_price_call_cut_at_the_cap_is_refunded() {
    const START: u64 = 100;
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_fixed", "key-fixed", START).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(&[("GET /v1/forever", 5)]))
        .max_hold_lifetime(Duration::from_secs(2));
    let svc = layer.layer(tower::service_fn(|_req: Request<Full<Bytes>>| async move {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let response = svc
        .oneshot(get_req("/v1/forever", Some("key-fixed")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["status"], 504, "{json}");
    let b = assert_conserved(&ledger, &acct).await;
    assert_eq!((b.available, b.committed), (START as i64, 0), "{b:?}");
}

/// A deferred body still streaming at the cap is cut too: committed at what it metered, and
/// the body ends with [`HoldLifetimeExceeded`] — even while it waits on the handler.
#[tokio::test(start_paused = true)]
async fn a_stream_past_the_cap_ends_and_is_billed_so_far() {
    const START: u64 = 1_000;
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_long", "key-long", START).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing(&[("GET /v1/stream", 100)]))
        .hold_ttl(Duration::from_secs(3))
        .max_hold_lifetime(Duration::from_secs(10));
    let svc = layer.layer(tower::service_fn(|req: Request<Full<Bytes>>| async move {
        let charge = req.extensions().get::<Charge>().cloned().expect("billed");
        charge.defer();
        // One chunk a second, for ever.
        let chunks = Box::pin(
            tokio_stream::StreamExt::throttle(
                tokio_stream::iter(0..u64::MAX),
                Duration::from_secs(1),
            )
            .map(move |i| {
                let _ = charge.add(1);
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk{i};"))))
            }),
        );
        Ok::<_, Infallible>(Response::new(StreamBody::new(chunks)))
    }));
    let response = svc
        .oneshot(get_req("/v1/stream", Some("key-long")))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut frames = 0u64;
    let error = loop {
        match body.frame().await.expect("the stream never ends by itself") {
            Ok(_) => frames += 1,
            Err(error) => break error,
        }
    };
    assert!(
        error.downcast_ref::<HoldLifetimeExceeded>().is_some(),
        "{error:?}"
    );
    assert!((9..=11).contains(&frames), "{frames} frames in 10 s");
    let b = assert_conserved(&ledger, &acct).await;
    assert_eq!(b.held, 0, "{b:?}");
    assert_eq!(
        b.committed, frames,
        "billed every frame it delivered: {b:?}"
    );
}
