//! [`TinyLedger`]: a ledger written outside tower-credits, on its public API only, that
//! passes the published conformance suite (`tests/conformance_example.rs` runs it).
//!
//! Everything is in one `Mutex<State>`: simple, and every operation is atomic. What it
//! keeps of the contract, and how:
//!
//! * input is checked with `ledger::validate` before anything is written, so it refuses
//!   the same input with the same `LedgerError` as the crate's own ledgers;
//! * holds expire: each account keeps an expiry index, and every call on the account
//!   reclaims at most `RECLAIM_LIMIT` expired holds first (bounded work per call);
//! * closed ids (settled, expired, refund tombstones) are remembered with how they closed,
//!   for 1 s past the hold's expiry; a tombstone as long as the longest TTL reserved with;
//! * a payment id credits one account, once (the key's claim), and a refused top-up
//!   leaves its key free;
//! * alerts are latches, evaluated inside the operation that moves the credits, under the
//!   same lock, so each crossing is detected exactly once:
//!   - a commit that leaves `available` below an armed threshold fires one
//!     `balance.low` event for it and disarms it (highest threshold first; two thresholds
//!     of one value fire one event). Only a top-up re-arms a threshold, and only one that
//!     lifts `available` back to it: credits coming back by a refund or an expired hold
//!     re-arm nothing. A percentage threshold resolves against the last top-up;
//!   - a commit that leaves the runway forecast below the account's horizon fires
//!     `balance.runway_low` once until the next top-up;
//!   - a reserve refused for lack of credits fires `balance.depleted` once until the
//!     next top-up;
//! * runway and usage by route use the public `ledger::runway` helpers and outcome
//!   constructors.
//!
//! It does not implement `EventOutbox`: it keeps no outbox and delivers nothing. The events
//! it detects are returned in `Settlement::events` and `Insufficient::events`, once, for
//! the caller to deliver (a ledger that wants the crate's `Dispatcher` to deliver them,
//! with retries and leases across replicas, implements `EventOutbox` as well).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tower_credits::clock::{Clock, SystemClock};
use tower_credits::events::{CreditEvent, EventKind};
use tower_credits::ledger::runway::{burn_rate_after, decayed_rate, runway_known, runway_secs};
use tower_credits::ledger::validate::{
    check_amount, check_idempotency_key, check_retention, check_route, check_ttl, checked_total,
};
use tower_credits::ledger::{
    audit::check_history, check_alerts, RouteUsage, DEFAULT_HOLD_TTL, DEFAULT_RUNWAY_HORIZON,
    RECLAIM_LIMIT,
};
use tower_credits::ledger::{
    AuditEntry, AuditKind, BoxLedgerFuture, Configure, Extend, Extended, Grow, GrowOutcome, Grown,
    Held, HistoryPage, HoldId, IdempotencyClaim, Insufficient, Replay, Reserve, ReserveOutcome,
    Settle, SettleOutcome, Settlement, StoreResponse, ToppedUp, Usage,
};
use tower_credits::{
    AccountId, ApiKeyHash, Balance, Ledger, LedgerAdmin, LedgerError, LedgerReports, Threshold,
    TopUp,
};

/// How long a closed id is remembered past its hold's expiry (or its close, if later):
/// a call answers before it returns here, so no call about the id is still on its way;
/// 1 s of margin, like `MemoryLedger`.
const CLOSED_GRACE_MS: u64 = 1_000;

/// Prepaid credits in process memory, behind one lock. Clones share the balances.
#[derive(Clone)]
pub struct TinyLedger {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Box<dyn Clock>,
    state: Mutex<State>,
    /// The next event's receipt: unique in this ledger, so per account, and never reused.
    receipts: AtomicU64,
}

#[derive(Default)]
struct State {
    accounts: HashMap<AccountId, Account>,
    /// Every payment id credited: the account it belongs to and its amount.
    topups: HashMap<String, (AccountId, u64)>,
    api_keys: HashMap<ApiKeyHash, AccountId>,
    /// The longest TTL reserved with (ms): how long a refund tombstone is kept.
    longest_ttl_ms: u64,
}

