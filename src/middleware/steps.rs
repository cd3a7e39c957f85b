//! The steps of a [`ResponseFuture`](super::ResponseFuture): each takes what a state
//! found and returns the next state. The decisions they apply live elsewhere: the plan,
//! the outage decision, the settlement policy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::Request;
use tokio::time::Instant;
use tower_service::Service;

use super::config::{BillingErrorKind, Shared};
use super::future::State;
use super::guard::{HoldCtx, HoldGuard};
use super::lookup::{ledger_failed, KeyLookup, Looked};
use super::plan::{Billing, Intent, Who};
use super::record::{self, KeyedHold};
use super::respond::{quoted, refuse};
use crate::charge::Charge;
use crate::classify::Protocol;
use crate::idempotency::{Keyed, IDEMPOTENCY_KEY};
use crate::ledger::{AccountId, Balance, Ledger, LedgerError, Replay, Reserve, ReserveOutcome};
use crate::outage::{OutageDecision, Stats};
use crate::refusal::Refusal;
use crate::wire::headers::Thresholds;

pub(super) fn answer<F, B, L: Ledger>(
    shared: &Shared<L>,
    protocol: Protocol,
    refusal: Refusal,
) -> State<F, B, L> {
    State::Answer {
        response: Some(refuse(shared, protocol, &refusal)),
    }
}

/// A billed request: through the breaker, then to its account.
// Inlined: the request (240 bytes) is moved through these steps, once per call made.
#[inline(always)]
pub(super) fn bill<S, B, L>(
    shared: &Arc<Shared<L>>,
    inner: &mut S,
    protocol: Protocol,
    req: Request<B>,
    who: Who,
    billing: Billing,
) -> State<S::Future, B, L>
where
    S: Service<Request<B>>,
    L: Ledger,
{
    let allowed = match &who {
        // Nothing to hold, and the account is known: no ledger call to guard.
        Who::Account(_) if billing.intent == Intent::Authenticate => true,
        Who::Account(_) => shared.breaker.allow(),
        // A lookup's answer goes to the lookups' breaker: let that one decide, so the
        // billing breaker's probe goes to a request whose answer it will hear.
        Who::LookUp(_) => shared.lookups.breaker.allow(),
    };
    let account = match who {
        Who::Account(account) => account,
        _ if !allowed => return breaker_open(shared, inner, protocol, req, None, billing),
        Who::LookUp(key) => {
            return match KeyLookup::begin(shared, key) {
                Ok(lookup) => State::LookUp {
                    lookup,
                    req,
                    billing,
                },
                Err(looked) => looked_up(shared, inner, protocol, req, billing, looked),
            }
        }
    };
    if !allowed {
        return breaker_open(shared, inner, protocol, req, Some(account), billing);
    }
    after_account(shared, inner, protocol, req, billing, account)
}

/// The ledger is known to be down: answer now instead of waiting out a timeout.
fn breaker_open<S, B, L>(
    shared: &Shared<L>,
    inner: &mut S,
    protocol: Protocol,
    req: Request<B>,
    account: Option<AccountId>,
    billing: Billing,
) -> State<S::Future, B, L>
where
    S: Service<Request<B>>,
    L: Ledger,
{
    Stats::add(&shared.stats.breaker_fast_failures, 1);
    outage(shared, inner, protocol, req, account, billing, true)
}

