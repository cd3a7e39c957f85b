//! gRPC-Web through tonic-web, with the layer on either side of `GrpcWebLayer`, end to end
//! over HTTP/1.1 on loopback with tonic-web's own client (`GrpcWebClientLayer`):
//!
//! - inside: the layer bills [`Protocol::GrpcWeb`] and sees gRPC-Web, whose status comes in
//!   the head (trailers-only) or in a trailer frame inside the body;
//! - outside: tonic-web has turned the call into plain gRPC before the layer sees it, so the
//!   layer bills [`Protocol::Grpc`].
//!
//! A raw `application/grpc-web-text` call (base64 body) checks the text encoding too.

#[path = "../examples/grpc/echo.rs"]
mod echo;
mod http_support;
mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use echo::{CountRequest, EchoClient, EchoServer, SayReply, SayRequest};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use http_support::{account, with_key};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use support::rig::{assert_conserved, wait_until};
use tonic::Code;
use tonic_web::{GrpcWebClientLayer, GrpcWebClientService, GrpcWebLayer};
use tower_credits::pricing::Pricing;
use tower_credits::LedgerReports;
use tower_credits::{AccountId, Balance, CreditLayer, MemoryLedger, Protocol};

/// Where `GrpcWebLayer` sits relative to the credit layer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Order {
    /// `CreditLayer(GrpcWebLayer(EchoServer))`: the layer bills gRPC-Web.
    WebInside,
    /// `GrpcWebLayer(CreditLayer(EchoServer))`: the layer bills gRPC.
    WebOutside,
}

struct Web {
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Web {
    fn drop(&mut self) {
        self.server.abort();
    }
}

type WebTransport =
    GrpcWebClientService<Client<HttpConnector, tonic_web::GrpcWebCall<tonic::body::Body>>>;

impl Web {
    async fn start(ledger: &MemoryLedger, order: Order) -> Self {
        Self::start_with(ledger, order, false).await
    }

    /// `unmetered`: the handlers never see their `Charge` (it is taken out of the request
    /// before them), so a call is worth its fixed price, and only its final status tells a
    /// refund from a commit.
    async fn start_with(ledger: &MemoryLedger, order: Order, unmetered: bool) -> Self {
        let credits = CreditLayer::new(ledger.clone())
            .pricing(
                Pricing::new()
                    .route("/echo.Echo/Say", 10)
                    .route("/echo.Echo/Count", 20),
            )
            .top_up_url("https://example.com/billing");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        // tonic's `Server::layer`: the first layer added is the outermost.
        let builder = tonic::transport::Server::builder().accept_http1(true);
        let hide_charge =
            tower::util::MapRequestLayer::new(move |mut req: http::Request<tonic::body::Body>| {
                if unmetered {
                    req.extensions_mut().remove::<tower_credits::Charge>();
                }
                req
            });
        let server = match order {
            Order::WebInside => tokio::spawn(async move {
                builder
                    .layer(credits.protocol(Protocol::GrpcWeb))
                    .layer(GrpcWebLayer::new())
                    .layer(hide_charge)
                    .add_service(EchoServer)
                    .serve_with_incoming(incoming)
                    .await
                    .unwrap();
            }),
            Order::WebOutside => tokio::spawn(async move {
                builder
                    .layer(GrpcWebLayer::new())
                    .layer(credits.protocol(Protocol::Grpc))
                    .layer(hide_charge)
                    .add_service(EchoServer)
                    .serve_with_incoming(incoming)
                    .await
                    .unwrap();
            }),
        };
        Self { addr, server }
    }

