//! The [`LeaseBoard`] of a Redis ledger: two small keys in the account's own slot,
//! `<prefix>:{account}:leased` and `<prefix>:{account}:lease_wanted`, each set with a time to
//! live (`SET … PX`), so a replica that dies leaves nothing behind for long.

use std::sync::Arc;
use std::time::Duration;

use super::{keys, RedisLedger};
use crate::ledger::lease::{BoardFuture, LeaseBoard};
use crate::ledger::AccountId;

/// Marks in Redis, shared by every replica of the ledger.
struct RedisLeaseBoard {
    ledger: RedisLedger,
}

impl RedisLeaseBoard {
    fn set(&self, account: &AccountId, suffix: &str, ttl: Duration) -> BoardFuture<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(keys::account_key(
            &self.ledger.inner.prefix,
            account,
            suffix,
        ))
        .arg(1)
        .arg("PX")
        .arg(ttl.as_millis().max(1) as u64);
        Box::pin(self.ledger.command::<()>(cmd))
    }

    fn is_set(&self, account: &AccountId, suffix: &str) -> BoardFuture<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(keys::account_key(
            &self.ledger.inner.prefix,
            account,
            suffix,
        ));
        let exists = self.ledger.command::<u64>(cmd);
        Box::pin(async move { Ok(exists.await? > 0) })
    }
}

impl LeaseBoard for RedisLeaseBoard {
    fn mark_leased(&self, account: &AccountId, ttl: Duration) -> BoardFuture<()> {
        self.set(account, "leased", ttl)
    }
    fn is_leased(&self, account: &AccountId) -> BoardFuture<bool> {
        self.is_set(account, "leased")
    }
    fn want(&self, account: &AccountId, ttl: Duration) -> BoardFuture<()> {
        self.set(account, "lease_wanted", ttl)
    }
    fn is_wanted(&self, account: &AccountId) -> BoardFuture<bool> {
        self.is_set(account, "lease_wanted")
    }
}

impl RedisLedger {
    /// A [`LeaseBoard`] for [`Leased`](crate::ledger::Leased) wrappers of this ledger: every
    /// replica on this Redis sees the same marks.
    pub fn lease_board(&self) -> Arc<dyn LeaseBoard> {
        Arc::new(RedisLeaseBoard {
            ledger: self.clone(),
        })
    }
}
