//! The ledger conformance suite (feature `conformance`): one set of cases, written against
//! the [`Ledger`], [`LedgerAdmin`] and [`LedgerReports`] traits, that every ledger must
//! pass. [`MemoryLedger`](crate::MemoryLedger) and
//! [`RedisLedger`](crate::ledger::RedisLedger) (on one server and on a Redis Cluster) run
//! it in this crate's own tests; a ledger written outside this crate runs the very same
//! cases.
//!
//! # Running it against your ledger
//!
//! Turn the feature on for your tests, bring a [`Harness`] (how to make a fresh ledger,
//! and the [`ManualClock`] that moves its time) and expand
//! [`conformance_suite!`](crate::conformance_suite) with it in an integration test:
//!
//! ```toml
//! [dev-dependencies]
//! tower-credits = { version = "0.1", features = ["conformance"] }
//! ```
//!
//! ```
//! // tests/conformance.rs
//! use tower_credits::clock::ManualClock;
//! use tower_credits::conformance::Harness;
//! use tower_credits::MemoryLedger; // your ledger here
//!
//! struct MyHarness;
//!
//! impl Harness for MyHarness {
//!     type L = MemoryLedger;
//!
//!     async fn ledger(&self) -> (MemoryLedger, ManualClock) {
//!         let clock = ManualClock::new();
//!         (MemoryLedger::builder().clock(clock.clone()).build(), clock)
//!     }
//! }
//!
//! tower_credits::conformance_suite!(MyHarness);
//! # fn main() {}
//! ```
//!
//! Each case becomes its own `#[test]`, run on a two-worker multi-thread tokio runtime
//! that the macro starts through this crate's own `tokio` (your crate needs no tokio
//! dev-dependency for it; the feature turns on tokio's `rt-multi-thread`). `cargo test`
//! then runs about forty cases, among them [`model_state_machine`]: random operation
//! sequences compared step by step with a reference model, shrunk to a minimal sequence on
//! failure (`PROPTEST_CASES` sets how many; 64 by default). The cases are also public
//! functions, so a test may run one of them alone: `conformance::top_up_then_balance(&h).await`.
//!
//! # What the suite assumes of a ledger
//!
//! * Every [`Harness::ledger`] call gives a ledger with fresh, empty state, whose time is
//!   the manual clock's (a networked ledger may add its own real clock to the manual
//!   offset, as `RedisLedger` does: no case relies on time standing still between calls).
//! * No limit on open holds (or one far above 64 per account).
//! * A closed hold id is remembered at least 1 s and at most 5 s past its hold's expiry
//!   (or its close, if later): [`MemoryLedger`](crate::MemoryLedger) keeps it 1 s, a
//!   networked ledger its call timeout + 1 s. A refund tombstone of a never-seen id is
//!   kept as long as the longest TTL reserved with (at least the default 60 s) + that grace.
//! * Per-call deadlines of seconds, not milliseconds: the concurrency cases run 64 tasks.
//!
//! The cases never sleep: time moves only through [`ManualClock::advance`]. Holds that must
//! stay open live at least 10 s, and holds that must expire are outlived by a clear margin.
//! See `examples/custom_ledger/` in the repository for a ledger written from scratch
//! against the public API, and the test that runs this suite on it.

pub mod model;
mod outbox;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, ManualClock, SystemClock};
use crate::events::EventKind;
use crate::ledger::MAX_HOLD_TTL;
use crate::ledger::MAX_THRESHOLDS;
use crate::ledger::{Configure, Extend};
use crate::ledger::{
    ErrorKind, Extended, Held, HoldId, Insufficient, Reserve, ReserveOutcome, SettleOutcome,
    Settlement, MAX_AMOUNT,
};
use crate::{AccountId, AccountSettings, ApiKeyHash, Balance, Ledger, LedgerError, Threshold};
use crate::{LedgerAdmin, LedgerReports, TopUp};

/// How the suite gets ledgers to test.
pub trait Harness: Send + Sync + 'static {
    /// The ledger under test.
    type L: Ledger + LedgerAdmin + LedgerReports;

    /// A ledger with fresh, empty state (no accounts, top-up keys or API keys shared with
    /// any other call), and the [`ManualClock`] that moves its time.
    fn ledger(&self) -> impl Future<Output = (Self::L, ManualClock)> + Send;
}

/// Expands into one `#[test]` per conformance case (and the model-based test), each
/// running `tower_credits::conformance::<case>(&$harness)` on a fresh multi-thread tokio
/// runtime. See the [module docs](crate::conformance) for an example.
///
/// `$harness` is evaluated once per test, inside the test's async body, so it may be an
/// `.await` expression. Expand it once per module: the tests are named after the cases.
#[macro_export]
macro_rules! conformance_suite {
    (@cases $harness:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run(async {
                    $crate::conformance::$case(&$harness).await
                })
            }
        )+
    };
    ($harness:expr $(,)?) => {
        $crate::conformance_suite!(@cases $harness;
            top_up_then_balance,
            top_up_replay_is_idempotent,
            top_up_same_key_other_amount_conflicts,
            a_payment_id_credits_one_account_once,
            a_refused_top_up_frees_its_key,
            concurrent_top_ups_of_one_key_credit_one_account,
            reserve_holds_credits,
            reserve_insufficient_writes_nothing,
            an_affordable_hold_takes_what_is_left_down_to_its_minimum,
            concurrent_affordable_holds_never_overspend,
            reserve_unknown_account_creates_nothing,
            zero_amount_reserve_and_commit,
            max_amount_bounds,
            top_up_past_max_total_is_refused,
            reserve_past_max_total_is_refused,
            overdraft_with_credit_limit,
            commit_less_than_hold_releases_rest,
            commit_more_than_hold_is_clamped,
            refund_gives_everything_back,
            double_commit_moves_nothing,
            commit_after_refund_is_already_refunded,
            refund_of_unknown_hold_leaves_tombstone,
            commit_of_unknown_hold_moves_nothing,
            settle_on_unknown_account_is_unknown,
            retried_reserve_is_replayed,
            expired_hold_returns_and_cannot_settle,
            extend_keeps_hold_alive,
            extend_of_settled_hold_is_not_open,
            extend_to_a_shorter_ttl_expires_sooner,
            invalid_ttl_is_refused,
            invalid_arguments_write_nothing,
            usage_by_route_accumulates,
            runway_follows_spending,
            a_runway_needs_history_not_a_burst,
            low_balance_threshold_crossed_once_per_crossing,
            only_a_top_up_rearms_a_threshold,
            several_thresholds_fire_one_event_each,
            a_percentage_threshold_follows_the_last_top_up,
            depletion_fires_once_until_a_top_up,
            concurrent_commits_crossing_a_threshold_fire_one_event,
            invalid_thresholds_are_refused,
            runway_low_fires_once_until_a_top_up,
            api_keys_register_lookup_revoke,
            concurrent_reserves_never_overshoot,
            many_accounts_are_independent,
            model_state_machine,
        );
    };
}

pub use model::model_state_machine;
pub use outbox::{
    a_lapsed_lease_is_claimed_once, dead_letters_are_kept_with_their_reason,
    detected_events_wait_leased_until_acknowledged, OutboxHarness,
};

/// Runs one case to its end on a new two-worker multi-thread tokio runtime (with every
/// driver on): what each test of [`conformance_suite!`](crate::conformance_suite) calls.
pub fn run<F: Future>(case: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start a tokio runtime for a conformance case")
        .block_on(case)
}

// ---------------------------------------------------------------------------------------
// Conservation and a seeded generator (also used by the crate's own tests)
// ---------------------------------------------------------------------------------------

/// Whether `topped_up = available + held + committed` (in `i128`: no overflow can hide a
/// break).
pub fn is_conserved(b: &Balance) -> bool {
    b.topped_up as i128 == b.available as i128 + b.held as i128 + b.committed as i128
}

/// The balance of `account`, after checking `topped_up = available + held + committed`.
///
/// # Panics
///
/// When the balance cannot be read or is not conserved.
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
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
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

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A validated account id.
pub fn acct(id: &str) -> AccountId {
    AccountId::new(id).unwrap_or_else(|e| panic!("account id {id:?}: {e}"))
}

/// A validated hold id.
pub fn hold(id: &str) -> HoldId {
    HoldId::new(id).unwrap_or_else(|e| panic!("hold id {id:?}: {e}"))
}

/// `(available, held, committed, topped_up, open_holds)` of a balance, for short asserts.
pub fn totals(b: &Balance) -> (i64, u64, u64, u64, u64) {
    (b.available, b.held, b.committed, b.topped_up, b.open_holds)
}

/// The hold, or a panic naming what came instead.
pub fn expect_held(outcome: ReserveOutcome) -> Held {
    match outcome {
        ReserveOutcome::Held(held) => held,
        other => panic!("expected a hold, got {other:?}"),
    }
}

/// The refusal, or a panic naming what came instead.
pub fn expect_insufficient(outcome: ReserveOutcome) -> Insufficient {
    match outcome {
        ReserveOutcome::Insufficient(refusal) => refusal,
        other => panic!("expected Insufficient, got {other:?}"),
    }
}

/// Checks that `expires_at_ms` is `ttl` after the ledger's present. A networked ledger runs
/// on its own real clock plus the manual offset, so the present is a window: from the
/// manual clock's time to the system time plus the offset (with a second of slack).
pub fn assert_expires_in(expires_at_ms: u64, clock: &ManualClock, ttl: Duration) {
    let ttl = ttl.as_millis() as u64;
    let earliest = clock.now_ms() + ttl - 1_000;
    let latest = SystemClock.now_ms() + clock.advanced().as_millis() as u64 + ttl + 1_000;
    assert!(
        (earliest..=latest).contains(&expires_at_ms),
        "expiry {expires_at_ms} not within {earliest}..={latest}"
    );
}

