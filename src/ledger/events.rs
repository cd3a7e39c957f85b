//! Credit events: what a ledger detects while it moves credits (a balance that fell below
//! a threshold, a runway that fell below its horizon, a refusal for lack of credits), and
//! the outbox that keeps each one until it is delivered.
//!
//! Detection happens inside the operation that moves the credits, exactly once per
//! crossing: the commit that crosses a threshold disarms it in the same atomic step, and
//! only a top-up re-arms it. The event is written to the ledger's outbox in that same step
//! (on Redis, a stream under the account's hash tag) and leased to the replica that made
//! the call, which delivers it at once; a replica that dies before it delivers leaves the
//! event for any other replica's [`Dispatcher`](crate::events::Dispatcher) once the lease
//! lapses. Delivery is therefore **at least once**: receivers deduplicate by
//! [`CreditEvent::id`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{AccountId, LedgerError};
use crate::amount::check_amount;

/// Most thresholds one account may have.
pub const MAX_THRESHOLDS: usize = 8;

/// The runway horizon an account gets unless it sets its own: a `balance.runway_low`
/// event fires when the forecast falls below a day.
pub const DEFAULT_RUNWAY_HORIZON: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest runway horizon an account may set.
pub const MAX_RUNWAY_HORIZON: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// How long a replica keeps an event it detected (or claimed) to itself before another
/// replica may claim it, unless the ledger is built with another lease.
pub const DEFAULT_EVENT_LEASE: Duration = Duration::from_secs(30);

/// A low-balance threshold of an account.
///
/// ```
/// use tower_credits::{AccountSettings, Threshold};
///
/// let settings = AccountSettings::new()
///     .threshold(Threshold::Credits(100))
///     .threshold(Threshold::PercentOfLastTopUp(10));
/// assert_eq!(settings.thresholds.len(), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Threshold {
    /// A fixed number of credits.
    Credits(u64),
    /// A percentage (1 to 100) of the account's last top-up: 10 with a last top-up of
    /// 5 000 credits is 500. Before any top-up it is 0 (crossed only in an overdraft).
    PercentOfLastTopUp(u8),
}

impl Threshold {
    /// The threshold in credits, given the account's last top-up.
    pub fn credits(self, last_top_up: u64) -> u64 {
        match self {
            Threshold::Credits(credits) => credits,
            // u128: the product of a MAX_AMOUNT top-up and 100 does not fit in u64.
            Threshold::PercentOfLastTopUp(pct) => {
                (u128::from(last_top_up) * u128::from(pct) / 100) as u64
            }
        }
    }

    /// Checks the threshold: credits within [`MAX_AMOUNT`](crate::ledger::MAX_AMOUNT), a
    /// percentage within 1..=100.
    pub fn check(self) -> Result<(), LedgerError> {
        match self {
            Threshold::Credits(credits) => check_amount(credits).map(|_| ()),
            Threshold::PercentOfLastTopUp(1..=100) => Ok(()),
            Threshold::PercentOfLastTopUp(pct) => Err(LedgerError::InvalidSetting {
                what: "threshold",
                detail: format!("{pct}% is not a percentage from 1 to 100"),
            }),
        }
    }

    /// The stored form: `"100"` or `"10%"` (what the Redis ledger keeps).
    #[cfg(feature = "redis")]
    pub(crate) fn encode(self) -> String {
        match self {
            Threshold::Credits(credits) => credits.to_string(),
            Threshold::PercentOfLastTopUp(pct) => format!("{pct}%"),
        }
    }
}

/// Checks an account's thresholds and runway horizon, as every ledger must before it
/// stores them.
pub fn check_alerts(
    thresholds: &[Threshold],
    horizon: Option<Duration>,
) -> Result<(), LedgerError> {
    if thresholds.len() > MAX_THRESHOLDS {
        return Err(LedgerError::InvalidSetting {
            what: "thresholds",
            detail: format!(
                "{} thresholds; an account may have at most {MAX_THRESHOLDS}",
                thresholds.len()
            ),
        });
    }
    thresholds.iter().try_for_each(|t| t.check())?;
    if horizon.is_some_and(|h| h > MAX_RUNWAY_HORIZON) {
        return Err(LedgerError::InvalidSetting {
            what: "runway horizon",
            detail: format!("longer than {} days", MAX_RUNWAY_HORIZON.as_secs() / 86_400),
        });
    }
    // Kept in whole seconds: a sub-second horizon would silently mean "never".
    if horizon.is_some_and(|h| !h.is_zero() && h.subsec_nanos() != 0) {
        return Err(LedgerError::InvalidSetting {
            what: "runway horizon",
            detail: "not a whole number of seconds (zero turns runway events off)".to_owned(),
        });
    }
    Ok(())
}

