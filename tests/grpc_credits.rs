//! The `tower_credits.v1.Credits` gRPC service end to end, through a real tonic server and
//! client on loopback, behind the `CreditLayer` next to `echo.Echo`.

#[path = "../examples/grpc/echo.rs"]
mod echo;
mod http_support;
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use echo::{EchoClient, EchoServer, SayRequest};
use http_support::{account, with_key};
use support::rig::wait_until;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tower_credits::credits_grpc::{CreditsClient, QuoteRequest, ReadoutRequest};
use tower_credits::credits_grpc::{CreditsServer, QUOTE};
use tower_credits::pricing::Pricing;
use tower_credits::{CreditLayer, LedgerReports, MemoryLedger, Protocol};

/// `EchoServer`, counting the calls that reach it.
#[derive(Clone)]
struct Counted {
    calls: Arc<AtomicUsize>,
}

impl NamedService for Counted {
    const NAME: &'static str = "echo.Echo";
}

impl<B> tower::Service<http::Request<B>> for Counted
where
    EchoServer: tower::Service<http::Request<B>>,
{
    type Response = <EchoServer as tower::Service<http::Request<B>>>::Response;
    type Error = <EchoServer as tower::Service<http::Request<B>>>::Error;
    type Future = <EchoServer as tower::Service<http::Request<B>>>::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        EchoServer.call(req)
    }
}

struct Rig {
    echo: EchoClient,
    credits: CreditsClient<Channel>,
    echo_calls: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start(ledger: MemoryLedger) -> Rig {
    let pricing = Pricing::new()
        .route("/echo.Echo/Say", 10)
        .authenticated("/tower_credits.v1.Credits/{*method}")
        .version("2026-01");
    let layer = CreditLayer::new(ledger.clone())
        .protocol(Protocol::Grpc)
        .pricing(pricing.clone());
    let echo_calls = Arc::new(AtomicUsize::new(0));
    let counted = Counted {
        calls: echo_calls.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(counted)
            .add_service(CreditsServer::new(ledger, pricing))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Rig {
        echo: EchoClient::new(channel.clone()),
        credits: CreditsClient::new(channel),
        echo_calls,
        server,
    }
}

fn quote_say(max_cost: Option<u64>) -> QuoteRequest {
    QuoteRequest {
        method: echo::SAY.into(),
        max_cost,
    }
}

#[tokio::test]
async fn quote_prices_say_for_a_funded_caller_without_running_it() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_q1", "key-q1", 100).await;
    let mut rig = start(ledger.clone()).await;
    let reply = rig
        .credits
        .quote(with_key(quote_say(None), "key-q1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.price, 10);
    assert_eq!(reply.min_price, None);
    assert_eq!(reply.available, Some(100));
    assert!(reply.affordable);
    assert_eq!(reply.shortfall, 0);
    assert_eq!(reply.max_affordable, Some(10));
    assert_eq!(reply.price_version.as_deref(), Some("2026-01"));

    // A cap at or above the least Say runs with lowers the hold to it.
    let capped = rig
        .credits
        .quote(with_key(quote_say(Some(10)), "key-q1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capped.price, 10);

    // Nothing ran, nothing was held or charged.
    assert_eq!(rig.echo_calls.load(Ordering::SeqCst), 0);
    let balance = ledger.balance(&acct).await.unwrap();
    assert_eq!(
        (balance.available, balance.held, balance.committed),
        (100, 0, 0)
    );
    assert!(ledger.usage(&acct).await.unwrap().by_route.is_empty());
}

#[tokio::test]
async fn quote_for_a_poor_caller_is_not_affordable_and_says_the_shortfall() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_q2", "key-q2", 4).await;
    let mut rig = start(ledger.clone()).await;
    let reply = rig
        .credits
        .quote(with_key(quote_say(None), "key-q2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.price, 10);
    assert_eq!(reply.available, Some(4));
    assert!(!reply.affordable);
    assert_eq!(reply.shortfall, 6);
    assert_eq!(reply.max_affordable, Some(0));
    assert_eq!(rig.echo_calls.load(Ordering::SeqCst), 0);
    assert_eq!(ledger.balance(&acct).await.unwrap().available, 4);
}

#[tokio::test]
async fn quote_with_max_cost_below_the_price_is_failed_precondition() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_q3", "key-q3", 100).await;
    let mut rig = start(ledger.clone()).await;
    let status = rig
        .credits
        .quote(with_key(quote_say(Some(9)), "key-q3"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(rig.echo_calls.load(Ordering::SeqCst), 0);
    let balance = ledger.balance(&acct).await.unwrap();
    assert_eq!((balance.available, balance.held), (100, 0));
}

#[tokio::test]
async fn quote_and_readout_refuse_unknown_keys() {
    let ledger = MemoryLedger::new();
    let mut rig = start(ledger).await;
    let status = rig
        .credits
        .quote(with_key(quote_say(None), "unknown"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = rig
        .credits
        .quote(Request::new(quote_say(None)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = rig
        .credits
        .readout(with_key(ReadoutRequest {}, "unknown"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn quote_of_a_free_or_authenticated_method_is_free() {
    let ledger = MemoryLedger::new();
    account(&ledger, "acct_q5", "key-q5", 100).await;
    let mut rig = start(ledger).await;
    let reply = rig
        .credits
        .quote(with_key(
            QuoteRequest {
                method: QUOTE.into(),
                max_cost: None,
            },
            "key-q5",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.price, reply.available), (0, None));
    assert!(reply.affordable);
    let status = rig
        .credits
        .quote(with_key(
            QuoteRequest {
                method: "no-slash".into(),
                max_cost: None,
            },
            "key-q5",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn readout_shows_commits_and_spend_by_route() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_q6", "key-q6", 100).await;
    let mut rig = start(ledger.clone()).await;
    for tokens in [4, 6, 5] {
        rig.echo
            .say(with_key(
                SayRequest {
                    message: "hi".into(),
                    tokens: Some(tokens),
                    fail_code: 0,
                },
                "key-q6",
            ))
            .await
            .unwrap();
    }
    assert_eq!(rig.echo_calls.load(Ordering::SeqCst), 3);
    wait_until("the three Say calls settle", || {
        let ledger = ledger.clone();
        let acct = acct.clone();
        async move {
            let b = ledger.balance(&acct).await.unwrap();
            b.committed == 15 && b.held == 0
        }
    })
    .await;
    let readout = rig
        .credits
        .readout(with_key(ReadoutRequest {}, "key-q6"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(readout.account, "acct_q6");
    assert_eq!(
        (readout.available, readout.held, readout.committed),
        (85, 0, 15)
    );
    assert_eq!(readout.credit_limit, 0);
    assert_eq!(readout.routes.len(), 1, "{:?}", readout.routes);
    let say = &readout.routes[0];
    assert_eq!(say.route, "/echo.Echo/Say");
    assert_eq!((say.calls, say.credits), (3, 15));
    assert_eq!(say.average_cost, 5.0);
    // The readout and the quote are billed nothing, nor recorded as spend.
    let balance = ledger.balance(&acct).await.unwrap();
    assert_eq!((balance.available, balance.committed), (85, 15));
}
