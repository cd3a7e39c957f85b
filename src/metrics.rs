//! Metrics and tracing spans of billing (feature `metrics`), through the [`metrics`]
//! facade: install any exporter (Prometheus, StatsD, OpenTelemetry…) and the numbers below
//! appear in it.
//!
//! [`Metered`] wraps any ledger and records what every operation did; the layer records
//! each request's outcome. Wrap the ledger once per process and give the wrapper to the
//! layer (and to the admin router, the dispatcher, …):
//!
//! ```
//! use tower_credits::metrics::Metered;
//! use tower_credits::{CreditLayer, MemoryLedger};
//!
//! tower_credits::metrics::describe(); // optional: help texts and units for the exporter
//! let ledger = Metered::new(MemoryLedger::new());
//! let layer = CreditLayer::new(ledger);
//! # let _ = layer;
//! ```
//!
//! # Metrics
//!
//! | name | type | labels | what it counts |
//! |---|---|---|---|
//! | `credits_requests_total` | counter | `outcome`, `reason` | requests the layer saw, by how they ended (see below) |
//! | `credits_reserved_total` | counter | (`account`) | credits held by new holds (a retried reserve of the same hold counts once) |
//! | `credits_committed_total` | counter | (`account`) | credits committed (charged) |
//! | `credits_refunded_total` | counter | (`account`) | credits given back when a hold settled: a refund's whole hold, and the unused part of a commit |
//! | `credits_expired_total` | counter | | credits of holds that expired before they settled, counted by the replica whose ledger call reclaimed them (the ledger's own reply says how many) |
//! | `credits_unbilled_total` | counter | | credits of requests served without billing (the outage policy let them through) |
//! | `credits_ledger_duration_seconds` | histogram | `op` | how long each ledger call took, errors included |
//! | `credits_store_errors_total` | counter | `kind` | ledger calls that failed on the store's side |
//! | `credits_open_holds` | gauge | | holds this replica placed that are still open |
//! | `credits_webhook_deliveries_total` | counter | `result` | attempts to deliver a credit event |
//!
//! Over time, summed over every replica, `reserved = committed + refunded + expired + open`:
//! every credit held ends in exactly one of the three.
//!
//! Every label has a fixed, small set of values:
//!
//! | label | values |
//! |---|---|
//! | `outcome` | `billed`, `refunded`, `refused`, `free`, `unbilled` |
//! | `reason` | `ok`, `failed`, `cancelled`, `unauthorized`, `insufficient_balance`, `too_many_holds`, `max_cost_exceeded`, `invalid_header`, `ledger_unavailable`, `billing_error`, `lifetime_exceeded`, `quote` |
//! | `op` | `reserve`, `settle`, `extend`, `lookup_api_key`, `top_up`, `configure`, `register_api_key`, `revoke_api_key`, `balance`, `usage` |
//! | `result` | `delivered`, `failed` (retried later), `dead_lettered` |
//! | `kind` | `timeout`, `unavailable` (the store could not answer), `corrupt` (it answered what no ledger of this version answers); bad input and top-up conflicts are the caller's, not the store's, and are not counted |
//! | `account` | only with [`Metered::per_account`]: the account id |
//!
//! No label ever carries an API key (nor its hash). None carries an account id unless you
//! opt in with [`Metered::per_account`]: every account is then one more series of each of
//! the three hold counters (reserved, committed, refunded), so opt in only with a bounded number of accounts.
//!
//! `credits_open_holds` is what this replica knows: a hold another replica placed is not in
//! it, and a hold whose settle reply was lost is no longer counted open once its settle is
//! retried (or its time to live passed, plus a minute).
//!
//! `credits_expired_total` is counted where the credits go back, not guessed: the ledger
//! reclaims expired holds inside its own operations (any call on the account, or its
//! sweeper) and each reclaim reports the credits it took back — the Redis scripts reply with
//! the amount, the in-memory ledger counts its own. A hold placed by a replica that died is
//! counted once, by whichever replica's call reclaimed it. It is counted whether or not the
//! ledger is wrapped in [`Metered`] (the ledger records it through the facade itself), and
//! never by account: an account's expiries are in its audit trail
//! ([`LedgerReports::history`]).
//!
//! # Spans
//!
//! Every reserve runs in a `credits.reserve` span and every settle in a `credits.settle`
//! span (level `DEBUG`, as `tower_http::trace`'s request spans), children of the span that is current when the layer calls the
//! ledger — the request's span under `tower_http::trace`. Their fields:
//!
//! | span | fields |
//! |---|---|
//! | `credits.reserve` | `account`, `hold_id`, `price` (credits asked for), `outcome` (`held`, `insufficient`, `closed`, `too_many_holds`, `unknown_account`, `error`), `held`, `available` |
//! | `credits.settle` | `account`, `hold_id`, `decision` (`commit`, `refund`), `price` (the cost to commit), `outcome` (`committed`, `refunded`, `already_committed`, `already_refunded`, `expired`, `unknown`, `error`), `committed`, `released` |
//!
//! Neither carries an API key.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use foldhash::HashMap;
use parking_lot::Mutex;
use tracing::field::Empty;
use tracing::Span;