/// Asserts a settlement that moved nothing and says `outcome`.
#[track_caller]
fn assert_nothing_moved(s: &Settlement, outcome: SettleOutcome) {
    assert_eq!(s.outcome, outcome, "{s:?}");
    assert_eq!((s.committed, s.released, s.clamped), (0, 0, false), "{s:?}");
    assert!(s.events.is_empty(), "{s:?}");
    assert!(!s.outcome.is_applied());
}

/// A fresh ledger with one account topped up with `credits`.
async fn funded<H: Harness>(h: &H, id: &str, credits: u64) -> (H::L, ManualClock, AccountId) {
    let (ledger, clock) = h.ledger().await;
    let a = acct(id);
    let t = ledger
        .top_up(TopUp::new(&a, credits, "initial"))
        .await
        .unwrap();
    assert_eq!(
        (t.amount, t.replayed, t.available),
        (credits, false, credits as i64)
    );
    (ledger, clock, a)
}

async fn reserve<L: Ledger>(l: &L, a: &AccountId, h: &HoldId, amount: u64) -> ReserveOutcome {
    l.reserve(Reserve::new(a.clone(), h.clone(), amount))
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Top-ups
// ---------------------------------------------------------------------------------------

/// A top-up credits the account, which then shows in its balance.
pub async fn top_up_then_balance<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let a = acct("acct_top_up");
    assert!(matches!(
        l.balance(&a).await,
        Err(LedgerError::UnknownAccount)
    ));

    let t = l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    assert_eq!((t.amount, t.replayed, t.available), (100, false, 100));
    let t = l.top_up(TopUp::new(&a, 25, "pay-2")).await.unwrap();
    assert_eq!((t.amount, t.replayed, t.available), (25, false, 125));

    let b = assert_conserved(&l, &a).await;
    assert_eq!(totals(&b), (125, 0, 0, 125, 0));
    assert_eq!(b.credit_limit, 0);
    assert_eq!(b.thresholds, Vec::<u64>::new());
    assert_eq!(b.runway_secs, None, "nothing spent yet: no runway");
    assert!(l.usage(&a).await.unwrap().by_route.is_empty());
}

/// The same key with the same amount credits once and says it replayed.
pub async fn top_up_replay_is_idempotent<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let a = acct("acct_replay");
    let first = l.top_up(TopUp::new(&a, 100, "pay_123")).await.unwrap();
    assert!(!first.replayed);
    let again = l.top_up(TopUp::new(&a, 100, "pay_123")).await.unwrap();
    assert_eq!(
        (again.amount, again.replayed, again.available),
        (100, true, 100)
    );

    // Still credited once after the balance moved.
    expect_held(reserve(&l, &a, &hold("h1"), 30).await);
    let again = l.top_up(TopUp::new(&a, 100, "pay_123")).await.unwrap();
    assert_eq!((again.amount, again.replayed), (100, true));
    let b = assert_conserved(&l, &a).await;
    assert_eq!(totals(&b), (70, 30, 0, 100, 1));
}

/// The same key with another amount is a typed conflict and changes nothing.
pub async fn top_up_same_key_other_amount_conflicts<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let a = acct("acct_conflict");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    match l.top_up(TopUp::new(&a, 99, "pay-1")).await {
        Err(LedgerError::TopUpConflict {
            first_amount,
            amount,
        }) => assert_eq!((first_amount, amount), (100, 99)),
        other => panic!("expected TopUpConflict, got {other:?}"),
    }
    // The key keeps its first amount.
    assert!(
        l.top_up(TopUp::new(&a, 100, "pay-1"))
            .await
            .unwrap()
            .replayed
    );
    let b = assert_conserved(&l, &a).await;
    assert_eq!(totals(&b), (100, 0, 0, 100, 0));
}

/// The key is another account's, or a panic naming what came instead.
#[track_caller]
fn assert_claimed_by<T: std::fmt::Debug>(r: Result<T, LedgerError>, owner: &AccountId) {
    match r {
        Err(e @ LedgerError::TopUpKeyClaimed { .. }) => {
            assert_eq!(e.kind(), ErrorKind::Conflict);
            let LedgerError::TopUpKeyClaimed { account } = e else {
                unreachable!()
            };
            assert_eq!(&account, owner);
        }
        other => panic!("expected TopUpKeyClaimed by {owner}, got {other:?}"),
    }
}

/// A payment id (the idempotency key) credits exactly one account, once: the same key on
/// another account is a typed conflict that credits nothing, whatever the amount; the
/// first account still replays it.
pub async fn a_payment_id_credits_one_account_once<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let (a, b) = (acct("acct_a"), acct("acct_b"));
    let ta = l.top_up(TopUp::new(&a, 100, "pay_1")).await.unwrap();
    assert_eq!((ta.replayed, ta.available), (false, 100));
    // Another account: refused, and the account is not even created.
    for amount in [100, 40] {
        assert_claimed_by(l.top_up(TopUp::new(&b, amount, "pay_1")).await, &a);
    }
    assert!(matches!(
        l.balance(&b).await,
        Err(LedgerError::UnknownAccount)
    ));
    // An existing account is not credited either.
    l.top_up(TopUp::new(&b, 5, "pay_2")).await.unwrap();
    assert_claimed_by(l.top_up(TopUp::new(&b, 100, "pay_1")).await, &a);
    assert_eq!(totals(&assert_conserved(&l, &b).await), (5, 0, 0, 5, 0));
    assert_claimed_by(l.top_up(TopUp::new(&a, 5, "pay_2")).await, &b);

    // The first account replays its key, and a conflict on the amount stays a conflict.
    let again = l.top_up(TopUp::new(&a, 100, "pay_1")).await.unwrap();
    assert_eq!(
        (again.amount, again.replayed, again.available),
        (100, true, 100)
    );
    let conflict = l.top_up(TopUp::new(&a, 99, "pay_1")).await.unwrap_err();
    assert!(
        matches!(
            conflict,
            LedgerError::TopUpConflict {
                first_amount: 100,
                amount: 99
            }
        ),
        "{conflict:?}"
    );
    assert_eq!(conflict.kind(), ErrorKind::Conflict);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (100, 0, 0, 100, 0));
    assert_eq!(totals(&assert_conserved(&l, &b).await), (5, 0, 0, 5, 0));
}

/// A top-up refused after its key was claimed (a total past `MAX_AMOUNT`) gives the key
/// back: it can then be used again, on the same account or another one.
pub async fn a_refused_top_up_frees_its_key<H: Harness>(h: &H) {
    let (l, _clock, full) = funded(h, "acct_full_key", MAX_AMOUNT - 5).await;
    let other = acct("acct_other_key");
    let r = l
        .top_up(TopUp::new(&full, 6, "pay_refused"))
        .await
        .unwrap_err();
    assert!(matches!(r, LedgerError::TotalOutOfRange { .. }), "{r:?}");
    assert_eq!(r.kind(), ErrorKind::InvalidInput);
    // Free on another account...
    let t = l
        .top_up(TopUp::new(&other, 7, "pay_refused"))
        .await
        .unwrap();
    assert_eq!((t.replayed, t.available), (false, 7));
    assert_claimed_by(l.top_up(TopUp::new(&full, 5, "pay_refused")).await, &other);

    // ... and on the same account, with an amount that fits.
    let r = l
        .top_up(TopUp::new(&full, 6, "pay_again"))
        .await
        .unwrap_err();
    assert!(matches!(r, LedgerError::TotalOutOfRange { .. }), "{r:?}");
    let t = l.top_up(TopUp::new(&full, 5, "pay_again")).await.unwrap();
    assert_eq!((t.replayed, t.available), (false, MAX_AMOUNT as i64));
    assert!(
        l.top_up(TopUp::new(&full, 5, "pay_again"))
            .await
            .unwrap()
            .replayed
    );
    assert_claimed_by(l.top_up(TopUp::new(&other, 5, "pay_again")).await, &full);
    assert_eq!(
        totals(&assert_conserved(&l, &full).await),
        (MAX_AMOUNT as i64, 0, 0, MAX_AMOUNT, 0)
    );
    assert_eq!(totals(&assert_conserved(&l, &other).await), (7, 0, 0, 7, 0));
}

/// Eight accounts race to top up with one key: exactly one is credited, once; every other
/// one is told which account holds the key and is not created.
pub async fn concurrent_top_ups_of_one_key_credit_one_account<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let ids: Vec<AccountId> = (0..8).map(|i| acct(&format!("acct_race_{i}"))).collect();
    let tasks: Vec<_> = ids
        .iter()
        .cloned()
        .map(|a| {
            let l = l.clone();
            tokio::spawn(async move { l.top_up(TopUp::new(&a, 10, "pay_race")).await })
        })
        .collect();
    let mut winners = Vec::new();
    let mut owners = Vec::new();
    for (a, task) in ids.iter().zip(tasks) {
        match task.await.expect("task panicked") {
            Ok(t) => {
                assert_eq!((t.amount, t.replayed, t.available), (10, false, 10));
                winners.push(a.clone());
            }
            Err(LedgerError::TopUpKeyClaimed { account }) => owners.push(account),
            Err(e) => panic!("top-up of {a}: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "credited: {winners:?}");
    assert!(owners.iter().all(|o| *o == winners[0]), "{owners:?}");
    for a in &ids {
        if *a == winners[0] {
            assert_eq!(totals(&assert_conserved(&l, a).await), (10, 0, 0, 10, 0));
        } else {
            assert!(matches!(
                l.balance(a).await,
                Err(LedgerError::UnknownAccount)
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reserve
// ---------------------------------------------------------------------------------------

/// A hold reduces `available` and increases `held`.
pub async fn reserve_holds_credits<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_reserve", 100).await;
    let ttl = Duration::from_secs(60);
    let held = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 30).ttl(ttl))
            .await
            .unwrap(),
    );
    assert_eq!(held.amount, 30);
    assert_eq!(held.available, 70);
    assert_eq!(held.credit_limit, 0);
    assert_eq!(held.thresholds, Vec::<u64>::new());
    assert!(!held.replayed);
    assert_expires_in(held.expires_at_ms, &clock, ttl);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 30, 0, 100, 1));

    let held = expect_held(reserve(&l, &a, &hold("h2"), 20).await);
    assert_eq!((held.amount, held.available), (20, 50));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (50, 50, 0, 100, 2));

    // Everything that is left can be held.
    let held = expect_held(reserve(&l, &a, &hold("h3"), 50).await);
    assert_eq!(held.available, 0);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (0, 100, 0, 100, 3));
}

