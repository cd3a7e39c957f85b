//! Streams that never outrun their hold, and say what they cost at the end, on the
//! in-memory ledger, a Redis server and a Redis Cluster: SSE read as
//! EventSource does, HTTP/1.1 trailers with and without `TE: trailers`, and a gRPC server
//! stream whose handler ignores `HoldExceeded` (the adversarial twin: it tries to deliver
//! work nobody pays for).

#[path = "../examples/grpc/echo.rs"]
mod echo;
mod http_support;
#[macro_use]
mod support;

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use echo::{CountRequest, EchoClient, EchoServer};
use futures_util::stream::{self, StreamExt};
use http::Request;
use http_body_util::Full;
use http_support::sse::{events, metered_sse, Params};
use http_support::{account, http1, http2, send, Server};
use support::rig::assert_conserved;
use tonic::Code;
use tonic_types::StatusExt;
use tower_credits::pricing::Pricing;
use tower_credits::{Charge, CreditLayer, Ledger, LedgerAdmin, LedgerReports, Protocol};

/// `n` chunks of a plain chunked body, each metered 1 credit.
async fn chunks(charge: Charge, Query(p): Query<Params>) -> axum::body::Body {
    charge.defer();
    let chunks = stream::iter(0..p.n).map(move |i| {
        let _ = charge.add(1);
        Ok::<_, Infallible>(Bytes::from(format!("chunk{i};")))
    });
    axum::body::Body::from_stream(chunks)
}

async fn app<L: Ledger>(ledger: L) -> Server {
    let layer = CreditLayer::new(ledger).pricing(
        Pricing::new()
            .route("GET /v1/stream", 20)
            .route("GET /v1/chunks", 20),
    );
    let router = Router::new()
        .route("/v1/stream", get(metered_sse))
        .route("/v1/chunks", get(chunks))
        .layer(layer);
    Server::start(router).await
}

fn get_req(url: &str, key: &str, te_trailers: bool) -> Request<Full<Bytes>> {
    let mut req = Request::get(url).header("authorization", format!("Bearer {key}"));
    if te_trailers {
        req = req.header("te", "trailers");
    }
    req.body(Full::default()).unwrap()
}

/// A stream that ends by itself within its hold ends with `event: credits` and the
/// figures, no `stop`.
async fn an_sse_stream_ends_with_its_cost<L: Ledger + LedgerAdmin + LedgerReports>(ledger: L) {
    let acct = account(&ledger, "acct_sse", "key-sse", 100).await;
    let server = app(ledger.clone()).await;
    let answer = send(
        &http1(),
        get_req(&server.url("/v1/stream?n=5"), "key-sse", false),
    )
    .await;
    assert_eq!(answer.status, 200);
    let events = events(&answer.body);
    assert_eq!(events.len(), 6, "{events:?}");
    assert!(events[..5].iter().all(|(name, _)| name == "message"));
    let (name, data) = &events[5];
    assert_eq!(name, "credits");
    let json: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"cost": 5, "remaining": 95, "reserved": 20})
    );
    let b = assert_conserved(&ledger, &acct).await;
    assert_eq!((b.committed, b.held), (5, 0));
}

/// Adversarial twin: a handler that ignores `HoldExceeded` and would send 50 events on a
/// hold of 20 delivers exactly the 20 paid for, then the layer's `credits` event with
/// `"stop":"hold-exhausted"`; charged 20.
async fn an_sse_stream_past_its_hold_is_cut_and_says_why<
    L: Ledger + LedgerAdmin + LedgerReports,
>(
    ledger: L,
) {
    let server = app(ledger.clone()).await;
    for polite in [false, true] {
        let key = format!("key-cut-{polite}");
        let acct = account(&ledger, &format!("acct_cut_{polite}"), &key, 100).await;
        let url = server.url(&format!("/v1/stream?n=50&polite={polite}"));
        let answer = send(&http1(), get_req(&url, &key, false)).await;
        let events = events(&answer.body);
        let data: Vec<_> = events.iter().filter(|(n, _)| n == "message").collect();
        assert_eq!(
            data.len(),
            20,
            "polite={polite}: every delivered event is paid"
        );
        let (name, last) = events.last().unwrap();
        assert_eq!(name, "credits");
        let json: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(json["stop"], "hold-exhausted", "{json}");
        assert_eq!(
            (json["cost"].as_u64(), json["reserved"].as_u64()),
            (Some(20), Some(20))
        );
        let b = assert_conserved(&ledger, &acct).await;
        assert_eq!((b.committed, b.available), (20, 80), "polite={polite}");
    }
}