use crate::api_key::ApiKeyHash;
use crate::ledger::{
    AccountId, Balance, Configure, CreditEvent, DeadLetter, DynReports, EventOutbox, Extend,
    Extended, Grow, GrowOutcome, HoldId, Ledger, LedgerAdmin, LedgerError, LedgerReports,
    OutboxFuture, Reserve, ReserveOutcome, Settle, SettleDecision, SettleOutcome, Settlement,
    StoreResponse, TopUp, ToppedUp, Usage,
};

/// `credits_requests_total{outcome,reason}`.
pub const REQUESTS_TOTAL: &str = "credits_requests_total";
/// `credits_reserved_total`.
pub const RESERVED_TOTAL: &str = "credits_reserved_total";
/// `credits_committed_total`.
pub const COMMITTED_TOTAL: &str = "credits_committed_total";
/// `credits_refunded_total`.
pub const REFUNDED_TOTAL: &str = "credits_refunded_total";
/// `credits_expired_total`.
pub const EXPIRED_TOTAL: &str = "credits_expired_total";
/// `credits_unbilled_total`.
pub const UNBILLED_TOTAL: &str = "credits_unbilled_total";
/// `credits_ledger_duration_seconds{op}`.
pub const LEDGER_DURATION_SECONDS: &str = "credits_ledger_duration_seconds";
/// `credits_store_errors_total{kind}`.
pub const STORE_ERRORS_TOTAL: &str = "credits_store_errors_total";
/// `credits_open_holds`.
pub const OPEN_HOLDS: &str = "credits_open_holds";
/// `credits_webhook_deliveries_total{result}`.
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "credits_webhook_deliveries_total";

/// Registers the help text and unit of every metric with the installed recorder (call it
/// after installing the exporter; optional).
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests the credit layer saw, by outcome and reason."
    );
    describe_counter!(
        RESERVED_TOTAL,
        "Credits held by new holds, and added to open holds by grows."
    );
    describe_counter!(COMMITTED_TOTAL, "Credits committed (charged).");
    describe_counter!(
        REFUNDED_TOTAL,
        "Credits given back when a hold settled (refunds and the unused part of commits)."
    );
    describe_counter!(
        EXPIRED_TOTAL,
        "Credits of holds that expired before they settled, counted where they were reclaimed."
    );
    describe_counter!(
        UNBILLED_TOTAL,
        "Credits of requests served without billing (outage policy)."
    );
    describe_histogram!(
        LEDGER_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of ledger calls, by operation."
    );
    describe_counter!(
        STORE_ERRORS_TOTAL,
        "Ledger calls that failed on the store's side, by kind."
    );
    describe_gauge!(OPEN_HOLDS, "Holds this replica placed that are still open.");
    describe_counter!(
        WEBHOOK_DELIVERIES_TOTAL,
        "Attempts to deliver a credit event, by result."
    );
}

/// How a request ended, the `outcome` label of `credits_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Charged (committed).
    Billed,
    /// Held, then refunded.
    Refunded,
    /// Refused before the inner service ran.
    Refused,
    /// A free route (or a quote): nothing held.
    Free,
    /// Served without billing (the outage policy let it through).
    Unbilled,
}