    /// tonic-web's client: gRPC-Web over HTTP/1.1.
    fn client(&self) -> EchoClient<WebTransport> {
        let http = Client::builder(TokioExecutor::new()).build_http();
        let transport = GrpcWebClientLayer::new();
        let transport = tower::Layer::layer(&transport, http);
        EchoClient::with_origin(transport, format!("http://{}", self.addr).parse().unwrap())
    }
}

fn say(tokens: Option<u64>, fail_code: i32) -> SayRequest {
    SayRequest {
        message: "hi".into(),
        tokens,
        fail_code,
    }
}

/// Waits until nothing is held on `acct`, then returns its conserved balance.
async fn settled(ledger: &MemoryLedger, acct: &AccountId) -> Balance {
    let (l, a) = (ledger.clone(), acct.clone());
    wait_until("the hold settles", move || {
        let (l, a) = (l.clone(), a.clone());
        async move { l.balance(&a).await.unwrap().held == 0 }
    })
    .await;
    assert_conserved(ledger, acct).await
}

/// A unary success is charged what the handler set, a unary failure is refunded, and a
/// caller who cannot pay is refused the gRPC way.
async fn unary_is_billed_by_its_status(order: Order) {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_web", "key-web", 100).await;
    account(&ledger, "acct_web_poor", "key-web-poor", 3).await;
    let web = Web::start(&ledger, order).await;
    let mut client = web.client();

    let reply = client
        .say(with_key(say(Some(4), 0), "key-web"))
        .await
        .unwrap_or_else(|s| panic!("{order:?}: {s:?}"));
    assert_eq!(reply.get_ref().message, "echo: hi");
    let b = settled(&ledger, &acct).await;
    assert_eq!((b.available, b.committed), (96, 4), "{order:?}: charged");

    let status = client
        .say(with_key(say(Some(4), Code::Internal as i32), "key-web"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{order:?}: {status:?}");
    let b = settled(&ledger, &acct).await;
    assert_eq!((b.available, b.committed), (96, 4), "{order:?}: refunded");

    let status = client
        .say(with_key(say(None, 0), "key-web-poor"))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "{order:?}: {status:?}"
    );
}

/// A server stream is billed by its final status (in a trailer frame, for gRPC-Web): what
/// it added when it ends with status 0 or fails after metered items, nothing when it fails
/// before any.
async fn streams_are_billed_by_their_final_status(order: Order) {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_wst", "key-wst", 100).await;
    let web = Web::start(&ledger, order).await;
    let mut client = web.client();
    let cases = [
        (3, 0, (94, 6)),
        (3, Code::Aborted as i32, (88, 12)),
        (0, Code::Aborted as i32, (88, 12)),
    ];
    for (n, fail_code, expected) in cases {
        let request = CountRequest {
            n,
            credits_per_item: 2,
            fail_code,
        };
        let mut stream = client
            .count(with_key(request, "key-wst"))
            .await
            .unwrap_or_else(|s| panic!("{order:?}: {s:?}"))
            .into_inner();
        for _ in 0..n {
            assert!(stream.message().await.unwrap().is_some(), "{order:?}");
        }
        match fail_code {
            0 => assert!(stream.message().await.unwrap().is_none(), "{order:?}"),
            _ => assert_eq!(
                stream.message().await.unwrap_err().code(),
                Code::Aborted,
                "{order:?}"
            ),
        }
        let b = settled(&ledger, &acct).await;
        assert_eq!(
            (b.available, b.committed),
            expected,
            "{order:?}, n {n}, fail_code {fail_code}"
        );
    }
}

/// Unmetered streams are worth their fixed price (20): committed when the final status is
/// 0, refunded when it is not. Were the status not found (no trailer frame read), the end
/// would be an early end, committed: this tells the two apart.
async fn unmetered_streams_are_refunded_only_by_a_failing_final_status(order: Order) {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_wun", "key-wun", 100).await;
    let web = Web::start_with(&ledger, order, true).await;
    let mut client = web.client();
    for (fail_code, expected) in [(0, (80, 20)), (Code::Aborted as i32, (80, 20))] {
        let request = CountRequest {
            n: 3,
            credits_per_item: 2,
            fail_code,
        };
        let mut stream = client
            .count(with_key(request, "key-wun"))
            .await
            .unwrap_or_else(|s| panic!("{order:?}: {s:?}"))
            .into_inner();
        for _ in 0..3 {
            assert!(stream.message().await.unwrap().is_some(), "{order:?}");
        }
        let end = stream.message().await;
        assert_eq!(end.is_err(), fail_code != 0, "{order:?}: {end:?}");
        let b = settled(&ledger, &acct).await;
        assert_eq!(
            (b.available, b.committed),
            expected,
            "{order:?}, fail_code {fail_code}"
        );
    }
}

#[tokio::test]
async fn web_inside_the_layer_unmetered_streams_are_billed_by_the_trailer_frame() {
    unmetered_streams_are_refunded_only_by_a_failing_final_status(Order::WebInside).await;
}

#[tokio::test]
async fn web_outside_the_layer_unmetered_streams_are_billed_by_their_trailers() {
    unmetered_streams_are_refunded_only_by_a_failing_final_status(Order::WebOutside).await;
}

#[tokio::test]
async fn web_inside_the_layer_unary_is_billed_by_its_status() {
    unary_is_billed_by_its_status(Order::WebInside).await;
}

#[tokio::test]
async fn web_outside_the_layer_unary_is_billed_by_its_status() {
    unary_is_billed_by_its_status(Order::WebOutside).await;
}

#[tokio::test]
async fn web_inside_the_layer_streams_are_billed_by_the_trailer_frame() {
    streams_are_billed_by_their_final_status(Order::WebInside).await;
}

#[tokio::test]
async fn web_outside_the_layer_streams_are_billed_by_their_trailers() {
    streams_are_billed_by_their_final_status(Order::WebOutside).await;
}

// ---- application/grpc-web-text: a base64 body ----------------------------------------------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes base64 made of independently padded pieces (tonic-web pads each chunk).
fn b64_decode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for group in text.chunks(4) {
        assert_eq!(group.len(), 4, "base64 comes in groups of four");
        let mut n = 0u32;
        let mut pad = 0;
        for (i, c) in group.iter().enumerate() {
            let v = match B64.iter().position(|b| b == c) {
                Some(v) => v as u32,
                None => {
                    assert_eq!(*c, b'=', "not base64: {c}");
                    pad += 1;
                    0
                }
            };
            n |= v << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    out
}

/// The frames of a gRPC-Web body: `(flag, payload)`.
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

/// One `application/grpc-web-text` call over HTTP/1.1: the status, the head, and the
/// frames of the decoded body.
async fn grpc_web_text(
    addr: SocketAddr,
    path: &str,
    key: &str,
    message: &impl Message,
) -> (StatusCode, http::HeaderMap, Vec<(u8, Vec<u8>)>) {
    let payload = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc-web-text")
        .header("accept", "application/grpc-web-text")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(b64_encode(&frame))))
        .unwrap();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let text = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, frames(&b64_decode(&text)))
}

