//! Moving every account to one form: packed (one hash field `v`) or in fields (a field per
//! figure). See [`RedisLedgerBuilder::pack_accounts`](super::RedisLedgerBuilder::pack_accounts).
//!
//! A ledger writes an account back in the form it found it in, and one that packs packs
//! each account it writes to; an account nobody writes to keeps its form. This walk writes
//! every account in this ledger's form at once: after turning packing on (no account left in
//! fields), or, before rolling back to a build without packed accounts, from ledgers that do
//! not pack (every account back in fields, which such a build can read).

use super::reply;
use super::scripts::REWRITE;
use super::RedisLedger;
use crate::ledger::{AccountId, LedgerError};

/// Accounts one `SCAN` step asks for.
const SCAN_COUNT: u64 = 1_000;

impl RedisLedger {
    /// Writes `account` in this ledger's form (packed when it
    /// [packs accounts](super::RedisLedgerBuilder::pack_accounts), else in fields), in one
    /// atomic script that changes nothing else. Returns whether the account changed form;
    /// `false` also for an unknown account (nothing is written).
    pub async fn rewrite_account(&self, account: &AccountId) -> Result<bool, LedgerError> {
        let value = self.account_script(&REWRITE, account, |_| {}).await?;
        reply::rewrite(value)
    }

    /// Writes every account of this ledger (each master of a cluster, found by `SCAN`) in
    /// this ledger's form, one [`rewrite_account`](Self::rewrite_account) each, and
    /// returns how many changed form. Safe under live traffic: each account is one atomic
    /// script, and a call running meanwhile reads either form. Run it from ledgers that do
    /// not pack before rolling back to a build without packed accounts, once every replica
    /// has stopped packing (a packing replica would pack accounts again as it writes them).
    ///
    /// ```no_run
    /// use tower_credits::ledger::RedisLedger;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_credits::LedgerError> {
    /// let unpacking = RedisLedger::builder()
    ///     .url("redis://127.0.0.1:6379")
    ///     .pack_accounts(false)
    ///     .build()
    ///     .await?;
    /// let moved = unpacking.rewrite_accounts().await?;
    /// println!("{moved} accounts back in fields");
    /// # Ok(()) }
    /// ```
    pub async fn rewrite_accounts(&self) -> Result<u64, LedgerError> {
        let mut changed = 0;
        for node in self.nodes().await? {
            let mut cursor = 0;
            loop {
                let (next, accounts) = self.scan_accounts(node, "acct", cursor, SCAN_COUNT).await?;
                for account in accounts {
                    changed += u64::from(self.rewrite_account(&account).await?);
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(changed)
    }
}