/// Why a request ended as it did, the `reason` label of `credits_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Nothing went wrong.
    Ok,
    /// The inner service failed (an error, a failure status, a panic).
    Failed,
    /// The caller went away before the response ended.
    Cancelled,
    /// No account, or an unknown API key.
    Unauthorized,
    /// Not enough credits.
    InsufficientBalance,
    /// The account has the most open holds it may have.
    TooManyHolds,
    /// The caller's `credits-max-cost` is below the least the route runs with.
    MaxCostExceeded,
    /// A malformed `credits-quote` or `credits-max-cost`.
    InvalidHeader,
    /// The ledger could not be reached.
    LedgerUnavailable,
    /// The ledger answered unexpectedly.
    BillingError,
    /// The handler ran past the hold lifetime cap.
    LifetimeExceeded,
    /// A quote was answered instead of the request.
    Quote,
}

impl Reason {
    /// The reason a refusal is counted under.
    pub(crate) fn of(refusal: &crate::Refusal) -> Self {
        use crate::Refusal as R;
        match refusal {
            R::Unauthorized(_) => Self::Unauthorized,
            R::InsufficientCredits { .. } => Self::InsufficientBalance,
            R::TooManyHolds { .. } => Self::TooManyHolds,
            R::Unavailable | R::LedgerBusy => Self::LedgerUnavailable,
            R::LifetimeExceeded { .. } => Self::LifetimeExceeded,
            R::InvalidHeader { .. } => Self::InvalidHeader,
            R::MaxCostExceeded { .. } => Self::MaxCostExceeded,
            _ => Self::BillingError,
        }
    }
}

/// The handles of `credits_requests_total{outcome,reason}`, one per pair, each taken from
/// the recorder the first time it is counted and kept (the layer keeps one set): asking the
/// recorder's registry for the handle cost about 250 instructions a request.
#[derive(Debug)]
pub(crate) struct RequestCounters([OnceLock<::metrics::Counter>; OUTCOMES * REASONS]);

impl Default for RequestCounters {
    fn default() -> Self {
        Self(std::array::from_fn(|_| OnceLock::new()))
    }
}

/// How many outcomes and reasons there are (the last variant of each, plus one).
const OUTCOMES: usize = Outcome::Unbilled as usize + 1;
const REASONS: usize = Reason::Quote as usize + 1;

impl RequestCounters {
    /// Counts one request: what the middleware calls once per request, when it knows how
    /// the request ended.
    pub(crate) fn count(&self, outcome: Outcome, reason: Reason) {
        static METADATA: ::metrics::Metadata<'static> =
            ::metrics::Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));
        self.0[outcome as usize * REASONS + reason as usize]
            .get_or_init(|| {
                // Each pair's key is a static: nothing allocated when it is first counted.
                let key = request_key(outcome, reason);
                ::metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA))
            })
            .increment(1);
    }
}

/// Writes `request_key`: one static key per `outcome` × `reason`, so counting a request
/// neither allocates nor builds (and hashes) a key.
macro_rules! request_keys {
    ([$($outcome:ident => $outcome_label:literal),* $(,)?], $reasons:tt) => {
        fn request_key(outcome: Outcome, reason: Reason) -> &'static ::metrics::Key {
            match outcome {
                $(Outcome::$outcome => request_keys!(@reasons $outcome_label, reason, $reasons),)*
            }
        }
    };
    (@reasons $outcome_label:literal, $reason:ident, [$($variant:ident => $reason_label:literal),* $(,)?]) => {
        match $reason {
            $(Reason::$variant => {
                static LABELS: [::metrics::Label; 2] = [
                    ::metrics::Label::from_static_parts("outcome", $outcome_label),
                    ::metrics::Label::from_static_parts("reason", $reason_label),
                ];
                static KEY: ::metrics::Key = ::metrics::Key::from_static_parts(REQUESTS_TOTAL, &LABELS);
                &KEY
            })*
        }
    };
}

request_keys!(
    [
        Billed => "billed",
        Refunded => "refunded",
        Refused => "refused",
        Free => "free",
        Unbilled => "unbilled",
    ],
    [
        Ok => "ok",
        Failed => "failed",
        Cancelled => "cancelled",
        Unauthorized => "unauthorized",
        InsufficientBalance => "insufficient_balance",
        TooManyHolds => "too_many_holds",
        MaxCostExceeded => "max_cost_exceeded",
        InvalidHeader => "invalid_header",
        LedgerUnavailable => "ledger_unavailable",
        BillingError => "billing_error",
        LifetimeExceeded => "lifetime_exceeded",
        Quote => "quote",
    ]
);

