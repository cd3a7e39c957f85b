//! Checked credit amounts.
//!
//! Redis Lua numbers are IEEE doubles: past 2^53 an integer silently loses precision
//! (Redis 7 stores 2^53 + 1 as 2^53). Every amount and every running total this crate
//! handles therefore stays within ±[`MAX_AMOUNT`], checked at the API boundary.

use crate::ledger::LedgerError;

/// The largest amount or total a ledger accepts: 2^53 − 1, the largest integer a double
/// (and so a Redis Lua number) represents exactly.
pub const MAX_AMOUNT: u64 = (1 << 53) - 1;

/// Checks that `amount` is at most [`MAX_AMOUNT`].
pub fn check_amount(amount: u64) -> Result<u64, LedgerError> {
    if amount > MAX_AMOUNT {
        Err(LedgerError::AmountOutOfRange {
            amount,
            max: MAX_AMOUNT,
        })
    } else {
        Ok(amount)
    }
}

/// Adds `amount` to a running total, refusing a sum past [`MAX_AMOUNT`].
pub fn checked_total(total: u64, amount: u64) -> Result<u64, LedgerError> {
    match total.checked_add(amount) {
        Some(sum) if sum <= MAX_AMOUNT => Ok(sum),
        _ => Err(LedgerError::TotalOutOfRange {
            total: total.saturating_add(amount),
            max: MAX_AMOUNT,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_amount_is_exact_in_a_double() {
        assert_eq!(MAX_AMOUNT as f64 as u64, MAX_AMOUNT);
        assert_eq!(
            (MAX_AMOUNT + 2) as f64 as u64,
            MAX_AMOUNT + 1,
            "2^53+1 rounds"
        );
    }

    #[test]
    fn amounts_past_the_max_are_refused() {
        assert_eq!(check_amount(MAX_AMOUNT).unwrap(), MAX_AMOUNT);
        assert!(matches!(
            check_amount(MAX_AMOUNT + 1),
            Err(LedgerError::AmountOutOfRange { .. })
        ));
        assert_eq!(checked_total(MAX_AMOUNT - 1, 1).unwrap(), MAX_AMOUNT);
        assert!(matches!(
            checked_total(MAX_AMOUNT, 1),
            Err(LedgerError::TotalOutOfRange { .. })
        ));
        assert!(matches!(
            checked_total(u64::MAX, u64::MAX),
            Err(LedgerError::TotalOutOfRange { .. })
        ));
    }
}
