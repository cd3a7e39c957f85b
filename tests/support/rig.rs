//! The shared test rig, written once for every test binary: the deadline of waits, polling
//! a condition against that deadline, pricing tables, the conservation check and a seeded
//! generator.
//!
//! Nothing here sleeps and hopes: every wait polls a condition against a deadline, and a
//! deadline is a bound on a hang, never a speed claim.

use std::future::Future;
use std::time::{Duration, Instant};

use tower_credits::pricing::Pricing;
use tower_credits::Balance;

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

// The conservation check and the seeded generator are published with the conformance
// suite (feature `conformance`, on for every test through the dev-dependency).
#[allow(unused_imports)]
pub use tower_credits::conformance::{assert_conserved, is_conserved, Rng};