#[derive(Default)]
struct Account {
    topped_up: u64,
    committed: u64,
    held: u64,
    credit_limit: u64,
    alerts: Alerts,
    /// Burn rate (credits/s) as of `rate_at_ms`.
    rate: f64,
    rate_at_ms: u64,
    /// Commits of at least a credit, and the first one's time: a runway needs history.
    commits: u64,
    first_commit_ms: Option<u64>,
    usage: BTreeMap<String, RouteUsage>,
    holds: HashMap<HoldId, OpenHold>,
    /// Open holds by expiry.
    expiry: BTreeSet<(u64, HoldId)>,
    /// Closed ids and how they closed, until their forget-at time.
    closed: HashMap<HoldId, SettleOutcome>,
    /// `closed` by forget-at time.
    forget: BTreeSet<(u64, HoldId)>,
    /// The latest forget-at time: once passed, all of `closed` goes at once.
    closed_until: u64,
    /// Idempotency records by key digest (a record past its retention counts as none).
    requests: HashMap<[u8; 32], Request>,
    /// The audit trail, oldest first, at most `AUDIT_CAP` entries, and the next entry's
    /// number.
    log: VecDeque<AuditEntry>,
    log_next: u64,
}

/// Audit entries kept per account.
const AUDIT_CAP: usize = 100;

/// What a keyed request came to.
struct Request {
    fingerprint: [u8; 32],
    hold: HoldId,
    committed_at: Option<u64>,
    response: Option<bytes::Bytes>,
    unavailable: bool,
    until: u64,
}

impl Account {
    /// Appends a move to the audit trail, with the totals after it.
    fn audit(
        &mut self,
        now: u64,
        kind: AuditKind,
        amount: u64,
        hold: Option<(&HoldId, Option<&str>)>,
    ) {
        if self.log.len() == AUDIT_CAP {
            self.log.pop_front();
        }
        let mut entry = AuditEntry::new(self.log_next.to_string(), now, kind, amount);
        if let Some((id, route)) = hold {
            entry.hold_id = Some(id.as_str().to_owned());
            entry.route = route.map(str::to_owned);
        }
        entry.available = self.available();
        entry.held = self.held;
        entry.committed = self.committed;
        entry.topped_up = self.topped_up;
        self.log.push_back(entry);
        self.log_next += 1;
    }

    /// What the first request with `claim`'s key came to, if it still counts (a record
    /// past its retention, or whose hold expired or was refunded unsettled, does not).
    fn replay(&mut self, claim: &IdempotencyClaim, now: u64) -> Option<Replay> {
        let r = self.requests.get(claim.key())?;
        let replay = if r.until <= now {
            None
        } else if r.fingerprint != *claim.fingerprint() {
            Some(Replay::KeyReused)
        } else if r.unavailable {
            Some(Replay::Unavailable)
        } else if let (Some(_), Some(response)) = (r.committed_at, &r.response) {
            Some(Replay::Stored {
                response: response.clone(),
                available: self.available(),
            })
        } else if let Some(at) = r.committed_at {
            Some(Replay::committed_unstored(now.saturating_sub(at)))
        } else if self.holds.contains_key(&r.hold) {
            Some(Replay::InProgress)
        } else {
            None
        };
        if replay.is_none() {
            self.requests.remove(claim.key());
        }
        replay
    }

    /// The record of `key` made by `hold`.
    fn request_of(&mut self, key: &[u8; 32], hold: &HoldId) -> Option<&mut Request> {
        self.requests.get_mut(key).filter(|r| r.hold == *hold)
    }
}

/// An account's thresholds and horizon, and which of its events have fired.
#[derive(Default)]
struct Alerts {
    thresholds: Vec<Threshold>,
    /// `fired[i]`: `thresholds[i]` fired and waits for a top-up to re-arm.
    fired: Vec<bool>,
    /// `None`: `DEFAULT_RUNWAY_HORIZON`; zero: no runway events.
    horizon: Option<Duration>,
    runway_fired: bool,
    depleted_fired: bool,
    /// What percentage thresholds resolve against.
    last_top_up: u64,
}

impl Alerts {
    /// New thresholds (all armed) and horizon; the same thresholds set again keep what
    /// fired, so one crossing is reported once.
    fn configure(&mut self, thresholds: &[Threshold], horizon: Option<Duration>) {
        if self.thresholds != thresholds {
            self.thresholds = thresholds.to_vec();
            self.fired = vec![false; thresholds.len()];
        }
        self.horizon = horizon;
    }

