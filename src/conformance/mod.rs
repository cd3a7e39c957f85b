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

mod alerts;
mod audit;
mod concurrency;
mod grow;
mod idempotency;
mod keys;
pub mod model;
mod outbox;
mod reserve;
mod settle;
mod top_ups;
mod usage;

use std::future::Future;
use std::time::Duration;

use crate::clock::{Clock, ManualClock, SystemClock};
use crate::ledger::{
    Held, HoldId, Insufficient, Reserve, ReserveOutcome, SettleOutcome, Settlement,
};
use crate::{AccountId, Balance, Ledger, LedgerError};
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
            an_in_process_ledger_answers_on_the_first_poll,
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
            grow_raises_an_open_hold,
            a_retried_grow_holds_nothing_twice,
            an_unaffordable_grow_writes_nothing,
            grow_of_a_closed_hold_is_not_open,
            grow_past_max_total_is_refused,
            concurrent_grows_never_overspend,
            a_keyed_request_is_replayed_once_stored,
            a_refunded_or_expired_request_runs_again,
            a_committed_request_never_runs_again,
            keys_are_per_account_and_expire,
            concurrent_duplicates_hold_once,
            the_audit_trail_records_every_move,
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

pub use alerts::{
    a_percentage_threshold_follows_the_last_top_up,
    concurrent_commits_crossing_a_threshold_fire_one_event, depletion_fires_once_until_a_top_up,
    invalid_thresholds_are_refused, low_balance_threshold_crossed_once_per_crossing, low_events,
    only_a_top_up_rearms_a_threshold, runway_low_fires_once_until_a_top_up,
    several_thresholds_fire_one_event_each,
};
pub use audit::the_audit_trail_records_every_move;
pub use concurrency::{concurrent_reserves_never_overshoot, many_accounts_are_independent};
pub use grow::{
    a_retried_grow_holds_nothing_twice, an_unaffordable_grow_writes_nothing,
    concurrent_grows_never_overspend, grow_of_a_closed_hold_is_not_open,
    grow_past_max_total_is_refused, grow_raises_an_open_hold,
};
pub use idempotency::{
    a_committed_request_never_runs_again, a_keyed_request_is_replayed_once_stored,
    a_refunded_or_expired_request_runs_again, concurrent_duplicates_hold_once,
    keys_are_per_account_and_expire,
};
pub use keys::api_keys_register_lookup_revoke;
pub use model::model_state_machine;
pub use outbox::{
    a_lapsed_lease_is_claimed_once, dead_letters_are_kept_with_their_reason,
    detected_events_wait_leased_until_acknowledged, OutboxHarness,
};
pub use reserve::{
    an_affordable_hold_takes_what_is_left_down_to_its_minimum,
    an_in_process_ledger_answers_on_the_first_poll, concurrent_affordable_holds_never_overspend,
    max_amount_bounds, overdraft_with_credit_limit, reserve_holds_credits,
    reserve_insufficient_writes_nothing, reserve_past_max_total_is_refused,
    reserve_unknown_account_creates_nothing, top_up_past_max_total_is_refused,
    zero_amount_reserve_and_commit,
};
pub use settle::{
    commit_after_refund_is_already_refunded, commit_less_than_hold_releases_rest,
    commit_more_than_hold_is_clamped, commit_of_unknown_hold_moves_nothing,
    double_commit_moves_nothing, expired_hold_returns_and_cannot_settle, extend_keeps_hold_alive,
    extend_of_settled_hold_is_not_open, extend_to_a_shorter_ttl_expires_sooner,
    invalid_arguments_write_nothing, invalid_ttl_is_refused, refund_gives_everything_back,
    refund_of_unknown_hold_leaves_tombstone, retried_reserve_is_replayed,
    settle_on_unknown_account_is_unknown,
};
pub use top_ups::{
    a_payment_id_credits_one_account_once, a_refused_top_up_frees_its_key,
    concurrent_top_ups_of_one_key_credit_one_account, top_up_replay_is_idempotent,
    top_up_same_key_other_amount_conflicts, top_up_then_balance,
};
pub use usage::{
    a_runway_needs_history_not_a_burst, runway_follows_spending, usage_by_route_accumulates,
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

async fn spend<L: Ledger>(l: &L, a: &AccountId, id: &str, amount: u64) -> Settlement {
    expect_held(reserve(l, a, &hold(id), amount).await);
    let s = l.commit(a, &hold(id), amount).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    s
}

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
