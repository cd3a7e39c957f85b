//! What goes into and comes out of a ledger.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{AccountId, CreditEvent, HoldId, IdempotencyClaim, Replay, Threshold};

/// Default time a hold lives before the ledger reclaims it: 60 seconds.
pub const DEFAULT_HOLD_TTL: Duration = Duration::from_secs(60);

/// A request to hold credits. Build it with [`Reserve::new`] and the setters.
///
/// ```
/// use std::time::Duration;
/// use tower_credits::AccountId;
/// use tower_credits::ledger::{HoldId, Reserve};
///
/// let reserve = Reserve::new(AccountId::new("acct_42")?, HoldId::generate(), 10)
///     .ttl(Duration::from_secs(30))
///     .route("GET /v1/echo");
/// assert_eq!(reserve.amount(), 10);
/// # Ok::<_, tower_credits::LedgerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Reserve {
    pub(crate) account: AccountId,
    pub(crate) hold_id: HoldId,
    pub(crate) amount: u64,
    pub(crate) ttl: Duration,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) min_amount: Option<u64>,
    pub(crate) idempotency: Option<IdempotencyClaim>,
}

impl Reserve {
    /// Hold `amount` credits of `account` under the caller-made `hold_id`.
    pub fn new(account: AccountId, hold_id: HoldId, amount: u64) -> Self {
        Self {
            account,
            hold_id,
            amount,
            ttl: DEFAULT_HOLD_TTL,
            route: None,
            min_amount: None,
            idempotency: None,
        }
    }

    /// Claims an idempotency key in the same atomic step (see
    /// [`idempotency`](super::idempotency)): a first request holds and records the claim;
    /// a retry holds nothing and gets [`ReserveOutcome::Replay`].
    pub fn idempotency(mut self, claim: IdempotencyClaim) -> Self {
        self.idempotency = Some(claim);
        self
    }

    /// The idempotency claim, if any.
    pub fn idempotency_claim(&self) -> Option<&IdempotencyClaim> {
        self.idempotency.as_ref()
    }

    /// Holds what the account can afford, down to `credits`, when it cannot afford the
    /// whole `amount`: the ledger holds `min(amount, available + credit_limit)` if that is
    /// at least `credits`, in the same atomic step (no read-then-reserve race), and
    /// [`Held::amount`] says what was held. Without it (the default), a reserve holds the
    /// whole amount or nothing.
    pub fn min_amount(mut self, credits: u64) -> Self {
        self.min_amount = Some(credits);
        self
    }

    /// The least this reserve may hold, if it may hold less than [`amount`](Self::amount).
    pub fn least_amount(&self) -> Option<u64> {
        self.min_amount
    }

    /// How long the hold lives unless settled or extended (default 60 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The route the hold pays for, recorded in [`Usage`] when committed. Takes an
    /// `Arc<str>` too, so a pricing table's labels are shared, not copied, per request.
    pub fn route(mut self, route: impl Into<Arc<str>>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// The account to charge.
    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// The hold's id.
    pub fn hold_id(&self) -> &HoldId {
        &self.hold_id
    }

    /// Credits to hold.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// How long the hold lives unless settled or extended.
    pub fn hold_ttl(&self) -> Duration {
        self.ttl
    }

    /// The route the hold pays for, if any: usage is recorded under it at commit.
    pub fn route_label(&self) -> Option<&str> {
        self.route.as_deref()
    }
}

/// How a hold is settled: commit what was used (the rest goes back), or refund it all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettleDecision {
    /// Charge this much, clamped to the hold.
    Commit(u64),
    /// Give the whole hold back.
    Refund,
}

/// A request to settle a hold: [`Settle::commit`] or [`Settle::refund`].
///
/// ```
/// use tower_credits::AccountId;
/// use tower_credits::ledger::{HoldId, Settle};
///
/// let acct = AccountId::new("acct_42")?;
/// let hold = HoldId::generate();
/// let settle = Settle::commit(&acct, &hold, 12);
/// assert_eq!(settle.actual(), Some(12));
/// assert_eq!(Settle::refund(&acct, &hold).actual(), None);
/// # Ok::<_, tower_credits::LedgerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Settle {
    account: AccountId,
    hold_id: HoldId,
    decision: SettleDecision,
    idempotency: Option<[u8; 32]>,
}

