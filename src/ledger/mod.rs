//! The ledger: where credits are held, committed, refunded and topped up.
//!
//! The contract is three traits: [`Ledger`], the hot path the middleware needs (reserve,
//! settle, extend, key lookup); [`LedgerAdmin`] (top-up, configure, API keys); and
//! [`LedgerReports`] (balance, usage). [`MemoryLedger`] keeps balances in process,
//! `RedisLedger` (feature `redis`) keeps them in Redis or Redis Cluster, shared by every
//! replica. Both pass one conformance suite. [`AnyLedger`] picks one of them at run time;
//! [`BoxLedger`] erases any ledger's type.
//!
//! # The contract in short
//!
//! * [`reserve`](Ledger::reserve) holds `amount` if `available - amount >= -credit_limit`,
//!   after lazily reclaiming the account's expired holds (bounded work per call). The caller
//!   makes the [`HoldId`]: a retried reserve returns the first answer, and a refund of an id
//!   never seen leaves a tombstone so a late reserve of that id never holds. A refused
//!   reserve writes nothing but, at the first refusal for lack of credits until the next
//!   top-up, the depletion marker and its `balance.depleted` event
//!   ([`Insufficient::events`]); business refusals are outcomes ([`ReserveOutcome`]: not
//!   enough credits, too many open holds, an unknown account, a closed id), not errors.
//! * [`settle`](Ledger::settle) commits `actual`, clamped to the hold (the rest goes back),
//!   or refunds everything. A commit that crosses one of the account's thresholds (or its
//!   runway horizon) returns the event in [`Settlement::events`], exactly once per crossing;
//!   only a top-up re-arms it (see [`CreditEvent`], [`EventOutbox`]). Settling a hold that already settled
//!   or expired is a no-op that says so ([`SettleOutcome`]); nothing moves twice.
//! * [`grow`](Ledger::grow) raises an open hold to a new total when the account affords
//!   the difference (the reserve's rule), so a stream can go on past its first hold; a
//!   retried grow holds nothing twice.
//! * [`top_up`](LedgerAdmin::top_up): a payment id (the idempotency key) credits exactly one
//!   account, once, forever: a replay on that account with the same amount returns the
//!   first result, another amount is [`LedgerError::TopUpConflict`], the same key on
//!   another account is [`LedgerError::TopUpKeyClaimed`] (nothing credited). A refused
//!   top-up leaves the key free.
//! * Errors come in four [kinds](ErrorKind): invalid input, conflict, unavailable (retry
//!   later) and corrupt (an unexpected reply or a script error: never retried).
//! * Every amount and total stays within [`MAX_AMOUNT`] (2^53 − 1).
//! * Conservation holds at every instant: `topped_up = available + held + committed`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::api_key::ApiKeyHash;

/// Counts `credits` of expired holds that a ledger call just reclaimed, as
/// `credits_expired_total` (feature `metrics`; nothing otherwise). The ledgers call it where
/// the credits go back, so each expired credit is counted once, by one replica.
#[inline]
pub(crate) fn expired(credits: u64) {
    #[cfg(feature = "metrics")]
    crate::metrics::expired(credits);
    #[cfg(not(feature = "metrics"))]
    let _ = credits;
}

pub mod audit;
mod audit_ring;
mod boxed;
mod cached_reads;
mod closed_ids;
mod error;
pub(crate) mod events;
pub mod idempotency;
mod ids;
pub mod lease;
mod memory;
mod open_holds;
mod outbox_memory;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod route_usage;
pub mod runway;
mod types;
pub mod validate;

