use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{sleep, Instant, Sleep};
use tower_service::Service;

use crate::account::Unauthorized;
use crate::api_key::ApiKeyHash;
use crate::charge::Charge;
use crate::ledger::{
    AccountId, HoldId, Insufficient, Ledger, LedgerError, Reserve, ReserveOutcome,
};
use crate::ledger::{Balance, BoxLedgerFuture};
use crate::outage::{OutagePolicy, Stats};
use crate::wire::headers::{InvalidHeader, Thresholds};
use crate::wire::quote::Quote;
use crate::wire::{grpc, headers, problem};

use super::body::{BodySettle, ResponseBody};
use super::classify::{Protocol, Verdict};
use super::config::{BillingErrorKind, Shared};
use super::grpc_web::TrailerScanner;
use super::guard::{End, HoldCtx, HoldGuard};
use super::lookups::{Answer, Follower, Lookup, LookupLead};
use super::settle::Settler;

pin_project! {
    /// Response future of a [`CreditService`](crate::CreditService).
    ///
    /// A state machine without boxing: look up the API key (only on a cache miss), reserve,
    /// call the inner service, settle at the response head or hand the hold to the body.
    /// Each state owns what it needs. Dropping it before the response refunds the hold
    /// (unless the handler already set a cost on its [`Charge`]); a panic in the inner
    /// service refunds the hold and then keeps unwinding.
    pub struct ResponseFuture<S, ReqBody, L>
    where
        S: Service<Request<ReqBody>>,
        L: Ledger,
    {
        #[pin]
        state: State<S::Future, ReqBody, L>,
        inner: S,
        shared: Arc<Shared<L>>,
        protocol: Protocol,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateOwned]
    enum State<F, ReqBody, L: Ledger> {
        LookUp {
            fut: L::Future<Option<AccountId>>,
            hash: ApiKeyHash,
            // Other requests for this key wait for this lookup; dropped once it is cached.
            lead: LookupLead,
            req: Request<ReqBody>,
            billing: Billing,
        },
        AwaitLookUp {
            wait: Follower,
            hash: ApiKeyHash,
            req: Request<ReqBody>,
            billing: Billing,
        },
        Reserve {
            fut: L::Future<ReserveOutcome>,
            req: Request<ReqBody>,
            billing: Billing,
            account: AccountId,
        },
        Call {
            #[pin]
            fut: F,
            #[pin]
            renew: Sleep,
            guard: HoldGuard,
            // When the hold was placed: the lifetime cap counts from here.
            started: Instant,
            // When the hold expires unless renewed.
            expires: Instant,
        },
        PassThrough { #[pin] fut: F },
        Quote {
            fut: BoxLedgerFuture<Balance>,
            min_price: Option<u64>,
            amount: u64,
        },
        Refused { refusal: Refusal },
        Done,
    }
}

/// What is being billed, carried from `call` to the reserve.
pub(crate) struct Billing {
    hold_id: HoldId,
    amount: u64,
    /// A ranged route: hold what the account can afford, down to this.
    min_amount: Option<u64>,
    route: Option<Arc<str>>,
    intent: Intent,
}

/// What the request wants once its account is known.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Intent {
    /// Hold `amount` and run the call.
    Hold,
    /// Answer what the call would cost, without running it.
    Quote { min_price: Option<u64> },
    /// Run the call with nothing held: the handler finds the `AccountId` in the extensions.
    Authenticate,
}

impl Billing {
    /// Lets the hold shrink to what the account can afford, down to `least`.
    pub(crate) fn min_amount(mut self, least: Option<u64>) -> Self {
        self.min_amount = least.filter(|&least| least < self.amount);
        self
    }
}

impl Intent {
    pub(crate) fn is_quote(self) -> bool {
        matches!(self, Intent::Quote { .. })
    }
}

