//! How often and how long a delivery is retried.

use std::time::Duration;

/// Bounded retries with exponential backoff and full jitter.
///
/// Attempt `n` (from 0) waits a random time up to `min(first_delay * 2^n, max_delay)`
/// before the next: receivers that went down together do not come back to a thundering
/// herd. After `attempts` failures the event is kept as a dead letter, never dropped.
///
/// ```
/// use std::time::Duration;
/// use tower_credits::events::RetryPolicy;
///
/// let policy = RetryPolicy::new(5).first_delay(Duration::from_millis(100));
/// assert!(policy.delay(3) <= Duration::from_millis(800));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    first_delay: Duration,
    max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 8 attempts, from 500 ms up to 1 minute apart (about 2 minutes in all, at worst).
    fn default() -> Self {
        Self {
            attempts: 8,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// `attempts` in all (at least 1), with the default delays.
    pub fn new(attempts: u32) -> Self {
        Self {
            attempts: attempts.max(1),
            ..Self::default()
        }
    }

    /// The longest wait after the first failure.
    pub fn first_delay(mut self, delay: Duration) -> Self {
        self.first_delay = delay;
        self
    }

    /// The longest wait between two attempts.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Attempts in all.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait after failed attempt `attempt` (from 0): random, up to the backoff ceiling.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .first_delay
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_delay);
        ceiling.mul_f64(fastrand::f64())
    }

    /// The ceiling of [`delay`](Self::delay): what a lease must outlast.
    pub(crate) fn ceiling(&self, attempt: u32) -> Duration {
        self.first_delay
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_below_it() {
        let p = RetryPolicy::new(10)
            .first_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1));
        for attempt in 0..10 {
            let ceiling = p.ceiling(attempt);
            assert_eq!(
                ceiling,
                Duration::from_millis(100 << attempt).min(Duration::from_secs(1))
            );
            for _ in 0..50 {
                assert!(p.delay(attempt) <= ceiling);
            }
        }
        // Jitter: 50 draws are not all the same.
        let draws: std::collections::BTreeSet<_> = (0..50).map(|_| p.delay(5)).collect();
        assert!(draws.len() > 1);
        assert_eq!(RetryPolicy::new(0).attempts(), 1);
    }
}