impl Settle {
    /// Commit `actual` credits of the hold (clamped to it) and release the rest.
    pub fn commit(account: impl Into<AccountId>, hold_id: impl Into<HoldId>, actual: u64) -> Self {
        Self::new(account, hold_id, SettleDecision::Commit(actual))
    }

    /// Give the whole hold back. An id never seen leaves a tombstone.
    pub fn refund(account: impl Into<AccountId>, hold_id: impl Into<HoldId>) -> Self {
        Self::new(account, hold_id, SettleDecision::Refund)
    }

    /// Settle as `decision` says.
    pub fn new(
        account: impl Into<AccountId>,
        hold_id: impl Into<HoldId>,
        decision: SettleDecision,
    ) -> Self {
        Self {
            account: account.into(),
            hold_id: hold_id.into(),
            decision,
            idempotency: None,
        }
    }

    /// The idempotency key (its digest) the hold's reserve claimed: a commit marks the
    /// record committed, a refund deletes it.
    pub fn idempotency(mut self, key: [u8; 32]) -> Self {
        self.idempotency = Some(key);
        self
    }

    /// The idempotency key's digest, if any.
    pub fn idempotency_key(&self) -> Option<&[u8; 32]> {
        self.idempotency.as_ref()
    }

    /// The account of the hold.
    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// The hold's id.
    pub fn hold_id(&self) -> &HoldId {
        &self.hold_id
    }

    /// Commit or refund.
    pub fn decision(&self) -> SettleDecision {
        self.decision
    }

    /// The actual cost to commit, unclamped; `None` for a refund.
    pub fn actual(&self) -> Option<u64> {
        match self.decision {
            SettleDecision::Commit(actual) => Some(actual),
            SettleDecision::Refund => None,
        }
    }
}

/// A request to keep an open hold alive for `ttl` from now.
#[derive(Debug, Clone)]
pub struct Extend {
    account: AccountId,
    hold_id: HoldId,
    ttl: Duration,
}

impl Extend {
    /// Keep `hold_id` of `account` alive for `ttl` from now.
    pub fn new(account: impl Into<AccountId>, hold_id: impl Into<HoldId>, ttl: Duration) -> Self {
        Self {
            account: account.into(),
            hold_id: hold_id.into(),
            ttl,
        }
    }

    /// The account of the hold.
    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// The hold's id.
    pub fn hold_id(&self) -> &HoldId {
        &self.hold_id
    }

    /// How long the hold lives from now.
    pub fn hold_ttl(&self) -> Duration {
        self.ttl
    }
}

/// A request to raise an open hold to `amount` credits in all, when the account can
/// afford the difference: what lets a stream go on past its first hold
/// ([`Charge::grow`](crate::Charge::grow), [`StreamLimit::Grow`](crate::StreamLimit::Grow)).
///
/// It names the hold's new **total**, not an increment, so a retried grow (after a
/// timeout, say) holds nothing twice: a grow to a total the hold already has is a no-op
/// that says so. The difference is held as a reserve holds it: from `available` down to
/// `-credit_limit`, all or nothing, or (with [`at_least`](Grow::at_least)) as much as the
/// account affords down to that total. A refused grow writes nothing and emits no event.
/// It does not move the hold's expiry; [`Extend`] does.
///
/// ```
/// use tower_credits::AccountId;
/// use tower_credits::ledger::{Grow, HoldId};
///
/// let acct = AccountId::new("acct_42")?;
/// let grow = Grow::to(&acct, HoldId::generate(), 40).at_least(21);
/// assert_eq!((grow.amount(), grow.least_amount()), (40, 21));
/// # Ok::<_, tower_credits::LedgerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Grow {
    account: AccountId,
    hold_id: HoldId,
    amount: u64,
    least: Option<u64>,
}

