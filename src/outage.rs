//! When the ledger cannot be reached: the outage policy, the circuit breaker, and the
//! counters that say what was billed, what was lost and what was served unbilled.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::ledger::AccountId;

/// Consecutive ledger outages that open the circuit breaker, unless
/// [`CreditLayer::circuit_breaker`](crate::CreditLayer::circuit_breaker) says.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// How long an open circuit breaker fails requests fast before probing the ledger again.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);

/// What a [`CreditLayer`](crate::CreditLayer) does when the ledger is down or too slow to
/// hold credits for a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutagePolicy {
    /// Refuse the request: `503` problem JSON with `Retry-After` (gRPC `UNAVAILABLE`).
    /// Nothing is served that is not paid for. The default.
    #[default]
    FailClosed,
    /// Serve the request unbilled when its account is known, and count it per account in
    /// [`CreditLayer::unbilled`](crate::CreditLayer::unbilled) so it can be billed later.
    /// Availability over revenue. A request whose API key is not in the cache cannot be
    /// checked while the ledger is down: it is refused (`503`), not served.
    FailOpen,
    /// As [`FailOpen`](Self::FailOpen), and also serve requests whose API key could not be
    /// checked (the key is not cached and the ledger is down): **any well-formed key is
    /// then served, unbilled and unattributed** (counted under `None`). Only where that is
    /// acceptable.
    FailOpenAnyKey,
}

/// What a request does when its ledger call failed: the one outage decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutageDecision {
    /// Refuse `503`: the ledger is unavailable and the policy does not serve this request.
    Unavailable,
    /// Refuse `500`: the ledger answered with an error that is not an outage (a bug, corrupt
    /// state). Never retried, never served unbilled: a bug does not heal by waiting.
    BillingError,
    /// Serve the request unbilled, and count it.
    ServeUnbilled,
}

impl OutagePolicy {
    /// Decides for a failed ledger call (or an open breaker, which is an outage):
    /// `unavailable` says whether it was an outage; `account_known`, whether the caller's
    /// account was known without the ledger; `runs_the_call`, whether serving it runs the
    /// service (a quote never does, so it is never served unbilled).
    pub(crate) fn decide(
        self,
        unavailable: bool,
        account_known: bool,
        runs_the_call: bool,
    ) -> OutageDecision {
        if !unavailable {
            return OutageDecision::BillingError;
        }
        let serves = match self {
            OutagePolicy::FailOpenAnyKey => true,
            OutagePolicy::FailOpen => account_known,
            OutagePolicy::FailClosed => false,
        };
        if serves && runs_the_call {
            OutageDecision::ServeUnbilled
        } else {
            OutageDecision::Unavailable
        }
    }
}

/// Opens after `failures` consecutive ledger failures: for `cooldown` every request fails
/// fast (no ledger call, no timeout to wait out), then one probe request is let through;
/// its success closes the breaker, its failure opens it again.
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open (0: closed).
    open_until_ms: AtomicU64,
    probing: AtomicBool,
    /// When the current probe was let through (ms since `epoch`): a probe whose answer never
    /// comes (its request was dropped) is replaced after another cooldown.
    probe_at_ms: AtomicU64,
    epoch: Instant,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("threshold", &self.threshold)
            .field("cooldown", &self.cooldown)
            .field("failures", &self.failures.load(Ordering::Relaxed))
            .finish()
    }
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            probe_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether a request may call the ledger now.
    pub(crate) fn allow(&self) -> bool {
        let open_until = self.open_until_ms.load(Ordering::Acquire);
        if open_until == 0 {
            return true;
        }
        let now = self.now_ms();
        if now < open_until {
            return false;
        }
        // Half open: one probe at a time.
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.probe_at_ms.store(now, Ordering::Release);
            return true;
        }
        // A probe is out; replace it if it went unanswered for a cooldown (its request was
        // dropped, say), so the breaker never stays open on a ledger that is back.
        let probe_at = self.probe_at_ms.load(Ordering::Acquire);
        now >= probe_at + self.cooldown.as_millis() as u64
            && self
                .probe_at_ms
                .compare_exchange(probe_at, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Records the answer of a ledger call: `false` for an outage (timeout, unreachable).
    pub(crate) fn record(&self, reachable: bool) {
        if reachable {
            self.failures.store(0, Ordering::Release);
            self.open_until_ms.store(0, Ordering::Release);
            self.probing.store(false, Ordering::Release);
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold || self.probing.load(Ordering::Acquire) {
            let until = self.now_ms() + self.cooldown.as_millis() as u64;
            if self.open_until_ms.swap(until, Ordering::AcqRel) == 0 {
                tracing::warn!(failures, cooldown = ?self.cooldown, "ledger unreachable: circuit breaker open");
            }
            self.probing.store(false, Ordering::Release);
        }
    }

    /// Records a ledger answer: only an outage counts against the breaker; an error that
    /// is not an outage (a bug, corrupt state) says nothing about the ledger's health.
    pub(crate) fn record_answer<T>(&self, answer: &Result<T, crate::ledger::LedgerError>) {
        match answer {
            Ok(_) => self.record(true),
            Err(error) if error.is_unavailable() => self.record(false),
            Err(_) => {}
        }
    }

    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }
}