    /// The thresholds in credits, highest first, each value once.
    fn resolved(&self) -> Vec<u64> {
        let mut values: Vec<u64> = self
            .thresholds
            .iter()
            .map(|t| t.credits(self.last_top_up))
            .collect();
        values.sort_unstable_by(|a, b| b.cmp(a));
        values.dedup();
        values
    }

    fn horizon(&self) -> Duration {
        self.horizon.unwrap_or(DEFAULT_RUNWAY_HORIZON)
    }

    /// After a commit that left `available` and `runway`: the thresholds crossed (highest
    /// first, now disarmed), and the runway if `balance.runway_low` fires.
    fn after_commit(&mut self, available: i64, runway: Option<u64>) -> (Vec<u64>, Option<u64>) {
        let mut crossed = Vec::new();
        for (t, fired) in self.thresholds.iter().zip(&mut self.fired) {
            let value = t.credits(self.last_top_up);
            if !*fired && available < value as i64 {
                *fired = true;
                crossed.push(value);
            }
        }
        crossed.sort_unstable_by(|a, b| b.cmp(a));
        crossed.dedup();
        let horizon = self.horizon().as_secs();
        let runway_low = runway.filter(|&secs| !self.runway_fired && secs < horizon);
        self.runway_fired |= runway_low.is_some();
        (crossed, runway_low)
    }

    /// After a refusal for lack of credits: whether `balance.depleted` fires.
    fn after_refusal(&mut self) -> bool {
        !std::mem::replace(&mut self.depleted_fired, true)
    }

    /// After a top-up of `amount` that left `available`: re-arms the thresholds it lifted
    /// `available` back to, and the runway and depletion events.
    fn after_top_up(&mut self, amount: u64, available: i64) {
        self.last_top_up = amount;
        for (t, fired) in self.thresholds.iter().zip(&mut self.fired) {
            if available >= t.credits(amount) as i64 {
                *fired = false;
            }
        }
        self.runway_fired = false;
        self.depleted_fired = false;
    }
}

struct OpenHold {
    amount: u64,
    expires_at_ms: u64,
    route: Option<String>,
}

/// What a closed id answers when settled or reserved again.
fn already(how: SettleOutcome) -> SettleOutcome {
    match how {
        SettleOutcome::Committed => SettleOutcome::AlreadyCommitted,
        SettleOutcome::Refunded => SettleOutcome::AlreadyRefunded,
        other => other,
    }
}

impl Account {
    fn available(&self) -> i64 {
        self.topped_up as i64 - self.committed as i64 - self.held as i64
    }

    fn runway(&self, now: u64) -> Option<u64> {
        if !runway_known(self.commits, self.first_commit_ms, now) {
            return None;
        }
        runway_secs(
            self.available(),
            decayed_rate(self.rate, self.rate_at_ms, now),
        )
    }

    fn remember(&mut self, id: HoldId, how: SettleOutcome, forget_at: u64) {
        self.forget.insert((forget_at, id.clone()));
        self.closed.insert(id, how);
        self.closed_until = self.closed_until.max(forget_at);
    }

    /// Reclaims up to `RECLAIM_LIMIT` expired holds, and forgets closed ids whose time
    /// has come (all at once when the last one's has, else up to `RECLAIM_LIMIT`).
    fn reclaim(&mut self, now: u64) {
        for _ in 0..RECLAIM_LIMIT {
            match self.expiry.first() {
                Some(&(at, _)) if at <= now => {}
                _ => break,
            }
            let (_, id) = self.expiry.pop_first().expect("checked above");
            if let Some(hold) = self.holds.remove(&id) {
                self.held -= hold.amount;
                let route = hold.route.as_deref();
                self.audit(now, AuditKind::Expire, hold.amount, Some((&id, route)));
                // The credits come back, but only a top-up re-arms a threshold.
                self.remember(id, SettleOutcome::Expired, now + CLOSED_GRACE_MS);
            }
        }
        if self.closed_until <= now {
            self.closed.clear();
            self.forget.clear();
        } else {
            for _ in 0..RECLAIM_LIMIT {
                match self.forget.first() {
                    Some(&(at, _)) if at <= now => {}
                    _ => break,
                }
                let (_, id) = self.forget.pop_first().expect("checked above");
                self.closed.remove(&id);
            }
        }
    }

