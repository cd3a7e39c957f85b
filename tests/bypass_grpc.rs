//! gRPC billing bypasses, end to end through a real tonic server on loopback: a caller who
//! resets or drops a stream after the server did the work pays what the `Charge` says so
//! far; only an explicit failure (a non-zero `grpc-status`) is refunded; and on a server
//! that mixes HTTP and gRPC routes, each is refused its own way, whatever the caller's
//! headers say.
//!
//! The raw HTTP/2 client is the `h2` crate: it resets a stream exactly when the test says,
//! with nothing of tonic's client in between.

#[path = "../examples/grpc/echo.rs"]
mod echo;
mod http_support;
mod support;

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use echo::{
    ChatRequest, CountRequest, EchoClient, EchoServer, SayReply, SayRequest, UploadChunk,
    UploadReply,
};
use http::StatusCode;
use http_support::{account, get_req, http1, send, with_key, Server};
use prost::Message;
use support::rig::{assert_conserved, wait_until};
use tonic::Code;
use tower_credits::pricing::Pricing;
use tower_credits::{AccountId, CreditLayer, MemoryLedger, Protocol};
use tower_credits::{LedgerAdmin, LedgerReports, TopUp};

const SAY_PRICE: u64 = 10;
const COUNT_PRICE: u64 = 20;
const CHAT_PRICE: u64 = 20;
const UPLOAD_PRICE: u64 = 20;

/// The layer every test here serves `echo.Echo` behind: gRPC by configuration.
fn grpc_layer(ledger: &MemoryLedger) -> CreditLayer<MemoryLedger> {
    CreditLayer::new(ledger.clone())
        .pricing(
            Pricing::new()
                .route("/echo.Echo/Say", SAY_PRICE)
                .route("/echo.Echo/Count", COUNT_PRICE)
                .route("/echo.Echo/Chat", CHAT_PRICE)
                .route("/echo.Echo/Upload", UPLOAD_PRICE),
        )
        .protocol(Protocol::Grpc)
        .top_up_url("https://example.com/billing")
}