/// What an event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// `balance.low`: a commit left `available` below one of the account's thresholds.
    BalanceLow,
    /// `balance.runway_low`: the runway forecast fell below the account's horizon.
    RunwayLow,
    /// `balance.depleted`: a request was refused for lack of credits (once until the next
    /// top-up).
    Depleted,
}

impl EventKind {
    /// The event's `type`, as receivers see it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::BalanceLow => "balance.low",
            EventKind::RunwayLow => "balance.runway_low",
            EventKind::Depleted => "balance.depleted",
        }
    }

    /// The kind named `text` (`"balance.low"`, …).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "balance.low" => Some(EventKind::BalanceLow),
            "balance.runway_low" => Some(EventKind::RunwayLow),
            "balance.depleted" => Some(EventKind::Depleted),
            _ => None,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event, as detected by a ledger and kept in its outbox until delivered.
///
/// Its JSON ([`CreditEvent::to_json`]) is what receivers get:
///
/// ```json
/// {"id":"evt_3f1c…","type":"balance.low","account":"acct_42","available":4,
///  "threshold":100,"runway_secs":null,"created_at":"2026-11-28T03:00:00.000Z"}
/// ```
///
/// A ledger outside this crate makes one with [`CreditEvent::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreditEvent {
    /// Unique and stable across redeliveries: receivers deduplicate by it.
    pub id: String,
    /// What happened.
    pub kind: EventKind,
    /// The account it happened to.
    pub account: AccountId,
    /// The account's available balance right after the operation that detected it.
    pub available: i64,
    /// The threshold crossed, in credits (`balance.low` only).
    pub threshold: Option<u64>,
    /// The runway forecast, in seconds (`balance.runway_low` only).
    pub runway_secs: Option<u64>,
    /// When it was detected (ms since the Unix epoch, ledger clock).
    pub created_at_ms: u64,
    /// Where the ledger keeps it (the Redis stream entry id; a sequence number in memory):
    /// opaque, not sent to receivers.
    pub receipt: String,
}

impl CreditEvent {
    /// An event of `kind` for `account`. `key` is unique among the account's events and
    /// never reused, not even after a restart or a failover (a counter kept with the
    /// account, or one salted with the process's identity): the [`id`](Self::id) receivers
    /// deduplicate by is derived from the account and `key`. `key` is also the
    /// [`receipt`](Self::receipt) unless [`with_receipt`](Self::with_receipt) sets another.
    pub fn new(
        kind: EventKind,
        account: AccountId,
        available: i64,
        created_at_ms: u64,
        key: impl Into<String>,
    ) -> Self {
        let receipt = key.into();
        let digest = Sha256::new()
            .chain_update(account.as_str())
            .chain_update([0])
            .chain_update(&receipt)
            .finalize();
        Self {
            id: format!("evt_{}", hex::encode(&digest[..12])),
            kind,
            account,
            available,
            threshold: None,
            runway_secs: None,
            created_at_ms,
            receipt,
        }
    }

    /// Sets where the ledger keeps the event (the id does not change).
    pub fn with_receipt(mut self, receipt: impl Into<String>) -> Self {
        self.receipt = receipt.into();
        self
    }

    /// Sets the threshold crossed.
    pub fn with_threshold(mut self, threshold: u64) -> Self {
        self.threshold = Some(threshold);
        self
    }

    /// Sets the runway forecast.
    pub fn with_runway_secs(mut self, runway_secs: u64) -> Self {
        self.runway_secs = Some(runway_secs);
        self
    }

    /// `created_at` as RFC 3339 (UTC, milliseconds).
    pub fn created_at(&self) -> String {
        let at = UNIX_EPOCH + Duration::from_millis(self.created_at_ms);
        humantime::format_rfc3339_millis(at.max(UNIX_EPOCH)).to_string()
    }

    /// The body receivers get: `{"id", "type", "account", "available", "threshold",
    /// "runway_secs", "created_at"}` (`threshold` and `runway_secs` are `null` where they
    /// do not apply).
    pub fn to_json(&self) -> Bytes {
        let value = serde_json::json!({
            "id": self.id,
            "type": self.kind.as_str(),
            "account": self.account.as_str(),
            "available": self.available,
            "threshold": self.threshold,
            "runway_secs": self.runway_secs,
            "created_at": self.created_at(),
        });
        Bytes::from(serde_json::to_vec(&value).expect("a JSON value serializes"))
    }

    /// How long ago it was detected, by the system clock (zero if the clocks disagree).
    pub fn age(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.created_at_ms))
    }
}

/// A delivery that gave up, kept by the ledger for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The event.
    pub event: CreditEvent,
    /// Why the last attempt failed.
    pub reason: String,
    /// Where the ledger keeps the dead letter (opaque), for
    /// [`EventOutbox::requeue`].
    pub receipt: String,
}