impl Grow {
    /// Raise `hold_id` of `account` to `amount` credits in all.
    pub fn to(account: impl Into<AccountId>, hold_id: impl Into<HoldId>, amount: u64) -> Self {
        Self {
            account: account.into(),
            hold_id: hold_id.into(),
            amount,
            least: None,
        }
    }

    /// When the account cannot afford the whole raise, raise the hold as far as it can, as
    /// long as that is at least `credits` in all (same atomic step). Without it, all or
    /// nothing.
    pub fn at_least(mut self, credits: u64) -> Self {
        self.least = Some(credits);
        self
    }

    /// The account of the hold.
    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// The hold's id.
    pub fn hold_id(&self) -> &HoldId {
        &self.hold_id
    }

    /// The hold's new total.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// The least new total a partial raise may leave ([`amount`](Self::amount) when all or
    /// nothing).
    pub fn least_amount(&self) -> u64 {
        self.least.unwrap_or(self.amount).min(self.amount)
    }
}

/// The answer to [`Ledger::grow`](super::Ledger::grow).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrowOutcome {
    /// The hold now holds [`Grown::amount`] in all (or already did: a retried grow).
    Grown(Grown),
    /// The account cannot afford the raise: nothing changed.
    /// [`Insufficient::required`] is the smallest raise asked for (the difference).
    Insufficient(Insufficient),
    /// The hold is no longer open: it settled, expired, or was never seen.
    NotOpen(SettleOutcome),
}

/// A hold after a [grow](super::Ledger::grow).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Grown {
    /// What the hold holds now, in all.
    pub amount: u64,
    /// The account's available balance right after.
    pub available: i64,
}

impl Grown {
    /// A hold of `amount` in all, leaving `available`.
    pub fn new(amount: u64, available: i64) -> Self {
        Self { amount, available }
    }
}

/// A request to add credits to an account, once per payment id.
///
/// ```
/// use tower_credits::{AccountId, TopUp};
///
/// let top_up = TopUp::new(&AccountId::new("acct_42")?, 100, "pay_123");
/// assert_eq!((top_up.amount(), top_up.idempotency_key()), (100, "pay_123"));
/// # Ok::<_, tower_credits::LedgerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TopUp {
    account: AccountId,
    amount: u64,
    idempotency_key: String,
}

impl TopUp {
    /// Add `amount` credits to `account` under the payment id `idempotency_key`.
    pub fn new(
        account: impl Into<AccountId>,
        amount: u64,
        idempotency_key: impl Into<String>,
    ) -> Self {
        Self {
            account: account.into(),
            amount,
            idempotency_key: idempotency_key.into(),
        }
    }

    /// The account to credit.
    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// Credits to add.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// The payment id: it credits one account, once.
    pub fn idempotency_key(&self) -> &str {
        &self.idempotency_key
    }
}

/// A request to set an account's settings (creating the account).
#[derive(Debug, Clone)]
pub struct Configure {
    account: AccountId,
    settings: AccountSettings,
}

impl Configure {
    /// Set `account`'s `settings`.
    pub fn new(account: impl Into<AccountId>, settings: AccountSettings) -> Self {
        Self {
            account: account.into(),
            settings,
        }
    }

    /// The account.
    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// Its settings.
    pub fn settings(&self) -> &AccountSettings {
        &self.settings
    }
}

/// The answer to [`Ledger::reserve`](super::Ledger::reserve).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReserveOutcome {
    /// The credits are held.
    Held(Held),
    /// Not enough credits: nothing was written.
    Insufficient(Insufficient),
    /// This hold id was already settled, refunded, expired, or refunded before it was
    /// reserved (a tombstone): nothing was held.
    Closed(SettleOutcome),
    /// The account already has the most open holds it may have (the ledger's
    /// `max_open_holds`): nothing was written.
    TooManyHolds {
        /// The configured limit.
        limit: u64,
    },
    /// The account has never been topped up or configured: nothing was written (no
    /// account, no tombstone).
    UnknownAccount,
    /// The reserve's idempotency key was used before: what that request came to. Nothing
    /// was held.
    Replay(Replay),
}

