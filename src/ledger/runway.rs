//! Runway math: how fast an account spends (a time-decayed burn rate) and how long its
//! balance lasts at that rate. Both ledgers use these, so `credits-runway` means the same
//! on either; the Redis scripts carry [`BURN_RATE_TAU_SECS`] in their generated prelude.

/// Time constant of the burn-rate average: spend older than a few hours barely counts.
pub const BURN_RATE_TAU_SECS: f64 = 3600.0;

/// Decays `rate` (credits/s) from `rate_at_ms` to `now_ms` and adds `spent` credits.
pub fn burn_rate_after(rate: f64, rate_at_ms: u64, now_ms: u64, spent: u64) -> f64 {
    decayed_rate(rate, rate_at_ms, now_ms) + spent as f64 / BURN_RATE_TAU_SECS
}

/// `rate` decayed from `rate_at_ms` to `now_ms`.
pub fn decayed_rate(rate: f64, rate_at_ms: u64, now_ms: u64) -> f64 {
    let dt = now_ms.saturating_sub(rate_at_ms) as f64 / 1000.0;
    rate * (-dt / BURN_RATE_TAU_SECS).exp()
}

/// Seconds `available` lasts at `rate` credits/s; `None` when nothing is being spent.
pub fn runway_secs(available: i64, rate: f64) -> Option<u64> {
    if rate <= 1e-9 {
        return None;
    }
    if available <= 0 {
        return Some(0);
    }
    Some((available as f64 / rate).min(u64::MAX as f64 / 2.0) as u64)
}
