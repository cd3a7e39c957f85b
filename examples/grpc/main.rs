//! A tonic service billed by the same `CreditLayer` as the quickstart.
//!
//! ```text
//! cargo run --example grpc
//! ```
//!
//! Starts `echo.Echo` on 127.0.0.1:50051 (`PORT` overrides) over the embedded ledger, then
//! acts as its own client: a paid call, a call that costs less than its hold, a refused one,
//! a streamed call settled at the end of the stream, a bidirectional chat billed per message
//! and an upload billed per chunk; then it asks `tower_credits.v1.Credits`, served next to
//! `echo.Echo` behind the same layer, for a quote of `Say` and for its readout.
//! `cargo run --example grpc -- serve` only serves.
//!
//! The layer bills gRPC: `.protocol(Protocol::Grpc)` is server configuration, so success is
//! `grpc-status: 0` and refusals are gRPC statuses whatever a caller's headers say.

mod echo;

use std::time::Duration;

use echo::{ChatRequest, CountRequest, EchoClient, EchoServer, SayRequest, UploadChunk};
use tonic::Request;
use tower_credits::credits_grpc::{CreditsClient, CreditsServer, QuoteRequest, ReadoutRequest};
use tower_credits::pricing::Pricing;
use tower_credits::{AccountId, ApiKeyHash, CreditLayer, MemoryLedger, Protocol};
use tower_credits::{LedgerAdmin, LedgerReports, TopUp};

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ledger = MemoryLedger::new();
    for (key, account, credits) in [
        ("demo-rich", "acct_rich", 1000),
        ("demo-poor", "acct_poor", 5),
    ] {
        let account = AccountId::new(account)?;
        ledger
            .top_up(TopUp::new(&account, credits, format!("seed-{account}")))
            .await?;
        ledger
            .register_api_key(&ApiKeyHash::of(key), &account)
            .await?;
    }
    let pricing = Pricing::new()
        .route("/echo.Echo/Say", 10)
        .route("/echo.Echo/Count", 20)
        .route("/echo.Echo/Chat", 20)
        .route("/echo.Echo/Upload", 20)
        // The caller's own quote and readout: the account is resolved, nothing is held.
        .authenticated("/tower_credits.v1.Credits/{*method}");
    let layer = CreditLayer::new(ledger.clone())
        .pricing(pricing.clone())
        .protocol(Protocol::Grpc)
        .low_balance_threshold(100)
        .top_up_url("https://example.com/billing");
    // Kept to shut the layer's hold keeper down after the server stops.
    let credits = layer.clone();

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(50051);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let serve_only = std::env::args().nth(1).as_deref() == Some("serve");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(EchoServer)
            .add_service(CreditsServer::new(ledger.clone(), pricing))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                },
            ),
    );
    println!("echo.Echo listening on {addr}");

    if !serve_only {
        let mut client = EchoClient::connect(format!("http://{addr}")).await?;
        let paid = client
            .say(with_key(
                SayRequest {
                    message: "hi".into(),
                    tokens: Some(4),
                    fail_code: 0,
                },
                "demo-rich",
            ))
            .await?;
        println!(
            "Say (hold 10, used 4): {:?}, credits-cost={:?} credits-remaining={:?}",
            paid.get_ref().message,
            paid.metadata().get("credits-cost"),
            paid.metadata().get("credits-remaining")
        );
        let refused = client
            .say(with_key(
                SayRequest {
                    message: "hi".into(),
                    tokens: None,
                    fail_code: 0,
                },
                "demo-poor",
            ))
            .await
            .unwrap_err();
        println!(
            "Say as demo-poor: {:?}: {}",
            refused.code(),
            refused.message()
        );
        let mut stream = client
            .count(with_key(
                CountRequest {
                    n: 3,
                    credits_per_item: 2,
                    fail_code: 0,
                },
                "demo-rich",
            ))
            .await?
            .into_inner();
        while let Some(item) = stream.message().await? {
            println!("Count: {}", item.message);
        }
        let trailers = stream.trailers().await?.unwrap_or_default();
        println!(
            "Count trailers: credits-cost={:?} credits-remaining={:?}",
            trailers.get("credits-cost"),
            trailers.get("credits-remaining")
        );

        let messages = ["hello", "how are you", "bye"].map(|m| ChatRequest {
            message: m.into(),
            credits: 3,
        });
        let mut replies = client
            .chat(with_key(futures_util::stream::iter(messages), "demo-rich"))
            .await?
            .into_inner();
        while let Some(reply) = replies.message().await? {
            println!("Chat: {}", reply.message);
        }
        let trailers = replies.trailers().await?.unwrap_or_default();
        println!(
            "Chat trailers (hold 20, 3 per message): credits-cost={:?} credits-remaining={:?}",
            trailers.get("credits-cost"),
            trailers.get("credits-remaining")
        );

        let chunks = (0..4).map(|i| UploadChunk {
            data: vec![i; 1024],
            credits: 2,
        });
        let uploaded = client
            .upload(with_key(
                futures_util::stream::iter(chunks.collect::<Vec<_>>()),
                "demo-rich",
            ))
            .await?;
        println!(
            "Upload (hold 20, 2 per chunk): {} chunks, {} bytes, credits-cost={:?} credits-remaining={:?}",
            uploaded.get_ref().chunks,
            uploaded.get_ref().bytes,
            uploaded.metadata().get("credits-cost"),
            uploaded.metadata().get("credits-remaining")
        );

        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let mut credits = CreditsClient::new(channel);
        let quote = credits
            .quote(with_key(
                QuoteRequest {
                    method: "/echo.Echo/Say".into(),
                    max_cost: None,
                },
                "demo-rich",
            ))
            .await?
            .into_inner();
        println!(
            "Quote of Say: price={} available={:?} affordable={} shortfall={} max_affordable={:?}",
            quote.price, quote.available, quote.affordable, quote.shortfall, quote.max_affordable
        );
        let readout = credits
            .readout(with_key(ReadoutRequest {}, "demo-rich"))
            .await?
            .into_inner();
        println!(
            "Readout of {}: available={} held={} committed={} runway_secs={:?}",
            readout.account,
            readout.available,
            readout.held,
            readout.committed,
            readout.runway_secs
        );
        for route in &readout.routes {
            println!(
                "  {}: {} calls, {} credits, {:.1} per call",
                route.route, route.calls, route.credits, route.average_cost
            );
        }
        let _ = stop_tx.send(());
    }
    server.await??;
    credits.shutdown(Duration::from_secs(5)).await;
    let balance = ledger.balance(&AccountId::new("acct_rich")?).await?;
    println!(
        "acct_rich: available={} committed={}",
        balance.available, balance.committed
    );
    Ok(())
}
