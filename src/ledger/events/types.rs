//! What an event is, and the outbox a ledger keeps events in until they are delivered.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::ledger::{AccountId, LedgerError};

/// How long a replica keeps an event it detected (or claimed) to itself before another
/// replica may claim it, unless the ledger is built with another lease.
pub const DEFAULT_EVENT_LEASE: Duration = Duration::from_secs(30);

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
/// [`Settlement::events`]: crate::ledger::Settlement::events
/// [`Insufficient::events`]: crate::ledger::Insufficient::events
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