/// `echo.Echo` served by tonic behind [`grpc_layer`]; aborted when dropped.
struct Grpc {
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Grpc {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Grpc {
    async fn start(ledger: &MemoryLedger) -> Self {
        Self::start_with(ledger, false).await
    }

    /// `unmetered`: the handlers never see their `Charge` (it is taken out of the request
    /// before them), so a call is worth its fixed price and only its status decides.
    async fn start_with(ledger: &MemoryLedger, unmetered: bool) -> Self {
        let layer = grpc_layer(ledger);
        let hide_charge =
            tower::util::MapRequestLayer::new(move |mut req: http::Request<tonic::body::Body>| {
                if unmetered {
                    req.extensions_mut().remove::<tower_credits::Charge>();
                }
                req
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .layer(layer)
                .layer(hide_charge)
                .add_service(EchoServer)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self { addr, server }
    }

    async fn client(&self) -> EchoClient {
        EchoClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }
}

/// Waits until nothing is held on `acct`, then returns its conserved balance.
async fn settled(ledger: &MemoryLedger, acct: &AccountId) -> tower_credits::Balance {
    let (l, a) = (ledger.clone(), acct.clone());
    wait_until("the hold settles", move || {
        let (l, a) = (l.clone(), a.clone());
        async move { l.balance(&a).await.unwrap().held == 0 }
    })
    .await;
    assert_conserved(ledger, acct).await
}

// ---- a raw HTTP/2 gRPC client ----------------------------------------------------------

/// One HTTP/2 connection; the connection task lives as long as the test keeps this.
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

/// One gRPC call on a [`RawH2`] connection: the request stream and the response body.
struct RawCall {
    tx: h2::SendStream<Bytes>,
    status: StatusCode,
    headers: http::HeaderMap,
    rx: h2::RecvStream,
    /// Bytes received and not yet parsed into messages.
    buf: BytesMut,
    /// DATA frames received so far.
    frames: usize,
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

    /// Opens `path` with the caller's key and sends `first`, ending the request stream if
    /// `end` (tonic reads a unary request to its end before it calls the handler); returns
    /// once the response head arrived.
    async fn call(&mut self, path: &str, key: &str, first: Bytes, end: bool) -> RawCall {
        let request = http::Request::post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {key}"))
            .body(())
            .unwrap();
        let mut send = self.send.clone().ready().await.unwrap();
        let (response, mut tx) = send.send_request(request, false).unwrap();
        tx.send_data(first, end).unwrap();
        let response = response.await.unwrap();
        let (parts, rx) = response.into_parts();
        RawCall {
            tx,
            status: parts.status,
            headers: parts.headers,
            rx,
            buf: BytesMut::new(),
            frames: 0,
        }
    }

    /// Opens `path` and sends `messages` without ending the request stream, without waiting
    /// for a response head (a client-streaming call answers only at the end).
    async fn open(
        &mut self,
        path: &str,
        key: &str,
        metadata: &[(&str, &str)],
    ) -> h2::SendStream<Bytes> {
        let mut request = http::Request::post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {key}"));
        for (name, value) in metadata {
            request = request.header(*name, *value);
        }
        let mut send = self.send.clone().ready().await.unwrap();
        let (_response, tx) = send.send_request(request.body(()).unwrap(), false).unwrap();
        tx
    }
}

impl RawCall {
    /// The next DATA frame (capacity released so the server keeps sending), or `None` at the
    /// end of the body.
    async fn data_frame(&mut self) -> Option<Bytes> {
        let data = self.rx.data().await?.unwrap();
        self.rx.flow_control().release_capacity(data.len()).unwrap();
        self.frames += 1;
        self.buf.extend_from_slice(&data);
        Some(data)
    }

    /// Complete messages in the bytes received so far, taken off the buffer.
    fn take_messages<M: Message + Default>(&mut self) -> Vec<M> {
        let mut out = Vec::new();
        while self.buf.len() >= 5 {
            let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
            if self.buf.len() < 5 + len {
                break;
            }
            assert_eq!(self.buf[0], 0, "uncompressed messages");
            self.buf.advance(5);
            let body = self.buf.split_to(len);
            out.push(M::decode(body.freeze()).unwrap());
        }
        out
    }

    /// Reads until `n` messages arrived (more may have come in the same frames).
    async fn read_messages<M: Message + Default>(&mut self, n: usize) -> Vec<M> {
        let mut got = Vec::new();
        while got.len() < n {
            self.data_frame()
                .await
                .unwrap_or_else(|| panic!("the body ended after {} messages", got.len()));
            got.extend(self.take_messages::<M>());
        }
        got
    }

    /// Resets the stream as a client that gives up does.
    fn reset(mut self) {
        self.tx.send_reset(h2::Reason::CANCEL);
    }
}

// ---- early ends after a successful head: commit what the Charge says so far -------------

/// A raw HTTP/2 client reads a metered stream whose handler ignores `HoldExceeded`: it gets
/// exactly the 20 items its hold paid for, then `RESOURCE_EXHAUSTED` in the trailers; a
/// reset afterwards changes nothing. Charged 20, never more, never refunded.
#[tokio::test]
async fn a_raw_h2_reader_gets_only_the_items_its_hold_paid_for() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_h2", "key-h2", 100).await;
    let g = Grpc::start(&ledger).await;
    let mut h2 = RawH2::connect(g.addr).await;
    let request = CountRequest {
        n: 4_000_000,
        credits_per_item: 1,
        fail_code: 0,
    };
    let mut call = h2
        .call("/echo.Echo/Count", "key-h2", grpc_frame(&request), true)
        .await;
    assert_eq!(call.status, StatusCode::OK);
    assert_eq!(call.headers["credits-reserved"], "20");
    assert_eq!(call.headers.get("grpc-status"), None, "a streaming head");
    let mut items = 0;
    while call.data_frame().await.is_some() {
        items += call.take_messages::<SayReply>().len();
    }
    assert_eq!(
        items, 20,
        "every delivered item is paid, in {} frames",
        call.frames
    );
    call.reset();
    let b = settled(&ledger, &acct).await;
    assert_eq!((b.available, b.committed), (80, 20), "{b:?}");
    drop(h2);
}

/// A tonic client that reads the 20 paid items and drops the stream: committed 20.
#[tokio::test]
async fn a_tonic_client_dropping_the_stream_commits_what_was_added() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_drop", "key-drop", 100).await;
    let g = Grpc::start(&ledger).await;
    let mut client = g.client().await;
    let request = CountRequest {
        n: 4_000_000,
        credits_per_item: 1,
        fail_code: 0,
    };
    let mut stream = client
        .count(with_key(request, "key-drop"))
        .await
        .unwrap()
        .into_inner();
    for i in 0..20 {
        let item = stream
            .message()
            .await
            .unwrap()
            .expect("the hold pays for 20");
        assert_eq!(item.message, format!("item {i}"));
    }
    drop(stream);
    let b = settled(&ledger, &acct).await;
    assert_eq!((b.available, b.committed), (80, 20));
}

#[tokio::test]
async fn a_bidi_chat_reset_after_three_replies_commits_their_credits() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_chat", "key-chat", 100).await;
    let g = Grpc::start(&ledger).await;
    let mut h2 = RawH2::connect(g.addr).await;
    let message = |i: usize| ChatRequest {
        message: format!("m{i}"),
        credits: 2,
    };
    let mut call = h2
        .call(
            "/echo.Echo/Chat",
            "key-chat",
            grpc_frame(&message(0)),
            false,
        )
        .await;
    assert_eq!(call.status, StatusCode::OK);
    assert_eq!(call.headers["credits-reserved"], "20");
    for i in 0..3 {
        if i > 0 {
            call.tx.send_data(grpc_frame(&message(i)), false).unwrap();
        }
        let reply = call.read_messages::<SayReply>(1).await;
        assert_eq!(reply[0].message, format!("echo: m{i}"));
    }
    call.reset();
    let b = settled(&ledger, &acct).await;
    assert_eq!((b.available, b.committed), (94, 6), "3 messages of 2");
    drop(h2);
}

#[tokio::test]
async fn a_client_streaming_upload_reset_before_its_end_commits_the_chunks_received() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_up", "key-up", 100).await;
    let g = Grpc::start(&ledger).await;
    let mut h2 = RawH2::connect(g.addr).await;
    let id = "upload-reset-1";
    let mut tx = h2
        .open("/echo.Echo/Upload", "key-up", &[(echo::UPLOAD_ID, id)])
        .await;
    for i in 0..3u8 {
        let chunk = UploadChunk {
            data: vec![i; 64],
            credits: 3,
        };
        tx.send_data(grpc_frame(&chunk), false).unwrap();
    }
    wait_until("the server received 3 chunks", || async {
        echo::chunks_received(id) == 3
    })
    .await;

