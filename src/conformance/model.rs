//! The model-based test ([`model_state_machine`]): random sequences of ledger operations,
//! run against a ledger and against a small reference model with the same semantics,
//! compared after every step.
//!
//! The model is a plain struct: holds, tombstones, expiry, top-up keys, credit limit,
//! clamping, usage and the low-balance latch. After each operation the test compares the
//! operation's answer, and the balance of every account, with the model's.
//!
//! Time: the model counts whole seconds. Every ttl is 5 s off a multiple of 10 s and every
//! clock advance a multiple of 10 s, so a hold's expiry is never within 5 s of the model's
//! present: a ledger on a real clock plus the manual offset (Redis) agrees with the model
//! as long as one case runs in under 5 s of wall time.
//!
//! Closed ids are forgotten 5 s after their hold's expiry (or close), which any ledger grace
//! of 1 to 5 s matches: the model says when on the same 10 s grid, so the answer never
//! depends on where in its 5 s of drift a networked ledger is.
//!
//! The number of cases is `PROPTEST_CASES` when set, else 64; each case has up to
//! `MAX_OPS` operations. A failing sequence is shrunk and printed with its resolved steps.
//!
//! Semantics the model pins down beyond the named cases:
//! * a retried reserve of an open hold answers the first hold's amount and expiry
//!   (`replayed`), even when it asks for another amount or could not be afforded now;
//! * settling or reserving a closed id answers `already(how it closed)`: `AlreadyCommitted`,
//!   `AlreadyRefunded` (also for a refund tombstone) or `Expired`;
//! * a commit or extend of an id never seen leaves no trace; a refund of one leaves a
//!   tombstone, except on an account that does not exist (nothing is written there);
//! * settling on an unknown account answers `Unknown` with `available: None`, extending
//!   answers `NotOpen(Unknown)`, reserving answers `ReserveOutcome::UnknownAccount`;
//! * a top-up key belongs to the first account it credits: the same key on another
//!   account is `TopUpKeyClaimed` and creates nothing;
//! * the low-balance warning is a latch: a commit that leaves `available` below the
//!   threshold reports a crossing (a `balance.low` event) if the latch is open and closes
//!   it; only a top-up that brings `available` back to or above the threshold, or setting
//!   the threshold again, opens it (a refund or an expired hold coming back does not);
//! * a refusal for lack of credits reports `balance.depleted` once until the next top-up.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::clock::{Clock, ManualClock, SystemClock};
use crate::ledger::{Configure, Extend};
use crate::ledger::{Extended, HoldId, Reserve, ReserveOutcome, SettleOutcome, Settlement};
use crate::{AccountId, AccountSettings, Ledger, LedgerError};
use crate::{LedgerAdmin, LedgerReports, TopUp};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use super::is_conserved;
use super::Harness;

/// Longest generated operation sequence.
pub const MAX_OPS: usize = 40;
/// Cases when `PROPTEST_CASES` is not set.
pub const DEFAULT_CASES: u32 = 64;
/// Most shrinking steps after a failure.
const MAX_SHRINK_ITERS: u32 = 2_048;

const ACCOUNTS: [&str; 3] = ["acct-a", "user@example.com", "org:team+1=x"];
/// The threshold each account gets when configured (so it never goes from set to unset).
const THRESHOLDS: [Option<u64>; 3] = [Some(80), None, Some(30)];
const KEYS: [&str; 4] = ["pay-0", "pay-1", "pay-2", "pay-3"];
const ROUTES: [Option<&str>; 3] = [None, Some("GET /a"), Some("POST /b")];
const TTL_SECS: [u64; 3] = [15, 25, 45];
const ADVANCE_SECS: [u64; 4] = [10, 20, 30, 50];
const CREDIT_LIMITS: [u64; 3] = [0, 20, 100];
/// A ledger forgets a closed id its grace (call timeout + 1 s: 1 s in memory, 5 s for the
/// Redis harnesses' 4 s timeout) after its hold's expiry (or its close, if later), and a
/// tombstone of a never-seen id that grace after the longest TTL reserved with (the 60 s
/// default: every TTL here is shorter). The model uses 5 s, the largest grace it allows:
/// with expiries 5 s off the grid and reclaims on it, any grace of 1..=5 s makes the
/// ledger forget an id at the same grid point as the model, even 5 s of wall time late.
const GRACE_SECS: u64 = 5;
const TOMBSTONE_SECS: u64 = 60 + GRACE_SECS;