/// A refused reserve writes nothing and says how much is missing.
pub async fn reserve_insufficient_writes_nothing<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_poor", 10).await;
    let refusal = expect_insufficient(reserve(&l, &a, &hold("h1"), 11).await);
    assert_eq!(
        (refusal.required, refusal.available, refusal.credit_limit),
        (11, 10, 0)
    );
    assert_eq!(refusal.shortfall(), 1);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (10, 0, 0, 10, 0));

    // With a hold out, the refusal reports what is left.
    expect_held(reserve(&l, &a, &hold("h2"), 7).await);
    let refusal = expect_insufficient(reserve(&l, &a, &hold("h3"), 5).await);
    assert_eq!((refusal.required, refusal.available), (5, 3));
    assert_eq!(refusal.shortfall(), 2);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (3, 7, 0, 10, 1));

    // The refused id left no trace: it can hold once there is room.
    l.refund(&a, &hold("h2")).await.unwrap();
    let held = expect_held(reserve(&l, &a, &hold("h1"), 10).await);
    assert!(!held.replayed);
    assert_eq!(held.available, 0);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (0, 10, 0, 10, 1));
}

/// A reserve with a minimum holds what the account can afford, down to the minimum, in one
/// atomic step; below the minimum it is refused for the minimum, writing nothing.
pub async fn an_affordable_hold_takes_what_is_left_down_to_its_minimum<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_range", 30).await;
    // Enough for all of it: the whole amount.
    let held = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 20).min_amount(5))
            .await
            .unwrap(),
    );
    assert_eq!((held.amount, held.available), (20, 10));
    // Not enough for all: what is left, above the minimum.
    let held = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h2"), 50).min_amount(5))
            .await
            .unwrap(),
    );
    assert_eq!((held.amount, held.available), (10, 0));
    // A retry answers the first hold, not a new amount.
    let again = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h2"), 50).min_amount(5))
            .await
            .unwrap(),
    );
    assert_eq!((again.amount, again.replayed), (10, true));
    // Below the minimum: refused for the minimum, nothing written.
    let refusal = expect_insufficient(
        l.reserve(Reserve::new(a.clone(), hold("h3"), 50).min_amount(1))
            .await
            .unwrap(),
    );
    assert_eq!(
        (refusal.required, refusal.available, refusal.shortfall()),
        (1, 0, 1)
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (0, 30, 0, 30, 2));
    // Settling the shrunk hold commits at most what was held.
    let settled = l.commit(&a, &hold("h2"), 50).await.unwrap();
    assert_eq!((settled.committed, settled.clamped), (10, true));
    assert_conserved(&l, &a).await;
}

/// Many ranged reserves racing on one account hold no more than it has, and every one that
/// was served holds at least its minimum.
pub async fn concurrent_affordable_holds_never_overspend<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_race", 100).await;
    let calls = (0..40).map(|i| {
        let (l, a) = (l.clone(), a.clone());
        tokio::spawn(async move {
            let reserve = Reserve::new(a, hold(&format!("r{i}")), 9).min_amount(3);
            l.reserve(reserve).await.unwrap()
        })
    });
    let mut held = 0;
    for call in calls.collect::<Vec<_>>() {
        match call.await.unwrap() {
            ReserveOutcome::Held(h) => {
                assert!((3..=9).contains(&h.amount), "{h:?}");
                held += h.amount;
            }
            ReserveOutcome::Insufficient(i) => assert_eq!(i.required, 3),
            other => panic!("{other:?}"),
        }
    }
    let b = assert_conserved(&l, &a).await;
    assert_eq!(b.held, held);
    assert!(b.available >= 0 && b.available < 3, "{b:?}");
}

/// A reserve on an account never topped up or configured answers `UnknownAccount` (an
/// outcome, not an error) and creates nothing.
pub async fn reserve_unknown_account_creates_nothing<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let ghost = acct("acct_ghost");
    for amount in [0, 1, 10] {
        let r = l
            .reserve(Reserve::new(ghost.clone(), hold("h1"), amount))
            .await;
        assert!(
            matches!(r, Ok(ReserveOutcome::UnknownAccount)),
            "reserve {amount}: {r:?}"
        );
    }
    assert!(matches!(
        l.balance(&ghost).await,
        Err(LedgerError::UnknownAccount)
    ));
    assert!(matches!(
        l.usage(&ghost).await,
        Err(LedgerError::UnknownAccount)
    ));

    // Once it exists, the same hold id holds: the refusal left no tombstone.
    l.top_up(TopUp::new(&ghost, 10, "pay-1")).await.unwrap();
    let held = expect_held(reserve(&l, &ghost, &hold("h1"), 10).await);
    assert!(!held.replayed);
    assert_eq!(
        totals(&assert_conserved(&l, &ghost).await),
        (0, 10, 0, 10, 1)
    );
}

/// Zero credits can be held and committed; nothing moves but the call is counted.
pub async fn zero_amount_reserve_and_commit<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_zero", 5).await;
    let held = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 0).route("GET /free"))
            .await
            .unwrap(),
    );
    assert_eq!((held.amount, held.available), (0, 5));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (5, 0, 0, 5, 1));
    let s = l.commit(&a, &hold("h1"), 0).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    assert_eq!((s.committed, s.released, s.clamped), (0, 0, false));
    assert_eq!(s.available, Some(5));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (5, 0, 0, 5, 0));
    let usage = l.usage(&a).await.unwrap();
    let free = usage.by_route.get("GET /free").expect("route counted");
    assert_eq!((free.credits, free.calls), (0, 1));

    // A zero hold fits an empty account too; a commit of more is clamped to zero.
    let empty = acct("acct_empty");
    l.top_up(TopUp::new(&empty, 0, "nothing")).await.unwrap();
    expect_held(reserve(&l, &empty, &hold("h2"), 0).await);
    let s = l.commit(&empty, &hold("h2"), 3).await.unwrap();
    assert_eq!(
        (s.outcome, s.committed, s.clamped),
        (SettleOutcome::Committed, 0, true)
    );
    assert_eq!(totals(&assert_conserved(&l, &empty).await), (0, 0, 0, 0, 0));
}

/// `MAX_AMOUNT` is accepted everywhere; one more is `AmountOutOfRange` and writes nothing.
pub async fn max_amount_bounds<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let (big, other) = (acct("acct_big"), acct("acct_other"));
    let t = l.top_up(TopUp::new(&big, MAX_AMOUNT, "max")).await.unwrap();
    assert_eq!(t.available, MAX_AMOUNT as i64);

    let too_big = MAX_AMOUNT + 1;
    let is_out_of_range = |r: &LedgerError| {
        matches!(r, LedgerError::AmountOutOfRange { amount, max }
            if *amount == too_big && *max == MAX_AMOUNT)
    };
    let r = l
        .top_up(TopUp::new(&other, too_big, "too-big"))
        .await
        .unwrap_err();
    assert!(is_out_of_range(&r), "{r:?}");
    assert!(matches!(
        l.balance(&other).await,
        Err(LedgerError::UnknownAccount)
    ));
    let r = l
        .top_up(TopUp::new(&big, u64::MAX, "way-too-big"))
        .await
        .unwrap_err();
    assert!(matches!(r, LedgerError::AmountOutOfRange { .. }), "{r:?}");

    let r = l
        .reserve(Reserve::new(big.clone(), hold("h0"), too_big))
        .await
        .unwrap_err();
    assert!(is_out_of_range(&r), "{r:?}");
    assert_eq!(
        totals(&assert_conserved(&l, &big).await),
        (MAX_AMOUNT as i64, 0, 0, MAX_AMOUNT, 0)
    );

    let held = expect_held(reserve(&l, &big, &hold("h1"), MAX_AMOUNT).await);
    assert_eq!((held.amount, held.available), (MAX_AMOUNT, 0));
    let r = l.commit(&big, &hold("h1"), too_big).await.unwrap_err();
    assert!(is_out_of_range(&r), "{r:?}");
    // The hold is still open after the refused commit.
    assert_eq!(
        totals(&assert_conserved(&l, &big).await),
        (0, MAX_AMOUNT, 0, MAX_AMOUNT, 1)
    );
    let s = l.commit(&big, &hold("h1"), MAX_AMOUNT).await.unwrap();
    assert_eq!(
        (s.outcome, s.committed),
        (SettleOutcome::Committed, MAX_AMOUNT)
    );
    assert_eq!(
        totals(&assert_conserved(&l, &big).await),
        (0, 0, MAX_AMOUNT, MAX_AMOUNT, 0)
    );

    // Settings are amounts too.
    let r = l
        .configure(Configure::new(
            &other,
            AccountSettings::new().credit_limit(too_big),
        ))
        .await
        .unwrap_err();
    assert!(is_out_of_range(&r), "{r:?}");
    assert!(matches!(
        l.balance(&other).await,
        Err(LedgerError::UnknownAccount)
    ));
}

