//! The response future: carries out the request's [plan](super::plan) — look up the key,
//! reserve, call the inner service, settle at the head or hand the hold to the body.

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{sleep_until, Instant, Sleep};
use tower_service::Service;

use super::body::ResponseBody;
use super::config::{BillingErrorKind, Shared};
use super::guard::HoldGuard;
use super::keeper::Cut;
use super::lookup::{KeyLookup, Looked};
use super::plan::{Billing, Plan};
use super::respond::{finish, quoted, refuse};
use super::settlement::End;
use super::steps::{answer, balance_read, bill, looked_up, reserved};
use crate::classify::Protocol;
use crate::ledger::{AccountId, Balance, BoxLedgerFuture, Ledger, LedgerError, ReserveOutcome};
use crate::refusal::Refusal;
use crate::wire::problem::WireResponse;

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
    pub(super) enum State<F, ReqBody, L: Ledger> {
        LookUp { lookup: KeyLookup<L>, req: Request<ReqBody>, billing: Billing },
        Reserve {
            fut: L::Future<ReserveOutcome>,
            req: Request<ReqBody>,
            billing: Billing,
            account: AccountId,
        },
        Call {
            #[pin]
            fut: F,
            // Until the first renewal is due (or the lifetime cap, if sooner); then the
            // keeper watches the hold. Made on the call's first `Pending` only: a call
            // that answers at once never touches the timer wheel.
            #[pin]
            timer: Option<Sleep>,
            guard: HoldGuard,
            // When the hold was placed: its renewal, expiry and lifetime cap follow from it
            // (see `HoldTimes`), worked out only when the call outlives a first poll.
            started: Instant,
        },
        PassThrough { #[pin] fut: F },
        Quote { fut: BoxLedgerFuture<Balance>, min_price: Option<u64>, amount: u64 },
        Answer { response: Option<WireResponse> },
        Done,
    }
}

/// What a state's poll found, applied to the state it leaves.
enum Step<R> {
    Looked(Looked),
    Reserved(Result<ReserveOutcome, LedgerError>),
    Quoted(Result<Balance, LedgerError>),
    Called(R),
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
    /// Starts carrying out `plan`.
    // Inlined into `call`: the request is moved on from here.
    #[inline(always)]
    pub(crate) fn start(
        shared: Arc<Shared<L>>,
        mut inner: S,
        protocol: Protocol,
        req: Request<ReqBody>,
        plan: Plan,
    ) -> Self {
        let state = match plan {
            Plan::Pass => {
                #[cfg(feature = "metrics")]
                shared
                    .requests
                    .count(crate::metrics::Outcome::Free, crate::metrics::Reason::Ok);
                State::PassThrough {
                    fut: inner.call(req),
                }
            }
            Plan::FreeQuote => State::Answer {
                response: Some(quoted(&shared, 0, None, None)),
            },
            Plan::Refuse(refusal) => answer(&shared, protocol, refusal),
            Plan::BadPrice(amount) => {
                // A pricing closure's bug, not an outage: no ledger call, no retry.
                let detail = format!("price {amount} for {} {}", req.method(), req.uri().path());
                shared.billing_error(BillingErrorKind::Pricing, &detail);
                answer(&shared, protocol, Refusal::BillingError)
            }
            Plan::Bill(who, billing) => bill(&shared, &mut inner, protocol, req, who, billing),
        };
        Self {
            state,
            inner,
            shared,
            protocol,
        }
    }
}

/// How the inner call ended, as the future sees it.
enum Called<R, E> {
    Response(R),
    Error(E),
    Panic(Box<dyn std::any::Any + Send>),
    /// The keeper cut the hold at the lifetime cap (it is settled).
    Cut,
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
            let step = match this.state.as_mut().project() {
                StateProj::PassThrough { fut } => {
                    let response = ready!(fut.poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(response.map(|r| r.map(ResponseBody::inner)));
                }
                StateProj::Answer { response } => {
                    let response = response.take().expect("an answer is given once");
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(response.map(ResponseBody::refusal)));
                }
                StateProj::LookUp { lookup, .. } => Step::Looked(ready!(lookup.poll(shared, cx))),
                StateProj::Reserve { fut, .. } => Step::Reserved(ready!(Pin::new(fut).poll(cx))),
                StateProj::Quote { fut, .. } => Step::Quoted(ready!(fut.as_mut().poll(cx))),
                StateProj::Call {
                    fut,
                    timer,
                    guard,
                    started,
                } => {
                    let times = HoldTimes::of(shared, *started);
                    Step::Called(ready!(poll_call(fut, timer, guard, times, cx)))
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            };
            // The one place a state is left: its owned data goes to the next.
            let (inner, protocol) = (&mut *this.inner, *this.protocol);
            let next = match (this.state.as_mut().project_replace(State::Done), step) {
                (StateOwned::LookUp { req, billing, .. }, Step::Looked(looked)) => {
                    looked_up(shared, inner, protocol, req, billing, looked)
                }
                (
                    StateOwned::Reserve {
                        req,
                        billing,
                        account,
                        ..
                    },
                    Step::Reserved(outcome),
                ) => reserved(shared, inner, protocol, (req, billing, account), outcome),
                (
                    StateOwned::Quote {
                        min_price, amount, ..
                    },
                    Step::Quoted(balance),
                ) => balance_read(shared, protocol, (min_price, amount), balance),
                (StateOwned::Call { guard, started, .. }, Step::Called(called)) => {
                    let times = HoldTimes::of(shared, started);
                    return Poll::Ready(called_back(shared, protocol, guard, times, called));
                }
                _ => unreachable!("a step is taken from the state that made it"),
            };
            this.state.set(next);
        }
    }
}

