//! The Redis ledger: balances in Redis or Redis Cluster, shared by every replica.
//!
//! [`RedisLedger`] implements [`Ledger`] with the same semantics as
//! [`MemoryLedger`](crate::MemoryLedger) (both pass one conformance suite). Every operation
//! on an account is one Lua script, one round trip, atomic on the server.
//!
//! # Data Model
//!
//! Written here once: `keys.rs`, `lib.lua` and the script headers refer to it.
//!
//! Every key of one account shares the hash tag `{<account>}`, so every script touches one
//! slot and runs unchanged on Redis Cluster. [`AccountId`] admits no `{` or `}`, so an id
//! cannot move its keys out of the tag. With the default prefix `credits`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `credits:{acct}:acct` | HASH | `topped_up`, `committed`, `held`, `credit_limit`, `thresholds` (`100,4,10%`: credits or a percentage of the last top-up; absent: none), `fired` (bit *i* set: threshold *i* fired, waits for a top-up), `last_topup`, `horizon` (runway horizon, s; absent: the default), `runway_fired` and `depleted` (0/1: the event fired, waits for a top-up), `rate` (burn rate, credits/s), `rate_at` (ms), `next_expiry` (ms; no open hold expires earlier, so most calls skip the expiry index), `due_holds` and `due_events` (ms: when the due-indexes were last told to look at the account; absent: no entry asked for). `available` is derived: `topped_up - committed - held`, so conservation holds by construction. **Packed form** (the default; [`pack_accounts`](RedisLedgerBuilder::pack_accounts)): every figure above but `thresholds`, plus `audit_seq`, `commits`, `first_commit_at`, `done_until`, `last_topup` and the outbox counter `events`, in one field `v`, a MessagePack sequence: the format mark `false` (a value without it is of the first packed format, read as well; a build of that format refuses a marked value as corrupt), then the figures in `lib.lua`'s `PACKED` order (absent: -1), beside `thresholds`, and the top-up records `+<key>` (see `topups`); every script reads either form and writes the account back in its own, and a packing ledger moves an account of the field form to `v` on its first write. |
//! | `credits:{acct}:holds` | HASH | open hold id → amount; `<id>:exp` → its expiry (ms, as in `expiry`, so a settle reads both in one `HMGET`); `<id>:route` → route label |
//! | `credits:{acct}:expiry` | ZSET | open hold ids scored by expiry (ms): the expiry index |
//! | `credits:{acct}:done` | ZSET | closed hold ids and refund tombstones, scored by when they are forgotten (ms) × 4 + how (1 committed, 2 refunded, 3 expired); an id is forgotten once no call about it can come: its hold's expiry (or the close, if later) + the [call timeout](RedisLedgerBuilder::call_timeout) + 1 s, and a tombstone of a never-seen id after the longest hold TTL this ledger has reserved with (at least [`DEFAULT_HOLD_TTL`](super::DEFAULT_HOLD_TTL)) + call timeout + 1 s. Pruned when due, at most [`RECLAIM_LIMIT`](super::RECLAIM_LIMIT) per call (a packed account's calls prune at most once a second, or at once again while a prune finds that many: it keeps up to a second's closed ids more), and the key's `PEXPIRE` follows the latest forget-at time, so an account whose traffic stops loses it whole. |
//! | `credits:{acct}:usage` | HASH | `credits:<route>` → credits committed, `calls:<route>` → commits |
//! | `credits:{acct}:topups` | HASH | top-up idempotency key → amount; never expires (a payment id credits once, ever). A packed account keeps its records in its own hash instead, as `+<key>` → amount (keys of at most 63 bytes, so the hash stays a listpack; longer ones stay here): an idle account then has no `topups` key. Reads look in both; records made in fields stay here until [`rewrite_accounts`](RedisLedger::rewrite_accounts) moves them. |
//! | `credits:{acct}:outbox` | STREAM | detected events (`type`, `available`, `threshold`, `runway`, `at`) until delivered; the entry id is the event's receipt. Deleted once empty. |
//! | `credits:{acct}:leases` | HASH | outbox entry id → lease end (ms); `<id>:owner` → the replica holding it |
//! | `credits:{acct}:dead` | STREAM | events whose delivery gave up, with the `reason`; kept for an operator |
//! | `credits:{acct}:trail` | STRING | a packed account's [audit trail](super::audit) while it has at most 4 entries (`v`'s `trail` figure says so): its entries (as `log` below), oldest first, appended one after another (`APPEND`; MessagePack needs no separator). A funded account never used keeps one entry here, in about 120 bytes where a one-entry list takes about 220. Its fifth entry moves them to `log` (an appended string grows to twice its length, so a full trail would take about twice a list's memory). |
//! | `credits:{acct}:log` | LIST | the audit trail, newest first: one MessagePack array per reserve, grow, commit, refund, expiry and top-up (`seq`, kind, amount, hold, route, ms, and the totals after it: available, held, committed, topped up), pushed by the script that moved the credits (`LPUSH`; every 32nd entry an `LTRIM` to [`audit_cap`](RedisLedgerBuilder::audit_cap) entries, so the list holds at most 31 past the cap, which reads never return); `seq` counts entries in the account hash's `audit_seq` |
//! | `credits:{acct}:req:<sha256 hex>` | HASH | an [idempotency](super::idempotency) record: `fp` (the request's fingerprint), `hold`, `until` (ms), `committed_at`, `response` or `unavailable`; its TTL is the retention + the closed-id grace |
//! | `credits:{!due}:holds` | ZSET | the holds due-index: account → when its earliest open hold expires (ms); the sweeper's work list (see `# Background work`) |
//! | `credits:{!due}:events` | ZSET | the events due-index: account → when the earliest lease of its waiting events lapses (ms); where event claims look |
//! | `credits:{!due}:holds:lease`, `credits:{!due}:events:lease` | STRING | the replica doing a pass over that index (expires by itself) |
//! | `credits:{!due}:repair` | HASH | the repair pass's `SCAN` cursor and next step time, per index |
//! | `credits:topup:<sha256 hex>` | STRING | the account a top-up idempotency key belongs to (its claim); never expires (a payment id credits one account) |
//! | `credits:apikey:<sha256 hex>` | STRING | account id of an API key (keys are stored only as hashes) |
//!
//! An account exists once it has been topped up or configured: a `reserve` of another
//! account answers [`ReserveOutcome::UnknownAccount`], `balance` and `usage` fail with
//! [`LedgerError::UnknownAccount`]; none of them writes anything.
//!
//! # Top-ups: one account per payment id
//!
//! A top-up idempotency key is claimed for its account before the account's script runs:
//! the claim key `credits:topup:<sha256 hex of the key>` is outside every account's hash
//! tag (on Redis Cluster it lives in a slot of its own), so the claim is a command of its
//! own (`SET NX`, in a three-line script that also answers who holds the key). A key held
//! by another account is [`LedgerError::TopUpKeyClaimed`] and credits nothing; a key
//! already this account's (a replay, or a retry after a crash between the claim and the
//! top-up) proceeds to the per-account script, which is idempotent by itself. A top-up
//! refused after this call made the claim ([`LedgerError::TotalOutOfRange`]) deletes the
//! claim again if it still names the account (compare and delete), so the key can be
//! used later, by either account. A [`LedgerError::TopUpConflict`] keeps it: the account
//! has that key already. Two top-ups of one key racing on one account with different
//! amounts, one of them refused, can release a claim the other one then credits under:
//! the key is then usable once more by another account (one payment id, one amount).
//!
//! # Scripts
//!
//! One `.lua` file per operation (`reserve`, `settle`, `extend`, `grow`, `store`,
//! `top_up`, `balance`, `usage`, `configure`, `sweep`, `outbox`, `reconcile`, `history`,
//! `rewrite`), each declared once in the table of `scripts.rs` (its
//! `KEYS`, named after the keys above, its `ARGV` and its reply shapes), which drives the
//! loader, the invocations and the typed decoders of `reply.rs`; a test checks each file's
//! header against it. Every script is a prelude generated from the Rust constants
//! ([`MAX_AMOUNT`](crate::ledger::MAX_AMOUNT), [`RECLAIM_LIMIT`](super::RECLAIM_LIMIT), the
//! burn-rate time constant), then the helpers of `lib.lua`, then the file. On Redis 7.0
//! and later they are one Redis Function library, loaded once at connect (on every master)
//! and called with `FCALL`, loaded again on `Function not found` (see `functions.rs`);
//! below 7.0 they are hashed once per process and called by SHA (`EVALSHA`), loaded again
//! on `NOSCRIPT`. They read the clock with `TIME` (one clock for every replica), validate
//! every argument before the first write, keep amounts out of strings
//! (parsed with `tonumber`, written back as Lua numbers), and first reclaim up to [`RECLAIM_LIMIT`](super::RECLAIM_LIMIT) expired holds of the
//! account, found through the expiry index. Amounts and ids are also checked here before
//! anything is sent.
//!
//! # Background work
//!
//! Two kinds of work wait for no request: expired holds of an account that gets no more
//! calls ([`spawn_sweeper`](RedisLedger::spawn_sweeper)) and events whose detecting
//! replica died before delivering them ([`EventOutbox::claim`](crate::events::EventOutbox::claim),
//! called by the event dispatcher). Both find their accounts through a due-index, a sorted
//! set scoring each account by when to look at it, never by walking the keyspace:
//!
//! * An account script that opens the first hold of an active period, or detects an event,
//!   records the time in the account's hash and returns it; the ledger writes the entry
//!   (`ZADD`) right after the script, before the call returns: once per active period of
//!   the account, not once per request (a warm request stays two script calls). That
//!   call waits for the write, under its own call deadline, and never fails for it: a
//!   failed write only logs, and the repair pass below enters the account again.
//! * A pass reads the accounts due (`ZRANGEBYSCORE`, at most 1,000), runs the account's
//!   script on each, and re-scores or removes each entry by compare-and-set against the
//!   score it read, so an entry a call wrote meanwhile survives. One replica at a time does
//!   a pass (a lease key that expires by itself); the others' passes cost one command.
//! * A lost entry (the `ZADD` failed or timed out, the replica died between the script and
//!   it, a failover lost it) is repaired by a slow, rate-limited full pass: `SCAN` steps of
//!   [`REPAIR_COUNT`] keys over `<prefix>:{*}:expiry` (or `:outbox`) keys, one step per
//!   [`REPAIR_GAP`] over all replicas (a pass that runs less often takes the steps owed, up
//!   to ten), its cursor kept in Redis. [`RedisLedger::repair_due_index`] runs a full pass
//!   at once.
//!
//! **What an index miss delays, and for how long.** Nothing a caller waits for: an account
//! that gets another call reclaims its own expired holds on it and is entered again by
//! its next reserve, and the replica that detects an event delivers it at once. A lost
//! entry delays the reclaim of an idle account's expired holds, and the delivery of an
//! event whose replica died before delivering it, by at most one full repair pass: (keys
//! in the database / [`REPAIR_COUNT`]) steps, one per [`REPAIR_GAP`]. With 1,000,000
//! keys: 1,000 steps, about 17 minutes (for events, with claims at least every 10 s; the
//! dispatcher's default `scan_every` is 5 s).
//!
//! **Cost.** An idle replica sends one command per pass, plus one `SCAN` per repair step
//! and one command to end a pass that took any, whatever the number of keys; on a cluster
//! a repair step also asks `CLUSTER SLOTS`. The measured figure is in
//! `docs/performance.md`.
//!
//! # Failures
//!
//! Every call has a deadline ([`call_timeout`](RedisLedgerBuilder::call_timeout), default
//! 50 ms): past it the call fails with [`LedgerError::Timeout`]; a lost or refused
//! connection, or a server that says it cannot serve now (`LOADING`, `BUSY`, `TRYAGAIN`,
//! `MASTERDOWN`, `CLUSTERDOWN`, `READONLY` during a failover), is
//! [`LedgerError::Unavailable`]. An error raised by a script (a Lua runtime error, a key
//! of the wrong type, an argument a script refused) or a reply no script of this version
//! sends is [`LedgerError::Corrupt`]: a deployment bug or corrupt state, never retried. A script may still run after its caller gave
//! up, so a reserve that got no answer (it failed, timed out, or its future was dropped
//! after it was first polled) is refunded by its hold id in the background: if the reserve
//! ran, the hold goes back; if not, the refund leaves a tombstone and the late reserve
//! holds nothing. Retry a failed reserve with a new hold id. Should even that refund not get through, the hold expires after
//! its ttl and the account's next call reclaims it, or, for an account that gets no more
//! calls, the [sweeper](RedisLedger::spawn_sweeper).
//!
//! # Durability
//!
//! Run Redis with `appendonly yes`: `appendfsync everysec` may lose the last second of
//! writes on a crash of the machine, `appendfsync always` loses none.
//!
//! Replication is asynchronous: on a failover (Sentinel or Cluster) the new primary may
//! lack the last writes the old one acknowledged. For a top-up that means an acknowledged
//! claim, or an acknowledged credit, may be lost: the payment's retry then credits it
//! again (once), but a claim lost while its top-up survived lets another account claim
//! the key. Servers configured with `min-replicas-to-write` / `min-replicas-max-lag`
//! refuse writes without a live replica (`NOREPLICAS`, reported as unavailable); a
//! `WAIT numreplicas timeout` after the top-up narrows the window further, but the ledger
//! does not send one: on the multiplexed connection every call would wait behind it.
//!
//! ```no_run
//! use tower_credits::ledger::RedisLedger;
//! use tower_credits::{AccountId, Ledger, LedgerAdmin, TopUp};
//! use tower_credits::ledger::{HoldId, Reserve, ReserveOutcome};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_credits::LedgerError> {
//! let ledger = RedisLedger::builder().url("redis://127.0.0.1:6379").build().await?;
//! let acct = AccountId::new("acct_42")?;
//! ledger.top_up(TopUp::new(&acct, 100, "payment-1")).await?;
//!
//! let hold = HoldId::generate();
//! let outcome = ledger.reserve(Reserve::new(acct.clone(), hold.clone(), 30)).await?;
//! assert!(matches!(outcome, ReserveOutcome::Held(_)));
//! ledger.commit(&acct, &hold, 12).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use redis::Value;

