//! End to end through a real tonic server and client on loopback.

#[path = "../examples/grpc/echo.rs"]
mod echo;
mod http_support;
mod support;

use echo::{CountRequest, EchoClient, EchoServer, SayRequest};
use http_support::{account, with_key, DownLedger};
use support::rig::assert_conserved;
use tonic::{Code, Request};
use tonic_types::StatusExt;
use tower_credits::pricing::Pricing;
use tower_credits::LedgerReports;
use tower_credits::{CreditLayer, Ledger, MemoryLedger, Protocol};

struct Grpc {
    client: EchoClient,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Grpc {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start<L: Ledger>(ledger: L) -> Grpc {
    let layer = CreditLayer::new(ledger)
        .protocol(Protocol::Grpc)
        .pricing(
            Pricing::new()
                .route("/echo.Echo/Say", 10)
                .route("/echo.Echo/Count", 20),
        )
        .top_up_url("https://example.com/billing");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(EchoServer)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let client = EchoClient::connect(format!("http://{addr}")).await.unwrap();
    Grpc { client, server }
}

fn say(tokens: Option<u64>, fail_code: i32) -> SayRequest {
    SayRequest {
        message: "hi".into(),
        tokens,
        fail_code,
    }
}

#[tokio::test]
async fn unary_call_is_charged_its_actual_cost() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_g1", "key-g1", 100).await;
    let mut g = start(ledger.clone()).await;
    let reply = g
        .client
        .say(with_key(say(Some(4), 0), "key-g1"))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().message, "echo: hi");
    // tonic merges the trailers, where the cost of a unary call goes, into the metadata.
    assert_eq!(reply.metadata().get("credits-cost").unwrap(), "4");
    assert_eq!(reply.metadata().get("credits-remaining").unwrap(), "96");
    assert_eq!(reply.metadata().get("credits-reserved").unwrap(), "10");
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (96, 0, 4));
}

#[tokio::test]
async fn insufficient_balance_is_failed_precondition_with_error_info_and_help() {
    let ledger = MemoryLedger::new();
    account(&ledger, "acct_g2", "key-g2", 3).await;
    let mut g = start(ledger.clone()).await;
    let status = g
        .client
        .say(with_key(say(None, 0), "key-g2"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("costs 10 credits; 3 are available"),
        "{}",
        status.message()
    );
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "INSUFFICIENT_BALANCE");
    assert_eq!(info.domain, "tower-credits");
    assert_eq!(info.metadata["account"], "acct_g2");
    assert_eq!(info.metadata["required"], "10");
    assert_eq!(info.metadata["available"], "3");
    assert_eq!(info.metadata["shortfall"], "7");
    let help = status.get_details_help().expect("Help");
    assert_eq!(help.links[0].url, "https://example.com/billing");
}

#[tokio::test]
async fn missing_key_is_unauthenticated() {
    let mut g = start(MemoryLedger::new()).await;
    let status = g.client.say(Request::new(say(None, 0))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = g
        .client
        .say(with_key(say(None, 0), "unknown"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_down_ledger_is_unavailable() {
    let mut g = start(DownLedger).await;
    let status = g
        .client
        .say(with_key(say(None, 0), "any"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(!status.message().contains("10.0.0.7"), "internals leaked");
}

/// A metered stream that fails after its items pays for the items it sent: a caller must
/// not be able to read a whole stream and then make it fail to get it refunded.
#[tokio::test]
async fn error_status_in_trailers_after_metered_items_commits_the_items() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_g4", "key-g4", 100).await;
    let mut g = start(ledger.clone()).await;
    let request = CountRequest {
        n: 2,
        credits_per_item: 3,
        fail_code: Code::Aborted as i32,
    };
    let mut stream = g
        .client
        .count(with_key(request, "key-g4"))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    assert!(stream.message().await.unwrap().is_some());
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.metadata().get("credits-cost").unwrap(), "6");
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (94, 0, 6));
    assert_conserved(&ledger, &acct).await;
}

/// The same failure before any item was metered costs nothing.
#[tokio::test]
async fn error_status_in_trailers_before_any_item_is_refunded() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_g4b", "key-g4b", 100).await;
    let mut g = start(ledger.clone()).await;
    let request = CountRequest {
        n: 0,
        credits_per_item: 3,
        fail_code: Code::Aborted as i32,
    };
    let mut stream = g
        .client
        .count(with_key(request, "key-g4b"))
        .await
        .unwrap()
        .into_inner();
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.metadata().get("credits-cost").unwrap(), "0");
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (100, 0, 0));
    assert_conserved(&ledger, &acct).await;
}

#[tokio::test]
async fn a_stream_settles_once_at_its_end_with_trailers() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_g5", "key-g5", 100).await;
    let mut g = start(ledger.clone()).await;
    let request = CountRequest {
        n: 4,
        credits_per_item: 3,
        fail_code: 0,
    };
    let response = g.client.count(with_key(request, "key-g5")).await.unwrap();
    assert_eq!(response.metadata().get("credits-reserved").unwrap(), "20");
    assert!(response.metadata().get("credits-hold-id").is_some());
    let mut stream = response.into_inner();
    let mut items = 0;
    while stream.message().await.unwrap().is_some() {
        items += 1;
    }
    assert_eq!(items, 4);
    let trailers = stream.trailers().await.unwrap().unwrap();
    assert_eq!(trailers.get("credits-cost").unwrap(), "12");
    assert_eq!(trailers.get("credits-remaining").unwrap(), "88");
    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (88, 0, 12));
    assert_eq!(
        ledger.usage(&acct).await.unwrap().by_route["/echo.Echo/Count"].calls,
        1
    );
}