/// When a call's hold is renewed, expires and meets its lifetime cap: from when it was
/// placed and the layer's settings, worked out when asked (a call that answers at once
/// asks for none of them).
#[derive(Clone, Copy)]
struct HoldTimes {
    ttl: std::time::Duration,
    lifetime: std::time::Duration,
    started: Instant,
}

impl HoldTimes {
    fn of<L: Ledger>(shared: &Shared<L>, started: Instant) -> Self {
        Self {
            ttl: shared.hold_ttl,
            lifetime: shared.max_hold_lifetime,
            started,
        }
    }

    /// The lifetime cap.
    fn cap_at(self) -> Instant {
        self.started + self.lifetime
    }

    /// When the hold expires unless renewed.
    fn expires(self) -> Instant {
        self.started + self.ttl
    }

    /// The first renewal: a third of the TTL in, or the cap if sooner.
    fn renew_at(self) -> Instant {
        (self.started + self.ttl / 3).min(self.cap_at())
    }
}

/// Polls the inner call, keeping its hold: hands it to the keeper's watch when the first
/// renewal is due, and ends the call when the keeper cuts it at the lifetime cap.
fn poll_call<F, R, E>(
    fut: Pin<&mut F>,
    mut timer: Pin<&mut Option<Sleep>>,
    guard: &mut HoldGuard,
    times: HoldTimes,
    cx: &mut Context<'_>,
) -> Poll<Called<R, E>>
where
    F: Future<Output = Result<R, E>>,
{
    match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
        Ok(Poll::Ready(Ok(response))) => return Poll::Ready(Called::Response(response)),
        Ok(Poll::Ready(Err(error))) => return Poll::Ready(Called::Error(error)),
        Err(panic) => return Poll::Ready(Called::Panic(panic)),
        Ok(Poll::Pending) => {}
    }
    if timer.is_none() {
        timer.set(Some(sleep_until(times.renew_at())));
    }
    let mut timer = timer.as_pin_mut().expect("set above");
    let due = guard.watched().is_none() && timer.as_mut().poll(cx).is_ready();
    let cap_at = times.cap_at();
    if due && guard.watch(times.expires(), cap_at).is_none() {
        // No keeper (shut down): the cap is kept here, without renewals.
        if Instant::now() >= cap_at {
            return Poll::Ready(Called::Cut);
        }
        timer.as_mut().reset(cap_at);
        let _ = timer.as_mut().poll(cx);
    }
    if let Some(watch) = guard.watched() {
        watch.register(cx.waker());
        if watch.cut() == Some(Cut::Lifetime) {
            return Poll::Ready(Called::Cut);
        }
    }
    Poll::Pending
}

/// The inner call ended: settle on an error, a panic or a cut; write the head otherwise.
fn called_back<L: Ledger, B: http_body::Body, E>(
    shared: &Shared<L>,
    protocol: Protocol,
    mut guard: HoldGuard,
    times: HoldTimes,
    called: Called<Response<B>, E>,
) -> Result<Response<ResponseBody<B>>, E> {
    match called {
        Called::Response(response) => {
            let times = || (times.expires(), times.cap_at());
            Ok(finish(shared, protocol, guard, response, times))
        }
        Called::Error(error) => {
            guard.settle(End::Error);
            Err(error)
        }
        Called::Panic(panic) => {
            guard.settle(End::Error);
            resume_unwind(panic)
        }
        Called::Cut => {
            // Settled like any other end before the head (by the keeper, or here when
            // there is none): the `Charge` so far.
            guard.settle(End::BeforeHead);
            tracing::warn!(lifetime = ?shared.max_hold_lifetime, "handler ran past the hold lifetime cap; cancelled");
            let refusal = Refusal::LifetimeExceeded {
                lifetime: shared.max_hold_lifetime,
            };
            Ok(refuse(shared, protocol, &refusal).map(ResponseBody::refusal))
        }
    }
}