use super::{
    check_alerts, check_idempotency_key, check_route, check_ttl, AccountId, AccountSettings,
    Balance, Configure, Extend, Extended, Grow, GrowOutcome, HoldId, Ledger, LedgerAdmin,
    LedgerError, LedgerReports, LongestTtl, Reserve, ReserveOutcome, Settle, Settlement,
    StoreResponse, TopUp, ToppedUp, Usage,
};
use crate::amount::check_amount;
use crate::api_key::ApiKeyHash;
#[cfg(feature = "test-util")]
use crate::clock::ManualClock;
use crate::ledger::idempotency::{check_retention, STORE_GRACE};

mod builder;
mod conn;
mod deadline;
mod due;
mod functions;
mod keys;
mod lease_board;
mod outbox;
pub mod reconcile;
mod reply;
mod rewrite;
mod scripts;
mod sweep;
mod unanswered;

pub use due::{REPAIR_COUNT, REPAIR_GAP};

pub use builder::{
    RedisLedgerBuilder, DEFAULT_CALL_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEY_PREFIX,
};

use conn::Conn;
use reply::unexpected;
use scripts::{
    Args, ScriptSpec, BALANCE, CLAIM_TOP_UP_KEY, CONFIGURE, EXTEND, GROW, HISTORY,
    RELEASE_TOP_UP_KEY, RESERVE, SETTLE, STORE, TOP_UP, USAGE,
};