async fn grpc_web_text_say(
    addr: SocketAddr,
    key: &str,
    message: &SayRequest,
) -> (StatusCode, http::HeaderMap, Vec<(u8, Vec<u8>)>) {
    grpc_web_text(addr, "/echo.Echo/Say", key, message).await
}

#[test]
fn base64_helpers_round_trip() {
    for bytes in [&b""[..], b"a", b"ab", b"abc", b"abcd", b"\x00\xff\x80grpc"] {
        assert_eq!(b64_decode(b64_encode(bytes).as_bytes()), bytes);
    }
    assert_eq!(b64_encode(b"grpc-status:0"), "Z3JwYy1zdGF0dXM6MA==");
}

#[tokio::test]
async fn a_raw_grpc_web_text_call_inside_the_layer_is_charged_on_success_and_refunded_on_failure() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_txt", "key-txt", 100).await;
    let web = Web::start(&ledger, Order::WebInside).await;

    let (status, headers, body) = grpc_web_text_say(web.addr, "key-txt", &say(Some(4), 0)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc-web-text"),
        "{headers:?}"
    );
    assert_eq!(body.len(), 2, "a message and the trailer frame: {body:?}");
    assert_eq!(body[0].0, 0);
    assert_eq!(
        SayReply::decode(&body[0].1[..]).unwrap().message,
        "echo: hi"
    );
    assert_eq!(body[1].0 & 0x80, 0x80, "the trailer frame");
    let trailers = String::from_utf8(body[1].1.clone()).unwrap();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let b = settled(&ledger, &acct).await;
    assert_eq!((b.available, b.committed), (96, 4), "charged what Say set");

    let (status, headers, _) =
        grpc_web_text_say(web.addr, "key-txt", &say(Some(4), Code::NotFound as i32)).await;
    assert_eq!(status, StatusCode::OK);
    let code = headers
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        code.as_deref(),
        Some("5"),
        "a trailers-only failure: {headers:?}"
    );
    let b = settled(&ledger, &acct).await;
    assert_eq!((b.available, b.committed), (96, 4), "refunded");
}

#[tokio::test]
async fn a_raw_grpc_web_text_stream_inside_the_layer_is_billed_by_its_base64_trailer_frame() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_txs", "key-txs", 100).await;
    // Unmetered: a fixed price of 20, refunded only if the layer reads the failing status
    // out of the base64 trailer frame (an unread status would be an early end, committed).
    let web = Web::start_with(&ledger, Order::WebInside, true).await;
    for (fail_code, expected_status, expected) in
        [(0, "0", (80, 20)), (Code::DataLoss as i32, "15", (80, 20))]
    {
        let request = CountRequest {
            n: 5,
            credits_per_item: 1,
            fail_code,
        };
        let (status, _, body) =
            grpc_web_text(web.addr, "/echo.Echo/Count", "key-txs", &request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), 6, "5 items and the trailer frame");
        let (flag, trailers) = body.last().unwrap();
        assert_eq!(flag & 0x80, 0x80);
        let trailers = String::from_utf8(trailers.clone()).unwrap();
        assert!(
            trailers.contains(&format!("grpc-status:{expected_status}")),
            "{trailers}"
        );
        let b = settled(&ledger, &acct).await;
        assert_eq!(
            (b.available, b.committed),
            expected,
            "fail_code {fail_code}"
        );
    }
}
