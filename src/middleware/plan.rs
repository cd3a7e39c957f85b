//! The plan: what a request needs from billing, decided once in `CreditService::call` from
//! plain values (its price, the billing headers it sent, who it says it is) before anything
//! runs. The response future only carries it out.

use std::sync::Arc;

use http::HeaderMap;

use crate::account::{KeyToLookUp, Resolution};
use crate::ledger::MAX_AMOUNT;
use crate::ledger::{AccountId, HoldId};
use crate::pricing::{Price, Priced};
use crate::refusal::Refusal;
use crate::wire::headers::{CallerAsks, CreditHeaders};

/// What a request gets from billing.
#[derive(Debug)]
// A plan lives once per request, on the stack, until it is taken apart: boxing the large
// variant would add an allocation to every billed request to save bytes on the others.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Plan {
    /// A free route: the service runs, nothing is resolved or held.
    Pass,
    /// A quote of a free route: answered at once, price 0.
    FreeQuote,
    /// Answered at once, without the service or the ledger.
    Refuse(Refusal),
    /// A price the ledger cannot hold came from the pricing closure: a billing error.
    BadPrice(u64),
    /// The account is known, or its key must be looked up; then hold, quote or
    /// authenticate.
    Bill(Who, Billing),
}

/// Who pays, as far as the request says.
#[derive(Debug)]
pub(crate) enum Who {
    Account(AccountId),
    LookUp(KeyToLookUp),
}

/// What is being billed, carried from `call` to the reserve.
#[derive(Debug)]
pub(crate) struct Billing {
    pub(crate) hold_id: HoldId,
    pub(crate) amount: u64,
    /// A ranged route: hold what the account can afford, down to this.
    pub(crate) min_amount: Option<u64>,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) intent: Intent,
    /// The route's own [`StreamLimit`](crate::StreamLimit), else the layer's applies.
    pub(crate) stream_limit: Option<crate::StreamLimit>,
    /// The request's idempotency claim (from an [`IdempotencyLayer`](crate::idempotency)).
    /// Boxed: rare, and the billing is moved with each state of the request.
    pub(crate) claim: Option<Box<(crate::ledger::IdempotencyClaim, usize)>>,
}

/// What the request wants once its account is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Hold `amount` and run the call.
    Hold,
    /// Answer what the call would cost, without running it.
    Quote { min_price: Option<u64> },
    /// Run the call with nothing held: the handler finds the `AccountId` in the extensions.
    Authenticate,
}

impl Intent {
    /// Whether the service runs (a quote never runs it, so it is never served unbilled).
    pub(crate) fn runs_the_call(self) -> bool {
        !matches!(self, Intent::Quote { .. })
    }
}