/// A top-up that would push `topped_up` past `MAX_AMOUNT` is refused and changes nothing,
/// not even its idempotency key.
pub async fn top_up_past_max_total_is_refused<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_full", MAX_AMOUNT - 5).await;
    for (amount, key) in [(6, "six"), (MAX_AMOUNT, "max")] {
        match l.top_up(TopUp::new(&a, amount, key)).await {
            Err(LedgerError::TotalOutOfRange { max, .. }) => assert_eq!(max, MAX_AMOUNT),
            other => panic!("expected TotalOutOfRange, got {other:?}"),
        }
    }
    let b = assert_conserved(&l, &a).await;
    assert_eq!(
        totals(&b),
        ((MAX_AMOUNT - 5) as i64, 0, 0, MAX_AMOUNT - 5, 0)
    );

    // The refused key was not recorded: it may now credit another amount.
    let t = l.top_up(TopUp::new(&a, 5, "six")).await.unwrap();
    assert_eq!((t.replayed, t.available), (false, MAX_AMOUNT as i64));
    assert!(matches!(
        l.top_up(TopUp::new(&a, 1, "one-more")).await,
        Err(LedgerError::TotalOutOfRange { .. })
    ));
    assert_eq!(assert_conserved(&l, &a).await.topped_up, MAX_AMOUNT);
}

/// With an overdraft, a reserve that would push `held` past `MAX_AMOUNT` is refused and
/// changes nothing.
pub async fn reserve_past_max_total_is_refused<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_huge", MAX_AMOUNT).await;
    l.configure(Configure::new(
        &a,
        AccountSettings::new().credit_limit(MAX_AMOUNT),
    ))
    .await
    .unwrap();
    expect_held(reserve(&l, &a, &hold("h1"), MAX_AMOUNT).await);
    let r = l.reserve(Reserve::new(a.clone(), hold("h2"), 1)).await;
    assert!(
        matches!(r, Err(LedgerError::TotalOutOfRange { max, .. }) if max == MAX_AMOUNT),
        "{r:?}"
    );
    let b = assert_conserved(&l, &a).await;
    assert_eq!(totals(&b), (0, MAX_AMOUNT, 0, MAX_AMOUNT, 1));
    // The refused id left no trace.
    l.refund(&a, &hold("h1")).await.unwrap();
    assert!(!expect_held(reserve(&l, &a, &hold("h2"), 1).await).replayed);
}

/// `available` may go down to `-credit_limit`, not below, and refusals report the limit.
pub async fn overdraft_with_credit_limit<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_overdraft", 10).await;
    l.configure(Configure::new(&a, AccountSettings::new().credit_limit(20)))
        .await
        .unwrap();
    let b = assert_conserved(&l, &a).await;
    assert_eq!((b.available, b.credit_limit), (10, 20));

    let held = expect_held(reserve(&l, &a, &hold("h1"), 25).await);
    assert_eq!((held.available, held.credit_limit), (-15, 20));

    let refusal = expect_insufficient(reserve(&l, &a, &hold("h2"), 6).await);
    assert_eq!(
        (refusal.required, refusal.available, refusal.credit_limit),
        (6, -15, 20)
    );
    assert_eq!(refusal.shortfall(), 1, "6 - (-15 + 20)");

    let held = expect_held(reserve(&l, &a, &hold("h3"), 5).await);
    assert_eq!(held.available, -20);
    expect_held(reserve(&l, &a, &hold("h4"), 0).await);
    let refusal = expect_insufficient(reserve(&l, &a, &hold("h5"), 1).await);
    assert_eq!((refusal.available, refusal.shortfall()), (-20, 1));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (-20, 30, 0, 10, 3));

    for id in ["h1", "h3", "h4"] {
        let s = l.commit(&a, &hold(id), 100).await.unwrap();
        assert_eq!(s.outcome, SettleOutcome::Committed);
    }
    let b = assert_conserved(&l, &a).await;
    assert_eq!(totals(&b), (-20, 0, 30, 10, 0));

    // Lowering the limit below the debt refuses even a zero hold until a top-up.
    l.configure(Configure::new(&a, AccountSettings::new().credit_limit(5)))
        .await
        .unwrap();
    let refusal = expect_insufficient(reserve(&l, &a, &hold("h6"), 0).await);
    assert_eq!((refusal.available, refusal.credit_limit), (-20, 5));
    assert_eq!(refusal.shortfall(), 15);
    l.top_up(TopUp::new(&a, 15, "pay-2")).await.unwrap();
    assert_eq!(
        expect_held(reserve(&l, &a, &hold("h6"), 0).await).available,
        -5
    );

    // `configure` creates an account.
    let fresh = acct("acct_fresh");
    l.configure(Configure::new(
        &fresh,
        AccountSettings::new().credit_limit(5),
    ))
    .await
    .unwrap();
    let b = assert_conserved(&l, &fresh).await;
    assert_eq!((totals(&b), b.credit_limit), ((0, 0, 0, 0, 0), 5));
    assert_eq!(
        expect_held(reserve(&l, &fresh, &hold("h1"), 5).await).available,
        -5
    );
    assert_conserved(&l, &a).await;
    assert_conserved(&l, &fresh).await;
}

// ---------------------------------------------------------------------------------------
// Settling
// ---------------------------------------------------------------------------------------

/// A commit of less than the hold charges that much and releases the rest.
pub async fn commit_less_than_hold_releases_rest<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_commit", 100).await;
    expect_held(reserve(&l, &a, &hold("h1"), 40).await);
    let s = l.commit(&a, &hold("h1"), 15).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    assert_eq!((s.committed, s.released, s.clamped), (15, 25, false));
    assert_eq!(s.available, Some(85));
    assert!(s.events.is_empty());
    assert!(s.outcome.is_applied());
    assert_eq!(totals(&assert_conserved(&l, &a).await), (85, 0, 15, 100, 0));
}

/// A commit of more than the hold is clamped to the hold.
pub async fn commit_more_than_hold_is_clamped<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_clamp", 100).await;
    expect_held(reserve(&l, &a, &hold("h1"), 40).await);
    let s = l.commit(&a, &hold("h1"), 55).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    assert_eq!((s.committed, s.released, s.clamped), (40, 0, true));
    assert_eq!(s.available, Some(60));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (60, 0, 40, 100, 0));

    // Exactly the hold is not clamped.
    expect_held(reserve(&l, &a, &hold("h2"), 10).await);
    let s = l.commit(&a, &hold("h2"), 10).await.unwrap();
    assert_eq!((s.committed, s.released, s.clamped), (10, 0, false));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (50, 0, 50, 100, 0));
}

/// A refund gives the whole hold back.
pub async fn refund_gives_everything_back<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_refund", 100).await;
    expect_held(reserve(&l, &a, &hold("h1"), 40).await);
    let s = l.refund(&a, &hold("h1")).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Refunded);
    assert_eq!((s.committed, s.released, s.clamped), (0, 40, false));
    assert_eq!(s.available, Some(100));
    assert!(s.outcome.is_applied());
    assert_eq!(totals(&assert_conserved(&l, &a).await), (100, 0, 0, 100, 0));
    assert!(
        l.usage(&a).await.unwrap().by_route.is_empty(),
        "refunds are not usage"
    );
}

/// A second commit of the same hold is `AlreadyCommitted` and moves nothing; so is a
/// refund after the commit and a reserve of the same id.
pub async fn double_commit_moves_nothing<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_double", 100).await;
    expect_held(reserve(&l, &a, &hold("h1"), 40).await);
    assert_eq!(l.commit(&a, &hold("h1"), 10).await.unwrap().committed, 10);
    let s = l.commit(&a, &hold("h1"), 10).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::AlreadyCommitted);
    assert_eq!(s.available, Some(90));
    let s = l.refund(&a, &hold("h1")).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::AlreadyCommitted);
    assert_eq!(
        reserve(&l, &a, &hold("h1"), 40).await,
        ReserveOutcome::Closed(SettleOutcome::AlreadyCommitted)
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (90, 0, 10, 100, 0));
    let usage = l.usage(&a).await.unwrap();
    assert_eq!(
        usage.by_route.get("").map(|u| (u.credits, u.calls)),
        Some((10, 1))
    );
}

/// A commit after a refund is `AlreadyRefunded` and moves nothing.
pub async fn commit_after_refund_is_already_refunded<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_refunded", 100).await;
    expect_held(reserve(&l, &a, &hold("h1"), 40).await);
    l.refund(&a, &hold("h1")).await.unwrap();
    let s = l.commit(&a, &hold("h1"), 40).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::AlreadyRefunded);
    assert_eq!(s.available, Some(100));
    let s = l.refund(&a, &hold("h1")).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::AlreadyRefunded);
    assert_eq!(
        reserve(&l, &a, &hold("h1"), 40).await,
        ReserveOutcome::Closed(SettleOutcome::AlreadyRefunded)
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (100, 0, 0, 100, 0));
}

/// A refund of an id never seen says `Unknown` and leaves a tombstone: the reserve that
/// arrives after its own refund never holds.
pub async fn refund_of_unknown_hold_leaves_tombstone<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_tombstone", 50).await;
    let late = hold("late-reserve");
    let s = l.refund(&a, &late).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::Unknown);
    assert_eq!(s.available, Some(50));

    let r = reserve(&l, &a, &late, 10).await;
    assert!(matches!(r, ReserveOutcome::Closed(_)), "{r:?}");
    assert_eq!(totals(&assert_conserved(&l, &a).await), (50, 0, 0, 50, 0));
    // Nothing to commit or extend either.
    let s = l.commit(&a, &late, 10).await.unwrap();
    assert!(!s.outcome.is_applied() && s.committed == 0, "{s:?}");
    assert!(matches!(
        l.extend(Extend::new(&a, &late, Duration::from_secs(60)))
            .await
            .unwrap(),
        Extended::NotOpen(_)
    ));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (50, 0, 0, 50, 0));
}

