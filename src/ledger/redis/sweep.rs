//! The sweeper: reclaims expired holds of accounts that receive no request.
//!
//! Every account script first reclaims up to [`RECLAIM_LIMIT`] expired holds of its
//! account, so an account in use never keeps an expired hold for long. An account that sees
//! no more requests (its caller went away while a replica held its credits and died) would
//! keep them until its next call: [`RedisLedger::sweep_expired`] finds such accounts and
//! gives their credits back.
//!
//! Accounts with open holds are found through the holds due-index (see `due.rs`): each is
//! scored by when its earliest open hold expires, so a pass reads only the accounts whose
//! holds have expired (`ZRANGEBYSCORE`), never the keyspace, and runs the `sweep` script
//! (the shared reclaim of `lib.lua`, at most [`RECLAIM_LIMIT`] holds per account per call)
//! on each; the script answers when to look again, and the pass re-scores the entry.
//!
//! [`RECLAIM_LIMIT`]: crate::ledger::RECLAIM_LIMIT

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::Value;

use super::conn::Conn;
use super::due::{Kind, Update, PASS_LIMIT};
use super::reply::{self, unexpected};
use super::scripts::SWEEP;
use super::{Inner, RedisLedger};
use crate::ledger::{AccountId, LedgerError};

impl RedisLedger {
    /// Reclaims the expired holds of every account whose holds have expired, at most
    /// [`RECLAIM_LIMIT`] per account per call, and returns how many holds went back.
    ///
    /// For accounts that receive no new request: an account in use reclaims its own expired
    /// holds on every call. Finds the accounts through the holds due-index (one read,
    /// whatever the number of keys; never `SCAN` nor `KEYS`), at most 1,000 per call, and
    /// runs one script per account found, each under the
    /// [call deadline](super::RedisLedgerBuilder::call_timeout). Fails with the first
    /// error of a call (the account stays in the index for the next sweep); holds already
    /// reclaimed stay reclaimed. An account missing from the index (its entry was lost) is
    /// found by the slow repair pass of [`spawn_sweeper`](Self::spawn_sweeper), or at once by
    /// [`repair_due_index`](Self::repair_due_index).
    ///
    /// [`RECLAIM_LIMIT`]: crate::ledger::RECLAIM_LIMIT
    ///
    /// ```no_run
    /// use tower_credits::ledger::RedisLedger;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_credits::LedgerError> {
    /// let ledger = RedisLedger::builder().url("redis://127.0.0.1:6379").build().await?;
    /// let reclaimed = ledger.sweep_expired().await?;
    /// println!("{reclaimed} expired holds went back");
    /// # Ok(()) }
    /// ```
    pub async fn sweep_expired(&self) -> Result<u64, LedgerError> {
        self.sweep_pass(false, false).await
    }

