//! Time sources for ledgers.
//!
//! Ledgers read time through a [`Clock`] so tests move time forward instead of sleeping.
//! [`SystemClock`] is the default; [`ManualClock`] only moves when told to.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// # Example
///
/// ```
/// use tower_credits::clock::{Clock, SystemClock};
/// assert!(SystemClock.now_ms() > 1_600_000_000_000);
/// ```
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when [`advance`](ManualClock::advance) is called.
///
/// Clones share one time, so a test keeps a clone and moves the ledger's clock forward.
/// It also records how far it has been moved in total, which is how a
/// [`RedisLedger`](crate::ledger::RedisLedger) under the `test-util` feature shifts
/// Redis's own `TIME`.
///
/// ```
/// use std::time::Duration;
/// use tower_credits::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let start = clock.now_ms();
/// clock.advance(Duration::from_secs(61));
/// assert_eq!(clock.now_ms() - start, 61_000);
/// assert_eq!(clock.advanced(), Duration::from_secs(61));
/// ```
#[derive(Clone)]
pub struct ManualClock {
    start_ms: u64,
    advanced_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock that starts at the current system time.
    pub fn new() -> Self {
        Self {
            start_ms: SystemClock.now_ms(),
            advanced_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves the clock forward by `by` (millisecond resolution).
    pub fn advance(&self, by: Duration) {
        self.advanced_ms
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// How far the clock has been moved since it was made.
    pub fn advanced(&self) -> Duration {
        Duration::from_millis(self.advanced_ms.load(Ordering::SeqCst))
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_ms", &self.now_ms())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.start_ms + self.advanced_ms.load(Ordering::SeqCst)
    }
}