/// Which hold id an operation names, resolved against the ids the account used so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// An id never used before on any account.
    Fresh,
    /// The `n`-th most recently used id of this account (modulo their number; a fresh id
    /// when there is none yet).
    Recent(usize),
    /// The `n`-th open hold of this account (modulo their number), as the model sees it;
    /// like `Recent(n)` when there is none.
    Open(usize),
}

/// One generated operation. Accounts and amounts pick from small fixed sets and hold ids
/// mostly name holds the account already has, so replays, conflicts, tombstones and
/// double settles happen often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `top_up(ACCOUNTS[acct], amount, KEYS[key])`.
    ToppedUp {
        /// Index of the account.
        acct: usize,
        /// Credits to add.
        amount: u64,
        /// Index of the top-up key.
        key: usize,
    },
    /// A `reserve` on `ACCOUNTS[acct]`.
    Reserve {
        /// Index of the account.
        acct: usize,
        /// The hold id.
        hold: Pick,
        /// Credits to hold.
        amount: u64,
        /// The hold's TTL, in seconds.
        ttl_secs: u64,
        /// Index of the route label (`None`, `GET /a`, `POST /b`).
        route: usize,
    },
    /// A `commit` of `actual` credits.
    Commit {
        /// Index of the account.
        acct: usize,
        /// The hold id.
        hold: Pick,
        /// Credits to commit (clamped to the hold).
        actual: u64,
    },
    /// A `refund`.
    Refund {
        /// Index of the account.
        acct: usize,
        /// The hold id.
        hold: Pick,
    },
    /// An `extend` by `ttl_secs`.
    Extend {
        /// Index of the account.
        acct: usize,
        /// The hold id.
        hold: Pick,
        /// The new TTL from now, in seconds.
        ttl_secs: u64,
    },
    /// Moves the clock forward.
    Advance {
        /// Seconds to move.
        secs: u64,
    },
    /// `configure` with this credit limit and the account's fixed threshold.
    Configure {
        /// Index of the account.
        acct: usize,
        /// The overdraft allowed.
        credit_limit: u64,
    },
}

/// An [`Op`] with its hold id resolved to a number (the id is `h<number>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    ToppedUp {
        acct: usize,
        amount: u64,
        key: usize,
    },
    Reserve {
        acct: usize,
        hold: usize,
        amount: u64,
        ttl_secs: u64,
        route: usize,
    },
    Commit {
        acct: usize,
        hold: usize,
        actual: u64,
    },
    Refund {
        acct: usize,
        hold: usize,
    },
    Extend {
        acct: usize,
        hold: usize,
        ttl_secs: u64,
    },
    Advance {
        secs: u64,
    },
    Configure {
        acct: usize,
        credit_limit: u64,
    },
}

/// Turns [`Pick`]s into hold numbers.
#[derive(Default)]
struct Resolver {
    next: usize,
    used: [Vec<usize>; 3],
}

impl Resolver {
    /// Resolves `pick`; `remember` adds a fresh id to the account's recent ones (for ids
    /// that leave a trace: reserves and refunds).
    fn pick(&mut self, model: &Model, acct: usize, pick: Pick, remember: bool) -> usize {
        if let Pick::Open(n) = pick {
            let open: Vec<usize> = model.accounts[acct]
                .iter()
                .flat_map(|a| a.holds.keys().copied())
                .collect();
            if !open.is_empty() {
                return open[n % open.len()];
            }
        }
        let used = &mut self.used[acct];
        match pick {
            Pick::Open(n) | Pick::Recent(n) if !used.is_empty() => {
                used[used.len() - 1 - n % used.len()]
            }
            _ => {
                self.next += 1;
                if remember {
                    used.push(self.next);
                }
                self.next
            }
        }
    }

