//! The key-lookup sub-future: finds the account of an API key that is not in the cache,
//! asking the ledger once per key at a time (followers wait for the lead's answer), with
//! its own circuit breaker. The shape of tower-http's `AsyncAuthorizeRequest`: the account
//! is resolved in its own future before the billing goes on.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use super::config::{BillingErrorKind, Shared};
use super::lookups::{Answer, Follower, Lookup, LookupLead};
use crate::account::KeyToLookUp;
use crate::ledger::{AccountId, Ledger, LedgerError};
use crate::outage::Stats;

/// A lookup of one key, leading or following.
pub(crate) enum KeyLookup<L: Ledger> {
    /// This request asks the ledger; other requests for the key wait for its answer.
    Lead {
        fut: L::Future<Option<AccountId>>,
        key: KeyToLookUp,
        lead: LookupLead,
    },
    /// Another request asks the ledger for this key: wait for its answer.
    Follow { wait: Follower, key: KeyToLookUp },
}

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Looked {
    Found(AccountId),
    /// No account has this key.
    Unknown,
    /// The ledger failed: an outage (`true`) or an error that is not one.
    Failed {
        unavailable: bool,
    },
    /// Too many distinct keys are being looked up.
    Busy,
}

impl<L: Ledger> KeyLookup<L> {
    /// Starts a lookup of `key`: leads, follows, or is refused as busy.
    pub(crate) fn begin(shared: &Shared<L>, key: KeyToLookUp) -> Result<Self, Looked> {
        match shared.lookups.begin(key.hash) {
            Lookup::Lead(lead) => Ok(KeyLookup::Lead {
                fut: shared.ledger.lookup_api_key(&key.hash),
                key,
                lead,
            }),
            Lookup::Follow(wait) => Ok(KeyLookup::Follow { wait, key }),
            Lookup::Busy => {
                Stats::add(&shared.stats.key_lookups_shed, 1);
                Err(Looked::Busy)
            }
        }
    }

    pub(crate) fn poll(&mut self, shared: &Shared<L>, cx: &mut Context<'_>) -> Poll<Looked> {
        loop {
            let (answer, key) = match self {
                KeyLookup::Lead { fut, .. } => {
                    let found = ready!(Pin::new(fut).poll(cx));
                    return Poll::Ready(self.lead_answered(shared, found));
                }
                KeyLookup::Follow { wait, key } => (ready!(wait.as_mut().poll(cx)), *key),
            };
            return Poll::Ready(match answer {
                Answer::Found(Some(account)) => Looked::Found(account),
                Answer::Found(None) => Looked::Unknown,
                Answer::Error => {
                    Stats::add(&shared.stats.billing_errors, 1);
                    Looked::Failed { unavailable: false }
                }
                Answer::Outage => Looked::Failed { unavailable: true },
                // The request that was looking the key up went away: look again.
                Answer::Abandoned => match Self::begin(shared, key) {
                    Ok(again) => {
                        *self = again;
                        continue;
                    }
                    Err(looked) => looked,
                },
            });
        }
    }

    /// The lead's answer: cached, told to the followers, and read.
    fn lead_answered(
        &mut self,
        shared: &Shared<L>,
        found: Result<Option<AccountId>, LedgerError>,
    ) -> Looked {
        let KeyLookup::Lead { key, lead, .. } = self else {
            unreachable!("only a lead is answered by the ledger")
        };
        shared.lookups.breaker.record_answer(&found);
        if let Ok(account) = &found {
            shared.resolver.remember(key, account.clone());
            if account.is_some() {
                shared.lookups.seen_valid(key.hash);
            }
        }
        let answer = match &found {
            Ok(account) => Answer::Found(account.clone()),
            Err(error) if error.is_unavailable() => Answer::Outage,
            Err(_) => Answer::Error,
        };
        lead.answer(answer);
        match found {
            Ok(Some(account)) => Looked::Found(account),
            Ok(None) => Looked::Unknown,
            Err(error) => Looked::Failed {
                unavailable: ledger_failed(shared, &error),
            },
        }
    }
}

/// Logs and counts a failed ledger call; `true` if it was an outage.
pub(crate) fn ledger_failed<L: Ledger>(shared: &Shared<L>, error: &LedgerError) -> bool {
    if error.is_unavailable() {
        tracing::error!(%error, "ledger unreachable");
        true
    } else {
        shared.billing_error(BillingErrorKind::Ledger, error);
        false
    }
}