/// HTTP/1.1: the head names the trailers it will send; a client that sent `TE: trailers`
/// gets `credits-cost` at the end, one that did not gets the body alone. HTTP/2 always
/// gets them. A cut chunked stream says `credits-stop: hold-exhausted`.
async fn trailers_reach_http1_clients_that_ask_and_http2_clients<
    L: Ledger + LedgerAdmin + LedgerReports,
>(
    ledger: L,
) {
    account(&ledger, "acct_tr", "key-tr", 1_000).await;
    let server = app(ledger.clone()).await;
    let url = server.url("/v1/chunks?n=3");

    let asked = send(&http1(), get_req(&url, "key-tr", true)).await;
    let announced = asked.header("trailer").unwrap_or_default().to_owned();
    assert!(announced.contains("credits-cost"), "{announced}");
    assert_eq!(asked.trailer("credits-cost"), Some("3"), "{asked:?}");
    assert_eq!(asked.trailer("credits-remaining"), Some("997"));

    let silent = send(&http1(), get_req(&url, "key-tr", false)).await;
    assert_eq!(&silent.body[..], b"chunk0;chunk1;chunk2;");
    assert_eq!(silent.trailer("credits-cost"), None);

    let h2 = send(&http2(), get_req(&url, "key-tr", false)).await;
    assert_eq!(h2.trailer("credits-cost"), Some("3"), "{h2:?}");

    let cut = send(
        &http2(),
        get_req(&server.url("/v1/chunks?n=50"), "key-tr", false),
    )
    .await;
    assert_eq!(
        cut.body.len(),
        (0..20).map(|i| format!("chunk{i};").len()).sum::<usize>()
    );
    assert_eq!(cut.trailer("credits-stop"), Some("hold-exhausted"));
    assert_eq!(cut.trailer("credits-cost"), Some("20"));
}

/// The gRPC example's `Count` ignores `add`'s result: 1,000 items at 5 credits on a hold
/// of 20 deliver 4 items, every one paid, and end with `RESOURCE_EXHAUSTED`
/// (`ErrorInfo{reason: HOLD_EXHAUSTED}`), charged 20.
async fn a_grpc_stream_reaching_its_hold_ends_resource_exhausted<
    L: Ledger + LedgerAdmin + LedgerReports,
>(
    ledger: L,
) {
    let acct = account(&ledger, "acct_count", "key-count", 100).await;
    let layer = CreditLayer::new(ledger.clone())
        .protocol(Protocol::Grpc)
        .pricing(Pricing::new().route("/echo.Echo/Count", 20));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(EchoServer)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = EchoClient::connect(format!("http://{addr}")).await.unwrap();
    let mut request = tonic::Request::new(CountRequest {
        n: 1_000,
        credits_per_item: 5,
        fail_code: 0,
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer key-count".parse().unwrap());
    let mut stream = client.count(request).await.unwrap().into_inner();
    let mut items = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.message()).await {
            Ok(Ok(Some(_))) => items += 1,
            Ok(Ok(None)) => panic!("the stream ended OK after {items} items"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the stream hung"),
        }
    };
    assert_eq!(items, 4, "every delivered item is paid (20 / 5)");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "HOLD_EXHAUSTED");
    assert_eq!(info.metadata["cost"], "20");
    let b = assert_conserved(&ledger, &acct).await;
    assert_eq!((b.committed, b.available), (20, 80));
    server.abort();
}

on_every_ledger!(
    an_sse_stream_ends_with_its_cost,
    an_sse_stream_past_its_hold_is_cut_and_says_why,
    trailers_reach_http1_clients_that_ask_and_http2_clients,
    a_grpc_stream_reaching_its_hold_ends_resource_exhausted,
);