#[cfg(feature = "redis")]
pub use self::redis::{RedisLedger, RedisLedgerBuilder};
pub use crate::amount::MAX_AMOUNT;
pub use crate::middleware::DEFAULT_MAX_HOLD_LIFETIME;
pub use boxed::{BoxLedger, BoxLedgerFuture, DynReports};
pub use cached_reads::{CachedFuture, CachedReads, DEFAULT_READ_INTERVAL};
pub use error::{ErrorKind, LedgerError};
pub(crate) use events::Alerts;
// Event types are public under `crate::events` only.
pub use audit::{AuditEntry, AuditKind, HistoryPage};
pub use events::{
    check_alerts, OutboxFuture, Threshold, DEFAULT_EVENT_LEASE, DEFAULT_RUNWAY_HORIZON,
    MAX_RUNWAY_HORIZON, MAX_THRESHOLDS,
};
pub(crate) use events::{CreditEvent, DeadLetter, EventKind, EventOutbox};
pub use idempotency::{IdempotencyClaim, Replay, StoreResponse};
pub(crate) use ids::{check_idempotency_key, check_route};
pub use ids::{AccountId, HoldId, MAX_ACCOUNT_ID_LEN, MAX_HOLD_ID_LEN, MAX_IDEMPOTENCY_KEY_LEN};
pub use lease::{LeaseBoard, Leased};
pub use memory::{MemoryLedger, MemoryLedgerBuilder, DEFAULT_MEMORY_AUDIT_CAP};
pub use runway::{burn_rate_after, decayed_rate, runway_secs};
pub use types::{
    AccountSettings, Balance, Configure, Extend, Extended, Grow, GrowOutcome, Grown, Held,
    Insufficient, Reserve, ReserveOutcome, RouteUsage, Settle, SettleDecision, SettleOutcome,
    Settlement, TopUp, ToppedUp, Usage, DEFAULT_HOLD_TTL,
};

/// Longest hold time to live a ledger accepts.
pub const MAX_HOLD_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Most expired holds one operation reclaims, so that no call does unbounded work
/// (the model is TigerBeetle's pulse limit). The rest are reclaimed by later calls or the
/// sweeper.
pub const RECLAIM_LIMIT: usize = 64;

/// The hot path of a store of prepaid credits: what [`CreditLayer`](crate::CreditLayer)
/// needs. See the [module docs](self) for the contract; [`LedgerAdmin`] and
/// [`LedgerReports`] are the rest.
///
/// Each operation is atomic and, for a networked store, one round trip. Every operation
/// takes a request struct ([`Reserve`], [`Settle`], [`Extend`]), so a field can be added
/// to a request without breaking a ledger or its callers. The futures are named by
/// [`Ledger::Future`] so the middleware keeps them in its own state machine without boxing
/// (the in-memory ledger answers with [`std::future::Ready`]); they are `Unpin` so a settle
/// can be polled once in place and then handed to a worker.
///
/// ```
/// use tower_credits::{AccountId, Ledger, LedgerAdmin, LedgerReports, MemoryLedger};
/// use tower_credits::ledger::HoldId;
/// use tower_credits::TopUp;
/// use tower_credits::ledger::{Reserve, ReserveOutcome, Settle};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_credits::LedgerError> {
/// let ledger = MemoryLedger::new();
/// let acct = AccountId::new("acct_42")?;
/// ledger.top_up(TopUp::new(&acct, 100, "payment-1")).await?;
///
/// let hold = HoldId::generate();
/// let outcome = ledger.reserve(Reserve::new(acct.clone(), hold.clone(), 30)).await?;
/// assert!(matches!(outcome, ReserveOutcome::Held(_)));
///
/// let settled = ledger.settle(Settle::commit(&acct, &hold, 12)).await?;
/// assert_eq!(settled.committed, 12);
/// assert_eq!(ledger.balance(&acct).await?.available, 88);
/// # Ok(()) }
/// ```
pub trait Ledger: Clone + Send + Sync + 'static {
    /// The future every operation returns.
    type Future<T: Send + 'static>: Future<Output = Result<T, LedgerError>> + Send + Unpin + 'static;

    /// Whether this ledger answers in process: its futures may be polled with a waker that
    /// never wakes, outside any task and runtime, and are ready once made whenever the
    /// answer is known (as [`MemoryLedger`]'s always are). The layer then polls a reserve
    /// once as it makes it and, when it has answered, calls the service without waiting
    /// for another poll. So with such a ledger the service is called from the layer's
    /// `call` (not its future's first poll), as a `tower` service may: a future dropped
    /// unpolled then refunds a hold whose call already started, as a cancelled request's
    /// does. Default `false`: a ledger across a network is polled only by its request's
    /// task.
    const IN_PROCESS: bool = false;

    /// Holds credits; see the [module docs](self).
    fn reserve(&self, reserve: Reserve) -> Self::Future<ReserveOutcome>;

    /// Commits (clamped to the hold, the rest released) or refunds a hold. Settling a hold
    /// that already settled or expired is a no-op that says so; a refund of an id never
    /// seen leaves a tombstone.
    fn settle(&self, settle: Settle) -> Self::Future<Settlement>;

    /// Keeps an open hold alive for its TTL from now.
    fn extend(&self, extend: Extend) -> Self::Future<Extended>;

    /// Raises an open hold to a new total when the account can afford the difference, in
    /// one atomic step; see [`Grow`]. Never holds past `-credit_limit`, however many grows
    /// and reserves race; a grow to a total the hold already has changes nothing.
    fn grow(&self, grow: Grow) -> Self::Future<GrowOutcome>;

    /// Keeps the response of a keyed request for its replays (or marks it not replayable),
    /// when the record of its key was made by that hold; `true` if it was. See
    /// [`idempotency`].
    fn store_response(&self, store: StoreResponse) -> Self::Future<bool>;

    /// The account an API key belongs to.
    fn lookup_api_key(&self, key: &ApiKeyHash) -> Self::Future<Option<AccountId>>;

    /// This ledger's reports, when it has them: what lets the layer answer quotes
    /// (`Credits-Quote`) with the caller's balance. A ledger that implements
    /// [`LedgerReports`] returns `Some(self)`; the default is `None` (quotes answer `501`).
    fn reports(&self) -> Option<&dyn DynReports> {
        None
    }

    /// Shorthand for `settle(Settle::commit(account, hold, actual))`.
    fn commit(&self, account: &AccountId, hold: &HoldId, actual: u64) -> Self::Future<Settlement> {
        self.settle(Settle::commit(account, hold, actual))
    }

    /// Shorthand for `settle(Settle::refund(account, hold))`.
    fn refund(&self, account: &AccountId, hold: &HoldId) -> Self::Future<Settlement> {
        self.settle(Settle::refund(account, hold))
    }
}