/// Adds `credits` served without billing to `credits_unbilled_total`.
pub(crate) fn unbilled(credits: u64) {
    ::metrics::counter!(UNBILLED_TOTAL).increment(credits);
}

/// How one attempt to deliver a credit event ended, the `result` label of
/// `credits_webhook_deliveries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// The receiver took it.
    Delivered,
    /// It failed and will be retried.
    Failed,
    /// It failed for the last time and went to the dead letters.
    DeadLettered,
}

/// Counts one delivery attempt in `credits_webhook_deliveries_total{result}`: what the
/// dispatcher calls after each attempt.
pub(crate) fn webhook_delivery(result: Delivery) {
    let result = match result {
        Delivery::Delivered => "delivered",
        Delivery::Failed => "failed",
        Delivery::DeadLettered => "dead_lettered",
    };
    ::metrics::counter!(WEBHOOK_DELIVERIES_TOTAL, "result" => result).increment(1);
}

/// Counts `credits` of expired holds that a ledger call just reclaimed. Called by
/// the ledgers where the credits go back, so each is counted once, by one replica.
pub(crate) fn expired(credits: u64) {
    if credits > 0 {
        ::metrics::counter!("credits_expired_total").increment(credits);
    }
}

/// How long past its time to live a hold this replica never saw settle is still counted
/// open (a settle may be retried a while after the hold expired).
const EXPIRY_GRACE: Duration = Duration::from_secs(60);

/// How often the open holds are checked for ones that expired unseen.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// One open hold, as this replica knows it.
#[derive(Debug)]
struct OpenHold {
    amount: u64,
    /// When to stop counting it open if no settle comes: its TTL from the last reserve or
    /// extend, plus [`EXPIRY_GRACE`].
    forget_at: Instant,
}

/// An open hold as the count knows it: its account's and its id's hashes, 16 bytes and
/// nothing cloned (a key of the ids themselves cloned both, twice a request). Two holds
/// meet in it only by a 64-bit collision of the hashes of both, and what that could cost
/// is a hold counted open a little early or late, never a credit.
type HoldKey = (u64, u64);

fn hold_key(account: &AccountId, hold: &HoldId) -> HoldKey {
    static HASHER: std::sync::LazyLock<foldhash::fast::RandomState> =
        std::sync::LazyLock::new(Default::default);
    use std::hash::BuildHasher;
    (HASHER.hash_one(account), HASHER.hash_one(hold))
}

#[derive(Debug)]
struct OpenHolds {
    holds: HashMap<HoldKey, OpenHold>,
    next_prune: Instant,
}

#[derive(Debug)]
struct Shared {
    per_account: AtomicBool,
    open: Mutex<OpenHolds>,
    handles: Handles,
}

/// The handles of the metrics a billed request moves, each taken from the recorder the
/// first time it is used and kept: a `counter!` or `histogram!` call asks the recorder's
/// registry for its handle every time (the Prometheus exporter clones the key and looks
/// it up: about 250 instructions), six times a billed request.
///
/// So a `Metered` records into the recorder in effect at its first call of each: install
/// the recorder before serving, as the `metrics` crate asks.
#[derive(Debug, Default)]
struct Handles {
    reserved: OnceLock<::metrics::Counter>,
    committed: OnceLock<::metrics::Counter>,
    refunded: OnceLock<::metrics::Counter>,
    open_holds: OnceLock<::metrics::Gauge>,
    /// `credits_ledger_duration_seconds{op}`, by [`TIMED_OPS`] position.
    durations: [OnceLock<::metrics::Histogram>; TIMED_OPS.len()],
}

/// The operations whose durations have a kept handle (any other is recorded without one).
const TIMED_OPS: [&str; 10] = [
    "reserve",
    "settle",
    "extend",
    "lookup_api_key",
    "top_up",
    "configure",
    "register_api_key",
    "revoke_api_key",
    "balance",
    "usage",
];

impl Shared {
    /// Adds `credits` to the counter `name`, labelled by `account` when the call was made
    /// with counts by account.
    fn count(&self, name: &'static str, account: Option<&AccountId>, credits: u64) {
        if credits == 0 {
            return;
        }
        if let Some(account) = account {
            ::metrics::counter!(name, "account" => account.as_str().to_owned()).increment(credits);
            return;
        }
        // Kept handles: no key built, cloned or looked up per call.
        let h = &self.handles;
        match name {
            RESERVED_TOTAL => h
                .reserved
                .get_or_init(|| ::metrics::counter!(RESERVED_TOTAL)),
            COMMITTED_TOTAL => h
                .committed
                .get_or_init(|| ::metrics::counter!(COMMITTED_TOTAL)),
            REFUNDED_TOTAL => h
                .refunded
                .get_or_init(|| ::metrics::counter!(REFUNDED_TOTAL)),
            name => return ::metrics::counter!(name).increment(credits),
        }
        .increment(credits);
    }