/// A hold that was placed (or found already placed, for a retried reserve).
///
/// A ledger outside this crate makes one with [`Held::new`] and sets the other fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Held {
    /// Credits held.
    pub amount: u64,
    /// The account's available balance right after the hold.
    pub available: i64,
    /// The account's overdraft allowance.
    pub credit_limit: u64,
    /// The account's own low-balance thresholds in credits, highest first (empty: none).
    pub thresholds: Vec<u64>,
    /// When the hold expires, in ms since the Unix epoch (ledger clock).
    pub expires_at_ms: u64,
    /// `true` when this hold id was already held and this call changed nothing.
    pub replayed: bool,
    /// Seconds `available` lasts at the account's recent spend rate, when it spends.
    pub runway_secs: Option<u64>,
}

/// A refused reserve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Insufficient {
    /// The credits asked for.
    pub required: u64,
    /// The account's available balance (may be negative with an overdraft).
    pub available: i64,
    /// The account's overdraft allowance.
    pub credit_limit: u64,
    /// Events this refusal detected (`balance.depleted`, once until the next top-up),
    /// already in the ledger's outbox and leased to this replica.
    pub events: Vec<CreditEvent>,
}

impl Held {
    /// `amount` held, leaving `available`, expiring at `expires_at_ms` (ms since the Unix
    /// epoch); no overdraft, no threshold, not replayed, no runway.
    pub fn new(amount: u64, available: i64, expires_at_ms: u64) -> Self {
        Self {
            amount,
            available,
            expires_at_ms,
            ..Self::default()
        }
    }
}

impl Insufficient {
    /// `required` credits asked for, `available` and `credit_limit` as they are.
    pub fn new(required: u64, available: i64, credit_limit: u64) -> Self {
        Self {
            required,
            available,
            credit_limit,
            events: Vec::new(),
        }
    }

    /// How many more credits the request needs: `required - (available + credit_limit)`.
    pub fn shortfall(&self) -> u64 {
        let spendable = self.available as i128 + self.credit_limit as i128;
        (self.required as i128 - spendable).max(0) as u64
    }
}

/// How a settle call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SettleOutcome {
    /// This call committed the hold.
    Committed,
    /// This call refunded the hold.
    Refunded,
    /// The hold had already been committed: nothing moved.
    AlreadyCommitted,
    /// The hold had already been refunded: nothing moved.
    AlreadyRefunded,
    /// The hold had expired and its credits went back: nothing moved.
    Expired,
    /// The hold id was never seen. A refund leaves a tombstone so a late reserve with this
    /// id will not hold; a commit changes nothing.
    Unknown,
}

impl SettleOutcome {
    /// `true` when this call moved credits.
    pub fn is_applied(self) -> bool {
        matches!(self, Self::Committed | Self::Refunded)
    }
}

/// The answer to a commit or refund.
///
/// A ledger outside this crate makes one with [`Settlement::new`] and sets the other fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settlement {
    /// What happened.
    pub outcome: SettleOutcome,
    /// Credits committed by this call (0 unless `outcome` is `Committed`).
    pub committed: u64,
    /// Credits that went back to `available` by this call.
    pub released: u64,
    /// `true` when the actual cost asked for was more than the hold and was clamped.
    pub clamped: bool,
    /// The account's available balance after this call (`None` for unknown accounts).
    pub available: Option<i64>,
    /// The account's own low-balance thresholds in credits, highest first (empty: none).
    pub thresholds: Vec<u64>,
    /// Events this commit detected, exactly once per crossing (`balance.low` for each
    /// threshold it crossed, `balance.runway_low`), already in the ledger's outbox and
    /// leased to this replica: hand them to a
    /// [`Dispatcher`](crate::events::Dispatcher) to deliver now.
    pub events: Vec<CreditEvent>,
    /// Seconds the balance lasts at the account's recent spend rate, when it spends.
    pub runway_secs: Option<u64>,
}