/// The future of every [`RedisLedger`] operation: one boxed network call.
pub type RedisFuture<T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send>>;

/// Credits in Redis or Redis Cluster, shared by every replica of a service.
///
/// Same semantics as [`MemoryLedger`](crate::MemoryLedger); see the
/// [module docs](self) for the keys it writes (`# Data Model`), the scripts, and what a
/// timeout means. Build it with [`RedisLedger::builder`]. Cloning is cheap: clones share
/// one connection, and concurrent calls pipeline on it.
///
/// ```no_run
/// use tower_credits::ledger::RedisLedger;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_credits::LedgerError> {
/// let standalone = RedisLedger::builder().url("redis://127.0.0.1:6379").build().await?;
/// let cluster = RedisLedger::builder()
///     .cluster_urls(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
///     .build()
///     .await?;
/// # let _ = (standalone, cluster);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisLedger {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    /// How the account scripts are called: `FCALL` of the library, or `EVALSHA`.
    scripts: functions::Mode,
    unanswered: unanswered::Unanswered,
    prefix: String,
    call_timeout: Duration,
    /// How long a closed hold id is remembered past its hold's expiry: the call timeout
    /// + 1 s (a call sent while the hold lived may take that long to arrive).
    closed_grace_ms: u64,
    /// How long a refund tombstone of a never-seen id stands (see [`LongestTtl`]).
    longest_ttl: LongestTtl,
    max_open_holds: Option<u64>,
    /// About how many audit entries an account keeps (0: none).
    audit_cap: u64,
    /// Whether accounts are written packed (see [`RedisLedgerBuilder::pack_accounts`]).
    pack_accounts: bool,
    /// This instance's name in event leases.
    replica: String,
    /// How long an event this instance detects stays leased to it.
    event_lease_ms: u64,
    #[cfg(feature = "test-util")]
    test_clock: Option<ManualClock>,
}

