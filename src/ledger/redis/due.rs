//! The due-indexes: how background work finds the accounts that need it, by index, never
//! by walking the keyspace.
//!
//! Two sorted sets, each scoring accounts by when background work should look at them (ms,
//! Redis time):
//!
//! * `<prefix>:{!due}:holds`: accounts with open holds, scored by when their earliest open
//!   hold expires: the [sweeper](RedisLedger::spawn_sweeper)'s work list;
//! * `<prefix>:{!due}:events`: accounts with events waiting, scored by when the earliest
//!   lease of one lapses: where [event claims](crate::events::EventOutbox::claim) look.
//!
//! Their keys, the pass leases (`<prefix>:{!due}:<kind>:lease`) and the repair cursors
//! (`<prefix>:{!due}:repair`) share the hash tag `{!due}`, which no account id can be (`!`
//! is not allowed in one), so on Redis Cluster they live together in one slot, apart from
//! every account, and one script (`due.lua`) reads the due entries and takes the lease.
//!
//! # Entering an account
//!
//! An account script touches one slot, its account's, so it cannot write the index itself.
//! It keeps in the account's hash when it last asked for a look (`due_holds`,
//! `due_events`) and, when it needs one earlier than that (a reserve on an account with no
//! entry, an event), returns the time; the ledger then writes the entry (`ZADD`), right
//! after the script, before the call returns. That is once per active period of the
//! account, not once per request: later reserves expire after the entry's time. A pass
//! that looks at an account re-scores it from the script's answer (the next expiry, the
//! next lapse), or removes it when nothing is left, with a compare-and-set against the
//! score it took, so an entry a call wrote meanwhile is never lost.
//!
//! # Repair
//!
//! An entry can still go missing: the `ZADD` after a script failed or timed out, the
//! replica died between the two, or a failover lost the write. A slow, rate-limited full
//! pass repairs it: each pass of the sweeper, and each event claim, may take `SCAN` steps
//! (`COUNT` [`REPAIR_COUNT`]) over `<prefix>:{*}:expiry` (or `:outbox`) keys, one step per
//! [`REPAIR_GAP`] over all replicas (the cursor and the time of the next step are kept in
//! Redis, so replicas take turns and the rate holds however many there are; a pass that
//! runs less often takes the steps owed, up to ten). Accounts it finds are looked at and
//! entered again.
//!
//! What an index miss can delay, and for how long: only work that waits on the background
//! pass. An account that gets another call reclaims its own expired holds on that call and
//! is entered again by its next reserve; an event is delivered at once by the replica that
//! detected it. A lost entry delays (1) the return of expired holds of an account that gets
//! no more calls and (2) the delivery of an event whose detecting replica died before
//! delivering it, by at most one full repair pass: the keyspace size / [`REPAIR_COUNT`]
//! steps, one per [`REPAIR_GAP`]. With 1,000,000 keys that is 1,000 steps, about 17
//! minutes (for events, with claims at least every 10 s: the dispatcher's default is 5 s).
//!
//! # Cost
//!
//! An idle replica sends one command per pass (`due.lua` answers `idle` when nothing is due
//! and no repair step is: no lease taken), plus one `SCAN` per repair step and one command
//! to end a pass that took any, whatever the number of keys.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, Value};

use super::reply::unexpected;
use super::RedisLedger;
use crate::ledger::{AccountId, LedgerError};

/// Keys one step of the due-indexes' repair pass asks `SCAN` to look at (a hint to the
/// server): see the [module docs](super), `# Background work`.
pub const REPAIR_COUNT: u64 = 1_000;
/// The least time between two steps of one due-index's repair pass, over all replicas.
pub const REPAIR_GAP: Duration = Duration::from_secs(1);
/// Most repair steps one pass takes: a pass that runs less often than once a
/// [`REPAIR_GAP`] takes the steps owed since the last, up to this many.
const MAX_REPAIR_STEPS: u64 = 10;
/// Most accounts one pass takes from an index; more wait for the next pass.
pub(super) const PASS_LIMIT: usize = 1_000;
/// The least lease of one pass (a pass also gets ten call timeouts, if longer): a replica
/// that dies mid-pass holds the next pass back this long.
const PASS_LEASE: Duration = Duration::from_secs(5);

/// `due.lua`: the due-index's own script (not an account script: see the module docs).
pub(super) static DUE: LazyLock<Script> = LazyLock::new(|| Script::new(DUE_SOURCE));

/// The text of `due.lua`.
pub(super) const DUE_SOURCE: &str = include_str!("due.lua");

/// Which due-index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Accounts with open holds (the sweeper's).
    Holds,
    /// Accounts with events waiting (event claims').
    Events,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Holds => "holds",
            Kind::Events => "events",
        }
    }

    /// The account key whose existence the repair pass looks for.
    pub(super) fn scan_suffix(self) -> &'static str {
        match self {
            Kind::Holds => "expiry",
            Kind::Events => "outbox",
        }
    }
}

/// `<prefix>:{!due}:<kind>`: the due-index of `kind`.
pub(super) fn index_key(prefix: &str, kind: Kind) -> String {
    format!("{prefix}:{{!due}}:{}", kind.name())
}

