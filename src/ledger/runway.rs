//! Runway math: how fast an account spends (a time-decayed burn rate) and how long its
//! balance lasts at that rate. Both ledgers use these, so `credits-runway` means the same
//! on either; the Redis scripts carry [`BURN_RATE_TAU_SECS`] in their generated prelude.

/// Commits an account needs before any runway is forecast: a rate from a handful of calls
/// is noise, and a caller must not be told "3 minutes left" after its first request.
pub const RUNWAY_MIN_COMMITS: u64 = 10;

/// How long those commits must span (ms), for the same reason: ten calls in a second say
/// nothing about a day.
pub const RUNWAY_MIN_SPAN_MS: u64 = 5 * 60 * 1000;

/// Whether an account's spend history is long enough for a runway: at least
/// [`RUNWAY_MIN_COMMITS`] commits (of at least one credit; top-ups never count), the first
/// at least [`RUNWAY_MIN_SPAN_MS`] before `now_ms`. Every ledger applies it, so a runway
/// means the same in headers, quotes, 402s and readouts.
pub fn runway_known(commits: u64, first_commit_ms: Option<u64>, now_ms: u64) -> bool {
    commits >= RUNWAY_MIN_COMMITS
        && first_commit_ms.is_some_and(|first| now_ms.saturating_sub(first) >= RUNWAY_MIN_SPAN_MS)
}

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