    fn set_open_holds(&self, open: usize) {
        self.handles
            .open_holds
            .get_or_init(|| ::metrics::gauge!(OPEN_HOLDS))
            .set(open as f64);
    }

    /// Records a call's duration under its operation's kept handle.
    fn record_duration(&self, op: &'static str, secs: f64) {
        match TIMED_OPS.iter().position(|&known| known == op) {
            Some(i) => self.handles.durations[i]
                .get_or_init(|| ::metrics::histogram!(LEDGER_DURATION_SECONDS, "op" => op))
                .record(secs),
            None => ::metrics::histogram!(LEDGER_DURATION_SECONDS, "op" => op).record(secs),
        }
    }

    /// A hold was placed (or found placed): counted once per hold.
    fn opened(&self, call: &Call, amount: u64, now: Instant) {
        let (new, open) = {
            let mut open = self.open.lock();
            open.prune(now);
            let new = open
                .holds
                .insert(
                    call.key,
                    OpenHold {
                        amount,
                        forget_at: now + call.ttl + EXPIRY_GRACE,
                    },
                )
                .is_none();
            (new, open.holds.len())
        };
        if new {
            self.count(RESERVED_TOTAL, call.account.as_ref(), amount);
        }
        self.set_open_holds(open);
    }

    /// A hold is no longer open; its amount if this replica counted it open.
    fn closed(&self, call: &Call) -> Option<u64> {
        let (removed, open) = {
            let mut open = self.open.lock();
            let removed = open.holds.remove(&call.key);
            (removed, open.holds.len())
        };
        let removed = removed?;
        self.set_open_holds(open);
        Some(removed.amount)
    }

    /// An open hold now holds `amount` in all: the raise counts as reserved credits.
    fn grown(&self, call: &Call, amount: u64) {
        let raised = {
            let mut open = self.open.lock();
            let Some(open) = open.holds.get_mut(&call.key) else {
                return;
            };
            let raised = amount.saturating_sub(open.amount);
            open.amount = open.amount.max(amount);
            raised
        };
        if raised > 0 {
            self.count(RESERVED_TOTAL, call.account.as_ref(), raised);
        }
    }

    fn extended(&self, call: &Call, now: Instant) {
        if let Some(open) = self.open.lock().holds.get_mut(&call.key) {
            open.forget_at = now + call.ttl + EXPIRY_GRACE;
        }
    }
}

impl OpenHolds {
    /// Forgets the holds that expired unseen (at most once per [`PRUNE_EVERY`]): the
    /// ledger that reclaims them counts their credits expired.
    fn prune(&mut self, now: Instant) {
        if now < self.next_prune {
            return;
        }
        self.next_prune = now + PRUNE_EVERY;
        self.holds.retain(|_, hold| hold.forget_at > now);
    }
}

/// A ledger that records [metrics](self) and opens `credits.reserve` / `credits.settle`
/// spans around another ledger's operations. It changes no answer.
///
/// Clones share their counts of open holds: wrap the ledger once and clone the wrapper.
///
/// It keeps the handles of the metrics a request moves, each taken from the recorder in
/// effect the first time it is recorded: install the recorder (for example the Prometheus
/// exporter) before the first request, as the `metrics` crate asks.
#[derive(Debug, Clone)]
pub struct Metered<L> {
    inner: L,
    shared: Arc<Shared>,
}

impl<L> Metered<L> {
    /// Records the metrics of `ledger`'s operations.
    pub fn new(ledger: L) -> Self {
        Self {
            inner: ledger,
            shared: Arc::new(Shared {
                per_account: AtomicBool::new(false),
                open: Mutex::new(OpenHolds {
                    holds: HashMap::default(),
                    next_prune: Instant::now(),
                }),
                handles: Handles::default(),
            }),
        }
    }