/// An entry to write back once a pass looked at an account.
pub(super) struct Update {
    account: AccountId,
    /// The score the pass took it at; `None` for a repair find (only ever lowered).
    taken: Option<String>,
    /// When to look next; `None`: remove the entry.
    next: Option<u64>,
}

impl Update {
    /// The answer for an account a pass took from the index at `taken`.
    pub(super) fn taken(account: AccountId, taken: String, next: Option<u64>) -> Self {
        Self {
            account,
            taken: Some(taken),
            next,
        }
    }

    /// The answer for an account the repair pass found.
    pub(super) fn found(account: AccountId, next: Option<u64>) -> Self {
        Self {
            account,
            taken: None,
            next,
        }
    }
}

/// What one `take` gave a pass.
pub(super) struct Taken {
    /// The repair cursor and how many steps to take, when this pass is to repair.
    pub(super) repair: Option<(String, u64)>,
    /// The accounts due, each with the score it was taken at.
    pub(super) due: Vec<(AccountId, String)>,
}

impl RedisLedger {
    fn due_keys(&self, kind: Kind) -> [String; 3] {
        let prefix = &self.inner.prefix;
        [
            index_key(prefix, kind),
            format!("{prefix}:{{!due}}:{}:lease", kind.name()),
            format!("{prefix}:{{!due}}:repair"),
        ]
    }

    /// Writes the entry a script asked for (`ZADD`, right after it). A failure only logs:
    /// the repair pass enters the account again.
    pub(super) async fn enter_due(&self, kind: Kind, account: &AccountId, due_ms: u64) {
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(index_key(&self.inner.prefix, kind))
            .arg(due_ms)
            .arg(account.as_str());
        if let Err(error) = self.command::<i64>(cmd).await {
            tracing::warn!(
                %error,
                %account,
                index = kind.name(),
                "writing a due-index entry failed; the repair pass enters the account again"
            );
        }
    }

    /// Starts a pass over the index of `kind`: the accounts due (at most `limit`), and the
    /// repair cursor if a repair step is due (`repair`). With `lease`, the pass is this
    /// replica's alone, or `None` when another replica's pass runs; `None` as well when
    /// nothing is due and no repair step is (then no lease was taken).
    pub(super) async fn take_due(
        &self,
        kind: Kind,
        lease: bool,
        limit: usize,
        repair: bool,
    ) -> Result<Option<Taken>, LedgerError> {
        let lease_ms = PASS_LEASE
            .max(self.inner.call_timeout.saturating_mul(10))
            .as_millis() as u64;
        let mut inv = DUE.prepare_invoke();
        for key in self.due_keys(kind) {
            inv.key(key);
        }
        inv.arg("take")
            .arg(if lease {
                self.inner.replica.as_str()
            } else {
                ""
            })
            .arg(lease_ms)
            .arg(self.clock_offset_ms())
            .arg(limit)
            .arg(kind.name())
            .arg(if repair {
                (REPAIR_GAP.as_millis() as u64).to_string()
            } else {
                String::new()
            })
            .arg(MAX_REPAIR_STEPS);
        let value = self.deadline(self.inner.conn.clone().eval(inv)).await?;
        let bad = |detail: String| unexpected("due", detail);
        let Value::Array(items) = value else {
            return Err(bad(format!("not an array: {value:?}")));
        };
        let mut items = items.into_iter().map(|v| match v {
            Value::BulkString(b) => String::from_utf8(b).map_err(|_| bad("not UTF-8".into())),
            Value::SimpleString(s) => Ok(s),
            Value::Int(n) => Ok(n.to_string()),
            other => Err(bad(format!("not a string: {other:?}"))),
        });
        let tag = items.next().ok_or_else(|| bad("empty".into()))??;
        match tag.as_str() {
            "idle" | "busy" => return Ok(None),
            "due" => {}
            other => return Err(bad(format!("unknown reply {other:?}"))),
        }
        let cursor = items.next().ok_or_else(|| bad("no cursor".into()))??;
        let steps = items
            .next()
            .ok_or_else(|| bad("no steps".into()))??
            .parse::<u64>()
            .map_err(|_| bad("steps not a number".into()))?;
        let mut due = Vec::new();
        while let Some(member) = items.next() {
            let member = member?;
            let score = items.next().ok_or_else(|| bad("no score".into()))??;
            // A member that is not an account id was not written by this ledger: skip it
            // (the pass removes it, as an account with nothing due).
            match AccountId::new(&member) {
                Ok(account) => due.push((account, score)),
                Err(_) => tracing::warn!(member, "a due-index entry is not an account id"),
            }
        }
        Ok(Some(Taken {
            repair: (!cursor.is_empty() && steps > 0).then_some((cursor, steps)),
            due,
        }))
    }