impl fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLedger")
            .field("conn", &self.inner.conn)
            .field("key_prefix", &self.inner.prefix)
            .field("call_timeout", &self.inner.call_timeout)
            .field("max_open_holds", &self.inner.max_open_holds)
            .finish_non_exhaustive()
    }
}

fn ready_err<T: Send + 'static>(err: LedgerError) -> RedisFuture<T> {
    Box::pin(std::future::ready(Err(err)))
}

impl RedisLedger {
    /// Starts a [`RedisLedgerBuilder`].
    pub fn builder() -> RedisLedgerBuilder {
        RedisLedgerBuilder::default()
    }

    /// The prefix of every key this ledger writes.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The deadline of one call.
    pub fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
    }

    /// The full Lua text of the script `name` (`reserve`, `settle`, …) as sent to Redis:
    /// the generated prelude, `lib.lua`, then the script. For tests that run a script by
    /// hand.
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn script_source(name: &str) -> Option<String> {
        scripts::SPECS
            .iter()
            .find(|spec| spec.name == name)
            .map(|spec| spec.text(false))
    }

    /// The Redis Function library of the scripts (`#!lua name=tower_credits_<hash>` …),
    /// as `FUNCTION LOAD` gets it, and the name of `script`'s function in it. For benches
    /// and tests that call a function by hand.
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn function_library(script: &str) -> Option<(&'static str, String)> {
        scripts::SPECS
            .iter()
            .find(|spec| spec.name == script)
            .map(|spec| {
                (
                    functions::library_code(),
                    functions::function_name(spec, false).to_owned(),
                )
            })
    }

    /// The name of `script`'s function for a ledger that packs accounts
    /// ([`RedisLedgerBuilder::pack_accounts`]), in the library [`function_library`](Self::function_library)
    /// gives. For benches and tests that call a function by hand.
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn packed_function_name(script: &str) -> Option<String> {
        scripts::SPECS
            .iter()
            .find(|spec| spec.name == script)
            .map(|spec| functions::function_name(spec, true).to_owned())
    }

    /// Whether this ledger calls its scripts as Redis Functions (`FCALL`), else `EVALSHA`.
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn uses_functions(&self) -> bool {
        self.inner.scripts == functions::Mode::Functions
    }

    /// The ms added to Redis `TIME`: how far the test clock moved, else 0.
    fn clock_offset_ms(&self) -> u64 {
        #[cfg(feature = "test-util")]
        if let Some(clock) = &self.inner.test_clock {
            return clock.advanced().as_millis() as u64;
        }
        0
    }

    /// Invokes an account script with the account's keys its spec names, the common
    /// arguments (clock offset, closed-id grace) and `args`, under the call deadline.
    fn account_script(
        &self,
        spec: &'static ScriptSpec,
        account: &AccountId,
        args: impl FnOnce(&mut Args<'_>),
    ) -> impl Future<Output = Result<Value, LedgerError>> + Send + 'static {
        let call = spec.call(self.inner.pack_accounts, &self.inner.prefix, account, |a| {
            a.arg(self.clock_offset_ms())
                .arg(self.inner.closed_grace_ms);
            args(a);
            a.arg(self.inner.audit_cap);
        });
        let run = self.deadline(functions::run(
            self.inner.conn.clone(),
            self.inner.scripts,
            call,
        ));
        // `map`, not an `async` block around `run.await`: such a block keeps the future it
        // captured and the one it awaits apart, doubling the size of every layer (an
        // account call's future was 3.5 KB, copied whole each time it moved).
        run.map(|value| {
            let (value, expired) = reply::expired_envelope(value?);
            crate::ledger::expired(expired);
            Ok(value)
        })
    }

    /// A plain command under the call deadline.
    fn command<T: redis::FromRedisValue + Send + 'static>(
        &self,
        cmd: redis::Cmd,
    ) -> impl Future<Output = Result<T, LedgerError>> + Send + 'static {
        let conn = self.inner.conn.clone();
        self.deadline(async move { conn.query(&cmd).await })
    }

    fn deadline<T>(
        &self,
        call: impl Future<Output = Result<T, redis::RedisError>> + Send + 'static,
    ) -> impl Future<Output = Result<T, LedgerError>> + Send + 'static {
        deadline::Deadline::new(call, self.inner.call_timeout)
    }

    /// Writes the due-index entries a script asked for (once per active period of the
    /// account, not per request: see `due.rs`), before the call returns. A failure only
    /// logs: the repair pass enters the account again.
    async fn enter_asked(&self, account: &AccountId, due: reply::Due) {
        if let Some(at) = due.holds {
            self.enter_due(due::Kind::Holds, account, at).await;
        }
        if let Some(at) = due.events {
            self.enter_due(due::Kind::Events, account, at).await;
        }
    }

    /// Refunds `hold` in the background after its reserve failed without an answer (see
    /// [`unanswered`]).
    fn refund_in_background(&self, account: AccountId, hold: HoldId, ttl: Duration) {
        self.inner.unanswered.refund(self, account, hold, ttl);
    }

    fn do_reserve(&self, r: Reserve) -> Result<RedisFuture<ReserveOutcome>, LedgerError> {
        check_amount(r.amount)?;
        if let Some(min) = r.min_amount {
            check_amount(min)?;
        }
        let ttl_ms = check_ttl(r.ttl)?;
        if let Some(route) = &r.route {
            check_route(route)?;
        }
        if let Some(claim) = &r.idempotency {
            check_retention(claim.retention_period())?;
        }
        self.inner.longest_ttl.note(ttl_ms);
        let limit = self.inner.max_open_holds;
        // A limit past MAX_AMOUNT cannot be reached: send none.
        let limit_arg = match limit {
            Some(limit) if limit <= crate::ledger::MAX_AMOUNT => limit.to_string(),
            _ => String::new(),
        };
        let call = self.account_script(&RESERVE, &r.account, |inv| {
            inv.arg(r.hold_id.as_str())
                .arg(r.amount)
                .arg(ttl_ms)
                .arg(r.route.as_deref().unwrap_or(""))
                .arg(limit_arg)
                .arg(r.min_amount.map_or(String::new(), |m| m.to_string()))
                .arg(self.inner.replica.as_str())
                .arg(self.inner.event_lease_ms);
            match &r.idempotency {
                Some(claim) => inv
                    .arg(hex::encode(claim.key()))
                    .arg(hex::encode(claim.fingerprint()))
                    .arg(claim.retention_period().as_millis() as u64),
                None => inv.arg("").arg("").arg(0),
            }
            .arg(STORE_GRACE.as_millis() as u64);
        });
        let ledger = self.clone();
        Ok(Box::pin(async move {
            // From the first poll on, the script may run: unless an answer comes back, the
            // hold id is refunded (on an error, or when this future is dropped).
            let account = r.account.clone();
            let mut guard = RefundUnanswered(Some((ledger.clone(), r.account, r.hold_id, r.ttl)));
            let value = call.await?;
            guard.0 = None;
            let (outcome, due) = reply::reserve(value, limit, &account)?;
            ledger.enter_asked(&account, due).await;
            Ok(outcome)
        }))
    }

    fn do_settle(
        &self,
        account: &AccountId,
        hold: &HoldId,
        actual: Option<u64>,
        key: Option<&[u8; 32]>,
    ) -> Result<RedisFuture<Settlement>, LedgerError> {
        if let Some(actual) = actual {
            check_amount(actual)?;
        }
        let call = self.account_script(&SETTLE, account, |inv| {
            inv.arg(hold.as_str())
                .arg(if actual.is_some() { "commit" } else { "refund" })
                .arg(actual.unwrap_or(0))
                .arg(self.inner.longest_ttl.get())
                .arg(self.inner.replica.as_str())
                .arg(self.inner.event_lease_ms)
                .arg(key.map(hex::encode).unwrap_or_default());
        });
        let (ledger, account) = (self.clone(), account.clone());
        Ok(Box::pin(async move {
            let (settlement, events_due) = reply::settle(call.await?, &account)?;
            let due = reply::Due {
                holds: None,
                events: events_due,
            };
            ledger.enter_asked(&account, due).await;
            Ok(settlement)
        }))
    }

    fn do_extend(
        &self,
        account: &AccountId,
        hold: &HoldId,
        ttl: Duration,
    ) -> Result<RedisFuture<Extended>, LedgerError> {
        let ttl_ms = check_ttl(ttl)?;
        let call = self.account_script(&EXTEND, account, |inv| {
            inv.arg(hold.as_str()).arg(ttl_ms);
        });
        Ok(Box::pin(async move { reply::extend(call.await?) }))
    }

    fn do_grow(&self, grow: &Grow) -> Result<RedisFuture<GrowOutcome>, LedgerError> {
        check_amount(grow.amount())?;
        let least = (grow.least_amount() < grow.amount()).then_some(grow.least_amount());
        let call = self.account_script(&GROW, grow.account(), |inv| {
            inv.arg(grow.hold_id().as_str())
                .arg(grow.amount())
                .arg(least.map(|l| l.to_string()).unwrap_or_default());
        });
        Ok(Box::pin(async move { reply::grow(call.await?) }))
    }

    fn do_top_up(
        &self,
        account: &AccountId,
        amount: u64,
        key: &str,
    ) -> Result<RedisFuture<ToppedUp>, LedgerError> {
        check_amount(amount)?;
        check_idempotency_key(key)?;
        // First the claim (its own key, in its own slot on a cluster), then the account's
        // idempotent top-up: both futures are lazy, the second runs after the first.
        let claim_key = keys::top_up_claim(&self.inner.prefix, key);
        let mut claim = CLAIM_TOP_UP_KEY.prepare_invoke();
        claim.key(&claim_key).arg(account.as_str());
        let claim = self.deadline(self.inner.conn.clone().eval(claim));
        let call = self.account_script(&TOP_UP, account, |inv| {
            inv.arg(amount).arg(key);
        });
        let (ledger, account) = (self.clone(), account.clone());
        Ok(Box::pin(async move {
            let made = match reply::claim(claim.await?, &account)? {
                reply::Claim::Made => true,
                reply::Claim::Ours => false,
                reply::Claim::Other(owner) => {
                    return Err(LedgerError::TopUpKeyClaimed { account: owner })
                }
            };
            // A failed or unanswered top-up keeps the claim: the caller's retry finds it
            // its own and proceeds.
            let result = reply::top_up(call.await?, amount);
            // Refused with nothing credited under the key (a conflict means the account
            // already has the key, so the claim is right): give the key back, if this call
            // took it.
            if made && matches!(result, Err(LedgerError::TotalOutOfRange { .. })) {
                ledger.release_top_up_key(claim_key, &account).await;
            }
            result
        }))
    }

    /// Deletes the claim `claim_key` while it still names `account`; a failure only logs:
    /// the key stays the account's, usable by its retries.
    async fn release_top_up_key(&self, claim_key: String, account: &AccountId) {
        let mut release = RELEASE_TOP_UP_KEY.prepare_invoke();
        release.key(claim_key).arg(account.as_str());
        if let Err(error) = self.deadline(self.inner.conn.clone().eval(release)).await {
            tracing::warn!(
                %error,
                %account,
                "a refused top-up could not release its idempotency key: the key stays this \
                 account's"
            );
        }
    }

    /// The key that records which account a top-up idempotency key belongs to
    /// (`<prefix>:topup:<sha256 hex>`), for tests that claim it by hand.
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn top_up_claim_key(&self, idempotency_key: &str) -> String {
        keys::top_up_claim(&self.inner.prefix, idempotency_key)
    }

    fn do_configure(
        &self,
        account: &AccountId,
        settings: AccountSettings,
    ) -> Result<RedisFuture<()>, LedgerError> {
        check_amount(settings.credit_limit)?;
        check_alerts(&settings.thresholds, settings.runway_horizon)?;
        let thresholds: Vec<String> = settings.thresholds.iter().map(|t| t.encode()).collect();
        let call = self.account_script(&CONFIGURE, account, |inv| {
            inv.arg(settings.credit_limit)
                .arg(thresholds.join(","))
                .arg(
                    settings
                        .runway_horizon
                        .map(|h| h.as_secs().to_string())
                        .unwrap_or_default(),
                );
        });
        Ok(Box::pin(async move { reply::configure(call.await?) }))
    }
}