impl Billing {
    pub(crate) fn new(amount: u64, route: Option<Arc<str>>, intent: Intent) -> Self {
        Self {
            hold_id: HoldId::generate(),
            amount,
            min_amount: None,
            route,
            intent,
        }
    }
}

/// A refusal, built into a response once the response body type is known.
pub(crate) enum Refusal {
    Unauthorized(Unauthorized),
    /// Not enough credits for even the least the call runs with; and the full price.
    Insufficient(AccountId, Insufficient, u64),
    TooManyHolds(u64),
    Unavailable,
    /// Billing failed on our side (not an outage): `500`.
    BillingError,
    /// Too many unknown keys being looked up.
    LedgerBusy,
    /// The handler ran past the hold lifetime cap and was cancelled.
    LifetimeExceeded(std::time::Duration),
    /// A billing request header the layer reads is malformed.
    InvalidHeader(InvalidHeader),
    /// The caller's spend cap is below the least the route runs with.
    MaxCostExceeded {
        price: u64,
        min_price: Option<u64>,
        max_cost: u64,
    },
    /// A quote, though the ledger cannot report balances.
    QuotesUnsupported,
    /// Not a refusal: the answer to a quote of a free route.
    FreeQuote,
}

impl<S, ReqBody, L> fmt::Debug for ResponseFuture<S, ReqBody, L>
where
    S: Service<Request<ReqBody>>,
    L: Ledger,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqBody, L> ResponseFuture<S, ReqBody, L>
where
    S: Service<Request<ReqBody>>,
    L: Ledger,
{
    fn new(
        shared: Arc<Shared<L>>,
        inner: S,
        protocol: Protocol,
        state: State<S::Future, ReqBody, L>,
    ) -> Self {
        Self {
            state,
            inner,
            shared,
            protocol,
        }
    }

    /// Calls the inner service with nothing held: a free route, or fail open.
    pub(crate) fn pass_through(
        shared: Arc<Shared<L>>,
        mut inner: S,
        protocol: Protocol,
        req: Request<ReqBody>,
    ) -> Self {
        let fut = inner.call(req);
        Self::new(shared, inner, protocol, State::PassThrough { fut })
    }

    pub(crate) fn refused(
        shared: Arc<Shared<L>>,
        inner: S,
        protocol: Protocol,
        refusal: Refusal,
    ) -> Self {
        Self::new(shared, inner, protocol, State::Refused { refusal })
    }

    /// The ledger is unreachable: refuse (fail closed) or serve unbilled (fail open).
    pub(crate) fn outage(
        shared: Arc<Shared<L>>,
        inner: S,
        protocol: Protocol,
        mut req: Request<ReqBody>,
        account: Option<AccountId>,
        amount: u64,
    ) -> Self {
        Stats::add(&shared.stats.outages, 1);
        if serves_unbilled(shared.outage, account.as_ref()) {
            serve_unbilled(&shared, &mut req, account, amount);
            Self::pass_through(shared, inner, protocol, req)
        } else {
            Self::refused(shared, inner, protocol, Refusal::Unavailable)
        }
    }

    pub(crate) fn reserve(
        shared: Arc<Shared<L>>,
        inner: S,
        protocol: Protocol,
        req: Request<ReqBody>,
        account: AccountId,
        billing: Billing,
    ) -> Self {
        let mut inner = inner;
        let state = after_account(&shared, &mut inner, req, billing, account);
        Self::new(shared, inner, protocol, state)
    }

    pub(crate) fn look_up(
        shared: Arc<Shared<L>>,
        inner: S,
        protocol: Protocol,
        req: Request<ReqBody>,
        (hash, lead): (ApiKeyHash, LookupLead),
        billing: Billing,
    ) -> Self {
        let fut = shared.ledger.lookup_api_key(&hash);
        let state = State::LookUp {
            fut,
            hash,
            lead,
            req,
            billing,
        };
        Self::new(shared, inner, protocol, state)
    }

    /// Another request is looking this key up: wait for its answer in the cache.
    pub(crate) fn await_look_up(
        shared: Arc<Shared<L>>,
        inner: S,
        protocol: Protocol,
        req: Request<ReqBody>,
        (hash, wait): (ApiKeyHash, Follower),
        billing: Billing,
    ) -> Self {
        let state = State::AwaitLookUp {
            wait,
            hash,
            req,
            billing,
        };
        Self::new(shared, inner, protocol, state)
    }
}