/// Counters of one layer's billing, for dashboards and reconciliation.
///
/// `credits_committed` is what the ledger confirmed; `credits_lost` is what handlers were
/// told to charge but no ledger ever confirmed (the settle could not reach it before the
/// hold expired): unbilled revenue, the seller's loss, never the caller's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BillingStats {
    /// Holds placed.
    pub holds: u64,
    /// Commits the ledger confirmed.
    pub commits: u64,
    /// Credits in those commits.
    pub credits_committed: u64,
    /// Refunds the ledger confirmed (including no-op refunds of expired holds).
    pub refunds: u64,
    /// Settles retried after the ledger failed to answer.
    pub settle_retries: u64,
    /// Commits never confirmed: the hold expired and its credits went back.
    pub commits_lost: u64,
    /// Credits of those commits.
    pub credits_lost: u64,
    /// Requests refused or served unbilled because the ledger was unreachable.
    pub outages: u64,
    /// Of those, requests answered at once because the circuit breaker was open.
    pub breaker_fast_failures: u64,
    /// Requests served unbilled under [`OutagePolicy::FailOpen`].
    pub served_unbilled: u64,
    /// Requests refused `500` because billing failed on our side (an unexpected ledger
    /// reply, a script error, a price out of range): a deployment bug to fix.
    pub billing_errors: u64,
    /// Requests refused `503` because too many unknown API keys were being looked up.
    pub key_lookups_shed: u64,
    /// Retries of keyed requests answered from a stored response (nothing charged).
    pub replays: u64,
    /// Jobs waiting in the hold keeper's channel (settles to finish, renewals, bodies to
    /// watch) at the time of the snapshot.
    pub keeper_queued: u64,
    /// Jobs the hold keeper is driving: settles awaiting the ledger, renewals, watched
    /// bodies.
    pub keeper_running: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) holds: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) credits_committed: AtomicU64,
    pub(crate) refunds: AtomicU64,
    pub(crate) settle_retries: AtomicU64,
    pub(crate) commits_lost: AtomicU64,
    pub(crate) credits_lost: AtomicU64,
    pub(crate) outages: AtomicU64,
    pub(crate) breaker_fast_failures: AtomicU64,
    pub(crate) served_unbilled: AtomicU64,
    pub(crate) billing_errors: AtomicU64,
    pub(crate) key_lookups_shed: AtomicU64,
    pub(crate) replays: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> BillingStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BillingStats {
            holds: get(&self.holds),
            commits: get(&self.commits),
            credits_committed: get(&self.credits_committed),
            refunds: get(&self.refunds),
            settle_retries: get(&self.settle_retries),
            commits_lost: get(&self.commits_lost),
            credits_lost: get(&self.credits_lost),
            outages: get(&self.outages),
            breaker_fast_failures: get(&self.breaker_fast_failures),
            served_unbilled: get(&self.served_unbilled),
            billing_errors: get(&self.billing_errors),
            key_lookups_shed: get(&self.key_lookups_shed),
            replays: get(&self.replays),
            keeper_queued: 0,
            keeper_running: 0,
        }
    }
}

/// Requests served unbilled under [`OutagePolicy::FailOpen`], per account, with the credits
/// they would have held — so the seller can bill them later.
///
/// Requests whose account could not be resolved (the API key lookup itself failed, under
/// [`OutagePolicy::FailOpenAnyKey`]) are counted under `None`. At most
/// [`Unbilled::DEFAULT_MAX_ACCOUNTS`] accounts are counted one by one (callers may name
/// accounts, so the map must not grow without bound); past that, requests are counted in
/// one [`overflow`](Unbilled::overflow) bucket, with one warning.
#[derive(Clone)]
pub struct Unbilled {
    inner: Arc<Mutex<UnbilledInner>>,
}

struct UnbilledInner {
    accounts: HashMap<Option<AccountId>, UnbilledCount>,
    overflow: UnbilledCount,
    max_accounts: usize,
}

impl Default for Unbilled {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(UnbilledInner {
                accounts: HashMap::new(),
                overflow: UnbilledCount::default(),
                max_accounts: Self::DEFAULT_MAX_ACCOUNTS,
            })),
        }
    }
}

/// What one account was served unbilled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnbilledCount {
    /// Requests served.
    pub requests: u64,
    /// Credits their prices would have held.
    pub credits: u64,
}

impl UnbilledCount {
    fn add(&mut self, credits: u64) {
        self.requests += 1;
        self.credits = self.credits.saturating_add(credits);
    }
}

impl fmt::Debug for Unbilled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("Unbilled")
            .field("accounts", &inner.accounts)
            .field("overflow", &inner.overflow)
            .finish()
    }
}