    /// One pass of the sweeper: the due accounts of the holds index, and (with `repair`) a
    /// repair step if one is due. With `lease`, skipped while another replica's pass runs.
    async fn sweep_pass(&self, lease: bool, repair: bool) -> Result<u64, LedgerError> {
        let Some(taken) = self
            .take_due(Kind::Holds, lease, PASS_LIMIT, repair)
            .await?
        else {
            return Ok(0);
        };
        let mut reclaimed = 0;
        let mut first_error = None;
        let mut updates = Vec::with_capacity(taken.due.len());
        for (account, score) in taken.due {
            match self.sweep_account(&account).await {
                Ok((n, next)) => {
                    reclaimed += n;
                    updates.push(Update::taken(account, score, next));
                }
                // Left as it is: the next pass looks again.
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        let mut cursor = None;
        if let (Some((at, steps)), None) = (taken.repair, &first_error) {
            match self.repair_steps(Kind::Holds, at, steps).await {
                Ok((next, found)) => {
                    for account in found {
                        match self.sweep_account(&account).await {
                            Ok((n, due)) => {
                                reclaimed += n;
                                updates.push(Update::found(account, due));
                            }
                            Err(error) => {
                                first_error.get_or_insert(error);
                            }
                        }
                    }
                    cursor = Some(next);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        let done = self.done_due(Kind::Holds, lease, cursor, updates).await;
        match first_error {
            Some(error) => Err(error),
            None => done.map(|()| reclaimed),
        }
    }

    /// Every node to `SCAN`: the one server, or each master of a cluster.
    pub(super) async fn nodes(&self) -> Result<Vec<Option<Route>>, LedgerError> {
        match &self.inner.conn {
            Conn::Standalone(_) => Ok(vec![None]),
            Conn::Cluster(_) => Ok(self.masters().await?.into_iter().map(Some).collect()),
        }
    }

    /// Runs [`sweep_expired`](Self::sweep_expired) every `interval` on the current tokio
    /// runtime (the first sweep at once), for accounts that receive no new request. A
    /// failed sweep is logged and the next one starts over. The task ends when every clone
    /// of the ledger is dropped, or when the returned handle is aborted.
    ///
    /// One replica at a time sweeps (a lease in Redis); the others' passes cost one
    /// command each. A pass also takes one step of the slow repair pass of the holds
    /// due-index, when one is due (at most one step a second over all replicas), so an
    /// account whose entry was lost is found again: see the module docs of the Redis
    /// ledger, `# Background work`, for what that costs and what a lost entry delays.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or if `interval` is zero.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tower_credits::ledger::RedisLedger;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_credits::LedgerError> {
    /// let ledger = RedisLedger::builder().url("redis://127.0.0.1:6379").build().await?;
    /// let sweeper = ledger.spawn_sweeper(Duration::from_secs(30));
    /// // ... serve; the sweeper ends with the last clone of the ledger.
    /// # drop(sweeper);
    /// # Ok(()) }
    /// ```
    pub fn spawn_sweeper(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::spawn(async move {
            loop {
                ticker.tick().await;
                // Only a strong reference for the length of one sweep: dropping the last
                // clone of the ledger ends the task at its next tick.
                let Some(inner) = weak.upgrade() else { return };
                match (RedisLedger { inner }).sweep_pass(true, true).await {
                    Ok(0) => {}
                    Ok(swept) => tracing::debug!(swept, "reclaimed expired holds"),
                    Err(error) => tracing::warn!(%error, "sweep of expired holds failed"),
                }
            }
        })
    }

    /// One `SCAN` step (`COUNT count`) of `node` (`None`: the standalone server; on a
    /// cluster, the master that owns `Some(route)`) from `cursor` over the accounts' keys
    /// ending in `suffix`: the next cursor (0 at the end) and the accounts found. For the
    /// repair pass of the due-indexes only.
    pub(super) async fn scan_accounts(
        &self,
        node: Option<Route>,
        suffix: &str,
        cursor: u64,
        count: u64,
    ) -> Result<(u64, Vec<AccountId>), LedgerError> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(key_pattern(&self.inner.prefix, suffix))
            .arg("COUNT")
            .arg(count);
        let (next, keys): (u64, Vec<String>) = match node {
            None => self.command(cmd).await?,
            Some(route) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = self.routed(cmd, routing).await?;
                redis::from_redis_value(value).map_err(|e| unexpected("SCAN", e.to_string()))?
            }
        };
        let accounts = keys
            .iter()
            .filter_map(|key| account_of(&self.inner.prefix, key, suffix))
            .collect();
        Ok((next, accounts))
    }

    /// Runs the `sweep` script on one account: how many of its holds went back, and when
    /// its earliest open hold expires (`None`: no open hold).
    pub(super) async fn sweep_account(
        &self,
        account: &AccountId,
    ) -> Result<(u64, Option<u64>), LedgerError> {
        let value = self.account_script(&SWEEP, account, |_| {}).await?;
        reply::sweep(value)
    }

    /// One route per master of the cluster: the first slot of one of its ranges, from
    /// `CLUSTER SLOTS` (asked of any master).
    async fn masters(&self) -> Result<Vec<Route>, LedgerError> {
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let value = self.routed(cmd, routing).await?;
        masters_of(value)
    }

    /// A command sent where `routing` says (cluster only), under the call deadline.
    fn routed(
        &self,
        cmd: redis::Cmd,
        routing: RoutingInfo,
    ) -> impl std::future::Future<Output = Result<Value, LedgerError>> + Send + 'static {
        let conn = self.inner.conn.clone();
        self.deadline(async move {
            match conn {
                Conn::Cluster(mut c) => c.route_command(cmd, routing).await,
                Conn::Standalone(mut c) => cmd.query_async(&mut c).await,
            }
        })
    }
}

/// `SCAN MATCH` pattern of every account's key ending in `suffix`: `<prefix>:{*}:<suffix>`,
/// with the glob characters a prefix may hold (`*`, `?`, `[`, `]`, `\`) escaped.
fn key_pattern(prefix: &str, suffix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + suffix.len() + 5);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str(":{*}:");
    pattern.push_str(suffix);
    pattern
}

/// The account of an expiry index key `<prefix>:{<account>}:expiry`, if the key is one
/// (a key that only looks like one, or holds an invalid id, is skipped).
fn account_of(prefix: &str, key: &str, suffix: &str) -> Option<AccountId> {
    let id = key
        .strip_prefix(prefix)?
        .strip_prefix(":{")?
        .strip_suffix(suffix)?
        .strip_suffix("}:")?;
    AccountId::new(id).ok()
}

/// Parses `CLUSTER SLOTS` (`[[start, end, [host, port, id, ..], replicas..], ..]`) into
/// one route per master.
fn masters_of(value: Value) -> Result<Vec<Route>, LedgerError> {
    let bad = |detail: &str| unexpected("CLUSTER SLOTS", detail.to_owned());
    let Value::Array(ranges) = value else {
        return Err(bad("not an array"));
    };
    let mut seen: Vec<Value> = Vec::new();
    let mut routes = Vec::new();
    for range in ranges {
        let Value::Array(range) = range else {
            return Err(bad("a slot range is not an array"));
        };
        let (Some(Value::Int(start)), Some(Value::Array(master))) = (range.first(), range.get(2))
        else {
            return Err(bad("a slot range has no start or no master"));
        };
        // The node id when the server sends one, else its address.
        let node = master
            .get(2)
            .or(master.first())
            .cloned()
            .unwrap_or(Value::Nil);
        let node = Value::Array(vec![node, master.get(1).cloned().unwrap_or(Value::Nil)]);
        if seen.contains(&node) {
            continue;
        }
        let slot = u16::try_from(*start)
            .ok()
            .and_then(Slot::new)
            .ok_or_else(|| bad("a slot out of range"))?;
        seen.push(node);
        routes.push(Route::with_slot(slot, SlotAddr::Master));
    }
    if routes.is_empty() {
        return Err(bad("no master"));
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_escapes_glob_characters_of_the_prefix() {
        assert_eq!(key_pattern("credits", "expiry"), "credits:{*}:expiry");
        assert_eq!(
            key_pattern("a*b?[c]\\", "expiry"),
            "a\\*b\\?\\[c\\]\\\\:{*}:expiry"
        );
    }

    #[test]
    fn accounts_are_read_back_from_expiry_keys() {
        assert_eq!(
            account_of("credits", "credits:{acct_42}:expiry", "expiry"),
            Some(AccountId::new("acct_42").unwrap())
        );
        for other in [
            "credits:{acct_42}:holds",
            "other:{acct_42}:expiry",
            "credits:{a}:x:{b}:expiry",
            "credits:{}:expiry",
            "credits:acct:expiry",
        ] {
            assert_eq!(account_of("credits", other, "expiry"), None, "{other}");
        }
    }

    #[test]
    fn one_route_per_master() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let node =
            |port: i64, id: &str| Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk(id)]);
        let range = |start: i64, end: i64, port: i64, id: &str| {
            Value::Array(vec![Value::Int(start), Value::Int(end), node(port, id)])
        };
        let slots = Value::Array(vec![
            range(0, 5460, 7000, "a"),
            range(5461, 10922, 7001, "b"),
            range(10923, 12000, 7002, "c"),
            range(12001, 16383, 7000, "a"),
        ]);
        let routes = masters_of(slots).unwrap();
        assert_eq!(
            routes,
            [0, 5461, 10923].map(|s| Route::new(s, SlotAddr::Master))
        );
        assert!(masters_of(Value::Array(vec![])).is_err());
        assert!(masters_of(Value::Nil).is_err());
    }
}