    assert_eq!(ledger.balance(&acct).await.unwrap().held, 20, "still held");
    tx.send_reset(h2::Reason::CANCEL);
    let b = settled(&ledger, &acct).await;
    assert_eq!(
        (b.available, b.committed),
        (91, 9),
        "the handler added 3 chunks of 3 before the head"
    );
    drop(h2);
}

#[tokio::test]
async fn a_completed_upload_and_chat_are_charged_what_they_added() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_ok", "key-ok", 100).await;
    let g = Grpc::start(&ledger).await;
    let mut client = g.client().await;
    let chunks: Vec<_> = (0..4u8)
        .map(|i| UploadChunk {
            data: vec![i; 10],
            credits: 2,
        })
        .collect();
    let reply = client
        .upload(with_key(futures_util::stream::iter(chunks), "key-ok"))
        .await
        .unwrap();
    assert_eq!(
        *reply.get_ref(),
        UploadReply {
            chunks: 4,
            bytes: 40
        }
    );
    assert_eq!(reply.metadata().get("credits-cost").unwrap(), "8");
    let messages: Vec<_> = (0..3)
        .map(|i| ChatRequest {
            message: format!("m{i}"),
            credits: 5,
        })
        .collect();
    let mut replies = client
        .chat(with_key(futures_util::stream::iter(messages), "key-ok"))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while replies.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
    let trailers = replies.trailers().await.unwrap().unwrap();
    assert_eq!(trailers.get("credits-cost").unwrap(), "15");
    let b = settled(&ledger, &acct).await;
    assert_eq!((b.available, b.committed), (77, 23));
}

// ---- explicit failures are refunded ----------------------------------------------------

#[tokio::test]
async fn an_error_status_in_headers_is_refunded() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_eh", "key-eh", 100).await;
    let g = Grpc::start(&ledger).await;
    let status = g
        .client()
        .await
        .say(with_key(
            SayRequest {
                message: "hi".into(),
                tokens: Some(4),
                fail_code: Code::Internal as i32,
            },
            "key-eh",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(status.metadata().get("credits-cost").unwrap(), "0");
    let b = settled(&ledger, &acct).await;
    assert_eq!((b.available, b.committed), (100, 0));
}

/// An unmetered stream (its fixed price held) that ends with a non-zero status in its
/// trailers is refunded; one that ends with status 0 is committed; one reset before its
/// status is an early end, committed.
#[tokio::test]
async fn an_unmetered_stream_is_refunded_only_by_an_explicit_failure_in_its_trailers() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_um", "key-um", 100).await;
    let g = Grpc::start_with(&ledger, true).await;
    let mut client = g.client().await;
    for (fail_code, expected) in [(Code::Aborted as i32, (100, 0)), (0, (80, 20))] {
        let request = CountRequest {
            n: 3,
            credits_per_item: 2,
            fail_code,
        };
        let mut stream = client
            .count(with_key(request, "key-um"))
            .await
            .unwrap()
            .into_inner();
        for _ in 0..3 {
            assert!(stream.message().await.unwrap().is_some());
        }
        let end = stream.message().await;
        assert_eq!(end.is_err(), fail_code != 0, "{end:?}");
        let b = settled(&ledger, &acct).await;
        assert_eq!(
            (b.available, b.committed),
            expected,
            "fail_code {fail_code}"
        );
    }
    let mut h2 = RawH2::connect(g.addr).await;
    let request = CountRequest {
        n: 4_000_000,
        credits_per_item: 1,
        fail_code: Code::Aborted as i32,
    };
    let mut call = h2
        .call("/echo.Echo/Count", "key-um", grpc_frame(&request), true)
        .await;
    call.read_messages::<SayReply>(5).await;
    call.reset();
    let b = settled(&ledger, &acct).await;
    assert_eq!(
        (b.available, b.committed),
        (60, 40),
        "reset before the failing status: an early end, the price committed"
    );
    drop(h2);
}