impl Unbilled {
    /// How many accounts are counted one by one.
    pub const DEFAULT_MAX_ACCOUNTS: usize = 10_000;

    #[cfg(test)]
    fn with_max_accounts(max_accounts: usize) -> Self {
        let unbilled = Self::default();
        unbilled.inner.lock().max_accounts = max_accounts;
        unbilled
    }

    pub(crate) fn record(&self, account: Option<AccountId>, credits: u64) {
        let mut inner = self.inner.lock();
        let full = inner.accounts.len() >= inner.max_accounts;
        match inner.accounts.get_mut(&account) {
            Some(entry) => entry.add(credits),
            None if full => {
                if inner.overflow.requests == 0 {
                    tracing::warn!(
                        max_accounts = inner.max_accounts,
                        "more accounts served unbilled than are counted one by one; the rest are counted together in `Unbilled::overflow`"
                    );
                }
                inner.overflow.add(credits);
            }
            None => inner.accounts.entry(account).or_default().add(credits),
        }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> HashMap<Option<AccountId>, UnbilledCount> {
        self.inner.lock().accounts.clone()
    }

    /// Requests of accounts past the first [`DEFAULT_MAX_ACCOUNTS`](Self::DEFAULT_MAX_ACCOUNTS),
    /// counted together.
    pub fn overflow(&self) -> UnbilledCount {
        self.inner.lock().overflow
    }

    /// The counts so far, resetting them (for a billing job that charges them); the
    /// overflow bucket is reset too, so take it first with [`overflow`](Self::overflow).
    pub fn take(&self) -> HashMap<Option<AccountId>, UnbilledCount> {
        let mut inner = self.inner.lock();
        inner.overflow = UnbilledCount::default();
        std::mem::take(&mut inner.accounts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outage_decision_as_a_table() {
        use OutageDecision::{BillingError, ServeUnbilled, Unavailable};
        use OutagePolicy::{FailClosed, FailOpen, FailOpenAnyKey};
        // (policy, outage?, account known?, runs the call?) -> decision
        let table = [
            (FailClosed, true, true, true, Unavailable),
            (FailOpen, true, true, true, ServeUnbilled),
            (FailOpen, true, false, true, Unavailable),
            (FailOpenAnyKey, true, false, true, ServeUnbilled),
            // A quote is never served unbilled: there is nothing to serve.
            (FailOpen, true, true, false, Unavailable),
            (FailOpenAnyKey, true, false, false, Unavailable),
            // Not an outage: a billing error, whatever the policy.
            (FailOpenAnyKey, false, true, true, BillingError),
            (FailClosed, false, false, false, BillingError),
        ];
        for (policy, outage, known, runs, want) in table {
            assert_eq!(
                policy.decide(outage, known, runs),
                want,
                "{policy:?} outage={outage} known={known} runs={runs}"
            );
        }
    }

    #[test]
    fn unbilled_accounts_are_bounded() {
        let unbilled = Unbilled::with_max_accounts(2);
        for name in ["a", "b", "c", "d", "a"] {
            unbilled.record(Some(AccountId::new(name).unwrap()), 5);
        }
        let counted = unbilled.snapshot();
        assert_eq!(counted.len(), 2);
        assert_eq!(counted[&Some(AccountId::new("a").unwrap())].requests, 2);
        let overflow = unbilled.overflow();
        assert_eq!((overflow.requests, overflow.credits), (2, 10));
    }

    #[test]
    fn breaker_opens_after_threshold_then_probes_once() {
        let breaker = Breaker::new(3, Duration::ZERO);
        assert!(breaker.allow());
        breaker.record(false);
        breaker.record(false);
        assert!(!breaker.is_open());
        breaker.record(false);
        assert!(breaker.is_open());
        // Cooldown zero: half open at once.
        assert!(breaker.allow());
        breaker.record(true);
        assert!(!breaker.is_open());
        assert!(breaker.allow() && breaker.allow());
    }

    #[test]
    fn breaker_stays_open_during_cooldown() {
        let breaker = Breaker::new(1, Duration::from_secs(3600));
        breaker.record(false);
        assert!(!breaker.allow());
        assert!(!breaker.allow());
    }

    #[test]
    fn an_unanswered_probe_is_replaced_after_a_cooldown() {
        let breaker = Breaker::new(1, Duration::ZERO);
        breaker.record(false);
        assert!(breaker.allow(), "the probe");
        // Its request is dropped: no answer is ever recorded. Cooldown zero: replaced at once.
        assert!(breaker.allow(), "a replacement probe");
        let slow = Breaker::new(1, Duration::from_secs(3600));
        slow.record(false);
        assert!(!slow.allow(), "still cooling down");
    }

    #[test]
    fn a_failed_probe_reopens() {
        let breaker = Breaker::new(5, Duration::ZERO);
        for _ in 0..5 {
            breaker.record(false);
        }
        assert!(breaker.allow());
        breaker.record(false);
        assert!(breaker.is_open());
    }
}