    fn held(&self, amount: u64, expires_at_ms: u64, now: u64) -> Held {
        let mut held = Held::new(amount, self.available(), expires_at_ms);
        held.credit_limit = self.credit_limit;
        held.thresholds = self.alerts.resolved();
        held.runway_secs = self.runway(now);
        held
    }

    fn settlement(&self, outcome: SettleOutcome, now: u64) -> Settlement {
        let mut settlement = Settlement::new(outcome);
        settlement.available = Some(self.available());
        settlement.thresholds = self.alerts.resolved();
        settlement.runway_secs = self.runway(now);
        settlement
    }
}

impl Default for TinyLedger {
    fn default() -> Self {
        Self::new()
    }
}

impl TinyLedger {
    /// A ledger on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// A ledger whose holds expire by `clock` (a `ManualClock` in tests).
    pub fn with_clock(clock: impl Clock) -> Self {
        let state = State {
            longest_ttl_ms: DEFAULT_HOLD_TTL.as_millis() as u64,
            ..State::default()
        };
        Self {
            inner: Arc::new(Inner {
                clock: Box::new(clock),
                state: Mutex::new(state),
                receipts: AtomicU64::new(1),
            }),
        }
    }

    /// The time, and the state locked.
    fn lock(&self) -> (u64, MutexGuard<'_, State>) {
        let state = self
            .inner
            .state
            .lock()
            .expect("no operation panics holding the lock");
        (self.inner.clock.now_ms(), state)
    }

    /// An event of `kind` for `account`, left with `available`, detected now.
    fn event(&self, kind: EventKind, account: &AccountId, available: i64, now: u64) -> CreditEvent {
        let receipt = self.inner.receipts.fetch_add(1, Ordering::Relaxed);
        CreditEvent::new(kind, account.clone(), available, now, receipt.to_string())
    }

    /// Runs `op` on an existing account, after reclaiming its expired holds.
    fn with_account<T>(
        &self,
        account: &AccountId,
        op: impl FnOnce(&mut Account, u64) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let (now, mut state) = self.lock();
        let account = state
            .accounts
            .get_mut(account)
            .ok_or(LedgerError::UnknownAccount)?;
        account.reclaim(now);
        op(account, now)
    }

    fn do_reserve(&self, r: &Reserve) -> Result<ReserveOutcome, LedgerError> {
        check_amount(r.amount())?;
        if let Some(least) = r.least_amount() {
            check_amount(least)?;
        }
        let ttl_ms = check_ttl(r.hold_ttl())?;
        if let Some(route) = r.route_label() {
            check_route(route)?;
        }
        if let Some(claim) = r.idempotency_claim() {
            check_retention(claim.retention_period())?;
        }
        let (now, mut guard) = self.lock();
        let state = &mut *guard;
        state.longest_ttl_ms = state.longest_ttl_ms.max(ttl_ms);
        let Some(a) = state.accounts.get_mut(r.account()) else {
            return Ok(ReserveOutcome::UnknownAccount);
        };
        a.reclaim(now);
        if let Some(hold) = a.holds.get(r.hold_id()) {
            // A retried reserve: the first answer, whatever this one asks for.
            let mut held = a.held(hold.amount, hold.expires_at_ms, now);
            held.replayed = true;
            return Ok(ReserveOutcome::Held(held));
        }
        if let Some(&how) = a.closed.get(r.hold_id()) {
            return Ok(ReserveOutcome::Closed(already(how)));
        }
        if let Some(claim) = r.idempotency_claim() {
            if let Some(replay) = a.replay(claim, now) {
                return Ok(ReserveOutcome::Replay(replay));
            }
        }
        // All of it, or (with a least amount) what the account can afford down to it.
        let spendable = a.available() as i128 + a.credit_limit as i128;
        let least = r.least_amount().unwrap_or(r.amount()).min(r.amount());
        let amount = if r.amount() as i128 <= spendable {
            r.amount()
        } else if least as i128 <= spendable {
            spendable as u64
        } else {
            let mut refusal = Insufficient::new(least, a.available(), a.credit_limit);
            if a.alerts.after_refusal() {
                let event = self.event(EventKind::Depleted, r.account(), a.available(), now);
                refusal.events.push(event);
            }
            return Ok(ReserveOutcome::Insufficient(refusal));
        };
        // committed + held may reach topped_up + credit_limit: keep both in range.
        let held = checked_total(a.held, amount)?;
        checked_total(a.committed, held)?;
        a.held = held;
        let expires_at_ms = now + ttl_ms;
        a.expiry.insert((expires_at_ms, r.hold_id().clone()));
        a.holds.insert(
            r.hold_id().clone(),
            OpenHold {
                amount,
                expires_at_ms,
                route: r.route_label().map(str::to_owned),
            },
        );
        let hold = Some((r.hold_id(), r.route_label()));
        a.audit(now, AuditKind::Reserve, amount, hold);
        if let Some(claim) = r.idempotency_claim() {
            let request = Request {
                fingerprint: *claim.fingerprint(),
                hold: r.hold_id().clone(),
                committed_at: None,
                response: None,
                unavailable: false,
                until: now + claim.retention_period().as_millis() as u64,
            };
            a.requests.insert(*claim.key(), request);
        }
        Ok(ReserveOutcome::Held(a.held(amount, expires_at_ms, now)))
    }