/// A commit of an id never seen says `Unknown`, moves nothing and leaves no tombstone.
pub async fn commit_of_unknown_hold_moves_nothing<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_unknown_hold", 50).await;
    expect_held(reserve(&l, &a, &hold("other"), 5).await);
    let s = l.commit(&a, &hold("never"), 10).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::Unknown);
    assert_eq!(s.available, Some(45));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (45, 5, 0, 50, 1));
    assert!(l.usage(&a).await.unwrap().by_route.is_empty());
    // A hold belongs to its account: another account cannot settle it.
    let b = acct("acct_stranger");
    l.top_up(TopUp::new(&b, 1, "pay-1")).await.unwrap();
    assert_nothing_moved(
        &l.commit(&b, &hold("other"), 5).await.unwrap(),
        SettleOutcome::Unknown,
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (45, 5, 0, 50, 1));
    // The id is still free to hold.
    assert!(!expect_held(reserve(&l, &a, &hold("never"), 10).await).replayed);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (35, 15, 0, 50, 2));
    assert_conserved(&l, &b).await;
}

/// Settling on an account that does not exist says `Unknown`, without a balance, and
/// creates nothing.
pub async fn settle_on_unknown_account_is_unknown<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let ghost = acct("acct_nobody");
    let s = l.commit(&ghost, &hold("h1"), 5).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::Unknown);
    assert_eq!(s.available, None);
    let s = l.refund(&ghost, &hold("h1")).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::Unknown);
    assert_eq!(s.available, None);
    assert_eq!(
        l.extend(Extend::new(&ghost, hold("h1"), Duration::from_secs(30)))
            .await
            .unwrap(),
        Extended::NotOpen(SettleOutcome::Unknown)
    );
    assert!(matches!(
        l.balance(&ghost).await,
        Err(LedgerError::UnknownAccount)
    ));
}

/// A retried reserve with the same id returns the first answer and holds once.
pub async fn retried_reserve_is_replayed<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_retry", 100).await;
    let first = expect_held(reserve(&l, &a, &hold("h1"), 30).await);
    assert!(!first.replayed);
    let again = expect_held(reserve(&l, &a, &hold("h1"), 30).await);
    assert!(again.replayed);
    assert_eq!((again.amount, again.available), (30, 70));
    assert_eq!(again.expires_at_ms, first.expires_at_ms);
    // Even with another amount, the first hold stands.
    let other = expect_held(reserve(&l, &a, &hold("h1"), 90).await);
    assert_eq!((other.amount, other.replayed), (30, true));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 30, 0, 100, 1));
    // And a replay is answered even when the account could not afford a new hold.
    expect_held(reserve(&l, &a, &hold("h2"), 70).await);
    let again = expect_held(reserve(&l, &a, &hold("h1"), 30).await);
    assert_eq!((again.replayed, again.available), (true, 0));

    let s = l.commit(&a, &hold("h1"), 30).await.unwrap();
    assert_eq!(s.committed, 30);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (0, 70, 30, 100, 1));
}

/// An expired hold goes back to `available`; settling it later says `Expired` and moves
/// nothing.
pub async fn expired_hold_returns_and_cannot_settle<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_expiry", 100).await;
    let short = expect_held(
        l.reserve(
            Reserve::new(a.clone(), hold("h1"), 30)
                .ttl(Duration::from_secs(10))
                .route("GET /slow"),
        )
        .await
        .unwrap(),
    );
    assert_expires_in(short.expires_at_ms, &clock, Duration::from_secs(10));
    // A long hold that must survive.
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h2"), 20).ttl(Duration::from_secs(600)))
            .await
            .unwrap(),
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (50, 50, 0, 100, 2));

    clock.advance(Duration::from_secs(11));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (80, 20, 0, 100, 1));

    let s = l.commit(&a, &hold("h1"), 30).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::Expired);
    assert_eq!(s.available, Some(80));
    assert_nothing_moved(
        &l.refund(&a, &hold("h1")).await.unwrap(),
        SettleOutcome::Expired,
    );
    assert_eq!(
        l.extend(Extend::new(&a, hold("h1"), Duration::from_secs(60)))
            .await
            .unwrap(),
        Extended::NotOpen(SettleOutcome::Expired)
    );
    assert_eq!(
        reserve(&l, &a, &hold("h1"), 30).await,
        ReserveOutcome::Closed(SettleOutcome::Expired)
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (80, 20, 0, 100, 1));
    assert!(l.usage(&a).await.unwrap().by_route.is_empty());

    // The long hold is still there.
    let s = l.commit(&a, &hold("h2"), 20).await.unwrap();
    assert_eq!((s.outcome, s.committed), (SettleOutcome::Committed, 20));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (80, 0, 20, 100, 0));
}

/// `extend` keeps a hold alive past its original ttl.
pub async fn extend_keeps_hold_alive<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_extend", 100).await;
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 30).ttl(Duration::from_secs(10)))
            .await
            .unwrap(),
    );
    clock.advance(Duration::from_secs(5));
    match l
        .extend(Extend::new(&a, hold("h1"), Duration::from_secs(20)))
        .await
        .unwrap()
    {
        Extended::Until(at) => assert_expires_in(at, &clock, Duration::from_secs(20)),
        other => panic!("expected Until, got {other:?}"),
    }
    // 15 s after the reserve: past the original 10 s, well within the extension.
    clock.advance(Duration::from_secs(10));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 30, 0, 100, 1));
    let again = expect_held(reserve(&l, &a, &hold("h1"), 30).await);
    assert!(again.replayed);
    let s = l.commit(&a, &hold("h1"), 30).await.unwrap();
    assert_eq!((s.outcome, s.committed), (SettleOutcome::Committed, 30));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 0, 30, 100, 0));

    // The extension too runs out.
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h2"), 30).ttl(Duration::from_secs(10)))
            .await
            .unwrap(),
    );
    assert!(matches!(
        l.extend(Extend::new(&a, hold("h2"), Duration::from_secs(20)))
            .await
            .unwrap(),
        Extended::Until(_)
    ));
    clock.advance(Duration::from_secs(30));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 0, 30, 100, 0));
    assert_nothing_moved(
        &l.commit(&a, &hold("h2"), 30).await.unwrap(),
        SettleOutcome::Expired,
    );
}

/// An extend sets the hold's expiry to now + ttl, which may be sooner than before: the
/// hold then comes back at the new time. (Found by the model test once the Redis scripts
/// learned to skip the expiry index until the earliest expiry they know of.)
pub async fn extend_to_a_shorter_ttl_expires_sooner<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_extend_shorter", 100).await;
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("long"), 30).ttl(Duration::from_secs(25)))
            .await
            .unwrap(),
    );
    // Any later call learns the earliest expiry (25 s) before the extend shortens it.
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 30, 0, 100, 1));
    match l
        .extend(Extend::new(&a, hold("long"), Duration::from_secs(15)))
        .await
        .unwrap()
    {
        Extended::Until(at) => assert_expires_in(at, &clock, Duration::from_secs(15)),
        other => panic!("expected Until, got {other:?}"),
    }
    clock.advance(Duration::from_secs(20));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (100, 0, 0, 100, 0));
    assert_eq!(
        l.commit(&a, &hold("long"), 30).await.unwrap().outcome,
        SettleOutcome::Expired
    );
}

/// Extending a hold that is no longer open says why.
pub async fn extend_of_settled_hold_is_not_open<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_extend_closed", 100).await;
    let ttl = Duration::from_secs(60);
    expect_held(reserve(&l, &a, &hold("c"), 10).await);
    l.commit(&a, &hold("c"), 5).await.unwrap();
    expect_held(reserve(&l, &a, &hold("r"), 10).await);
    l.refund(&a, &hold("r")).await.unwrap();
    assert_eq!(
        l.extend(Extend::new(&a, hold("c"), ttl)).await.unwrap(),
        Extended::NotOpen(SettleOutcome::AlreadyCommitted)
    );
    assert_eq!(
        l.extend(Extend::new(&a, hold("r"), ttl)).await.unwrap(),
        Extended::NotOpen(SettleOutcome::AlreadyRefunded)
    );
    assert_eq!(
        l.extend(Extend::new(&a, hold("never"), ttl)).await.unwrap(),
        Extended::NotOpen(SettleOutcome::Unknown)
    );
    // Extending an unknown id leaves no tombstone.
    assert!(!expect_held(reserve(&l, &a, &hold("never"), 1).await).replayed);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (94, 1, 5, 100, 1));
}

/// A ttl of zero (or past `MAX_HOLD_TTL`) is refused and holds nothing.
pub async fn invalid_ttl_is_refused<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_ttl", 100).await;
    for ttl in [
        Duration::ZERO,
        Duration::from_micros(999),
        MAX_HOLD_TTL + Duration::from_secs(1),
    ] {
        let r = l
            .reserve(Reserve::new(a.clone(), hold("h1"), 10).ttl(ttl))
            .await;
        assert!(
            matches!(r, Err(LedgerError::InvalidTtl { ttl: got }) if got == ttl),
            "ttl {ttl:?}: {r:?}"
        );
    }
    assert_eq!(totals(&assert_conserved(&l, &a).await), (100, 0, 0, 100, 0));

    expect_held(reserve(&l, &a, &hold("h1"), 10).await);
    let r = l.extend(Extend::new(&a, hold("h1"), Duration::ZERO)).await;
    assert!(matches!(r, Err(LedgerError::InvalidTtl { .. })), "{r:?}");
    // The longest ttl is fine.
    let r = l
        .reserve(Reserve::new(a.clone(), hold("h2"), 10).ttl(MAX_HOLD_TTL))
        .await
        .unwrap();
    expect_held(r);
    assert!(matches!(
        l.extend(Extend::new(&a, hold("h1"), MAX_HOLD_TTL))
            .await
            .unwrap(),
        Extended::Until(_)
    ));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (80, 20, 0, 100, 2));
}

