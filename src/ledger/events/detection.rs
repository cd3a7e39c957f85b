//! Detection: the thresholds of an account and the alert state every ledger evaluates the
//! same way, so each crossing fires exactly once.

use std::time::Duration;

use crate::amount::check_amount;
use crate::ledger::LedgerError;

/// Most thresholds one account may have.
pub const MAX_THRESHOLDS: usize = 8;

/// The runway horizon an account gets unless it sets its own: a `balance.runway_low`
/// event fires when the forecast falls below a day.
pub const DEFAULT_RUNWAY_HORIZON: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest runway horizon an account may set.
pub const MAX_RUNWAY_HORIZON: Duration = Duration::from_secs(366 * 24 * 60 * 60);

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
}

impl Alerts {
    /// The thresholds in credits, highest first (the order a falling balance crosses them),
    /// a percentage of `last_top_up` (the account keeps it, so an account with no settings
    /// keeps no alert state).
    #[inline]
    pub(crate) fn resolved(&self, last_top_up: u64) -> Vec<u64> {
        if self.thresholds.is_empty() {
            // Most accounts: nothing to sort on every reserve (and no call made).
            return Vec::new();
        }
        self.resolve(last_top_up)
    }

    fn resolve(&self, last_top_up: u64) -> Vec<u64> {
        let mut values: Vec<u64> = self
            .thresholds
            .iter()
            .map(|t| t.credits(last_top_up))
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
    /// fire now (highest first, a percentage of `last_top_up`), disarmed, and whether the
    /// runway event fires.
    #[inline]
    pub(crate) fn after_commit(
        &mut self,
        last_top_up: u64,
        available: i64,
        runway: Option<u64>,
    ) -> (Vec<u64>, Option<u64>) {
        if self.thresholds.is_empty() && (self.runway_fired || runway.is_none()) {
            // No threshold, and no runway event that could fire: the usual commit (and no
            // call made).
            return (Vec::new(), None);
        }
        self.fire_after_commit(last_top_up, available, runway)
    }

    fn fire_after_commit(
        &mut self,
        last_top_up: u64,
        available: i64,
        runway: Option<u64>,
    ) -> (Vec<u64>, Option<u64>) {
        let mut crossed: Vec<(u64, usize)> = Vec::new();
        for (i, t) in self.thresholds.iter().enumerate() {
            let value = t.credits(last_top_up);
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
        for (i, t) in self.thresholds.iter().enumerate() {
            if available >= t.credits(amount) as i64 {
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
    use super::super::types::{CreditEvent, EventKind};
    use super::*;
    use crate::ledger::AccountId;

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
        assert_eq!(a.after_commit(0, 4, None).0, vec![100]);
        assert_eq!(a.after_commit(0, 3, None).0, vec![4]);
        assert!(a.after_commit(0, 1, None).0.is_empty());
        // A top-up to 50 re-arms 4, not 100.
        a.after_top_up(49, 50);
        assert_eq!(a.after_commit(0, 3, None).0, vec![4]);
        a.after_top_up(200, 203);
        assert_eq!(a.after_commit(0, 0, None).0, vec![100, 4]);
    }

    #[test]
    fn runway_and_depletion_fire_once_until_a_top_up() {
        let mut a = Alerts::default();
        assert_eq!(a.after_commit(0, 10, Some(3_600)).1, Some(3_600));
        assert_eq!(a.after_commit(0, 9, Some(3_000)).1, None);
        assert!(a.after_refusal());
        assert!(!a.after_refusal());
        a.after_top_up(10, 19);
        assert!(a.after_refusal());
        assert_eq!(a.after_commit(0, 9, Some(3_000)).1, Some(3_000));
        a.configure(vec![], Some(Duration::ZERO));
        a.after_top_up(10, 19);
        assert_eq!(
            a.after_commit(0, 9, Some(1)).1,
            None,
            "a zero horizon is off"
        );
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