/// Refunds a reserve in the background when dropped armed: the reserve got no answer (it
/// failed, timed out, or its future was dropped) and may still have run on the server.
struct RefundUnanswered(Option<(RedisLedger, AccountId, HoldId, Duration)>);

impl Drop for RefundUnanswered {
    fn drop(&mut self) {
        if let Some((ledger, account, hold, ttl)) = self.0.take() {
            ledger.refund_in_background(account, hold, ttl);
        }
    }
}

fn boxed<T: Send + 'static>(result: Result<RedisFuture<T>, LedgerError>) -> RedisFuture<T> {
    result.unwrap_or_else(ready_err)
}

impl Ledger for RedisLedger {
    type Future<T: Send + 'static> = RedisFuture<T>;

    fn reserve(&self, reserve: Reserve) -> Self::Future<ReserveOutcome> {
        boxed(self.do_reserve(reserve))
    }

    fn settle(&self, settle: Settle) -> Self::Future<Settlement> {
        boxed(self.do_settle(
            settle.account(),
            settle.hold_id(),
            settle.actual(),
            settle.idempotency_key(),
        ))
    }

    fn extend(&self, extend: Extend) -> Self::Future<Extended> {
        boxed(self.do_extend(extend.account(), extend.hold_id(), extend.hold_ttl()))
    }