    /// Adds an `account` label to `credits_reserved_total`, `credits_committed_total`
    /// and `credits_refunded_total` (off by default).
    ///
    /// **Every account becomes a series of each**: turn it on only when the number of
    /// accounts is small and bounded. It applies to every clone of this wrapper, for the calls made after it.
    pub fn per_account(self, on: bool) -> Self {
        self.shared.per_account.store(on, Relaxed);
        self
    }

    /// The wrapped ledger.
    pub fn get_ref(&self) -> &L {
        &self.inner
    }

    /// The wrapped ledger, unwrapped.
    pub fn into_inner(self) -> L {
        self.inner
    }

    fn future<F, T>(
        &self,
        inner: F,
        op: &'static str,
        span: Span,
        done: Done<T>,
    ) -> MeteredFuture<F, T> {
        MeteredFuture {
            inner,
            op,
            started: Instant::now(),
            span,
            shared: self.shared.clone(),
            done,
        }
    }
}

/// What an operation's answer does to the metrics and its span.
type Done<T> = Option<(fn(&Shared, &Call, &T, &Span, Instant), Call)>;

/// What an answer is read against: the request's hold (by its key), its account when
/// counts are labelled by account, and its TTL. Nothing is cloned for an unlabelled count.
#[derive(Debug)]
struct Call {
    key: HoldKey,
    account: Option<AccountId>,
    ttl: Duration,
}

impl Call {
    fn new(shared: &Shared, account: &AccountId, hold: &HoldId, ttl: Duration) -> Self {
        Self {
            key: hold_key(account, hold),
            account: shared.per_account.load(Relaxed).then(|| account.clone()),
            ttl,
        }
    }
}

/// The future of a [`Metered`] operation: the inner ledger's, timed, inside its span.
#[derive(Debug)]
pub struct MeteredFuture<F, T> {
    inner: F,
    op: &'static str,
    started: Instant,
    span: Span,
    shared: Arc<Shared>,
    done: Done<T>,
}

impl<F, T> Future for MeteredFuture<F, T>
where
    F: Future<Output = Result<T, LedgerError>> + Unpin,
{
    type Output = Result<T, LedgerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = {
            let _entered = this.span.enter();
            match Pin::new(&mut this.inner).poll(cx) {
                Poll::Ready(result) => result,
                Poll::Pending => return Poll::Pending,
            }
        };
        // One clock read for the duration and for what the answer starts (an open hold's
        // forget-at time).
        let now = Instant::now();
        this.shared
            .record_duration(this.op, (now - this.started).as_secs_f64());
        match &result {
            Ok(answer) => {
                if let Some((done, call)) = &this.done {
                    done(&this.shared, call, answer, &this.span, now);
                }
            }
            Err(error) => {
                this.span.record("outcome", "error");
                let kind = match error {
                    LedgerError::Timeout(_) => Some("timeout"),
                    LedgerError::Unavailable(_) => Some("unavailable"),
                    LedgerError::Corrupt(_) => Some("corrupt"),
                    _ => None,
                };
                if let Some(kind) = kind {
                    ::metrics::counter!(STORE_ERRORS_TOTAL, "kind" => kind).increment(1);
                }
            }
        }
        Poll::Ready(result)
    }
}

fn reserved(shared: &Shared, call: &Call, outcome: &ReserveOutcome, span: &Span, now: Instant) {
    let label = match outcome {
        ReserveOutcome::Held(held) => {
            span.record("held", held.amount);
            span.record("available", held.available);
            shared.opened(call, held.amount, now);
            "held"
        }
        ReserveOutcome::Insufficient(refusal) => {
            span.record("available", refusal.available);
            "insufficient"
        }
        ReserveOutcome::Closed(_) => "closed",
        ReserveOutcome::TooManyHolds { .. } => "too_many_holds",
        ReserveOutcome::UnknownAccount => "unknown_account",
        ReserveOutcome::Replay(_) => "replay",
        #[allow(unreachable_patterns)]
        _ => "other",
    };
    span.record("outcome", label);
}

