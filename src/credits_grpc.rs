//! The caller's quote and readout over gRPC: the `tower_credits.v1.Credits` service.
//!
//! ```proto
//! syntax = "proto3";
//! package tower_credits.v1;
//!
//! service Credits {
//!   // What a call of `method` would cost the caller, and whether it can afford it now,
//!   // without running it: the gRPC form of `Credits-Quote: 1`.
//!   rpc Quote(QuoteRequest) returns (QuoteReply);
//!   // The caller's balance and spend by route: the gRPC form of the `CreditsReadout`.
//!   rpc Readout(ReadoutRequest) returns (ReadoutReply);
//! }
//!
//! message QuoteRequest {
//!   string method = 1;            // the gRPC method path, e.g. "/echo.Echo/Say"
//!   optional uint64 max_cost = 2; // as `Credits-Max-Cost`
//! }
//! message QuoteReply {
//!   uint64 price = 1;
//!   optional uint64 min_price = 2;
//!   optional int64 available = 3;
//!   bool affordable = 4;
//!   uint64 shortfall = 5;
//!   optional uint64 max_affordable = 6;
//!   optional uint64 runway_secs = 7;
//!   optional string price_version = 8;
//! }
//! message ReadoutRequest {}
//! message ReadoutReply {
//!   string account = 1;
//!   int64 available = 2;
//!   uint64 held = 3;
//!   uint64 committed = 4;
//!   uint64 credit_limit = 5;
//!   repeated uint64 thresholds = 6;
//!   optional uint64 runway_secs = 7;
//!   repeated RouteSpend routes = 8;
//! }
//! message RouteSpend {
//!   string route = 1;
//!   uint64 calls = 2;
//!   uint64 credits = 3;
//!   double average_cost = 4;
//! }
//! ```
//!
//! [`CreditsServer`] is served next to your own services, behind the
//! [`CreditLayer`](crate::CreditLayer) with its path priced
//! [`Price::Authenticated`]: the layer resolves the
//! caller's account (refusing unknown keys with `UNAUTHENTICATED`, as on a paid method) and
//! holds nothing. Give it the same [`Pricing`] as the layer, so a quote prices a method as a
//! real call would be priced (as `POST` of the method path).
//!
//! A quote answers what `Credits-Quote: 1` answers over HTTP, computed the same way: the
//! hold a real call would place (after `max_cost`; a `max_cost` below the least the method
//! runs with is refused with `FAILED_PRECONDITION`), the available balance, whether the call
//! is affordable, the credits missing for the full price, and the most it could hold now. A
//! free or authenticated method quotes a price of 0 with no balance. Nothing is held,
//! charged, or run.
//!
//! ```
//! use tower_credits::credits_grpc::CreditsServer;
//! use tower_credits::pricing::Pricing;
//! use tower_credits::{CreditLayer, MemoryLedger, Protocol};
//!
//! let ledger = MemoryLedger::new();
//! let pricing = Pricing::new()
//!     .route("/echo.Echo/Say", 10)
//!     .authenticated("/tower_credits.v1.Credits/{*method}");
//! let layer = CreditLayer::new(ledger.clone())
//!     .protocol(Protocol::Grpc)
//!     .pricing(pricing.clone());
//! let router = tonic::transport::Server::builder()
//!     .layer(layer)
//!     .add_service(CreditsServer::new(ledger, pricing));
//! # let _ = router;
//! ```
//!
//! [`CreditsClient`] is the client side, over any tonic transport.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Method;
use tonic::body::Body;
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;
use tower_service::Service;

use crate::amount::MAX_AMOUNT;
use crate::ledger::{AccountId, Balance, LedgerError, LedgerReports, Usage};
use crate::pricing::{Price, Pricing};
use crate::readout::average_cost;
use crate::wire::headers::Thresholds;
use crate::wire::quote::Quote;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The service's full name.
pub const SERVICE: &str = "tower_credits.v1.Credits";
/// The path of `Quote`.
pub const QUOTE: &str = "/tower_credits.v1.Credits/Quote";
/// The path of `Readout`.
pub const READOUT: &str = "/tower_credits.v1.Credits/Readout";