/// Bad idempotency keys and route labels are refused before anything is written.
pub async fn invalid_arguments_write_nothing<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let a = acct("acct_invalid");
    let long_key = "k".repeat(256);
    for key in ["", "has space", "tab\there", "é", long_key.as_str()] {
        let r = l.top_up(TopUp::new(&a, 10, key)).await;
        assert!(
            matches!(r, Err(LedgerError::InvalidIdempotencyKey)),
            "key {key:?}: {r:?}"
        );
    }
    assert!(matches!(
        l.balance(&a).await,
        Err(LedgerError::UnknownAccount)
    ));
    // The longest key and every printable character are fine.
    l.top_up(TopUp::new(&a, 10, "k".repeat(255))).await.unwrap();
    l.top_up(TopUp::new(&a, 10, "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"))
        .await
        .unwrap();

    let long_route = "r".repeat(257);
    for route in ["bad\nroute", "nul\0", long_route.as_str()] {
        let r = l
            .reserve(Reserve::new(a.clone(), hold("h1"), 5).route(route))
            .await;
        assert!(
            matches!(r, Err(LedgerError::InvalidRoute)),
            "route {route:?}: {r:?}"
        );
    }
    assert_eq!(totals(&assert_conserved(&l, &a).await), (20, 0, 0, 20, 0));
    // The refused id is still free.
    let held = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 5).route("GET /ünïcode {ok}"))
            .await
            .unwrap(),
    );
    assert!(!held.replayed);
    l.commit(&a, &hold("h1"), 5).await.unwrap();
    let usage = l.usage(&a).await.unwrap();
    assert_eq!(
        usage.by_route.get("GET /ünïcode {ok}").map(|u| u.credits),
        Some(5)
    );
    assert_conserved(&l, &a).await;
}

// ---------------------------------------------------------------------------------------
// Usage and warnings
// ---------------------------------------------------------------------------------------

/// Commits add up by route (set with `Reserve::route`); refunds and expiries do not count.
pub async fn usage_by_route_accumulates<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_usage", 1_000).await;
    let steps: [(&str, Option<&str>, u64, Option<u64>); 6] = [
        ("h1", Some("GET /a"), 10, Some(7)),
        ("h2", Some("GET /a"), 10, Some(10)),
        ("h3", Some("POST /b"), 5, Some(9)), // clamped to 5
        ("h4", None, 3, Some(2)),
        ("h5", Some("GET /a"), 50, None), // refunded
        ("h6", Some("POST /b"), 4, Some(0)),
    ];
    for (id, route, amount, actual) in steps {
        let mut r = Reserve::new(a.clone(), hold(id), amount);
        if let Some(route) = route {
            r = r.route(route);
        }
        expect_held(l.reserve(r).await.unwrap());
        match actual {
            Some(actual) => assert!(l
                .commit(&a, &hold(id), actual)
                .await
                .unwrap()
                .outcome
                .is_applied()),
            None => assert!(l.refund(&a, &hold(id)).await.unwrap().outcome.is_applied()),
        }
    }
    // An expired hold does not count.
    expect_held(
        l.reserve(
            Reserve::new(a.clone(), hold("h7"), 8)
                .route("GET /c")
                .ttl(Duration::from_secs(10)),
        )
        .await
        .unwrap(),
    );
    clock.advance(Duration::from_secs(20));

    let usage = l.usage(&a).await.unwrap();
    let got: BTreeMap<&str, (u64, u64)> = usage
        .by_route
        .iter()
        .map(|(route, u)| (route.as_str(), (u.credits, u.calls)))
        .collect();
    let want = BTreeMap::from([("GET /a", (17, 2)), ("POST /b", (5, 2)), ("", (2, 1))]);
    assert_eq!(got, want);
    let b = assert_conserved(&l, &a).await;
    assert_eq!(b.committed, 24);
    assert_eq!(totals(&b), (976, 0, 24, 1_000, 0));
}

/// The runway forecast: none before any spend, then `available / burn rate`, growing as the
/// rate decays with idle time.
pub async fn runway_follows_spending<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_runway", 1_000).await;
    let first = expect_held(reserve(&l, &a, &hold("r0"), 0).await);
    assert_eq!(first.runway_secs, None, "nothing spent yet");
    // Nine commits over five minutes and more: not enough history for a runway.
    for i in 0..9 {
        let spent = spend(&l, &a, &format!("s{i}"), 10).await;
        assert_eq!(
            spent.runway_secs, None,
            "commit {i}: no runway from so little"
        );
        clock.advance(Duration::from_secs(40));
    }
    // The tenth, 6 minutes after the first: now there is one. 100 credits spent over six
    // minutes (a one-hour time constant): about 0.026 credit/s, 900 left: about 34,000 s.
    let spent = spend(&l, &a, "s9", 10).await;
    let after = spent
        .runway_secs
        .expect("a runway once the history is long enough");
    assert!((30_000..=38_000).contains(&after), "runway {after}");
    let held = expect_held(reserve(&l, &a, &hold("r2"), 0).await);
    let at_reserve = held.runway_secs.expect("reserve reports the runway");
    assert!(
        (30_000..=38_000).contains(&at_reserve),
        "runway {at_reserve}"
    );
    // A top-up is not spend: it lengthens the runway (more to spend), not the rate.
    l.top_up(TopUp::new(&a, 900, "runway-more")).await.unwrap();
    let topped = l.balance(&a).await.unwrap().runway_secs.expect("still");
    assert!(
        topped > at_reserve * 3 / 2,
        "runway {topped} after a top-up"
    );
    // An idle hour decays the rate (time constant one hour): the balance lasts longer.
    clock.advance(Duration::from_secs(3600));
    let later = l
        .balance(&a)
        .await
        .unwrap()
        .runway_secs
        .expect("still spending");
    assert!(later > topped * 2, "runway {later} after an idle hour");
    assert_conserved(&l, &a).await;
}

/// Ten commits in a burst are not a history: the runway waits until the first of them is
/// five minutes old; top-ups alone never make one.
pub async fn a_runway_needs_history_not_a_burst<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_burst", 1_000).await;
    for i in 0..3 {
        l.top_up(TopUp::new(&a, 100, format!("burst-top-{i}")))
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(600));
    assert_eq!(
        l.balance(&a).await.unwrap().runway_secs,
        None,
        "top-ups are not spend"
    );
    for i in 0..12 {
        let spent = spend(&l, &a, &format!("b{i}"), 5).await;
        assert_eq!(spent.runway_secs, None, "a burst of {i} commits");
    }
    assert_eq!(l.balance(&a).await.unwrap().runway_secs, None);
    clock.advance(Duration::from_secs(301));
    let held = expect_held(reserve(&l, &a, &hold("later"), 0).await);
    assert!(held.runway_secs.is_some(), "the burst is five minutes old");
    assert_conserved(&l, &a).await;
}

async fn spend<L: Ledger>(l: &L, a: &AccountId, id: &str, amount: u64) -> Settlement {
    expect_held(reserve(l, a, &hold(id), amount).await);
    let s = l.commit(a, &hold(id), amount).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    s
}

/// The `balance.low` thresholds of a settlement's events.
pub fn low_events(s: &Settlement) -> Vec<u64> {
    s.events
        .iter()
        .filter(|e| e.kind == EventKind::BalanceLow)
        .map(|e| e.threshold.expect("balance.low names its threshold"))
        .collect()
}

/// Checks an event's fields against the settlement that detected it.
#[track_caller]
fn assert_event(s: &Settlement, a: &AccountId) {
    for e in &s.events {
        assert_eq!(&e.account, a, "{e:?}");
        assert_eq!(Some(e.available), s.available, "{e:?}");
        assert!(e.id.starts_with("evt_"), "{e:?}");
    }
}

/// A commit that takes `available` below the account's threshold fires `balance.low`
/// exactly once per crossing.
pub async fn low_balance_threshold_crossed_once_per_crossing<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_low", 100).await;
    l.configure(Configure::new(
        &a,
        AccountSettings::new().low_balance_threshold(50),
    ))
    .await
    .unwrap();
    let b = assert_conserved(&l, &a).await;
    assert_eq!(b.thresholds, vec![50]);
    let held = expect_held(reserve(&l, &a, &hold("peek"), 0).await);
    assert_eq!(held.thresholds, vec![50]);
    l.refund(&a, &hold("peek")).await.unwrap();

    let s = spend(&l, &a, "s1", 30).await; // 70: above
    assert_eq!((s.available, low_events(&s)), (Some(70), vec![]));
    assert_eq!(s.thresholds, vec![50]);
    let s = spend(&l, &a, "s2", 20).await; // 50: not below
    assert_eq!((s.available, low_events(&s)), (Some(50), vec![]));
    let s = spend(&l, &a, "s3", 10).await; // 40: crossed
    assert_eq!((s.available, low_events(&s)), (Some(40), vec![50]));
    assert_event(&s, &a);
    let first_id = s.events[0].id.clone();
    let s = spend(&l, &a, "s4", 10).await; // 30: still below, already said
    assert_eq!((s.available, low_events(&s)), (Some(30), vec![]));
    let s = spend(&l, &a, "s5", 0).await;
    assert_eq!((s.available, low_events(&s)), (Some(30), vec![]));

    // A top-up lifts it above; the next commit below is a new crossing, a new event.
    l.top_up(TopUp::new(&a, 100, "pay-2")).await.unwrap(); // 130
    let s = spend(&l, &a, "s6", 70).await; // 60: above
    assert_eq!((s.available, low_events(&s)), (Some(60), vec![]));
    let s = spend(&l, &a, "s7", 20).await; // 40: crossed again
    assert_eq!((s.available, low_events(&s)), (Some(40), vec![50]));
    assert_ne!(s.events[0].id, first_id, "each crossing is its own event");
    let s = spend(&l, &a, "s8", 1).await;
    assert_eq!((s.available, low_events(&s)), (Some(39), vec![]));

    // A refund never fires.
    expect_held(reserve(&l, &a, &hold("r1"), 5).await);
    assert!(l.refund(&a, &hold("r1")).await.unwrap().events.is_empty());
    assert_conserved(&l, &a).await;
}