    fn do_settle(&self, s: &Settle) -> Result<Settlement, LedgerError> {
        let actual = s.actual();
        if let Some(actual) = actual {
            check_amount(actual)?;
        }
        let (now, mut guard) = self.lock();
        let state = &mut *guard;
        let tombstone_ms = state.longest_ttl_ms + CLOSED_GRACE_MS;
        let Some(a) = state.accounts.get_mut(s.account()) else {
            // No account: nothing to say about its balance, nothing written.
            return Ok(Settlement::new(SettleOutcome::Unknown));
        };
        a.reclaim(now);
        let id = s.hold_id();
        let Some(hold) = a.holds.remove(id) else {
            if let Some(&how) = a.closed.get(id) {
                return Ok(a.settlement(already(how), now));
            }
            if actual.is_none() {
                // A refund that overtook its reserve: the tombstone keeps that reserve out.
                a.remember(id.clone(), SettleOutcome::Refunded, now + tombstone_ms);
            }
            return Ok(a.settlement(SettleOutcome::Unknown, now));
        };
        a.expiry.remove(&(hold.expires_at_ms, id.clone()));
        a.held -= hold.amount;
        let route = hold.route.clone();
        let (outcome, charged, clamped) = match actual {
            Some(actual) => (
                SettleOutcome::Committed,
                actual.min(hold.amount),
                actual > hold.amount,
            ),
            None => (SettleOutcome::Refunded, 0, false),
        };
        // Only a commit fires events; a refund gives credits back but re-arms nothing.
        let mut events = Vec::new();
        if outcome == SettleOutcome::Committed {
            a.committed += charged;
            a.rate = burn_rate_after(a.rate, a.rate_at_ms, now, charged);
            a.rate_at_ms = now;
            if charged > 0 {
                a.commits += 1;
                a.first_commit_ms.get_or_insert(now);
            }
            let usage = a.usage.entry(hold.route.unwrap_or_default()).or_default();
            usage.credits += charged;
            usage.calls += 1;
            let available = a.available();
            let (crossed, runway_low) = a.alerts.after_commit(available, a.runway(now));
            for threshold in crossed {
                let event = self.event(EventKind::BalanceLow, s.account(), available, now);
                events.push(event.with_threshold(threshold));
            }
            if let Some(runway) = runway_low {
                let event = self.event(EventKind::RunwayLow, s.account(), available, now);
                events.push(event.with_runway_secs(runway));
            }
        }
        let moved = match outcome {
            SettleOutcome::Committed => (AuditKind::Commit, charged),
            _ => (AuditKind::Refund, hold.amount),
        };
        a.audit(now, moved.0, moved.1, Some((id, route.as_deref())));
        let forget_at = now.max(hold.expires_at_ms) + CLOSED_GRACE_MS;
        a.remember(id.clone(), outcome, forget_at);
        if let Some(key) = s.idempotency_key() {
            if outcome == SettleOutcome::Committed {
                if let Some(r) = a.request_of(key, id) {
                    r.committed_at = Some(now);
                }
            } else if a.request_of(key, id).is_some() {
                // Refunded: the retry runs again.
                a.requests.remove(key);
            }
        }
        let mut settlement = a.settlement(outcome, now);
        settlement.committed = charged;
        settlement.released = hold.amount - charged;
        settlement.clamped = clamped;
        settlement.events = events;
        Ok(settlement)
    }