/// What a call would cost: the request of `Quote`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QuoteRequest {
    /// The gRPC method path to price, such as `/echo.Echo/Say`.
    #[prost(string, tag = "1")]
    pub method: String,
    /// The most the caller lets the call hold, as `Credits-Max-Cost`.
    #[prost(uint64, optional, tag = "2")]
    pub max_cost: Option<u64>,
}

/// The answer of `Quote`; the fields mean what the HTTP quote's JSON fields mean.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QuoteReply {
    /// The hold a real call would place (after `max_cost`); 0 for a free method.
    #[prost(uint64, tag = "1")]
    pub price: u64,
    /// The least the method runs with, when it declared one.
    #[prost(uint64, optional, tag = "2")]
    pub min_price: Option<u64>,
    /// The caller's available balance; absent for a free method.
    #[prost(int64, optional, tag = "3")]
    pub available: Option<i64>,
    /// Whether a real call now would be served.
    #[prost(bool, tag = "4")]
    pub affordable: bool,
    /// Credits missing for the full price.
    #[prost(uint64, tag = "5")]
    pub shortfall: u64,
    /// The most a call could hold now (0 when below the least it runs with); absent for a
    /// free method.
    #[prost(uint64, optional, tag = "6")]
    pub max_affordable: Option<u64>,
    /// Seconds the balance lasts at the recent spend rate, when it spends.
    #[prost(uint64, optional, tag = "7")]
    pub runway_secs: Option<u64>,
    /// The version of the price list, when the pricing has one.
    #[prost(string, optional, tag = "8")]
    pub price_version: Option<String>,
}

/// The request of `Readout`: the caller is the account the layer resolved.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadoutRequest {}

/// The answer of `Readout`: what the HTTP [`CreditsReadout`](crate::readout::CreditsReadout)
/// answers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadoutReply {
    /// The caller's account.
    #[prost(string, tag = "1")]
    pub account: String,
    /// Credits that can be held now (negative only within the overdraft).
    #[prost(int64, tag = "2")]
    pub available: i64,
    /// Sum of open holds.
    #[prost(uint64, tag = "3")]
    pub held: u64,
    /// Sum of all commits.
    #[prost(uint64, tag = "4")]
    pub committed: u64,
    /// Overdraft allowed.
    #[prost(uint64, tag = "5")]
    pub credit_limit: u64,
    /// The account's own low-balance thresholds.
    #[prost(uint64, repeated, tag = "6")]
    pub thresholds: Vec<u64>,
    /// Seconds the balance lasts at the recent spend rate, when it spends.
    #[prost(uint64, optional, tag = "7")]
    pub runway_secs: Option<u64>,
    /// Spend by route.
    #[prost(message, repeated, tag = "8")]
    pub routes: Vec<RouteSpend>,
}

/// What the caller spent on one route.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RouteSpend {
    /// The route label.
    #[prost(string, tag = "1")]
    pub route: String,
    /// Commits counted.
    #[prost(uint64, tag = "2")]
    pub calls: u64,
    /// Credits committed.
    #[prost(uint64, tag = "3")]
    pub credits: u64,
    /// Credits per call.
    #[prost(double, tag = "4")]
    pub average_cost: f64,
}

/// The server side of `tower_credits.v1.Credits`; see the [module docs](self).
pub struct CreditsServer<L> {
    inner: Arc<Inner<L>>,
}

struct Inner<L> {
    ledger: L,
    pricing: Pricing,
}

impl<L> Clone for CreditsServer<L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<L> fmt::Debug for CreditsServer<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditsServer")
            .field("pricing", &self.inner.pricing)
            .finish_non_exhaustive()
    }
}

