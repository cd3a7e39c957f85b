//! Free reads answered from a per-account snapshot: a flood of quotes costs the store one
//! read per account per interval, and a caller sees the effect of its own last call at once.

mod http_support;
mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use http_support::{account, SwitchLedger};
use support::rig::pricing;
use tower::{Layer, ServiceExt};
use tower_credits::ledger::CachedReads;
use tower_credits::{CreditLayer, MemoryLedger};

fn call(quote: bool) -> Request<Full<Bytes>> {
    let mut req = Request::get("/v1/echo").header("authorization", "Bearer key-reads");
    if quote {
        req = req.header("credits-quote", "1");
    }
    req.body(Full::default()).unwrap()
}

async fn available<S>(svc: &S) -> i64
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<tower_credits::ResponseBody<Full<Bytes>>>,
            Error = Infallible,
        > + Clone,
{
    let response = svc.clone().oneshot(call(true)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    json["available"]
        .as_i64()
        .expect("a quote says what is available")
}

/// 50 quotes for one account read the store once; a billed call through this replica drops
/// the snapshot, so the next quote shows it.
#[tokio::test]
async fn a_flood_of_quotes_reads_the_store_once_per_interval() {
    let store = SwitchLedger::new(MemoryLedger::new());
    account(&store, "acct_reads", "key-reads", 100).await;
    let ledger = CachedReads::new(store.clone()).interval(Duration::from_secs(3600));
    let layer = CreditLayer::new(ledger).pricing(pricing(&[("GET /v1/echo", 1)]));
    let svc = layer.layer(tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"echo"))))
    }));

    assert_eq!(available(&svc).await, 100); // looks the key up, then reads the balance
    let calls = store.calls();
    for _ in 0..50 {
        assert_eq!(available(&svc).await, 100);
    }
    assert_eq!(store.calls(), calls, "50 quotes answered from the snapshot");

    let billed = svc.clone().oneshot(call(false)).await.unwrap();
    assert_eq!(billed.headers()["credits-cost"], "1");
    assert_eq!(
        available(&svc).await,
        99,
        "the caller sees its own last call at once"
    );
}

/// With a zero interval every read goes to the store.
#[tokio::test]
async fn a_zero_interval_reads_every_time() {
    let store = SwitchLedger::new(MemoryLedger::new());
    account(&store, "acct_reads", "key-reads", 100).await;
    let layer = CreditLayer::new(CachedReads::new(store.clone()).interval(Duration::ZERO))
        .pricing(pricing(&[("GET /v1/echo", 1)]));
    let svc = layer.layer(tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"echo"))))
    }));
    available(&svc).await;
    let calls = store.calls();
    for _ in 0..5 {
        available(&svc).await;
    }
    assert_eq!(store.calls() - calls, 5);
}