/// Administration of a ledger: credits in, account settings, API keys.
pub trait LedgerAdmin: Ledger {
    /// Adds credits once per payment id; see the [module docs](self).
    fn top_up(&self, top_up: TopUp) -> Self::Future<ToppedUp>;

    /// Sets an account's credit limit, low-balance thresholds (all armed) and runway
    /// horizon (creates the account).
    fn configure(&self, configure: Configure) -> Self::Future<()>;

    /// Maps an API key (by its hash) to an account. Re-registering moves the key.
    fn register_api_key(&self, key: &ApiKeyHash, account: &AccountId) -> Self::Future<()>;

    /// Forgets an API key; `true` if it was registered.
    fn revoke_api_key(&self, key: &ApiKeyHash) -> Self::Future<bool>;
}

/// Reporting: what an account has and what it spent.
pub trait LedgerReports: Ledger {
    /// The account's balance and totals.
    fn balance(&self, account: &AccountId) -> Self::Future<Balance>;

    /// The account's committed credits by route.
    fn usage(&self, account: &AccountId) -> Self::Future<Usage>;

    /// A page of the account's [audit trail](audit), newest first: up to `limit` entries
    /// (1 to [`MAX_HISTORY_PAGE`](audit::MAX_HISTORY_PAGE)) older than `cursor` (a page's
    /// [`next`](HistoryPage::next)), or the newest without one. An account with no trail
    /// (never seen, or a ledger that keeps none) has an empty one. The default keeps none.
    fn history(
        &self,
        account: &AccountId,
        cursor: Option<&str>,
        limit: usize,
    ) -> BoxLedgerFuture<HistoryPage> {
        let _ = (account, cursor, limit);
        Box::pin(std::future::ready(Ok(HistoryPage::default())))
    }
}