    /// Ends a pass: writes back what it learnt about each account (compare-and-set against
    /// the score it took; repair finds only ever lowered), saves the repair cursor, and
    /// gives the lease back.
    pub(super) async fn done_due(
        &self,
        kind: Kind,
        lease: bool,
        cursor: Option<String>,
        updates: Vec<Update>,
    ) -> Result<(), LedgerError> {
        let mut inv = DUE.prepare_invoke();
        for key in self.due_keys(kind) {
            inv.key(key);
        }
        inv.arg("done")
            .arg(if lease {
                self.inner.replica.as_str()
            } else {
                ""
            })
            .arg(kind.name())
            .arg(cursor.unwrap_or_default());
        for u in updates {
            inv.arg(u.account.as_str())
                .arg(u.taken.unwrap_or_default())
                .arg(u.next.unwrap_or(0));
        }
        self.deadline(self.inner.conn.clone().eval(inv)).await?;
        Ok(())
    }

    /// One repair step of the index of `kind` from `cursor` (`<node>:<cursor>`, `0` to
    /// start a pass): the next cursor (`0` once the pass is over) and the accounts found.
    pub(super) async fn repair_step(
        &self,
        kind: Kind,
        cursor: &str,
    ) -> Result<(String, Vec<AccountId>), LedgerError> {
        let (node, at) = cursor
            .split_once(':')
            .and_then(|(n, c)| Some((n.parse::<usize>().ok()?, c.parse::<u64>().ok()?)))
            .unwrap_or((0, 0));
        let nodes = self.nodes().await?;
        let (node, at) = if node < nodes.len() {
            (node, at)
        } else {
            (0, 0)
        };
        let (next, accounts) = self
            .scan_accounts(nodes[node], kind.scan_suffix(), at, REPAIR_COUNT)
            .await?;
        let cursor = match next {
            0 if node + 1 < nodes.len() => format!("{}:0", node + 1),
            0 => "0".to_owned(),
            next => format!("{node}:{next}"),
        };
        Ok((cursor, accounts))
    }

    /// Takes up to `steps` repair steps of the index of `kind` from `cursor` (stopping at
    /// the end of a pass): the cursor to save and the accounts found.
    pub(super) async fn repair_steps(
        &self,
        kind: Kind,
        cursor: String,
        steps: u64,
    ) -> Result<(String, Vec<AccountId>), LedgerError> {
        let mut cursor = cursor;
        let mut found = Vec::new();
        for _ in 0..steps {
            let (next, accounts) = self.repair_step(kind, &cursor).await?;
            found.extend(accounts);
            cursor = next;
            if cursor == "0" {
                break;
            }
        }
        Ok((cursor, found))
    }

    /// Runs the repair pass of `kind` to its end at once (every node, every key), asking
    /// `look` when each account found is due and entering it: for
    /// [`repair_due_index`](Self::repair_due_index).
    pub(super) async fn repair_all(&self, kind: Kind) -> Result<u64, LedgerError> {
        let mut cursor = "0".to_owned();
        let mut entered = 0;
        loop {
            let (next, accounts) = self.repair_step(kind, &cursor).await?;
            let mut updates = Vec::with_capacity(accounts.len());
            for account in accounts {
                let next = self.look(kind, &account).await?;
                if next.is_some() {
                    entered += 1;
                }
                updates.push(Update::found(account, next));
            }
            self.done_due(kind, false, None, updates).await?;
            if next == "0" {
                return Ok(entered);
            }
            cursor = next;
        }
    }

    /// When the index of `kind` should look at `account` next, asked of the account's own
    /// script (the sweep reclaims what expired on the way; the outbox's `due` claims
    /// nothing).
    pub(super) async fn look(
        &self,
        kind: Kind,
        account: &AccountId,
    ) -> Result<Option<u64>, LedgerError> {
        match kind {
            Kind::Holds => Ok(self.sweep_account(account).await?.1),
            Kind::Events => self.events_due(account).await,
        }
    }

    /// Re-enters every account with open holds or events waiting in its due-index: a full
    /// `SCAN` of the keyspace (on every master of a cluster), at once. Returns how many
    /// accounts it entered.
    ///
    /// The spawned [sweeper](Self::spawn_sweeper) and the event claims repair the indexes
    /// by themselves, slowly (see the module docs of the Redis ledger, `# Background
    /// work`); this is for an operator who knows entries were lost (a failover, a
    /// restore) and for tests. Its cost grows with the keyspace: do not call it in a loop.
    ///
    /// ```no_run
    /// use tower_credits::ledger::RedisLedger;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_credits::LedgerError> {
    /// let ledger = RedisLedger::builder().url("redis://127.0.0.1:6379").build().await?;
    /// let entered = ledger.repair_due_index().await?;
    /// println!("{entered} accounts entered in the due-indexes");
    /// # Ok(()) }
    /// ```
    pub async fn repair_due_index(&self) -> Result<u64, LedgerError> {
        Ok(self.repair_all(Kind::Holds).await? + self.repair_all(Kind::Events).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_share_a_tag_no_account_can_have() {
        assert_eq!(index_key("credits", Kind::Holds), "credits:{!due}:holds");
        assert_eq!(index_key("credits", Kind::Events), "credits:{!due}:events");
        assert!(AccountId::new("!due").is_err());
    }
}