/// Plans a request from its price, its headers and who it says it is (`resolve` is asked
/// only when the route is billed).
pub(crate) fn plan(
    priced: Priced,
    headers: &HeaderMap,
    names: &CreditHeaders,
    resolve: impl FnOnce() -> Resolution,
) -> Plan {
    if priced.price == Price::Free {
        // A free route reads no billing header but the quote, whose answer is pinned.
        return match CallerAsks::read_quote(headers, names) {
            Ok(true) => Plan::FreeQuote,
            Ok(false) => Plan::Pass,
            Err(bad) => Plan::Refuse(bad.into()),
        };
    }
    let asks = match CallerAsks::read(headers, names) {
        Ok(asks) => asks,
        Err(bad) => return Plan::Refuse(bad.into()),
    };
    let (amount, intent) = match priced.price {
        Price::Free => unreachable!("answered above"),
        Price::Authenticated if asks.quote => return Plan::FreeQuote,
        Price::Authenticated => (0, Intent::Authenticate),
        Price::Hold(amount) if amount > MAX_AMOUNT => return Plan::BadPrice(amount),
        Price::Hold(price) => {
            // A cap never makes a route cheaper than the least it runs with.
            let least = priced.min.unwrap_or(price);
            let amount = match asks.max_cost {
                Some(max_cost) if max_cost < least => {
                    return Plan::Refuse(Refusal::MaxCostExceeded {
                        price,
                        min_price: priced.min,
                        max_cost,
                    })
                }
                Some(max_cost) => price.min(max_cost),
                None => price,
            };
            let intent = match asks.quote {
                true => Intent::Quote {
                    min_price: priced.min,
                },
                false => Intent::Hold,
            };
            (amount, intent)
        }
    };
    let who = match resolve() {
        Resolution::Refused(why) => return Plan::Refuse(Refusal::Unauthorized(why)),
        Resolution::Account(account) => Who::Account(account),
        Resolution::LookUp(key) => Who::LookUp(key),
    };
    let billing = Billing {
        hold_id: HoldId::generate(),
        amount,
        min_amount: priced.min.filter(|&least| least < amount),
        route: priced.route,
        intent,
        stream_limit: priced.stream_limit,
        claim: None,
    };
    Plan::Bill(who, billing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::Unauthorized;
    use http::HeaderValue;

    fn priced(price: Price, min: Option<u64>) -> Priced {
        Priced {
            price,
            route: Some("GET /r".into()),
            protocol: None,
            min,
            stream_limit: None,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    fn acct() -> Resolution {
        Resolution::Account(AccountId::new("acct").unwrap())
    }

    /// A short name of a plan, for the table.
    fn kind(plan: &Plan) -> String {
        match plan {
            Plan::Pass => "pass".into(),
            Plan::FreeQuote => "free-quote".into(),
            Plan::Refuse(r) => format!("refuse {}", r.code()),
            Plan::BadPrice(n) => format!("bad-price {n}"),
            Plan::Bill(who, b) => {
                let who = match who {
                    Who::Account(_) => "account",
                    Who::LookUp(_) => "look-up",
                };
                let intent = match b.intent {
                    Intent::Hold => "hold",
                    Intent::Quote { .. } => "quote",
                    Intent::Authenticate => "authenticate",
                };
                let min = b.min_amount.map_or(String::new(), |m| format!(" min {m}"));
                format!("{intent} {} {who}{min}", b.amount)
            }
        }
    }

    #[test]
    fn the_plan_of_each_kind_of_request() {
        let hold = |n| priced(Price::Hold(n), None);
        let ranged = priced(Price::Hold(50), Some(10));
        let free = priced(Price::Free, None);
        let auth = priced(Price::Authenticated, None);
        const QUOTE: &[(&str, &str)] = &[("credits-quote", "1")];
        const BAD_CAP: &[(&str, &str)] = &[("credits-max-cost", "abc")];
        let refused = || Resolution::Refused(Unauthorized::Missing);
        let lookup = || Resolution::LookUp(KeyToLookUp::of("k"));
        type Row = (
            Priced,
            &'static [(&'static str, &'static str)],
            fn() -> Resolution,
            &'static str,
        );
        let table: Vec<Row> = vec![
            (free.clone(), &[], refused, "pass"),
            // A free route ignores `credits-max-cost`, even a malformed one.
            (free.clone(), BAD_CAP, refused, "pass"),
            (free.clone(), QUOTE, refused, "free-quote"),
            (
                free.clone(),
                &[("credits-quote", "2")],
                refused,
                "refuse invalid-header",
            ),
            (hold(5), &[], acct, "hold 5 account"),
            (hold(5), &[], lookup, "hold 5 look-up"),
            (hold(5), &[], refused, "refuse unauthorized"),
            (hold(5), BAD_CAP, acct, "refuse invalid-header"),
            (hold(5), QUOTE, acct, "quote 5 account"),
            (
                hold(5),
                &[("credits-max-cost", "3")],
                acct,
                "refuse max-cost-exceeded",
            ),
            (
                ranged.clone(),
                &[("credits-max-cost", "20")],
                acct,
                "hold 20 account min 10",
            ),
            (ranged.clone(), &[], acct, "hold 50 account min 10"),
            (
                ranged,
                &[("credits-max-cost", "9")],
                acct,
                "refuse max-cost-exceeded",
            ),
            (
                hold(MAX_AMOUNT + 1),
                &[],
                acct,
                "bad-price 9007199254740992",
            ),
            (auth.clone(), &[], acct, "authenticate 0 account"),
            (auth.clone(), QUOTE, acct, "free-quote"),
            (auth, &[], refused, "refuse unauthorized"),
        ];
        let names = CreditHeaders::default();
        for (priced, pairs, resolve, want) in table {
            let h = headers(pairs);
            let got = plan(priced.clone(), &h, &names, resolve);
            assert_eq!(kind(&got), want, "{priced:?} {pairs:?}");
        }
    }

    #[test]
    fn a_free_route_never_resolves_the_caller() {
        let names = CreditHeaders::default();
        let got = plan(priced(Price::Free, None), &HeaderMap::new(), &names, || {
            panic!("a free route resolved its caller")
        });
        assert!(matches!(got, Plan::Pass));
    }
}