/// A ledger chosen at run time: in memory, or Redis when the `redis` feature is on.
///
/// ```
/// use tower_credits::MemoryLedger;
/// use tower_credits::ledger::AnyLedger;
///
/// let ledger: AnyLedger = MemoryLedger::new().into();
/// # let _ = ledger;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnyLedger {
    /// The embedded ledger.
    Memory(MemoryLedger),
    /// The Redis ledger.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    Redis(RedisLedger),
}

impl From<MemoryLedger> for AnyLedger {
    fn from(ledger: MemoryLedger) -> Self {
        Self::Memory(ledger)
    }
}

impl AnyLedger {
    /// The [`LeaseBoard`] of [`Leased`] wrappers of this ledger.
    pub fn lease_board(&self) -> std::sync::Arc<dyn LeaseBoard> {
        match self {
            AnyLedger::Memory(l) => l.lease_board(),
            #[cfg(feature = "redis")]
            AnyLedger::Redis(l) => l.lease_board(),
        }
    }
}

#[cfg(feature = "redis")]
impl From<RedisLedger> for AnyLedger {
    fn from(ledger: RedisLedger) -> Self {
        Self::Redis(ledger)
    }
}

/// The future of an [`AnyLedger`] operation.
///
/// Both ledgers' futures are `Unpin` (a ready value, or a boxed network call), so this
/// enum is too and needs no pin projection.
pub enum AnyFuture<T: Send + 'static> {
    /// A [`MemoryLedger`] answer.
    Memory(<MemoryLedger as Ledger>::Future<T>),
    /// A [`RedisLedger`] call.
    #[cfg(feature = "redis")]
    Redis(<RedisLedger as Ledger>::Future<T>),
}

impl<T: Send + 'static> Future for AnyFuture<T> {
    type Output = Result<T, LedgerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            AnyFuture::Memory(inner) => Pin::new(inner).poll(cx),
            #[cfg(feature = "redis")]
            AnyFuture::Redis(inner) => inner.as_mut().poll(cx),
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $ledger:ident => $call:expr) => {
        match $self {
            AnyLedger::Memory($ledger) => AnyFuture::Memory($call),
            #[cfg(feature = "redis")]
            AnyLedger::Redis($ledger) => AnyFuture::Redis($call),
        }
    };
}

impl Ledger for AnyLedger {
    type Future<T: Send + 'static> = AnyFuture<T>;

    fn reserve(&self, reserve: Reserve) -> Self::Future<ReserveOutcome> {
        dispatch!(self, l => l.reserve(reserve))
    }
    fn settle(&self, settle: Settle) -> Self::Future<Settlement> {
        dispatch!(self, l => l.settle(settle))
    }
    fn extend(&self, extend: Extend) -> Self::Future<Extended> {
        dispatch!(self, l => l.extend(extend))
    }
    fn grow(&self, grow: Grow) -> Self::Future<GrowOutcome> {
        dispatch!(self, l => l.grow(grow))
    }
    fn store_response(&self, store: StoreResponse) -> Self::Future<bool> {
        dispatch!(self, l => l.store_response(store))
    }
    fn lookup_api_key(&self, key: &ApiKeyHash) -> Self::Future<Option<AccountId>> {
        dispatch!(self, l => l.lookup_api_key(key))
    }
    fn reports(&self) -> Option<&dyn DynReports> {
        Some(self)
    }
}

impl LedgerAdmin for AnyLedger {
    fn top_up(&self, top_up: TopUp) -> Self::Future<ToppedUp> {
        dispatch!(self, l => l.top_up(top_up))
    }
    fn configure(&self, configure: Configure) -> Self::Future<()> {
        dispatch!(self, l => l.configure(configure))
    }
    fn register_api_key(&self, key: &ApiKeyHash, account: &AccountId) -> Self::Future<()> {
        dispatch!(self, l => l.register_api_key(key, account))
    }
    fn revoke_api_key(&self, key: &ApiKeyHash) -> Self::Future<bool> {
        dispatch!(self, l => l.revoke_api_key(key))
    }
}

