//! The outbox of the Redis ledger: each account's detected events in a stream under its
//! hash tag (`<prefix>:{<account>}:outbox`), leases in a hash beside it (`:leases`), dead
//! letters in a second stream (`:dead`).
//!
//! The scripts that detect an event append it and lease it to the calling replica in the
//! same atomic step that moved the credits. A claim looks for lapsed leases: it walks the
//! outboxes with `SCAN MATCH <prefix>:{*}:outbox` on every master (like the sweeper) and
//! runs the `outbox` script on each, which leases what lapsed to the claiming replica.
//! An acknowledged event is deleted; an outbox left empty is deleted too, so the walk only
//! meets accounts with events waiting.

use std::time::Duration;

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

    async fn claim_all(
        &self,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<CreditEvent>, LedgerError> {
        let mut claimed = Vec::new();
        for node in self.nodes().await? {
            let mut cursor = 0;
            loop {
                let (next, accounts) = self.scan_accounts(node, "outbox", cursor).await?;
                for account in accounts {
                    let left = max.saturating_sub(claimed.len());
                    if left == 0 {
                        return Ok(claimed);
                    }
                    // One account's trouble (an event this version cannot read, a slow
                    // slot) must not stop the others' recovery: it is retried next scan.
                    let events = self
                        .outbox_op(&account, "claim", lease, "", left.min(10_000) as u64, "")
                        .await
                        .and_then(|value| reply::outbox_events(value, &account));
                    match events {
                        Ok(events) => claimed.extend(events),
                        Err(error) if error.is_unavailable() && claimed.is_empty() => {
                            return Err(error)
                        }
                        Err(error) => {
                            tracing::warn!(%account, %error, "claiming this account's events failed")
                        }
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(claimed)
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
        Box::pin(async move { reply::outbox_done(call.await?) })
    }

    fn pending(&self, account: &AccountId) -> OutboxFuture<Vec<CreditEvent>> {
        let call = self.outbox_op(account, "pending", Duration::ZERO, "", LIST_LIMIT, "");
        let account = account.clone();
        Box::pin(async move { reply::outbox_events(call.await?, &account) })
    }
}