impl Settlement {
    /// A settle that ended as `outcome`; nothing committed or released, no balance known.
    pub fn new(outcome: SettleOutcome) -> Self {
        Self {
            outcome,
            committed: 0,
            released: 0,
            clamped: false,
            available: None,
            thresholds: Vec::new(),
            events: Vec::new(),
            runway_secs: None,
        }
    }
}

/// The answer to [`Ledger::extend`](super::Ledger::extend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Extended {
    /// The hold now expires at this time (ms since the Unix epoch).
    Until(u64),
    /// The hold is no longer open: it settled, expired, or was never seen.
    NotOpen(SettleOutcome),
}

/// The answer to [`LedgerAdmin::top_up`](super::LedgerAdmin::top_up).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToppedUp {
    /// Credits added by the key (the first time).
    pub amount: u64,
    /// `true` when the key had already been credited and this call changed nothing.
    pub replayed: bool,
    /// Available balance after the call.
    pub available: i64,
}

impl ToppedUp {
    /// `amount` credited by the key (the first time), `available` after the call.
    pub fn new(amount: u64, available: i64, replayed: bool) -> Self {
        Self {
            amount,
            replayed,
            available,
        }
    }
}

/// An account's balance and running totals.
///
/// Conservation: `topped_up == available + held + committed`, always. A ledger outside
/// this crate makes one with `Balance::default()` and sets its fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Balance {
    /// Credits that can be held now (negative only within the overdraft).
    pub available: i64,
    /// Sum of open holds.
    pub held: u64,
    /// Sum of all commits.
    pub committed: u64,
    /// Sum of all top-ups.
    pub topped_up: u64,
    /// Overdraft allowed.
    pub credit_limit: u64,
    /// The account's own low-balance thresholds in credits, highest first (empty: none).
    pub thresholds: Vec<u64>,
    /// The account's runway horizon (`balance.runway_low` fires below it; zero: never).
    pub runway_horizon: Duration,
    /// Number of open holds.
    pub open_holds: u64,
    /// Seconds the balance lasts at the recent spend rate, when it spends.
    pub runway_secs: Option<u64>,
}

/// Settings of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccountSettings {
    /// Overdraft allowed: `available` may fall to `-credit_limit`.
    pub credit_limit: u64,
    /// Low-balance thresholds (at most [`MAX_THRESHOLDS`](super::MAX_THRESHOLDS)): a
    /// commit that leaves `available` below one fires `balance.low` for it once; only a
    /// top-up that lifts `available` back to it re-arms it. Empty: none (the layer's
    /// default still warns in headers, but sends no event).
    pub thresholds: Vec<Threshold>,
    /// `balance.runway_low` fires when the runway forecast falls below this (`None`:
    /// [`DEFAULT_RUNWAY_HORIZON`](super::DEFAULT_RUNWAY_HORIZON); zero: never).
    pub runway_horizon: Option<Duration>,
}

impl AccountSettings {
    /// Strictly prepaid, no own threshold, the default runway horizon.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the overdraft allowance.
    pub fn credit_limit(mut self, credits: u64) -> Self {
        self.credit_limit = credits;
        self
    }

    /// Adds a low-balance threshold of `credits`.
    pub fn low_balance_threshold(self, credits: u64) -> Self {
        self.threshold(Threshold::Credits(credits))
    }

    /// Adds a low-balance threshold.
    pub fn threshold(mut self, threshold: Threshold) -> Self {
        self.thresholds.push(threshold);
        self
    }

    /// Sets the runway horizon (zero: no runway events).
    pub fn runway_horizon(mut self, horizon: Duration) -> Self {
        self.runway_horizon = Some(horizon);
        self
    }
}

impl RouteUsage {
    /// `credits` committed over `calls` commits.
    pub fn new(credits: u64, calls: u64) -> Self {
        Self { credits, calls }
    }
}

/// Credits and calls committed for one route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteUsage {
    /// Credits committed.
    pub credits: u64,
    /// Commits counted.
    pub calls: u64,
}

/// What an account spent, by route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Usage {
    /// Committed credits and calls per route label (holds without a route count under `""`).
    pub by_route: BTreeMap<String, RouteUsage>,
}