/// Once the account is known: hold (the usual case), quote, or pass with nothing held.
fn after_account<S, ReqBody, L>(
    shared: &Shared<L>,
    inner: &mut S,
    mut req: Request<ReqBody>,
    billing: Billing,
    account: AccountId,
) -> State<S::Future, ReqBody, L>
where
    S: Service<Request<ReqBody>>,
    L: Ledger,
{
    match billing.intent {
        Intent::Hold => {
            let fut = reserve_call(shared, &account, &billing);
            State::Reserve {
                fut,
                req,
                billing,
                account,
            }
        }
        Intent::Quote { min_price } => match shared.ledger.reports() {
            Some(reports) => State::Quote {
                fut: reports.balance_boxed(&account),
                min_price,
                amount: billing.amount,
            },
            None => State::Refused {
                refusal: Refusal::QuotesUnsupported,
            },
        },
        Intent::Authenticate => {
            req.extensions_mut().insert(account);
            State::PassThrough {
                fut: inner.call(req),
            }
        }
    }
}

fn reserve_call<L: Ledger>(
    shared: &Shared<L>,
    account: &AccountId,
    billing: &Billing,
) -> L::Future<ReserveOutcome> {
    let mut reserve =
        Reserve::new(account.clone(), billing.hold_id.clone(), billing.amount).ttl(shared.hold_ttl);
    if let Some(least) = billing.min_amount {
        reserve = reserve.min_amount(least);
    }
    if let Some(route) = &billing.route {
        reserve = reserve.route(route.clone());
    }
    shared.ledger.reserve(reserve)
}

/// Counts a request served unbilled and gives its handler a `Charge` that holds nothing.
fn serve_unbilled<L: Ledger, B>(
    shared: &Shared<L>,
    req: &mut Request<B>,
    account: Option<AccountId>,
    amount: u64,
) {
    tracing::warn!(account = ?account.as_ref().map(AccountId::as_str), amount, "ledger unreachable: serving unbilled (fail open)");
    Stats::add(&shared.stats.served_unbilled, 1);
    if let Some(account) = &account {
        req.extensions_mut()
            .insert(Charge::unbilled(account.clone(), amount));
    }
    shared.unbilled.record(account, amount);
}

/// What to do after a failed ledger call: logged in full here, while the caller only
/// learns that billing is unavailable.
enum AfterError {
    Refuse(Refusal),
    ServeUnbilled,
}

/// Whether a request may be served unbilled during an outage: its account must be known,
/// unless the user chose to serve unverified keys too.
fn serves_unbilled(policy: OutagePolicy, account: Option<&AccountId>) -> bool {
    match policy {
        OutagePolicy::FailOpenAnyKey => true,
        OutagePolicy::FailOpen => account.is_some(),
        _ => false,
    }
}

/// Records a ledger answer in `breaker`: only an outage counts against it; an error that is
/// not an outage (a bug, corrupt state) says nothing about the ledger's health.
fn record<T>(breaker: &crate::outage::Breaker, answer: &Result<T, LedgerError>) {
    match answer {
        Ok(_) => breaker.record(true),
        Err(error) if error.is_unavailable() => breaker.record(false),
        Err(_) => {}
    }
}

