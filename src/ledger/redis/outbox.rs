//! The outbox of the Redis ledger: each account's detected events in a stream under its
//! hash tag (`<prefix>:{<account>}:outbox`), leases in a hash beside it (`:leases`), dead
//! letters in a second stream (`:dead`).
//!
//! The scripts that detect an event append it and lease it to the calling replica in the
//! same atomic step that moved the credits, and enter the account in the events due-index
//! (see `due.rs`) at the time its lease lapses. A claim looks for lapsed leases through
//! that index: it reads the accounts due (one replica at a time: a lease), runs the
//! `outbox` script on each, which leases what lapsed to the claiming replica and answers
//! when the next lease lapses, and re-scores the entry (or removes it once the outbox is
//! empty). An acknowledged event is deleted; an outbox left empty is deleted too, so the
//! slow repair pass (`SCAN MATCH <prefix>:{*}:outbox`, one rate-limited step per claim)
//! only meets accounts with events waiting.

use std::time::Duration;

use super::due::{Kind, Update, PASS_LIMIT};
use super::reply;
use super::scripts::OUTBOX;
use super::{RedisFuture, RedisLedger};
use crate::ledger::{AccountId, CreditEvent, DeadLetter, EventOutbox, LedgerError, OutboxFuture};

/// Most entries listed by one `pending` or `dead_letters` call.
const LIST_LIMIT: u64 = 1_000;

impl RedisLedger {
    /// Runs one operation of the `outbox` script on `account`.
    fn outbox_op(
        &self,
        account: &AccountId,
        op: &'static str,
        lease: Duration,
        entry: &str,
        count: u64,
        reason: &str,
    ) -> RedisFuture<redis::Value> {
        let lease_ms =
            (lease.as_millis() as u64).min(crate::ledger::MAX_HOLD_TTL.as_millis() as u64);
        Box::pin(self.account_script(&OUTBOX, account, |inv| {
            inv.arg(op)
                .arg(self.inner.replica.as_str())
                .arg(lease_ms)
                .arg(entry)
                .arg(count)
                .arg(reason);
        }))
    }

    /// When the events due-index should look at `account` next (the outbox's `due`
    /// operation: it claims nothing), or `None` when no event waits.
    pub(super) async fn events_due(&self, account: &AccountId) -> Result<Option<u64>, LedgerError> {
        let value = self
            .outbox_op(account, "due", Duration::ZERO, "", 0, "")
            .await?;
        reply::outbox_due(value)
    }

    async fn claim_all(
        &self,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<CreditEvent>, LedgerError> {
        let mut claimed = Vec::new();
        let Some(taken) = self
            .take_due(Kind::Events, true, max.clamp(1, PASS_LIMIT), true)
            .await?
        else {
            return Ok(claimed);
        };
        let mut updates = Vec::with_capacity(taken.due.len());
        let mut outage = None;
        for (account, score) in taken.due {
            let left = max.saturating_sub(claimed.len());
            if left == 0 {
                // Left as they are: due still, taken by the next claim.
                break;
            }
            // One account's trouble (an event this version cannot read, a slow slot) must
            // not stop the others' recovery: it stays due, retried next claim.
            let result = self
                .outbox_op(&account, "claim", lease, "", left.min(10_000) as u64, "")
                .await
                .and_then(|value| reply::outbox_claimed(value, &account));
            match result {
                Ok((events, next)) => {
                    claimed.extend(events);
                    updates.push(Update::taken(account, score, next));
                }
                Err(error) if error.is_unavailable() => {
                    outage.get_or_insert(error);
                    break;
                }
                Err(error) => {
                    tracing::warn!(%account, %error, "claiming this account's events failed")
                }
            }
        }
        // A slow repair step, when one is due: accounts whose entry was lost are entered
        // again (and claimed by a later claim, once due).
        let mut cursor = None;
        if let (Some((at, steps)), None) = (taken.repair, &outage) {
            match self.repair_steps(Kind::Events, at, steps).await {
                Ok((next, found)) => {
                    for account in found {
                        match self.events_due(&account).await {
                            Ok(due) => updates.push(Update::found(account, due)),
                            Err(error) => {
                                tracing::warn!(%account, %error, "the events index repair could not look at this account")
                            }
                        }
                    }
                    cursor = Some(next);
                }
                Err(error) => tracing::warn!(%error, "an events index repair step failed"),
            }
        }
        if let Err(error) = self.done_due(Kind::Events, true, cursor, updates).await {
            // The lease lapses by itself; the entries stay due and are looked at again.
            tracing::warn!(%error, "ending an events claim pass failed");
        }
        match outage {
            Some(error) if claimed.is_empty() => Err(error),
            _ => Ok(claimed),
        }
    }
}

impl EventOutbox for RedisLedger {
    fn replica(&self) -> &str {
        &self.inner.replica
    }

    fn claim(&self, lease: Duration, max: usize) -> OutboxFuture<Vec<CreditEvent>> {
        let ledger = self.clone();
        Box::pin(async move { ledger.claim_all(lease, max).await })
    }

    fn renew(&self, event: &CreditEvent, lease: Duration) -> OutboxFuture<bool> {
        let call = self.outbox_op(&event.account, "renew", lease, &event.receipt, 0, "");
        Box::pin(async move { reply::outbox_done(call.await?) })
    }

    fn ack(&self, event: &CreditEvent) -> OutboxFuture<()> {
        let call = self.outbox_op(&event.account, "ack", Duration::ZERO, &event.receipt, 0, "");
        Box::pin(async move { reply::outbox_done(call.await?).map(|_| ()) })
    }

    fn dead_letter(&self, event: &CreditEvent, reason: &str) -> OutboxFuture<()> {
        // A reason is for an operator: keep it short.
        let reason: String = reason.chars().take(512).collect();
        let call = self.outbox_op(
            &event.account,
            "dead",
            Duration::ZERO,
            &event.receipt,
            0,
            &reason,
        );
        Box::pin(async move { reply::outbox_done(call.await?).map(|_| ()) })
    }

    fn dead_letters(&self, account: &AccountId) -> OutboxFuture<Vec<DeadLetter>> {
        let call = self.outbox_op(account, "dead_letters", Duration::ZERO, "", LIST_LIMIT, "");
        let account = account.clone();
        Box::pin(async move { reply::dead_letters(call.await?, &account) })
    }

    fn requeue(&self, dead: &DeadLetter) -> OutboxFuture<bool> {
        let call = self.outbox_op(
            &dead.event.account,
            "requeue",
            Duration::ZERO,
            &dead.receipt,
            0,
            "",
        );
        let (ledger, account) = (self.clone(), dead.event.account.clone());
        Box::pin(async move {
            // Back in the outbox unleased: the events due-index looks at once.
            let Some(due) = reply::outbox_due(call.await?)? else {
                return Ok(false);
            };
            ledger.enter_due(Kind::Events, &account, due).await;
            Ok(true)
        })
    }

    fn pending(&self, account: &AccountId) -> OutboxFuture<Vec<CreditEvent>> {
        let call = self.outbox_op(account, "pending", Duration::ZERO, "", LIST_LIMIT, "");
        let account = account.clone();
        Box::pin(async move { reply::outbox_events(call.await?, &account) })
    }
}