    fn resolve(&mut self, model: &Model, op: Op) -> Step {
        match op {
            Op::ToppedUp { acct, amount, key } => Step::ToppedUp { acct, amount, key },
            Op::Reserve {
                acct,
                hold,
                amount,
                ttl_secs,
                route,
            } => Step::Reserve {
                acct,
                hold: self.pick(model, acct, hold, true),
                amount,
                ttl_secs,
                route,
            },
            Op::Commit { acct, hold, actual } => Step::Commit {
                acct,
                hold: self.pick(model, acct, hold, false),
                actual,
            },
            Op::Refund { acct, hold } => Step::Refund {
                acct,
                hold: self.pick(model, acct, hold, true),
            },
            Op::Extend {
                acct,
                hold,
                ttl_secs,
            } => Step::Extend {
                acct,
                hold: self.pick(model, acct, hold, false),
                ttl_secs,
            },
            Op::Advance { secs } => Step::Advance { secs },
            Op::Configure { acct, credit_limit } => Step::Configure { acct, credit_limit },
        }
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    // The first account is the busiest; the last one starts out unknown.
    let acct = || prop_oneof![4 => Just(0usize), 2 => Just(1usize), 1 => Just(2usize)];
    let recent = || (0..4usize).prop_map(Pick::Recent);
    let open = || (0..4usize).prop_map(Pick::Open);
    let new_hold = || prop_oneof![4 => Just(Pick::Fresh), 1 => recent()];
    let old_hold = || prop_oneof![6 => open(), 2 => recent(), 1 => Just(Pick::Fresh)];
    let ttl = || proptest::sample::select(&TTL_SECS[..]);
    prop_oneof![
        3 => (acct(), prop_oneof![Just(100u64), 0..=150u64], 0..KEYS.len())
            .prop_map(|(acct, amount, key)| Op::ToppedUp { acct, amount, key }),
        6 => (
            acct(),
            new_hold(),
            prop_oneof![3 => 0..=40u64, 1 => 0..=150u64],
            ttl(),
            0..ROUTES.len(),
        )
            .prop_map(|(acct, hold, amount, ttl_secs, route)| Op::Reserve {
                acct,
                hold,
                amount,
                ttl_secs,
                route,
            }),
        4 => (acct(), old_hold(), prop_oneof![3 => 0..=40u64, 1 => 0..=150u64])
            .prop_map(|(acct, hold, actual)| Op::Commit { acct, hold, actual }),
        3 => (acct(), old_hold()).prop_map(|(acct, hold)| Op::Refund { acct, hold }),
        1 => (acct(), old_hold(), ttl())
            .prop_map(|(acct, hold, ttl_secs)| Op::Extend { acct, hold, ttl_secs }),
        2 => proptest::sample::select(&ADVANCE_SECS[..]).prop_map(|secs| Op::Advance { secs }),
        1 => (acct(), proptest::sample::select(&CREDIT_LIMITS[..]))
            .prop_map(|(acct, credit_limit)| Op::Configure { acct, credit_limit }),
    ]
}

/// Sequences of up to [`MAX_OPS`] operations.
pub fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op_strategy(), 10..=MAX_OPS)
}

/// Every case starts with these: the first account funded and configured (so it has its
/// low-balance threshold), the second funded, the third unknown.
pub const SETUP: [Op; 3] = [
    Op::ToppedUp {
        acct: 0,
        amount: 100,
        key: 0,
    },
    Op::Configure {
        acct: 0,
        credit_limit: 0,
    },
    Op::ToppedUp {
        acct: 1,
        amount: 100,
        key: 0,
    },
];

// ---------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ModelHold {
    amount: u64,
    /// Model seconds.
    expires_at: u64,
    route: Option<&'static str>,
    /// What the ledger said when it placed the hold (a replay must say the same).
    expires_at_ms: u64,
}

#[derive(Debug, Clone, Default)]
struct ModelAccount {
    topped_up: u64,
    committed: u64,
    held: u64,
    credit_limit: u64,
    threshold: Option<u64>,
    warned: bool,
    depleted: bool,
    holds: BTreeMap<usize, ModelHold>,
    done: BTreeMap<usize, SettleOutcome>,
    /// When each id of `done` is forgotten (model seconds): from then on it is unknown.
    forget_at: BTreeMap<usize, u64>,
    usage: BTreeMap<String, (u64, u64)>,
}

impl ModelAccount {
    fn available(&self) -> i64 {
        self.topped_up as i64 - self.committed as i64 - self.held as i64
    }

    /// A top-up re-arms the warning when `available` is back at or above the threshold.
    fn rearm(&mut self) {
        if let Some(t) = self.threshold {
            if self.available() >= t as i64 {
                self.warned = false;
            }
        }
    }

