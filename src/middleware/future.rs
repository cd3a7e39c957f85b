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
use crate::outage::{OutagePolicy, Stats};
use crate::wire::{grpc, headers, problem};

use super::body::{BodySettle, ResponseBody};
use super::config::Shared;
use super::guard::{Decision, HoldCtx, HoldGuard};
use super::settle::Settler;

pin_project! {
    /// Response future of a [`CreditService`](crate::CreditService).
    ///
    /// A state machine without boxing: look up the API key (only on a cache miss), reserve,
    /// call the inner service, settle at the response head or hand the hold to the body.
    /// Dropping it before the response refunds the hold; a panic in the inner service
    /// refunds the hold and then keeps unwinding.
    pub struct ResponseFuture<S, ReqBody, L>
    where
        S: Service<Request<ReqBody>>,
        L: Ledger,
    {
        #[pin]
        state: State<S::Future, L>,
        shared: Option<Arc<Shared<L>>>,
        inner: Option<S>,
        req: Option<Request<ReqBody>>,
        billing: Option<Billing>,
        grpc: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, L: Ledger> {
        LookUp { fut: L::Future<Option<AccountId>>, hash: ApiKeyHash },
        Reserve { fut: L::Future<ReserveOutcome> },
        Call {
            #[pin]
            fut: F,
            #[pin]
            renew: Sleep,
            guard: Option<HoldGuard>,
        },
        PassThrough { #[pin] fut: F },
        Refused { refusal: Option<Refusal> },
        Done,
    }
}

/// What is being billed, carried from `call` to the reserve.
struct Billing {
    account: Option<AccountId>,
    hold_id: HoldId,
    amount: u64,
    route: Option<Arc<str>>,
    grpc: bool,
}

impl Billing {
    fn new(account: Option<AccountId>, amount: u64, route: Option<Arc<str>>, grpc: bool) -> Self {
        Self {
            account,
            hold_id: HoldId::generate(),
            amount,
            route,
            grpc,
        }
    }
}

/// A refusal, built into a response once the response body type is known.
pub(crate) enum Refusal {
    Unauthorized(Unauthorized),
    Insufficient(AccountId, Insufficient),
    TooManyHolds(u64),
    Unavailable,
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
    pub(crate) fn pass_through(mut inner: S, req: Request<ReqBody>) -> Self {
        Self {
            state: State::PassThrough {
                fut: inner.call(req),
            },
            shared: None,
            inner: None,
            req: None,
            billing: None,
            grpc: false,
        }
    }

    pub(crate) fn refused(shared: Arc<Shared<L>>, refusal: Refusal, grpc: bool) -> Self {
        Self {
            state: State::Refused {
                refusal: Some(refusal),
            },
            shared: Some(shared),
            inner: None,
            req: None,
            billing: None,
            grpc,
        }
    }

    /// The ledger is unreachable: refuse (fail closed) or serve unbilled (fail open).
    pub(crate) fn outage(
        shared: Arc<Shared<L>>,
        inner: S,
        mut req: Request<ReqBody>,
        account: Option<AccountId>,
        amount: u64,
        grpc: bool,
    ) -> Self {
        Stats::add(&shared.stats.outages, 1);
        match shared.outage {
            OutagePolicy::FailOpen => {
                serve_unbilled(&shared, &mut req, account, amount);
                Self::pass_through(inner, req)
            }
            _ => Self::refused(shared, Refusal::Unavailable, grpc),
        }
    }

    fn start(
        shared: Arc<Shared<L>>,
        inner: S,
        req: Request<ReqBody>,
        state: State<S::Future, L>,
        billing: Billing,
    ) -> Self {
        Self {
            state,
            shared: Some(shared),
            inner: Some(inner),
            req: Some(req),
            grpc: billing.grpc,
            billing: Some(billing),
        }
    }

    pub(crate) fn reserve(
        shared: Arc<Shared<L>>,
        inner: S,
        req: Request<ReqBody>,
        account: AccountId,
        amount: u64,
        route: Option<Arc<str>>,
        grpc: bool,
    ) -> Self {
        let billing = Billing::new(Some(account), amount, route, grpc);
        let fut = reserve_call(&shared, &billing);
        Self::start(shared, inner, req, State::Reserve { fut }, billing)
    }

    pub(crate) fn look_up(
        shared: Arc<Shared<L>>,
        inner: S,
        req: Request<ReqBody>,
        hash: ApiKeyHash,
        amount: u64,
        route: Option<Arc<str>>,
        grpc: bool,
    ) -> Self {
        let fut = shared.ledger.lookup_api_key(&hash);
        let billing = Billing::new(None, amount, route, grpc);
        Self::start(shared, inner, req, State::LookUp { fut, hash }, billing)
    }
}

fn reserve_call<L: Ledger>(shared: &Shared<L>, billing: &Billing) -> L::Future<ReserveOutcome> {
    let mut reserve = Reserve::new(
        billing.account.clone().expect("account resolved"),
        billing.hold_id.clone(),
        billing.amount,
    )
    .ttl(shared.hold_ttl);
    if let Some(route) = &billing.route {
        reserve = reserve.route(route.clone());
    }
    shared.ledger.reserve(reserve)
}

/// Counts a request served unbilled and gives its handler a `Charge` that holds nothing.
fn serve_unbilled<L, B>(
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

fn ledger_failed<L, B>(
    shared: &Shared<L>,
    req: Option<&mut Request<B>>,
    error: &LedgerError,
    account: Option<&AccountId>,
    amount: u64,
) -> AfterError {
    if !error.is_unavailable() {
        tracing::error!(%error, "ledger call failed; refusing with 503");
        return AfterError::Refuse(Refusal::Unavailable);
    }
    tracing::error!(%error, "ledger unreachable");
    Stats::add(&shared.stats.outages, 1);
    match shared.outage {
        OutagePolicy::FailOpen => {
            if let Some(req) = req {
                serve_unbilled(shared, req, account.cloned(), amount);
            }
            AfterError::ServeUnbilled
        }
        _ => AfterError::Refuse(Refusal::Unavailable),
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
        loop {
            match this.state.as_mut().project() {
                StateProj::PassThrough { fut } => {
                    let response = ready!(fut.poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(response.map(|r| r.map(ResponseBody::inner)));
                }
                StateProj::LookUp { fut, hash } => {
                    let found = ready!(Pin::new(fut).poll(cx));
                    let hash = *hash;
                    let shared = this.shared.as_ref().expect("billed request");
                    let billing = this.billing.as_mut().expect("billed request");
                    shared
                        .breaker
                        .record(!found.as_ref().is_err_and(LedgerError::is_unavailable));
                    match found {
                        Ok(Some(account)) => {
                            shared.resolver.remember(hash, Some(account.clone()));
                            billing.account = Some(account);
                            let fut = reserve_call(shared, billing);
                            this.state.set(State::Reserve { fut });
                        }
                        Ok(None) => {
                            shared.resolver.remember(hash, None);
                            let refusal = Some(Refusal::Unauthorized(Unauthorized::UnknownKey));
                            this.state.set(State::Refused { refusal });
                        }
                        Err(error) => match ledger_failed(
                            shared,
                            this.req.as_mut(),
                            &error,
                            None,
                            billing.amount,
                        ) {
                            AfterError::Refuse(refusal) => this.state.set(State::Refused {
                                refusal: Some(refusal),
                            }),
                            AfterError::ServeUnbilled => {
                                let mut inner =
                                    this.inner.take().expect("service kept for the call");
                                let req = this.req.take().expect("request kept for the call");
                                this.state.set(State::PassThrough {
                                    fut: inner.call(req),
                                });
                            }
                        },
                    }
                }
                StateProj::Reserve { fut } => {
                    let outcome = ready!(Pin::new(fut).poll(cx));
                    let shared = this.shared.as_ref().expect("billed request");
                    let billing = this.billing.as_ref().expect("billed request");
                    let account = billing.account.clone().expect("account resolved");
                    shared
                        .breaker
                        .record(!outcome.as_ref().is_err_and(LedgerError::is_unavailable));
                    let refusal = match outcome {
                        Ok(ReserveOutcome::Held(held)) => {
                            Stats::add(&shared.stats.holds, 1);
                            let charge = Charge::new(account, billing.hold_id.clone(), held.amount);
                            let hold = HoldCtx {
                                charge: charge.clone(),
                                available: held.available,
                                threshold: held
                                    .low_balance_threshold
                                    .or(shared.low_balance_threshold),
                                runway_secs: held.runway_secs,
                                grpc: billing.grpc,
                            };
                            let settler: Arc<dyn Settler> = shared.clone();
                            let guard = HoldGuard::new(settler, hold);
                            let mut req = this.req.take().expect("request kept for the call");
                            req.extensions_mut().insert(charge);
                            let mut inner = this.inner.take().expect("service kept for the call");
                            let fut = inner.call(req);
                            let renew = sleep(shared.hold_ttl / 2);
                            this.state.set(State::Call {
                                fut,
                                renew,
                                guard: Some(guard),
                            });
                            continue;
                        }
                        Ok(ReserveOutcome::Insufficient(refusal)) => {
                            Refusal::Insufficient(account, refusal)
                        }
                        Err(LedgerError::UnknownAccount) => Refusal::Insufficient(
                            account,
                            Insufficient {
                                required: billing.amount,
                                available: 0,
                                credit_limit: 0,
                            },
                        ),
                        Err(LedgerError::TooManyHolds { limit }) => Refusal::TooManyHolds(limit),
                        Ok(other) => {
                            // A fresh hold id cannot be closed already: a store bug, fail closed.
                            tracing::error!(outcome = ?other, "reserve of a fresh hold id did not hold");
                            Refusal::Unavailable
                        }
                        Err(error) => {
                            match ledger_failed(
                                shared,
                                this.req.as_mut(),
                                &error,
                                Some(&account),
                                billing.amount,
                            ) {
                                AfterError::Refuse(refusal) => refusal,
                                AfterError::ServeUnbilled => {
                                    let mut inner =
                                        this.inner.take().expect("service kept for the call");
                                    let req = this.req.take().expect("request kept for the call");
                                    this.state.set(State::PassThrough {
                                        fut: inner.call(req),
                                    });
                                    continue;
                                }
                            }
                        }
                    };
                    this.state.set(State::Refused {
                        refusal: Some(refusal),
                    });
                }
                StateProj::Call {
                    fut,
                    mut renew,
                    guard,
                } => {
                    let polled = catch_unwind(AssertUnwindSafe(|| fut.poll(cx)));
                    let response = match polled {
                        Err(panic) => {
                            if let Some(mut guard) = guard.take() {
                                guard.settle(Decision::Refund);
                            }
                            resume_unwind(panic);
                        }
                        Ok(Poll::Pending) => {
                            while renew.as_mut().poll(cx).is_ready() {
                                if let Some(guard) = guard.as_ref() {
                                    guard.extend();
                                }
                                let half = this.shared.as_ref().expect("billed").hold_ttl / 2;
                                renew.as_mut().reset(Instant::now() + half);
                            }
                            return Poll::Pending;
                        }
                        Ok(Poll::Ready(response)) => response,
                    };
                    let mut guard = guard.take().expect("guard until the response");
                    let next_renewal = renew.deadline();
                    this.state.set(State::Done);
                    return Poll::Ready(match response {
                        Err(error) => {
                            guard.settle(Decision::Refund);
                            Err(error)
                        }
                        Ok(response) => {
                            let shared = this.shared.as_ref().expect("billed request");
                            Ok(finish(shared, guard, response, next_renewal))
                        }
                    });
                }
                StateProj::Refused { refusal } => {
                    let refusal = refusal.take().expect("refusal built once");
                    let shared = this.shared.as_ref().expect("billed request");
                    let ctx = shared.problem_ctx(*this.grpc);
                    this.state.set(State::Done);
                    let response = match refusal {
                        Refusal::Unauthorized(why) => problem::unauthorized(&ctx, &why),
                        Refusal::Insufficient(account, i) => {
                            problem::insufficient(&ctx, &account, &i)
                        }
                        Refusal::TooManyHolds(limit) => problem::too_many_holds(&ctx, limit),
                        Refusal::Unavailable => problem::unavailable(&ctx),
                    };
                    return Poll::Ready(Ok(response.map(ResponseBody::refusal)));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// The response head is out: settle now and say so in headers, or hand the hold to the body.
fn finish<L: Ledger, B: http_body::Body>(
    shared: &Shared<L>,
    mut guard: HoldGuard,
    response: Response<B>,
    next_renewal: Instant,
) -> Response<ResponseBody<B>> {
    let (mut parts, body) = response.into_parts();
    let hold = guard.hold().clone();
    let names = &shared.headers;
    if let Some(version) = shared.pricing.version_header() {
        parts
            .headers
            .insert(names.price_version.clone(), version.clone());
    }
    // Judged as gRPC only when the response is gRPC too: a plain HTTP route called with a
    // gRPC content type is still charged by its HTTP status.
    let grpc = hold.grpc && grpc::is_grpc(&parts.headers);
    let hold = HoldCtx { grpc, ..hold };
    guard.hold_mut().grpc = grpc;
    let success = if grpc {
        // tonic sends handler errors as trailers-only responses: status in the headers.
        grpc::grpc_status(&parts.headers).map(|code| code == 0)
    } else {
        Some((shared.success)(parts.status))
    };
    // Failures refund at once; successes settle now unless the cost grows with the body.
    let settle_at_end = success != Some(false) && (hold.charge.is_deferred() || success.is_none());
    if !settle_at_end || body.is_end_stream() {
        let success = success.unwrap_or(false);
        // Frozen before it is read, so a late `set` fails instead of going unbilled.
        hold.charge.close();
        let cost = if success { hold.charge.cost() } else { 0 };
        guard.settle(if success {
            Decision::Commit(hold.charge.actual().unwrap_or(hold.charge.reserved()))
        } else {
            Decision::Refund
        });
        headers::write_settled(
            &mut parts.headers,
            names,
            hold.charge.reserved(),
            cost,
            hold.remaining(cost),
            hold.threshold,
            hold.runway_secs,
        );
        return Response::from_parts(parts, ResponseBody::inner(body));
    }
    // Cost known at body end: the head carries the hold and a lower bound of the balance.
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
    headers::write_warning(&mut parts.headers, names, hold.available, hold.threshold);
    headers::write_runway(&mut parts.headers, names, hold.runway_secs);
    Response::from_parts(
        parts,
        ResponseBody::settling(body, BodySettle::new(guard, success, next_renewal)),
    )
}