impl<L: LedgerReports> CreditsServer<L> {
    /// Answers from `ledger`, pricing quotes with `pricing` (the layer's).
    pub fn new(ledger: L, pricing: Pricing) -> Self {
        Self {
            inner: Arc::new(Inner { ledger, pricing }),
        }
    }
}

impl<L> NamedService for CreditsServer<L> {
    const NAME: &'static str = SERVICE;
}

impl<L, B> Service<http::Request<B>> for CreditsServer<L>
where
    L: LedgerReports,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        match req.uri().path() {
            QUOTE => Box::pin(async move {
                let codec = ProstCodec::<QuoteReply, QuoteRequest>::default();
                let mut grpc = tonic::server::Grpc::new(codec);
                Ok(grpc.unary(QuoteMethod(inner), req).await)
            }),
            READOUT => Box::pin(async move {
                let codec = ProstCodec::<ReadoutReply, ReadoutRequest>::default();
                let mut grpc = tonic::server::Grpc::new(codec);
                Ok(grpc.unary(ReadoutMethod(inner), req).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

struct QuoteMethod<L>(Arc<Inner<L>>);

impl<L: LedgerReports> UnaryService<QuoteRequest> for QuoteMethod<L> {
    type Response = QuoteReply;
    type Future = BoxFuture<Result<Response<QuoteReply>, Status>>;

    fn call(&mut self, request: Request<QuoteRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.quote(request).await.map(Response::new) })
    }
}

struct ReadoutMethod<L>(Arc<Inner<L>>);

impl<L: LedgerReports> UnaryService<ReadoutRequest> for ReadoutMethod<L> {
    type Response = ReadoutReply;
    type Future = BoxFuture<Result<Response<ReadoutReply>, Status>>;

    fn call(&mut self, request: Request<ReadoutRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.readout(request).await.map(Response::new) })
    }
}

/// The account the layer put in the extensions for a method priced `Price::Authenticated`.
fn caller<T>(request: &Request<T>) -> Result<AccountId, Status> {
    request
        .extensions()
        .get::<AccountId>()
        .cloned()
        .ok_or_else(|| {
            Status::internal(
                "the Credits service is not behind the credit layer: price its path \
             `Price::Authenticated` in the CreditLayer in front of it",
            )
        })
}

/// A ledger error as the caller sees it.
fn unavailable(error: LedgerError) -> Status {
    tracing::error!(%error, "credits service: the ledger did not answer");
    Status::unavailable("Balances cannot be read right now. Retry shortly.")
}

impl<L: LedgerReports> Inner<L> {
    async fn quote(&self, request: Request<QuoteRequest>) -> Result<QuoteReply, Status> {
        let account = caller(&request)?;
        let QuoteRequest { method, max_cost } = request.into_inner();
        if !method.starts_with('/') {
            return Err(Status::invalid_argument(
                "`method` must be a gRPC method path, such as `/package.Service/Method`",
            ));
        }
        let priced = self.pricing.price(&Method::POST, &method, None);
        let price_version = self.pricing.version_header().cloned();
        let price = match priced.price {
            // As `Credits-Quote: 1` on such a route: nothing to hold, no balance.
            Price::Free | Price::Authenticated => {
                return Ok(reply(Quote {
                    price_version,
                    ..Quote::default()
                }))
            }
            Price::Hold(price) if price > MAX_AMOUNT => {
                tracing::error!(price, %method, "the pricing returned a price above MAX_AMOUNT");
                return Err(Status::internal(
                    "billing error: this method cannot be priced",
                ));
            }
            Price::Hold(price) => price,
        };
        // A cap never makes a method cheaper than the least it runs with.
        let least = priced.min.unwrap_or(price);
        let price = match max_cost {
            Some(max_cost) if max_cost < least => {
                return Err(Status::failed_precondition(format!(
                    "This request needs at least {least} credits to run, more than the \
                     {max_cost} your `max_cost` allows. Nothing was charged."
                )));
            }
            Some(max_cost) => price.min(max_cost),
            None => price,
        };
        let balance = match self.ledger.balance(&account).await {
            Ok(balance) => balance,
            // Never topped up or configured: nothing to spend.
            Err(LedgerError::UnknownAccount) => Balance::default(),
            Err(error) => return Err(unavailable(error)),
        };
        Ok(reply(Quote {
            price,
            min_price: priced.min,
            available: Some(balance.available),
            credit_limit: balance.credit_limit,
            thresholds: Thresholds::new(balance.thresholds, None),
            runway_secs: balance.runway_secs,
            price_version,
        }))
    }