/// Once the account is known: hold (the usual case), quote, or pass with nothing held.
// Inlined: the request (240 bytes) is moved through these steps, once per call made.
#[inline(always)]
fn after_account<S, B, L>(
    shared: &Arc<Shared<L>>,
    inner: &mut S,
    protocol: Protocol,
    mut req: Request<B>,
    mut billing: Billing,
    account: AccountId,
) -> State<S::Future, B, L>
where
    S: Service<Request<B>>,
    L: Ledger,
{
    match billing.intent {
        Intent::Hold => {
            // A keyed request (an `IdempotencyLayer` outside this one read its key).
            match req.extensions_mut().remove::<Keyed>() {
                Some(Keyed::Claim {
                    claim,
                    max_response,
                }) => billing.claim = Some(Box::new((claim, max_response))),
                Some(Keyed::Invalid) => {
                    let refusal = Refusal::InvalidHeader {
                        name: IDEMPOTENCY_KEY.clone(),
                        expected:
                            "1 to 255 printable ASCII characters, as a string (\"…\") or a token",
                    };
                    return answer(shared, protocol, refusal);
                }
                Some(Keyed::TooLarge { limit }) => {
                    return answer(shared, protocol, Refusal::PayloadTooLarge { limit })
                }
                None => {}
            }
            let mut fut = reserve_call(shared, &account, &billing);
            if L::IN_PROCESS {
                // An in-process ledger has answered already: go on to the call now, without
                // a `Reserve` state in between (one move of the whole state fewer).
                let mut cx = Context::from_waker(Waker::noop());
                if let Poll::Ready(outcome) = Pin::new(&mut fut).poll(&mut cx) {
                    return reserved(shared, inner, protocol, (req, billing, account), outcome);
                }
            }
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
            None => State::Answer {
                response: Some(refuse(shared, protocol, &Refusal::QuotesUnsupported)),
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
    if let Some(keyed) = &billing.claim {
        let (claim, _) = &**keyed;
        reserve = reserve.idempotency(claim.clone());
    }
    shared.ledger.reserve(reserve)
}

/// What the key lookup found, carried on.
pub(super) fn looked_up<S, B, L>(
    shared: &Arc<Shared<L>>,
    inner: &mut S,
    protocol: Protocol,
    req: Request<B>,
    billing: Billing,
    looked: Looked,
) -> State<S::Future, B, L>
where
    S: Service<Request<B>>,
    L: Ledger,
{
    match looked {
        Looked::Found(account) => after_account(shared, inner, protocol, req, billing, account),
        Looked::Unknown => answer(
            shared,
            protocol,
            Refusal::Unauthorized(crate::account::Unauthorized::UnknownKey),
        ),
        Looked::Busy => answer(shared, protocol, Refusal::LedgerBusy),
        Looked::Failed { unavailable } => {
            outage(shared, inner, protocol, req, None, billing, unavailable)
        }
    }
}

/// A ledger call failed (or the breaker is open): the one outage decision, applied.
fn outage<S, B, L>(
    shared: &Shared<L>,
    inner: &mut S,
    protocol: Protocol,
    mut req: Request<B>,
    account: Option<AccountId>,
    billing: Billing,
    unavailable: bool,
) -> State<S::Future, B, L>
where
    S: Service<Request<B>>,
    L: Ledger,
{
    if unavailable {
        Stats::add(&shared.stats.outages, 1);
    }
    let runs = billing.intent.runs_the_call();
    match shared.outage.decide(unavailable, account.is_some(), runs) {
        OutageDecision::BillingError => answer(shared, protocol, Refusal::BillingError),
        OutageDecision::Unavailable => answer(shared, protocol, Refusal::Unavailable),
        OutageDecision::ServeUnbilled => {
            let amount = billing.amount;
            tracing::warn!(account = ?account.as_ref().map(AccountId::as_str), amount, "ledger unreachable: serving unbilled (fail open)");
            Stats::add(&shared.stats.served_unbilled, 1);
            #[cfg(feature = "metrics")]
            {
                use crate::metrics::{unbilled, Outcome, Reason};
                shared
                    .requests
                    .count(Outcome::Unbilled, Reason::LedgerUnavailable);
                unbilled(amount);
            }
            if let Some(account) = &account {
                req.extensions_mut()
                    .insert(Charge::unbilled(account.clone(), amount));
            }
            shared.unbilled.record(account, amount);
            State::PassThrough {
                fut: inner.call(req),
            }
        }
    }
}

/// The reserve's answer: run the call with its hold, or refuse.
// Inlined into its two callers, for the same reason as `bill`.
#[inline(always)]
pub(super) fn reserved<S, B, L>(
    shared: &Arc<Shared<L>>,
    inner: &mut S,
    protocol: Protocol,
    (mut req, billing, account): (Request<B>, Billing, AccountId),
    outcome: Result<ReserveOutcome, LedgerError>,
) -> State<S::Future, B, L>
where
    S: Service<Request<B>>,
    L: Ledger,
{
    shared.breaker.record_answer(&outcome);
    let refusal = match outcome {
        Ok(ReserveOutcome::Held(held)) => {
            Stats::add(&shared.stats.holds, 1);
            let charge = Charge::held_in(
                shared.grow_ledger.clone(),
                account,
                billing.hold_id,
                held.amount,
                held.available,
            );
            let hold = HoldCtx {
                charge: charge.clone(),
                available: held.available,
                thresholds: Thresholds::new(held.thresholds, shared.low_balance_threshold),
                runway_secs: held.runway_secs,
                stream_limit: billing.stream_limit.unwrap_or(shared.stream_limit),
                keyed: billing.claim.as_ref().map(|keyed| {
                    let (claim, max_response) = &**keyed;
                    Box::new(KeyedHold {
                        key: *claim.key(),
                        max_response: *max_response,
                    })
                }),
            };
            let guard = HoldGuard::new(shared.clone(), hold);
            req.extensions_mut().insert(charge);
            return State::Call {
                fut: inner.call(req),
                timer: None,
                guard,
                started: Instant::now(),
            };
        }
        Ok(ReserveOutcome::Insufficient(refused)) => {
            if let Some(events) = &shared.events {
                events.deliver(refused.events.iter().cloned());
            }
            Refusal::InsufficientCredits {
                account,
                required: refused.required,
                available: refused.available,
                credit_limit: refused.credit_limit,
                price: billing.amount,
            }
        }
        Ok(ReserveOutcome::UnknownAccount) => Refusal::InsufficientCredits {
            account,
            required: billing.min_amount.unwrap_or(billing.amount),
            available: 0,
            credit_limit: 0,
            price: billing.amount,
        },
        Ok(ReserveOutcome::TooManyHolds { limit }) => Refusal::TooManyHolds { limit },
        Ok(ReserveOutcome::Replay(replay)) => match replay {
            Replay::Stored {
                response,
                available,
            } => match record::replay(&shared.headers, &response, available) {
                Some(response) => {
                    Stats::add(&shared.stats.replays, 1);
                    return State::Answer {
                        response: Some(response),
                    };
                }
                None => {
                    shared.billing_error(
                        BillingErrorKind::Ledger,
                        &"a stored response does not decode",
                    );
                    Refusal::ReplayUnavailable
                }
            },
            Replay::InProgress => Refusal::RequestInProgress,
            Replay::KeyReused => Refusal::IdempotencyKeyReused,
            _ => Refusal::ReplayUnavailable,
        },
        Ok(other) => {
            // A fresh hold id cannot be closed already: a store bug, fail closed.
            let detail = format!("reserve of a fresh hold id answered {other:?}");
            shared.billing_error(BillingErrorKind::Ledger, &detail);
            Refusal::BillingError
        }
        Err(error) => {
            let unavailable = ledger_failed(shared, &error);
            return outage(
                shared,
                inner,
                protocol,
                req,
                Some(account),
                billing,
                unavailable,
            );
        }
    };
    answer(shared, protocol, refusal)
}

/// The quote's balance: answered, or the outage decision.
pub(super) fn balance_read<F, B, L: Ledger>(
    shared: &Shared<L>,
    protocol: Protocol,
    (min_price, amount): (Option<u64>, u64),
    balance: Result<Balance, LedgerError>,
) -> State<F, B, L> {
    shared.breaker.record_answer(&balance);
    let balance = match balance {
        Ok(balance) => balance,
        // Never topped up or configured: nothing to spend.
        Err(LedgerError::UnknownAccount) => Balance::default(),
        Err(error) => {
            let unavailable = ledger_failed(shared, &error);
            if unavailable {
                Stats::add(&shared.stats.outages, 1);
            }
            let refusal = match shared.outage.decide(unavailable, true, false) {
                OutageDecision::BillingError => Refusal::BillingError,
                _ => Refusal::Unavailable,
            };
            return answer(shared, protocol, refusal);
        }
    };
    State::Answer {
        response: Some(quoted(shared, amount, min_price, Some(&balance))),
    }
}