    /// Remembers how `id` closed until `forget_at`.
    fn close(&mut self, id: usize, how: SettleOutcome, forget_at: u64) {
        self.done.insert(id, how);
        self.forget_at.insert(id, forget_at);
    }

    fn reclaim(&mut self, now: u64) {
        let due: Vec<usize> = self
            .forget_at
            .iter()
            .filter(|(_, &at)| at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.done.remove(&id);
            self.forget_at.remove(&id);
        }
        let expired: Vec<usize> = self
            .holds
            .iter()
            .filter(|(_, h)| h.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let h = self.holds.remove(&id).expect("listed above");
            self.held -= h.amount;
            self.close(id, SettleOutcome::Expired, now + GRACE_SECS);
        }
    }

    fn settled(&self, outcome: SettleOutcome) -> Obs {
        Obs::Settled {
            outcome,
            committed: 0,
            released: 0,
            clamped: false,
            available: Some(self.available()),
            thresholds: self.threshold.into_iter().collect(),
            low: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Model {
    /// Seconds since the case started.
    now: u64,
    accounts: [Option<ModelAccount>; 3],
    /// Every top-up key credited: the account it belongs to, and the amount.
    topups: BTreeMap<&'static str, (usize, u64)>,
}

/// What an operation answered, in a form both the model and the ledger produce.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Obs {
    Held {
        amount: u64,
        available: i64,
        credit_limit: u64,
        thresholds: Vec<u64>,
        replayed: bool,
    },
    Insufficient {
        required: u64,
        available: i64,
        credit_limit: u64,
        /// `balance.depleted` fired.
        depleted: bool,
    },
    Closed(SettleOutcome),
    Settled {
        outcome: SettleOutcome,
        committed: u64,
        released: u64,
        clamped: bool,
        available: Option<i64>,
        thresholds: Vec<u64>,
        /// The thresholds of the `balance.low` events it fired.
        low: Vec<u64>,
    },
    Until,
    NotOpen(SettleOutcome),
    ToppedUp {
        amount: u64,
        replayed: bool,
        available: i64,
    },
    Done,
    UnknownAccount,
    TopUpConflict {
        first_amount: u64,
        amount: u64,
    },
    /// The key belongs to this account (its id).
    TopUpKeyClaimed(String),
    OtherError(String),
}

fn already(how: SettleOutcome) -> SettleOutcome {
    match how {
        SettleOutcome::Committed => SettleOutcome::AlreadyCommitted,
        SettleOutcome::Refunded => SettleOutcome::AlreadyRefunded,
        other => other,
    }
}

fn unknown_account_settlement() -> Obs {
    Obs::Settled {
        outcome: SettleOutcome::Unknown,
        committed: 0,
        released: 0,
        clamped: false,
        available: None,
        thresholds: Vec::new(),
        low: Vec::new(),
    }
}

impl Model {
    fn reclaim_all(&mut self) {
        let now = self.now;
        for a in self.accounts.iter_mut().flatten() {
            a.reclaim(now);
        }
    }

    /// Applies `op` and says what the ledger must answer. For a new hold or an extension,
    /// the ledger's expiry (ms) is filled in afterwards, by `run_steps`.
    fn apply(&mut self, op: &Step) -> Obs {
        self.reclaim_all();
        let now = self.now;
        match *op {
            Step::ToppedUp { acct, amount, key } => {
                let key = KEYS[key];
                let owned = self.topups.get(key).copied();
                if let Some((owner, _)) = owned.filter(|&(owner, _)| owner != acct) {
                    // Another account's payment: this account is not even created.
                    return Obs::TopUpKeyClaimed(ACCOUNTS[owner].to_owned());
                }
                let a = self.accounts[acct].get_or_insert_with(Default::default);
                if let Some((_, first)) = owned {
                    if first != amount {
                        return Obs::TopUpConflict {
                            first_amount: first,
                            amount,
                        };
                    }
                    return Obs::ToppedUp {
                        amount,
                        replayed: true,
                        available: a.available(),
                    };
                }
                a.topped_up += amount;
                self.topups.insert(key, (acct, amount));
                a.rearm();
                a.depleted = false;
                Obs::ToppedUp {
                    amount,
                    replayed: false,
                    available: a.available(),
                }
            }
            Step::Reserve {
                acct,
                hold,
                amount,
                ttl_secs,
                route,
            } => {
                let Some(a) = self.accounts[acct].as_mut() else {
                    return Obs::UnknownAccount;
                };
                if let Some(h) = a.holds.get(&hold) {
                    return Obs::Held {
                        amount: h.amount,
                        available: a.available(),
                        credit_limit: a.credit_limit,
                        thresholds: a.threshold.into_iter().collect(),
                        replayed: true,
                    };
                }
                if let Some(&how) = a.done.get(&hold) {
                    return Obs::Closed(already(how));
                }
                if amount as i64 > a.available() + a.credit_limit as i64 {
                    let depleted = !std::mem::replace(&mut a.depleted, true);
                    return Obs::Insufficient {
                        required: amount,
                        available: a.available(),
                        credit_limit: a.credit_limit,
                        depleted,
                    };
                }
                a.held += amount;
                a.holds.insert(
                    hold,
                    ModelHold {
                        amount,
                        expires_at: now + ttl_secs,
                        route: ROUTES[route],
                        expires_at_ms: 0,
                    },
                );
                Obs::Held {
                    amount,
                    available: a.available(),
                    credit_limit: a.credit_limit,
                    thresholds: a.threshold.into_iter().collect(),
                    replayed: false,
                }
            }
            Step::Commit { acct, hold, actual } => {
                let Some(a) = self.accounts[acct].as_mut() else {
                    return unknown_account_settlement();
                };
                let Some(h) = a.holds.remove(&hold) else {
                    let how = a.done.get(&hold).copied().map(already);
                    return a.settled(how.unwrap_or(SettleOutcome::Unknown));
                };
                let charged = actual.min(h.amount);
                a.held -= h.amount;
                a.committed += charged;
                let usage = a
                    .usage
                    .entry(h.route.unwrap_or_default().to_owned())
                    .or_default();
                usage.0 += charged;
                usage.1 += 1;
                let below = a.threshold.is_some_and(|t| a.available() < t as i64);
                let crossed = below && !a.warned;
                if crossed {
                    a.warned = true;
                }
                a.close(hold, SettleOutcome::Committed, h.expires_at + GRACE_SECS);
                Obs::Settled {
                    outcome: SettleOutcome::Committed,
                    committed: charged,
                    released: h.amount - charged,
                    clamped: actual > h.amount,
                    available: Some(a.available()),
                    thresholds: a.threshold.into_iter().collect(),
                    low: a.threshold.filter(|_| crossed).into_iter().collect(),
                }
            }
            Step::Refund { acct, hold } => {
                let Some(a) = self.accounts[acct].as_mut() else {
                    return unknown_account_settlement();
                };
                let Some(h) = a.holds.remove(&hold) else {
                    if let Some(&how) = a.done.get(&hold) {
                        return a.settled(already(how));
                    }
                    // The tombstone.
                    a.close(hold, SettleOutcome::Refunded, now + TOMBSTONE_SECS);
                    return a.settled(SettleOutcome::Unknown);
                };
                a.held -= h.amount;
                a.close(hold, SettleOutcome::Refunded, h.expires_at + GRACE_SECS);
                Obs::Settled {
                    outcome: SettleOutcome::Refunded,
                    committed: 0,
                    released: h.amount,
                    clamped: false,
                    available: Some(a.available()),
                    thresholds: a.threshold.into_iter().collect(),
                    low: Vec::new(),
                }
            }
            Step::Extend {
                acct,
                hold,
                ttl_secs,
            } => {
                let Some(a) = self.accounts[acct].as_mut() else {
                    return Obs::NotOpen(SettleOutcome::Unknown);
                };
                match a.holds.get_mut(&hold) {
                    Some(h) => {
                        h.expires_at = now + ttl_secs;
                        Obs::Until
                    }
                    None => Obs::NotOpen(
                        a.done
                            .get(&hold)
                            .copied()
                            .map(already)
                            .unwrap_or(SettleOutcome::Unknown),
                    ),
                }
            }
            Step::Advance { secs } => {
                self.now += secs;
                Obs::Done
            }
            Step::Configure { acct, credit_limit } => {
                let a = self.accounts[acct].get_or_insert_with(Default::default);
                a.credit_limit = credit_limit;
                // New thresholds are armed; the same ones set again keep what fired.
                if a.threshold != THRESHOLDS[acct] {
                    a.warned = false;
                }
                a.threshold = THRESHOLDS[acct];
                Obs::Done
            }
        }
    }

    fn hold_mut(&mut self, acct: usize, hold: usize) -> Option<&mut ModelHold> {
        self.accounts[acct].as_mut()?.holds.get_mut(&hold)
    }
}

// ---------------------------------------------------------------------------------------
// Running a sequence against a ledger
// ---------------------------------------------------------------------------------------

/// A store that cannot be reached is not a difference from the model: stop at once, with
/// no shrinking.
fn unavailable(what: &str, e: LedgerError) -> ! {
    panic!(
        "{what}: ledger unavailable: {e}. The model test needs a reachable store and a \
         generous per-call deadline in the harness"
    )
}

fn obs_of_error(e: LedgerError) -> Obs {
    match e {
        e if e.is_unavailable() => unavailable("model step", e),
        LedgerError::UnknownAccount => Obs::UnknownAccount,
        LedgerError::TopUpConflict {
            first_amount,
            amount,
        } => Obs::TopUpConflict {
            first_amount,
            amount,
        },
        LedgerError::TopUpKeyClaimed { account } => Obs::TopUpKeyClaimed(account.to_string()),
        other => Obs::OtherError(other.to_string()),
    }
}

fn obs_of_settlement(s: Settlement) -> Obs {
    Obs::Settled {
        outcome: s.outcome,
        committed: s.committed,
        released: s.released,
        clamped: s.clamped,
        available: s.available,
        thresholds: s.thresholds,
        low: s
            .events
            .iter()
            .filter(|e| e.kind == crate::events::EventKind::BalanceLow)
            .filter_map(|e| e.threshold)
            .collect(),
    }
}

fn check_expiry(expires_at_ms: u64, clock: &ManualClock, ttl_secs: u64) -> Result<(), String> {
    let ttl = ttl_secs * 1_000;
    let earliest = clock.now_ms() + ttl - 1_000;
    let latest = SystemClock.now_ms() + clock.advanced().as_millis() as u64 + ttl + 1_000;
    if (earliest..=latest).contains(&expires_at_ms) {
        Ok(())
    } else {
        Err(format!(
            "expiry {expires_at_ms} not within {earliest}..={latest}"
        ))
    }
}

struct Ids {
    accounts: Vec<AccountId>,
}

fn hold_id(n: usize) -> HoldId {
    HoldId::new(format!("h{n}")).expect("a valid hold id")
}

/// Runs one operation on the ledger; for a hold or extension, also returns the expiry.
async fn run_op<L: Ledger + LedgerAdmin + LedgerReports>(
    ledger: &L,
    clock: &ManualClock,
    ids: &Ids,
    op: &Step,
) -> (Obs, Option<u64>) {
    let acct = |i: usize| &ids.accounts[i];
    match *op {
        Step::ToppedUp {
            acct: a,
            amount,
            key,
        } => match ledger.top_up(TopUp::new(acct(a), amount, KEYS[key])).await {
            Ok(t) => (
                Obs::ToppedUp {
                    amount: t.amount,
                    replayed: t.replayed,
                    available: t.available,
                },
                None,
            ),
            Err(e) => (obs_of_error(e), None),
        },
        Step::Reserve {
            acct: a,
            hold: h,
            amount,
            ttl_secs,
            route,
        } => {
            let mut r = Reserve::new(acct(a).clone(), hold_id(h), amount)
                .ttl(Duration::from_secs(ttl_secs));
            if let Some(route) = ROUTES[route] {
                r = r.route(route);
            }
            match ledger.reserve(r).await {
                Ok(ReserveOutcome::Held(held)) => (
                    Obs::Held {
                        amount: held.amount,
                        available: held.available,
                        credit_limit: held.credit_limit,
                        thresholds: held.thresholds,
                        replayed: held.replayed,
                    },
                    Some(held.expires_at_ms),
                ),
                Ok(ReserveOutcome::Insufficient(i)) => (
                    Obs::Insufficient {
                        required: i.required,
                        available: i.available,
                        credit_limit: i.credit_limit,
                        depleted: i
                            .events
                            .iter()
                            .any(|e| e.kind == crate::events::EventKind::Depleted),
                    },
                    None,
                ),
                Ok(ReserveOutcome::Closed(how)) => (Obs::Closed(how), None),
                Ok(ReserveOutcome::UnknownAccount) => (Obs::UnknownAccount, None),
                Ok(other) => (Obs::OtherError(format!("{other:?}")), None),
                Err(e) => (obs_of_error(e), None),
            }
        }
        Step::Commit {
            acct: a,
            hold: h,
            actual,
        } => match ledger.commit(acct(a), &hold_id(h), actual).await {
            Ok(s) => (obs_of_settlement(s), None),
            Err(e) => (obs_of_error(e), None),
        },
        Step::Refund { acct: a, hold: h } => match ledger.refund(acct(a), &hold_id(h)).await {
            Ok(s) => (obs_of_settlement(s), None),
            Err(e) => (obs_of_error(e), None),
        },
        Step::Extend {
            acct: a,
            hold: h,
            ttl_secs,
        } => match ledger
            .extend(Extend::new(
                acct(a),
                hold_id(h),
                Duration::from_secs(ttl_secs),
            ))
            .await
        {
            Ok(Extended::Until(at)) => (Obs::Until, Some(at)),
            Ok(Extended::NotOpen(how)) => (Obs::NotOpen(how), None),
            Err(e) => (obs_of_error(e), None),
        },
        Step::Advance { secs } => {
            clock.advance(Duration::from_secs(secs));
            (Obs::Done, None)
        }
        Step::Configure {
            acct: a,
            credit_limit,
        } => {
            let mut settings = AccountSettings::new().credit_limit(credit_limit);
            if let Some(t) = THRESHOLDS[a] {
                settings = settings.low_balance_threshold(t);
            }
            match ledger.configure(Configure::new(acct(a), settings)).await {
                Ok(()) => (Obs::Done, None),
                Err(e) => (obs_of_error(e), None),
            }
        }
    }
}

/// Compares every account's balance (and, with `usage`, its usage) with the model.
async fn compare_accounts<L: LedgerReports>(
    ledger: &L,
    model: &mut Model,
    ids: &Ids,
    usage: bool,
) -> Result<(), String> {
    model.reclaim_all();
    for (i, id) in ids.accounts.iter().enumerate() {
        let got = ledger.balance(id).await;
        match (&model.accounts[i], got) {
            (_, Err(e)) if e.is_unavailable() => unavailable("balance", e),
            (None, Err(LedgerError::UnknownAccount)) => {}
            (Some(m), Ok(b)) => {
                let want = (
                    m.available(),
                    m.held,
                    m.committed,
                    m.topped_up,
                    m.credit_limit,
                    m.threshold.into_iter().collect::<Vec<_>>(),
                    m.holds.len() as u64,
                );
                let got = (
                    b.available,
                    b.held,
                    b.committed,
                    b.topped_up,
                    b.credit_limit,
                    b.thresholds.clone(),
                    b.open_holds,
                );
                if want != got {
                    return Err(format!(
                        "balance of {id}: (available, held, committed, topped_up, \
                         credit_limit, threshold, open_holds) = {got:?}, model says {want:?}"
                    ));
                }
                if !is_conserved(&b) {
                    return Err(format!("conservation broken for {id}: {b:?}"));
                }
                if usage {
                    let got: BTreeMap<String, (u64, u64)> = ledger
                        .usage(id)
                        .await
                        .unwrap_or_else(|e| match e {
                            e if e.is_unavailable() => unavailable("usage", e),
                            e => panic!("usage of {id}: {e}"),
                        })
                        .by_route
                        .into_iter()
                        .map(|(route, u)| (route, (u.credits, u.calls)))
                        .collect();
                    if got != m.usage {
                        return Err(format!("usage of {id}: {got:?}, model says {:?}", m.usage));
                    }
                }
            }
            (want, got) => {
                return Err(format!(
                    "balance of {id}: {got:?}, model says {}",
                    if want.is_some() {
                        "it exists"
                    } else {
                        "UnknownAccount"
                    }
                ))
            }
        }
    }
    Ok(())
}

/// Runs `ops` on a fresh ledger from `h` and on a fresh model; `Err` describes the first
/// difference. Public so that a failing sequence can be pinned as a regression test.
pub async fn run_model_case<H: Harness>(h: &H, ops: &[Op]) -> Result<(), String> {
    let mut steps = Vec::new();
    run_steps(h, ops, &mut steps).await.map_err(|e| {
        let steps: Vec<String> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("  {i:>2}: {s:?}"))
            .collect();
        format!(
            "{e}\nthe steps run (after {} setup steps; hold ids are `h<number>`):\n{}",
            SETUP.len(),
            steps.join("\n")
        )
    })
}

async fn run_steps<H: Harness>(h: &H, ops: &[Op], steps: &mut Vec<Step>) -> Result<(), String> {
    let (ledger, clock) = h.ledger().await;
    let ids = Ids {
        accounts: ACCOUNTS
            .iter()
            .map(|a| AccountId::new(a).unwrap())
            .collect(),
    };
    let mut model = Model::default();
    let mut resolver = Resolver::default();
    let ops: Vec<Op> = SETUP.iter().chain(ops).copied().collect();
    for (step, op) in ops.iter().enumerate() {
        let op = &resolver.resolve(&model, *op);
        steps.push(*op);
        let want = model.apply(op);
        let (got, expiry) = run_op(&ledger, &clock, &ids, op).await;
        if got != want {
            return Err(format!(
                "step {step}: {op:?}\n  ledger answered {got:?}\n  model says      {want:?}"
            ));
        }
        // Expiries: a new hold or an extension is `ttl` from the ledger's present; a
        // replayed hold says the expiry it was placed with.
        match (*op, &got) {
            (
                Step::Reserve {
                    acct,
                    hold,
                    ttl_secs,
                    ..
                },
                Obs::Held { replayed, .. },
            ) => {
                let at = expiry.expect("a hold has an expiry");
                let m = model.hold_mut(acct, hold).expect("the model holds it");
                if *replayed {
                    if at != m.expires_at_ms {
                        return Err(format!(
                            "step {step}: {op:?}: replay says expiry {at}, the hold said {}",
                            m.expires_at_ms
                        ));
                    }
                } else {
                    check_expiry(at, &clock, ttl_secs)
                        .map_err(|e| format!("step {step}: {op:?}: {e}"))?;
                    m.expires_at_ms = at;
                }
            }
            (
                Step::Extend {
                    acct,
                    hold,
                    ttl_secs,
                },
                Obs::Until,
            ) => {
                let at = expiry.expect("an extension has an expiry");
                check_expiry(at, &clock, ttl_secs)
                    .map_err(|e| format!("step {step}: {op:?}: {e}"))?;
                model
                    .hold_mut(acct, hold)
                    .expect("the model holds it")
                    .expires_at_ms = at;
            }
            _ => {}
        }
        let last = step + 1 == ops.len();
        compare_accounts(&ledger, &mut model, &ids, last)
            .await
            .map_err(|e| format!("after step {step}: {op:?}\n  {e}"))?;
    }
    Ok(())
}

/// Runs random operation sequences against ledgers from `h` and the model, shrinking and
/// reporting the first sequence where they differ. `PROPTEST_CASES` sets the number of
/// sequences (default [`DEFAULT_CASES`]).
pub async fn model_state_machine<H: Harness>(h: &H) {
    // `Config::default()` honours the PROPTEST_* environment variables.
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    let cases = config.cases;
    let max_shrink = config.max_shrink_iters.min(MAX_SHRINK_ITERS);
    let mut runner = TestRunner::new(config);
    let strategy = ops_strategy();

    for case in 0..cases {
        let mut tree = strategy.new_tree(&mut runner).expect("generate a sequence");
        let ops = tree.current();
        let Err(first) = run_model_case(h, &ops).await else {
            continue;
        };
        // Shrink: simplify while it still fails, complicate when it passes.
        let (mut minimal, mut why, mut steps) = (ops, first, 0);
        if tree.simplify() {
            while steps < max_shrink {
                steps += 1;
                let candidate = tree.current();
                match run_model_case(h, &candidate).await {
                    Err(e) => {
                        (minimal, why) = (candidate, e);
                        if !tree.simplify() {
                            break;
                        }
                    }
                    Ok(()) => {
                        if !tree.complicate() {
                            break;
                        }
                    }
                }
            }
        }
        panic!(
            "ledger and model differ (case {case} of {cases}, shrunk in {steps} steps)\n\
             minimal sequence ({} ops): {minimal:#?}\n{why}",
            minimal.len()
        );
    }
}
