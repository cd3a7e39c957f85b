use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::body::ResponseBody;
use super::config::{BillingErrorKind, Shared};
use super::future::{Billing, Intent, Refusal, ResponseFuture};
use super::layer::CreditLayer;
use super::lookups::Lookup;
use crate::account::{RequestView, Resolution};
use crate::amount::MAX_AMOUNT;
use crate::ledger::Ledger;
use crate::outage::Stats;
use crate::pricing::Price;
use crate::wire::headers::CallerAsks;

/// The service made by a [`CreditLayer`]: bills each request, then calls `S`.
pub struct CreditService<S, L: Ledger> {
    inner: S,
    shared: Arc<Shared<L>>,
}

impl<S: Clone, L: Ledger> Clone for CreditService<S, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, L: Ledger> fmt::Debug for CreditService<S, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, L: Ledger> CreditService<S, L> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: &CreditLayer<L>) -> Self {
        tower_layer::Layer::layer(layer, inner)
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<L>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, L, ReqBody, ResBody> Service<Request<ReqBody>> for CreditService<S, L>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: http_body::Body,
    L: Ledger,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, L>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The ready service is the one to call: keep it and leave a fresh clone behind. See
        // https://docs.rs/tower/latest/tower/trait.Service.html#be-careful-when-cloning-inner-services
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = &self.shared;

        let priced = shared
            .pricing
            .price(req.method(), req.uri().path(), matched_path(&req));
        // Server configuration, never the request's content type.
        let protocol = priced.protocol.unwrap_or(shared.protocol);
        // What the caller asks of billing: a quote, a spend cap.
        let asks = match CallerAsks::read(req.headers(), &shared.headers) {
            Ok(asks) => asks,
            Err(bad) => {
                let refusal = Refusal::InvalidHeader(bad);
                return ResponseFuture::refused(shared.clone(), inner, protocol, refusal);
            }
        };
        let (amount, intent) = match priced.price {
            Price::Free if asks.quote => {
                let refusal = Refusal::FreeQuote;
                return ResponseFuture::refused(shared.clone(), inner, protocol, refusal);
            }
            Price::Free => {
                return ResponseFuture::pass_through(shared.clone(), inner, protocol, req)
            }
            Price::Authenticated if asks.quote => {
                let refusal = Refusal::FreeQuote;
                return ResponseFuture::refused(shared.clone(), inner, protocol, refusal);
            }
            Price::Authenticated => (0, Intent::Authenticate),
            Price::Hold(amount) if amount > MAX_AMOUNT => {
                // A pricing closure's bug, not an outage: no ledger call, no retry.
                let detail = format!("price {amount} for {} {}", req.method(), req.uri().path());
                shared.billing_error(BillingErrorKind::Pricing, &detail);
                let refusal = Refusal::BillingError;
                return ResponseFuture::refused(shared.clone(), inner, protocol, refusal);
            }
            Price::Hold(price) => {
                // A cap never makes a route cheaper than the least it runs with.
                let least = priced.min.unwrap_or(price);
                let amount = match asks.max_cost {
                    Some(max_cost) if max_cost < least => {
                        let refusal = Refusal::MaxCostExceeded {
                            price,
                            min_price: priced.min,
                            max_cost,
                        };
                        return ResponseFuture::refused(shared.clone(), inner, protocol, refusal);
                    }
                    Some(max_cost) => price.min(max_cost),
                    None => price,
                };
                let intent = if asks.quote {
                    Intent::Quote {
                        min_price: priced.min,
                    }
                } else {
                    Intent::Hold
                };
                (amount, intent)
            }
        };
        let view = RequestView {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        };
        let account = match shared.resolver.resolve(&view) {
            Resolution::Refused(why) => {
                let refusal = Refusal::Unauthorized(why);
                return ResponseFuture::refused(shared.clone(), inner, protocol, refusal);
            }
            Resolution::Account(account) => Ok(account),
            Resolution::LookUp(hash) => Err(hash),
        };
        // Key lookups have a breaker of their own: a flood of unknown keys against a slow
        // ledger must not fail billing for callers whose keys are cached.
        let allowed = match &account {
            // Nothing to hold, and the account is known: no ledger call to guard.
            Ok(_) if matches!(intent, Intent::Authenticate) => true,
            Ok(_) => shared.breaker.allow(),
            // A lookup's answer goes to the lookups' breaker: let that one decide, so the
            // billing breaker's probe goes to a request whose answer it will hear.
            Err(_) => shared.lookups.breaker.allow(),
        };
        if !allowed {
            // The ledger is known to be down: answer now instead of waiting out a timeout.
            Stats::add(&shared.stats.breaker_fast_failures, 1);
            if intent.is_quote() {
                // A quote never runs the call: nothing to serve unbilled.
                Stats::add(&shared.stats.outages, 1);
                let refusal = Refusal::Unavailable;
                return ResponseFuture::refused(shared.clone(), inner, protocol, refusal);
            }
            let account = account.ok();
            return ResponseFuture::outage(shared.clone(), inner, protocol, req, account, amount);
        }
        let billing = Billing::new(amount, priced.route, intent).min_amount(priced.min);
        match account {
            Ok(account) => {
                ResponseFuture::reserve(shared.clone(), inner, protocol, req, account, billing)
            }
            Err(hash) => match shared.lookups.begin(hash) {
                Lookup::Lead(lead) => {
                    let key = (hash, lead);
                    ResponseFuture::look_up(shared.clone(), inner, protocol, req, key, billing)
                }
                Lookup::Follow(wait) => {
                    let key = (hash, wait);
                    ResponseFuture::await_look_up(
                        shared.clone(),
                        inner,
                        protocol,
                        req,
                        key,
                        billing,
                    )
                }
                Lookup::Busy => {
                    Stats::add(&shared.stats.key_lookups_shed, 1);
                    let refusal = Refusal::LedgerBusy;
                    ResponseFuture::refused(shared.clone(), inner, protocol, refusal)
                }
            },
        }
    }
}

#[cfg(feature = "axum")]
fn matched_path<B>(req: &Request<B>) -> Option<&str> {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str)
}

#[cfg(not(feature = "axum"))]
fn matched_path<B>(_: &Request<B>) -> Option<&str> {
    None
}
