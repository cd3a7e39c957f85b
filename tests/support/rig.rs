//! The shared test rig, written once for every test binary: the deadline of waits, polling
//! a condition against that deadline, pricing tables, the conservation check and a seeded
//! generator.
//!
//! Nothing here sleeps and hopes: every wait polls a condition against a deadline, and a
//! deadline is a bound on a hang, never a speed claim.

use std::future::Future;
use std::time::{Duration, Instant};

use tower_credits::pricing::Pricing;
use tower_credits::LedgerReports;
use tower_credits::{AccountId, Balance};

/// How long a test waits on a condition before failing. Generous: it only bounds a hang
/// on a loaded machine (tests run in parallel, Redis with `appendfsync always`).
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Pause between two polls of a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Polls `cond` until it returns `Some`, or panics after `deadline` with `what`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = cond() {
            return value;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The async twin of [`wait_for`], for conditions that call a ledger.
pub async fn wait_for_async<T, F, Fut>(what: &str, deadline: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = cond().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls `condition` until it is true, failing the test after [`DEADLINE`].
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for_async(what, DEADLINE, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await
}

/// A price list from a table of `(route, credits)`.
pub fn pricing(routes: &[(&str, u64)]) -> Pricing {
    routes.iter().fold(Pricing::new(), |p, &(route, credits)| {
        p.route(route, credits)
    })
}

/// Whether `topped_up = available + held + committed` (in `i128`: no overflow can hide a
/// break).
pub fn is_conserved(b: &Balance) -> bool {
    b.topped_up as i128 == b.available as i128 + b.held as i128 + b.committed as i128
}

/// Panics unless `b` is conserved: `topped_up = available + held + committed`.
pub fn assert_balanced(b: &Balance) {
    assert!(
        is_conserved(b),
        "conservation broken: topped_up {} != available {} + held {} + committed {}: {b:?}",
        b.topped_up,
        b.available,
        b.held,
        b.committed
    );
}

/// The balance of `account`, after checking `topped_up = available + held + committed`.
pub async fn assert_conserved<L: LedgerReports>(ledger: &L, account: &AccountId) -> Balance {
    let b = ledger
        .balance(account)
        .await
        .unwrap_or_else(|e| panic!("balance of {account}: {e}"));
    assert!(is_conserved(&b), "conservation broken for {account}: {b:?}");
    b
}

/// SplitMix64: small, seedable, good enough to pick outcomes and amounts. The same seed
/// gives the same sequence, so a failing seed replays.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// One of `items` (not empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.next() as usize % items.len()]
    }
}