    fn do_extend(&self, e: &Extend) -> Result<Extended, LedgerError> {
        let ttl_ms = check_ttl(e.hold_ttl())?;
        let result = self.with_account(e.account(), |a, now| {
            let id = e.hold_id();
            let Some(hold) = a.holds.get_mut(id) else {
                let how = a.closed.get(id).copied().map(already);
                return Ok(Extended::NotOpen(how.unwrap_or(SettleOutcome::Unknown)));
            };
            a.expiry.remove(&(hold.expires_at_ms, id.clone()));
            hold.expires_at_ms = now + ttl_ms;
            a.expiry.insert((hold.expires_at_ms, id.clone()));
            Ok(Extended::Until(hold.expires_at_ms))
        });
        match result {
            Err(LedgerError::UnknownAccount) => Ok(Extended::NotOpen(SettleOutcome::Unknown)),
            other => other,
        }
    }

    fn do_grow(&self, g: &Grow) -> Result<GrowOutcome, LedgerError> {
        check_amount(g.amount())?;
        let result = self.with_account(g.account(), |a, now| {
            let id = g.hold_id();
            let Some(current) = a.holds.get(id).map(|hold| hold.amount) else {
                let how = a.closed.get(id).copied().map(already);
                return Ok(GrowOutcome::NotOpen(how.unwrap_or(SettleOutcome::Unknown)));
            };
            if g.amount() <= current {
                // Already there: a retried grow moves nothing.
                return Ok(GrowOutcome::Grown(Grown::new(current, a.available())));
            }
            // The reserve's rule, on the difference: all of it, or down to the least total.
            let spendable = a.available() as i128 + a.credit_limit as i128;
            let least = g.least_amount().max(current);
            let raise = if ((g.amount() - current) as i128) <= spendable {
                g.amount() - current
            } else if ((least - current) as i128) <= spendable {
                spendable.max(0) as u64
            } else {
                let refusal = Insufficient::new(least - current, a.available(), a.credit_limit);
                return Ok(GrowOutcome::Insufficient(refusal));
            };
            let held = checked_total(a.held, raise)?;
            checked_total(a.committed, held)?;
            a.held = held;
            let hold = a.holds.get_mut(id).expect("open above");
            hold.amount = current + raise;
            a.audit(now, AuditKind::Grow, raise, Some((id, None)));
            Ok(GrowOutcome::Grown(Grown::new(
                current + raise,
                a.available(),
            )))
        });
        match result {
            Err(LedgerError::UnknownAccount) => Ok(GrowOutcome::NotOpen(SettleOutcome::Unknown)),
            other => other,
        }
    }

    fn do_top_up(&self, t: &TopUp) -> Result<ToppedUp, LedgerError> {
        check_amount(t.amount())?;
        check_idempotency_key(t.idempotency_key())?;
        let (now, mut guard) = self.lock();
        let state = &mut *guard;
        let first = match state.topups.get(t.idempotency_key()) {
            // Another account's payment: this one is not even created.
            Some((owner, _)) if owner != t.account() => {
                return Err(LedgerError::TopUpKeyClaimed {
                    account: owner.clone(),
                })
            }
            Some(&(_, first)) => Some(first),
            None => None,
        };
        let a = state.accounts.entry(t.account().clone()).or_default();
        a.reclaim(now);
        if let Some(first) = first {
            if first != t.amount() {
                return Err(LedgerError::TopUpConflict {
                    first_amount: first,
                    amount: t.amount(),
                });
            }
            return Ok(ToppedUp::new(first, a.available(), true));
        }
        // Refused past MAX_AMOUNT before the key is claimed: the key stays free.
        a.topped_up = checked_total(a.topped_up, t.amount())?;
        a.audit(now, AuditKind::TopUp, t.amount(), None);
        let available = a.available();
        a.alerts.after_top_up(t.amount(), available);
        let topped_up = ToppedUp::new(t.amount(), a.available(), false);
        let claim = (t.account().clone(), t.amount());
        state.topups.insert(t.idempotency_key().to_owned(), claim);
        Ok(topped_up)
    }

