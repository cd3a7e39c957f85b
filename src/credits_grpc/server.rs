//! [`CreditsServer`]: the server side, answering from the ledger and the layer's pricing.

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

use super::{BoxError, QuoteReply, QuoteRequest, ReadoutReply, ReadoutRequest, RouteSpend};
use super::{QUOTE, READOUT, SERVICE};
use crate::amount::MAX_AMOUNT;
use crate::ledger::{AccountId, Balance, LedgerError, LedgerReports, Usage};
use crate::pricing::{Price, Pricing};
use crate::readout::average_cost;
use crate::wire::headers::Thresholds;
use crate::wire::quote::Quote;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The server side of `tower_credits.v1.Credits`; see the [module docs](super).
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