/// Credits that come back by a refund or an expired hold do not re-arm a threshold: the
/// caller who lets holds lapse gets no second warning for the same fall. A top-up that
/// lifts `available` back to the threshold does; one that leaves it below does not.
pub async fn only_a_top_up_rearms_a_threshold<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_low_rearm", 100).await;
    l.configure(Configure::new(
        &a,
        AccountSettings::new().low_balance_threshold(50),
    ))
    .await
    .unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("stuck"), 40).ttl(Duration::from_secs(10)))
            .await
            .unwrap(),
    ); // 60
    let s = spend(&l, &a, "s1", 30).await; // 30: crossed
    assert_eq!((s.available, low_events(&s)), (Some(30), vec![50]));
    clock.advance(Duration::from_secs(20)); // the stuck hold comes back: 70
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 0, 30, 100, 0));
    let s = spend(&l, &a, "s2", 30).await; // 40: below again, but not re-armed
    assert_eq!((s.available, low_events(&s)), (Some(40), vec![]));
    // The same threshold set again (with a new credit limit) re-arms nothing either.
    let same = AccountSettings::new()
        .low_balance_threshold(50)
        .credit_limit(5);
    l.configure(Configure::new(&a, same)).await.unwrap();
    let s = spend(&l, &a, "s2b", 0).await;
    assert_eq!(
        low_events(&s),
        Vec::<u64>::new(),
        "the same crossing, reported once"
    );

    expect_held(reserve(&l, &a, &hold("big"), 30).await); // 10
    let s = l.refund(&a, &hold("big")).await.unwrap(); // 40
    assert!(s.events.is_empty());
    l.top_up(TopUp::new(&a, 5, "pay-small")).await.unwrap(); // 45: still below 50
    let s = spend(&l, &a, "s3", 1).await; // 44
    assert_eq!(
        low_events(&s),
        Vec::<u64>::new(),
        "a top-up that stays below re-arms nothing"
    );
    l.top_up(TopUp::new(&a, 10, "pay-back")).await.unwrap(); // 54: back above
    let s = spend(&l, &a, "s4", 5).await; // 49
    assert_eq!((s.available, low_events(&s)), (Some(49), vec![50]));
    assert_conserved(&l, &a).await;
}

/// Several thresholds (the quickstart's `demo-poor`: 5 credits, thresholds 100 and 4):
/// each fires once, the `Credits-Warning` threshold is the lowest above the balance.
pub async fn several_thresholds_fire_one_event_each<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_poor", 5).await;
    l.configure(Configure::new(
        &a,
        AccountSettings::new()
            .low_balance_threshold(100)
            .low_balance_threshold(4),
    ))
    .await
    .unwrap();
    assert_eq!(assert_conserved(&l, &a).await.thresholds, vec![100, 4]);
    let s = spend(&l, &a, "s1", 1).await; // 4: below 100 only
    assert_eq!((s.available, low_events(&s)), (Some(4), vec![100]));
    let s = spend(&l, &a, "s2", 1).await; // 3: below 4 now
    assert_eq!((s.available, low_events(&s)), (Some(3), vec![4]));
    for i in 3..=5 {
        let s = spend(&l, &a, &format!("s{i}"), 1).await;
        assert!(s.events.is_empty(), "{s:?}");
    }
    // One top-up past both re-arms both; one commit that falls below both fires both,
    // highest first.
    l.top_up(TopUp::new(&a, 200, "pay-2")).await.unwrap(); // 200
    let s = spend(&l, &a, "s6", 198).await; // 2
    assert_eq!(low_events(&s), vec![100, 4]);
    assert_event(&s, &a);
    assert_ne!(s.events[0].id, s.events[1].id);
    assert_conserved(&l, &a).await;
}

/// A threshold given as a percentage of the last top-up moves with it.
pub async fn a_percentage_threshold_follows_the_last_top_up<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_pct", 1_000).await;
    l.configure(Configure::new(
        &a,
        AccountSettings::new().threshold(Threshold::PercentOfLastTopUp(10)),
    ))
    .await
    .unwrap();
    assert_eq!(assert_conserved(&l, &a).await.thresholds, vec![100]);
    let s = spend(&l, &a, "s1", 899).await; // 101
    assert!(s.events.is_empty());
    let s = spend(&l, &a, "s2", 2).await; // 99
    assert_eq!(low_events(&s), vec![100]);
    l.top_up(TopUp::new(&a, 5_000, "pay-2")).await.unwrap(); // 5 099; threshold 500
    assert_eq!(assert_conserved(&l, &a).await.thresholds, vec![500]);
    let s = spend(&l, &a, "s3", 4_600).await; // 499
    assert_eq!(low_events(&s), vec![500]);
    assert_conserved(&l, &a).await;
}

/// The first refusal for lack of credits fires `balance.depleted`, once until the next
/// top-up; the refusal writes nothing else.
pub async fn depletion_fires_once_until_a_top_up<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_depleted", 10).await;
    let before = assert_conserved(&l, &a).await;
    let refusal = expect_insufficient(reserve(&l, &a, &hold("r1"), 11).await);
    assert_eq!(refusal.events.len(), 1, "{refusal:?}");
    let e = &refusal.events[0];
    assert_eq!(
        (e.kind, &e.account, e.available),
        (EventKind::Depleted, &a, 10)
    );
    assert_eq!((e.threshold, e.runway_secs), (None, None));
    let refusal = expect_insufficient(reserve(&l, &a, &hold("r2"), 11).await);
    assert!(refusal.events.is_empty(), "once until the next top-up");
    assert_eq!(
        assert_conserved(&l, &a).await,
        before,
        "a refusal moves nothing"
    );
    l.top_up(TopUp::new(&a, 1, "pay-2")).await.unwrap();
    expect_held(reserve(&l, &a, &hold("r3"), 11).await);
    let refusal = expect_insufficient(reserve(&l, &a, &hold("r4"), 1).await);
    assert_eq!(refusal.events.len(), 1);
    assert_ne!(refusal.events[0].id, e.id);
    // An unknown account is not depleted: it fires nothing and creates nothing.
    let ghost = acct("acct_ghost");
    assert!(matches!(
        reserve(&l, &ghost, &hold("g"), 1).await,
        ReserveOutcome::UnknownAccount
    ));
    assert!(matches!(
        l.balance(&ghost).await,
        Err(LedgerError::UnknownAccount)
    ));
}

/// 64 commits racing across one threshold fire exactly one event.
pub async fn concurrent_commits_crossing_a_threshold_fire_one_event<H: Harness>(h: &H) {
    const TASKS: u64 = 64;
    let (l, _clock, a) = funded(h, "acct_race_low", 2 * TASKS).await;
    l.configure(Configure::new(
        &a,
        AccountSettings::new().low_balance_threshold(TASKS + TASKS / 2),
    ))
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (l, a) = (l.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let id = hold(&format!("c{task}"));
            expect_held(
                l.reserve(Reserve::new(a.clone(), id.clone(), 1))
                    .await
                    .unwrap_or_else(|e| under_load("reserve", e)),
            );
            let s = l
                .commit(&a, &id, 1)
                .await
                .unwrap_or_else(|e| under_load("commit", e));
            low_events(&s).len()
        }));
    }
    let mut fired = 0;
    for task in tasks {
        fired += task.await.expect("a commit task panicked");
    }
    assert_eq!(fired, 1, "one crossing, one event");
    assert_eq!(assert_conserved(&l, &a).await.available, TASKS as i64);
}

/// `balance.runway_low` fires once, at the first commit whose forecast (with the history
/// rule of the runway: 10 commits, 5 minutes) is below the account's horizon; a top-up
/// re-arms it; a zero horizon never fires.
pub async fn runway_low_fires_once_until_a_top_up<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_runway_low", 100).await;
    let hour = Duration::from_secs(3_600);
    l.configure(Configure::new(
        &a,
        AccountSettings::new().runway_horizon(hour),
    ))
    .await
    .unwrap();
    assert_eq!(assert_conserved(&l, &a).await.runway_horizon, hour);
    let runway_events = |s: &Settlement| -> Vec<u64> {
        s.events
            .iter()
            .filter(|e| e.kind == EventKind::RunwayLow)
            .map(|e| e.runway_secs.expect("runway_low names its runway"))
            .collect()
    };
    // Nine commits over six minutes: not yet a history, no forecast, no event.
    for i in 0..9 {
        let s = spend(&l, &a, &format!("r{i}"), 6).await;
        assert_eq!(runway_events(&s), Vec::<u64>::new(), "commit {i}");
        clock.advance(Duration::from_secs(40));
    }
    // The tenth: 40 left at about 60 credits an hour, well under the hour.
    let s = spend(&l, &a, "r9", 6).await;
    let fired = runway_events(&s);
    assert_eq!(fired.len(), 1, "{s:?}");
    assert!(fired[0] < 3_600, "{fired:?}");
    let forecast = s
        .runway_secs
        .expect("a runway once the history is long enough");
    assert!(
        fired[0].abs_diff(forecast) <= 1,
        "{fired:?} vs the forecast {forecast}"
    );
    let s = spend(&l, &a, "r10", 1).await;
    assert!(runway_events(&s).is_empty(), "once until a top-up");
    // A top-up re-arms it; spending that leaves days of runway fires nothing; falling
    // under the hour again does.
    l.top_up(TopUp::new(&a, 10_000, "pay-2")).await.unwrap();
    let s = spend(&l, &a, "r11", 1).await;
    assert!(runway_events(&s).is_empty(), "{s:?}");
    let s = spend(&l, &a, "r12", 10_030).await;
    assert_eq!(runway_events(&s).len(), 1, "{s:?}");

    // A zero horizon: no runway events at all.
    let (l, clock, b) = funded(h, "acct_runway_off", 100).await;
    l.configure(Configure::new(
        &b,
        AccountSettings::new().runway_horizon(Duration::ZERO),
    ))
    .await
    .unwrap();
    for i in 0..12 {
        let s = spend(&l, &b, &format!("o{i}"), 6).await;
        assert!(runway_events(&s).is_empty(), "{s:?}");
        clock.advance(Duration::from_secs(40));
    }
}

