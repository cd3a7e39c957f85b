//! Idempotent requests in the ledger: the claim a keyed reserve makes, what a retry of it
//! finds ([`Replay`]), and the response stored for replays ([`StoreResponse`]).
//!
//! A request sent with an `Idempotency-Key` reserves with an [`IdempotencyClaim`]: the
//! key (by its SHA-256), the request's fingerprint and how long the record is kept. In the
//! same atomic step as the reserve, the ledger either records the claim (when the hold is
//! placed) or answers what the first request with that key came to, holding nothing:
//!
//! | the record | a reserve with its key finds |
//! |---|---|
//! | none (or expired, or its hold expired or was refunded unsettled) | a new claim |
//! | another fingerprint | [`Replay::KeyReused`] |
//! | its hold still open | [`Replay::InProgress`] |
//! | committed, response stored | [`Replay::Stored`] |
//! | committed, response not stored yet, within [`STORE_GRACE`] | [`Replay::InProgress`] |
//! | committed, response too large, or not stored within [`STORE_GRACE`] (a crash) | [`Replay::Unavailable`] |
//!
//! A commit of the hold (a [`Settle`](super::Settle) carrying the key) marks the record
//! committed; a refund deletes it, so a retry runs again. Nothing is ever run twice once
//! committed: that would charge twice.

use std::time::Duration;

use bytes::Bytes;

use super::{AccountId, HoldId, LedgerError};

/// How long an idempotency record is kept by default: 24 hours.
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// How long after its commit a response may still be stored: until then a retry is told
/// the first request is in progress; after, with no response stored (its replica crashed
/// between the commit and the store), that its response is unavailable.
pub const STORE_GRACE: Duration = Duration::from_secs(30);

/// The claim a keyed request makes in its reserve: the key's digest, the request's
/// fingerprint, and how long the record is kept.
///
/// ```
/// use tower_credits::ledger::IdempotencyClaim;
///
/// let claim = IdempotencyClaim::new("retry-7f3a", [7; 32])?;
/// assert_eq!(claim.fingerprint(), &[7; 32]);
/// assert!(IdempotencyClaim::new("", [7; 32]).is_err());
/// # Ok::<_, tower_credits::LedgerError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    key: [u8; 32],
    fingerprint: [u8; 32],
    retention: Duration,
}

impl IdempotencyClaim {
    /// A claim of `key` (1 to 255 printable ASCII characters, spaces included) for a
    /// request whose fingerprint is `fingerprint`, kept [`DEFAULT_IDEMPOTENCY_RETENTION`].
    pub fn new(key: &str, fingerprint: [u8; 32]) -> Result<Self, LedgerError> {
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(LedgerError::InvalidIdempotencyKey);
        }
        Ok(Self {
            key: key_digest(key),
            fingerprint,
            retention: DEFAULT_IDEMPOTENCY_RETENTION,
        })
    }

    /// How long the record is kept (1 ms to 30 days).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The SHA-256 of the key: what the ledger stores it under.
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// The request's fingerprint.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// How long the record is kept.
    pub fn retention_period(&self) -> Duration {
        self.retention
    }
}

/// The SHA-256 of an idempotency key: a record's name in the ledger.
pub fn key_digest(key: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes()).into()
}

/// Checks a retention period: 1 ms to 30 days; in ms.
pub fn check_retention(retention: Duration) -> Result<u64, LedgerError> {
    const MAX: Duration = Duration::from_secs(30 * 24 * 60 * 60);
    let ms = retention.as_millis();
    if ms == 0 || retention > MAX {
        return Err(LedgerError::InvalidSetting {
            what: "idempotency retention",
            detail: "must be 1 ms to 30 days".into(),
        });
    }
    Ok(ms as u64)
}

/// What a keyed reserve found instead of holding: the first request with that key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replay {
    /// The first request still runs, or its response is still being stored.
    InProgress,
    /// The key was used for another request (another fingerprint).
    KeyReused,
    /// The first request was committed and its response stored.
    Stored {
        /// The stored response, as the layer encoded it.
        response: Bytes,
        /// The account's available balance now.
        available: i64,
    },
    /// The first request was committed, but its response cannot be replayed: it was too
    /// large to store, or its replica stopped between the commit and the store.
    Unavailable,
}

impl Replay {
    /// What a committed record without a stored response means, `since_ms` after its
    /// commit: in progress within [`STORE_GRACE`], unavailable after.
    pub fn committed_unstored(since_ms: u64) -> Self {
        if since_ms < STORE_GRACE.as_millis() as u64 {
            Replay::InProgress
        } else {
            Replay::Unavailable
        }
    }
}

/// A response to keep for replays of a keyed request, or the mark that it cannot be.
#[derive(Debug, Clone)]
pub struct StoreResponse {
    account: AccountId,
    hold_id: HoldId,
    key: [u8; 32],
    response: Option<Bytes>,
}

impl StoreResponse {
    /// Keep `response` for the record of `key` made by hold `hold_id` of `account`.
    pub fn new(account: AccountId, hold_id: HoldId, key: [u8; 32], response: Bytes) -> Self {
        Self {
            account,
            hold_id,
            key,
            response: Some(response),
        }
    }

    /// Mark the record's response as not replayable (too large to store).
    pub fn unavailable(account: AccountId, hold_id: HoldId, key: [u8; 32]) -> Self {
        Self {
            account,
            hold_id,
            key,
            response: None,
        }
    }

    /// The account.
    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// The hold that made the record: a record another request made is left alone.
    pub fn hold_id(&self) -> &HoldId {
        &self.hold_id
    }

    /// The key's digest.
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// The response, or `None` for "not replayable".
    pub fn response(&self) -> Option<&Bytes> {
        self.response.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_record_is_in_progress_until_the_grace_ends() {
        assert_eq!(Replay::committed_unstored(0), Replay::InProgress);
        let grace = STORE_GRACE.as_millis() as u64;
        assert_eq!(Replay::committed_unstored(grace - 1), Replay::InProgress);
        assert_eq!(Replay::committed_unstored(grace), Replay::Unavailable);
    }

    #[test]
    fn keys_and_retentions_are_checked() {
        assert!(IdempotencyClaim::new(&"k".repeat(255), [0; 32]).is_ok());
        assert!(IdempotencyClaim::new(&"k".repeat(256), [0; 32]).is_err());
        assert!(IdempotencyClaim::new("a b", [0; 32]).is_ok());
        assert!(IdempotencyClaim::new("a\nb", [0; 32]).is_err());
        assert!(check_retention(Duration::ZERO).is_err());
        assert!(check_retention(Duration::from_secs(31 * 86_400)).is_err());
        assert_eq!(check_retention(Duration::from_secs(1)).unwrap(), 1_000);
    }
}