    fn grow(&self, grow: Grow) -> Self::Future<GrowOutcome> {
        boxed(self.do_grow(&grow))
    }

    fn store_response(&self, store: StoreResponse) -> Self::Future<bool> {
        let call = self.account_script(&STORE, store.account(), |inv| {
            inv.arg(store.hold_id().as_str())
                .arg(hex::encode(store.key()));
            match store.response() {
                Some(response) => inv.arg("response").arg(response.as_ref()),
                None => inv.arg("unavailable").arg(""),
            };
        });
        Box::pin(async move { reply::store(call.await?) })
    }

    fn lookup_api_key(&self, key: &ApiKeyHash) -> Self::Future<Option<AccountId>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(keys::api_key(&self.inner.prefix, key));
        let call = self.command::<Option<String>>(cmd);
        Box::pin(async move {
            match call.await? {
                None => Ok(None),
                Some(id) => AccountId::new(&id).map(Some).map_err(|_| {
                    unexpected("GET apikey", "the stored account id is not a valid id")
                }),
            }
        })
    }

    fn reports(&self) -> Option<&dyn super::DynReports> {
        Some(self)
    }
}

impl LedgerAdmin for RedisLedger {
    fn top_up(&self, top_up: TopUp) -> Self::Future<ToppedUp> {
        boxed(self.do_top_up(top_up.account(), top_up.amount(), top_up.idempotency_key()))
    }