impl DeadLetter {
    /// `event`, given up on because of `reason`; kept under the event's receipt.
    pub fn new(event: CreditEvent, reason: impl Into<String>) -> Self {
        Self {
            receipt: event.receipt.clone(),
            event,
            reason: reason.into(),
        }
    }

    /// Sets where the ledger keeps the dead letter.
    pub fn with_receipt(mut self, receipt: impl Into<String>) -> Self {
        self.receipt = receipt.into();
        self
    }
}

/// The future of an [`EventOutbox`] operation.
pub type OutboxFuture<T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send>>;

/// The outbox of a ledger: detected events wait there, leased to one replica at a time,
/// until a [`Dispatcher`](crate::events::Dispatcher) delivers and acknowledges them.
///
/// Events are written by the ledger operations themselves ([`Settlement::events`] and
/// [`Insufficient::events`] return those just detected, already leased to this replica).
/// A lease is held by a replica ([`EventOutbox::replica`]); once it lapses, any replica's
/// [`claim`](EventOutbox::claim) may take the event.
///
/// [`Settlement::events`]: super::Settlement::events
/// [`Insufficient::events`]: super::Insufficient::events
pub trait EventOutbox: Send + Sync + 'static {
    /// This replica's name in leases: unique per ledger instance.
    fn replica(&self) -> &str;

    /// Leases to this replica, for `lease`, up to `max` events whose lease lapsed (or that
    /// were never leased), oldest first.
    fn claim(&self, lease: Duration, max: usize) -> OutboxFuture<Vec<CreditEvent>>;

    /// Extends this replica's lease on `event`; `false` when the lease is no longer ours
    /// (it lapsed and another replica claimed it, or the event is gone).
    fn renew(&self, event: &CreditEvent, lease: Duration) -> OutboxFuture<bool>;

    /// `event` was delivered: removes it from the outbox.
    fn ack(&self, event: &CreditEvent) -> OutboxFuture<()>;

    /// Delivery of `event` gave up: moves it to the dead letters, with `reason`.
    fn dead_letter(&self, event: &CreditEvent, reason: &str) -> OutboxFuture<()>;

    /// The dead letters of `account`, oldest first.
    fn dead_letters(&self, account: &AccountId) -> OutboxFuture<Vec<DeadLetter>>;

    /// Puts a dead letter back in the outbox, unleased, with the same event id (say once
    /// the receiver is fixed): the next claim delivers it. `false` when it is no longer a
    /// dead letter.
    fn requeue(&self, dead: &DeadLetter) -> OutboxFuture<bool>;

    /// Events of `account` still waiting in the outbox (delivered ones are gone), oldest
    /// first.
    fn pending(&self, account: &AccountId) -> OutboxFuture<Vec<CreditEvent>>;
}

/// The alert state an account keeps, evaluated the same way by every ledger: which
/// thresholds have fired, whether the runway and depletion events have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Alerts {
    pub(crate) thresholds: Vec<Threshold>,
    /// Bit `i` set: `thresholds[i]` fired and waits for a top-up to re-arm.
    pub(crate) fired: u8,
    /// `None`: [`DEFAULT_RUNWAY_HORIZON`]; zero: no runway events.
    pub(crate) runway_horizon_secs: Option<u64>,
    pub(crate) runway_fired: bool,
    pub(crate) depleted_fired: bool,
    pub(crate) last_top_up: u64,
}

impl Alerts {
    /// The thresholds in credits, highest first (the order a falling balance crosses them).
    pub(crate) fn resolved(&self) -> Vec<u64> {
        let mut values: Vec<u64> = self
            .thresholds
            .iter()
            .map(|t| t.credits(self.last_top_up))
            .collect();
        values.sort_unstable_by(|a, b| b.cmp(a));
        values.dedup();
        values
    }

    /// The runway horizon in force.
    pub(crate) fn horizon(&self) -> Duration {
        Duration::from_secs(self.horizon_secs())
    }

    fn horizon_secs(&self) -> u64 {
        self.runway_horizon_secs
            .unwrap_or(DEFAULT_RUNWAY_HORIZON.as_secs())
    }

    /// After a commit that left `available` (and a runway forecast): the thresholds that
    /// fire now (highest first), disarmed, and whether the runway event fires.
    pub(crate) fn after_commit(
        &mut self,
        available: i64,
        runway: Option<u64>,
    ) -> (Vec<u64>, Option<u64>) {
        let mut crossed: Vec<(u64, usize)> = Vec::new();
        for (i, t) in self.thresholds.iter().enumerate() {
            let value = t.credits(self.last_top_up);
            if self.fired & (1 << i) == 0 && available < value as i64 {
                self.fired |= 1 << i;
                // Two thresholds of one value fire one event.
                if !crossed.iter().any(|(v, _)| *v == value) {
                    crossed.push((value, i));
                }
            }
        }
        crossed.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        let horizon = self.horizon_secs();
        let runway_low = match runway {
            Some(secs) if !self.runway_fired && horizon > 0 && secs < horizon => {
                self.runway_fired = true;
                Some(secs)
            }
            _ => None,
        };
        (crossed.into_iter().map(|(v, _)| v).collect(), runway_low)
    }

