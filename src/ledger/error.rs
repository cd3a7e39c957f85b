use std::error::Error as StdError;
use std::time::Duration;

/// Why a ledger operation failed.
///
/// Refusals that are part of normal business (not enough credits, a hold that already
/// settled) are *outcomes*, not errors: see [`ReserveOutcome`](super::ReserveOutcome) and
/// [`SettleOutcome`](super::SettleOutcome). Errors are bad input, conflicts, and a store
/// that cannot be reached. None of them moved any credits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The account id has characters or a length the ledger does not accept.
    #[error("invalid account id: it {reason}")]
    InvalidAccountId {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The hold id is empty, longer than 64 bytes, or not `[A-Za-z0-9_-]`.
    #[error("invalid hold id: use 1 to 64 ASCII letters, digits, `_` or `-`")]
    InvalidHoldId,
    /// The top-up idempotency key is empty, longer than 255 bytes, or not printable ASCII.
    #[error("invalid idempotency key: use 1 to 255 printable ASCII characters")]
    InvalidIdempotencyKey,
    /// The route label is longer than 256 bytes or has control characters.
    #[error("invalid route label: at most 256 bytes, no control characters")]
    InvalidRoute,
    /// An amount is larger than [`MAX_AMOUNT`](crate::MAX_AMOUNT).
    #[error("amount {amount} is out of range (max {max})")]
    AmountOutOfRange {
        /// The amount given.
        amount: u64,
        /// The largest amount accepted.
        max: u64,
    },
    /// The operation would push a running total past [`MAX_AMOUNT`](crate::MAX_AMOUNT).
    #[error("total {total} would be out of range (max {max})")]
    TotalOutOfRange {
        /// The total the operation would have made (saturated).
        total: u64,
        /// The largest total accepted.
        max: u64,
    },
    /// A hold's time to live must be at least one millisecond.
    #[error("invalid hold ttl {ttl:?}: must be between 1 ms and 1 day")]
    InvalidTtl {
        /// The ttl given.
        ttl: Duration,
    },
    /// The account has never been topped up or configured.
    #[error("unknown account")]
    UnknownAccount,
    /// The idempotency key was already used for a top-up of another amount.
    #[error("top-up idempotency key already used for {first_amount} credits, not {amount}")]
    TopUpConflict {
        /// The amount credited the first time the key was used.
        first_amount: u64,
        /// The amount of the conflicting replay.
        amount: u64,
    },
    /// The account has as many open holds as it is allowed.
    #[error("account has {limit} open holds, the most allowed")]
    TooManyHolds {
        /// The configured limit.
        limit: u64,
    },
    /// The store did not answer within the per-call deadline.
    #[error("ledger did not answer within {0:?}")]
    Timeout(Duration),
    /// The store could not be reached or answered with an error.
    #[error("ledger unavailable: {0}")]
    Unavailable(#[source] Box<dyn StdError + Send + Sync>),
}

impl LedgerError {
    /// Whether the error is the store's fault (retry later), not the input's.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Unavailable(_))
    }
}