impl LedgerReports for AnyLedger {
    fn balance(&self, account: &AccountId) -> Self::Future<Balance> {
        dispatch!(self, l => l.balance(account))
    }
    fn usage(&self, account: &AccountId) -> Self::Future<Usage> {
        dispatch!(self, l => l.usage(account))
    }
    fn history(
        &self,
        account: &AccountId,
        cursor: Option<&str>,
        limit: usize,
    ) -> BoxLedgerFuture<HistoryPage> {
        match self {
            AnyLedger::Memory(l) => l.history(account, cursor, limit),
            #[cfg(feature = "redis")]
            AnyLedger::Redis(l) => l.history(account, cursor, limit),
        }
    }
}

macro_rules! outbox_dispatch {
    ($self:ident, $ledger:ident => $call:expr) => {
        match $self {
            AnyLedger::Memory($ledger) => $call,
            #[cfg(feature = "redis")]
            AnyLedger::Redis($ledger) => $call,
        }
    };
}

impl EventOutbox for AnyLedger {
    fn replica(&self) -> &str {
        outbox_dispatch!(self, l => l.replica())
    }
    fn claim(&self, lease: Duration, max: usize) -> OutboxFuture<Vec<CreditEvent>> {
        outbox_dispatch!(self, l => l.claim(lease, max))
    }
    fn renew(&self, event: &CreditEvent, lease: Duration) -> OutboxFuture<bool> {
        outbox_dispatch!(self, l => l.renew(event, lease))
    }
    fn ack(&self, event: &CreditEvent) -> OutboxFuture<()> {
        outbox_dispatch!(self, l => l.ack(event))
    }
    fn dead_letter(&self, event: &CreditEvent, reason: &str) -> OutboxFuture<()> {
        outbox_dispatch!(self, l => l.dead_letter(event, reason))
    }
    fn dead_letters(&self, account: &AccountId) -> OutboxFuture<Vec<DeadLetter>> {
        outbox_dispatch!(self, l => l.dead_letters(account))
    }
    fn requeue(&self, dead: &DeadLetter) -> OutboxFuture<bool> {
        outbox_dispatch!(self, l => l.requeue(dead))
    }
    fn pending(&self, account: &AccountId) -> OutboxFuture<Vec<CreditEvent>> {
        outbox_dispatch!(self, l => l.pending(account))
    }
}

/// The longest hold TTL (ms) this ledger instance has reserved with, at least
/// [`DEFAULT_HOLD_TTL`]: how long a refund tombstone of a never-seen id is kept.
///
/// Such a refund is sent for a reserve that got no answer (or that its caller gave up on),
/// so the reserve it stands for was made by this same process, with a TTL this process
/// knows: at most the longest it ever asked for. The tombstone is kept as long as that hold
/// could have lived had the reserve run now (that TTL + the call timeout + 1 s, like any
/// closed id), so a late reserve of the id, or a settle or extend still coming for it,
/// finds it. Neither the default alone (a layer may hold for longer) nor the call timeout
/// alone (a delayed reserve may land any time within its own TTL) would be enough.
#[derive(Debug)]
pub(crate) struct LongestTtl(std::sync::atomic::AtomicU64);

impl Default for LongestTtl {
    fn default() -> Self {
        Self(std::sync::atomic::AtomicU64::new(
            DEFAULT_HOLD_TTL.as_millis() as u64,
        ))
    }
}

impl LongestTtl {
    /// Notes a reserve's TTL (ms): one relaxed load on the hot path, a write only when it
    /// grows.
    pub(crate) fn note(&self, ttl_ms: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if ttl_ms > self.0.load(Relaxed) {
            self.0.fetch_max(ttl_ms, Relaxed);
        }
    }

    /// The longest TTL noted so far (ms).
    pub(crate) fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Checks a hold ttl against the accepted range; the TTL in ms.
pub fn check_ttl(ttl: Duration) -> Result<u64, LedgerError> {
    let ms = ttl.as_millis();
    if ms == 0 || ttl > MAX_HOLD_TTL {
        return Err(LedgerError::InvalidTtl { ttl });
    }
    Ok(ms as u64)
}