/// A stream that fails before its handler metered anything costs nothing.
#[tokio::test]
async fn an_error_status_in_trailers_before_any_item_costs_nothing() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_et", "key-et", 100).await;
    let g = Grpc::start(&ledger).await;
    let request = CountRequest {
        n: 0,
        credits_per_item: 2,
        fail_code: Code::Aborted as i32,
    };
    let mut stream = g
        .client()
        .await
        .count(with_key(request, "key-et"))
        .await
        .unwrap()
        .into_inner();
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.metadata().get("credits-cost").unwrap(), "0");
    let b = settled(&ledger, &acct).await;
    assert_eq!((b.available, b.committed), (100, 0));
}

/// A stream that fails in its trailers after items its handler metered commits what was
/// metered (the rule of `tests/grpc.rs`): reading a stream and then making it fail must not
/// get it refunded. Seen by a raw client, trailers and all.
#[tokio::test]
async fn a_raw_h2_error_status_in_trailers_after_metered_items_commits_them() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_rt", "key-rt", 100).await;
    let g = Grpc::start(&ledger).await;
    let mut h2 = RawH2::connect(g.addr).await;
    let request = CountRequest {
        n: 2,
        credits_per_item: 4,
        fail_code: Code::ResourceExhausted as i32,
    };
    let mut call = h2
        .call("/echo.Echo/Count", "key-rt", grpc_frame(&request), true)
        .await;
    assert_eq!(call.headers.get("credits-cost"), None, "settled at the end");
    let items = call.read_messages::<SayReply>(2).await;
    assert_eq!(items.len(), 2);
    while call.data_frame().await.is_some() {}
    let trailers = call.rx.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers["grpc-status"], "8");
    assert_eq!(trailers["credits-cost"], "8");
    let b = settled(&ledger, &acct).await;
    assert_eq!((b.available, b.committed), (92, 8));
    drop(h2);
}

// ---- one server, HTTP and gRPC routes: each refused its own way --------------------------

#[tokio::test]
async fn a_mixed_server_refuses_grpc_routes_the_grpc_way_and_http_routes_with_402() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_mix", "key-mix", 3).await;
    let layer = CreditLayer::new(ledger.clone())
        .pricing(
            Pricing::new()
                .route("GET /v1/echo", 5)
                .route("/echo.Echo/Say", SAY_PRICE)
                .protocol("/echo.Echo/{*method}", Protocol::Grpc),
        )
        .top_up_url("https://example.com/billing");
    let app = axum::Router::new()
        .route(
            "/v1/echo",
            axum::routing::get(|| async { axum::Json(serde_json::json!({"echo": true})) }),
        )
        .route_service("/echo.Echo/{*method}", EchoServer)
        .layer(layer);
    let server = Server::start(app).await;

    let mut client = EchoClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let status = client
        .say(with_key(
            SayRequest {
                message: "hi".into(),
                tokens: None,
                fail_code: 0,
            },
            "key-mix",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("costs 10 credits; 3 are available"),
        "{}",
        status.message()
    );

    let answer = send(&http1(), get_req(&server.url("/v1/echo"), Some("key-mix"))).await;
    assert_eq!(answer.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(answer.json()["required"], 5);
    assert_eq!(answer.header("cache-control"), Some("no-store"));

    // The HTTP route is refused with 402 even when the caller claims to speak gRPC.
    let req = http::Request::get(server.url("/v1/echo"))
        .header("authorization", "Bearer key-mix")
        .header("content-type", "application/grpc")
        .body(http_body_util::Full::default())
        .unwrap();
    let answer = send(&http1(), req).await;
    assert_eq!(answer.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(answer.header("grpc-status"), None);
    assert_eq!(answer.json()["status"], 402);

    // And a gRPC route the account can afford is billed by grpc-status.

    ledger.top_up(TopUp::new(&acct, 100, "more")).await.unwrap();
    let reply = client
        .say(with_key(
            SayRequest {
                message: "hi".into(),
                tokens: Some(4),
                fail_code: 0,
            },
            "key-mix",
        ))
        .await
        .unwrap();
    assert_eq!(reply.metadata().get("credits-cost").unwrap(), "4");
    let b = settled(&ledger, &acct).await;
    assert_eq!((b.available, b.committed), (99, 4));
}