/// Thresholds the ledger cannot keep are refused, and change nothing.
pub async fn invalid_thresholds_are_refused<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_bad_thresholds", 10).await;
    let too_many = (0..=MAX_THRESHOLDS as u64).fold(AccountSettings::new(), |s, t| {
        s.low_balance_threshold(t + 1)
    });
    for settings in [
        too_many,
        AccountSettings::new().threshold(Threshold::PercentOfLastTopUp(0)),
        AccountSettings::new().threshold(Threshold::PercentOfLastTopUp(101)),
        AccountSettings::new().low_balance_threshold(MAX_AMOUNT + 1),
        AccountSettings::new().runway_horizon(Duration::from_secs(400 * 86_400)),
        AccountSettings::new().runway_horizon(Duration::from_millis(1_500)),
    ] {
        let err = l
            .configure(Configure::new(&a, settings.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{settings:?}: {err}");
    }
    assert_eq!(assert_conserved(&l, &a).await.thresholds, Vec::<u64>::new());
}

// ---------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------

/// API keys are stored by hash: register, look up, move, revoke.
pub async fn api_keys_register_lookup_revoke<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let (a, b) = (acct("acct_keys_a"), acct("acct_keys_b"));
    l.top_up(TopUp::new(&a, 1, "pay-1")).await.unwrap();
    l.top_up(TopUp::new(&b, 1, "pay-2")).await.unwrap();
    // Raw keys unique to this run, in case the store's key records are shared.
    let raw = format!("sk_test_{}", HoldId::generate());
    let key = ApiKeyHash::of(&raw);
    let stranger = ApiKeyHash::of(&format!("sk_test_{}", HoldId::generate()));

    assert_eq!(l.lookup_api_key(&key).await.unwrap(), None);
    l.register_api_key(&key, &a).await.unwrap();
    assert_eq!(l.lookup_api_key(&key).await.unwrap(), Some(a.clone()));
    assert_eq!(
        l.lookup_api_key(&ApiKeyHash::of(&raw)).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(l.lookup_api_key(&stranger).await.unwrap(), None);

    // Re-registering moves the key.
    l.register_api_key(&key, &b).await.unwrap();
    assert_eq!(l.lookup_api_key(&key).await.unwrap(), Some(b.clone()));

    assert!(l.revoke_api_key(&key).await.unwrap());
    assert_eq!(l.lookup_api_key(&key).await.unwrap(), None);
    assert!(!l.revoke_api_key(&key).await.unwrap());
    assert!(!l.revoke_api_key(&stranger).await.unwrap());
    assert_conserved(&l, &a).await;
    assert_conserved(&l, &b).await;
}

// ---------------------------------------------------------------------------------------
// Concurrency and scale
// ---------------------------------------------------------------------------------------

/// A failed call in the concurrency case; a timeout there usually means the harness gave
/// the ledger a per-call deadline too short for 64 tasks on a loaded test machine.
fn under_load<T>(what: &str, e: LedgerError) -> T {
    if e.is_unavailable() {
        panic!(
            "{what} under load: {e}. The harness should give the ledger a generous \
             per-call deadline (seconds, not milliseconds): this case is about atomicity, \
             not latency"
        )
    }
    panic!("{what} under load: {e}")
}

/// 64 tasks race to hold, commit and refund the same 100 credits: nothing is ever
/// double-spent, and conservation holds at the end.
pub async fn concurrent_reserves_never_overshoot<H: Harness>(h: &H) {
    const TASKS: u64 = 64;
    const ROUNDS: u64 = 60;
    const CREDITS: u64 = 100;
    let (l, _clock, a) = funded(h, "acct_race", CREDITS).await;

    // A lower bound of `held + committed`: a hold counts from when its reserve returned
    // until its settle is sent, a commit from when it returned. It must never pass the
    // credits there are.
    let in_use = Arc::new(AtomicI64::new(0));
    let committed = Arc::new(AtomicU64::new(0));
    let holds_granted = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (l, a) = (l.clone(), a.clone());
        let (in_use, committed, holds_granted) =
            (in_use.clone(), committed.clone(), holds_granted.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(task + 1);
            for round in 0..ROUNDS {
                let amount = 1 + rng.below(3);
                let id = hold(&format!("t{task}-r{round}"));
                let outcome = l
                    .reserve(Reserve::new(a.clone(), id.clone(), amount).route("race"))
                    .await
                    .unwrap_or_else(|e| under_load("reserve", e));
                match outcome {
                    ReserveOutcome::Held(held) => {
                        assert!(!held.replayed);
                        assert!(held.available >= 0, "overshoot: {held:?}");
                        holds_granted.fetch_add(1, Ordering::Relaxed);
                        let now = in_use.fetch_add(amount as i64, Ordering::SeqCst) + amount as i64;
                        assert!(
                            now <= CREDITS as i64,
                            "{now} credits in use out of {CREDITS}"
                        );
                        if rng.below(4) == 0 {
                            tokio::task::yield_now().await;
                        }
                        in_use.fetch_sub(amount as i64, Ordering::SeqCst);
                        let s = if rng.below(3) == 0 {
                            let actual = rng.below(amount + 2); // sometimes clamped
                            let s = l
                                .commit(&a, &id, actual)
                                .await
                                .unwrap_or_else(|e| under_load("commit", e));
                            assert_eq!(s.outcome, SettleOutcome::Committed);
                            assert_eq!(s.committed, actual.min(amount));
                            assert_eq!(s.clamped, actual > amount);
                            committed.fetch_add(s.committed, Ordering::SeqCst);
                            in_use.fetch_add(s.committed as i64, Ordering::SeqCst);
                            s
                        } else {
                            let s = l
                                .refund(&a, &id)
                                .await
                                .unwrap_or_else(|e| under_load("refund", e));
                            assert_eq!((s.outcome, s.released), (SettleOutcome::Refunded, amount));
                            s
                        };
                        assert!(s.available.unwrap() >= 0, "overshoot: {s:?}");
                    }
                    ReserveOutcome::Insufficient(refusal) => {
                        assert!(refusal.available >= 0, "overshoot: {refusal:?}");
                        assert!(refusal.available < amount as i64, "{refusal:?}");
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task panicked");
    }

    let committed = committed.load(Ordering::SeqCst);
    assert!(holds_granted.load(Ordering::SeqCst) > 0);
    let b = assert_conserved(&l, &a).await;
    assert_eq!(
        totals(&b),
        ((CREDITS - committed) as i64, 0, committed, CREDITS, 0)
    );
    let usage = l.usage(&a).await.unwrap();
    assert_eq!(
        usage.by_route.get("race").map(|u| u.credits).unwrap_or(0),
        committed
    );
}

/// Fifty accounts with ids from the whole allowed alphabet stay independent (a sharded or
/// clustered store spreads them over shards).
pub async fn many_accounts_are_independent<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let ids: Vec<AccountId> = (0..50)
        .map(|i| match i % 7 {
            0 => acct(&format!("acct_{i}")),
            1 => acct(&format!("user{i}@example.com")),
            2 => acct(&format!("org:{i}:team-{i}")),
            3 => acct(&format!("a+b={i}.x")),
            4 => acct(&format!("{i}")),
            5 => acct(&format!("{}{i}", "Z".repeat(126 - i.to_string().len()))),
            _ => acct(&format!("MiXeD-Case_{i}.:@+=")),
        })
        .collect();
    assert_eq!(
        ids.len(),
        ids.iter().collect::<std::collections::BTreeSet<_>>().len()
    );

    let mut tasks = Vec::new();
    for (i, a) in ids.iter().cloned().enumerate() {
        let l = l.clone();
        let i = i as u64;
        tasks.push(tokio::spawn(async move {
            l.top_up(TopUp::new(&a, 100 + i, format!("pay-{i}")))
                .await
                .unwrap();
            let id = hold("h1");
            expect_held(
                l.reserve(Reserve::new(a.clone(), id.clone(), 10 + i).route("GET /many"))
                    .await
                    .unwrap(),
            );
            l.commit(&a, &id, i).await.unwrap();
            expect_held(
                l.reserve(Reserve::new(a.clone(), hold("open"), 1))
                    .await
                    .unwrap(),
            );
        }));
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
    for (i, a) in ids.iter().enumerate() {
        let i = i as u64;
        let b = assert_conserved(&l, a).await;
        assert_eq!(
            totals(&b),
            ((100 + i - i - 1) as i64, 1, i, 100 + i, 1),
            "account {a}"
        );
        let usage = l.usage(a).await.unwrap();
        let u = usage.by_route["GET /many"];
        assert_eq!((u.credits, u.calls), (i, 1), "account {a}");
    }
}