fn settled(shared: &Shared, call: &Call, settlement: &Settlement, span: &Span, _now: Instant) {
    let label = match settlement.outcome {
        SettleOutcome::Committed => "committed",
        SettleOutcome::Refunded => "refunded",
        SettleOutcome::AlreadyCommitted => "already_committed",
        SettleOutcome::AlreadyRefunded => "already_refunded",
        SettleOutcome::Expired => "expired",
        SettleOutcome::Unknown => "unknown",
        #[allow(unreachable_patterns)]
        _ => "other",
    };
    span.record("outcome", label);
    span.record("committed", settlement.committed);
    span.record("released", settlement.released);
    // An expired hold's credits were counted by the ledger call that reclaimed them.
    shared.closed(call);
    if let SettleOutcome::Committed | SettleOutcome::Refunded = settlement.outcome {
        shared.count(COMMITTED_TOTAL, call.account.as_ref(), settlement.committed);
        shared.count(REFUNDED_TOTAL, call.account.as_ref(), settlement.released);
    }
}

fn grown(shared: &Shared, call: &Call, outcome: &GrowOutcome, span: &Span, _now: Instant) {
    let label = match outcome {
        GrowOutcome::Grown(grown) => {
            span.record("held", grown.amount);
            shared.grown(call, grown.amount);
            "grown"
        }
        GrowOutcome::Insufficient(_) => "insufficient",
        GrowOutcome::NotOpen(_) => "not_open",
        #[allow(unreachable_patterns)]
        _ => "other",
    };
    span.record("outcome", label);
}

fn extended(shared: &Shared, call: &Call, extended: &Extended, _span: &Span, now: Instant) {
    match extended {
        Extended::Until(_) => shared.extended(call, now),
        Extended::NotOpen(_) => {
            shared.closed(call);
        }
    }
}

impl<L: Ledger> Ledger for Metered<L> {
    type Future<T: Send + 'static> = MeteredFuture<L::Future<T>, T>;
    // Its futures only wrap the inner ledger's.
    const IN_PROCESS: bool = L::IN_PROCESS;

    fn reserve(&self, reserve: Reserve) -> Self::Future<ReserveOutcome> {
        let span = tracing::debug_span!(
            "credits.reserve",
            account = %reserve.account(),
            hold_id = %reserve.hold_id(),
            price = reserve.amount(),
            outcome = Empty,
            held = Empty,
            available = Empty,
        );
        let call = Call::new(
            &self.shared,
            reserve.account(),
            reserve.hold_id(),
            reserve.hold_ttl(),
        );
        let inner = span.in_scope(|| self.inner.reserve(reserve));
        self.future(inner, "reserve", span, Some((reserved, call)))
    }

    fn settle(&self, settle: Settle) -> Self::Future<Settlement> {
        let decision = match settle.decision() {
            SettleDecision::Commit(_) => "commit",
            _ => "refund",
        };
        let span = tracing::debug_span!(
            "credits.settle",
            account = %settle.account(),
            hold_id = %settle.hold_id(),
            decision,
            price = settle.actual(),
            outcome = Empty,
            committed = Empty,
            released = Empty,
        );
        let call = Call::new(
            &self.shared,
            settle.account(),
            settle.hold_id(),
            Duration::ZERO,
        );
        let inner = span.in_scope(|| self.inner.settle(settle));
        self.future(inner, "settle", span, Some((settled, call)))
    }

    fn extend(&self, extend: Extend) -> Self::Future<Extended> {
        let call = Call::new(
            &self.shared,
            extend.account(),
            extend.hold_id(),
            extend.hold_ttl(),
        );
        let inner = self.inner.extend(extend);
        self.future(inner, "extend", Span::none(), Some((extended, call)))
    }

    fn grow(&self, grow: Grow) -> Self::Future<GrowOutcome> {
        let span = tracing::debug_span!(
            "credits.grow",
            account = %grow.account(),
            hold_id = %grow.hold_id(),
            to = grow.amount(),
            outcome = Empty,
            held = Empty,
        );
        let call = Call::new(&self.shared, grow.account(), grow.hold_id(), Duration::ZERO);
        let inner = span.in_scope(|| self.inner.grow(grow));
        self.future(inner, "grow", span, Some((grown, call)))
    }

    fn store_response(&self, store: StoreResponse) -> Self::Future<bool> {
        let inner = self.inner.store_response(store);
        self.future(inner, "store_response", Span::none(), None)
    }

    fn lookup_api_key(&self, key: &ApiKeyHash) -> Self::Future<Option<AccountId>> {
        self.future(
            self.inner.lookup_api_key(key),
            "lookup_api_key",
            Span::none(),
            None,
        )
    }

    fn reports(&self) -> Option<&dyn DynReports> {
        self.inner.reports()
    }
}

