//! The checks every faithful ledger makes before it writes anything, public so a ledger
//! written outside this crate makes the same ones (and refuses the same input with the
//! same [`LedgerError`](super::LedgerError)).
//!
//! Account and hold ids are checked when they are made ([`AccountId::new`](super::AccountId::new),
//! [`HoldId::new`](super::HoldId::new)), so a ledger never sees an invalid one.
//!
//! ```
//! use tower_credits::ledger::validate::{check_amount, checked_total};
//! use tower_credits::ledger::MAX_AMOUNT;
//!
//! assert!(check_amount(MAX_AMOUNT).is_ok());
//! assert!(check_amount(MAX_AMOUNT + 1).is_err());
//! assert_eq!(checked_total(40, 2)?, 42);
//! assert!(checked_total(MAX_AMOUNT, 1).is_err());
//! # Ok::<_, tower_credits::LedgerError>(())
//! ```

pub use super::check_ttl;
pub use super::idempotency::check_retention;
pub use super::ids::{check_idempotency_key, check_route};
pub use crate::amount::{check_amount, checked_total};