    /// After a refusal for lack of credits: whether `balance.depleted` fires.
    pub(crate) fn after_refusal(&mut self) -> bool {
        !std::mem::replace(&mut self.depleted_fired, true)
    }

    /// After a top-up of `amount` that left `available`: re-arms the thresholds it lifted
    /// `available` back to, the runway and the depletion events.
    pub(crate) fn after_top_up(&mut self, amount: u64, available: i64) {
        self.last_top_up = amount;
        for (i, t) in self.thresholds.iter().enumerate() {
            if available >= t.credits(self.last_top_up) as i64 {
                self.fired &= !(1 << i);
            }
        }
        self.runway_fired = false;
        self.depleted_fired = false;
    }

    /// New thresholds (all armed) and horizon. The same thresholds set again keep what
    /// fired: the same crossing is not reported twice.
    pub(crate) fn configure(&mut self, thresholds: Vec<Threshold>, horizon: Option<Duration>) {
        if thresholds != self.thresholds {
            self.thresholds = thresholds;
            self.fired = 0;
        }
        self.runway_horizon_secs = horizon.map(|h| h.as_secs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct() -> AccountId {
        AccountId::new("acct_1").unwrap()
    }

    #[test]
    fn percentages_resolve_against_the_last_top_up() {
        assert_eq!(Threshold::PercentOfLastTopUp(10).credits(5_000), 500);
        assert_eq!(
            Threshold::PercentOfLastTopUp(100).credits(crate::ledger::MAX_AMOUNT),
            crate::ledger::MAX_AMOUNT
        );
        assert_eq!(Threshold::PercentOfLastTopUp(33).credits(10), 3);
        assert!(Threshold::PercentOfLastTopUp(0).check().is_err());
        assert!(Threshold::PercentOfLastTopUp(101).check().is_err());
        assert!(Threshold::Credits(crate::ledger::MAX_AMOUNT + 1)
            .check()
            .is_err());
        assert!(check_alerts(&[Threshold::Credits(1); MAX_THRESHOLDS + 1], None).is_err());
    }

    #[test]
    fn each_threshold_fires_once_until_a_top_up_lifts_the_balance_back() {
        let mut a = Alerts::default();
        a.configure(vec![Threshold::Credits(100), Threshold::Credits(4)], None);
        assert_eq!(a.after_commit(4, None).0, vec![100]);
        assert_eq!(a.after_commit(3, None).0, vec![4]);
        assert!(a.after_commit(1, None).0.is_empty());
        // A top-up to 50 re-arms 4, not 100.
        a.after_top_up(49, 50);
        assert_eq!(a.after_commit(3, None).0, vec![4]);
        a.after_top_up(200, 203);
        assert_eq!(a.after_commit(0, None).0, vec![100, 4]);
    }

    #[test]
    fn runway_and_depletion_fire_once_until_a_top_up() {
        let mut a = Alerts::default();
        assert_eq!(a.after_commit(10, Some(3_600)).1, Some(3_600));
        assert_eq!(a.after_commit(9, Some(3_000)).1, None);
        assert!(a.after_refusal());
        assert!(!a.after_refusal());
        a.after_top_up(10, 19);
        assert!(a.after_refusal());
        assert_eq!(a.after_commit(9, Some(3_000)).1, Some(3_000));
        a.configure(vec![], Some(Duration::ZERO));
        a.after_top_up(10, 19);
        assert_eq!(a.after_commit(9, Some(1)).1, None, "a zero horizon is off");
    }

    #[test]
    fn events_serialize_as_documented() {
        let e = CreditEvent::new(EventKind::BalanceLow, acct(), 4, 1_764_298_800_000, "7")
            .with_threshold(100);
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["type"], "balance.low");
        assert_eq!(v["account"], "acct_1");
        assert_eq!(v["available"], 4);
        assert_eq!(v["threshold"], 100);
        assert!(v["runway_secs"].is_null());
        assert_eq!(v["created_at"], "2025-11-28T03:00:00.000Z");
        assert_eq!(v["id"], e.id);
        assert!(e.id.starts_with("evt_") && e.id.len() == 28);
        let other = CreditEvent::new(EventKind::BalanceLow, acct(), 4, 0, "8");
        assert_ne!(e.id, other.id);
    }
}