fn ledger_failed<L: Ledger, B>(
    shared: &Shared<L>,
    req: &mut Request<B>,
    error: &LedgerError,
    account: Option<&AccountId>,
    amount: u64,
) -> AfterError {
    if !error.is_unavailable() {
        // Never retried, never served unbilled: a bug does not heal by waiting.
        shared.billing_error(BillingErrorKind::Ledger, error);
        return AfterError::Refuse(Refusal::BillingError);
    }
    tracing::error!(%error, "ledger unreachable");
    Stats::add(&shared.stats.outages, 1);
    if serves_unbilled(shared.outage, account) {
        serve_unbilled(shared, req, account.cloned(), amount);
        AfterError::ServeUnbilled
    } else {
        AfterError::Refuse(Refusal::Unavailable)
    }
}

impl<S, ReqBody, L, ResBody> Future for ResponseFuture<S, ReqBody, L>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
    L: Ledger,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared: &Arc<Shared<L>> = this.shared;
        loop {
            match this.state.as_mut().project() {
                StateProj::PassThrough { fut } => {
                    let response = ready!(fut.poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(response.map(|r| r.map(ResponseBody::inner)));
                }
                StateProj::LookUp { fut, hash, .. } => {
                    let found = ready!(Pin::new(fut).poll(cx));
                    let hash = *hash;
                    record(&shared.lookups.breaker, &found);
                    let StateOwned::LookUp {
                        mut req,
                        billing,
                        lead,
                        ..
                    } = this.state.as_mut().project_replace(State::Done)
                    else {
                        unreachable!("the state matched LookUp")
                    };
                    if let Ok(account) = &found {
                        shared.resolver.remember(hash, account.clone());
                    }
                    lead.answer(match &found {
                        Ok(account) => Answer::Found(account.clone()),
                        Err(error) if error.is_unavailable() => Answer::Outage,
                        Err(_) => Answer::Error,
                    });
                    let next = match found {
                        Ok(Some(account)) => {
                            after_account(shared, this.inner, req, billing, account)
                        }
                        Ok(None) => State::Refused {
                            refusal: Refusal::Unauthorized(Unauthorized::UnknownKey),
                        },
                        // A quote never runs the call, so it is never served unbilled.
                        Err(error) if billing.intent.is_quote() => {
                            let refusal = match ledger_failed(shared, &mut req, &error, None, 0) {
                                AfterError::Refuse(refusal) => refusal,
                                AfterError::ServeUnbilled => Refusal::Unavailable,
                            };
                            State::Refused { refusal }
                        }
                        Err(error) => {
                            match ledger_failed(shared, &mut req, &error, None, billing.amount) {
                                AfterError::Refuse(refusal) => State::Refused { refusal },
                                AfterError::ServeUnbilled => State::PassThrough {
                                    fut: this.inner.call(req),
                                },
                            }
                        }
                    };
                    this.state.set(next);
                }
                StateProj::AwaitLookUp { wait, hash, .. } => {
                    let answer = ready!(wait.as_mut().poll(cx));
                    let hash = *hash;
                    let StateOwned::AwaitLookUp {
                        mut req, billing, ..
                    } = this.state.as_mut().project_replace(State::Done)
                    else {
                        unreachable!("the state matched AwaitLookUp")
                    };
                    let next = match answer {
                        Answer::Found(Some(account)) => {
                            after_account(shared, this.inner, req, billing, account)
                        }
                        Answer::Found(None) => State::Refused {
                            refusal: Refusal::Unauthorized(Unauthorized::UnknownKey),
                        },
                        Answer::Error => {
                            Stats::add(&shared.stats.billing_errors, 1);
                            State::Refused {
                                refusal: Refusal::BillingError,
                            }
                        }
                        Answer::Outage => {
                            Stats::add(&shared.stats.outages, 1);
                            if serves_unbilled(shared.outage, None) && !billing.intent.is_quote() {
                                serve_unbilled(shared, &mut req, None, billing.amount);
                                State::PassThrough {
                                    fut: this.inner.call(req),
                                }
                            } else {
                                State::Refused {
                                    refusal: Refusal::Unavailable,
                                }
                            }
                        }
                        // The request that was looking the key up went away: look again.
                        Answer::Abandoned => match shared.lookups.begin(hash) {
                            Lookup::Lead(lead) => State::LookUp {
                                fut: shared.ledger.lookup_api_key(&hash),
                                hash,
                                lead,
                                req,
                                billing,
                            },
                            Lookup::Follow(wait) => State::AwaitLookUp {
                                wait,
                                hash,
                                req,
                                billing,
                            },
                            Lookup::Busy => {
                                Stats::add(&shared.stats.key_lookups_shed, 1);
                                State::Refused {
                                    refusal: Refusal::LedgerBusy,
                                }
                            }
                        },
                    };
                    this.state.set(next);
                }
                StateProj::Reserve { fut, .. } => {
                    let outcome = ready!(Pin::new(fut).poll(cx));
                    record(&shared.breaker, &outcome);
                    let StateOwned::Reserve {
                        mut req,
                        billing,
                        account,
                        ..
                    } = this.state.as_mut().project_replace(State::Done)
                    else {
                        unreachable!("the state matched Reserve")
                    };
                    let refusal = match outcome {
                        Ok(ReserveOutcome::Held(held)) => {
                            Stats::add(&shared.stats.holds, 1);
                            let charge = Charge::new(account, billing.hold_id, held.amount);
                            let hold = HoldCtx {
                                charge: charge.clone(),
                                available: held.available,
                                thresholds: Thresholds::new(
                                    held.thresholds,
                                    shared.low_balance_threshold,
                                ),
                                runway_secs: held.runway_secs,
                            };
                            let settler: Arc<dyn Settler> = shared.clone();
                            let guard = HoldGuard::new(settler, hold);
                            req.extensions_mut().insert(charge);
                            let fut = this.inner.call(req);
                            let started = Instant::now();
                            let renew = sleep(shared.hold_ttl / 3);
                            let expires = started + shared.hold_ttl;
                            this.state.set(State::Call {
                                fut,
                                renew,
                                guard,
                                started,
                                expires,
                            });
                            continue;
                        }
                        Ok(ReserveOutcome::Insufficient(refusal)) => {
                            if let Some(events) = &shared.events {
                                events.deliver(refusal.events.iter().cloned());
                            }
                            Refusal::Insufficient(account, refusal, billing.amount)
                        }
                        Ok(ReserveOutcome::UnknownAccount) => Refusal::Insufficient(
                            account,
                            Insufficient::new(billing.min_amount.unwrap_or(billing.amount), 0, 0),
                            billing.amount,
                        ),
                        Ok(ReserveOutcome::TooManyHolds { limit }) => Refusal::TooManyHolds(limit),
                        Ok(other) => {
                            // A fresh hold id cannot be closed already: a store bug, fail closed.
                            let detail = format!("reserve of a fresh hold id answered {other:?}");
                            shared.billing_error(BillingErrorKind::Ledger, &detail);
                            Refusal::BillingError
                        }
                        Err(error) => match ledger_failed(
                            shared,
                            &mut req,
                            &error,
                            Some(&account),
                            billing.amount,
                        ) {
                            AfterError::Refuse(refusal) => refusal,
                            AfterError::ServeUnbilled => {
                                let fut = this.inner.call(req);
                                this.state.set(State::PassThrough { fut });
                                continue;
                            }
                        },
                    };
                    this.state.set(State::Refused { refusal });
                }
                StateProj::Call {
                    fut,
                    mut renew,
                    guard,
                    started,
                    expires,
                } => {
                    let polled = catch_unwind(AssertUnwindSafe(|| fut.poll(cx)));
                    let response = match polled {
                        Ok(Poll::Pending) => {
                            let mut too_long = false;
                            while renew.as_mut().poll(cx).is_ready() {
                                let now = Instant::now();
                                if now >= *started + shared.max_hold_lifetime {
                                    too_long = true;
                                    break;
                                }
                                // A third of the TTL ahead: the keeper retries a failed
                                // renewal until the hold would expire.
                                guard.extend(*expires);
                                *expires = now + shared.hold_ttl;
                                renew.as_mut().reset(now + shared.hold_ttl / 3);
                            }
                            if !too_long {
                                return Poll::Pending;
                            }
                            // Past the lifetime cap: cancel the handler and refund.
                            let StateOwned::Call { guard, .. } =
                                this.state.as_mut().project_replace(State::Done)
                            else {
                                unreachable!("the state matched Call")
                            };
                            guard.settle(End::Error);
                            tracing::warn!(lifetime = ?shared.max_hold_lifetime, "handler ran past the hold lifetime cap; cancelled and refunded");
                            let refusal = Refusal::LifetimeExceeded(shared.max_hold_lifetime);
                            return Poll::Ready(Ok(refuse(shared, *this.protocol, refusal)));
                        }
                        Ok(Poll::Ready(response)) => Ok(response),
                        Err(panic) => Err(panic),
                    };
                    let expires = *expires;
                    let StateOwned::Call { guard, .. } =
                        this.state.as_mut().project_replace(State::Done)
                    else {
                        unreachable!("the state matched Call")
                    };
                    return Poll::Ready(match response {
                        Err(panic) => {
                            guard.settle(End::Error);
                            resume_unwind(panic);
                        }
                        Ok(Err(error)) => {
                            guard.settle(End::Error);
                            Err(error)
                        }
                        Ok(Ok(response)) => {
                            Ok(finish(shared, *this.protocol, guard, response, expires))
                        }
                    });
                }
                StateProj::Quote {
                    fut,
                    min_price,
                    amount,
                } => {
                    let balance = ready!(fut.as_mut().poll(cx));
                    let (min_price, amount) = (*min_price, *amount);
                    record(&shared.breaker, &balance);
                    let balance = match balance {
                        Ok(balance) => balance,
                        // Never topped up or configured: nothing to spend.
                        Err(LedgerError::UnknownAccount) => Balance::default(),
                        Err(error) => {
                            let mut req = Request::new(());
                            let refusal = match ledger_failed(shared, &mut req, &error, None, 0) {
                                AfterError::Refuse(refusal) => refusal,
                                // A quote is never served unbilled: there is nothing to serve.
                                AfterError::ServeUnbilled => Refusal::Unavailable,
                            };
                            this.state.set(State::Refused { refusal });
                            continue;
                        }
                    };
                    this.state.set(State::Done);
                    let quote = Quote {
                        price: amount,
                        min_price,
                        available: Some(balance.available),
                        credit_limit: balance.credit_limit,
                        thresholds: Thresholds::new(
                            balance.thresholds,
                            shared.low_balance_threshold,
                        ),
                        runway_secs: balance.runway_secs,
                        price_version: shared.pricing.version_header().cloned(),
                    };
                    let response = quote.into_response(&shared.headers);
                    return Poll::Ready(Ok(response.map(ResponseBody::refusal)));
                }
                StateProj::Refused { .. } => {
                    let StateOwned::Refused { refusal } =
                        this.state.as_mut().project_replace(State::Done)
                    else {
                        unreachable!("the state matched Refused")
                    };
                    return Poll::Ready(Ok(refuse(shared, *this.protocol, refusal)));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// Writes a refusal the way the route's protocol is refused: never chosen by a header.
fn refuse<L: Ledger, B>(
    shared: &Shared<L>,
    protocol: Protocol,
    refusal: Refusal,
) -> Response<ResponseBody<B>> {
    let ctx = shared.problem_ctx(protocol.is_grpc());
    let mut response = match refusal {
        Refusal::Unauthorized(why) => problem::unauthorized(&ctx, &why),
        Refusal::Insufficient(account, i, price) => {
            problem::insufficient(&ctx, &account, &i, price)
        }
        Refusal::TooManyHolds(limit) => problem::too_many_holds(&ctx, limit),
        Refusal::Unavailable => problem::unavailable(&ctx),
        Refusal::LifetimeExceeded(lifetime) => problem::lifetime_exceeded(&ctx, lifetime),
        Refusal::BillingError => problem::billing_error(&ctx),
        Refusal::LedgerBusy => problem::ledger_busy(&ctx),
        Refusal::InvalidHeader(bad) => {
            problem::invalid_header(&ctx, bad.name.as_str(), bad.expected)
        }
        Refusal::MaxCostExceeded {
            price,
            min_price,
            max_cost,
        } => problem::max_cost_exceeded(&ctx, price, min_price, max_cost),
        Refusal::QuotesUnsupported => problem::quotes_unsupported(&ctx),
        Refusal::FreeQuote => Quote {
            price_version: shared.pricing.version_header().cloned(),
            ..Quote::default()
        }
        .into_response(&shared.headers),
    };
    if protocol == Protocol::GrpcWeb {
        // A trailers-only gRPC-Web response: the status in the headers, an empty body.
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc-web+proto"),
        );
    }
    response.map(ResponseBody::refusal)
}

/// The response head is out: settle now and say so in headers, or hand the hold to the
/// body when the verdict or the cost comes at its end.
fn finish<L: Ledger, B: http_body::Body>(
    shared: &Shared<L>,
    protocol: Protocol,
    mut guard: HoldGuard,
    response: Response<B>,
    expires: Instant,
) -> Response<ResponseBody<B>> {
    let (mut parts, body) = response.into_parts();
    let names = &shared.headers;
    if let Some(version) = shared.pricing.version_header() {
        parts
            .headers
            .insert(names.price_version.clone(), version.clone());
    }
    if protocol == Protocol::Http && grpc::is_grpc(&parts.headers) {
        shared.warn_grpc_response_on_http();
    }
    let classifier = shared.classifiers.get(protocol).clone();
    let mut verdict = classifier.classify_head(parts.status, &parts.headers);
    if protocol.is_grpc() && parts.status == http::StatusCode::OK && !body.is_end_stream() {
        // A gRPC status in the head is final only for a trailers-only response; with a
        // body to come, the trailers say how it ended.
        verdict = Verdict::Unknown;
    }
    let hold = guard.hold().clone();
    let now = match verdict {
        Verdict::Failure => Some(End::Failure),
        Verdict::Success if !hold.charge.is_deferred() || body.is_end_stream() => {
            Some(End::Success)
        }
        // hyper will not poll a body that says it ended: its end is now.
        Verdict::Unknown if body.is_end_stream() => {
            Some(End::at_body_end(classifier.classify_end(None)))
        }
        Verdict::Success | Verdict::Unknown => None,
    };
    if let Some(end) = now {
        let cost = guard.settle(end).map_or(0, |d| hold.cost_of(d));
        headers::write_settled(
            &mut parts.headers,
            names,
            hold.charge.reserved(),
            cost,
            hold.remaining(cost),
            &hold.thresholds,
            hold.runway_secs,
        );
        return Response::from_parts(parts, ResponseBody::inner(body));
    }
    // Settled at body end: the head carries the hold and a lower bound of the balance.
    guard.head_sent();
    parts
        .headers
        .insert(names.reserved.clone(), headers::int(hold.charge.reserved()));
    parts
        .headers
        .insert(names.remaining.clone(), headers::int(hold.available));
    parts.headers.insert(
        names.hold_id.clone(),
        http::HeaderValue::from_str(hold.charge.hold_id().as_str()).expect("hold ids are ASCII"),
    );
    headers::write_warning(&mut parts.headers, names, hold.available, &hold.thresholds);
    headers::write_runway(&mut parts.headers, names, hold.runway_secs);
    let scanner = (protocol == Protocol::GrpcWeb)
        .then(|| TrailerScanner::for_response(&parts.headers))
        .flatten();
    let settle = BodySettle::new(guard, verdict, classifier, scanner, expires);
    Response::from_parts(parts, ResponseBody::settling(body, settle))
}
