//! Reconciliation: proves an account's books, one account at a time, under live traffic.
//!
//! [`RedisLedger::reconcile`] runs one script per account, so each check is atomic and its
//! work bounded by that account's own keys. It checks that:
//!
//! * `held` equals the sum of the open holds;
//! * every open hold is in the expiry index, and the index holds nothing else;
//! * no open hold expired longer ago than `stale_after` (a reclaim should have taken it);
//! * `topped_up` equals the sum of the top-ups by payment id;
//! * the newest audit entry's totals equal the account's (when the trail is on);
//! * and, outside the script (the claims live in other slots), that every payment id of the
//!   account is claimed by this account.
//!
//! [`RedisLedger::reconcile_all`] walks every account (each master of a cluster) and
//! reports each drift by account and figure. The `reconcile` example is the command-line
//! tool: `cargo run --example reconcile -- redis://…`.

use std::fmt;
use std::time::Duration;

use redis::Value;

use super::keys;
use super::reply::unexpected;
use super::scripts::RECONCILE;
use super::RedisLedger;
use crate::ledger::{AccountId, LedgerError};

/// One figure of one account that does not add up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drift {
    /// The account.
    pub account: AccountId,
    /// What was checked: `held`, `expiry_index_size`, `hold_not_in_expiry_index`,
    /// `hold_expiry_field` (a hold's `<id>:exp` is not its index entry), `orphan_hold_field`
    /// (a `<id>:exp` or `<id>:route` with no hold: left by a settle of a version before
    /// `<id>:exp`, during a rolling upgrade or after a rollback; it holds no credits),
    /// `stale_hold`, `topped_up`, `audit_available`, `audit_held`, `audit_committed`,
    /// `audit_topped_up`, `payment_claim`, `account_forms` (a packed account's `v` beside
    /// fields of the field form, named in `found`: a build without
    /// [`pack_accounts`](super::RedisLedgerBuilder::pack_accounts) wrote to a packed
    /// account, and what it wrote is not in `v`), `trail_forms` (a packed account's text
    /// trail beside an audit list: a build without the text trail wrote entries no read
    /// returns), `audit_entry` (the newest entry unreadable).
    pub check: String,
    /// What it should be.
    pub expected: String,
    /// What it is.
    pub found: String,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} is {}, expected {}",
            self.account, self.check, self.found, self.expected
        )
    }
}

/// How far a walk over every account has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Accounts checked so far.
    pub checked: u64,
    /// Accounts found by the first pass: the walk's total.
    pub total: u64,
    /// Drifts found so far.
    pub drifts: u64,
}

/// Default age past which an expired, unreclaimed hold counts as stale: one hour.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(60 * 60);

/// Accounts one `SCAN` step asks for.
const SCAN_COUNT: u64 = 500;

impl RedisLedger {
    /// Checks one account's books (see the [module docs](self)): the drifts found, none
    /// when the books balance. An unknown account has no books and no drift.
    pub async fn reconcile(
        &self,
        account: &AccountId,
        stale_after: Duration,
    ) -> Result<Vec<Drift>, LedgerError> {
        let stale_ms = (stale_after.as_millis() as u64).clamp(1, 86_400_000);
        let value = self
            .account_script(&RECONCILE, account, |inv| {
                inv.arg(stale_ms);
            })
            .await?;
        let mut drifts = drifts_of(value, account)?;
        drifts.extend(self.unclaimed_payments(account).await?);
        Ok(drifts)
    }

    /// Every payment id of `account` whose claim names another account, or none.
    async fn unclaimed_payments(&self, account: &AccountId) -> Result<Vec<Drift>, LedgerError> {
        // Kept in `topups`, or in a packed account's own hash as '+' fields (top_up.lua).
        let mut hkeys = redis::cmd("HKEYS");
        hkeys.arg(keys::account_key(&self.inner.prefix, account, "topups"));
        let mut payment_ids: Vec<String> = self.command(hkeys).await?;
        let mut fields = redis::cmd("HKEYS");
        fields.arg(keys::account_key(&self.inner.prefix, account, "acct"));
        let fields: Vec<String> = self.command(fields).await?;
        payment_ids.extend(
            fields
                .into_iter()
                .filter_map(|f| f.strip_prefix('+').map(str::to_owned)),
        );
        let mut drifts = Vec::new();
        for payment_id in payment_ids {
            let mut get = redis::cmd("GET");
            get.arg(keys::top_up_claim(&self.inner.prefix, &payment_id));
            let owner: Option<String> = self.command(get).await?;
            if owner.as_deref() != Some(account.as_str()) {
                drifts.push(Drift {
                    account: account.clone(),
                    check: "payment_claim".into(),
                    expected: account.to_string(),
                    found: owner.unwrap_or_else(|| "no claim".into()),
                });
            }
        }
        Ok(drifts)
    }

    /// Checks every account of this ledger (each master of a cluster): a first pass counts
    /// them (`SCAN`, for the total), a second checks each, calling `progress` after each
    /// account. Returns every drift found.
    pub async fn reconcile_all(
        &self,
        stale_after: Duration,
        mut progress: impl FnMut(Progress),
    ) -> Result<Vec<Drift>, LedgerError> {
        let nodes = self.nodes().await?;
        let mut done = Progress::default();
        for node in &nodes {
            let mut cursor = 0;
            loop {
                let (next, accounts) = self
                    .scan_accounts(*node, "acct", cursor, SCAN_COUNT)
                    .await?;
                done.total += accounts.len() as u64;
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        progress(done);
        let mut drifts = Vec::new();
        for node in nodes {
            let mut cursor = 0;
            loop {
                let (next, accounts) = self.scan_accounts(node, "acct", cursor, SCAN_COUNT).await?;
                for account in accounts {
                    let found = self.reconcile(&account, stale_after).await?;
                    done.checked += 1;
                    done.drifts += found.len() as u64;
                    drifts.extend(found);
                    progress(done);
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(drifts)
    }
}

/// The script's reply: `{'checked', {check, expected, found}, ...}` or `{'unknown_account'}`.
fn drifts_of(value: Value, account: &AccountId) -> Result<Vec<Drift>, LedgerError> {
    let bad = |detail: &str| unexpected(RECONCILE.name, detail.to_owned());
    let Value::Array(items) = value else {
        return Err(bad("not an array"));
    };
    let mut items = items.into_iter();
    match items.next() {
        Some(Value::BulkString(tag)) if tag == b"unknown_account" => return Ok(Vec::new()),
        Some(Value::BulkString(tag)) if tag == b"checked" => {}
        _ => return Err(bad("no tag")),
    }
    let Some(Value::Array(found)) = items.next() else {
        return Ok(Vec::new());
    };
    found
        .into_iter()
        .map(|drift| {
            let Value::Array(parts) = drift else {
                return Err(bad("a drift is not an array"));
            };
            let text = |v: &Value| match v {
                Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
                Value::SimpleString(s) => Ok(s.clone()),
                Value::Int(n) => Ok(n.to_string()),
                _ => Err(bad("a drift's figure is neither text nor a number")),
            };
            match &parts[..] {
                [check, expected, found] => Ok(Drift {
                    account: account.clone(),
                    check: text(check)?,
                    expected: text(expected)?,
                    found: text(found)?,
                }),
                _ => Err(bad("a drift is not {check, expected, found}")),
            }
        })
        .collect()
}