    async fn readout(&self, request: Request<ReadoutRequest>) -> Result<ReadoutReply, Status> {
        let account = caller(&request)?;
        let balance = self.ledger.balance(&account);
        let usage = self.ledger.usage(&account);
        let (balance, usage): (Balance, Usage) = match (balance.await, usage.await) {
            (Ok(b), Ok(u)) => (b, u),
            (Err(LedgerError::UnknownAccount), _) | (_, Err(LedgerError::UnknownAccount)) => {
                (Default::default(), Default::default())
            }
            (Err(error), _) | (_, Err(error)) => return Err(unavailable(error)),
        };
        Ok(ReadoutReply {
            account: account.as_str().to_owned(),
            available: balance.available,
            held: balance.held,
            committed: balance.committed,
            credit_limit: balance.credit_limit,
            thresholds: balance.thresholds,
            runway_secs: balance.runway_secs,
            routes: usage
                .by_route
                .iter()
                .map(|(route, used)| RouteSpend {
                    route: route.clone(),
                    calls: used.calls,
                    credits: used.credits,
                    average_cost: average_cost(used),
                })
                .collect(),
        })
    }
}

fn reply(quote: Quote) -> QuoteReply {
    QuoteReply {
        price: quote.price,
        min_price: quote.min_price,
        available: quote.available,
        affordable: quote.affordable(),
        shortfall: quote.shortfall(),
        max_affordable: quote.max_affordable(),
        runway_secs: quote.runway_secs,
        price_version: quote
            .price_version
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

/// The client side of `tower_credits.v1.Credits`, over a tonic `Channel` or any gRPC
/// transport. Send the caller's credentials (`authorization: Bearer <key>`) in each
/// request's metadata, as on a paid call.
#[derive(Clone)]
pub struct CreditsClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> fmt::Debug for CreditsClient<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditsClient").finish_non_exhaustive()
    }
}

impl<T> CreditsClient<T>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    /// A client over `transport` (such as a `tonic::transport::Channel`).
    pub fn new(transport: T) -> Self {
        Self {
            inner: tonic::client::Grpc::new(transport),
        }
    }

    /// A client whose requests go to `origin` (for a transport that needs absolute URIs).
    pub fn with_origin(transport: T, origin: http::Uri) -> Self {
        Self {
            inner: tonic::client::Grpc::with_origin(transport, origin),
        }
    }

    /// What a call of `request.method` would cost the caller, without running it.
    pub async fn quote(
        &mut self,
        request: impl tonic::IntoRequest<QuoteRequest>,
    ) -> Result<Response<QuoteReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.into().to_string()))?;
        let path = http::uri::PathAndQuery::from_static(QUOTE);
        let codec = ProstCodec::<QuoteRequest, QuoteReply>::default();
        self.inner.unary(request.into_request(), path, codec).await
    }

    /// The caller's balance and spend by route.
    pub async fn readout(
        &mut self,
        request: impl tonic::IntoRequest<ReadoutRequest>,
    ) -> Result<Response<ReadoutReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.into().to_string()))?;
        let path = http::uri::PathAndQuery::from_static(READOUT);
        let codec = ProstCodec::<ReadoutRequest, ReadoutReply>::default();
        self.inner.unary(request.into_request(), path, codec).await
    }
}