impl<L: LedgerAdmin> LedgerAdmin for Metered<L> {
    fn top_up(&self, top_up: TopUp) -> Self::Future<ToppedUp> {
        self.future(self.inner.top_up(top_up), "top_up", Span::none(), None)
    }

    fn configure(&self, configure: Configure) -> Self::Future<()> {
        self.future(
            self.inner.configure(configure),
            "configure",
            Span::none(),
            None,
        )
    }

    fn register_api_key(&self, key: &ApiKeyHash, account: &AccountId) -> Self::Future<()> {
        self.future(
            self.inner.register_api_key(key, account),
            "register_api_key",
            Span::none(),
            None,
        )
    }

    fn revoke_api_key(&self, key: &ApiKeyHash) -> Self::Future<bool> {
        self.future(
            self.inner.revoke_api_key(key),
            "revoke_api_key",
            Span::none(),
            None,
        )
    }
}

impl<L: LedgerReports> LedgerReports for Metered<L> {
    fn balance(&self, account: &AccountId) -> Self::Future<Balance> {
        self.future(self.inner.balance(account), "balance", Span::none(), None)
    }

    fn usage(&self, account: &AccountId) -> Self::Future<Usage> {
        self.future(self.inner.usage(account), "usage", Span::none(), None)
    }

    fn history(
        &self,
        account: &AccountId,
        cursor: Option<&str>,
        limit: usize,
    ) -> crate::ledger::BoxLedgerFuture<crate::ledger::HistoryPage> {
        self.inner.history(account, cursor, limit)
    }
}

impl<L: EventOutbox> EventOutbox for Metered<L> {
    fn replica(&self) -> &str {
        self.inner.replica()
    }
    fn claim(&self, lease: Duration, max: usize) -> OutboxFuture<Vec<CreditEvent>> {
        self.inner.claim(lease, max)
    }
    fn renew(&self, event: &CreditEvent, lease: Duration) -> OutboxFuture<bool> {
        self.inner.renew(event, lease)
    }
    fn ack(&self, event: &CreditEvent) -> OutboxFuture<()> {
        self.inner.ack(event)
    }
    fn dead_letter(&self, event: &CreditEvent, reason: &str) -> OutboxFuture<()> {
        self.inner.dead_letter(event, reason)
    }
    fn dead_letters(&self, account: &AccountId) -> OutboxFuture<Vec<DeadLetter>> {
        self.inner.dead_letters(account)
    }
    fn requeue(&self, dead: &DeadLetter) -> OutboxFuture<bool> {
        self.inner.requeue(dead)
    }
    fn pending(&self, account: &AccountId) -> OutboxFuture<Vec<CreditEvent>> {
        self.inner.pending(account)
    }
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    #[test]
    fn requests_are_counted_by_outcome_and_reason() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, || {
            let requests = RequestCounters::default();
            requests.count(Outcome::Billed, Reason::Ok);
            requests.count(Outcome::Billed, Reason::Ok);
            requests.count(Outcome::Refused, Reason::InsufficientBalance);
            requests.count(Outcome::Unbilled, Reason::LedgerUnavailable);
            unbilled(7);
            webhook_delivery(Delivery::Failed);
            webhook_delivery(Delivery::Delivered);
        });
        let mut seen: Vec<(String, Vec<String>, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let DebugValue::Counter(n) = value else {
                    panic!("not a counter: {value:?}")
                };
                let labels = key
                    .key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                (key.key().name().to_owned(), labels, n)
            })
            .collect();
        seen.sort();
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            seen,
            vec![
                (
                    REQUESTS_TOTAL.into(),
                    owned(&["outcome=billed", "reason=ok"]),
                    2
                ),
                (
                    REQUESTS_TOTAL.into(),
                    owned(&["outcome=refused", "reason=insufficient_balance"]),
                    1
                ),
                (
                    REQUESTS_TOTAL.into(),
                    owned(&["outcome=unbilled", "reason=ledger_unavailable"]),
                    1
                ),
                (UNBILLED_TOTAL.into(), vec![], 7),
                (
                    WEBHOOK_DELIVERIES_TOTAL.into(),
                    owned(&["result=delivered"]),
                    1
                ),
                (
                    WEBHOOK_DELIVERIES_TOTAL.into(),
                    owned(&["result=failed"]),
                    1
                ),
            ]
        );
    }
}