    fn do_configure(&self, c: &Configure) -> Result<(), LedgerError> {
        let settings = c.settings();
        check_amount(settings.credit_limit)?;
        check_alerts(&settings.thresholds, settings.runway_horizon)?;
        let (_, mut state) = self.lock();
        let a = state.accounts.entry(c.account().clone()).or_default();
        a.credit_limit = settings.credit_limit;
        a.alerts
            .configure(&settings.thresholds, settings.runway_horizon);
        Ok(())
    }
}

impl Ledger for TinyLedger {
    // Every answer is ready at once: no boxing, no task.
    type Future<T: Send + 'static> = Ready<Result<T, LedgerError>>;

    fn reserve(&self, reserve: Reserve) -> Self::Future<ReserveOutcome> {
        ready(self.do_reserve(&reserve))
    }

    fn settle(&self, settle: Settle) -> Self::Future<Settlement> {
        ready(self.do_settle(&settle))
    }

    fn extend(&self, extend: Extend) -> Self::Future<Extended> {
        ready(self.do_extend(&extend))
    }

    fn grow(&self, grow: Grow) -> Self::Future<GrowOutcome> {
        ready(self.do_grow(&grow))
    }

    fn store_response(&self, store: StoreResponse) -> Self::Future<bool> {
        let (_, mut state) = self.lock();
        let stored = state
            .accounts
            .get_mut(store.account())
            .and_then(|a| a.request_of(store.key(), store.hold_id()))
            .map(|r| match store.response() {
                Some(response) => r.response = Some(response.clone()),
                None => r.unavailable = true,
            })
            .is_some();
        ready(Ok(stored))
    }

    fn lookup_api_key(&self, key: &ApiKeyHash) -> Self::Future<Option<AccountId>> {
        let (_, state) = self.lock();
        ready(Ok(state.api_keys.get(key).cloned()))
    }
}

impl LedgerAdmin for TinyLedger {
    fn top_up(&self, top_up: TopUp) -> Self::Future<ToppedUp> {
        ready(self.do_top_up(&top_up))
    }

    fn configure(&self, configure: Configure) -> Self::Future<()> {
        ready(self.do_configure(&configure))
    }

    fn register_api_key(&self, key: &ApiKeyHash, account: &AccountId) -> Self::Future<()> {
        let (_, mut state) = self.lock();
        state.api_keys.insert(*key, account.clone());
        ready(Ok(()))
    }

    fn revoke_api_key(&self, key: &ApiKeyHash) -> Self::Future<bool> {
        let (_, mut state) = self.lock();
        ready(Ok(state.api_keys.remove(key).is_some()))
    }
}

impl LedgerReports for TinyLedger {
    fn history(
        &self,
        account: &AccountId,
        cursor: Option<&str>,
        limit: usize,
    ) -> BoxLedgerFuture<HistoryPage> {
        let page = check_history(cursor, limit).map(|(cursor, limit)| {
            let before = cursor.map(|c| c.parse::<u64>().unwrap_or(0));
            let (_, state) = self.lock();
            let Some(a) = state.accounts.get(account) else {
                return HistoryPage::default();
            };
            let older = a
                .log
                .iter()
                .rev()
                .filter(|e| before.is_none_or(|b| e.id.parse::<u64>().is_ok_and(|id| id < b)));
            HistoryPage::from_newest(older.take(limit + 1).cloned().collect(), limit)
        });
        Box::pin(ready(page))
    }

    fn balance(&self, account: &AccountId) -> Self::Future<Balance> {
        ready(self.with_account(account, |a, now| {
            let mut balance = Balance::default();
            balance.available = a.available();
            balance.held = a.held;
            balance.committed = a.committed;
            balance.topped_up = a.topped_up;
            balance.credit_limit = a.credit_limit;
            balance.thresholds = a.alerts.resolved();
            balance.runway_horizon = a.alerts.horizon();
            balance.open_holds = a.holds.len() as u64;
            balance.runway_secs = a.runway(now);
            Ok(balance)
        }))
    }

    fn usage(&self, account: &AccountId) -> Self::Future<Usage> {
        ready(self.with_account(account, |a, _| {
            let mut usage = Usage::default();
            usage.by_route = a.usage.clone();
            Ok(usage)
        }))
    }
}