    fn configure(&self, configure: Configure) -> Self::Future<()> {
        boxed(self.do_configure(configure.account(), configure.settings().clone()))
    }

    fn register_api_key(&self, key: &ApiKeyHash, account: &AccountId) -> Self::Future<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(keys::api_key(&self.inner.prefix, key))
            .arg(account.as_str());
        let call = self.command::<()>(cmd);
        Box::pin(call)
    }

    fn revoke_api_key(&self, key: &ApiKeyHash) -> Self::Future<bool> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(keys::api_key(&self.inner.prefix, key));
        let call = self.command::<i64>(cmd);
        Box::pin(async move { Ok(call.await? > 0) })
    }
}

impl LedgerReports for RedisLedger {
    fn balance(&self, account: &AccountId) -> Self::Future<Balance> {
        let call = self.account_script(&BALANCE, account, |_| {});
        Box::pin(async move { reply::balance(call.await?) })
    }

    fn usage(&self, account: &AccountId) -> Self::Future<Usage> {
        let call = self.account_script(&USAGE, account, |_| {});
        Box::pin(async move { reply::usage(call.await?) })
    }

    fn history(
        &self,
        account: &AccountId,
        cursor: Option<&str>,
        limit: usize,
    ) -> crate::ledger::BoxLedgerFuture<crate::ledger::HistoryPage> {
        let (cursor, limit) = match crate::ledger::audit::check_history(cursor, limit) {
            Ok(checked) => checked,
            Err(error) => return ready_err(error),
        };
        // The newest first, one more than the page to know whether another follows.
        let call = self.account_script(&HISTORY, account, |inv| {
            inv.arg(cursor.unwrap_or("")).arg(limit + 1);
        });
        Box::pin(async move { reply::history(call.await?, limit) })
    }
}
