use std::error::Error as StdError;
use std::time::Duration;

/// Why a ledger operation failed.
///
/// Refusals that are part of normal business (not enough credits, too many open holds, an
/// unknown account, a hold that already settled) are *outcomes*, not errors: see
/// [`ReserveOutcome`](super::ReserveOutcome) and [`SettleOutcome`](super::SettleOutcome).
/// Errors come in four [kinds](ErrorKind), each handled differently (see
/// [`kind`](Self::kind)): bad input, a conflict, a store that cannot be reached, and a
/// store that answered what no ledger of this version answers. None of them moved any
/// credits.
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
    /// An amount is larger than [`MAX_AMOUNT`](crate::ledger::MAX_AMOUNT).
    #[error("amount {amount} is out of range (max {max})")]
    AmountOutOfRange {
        /// The amount given.
        amount: u64,
        /// The largest amount accepted.
        max: u64,
    },
    /// The operation would push a running total past [`MAX_AMOUNT`](crate::ledger::MAX_AMOUNT).
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
    /// An account setting (a threshold, a runway horizon) the ledger does not accept.
    #[error("invalid {what}: {detail}")]
    InvalidSetting {
        /// The setting.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// [`balance`](super::LedgerReports::balance) or [`usage`](super::LedgerReports::usage) of an
    /// account never topped up or configured (a reserve answers
    /// [`ReserveOutcome::UnknownAccount`](super::ReserveOutcome::UnknownAccount) instead).
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
    /// The top-up idempotency key (a payment id) already credited another account: a
    /// payment id credits exactly one account, once. Nothing was credited.
    #[error("top-up idempotency key already used for account {account}")]
    TopUpKeyClaimed {
        /// The account the key belongs to.
        account: super::AccountId,
    },
    /// The store did not answer within the per-call deadline.
    #[error("ledger did not answer within {0:?}")]
    Timeout(Duration),
    /// The store could not be reached, lost the connection, or said it cannot serve now
    /// (loading, busy, failing over, cluster down): retry later.
    #[error("ledger unavailable: {0}")]
    Unavailable(#[source] Box<dyn StdError + Send + Sync>),
    /// The store answered what no ledger of this version answers: an unexpected reply, or
    /// an error raised by a script (a key of the wrong type, a Lua runtime error, an
    /// argument the script refused). A deployment bug (scripts and code of different
    /// versions, keys written by something else) or corrupt state: never retried, never
    /// counted by the circuit breaker as an outage, never served unbilled.
    #[error("ledger answered unexpectedly (deployment bug or corrupt state): {0}")]
    Corrupt(#[source] Box<dyn StdError + Send + Sync>),
}

/// The kind of a [`LedgerError`], which decides how it is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad input (an id, key, amount or ttl the ledger does not accept, or a total that
    /// would leave the accepted range): fix the call; nothing was written.
    InvalidInput,
    /// The call conflicts with an earlier one (a top-up key used for another amount or
    /// another account): nothing was written; retrying the same call fails the same way.
    Conflict,
    /// The store is unreachable or too slow: retry later; counted by the circuit breaker
    /// and subject to the outage policy.
    Unavailable,
    /// A protocol error or corrupt state: fail closed, do not retry, alert an operator.
    Corrupt,
}

impl LedgerError {
    /// The kind of the error: how to handle it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidAccountId { .. }
            | Self::InvalidHoldId
            | Self::InvalidIdempotencyKey
            | Self::InvalidRoute
            | Self::AmountOutOfRange { .. }
            | Self::TotalOutOfRange { .. }
            | Self::InvalidTtl { .. }
            | Self::InvalidSetting { .. }
            | Self::UnknownAccount => ErrorKind::InvalidInput,
            Self::TopUpConflict { .. } | Self::TopUpKeyClaimed { .. } => ErrorKind::Conflict,
            Self::Timeout(_) | Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Corrupt(_) => ErrorKind::Corrupt,
        }
    }

    /// Whether the error is the store's fault and passes (retry later), not the input's.
    pub fn is_unavailable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    /// Whether the store answered what no ledger of this version answers (a deployment bug
    /// or corrupt state): do not retry.
    pub fn is_corrupt(&self) -> bool {
        self.kind() == ErrorKind::Corrupt
    }
}
