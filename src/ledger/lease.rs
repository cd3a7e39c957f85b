//! [`Leased`]: busy accounts billed in process against a leased block of their credits, with
//! one flush a second instead of two store calls a request.
//!
//! # How it works
//!
//! A replica that sees an account (and route) billed at least
//! [`busy_at`](Leased::busy_at) times a second leases a block of the account's credits:
//! an **ordinary hold** of the wrapped ledger, `lease-<replica>-<n>`, sized to last
//! [`block_for`](Leased::block_for) (10 s by default) at the rate seen, expiring after
//! [`lease_ttl`](Leased::lease_ttl). Small requests (a price of at most a twentieth of the
//! block) are then held, committed and refunded in process against the block: no store call.
//!
//! Every [`flush_every`](Leased::flush_every) (1 s) the flusher rotates each lease with two
//! ordinary ledger calls: it reserves the next block (`lease-<replica>-<n+1>`, covering the
//! requests still open plus a fresh block) and then commits the previous hold with what was
//! spent on it (the rest goes back). The previous hold is committed only once the next one
//! is held. A retried flush is deduplicated by those hold ids — each is a per-lease sequence
//! number kept until its reserve is answered, a commit that failed is retried with the same
//! amount, and the ledger's reserve and commit are idempotent by hold id. While a rotation
//! is in flight, new requests are billed on the lease only within a budget the next block is
//! asked to cover. A pass runs in a task of its own, so a caller that stops waiting cannot
//! cut it between two calls. An account that cannot give a next block drains: no new
//! request on the lease, its hold kept alive while its open requests finish, then committed.
//! A lease hold that expired before its commit landed (an outage longer than the lease) is
//! charged again through a hold of its own (`<hold>-late`).
//!
//! Usage by route and the audit trail see one commit per lease per flush (the lease holds
//! its route), not one per request.
//!
//! # What callers see
//!
//! On a leased account the available balance in a hold's or settlement's answer (and so
//! `Credits-Remaining`, quotes and `GET /v1/credits` read through this wrapper) is the
//! ledger's available at the last flush plus the lease's unspent credits, after this
//! request: it lags what other replicas did by at most one flush interval. Low-balance
//! events fire when a block is leased (the ledger sees the block held), so they come
//! earlier, never later.
//!
//! # Sharing and handoff
//!
//! Several replicas may lease the same account, each a block sized to its own rate. With a
//! [`LeaseBoard`] (both ledgers provide one), a reserve refused while other replicas hold
//! leases on the account marks it `lease_wanted`, waits two flush intervals (the owners'
//! next flush lands within one, plus its own time) and retries once before it answers; at
//! their next flush the owners give back their unspent credits and
//! stop leasing the account for a while. Near-empty accounts never lease: a block is taken
//! only while the account has at least twice the block available.
//!
//! # What a crash costs
//!
//! A replica killed mid-lease loses at most one flush interval of usage (requests billed in
//! process since its last flush are never committed); the block itself expires after
//! `lease_ttl` and the ledger gives it back. Nothing is ever charged twice, and no request is
//! served beyond a block that was held. Call [`shutdown`](Leased::shutdown) on a graceful
//! stop (after the layer's pending settlements drained) to commit and return every lease.

// A fast hash, seeded per map, as the in-memory ledger's own maps: this is the request path.
use foldhash::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;

use super::{
    AccountId, Balance, Configure, DynReports, Extend, Extended, Grow, GrowOutcome, Grown, Held,
    HoldId, Insufficient, Ledger, LedgerAdmin, LedgerError, LedgerReports, Reserve, ReserveOutcome,
    Settle, SettleDecision, SettleOutcome, Settlement, StoreResponse, TopUp, ToppedUp, Usage,
};
use crate::api_key::ApiKeyHash;
use crate::clock::{Clock, SystemClock};

/// How often leases are flushed, unless [`Leased::flush_every`] says.
pub const DEFAULT_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Billed requests a second (per account and route, on this replica) that make an account
/// busy enough to lease, unless [`Leased::busy_at`] says.
pub const DEFAULT_BUSY_AT: u32 = 50;
/// How long a block should last at the rate seen, unless [`Leased::block_for`] says.
pub const DEFAULT_BLOCK_FOR: Duration = Duration::from_secs(10);
/// How long a lease's hold lives without a flush, unless [`Leased::lease_ttl`] says.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// A request is billed on a lease only if its price is at most the block divided by this.
pub const SMALL_REQUEST_DIVISOR: u64 = 20;
/// Most account-route pairs whose rates are tracked (the least busy are dropped first).
const MAX_TRACKED: usize = 10_000;
/// How long a replica stops leasing an account after giving its lease back to a replica
/// that wanted it, in flush intervals.
const COOLDOWN_FLUSHES: u64 = 5;

/// Where replicas tell each other that an account's leases should come back (see the
/// [module docs](self)). [`MemoryLedger::lease_board`](super::MemoryLedger::lease_board) and
/// [`RedisLedger::lease_board`](super::RedisLedger::lease_board) provide one.
pub trait LeaseBoard: Send + Sync + 'static {
    /// Records that `account` is leased by some replica, for `ttl`.
    fn mark_leased(&self, account: &AccountId, ttl: Duration) -> BoardFuture<()>;
    /// Whether some replica leased `account` within its last `ttl`.
    fn is_leased(&self, account: &AccountId) -> BoardFuture<bool>;
    /// Asks the owners of `account`'s leases to give them back, for `ttl`.
    fn want(&self, account: &AccountId, ttl: Duration) -> BoardFuture<()>;
    /// Whether some replica asked for `account`'s leases back within its `ttl`.
    fn is_wanted(&self, account: &AccountId) -> BoardFuture<bool>;
}

/// The future of a [`LeaseBoard`] call.
pub type BoardFuture<T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send>>;

/// A [`LeaseBoard`] in this process: for a [`MemoryLedger`](super::MemoryLedger) (whose
/// replicas share one process).
#[derive(Default)]
pub struct MemoryLeaseBoard {
    marks: Mutex<HashMap<(AccountId, bool), u64>>,
    clock: Option<Arc<dyn Clock>>,
}

impl fmt::Debug for MemoryLeaseBoard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLeaseBoard").finish_non_exhaustive()
    }
}

impl MemoryLeaseBoard {
    /// A board on the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// A board on `clock` (the ledger's).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            marks: Mutex::default(),
            clock: Some(clock),
        }
    }

    fn now_ms(&self) -> u64 {
        match &self.clock {
            Some(clock) => clock.now_ms(),
            None => SystemClock.now_ms(),
        }
    }

    fn mark(&self, account: &AccountId, wanted: bool, ttl: Duration) -> BoardFuture<()> {
        let until = self.now_ms().saturating_add(ttl.as_millis() as u64);
        let mut marks = self.marks.lock();
        let now = self.now_ms();
        marks.retain(|_, until| *until > now);
        marks.insert((account.clone(), wanted), until);
        Box::pin(std::future::ready(Ok(())))
    }

    fn is_marked(&self, account: &AccountId, wanted: bool) -> BoardFuture<bool> {
        let now = self.now_ms();
        let marked = self
            .marks
            .lock()
            .get(&(account.clone(), wanted))
            .is_some_and(|until| *until > now);
        Box::pin(std::future::ready(Ok(marked)))
    }
}

impl LeaseBoard for MemoryLeaseBoard {
    fn mark_leased(&self, account: &AccountId, ttl: Duration) -> BoardFuture<()> {
        self.mark(account, false, ttl)
    }
    fn is_leased(&self, account: &AccountId) -> BoardFuture<bool> {
        self.is_marked(account, false)
    }
    fn want(&self, account: &AccountId, ttl: Duration) -> BoardFuture<()> {
        self.mark(account, true, ttl)
    }
    fn is_wanted(&self, account: &AccountId) -> BoardFuture<bool> {
        self.is_marked(account, true)
    }
}

/// A ledger that bills busy accounts in process against leased blocks of their credits
/// (see the [module docs](self)). Everything else goes to the wrapped ledger unchanged.
///
/// Clones share their leases: wrap the ledger once, give clones to the layer and the
/// readouts, and run one [flusher](Self::spawn_flusher).
///
/// ```
/// use std::time::Duration;
/// use tower_credits::ledger::Leased;
/// use tower_credits::{CreditLayer, MemoryLedger};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let ledger = MemoryLedger::new();
/// let leased = Leased::new(ledger.clone())
///     .board(ledger.lease_board())
///     .flush_every(Duration::from_secs(1));
/// let flusher = leased.spawn_flusher();
/// let layer = CreditLayer::new(leased.clone());
/// # let _ = layer;
/// // On a graceful stop, after the layer's pending settlements drained:
/// leased.shutdown().await.unwrap();
/// flusher.abort();
/// # }
/// ```
#[derive(Clone)]
pub struct Leased<L> {
    inner: L,
    shared: Arc<Shared>,
}

struct Shared {
    settings: Settings,
    board: Option<Arc<dyn LeaseBoard>>,
    clock: Arc<dyn Clock>,
    replica: String,
    next_seq: AtomicU64,
    accounts: Mutex<HashMap<AccountId, Vec<RouteLease>>>,
    /// One flush pass at a time.
    flushing: tokio::sync::Mutex<()>,
    /// Wakes the flusher early: an account just became busy and has no lease yet.
    wake: Arc<tokio::sync::Notify>,
    /// `shutdown` began: no new lease, no new local hold.
    stopping: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Copy)]
struct Settings {
    /// Off: every call goes straight to the wrapped ledger.
    enabled: bool,
    flush_every: Duration,
    busy_at: u32,
    block_for: Duration,
    lease_ttl: Duration,
}

/// What this replica knows of one account and route: its rate, and its lease if any.
struct RouteLease {
    route: Option<Arc<str>>,
    /// Requests counted in the current one-second window, and when it started (ms).
    window: (u32, u64),
    /// Requests in the last full window: the rate, per second.
    rate: u32,
    /// The largest price seen, and the sum and count for the mean.
    max_price: u64,
    price_sum: u64,
    price_count: u64,
    /// The account's available balance in the last answer this replica saw.
    last_available: Option<i64>,
    /// No lease before this time (ms): the lease was given back to a replica that wanted it.
    cooldown_until: u64,
    /// The flusher was woken to open a lease for this entry (until its next pass).
    woke_flusher: bool,
    /// The id of the next block, kept until a reserve of it is answered: a reserve that
    /// timed out is retried under the same id, so it holds once.
    next_id: Option<HoldId>,
    lease: Option<Lease>,
}

struct Lease {
    /// The hold in the ledger that holds the block.
    hold: HoldId,
    block: u64,
    /// Committed in process since the last flush.
    spent: u64,
    /// Held by open local holds.
    pending: u64,
    local: HashMap<HoldId, LocalHold>,
    /// Local holds that settled, and when (ms): answers a retried settle.
    closed: HashMap<HoldId, (SettleOutcome, u64)>,
    /// The ledger's available balance at the last flush (the block excluded).
    available: i64,
    credit_limit: u64,
    thresholds: Vec<u64>,
    /// When the lease's hold expires (ms, ledger clock).
    expires_at_ms: u64,
    /// A rotation is in flight: new local holds only within `rotation_budget`.
    rotating: bool,
    /// Credits new local holds may take while a rotation is in flight: the next block is
    /// asked to cover at least the holds open at its planning plus this budget.
    rotation_budget: u64,
    /// The flusher was woken to refill this lease (until its next pass).
    woke_flusher: bool,
    /// The account could not give a next block: no new local hold; the lease ends once
    /// its open requests are done.
    draining: bool,
    /// Previous holds whose commit failed, with the exact cost to commit: retried with the
    /// same amount each flush, so a commit that did land answers "already committed".
    uncommitted: Vec<(HoldId, u64)>,
}

struct LocalHold {
    amount: u64,
    expires_at_ms: u64,
}

impl Lease {
    fn unspent(&self) -> u64 {
        self.block.saturating_sub(self.spent + self.pending)
    }

    /// The available balance callers are shown: the ledger's at the last flush plus what
    /// the block has left.
    fn shown_available(&self) -> i64 {
        self.available.saturating_add(self.unspent() as i64)
    }
}

impl RouteLease {
    fn new(route: Option<Arc<str>>, now: u64) -> Self {
        Self {
            route,
            window: (0, now),
            rate: 0,
            max_price: 0,
            price_sum: 0,
            price_count: 0,
            last_available: None,
            cooldown_until: 0,
            woke_flusher: false,
            next_id: None,
            lease: None,
        }
    }

    fn count(&mut self, price: u64, now: u64) {
        let (count, start) = self.window;
        if now >= start + 2000 {
            self.rate = 0;
            self.window = (1, now);
        } else if now >= start + 1000 {
            self.rate = count;
            self.window = (1, start + 1000);
        } else {
            self.window.0 = count.saturating_add(1);
        }
        self.max_price = self.max_price.max(price);
        self.price_sum = self.price_sum.saturating_add(price);
        self.price_count += 1;
    }

    /// The rate as of `now`: the last full window, or none when it is older.
    fn rate_at(&self, now: u64) -> u32 {
        let (count, start) = self.window;
        if now >= start + 2000 {
            0
        } else if now >= start + 1000 {
            count
        } else {
            // A window still filling shows its rate so far (over at least 100 ms): a
            // burst makes the account busy at once, and sizes its block, not a second later.
            let elapsed = now.saturating_sub(start).max(100);
            let so_far = u64::from(count) * 1000 / elapsed;
            self.rate.max(u32::try_from(so_far).unwrap_or(u32::MAX))
        }
    }

    /// The block to lease: what lasts `block_for` at the rate and mean price seen, and at
    /// least twenty times the largest price (so the largest request is small on it).
    fn target_block(&self, settings: &Settings, now: u64) -> u64 {
        let mean = self.price_sum.checked_div(self.price_count).unwrap_or(0);
        let per_sec = u64::from(self.rate_at(now)).saturating_mul(mean.max(1));
        let lasting = per_sec.saturating_mul(settings.block_for.as_millis() as u64) / 1000;
        lasting.max(self.max_price.saturating_mul(SMALL_REQUEST_DIVISOR))
    }
}

impl<L> fmt::Debug for Leased<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leased")
            .field("replica", &self.shared.replica)
            .field("flush_every", &self.shared.settings.flush_every)
            .field("busy_at", &self.shared.settings.busy_at)
            .finish_non_exhaustive()
    }
}

impl<L> Leased<L> {
    /// Wraps `inner`: accounts billed at least [`DEFAULT_BUSY_AT`] times a second lease
    /// blocks lasting [`DEFAULT_BLOCK_FOR`], flushed every [`DEFAULT_FLUSH_EVERY`].
    pub fn new(inner: L) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                settings: Settings {
                    enabled: true,
                    flush_every: DEFAULT_FLUSH_EVERY,
                    busy_at: DEFAULT_BUSY_AT,
                    block_for: DEFAULT_BLOCK_FOR,
                    lease_ttl: DEFAULT_LEASE_TTL,
                },
                board: None,
                clock: Arc::new(SystemClock),
                replica: uuid::Uuid::now_v7().simple().to_string()[20..].to_owned(),
                next_seq: AtomicU64::new(1),
                accounts: Mutex::default(),
                flushing: tokio::sync::Mutex::new(()),
                wake: Arc::new(tokio::sync::Notify::new()),
                stopping: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    fn configure_shared(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        let shared = Arc::get_mut(&mut self.shared)
            .expect("configure a Leased before cloning it or spawning its flusher");
        f(shared);
        self
    }

    /// Turns leasing on (the default) or off. Off, every call goes straight to the
    /// wrapped ledger, with no lock nor lookup, so an application can always wrap its ledger
    /// and decide at start (the quickstart's `CREDITS_LEASES`).
    ///
    /// # Panics
    ///
    /// After the wrapper was cloned.
    pub fn enabled(self, on: bool) -> Self {
        self.configure_shared(|s| s.settings.enabled = on)
    }

    /// How often leases are flushed (default 1 s): the most usage a killed replica loses,
    /// and how far a leased account's shown balance may lag.
    ///
    /// # Panics
    ///
    /// Zero, or after the wrapper was cloned.
    pub fn flush_every(self, interval: Duration) -> Self {
        assert!(!interval.is_zero(), "a flush interval must not be zero");
        self.configure_shared(|s| s.settings.flush_every = interval)
    }

    /// Billed requests a second, per account and route on this replica, from which the
    /// account leases (default 50).
    ///
    /// # Panics
    ///
    /// After the wrapper was cloned.
    pub fn busy_at(self, requests_per_sec: u32) -> Self {
        self.configure_shared(|s| s.settings.busy_at = requests_per_sec.max(1))
    }

    /// How long a block should last at the rate seen (default 10 s).
    ///
    /// # Panics
    ///
    /// After the wrapper was cloned.
    pub fn block_for(self, duration: Duration) -> Self {
        self.configure_shared(|s| s.settings.block_for = duration)
    }

    /// How long a lease's hold lives without a flush (default 10 s): how long a killed
    /// replica's block stays held before the ledger gives it back.
    ///
    /// # Panics
    ///
    /// Less than two flush intervals, or after the wrapper was cloned.
    pub fn lease_ttl(self, ttl: Duration) -> Self {
        self.configure_shared(|s| {
            assert!(
                ttl >= s.settings.flush_every * 2,
                "a lease must outlive two flushes"
            );
            s.settings.lease_ttl = ttl;
        })
    }

    /// Where replicas ask each other for an account's leases back (without one, a replica
    /// refused while others lease the account answers at once).
    ///
    /// # Panics
    ///
    /// After the wrapper was cloned.
    pub fn board(self, board: Arc<dyn LeaseBoard>) -> Self {
        self.configure_shared(|s| s.board = Some(board))
    }

    /// The clock of local holds and rates (tests: the ledger's manual clock).
    ///
    /// # Panics
    ///
    /// After the wrapper was cloned.
    pub fn clock(self, clock: impl Clock + 'static) -> Self {
        self.configure_shared(|s| s.clock = Arc::new(clock))
    }

    /// The wrapped ledger.
    pub fn get_ref(&self) -> &L {
        &self.inner
    }

    /// Credits billed in process and not yet committed to the ledger (spent since the last
    /// flush, and commits waiting for a retry): what this replica's callers would get for
    /// free if it were killed now.
    pub fn unflushed(&self) -> u64 {
        let accounts = self.shared.accounts.lock();
        accounts
            .values()
            .flatten()
            .filter_map(|r| r.lease.as_ref())
            .map(|l| l.spent + l.uncommitted.iter().map(|(_, cost)| cost).sum::<u64>())
            .sum()
    }

    /// Accounts with a lease on this replica right now.
    pub fn leased_accounts(&self) -> Vec<AccountId> {
        let accounts = self.shared.accounts.lock();
        accounts
            .iter()
            .filter(|(_, routes)| routes.iter().any(|r| r.lease.is_some()))
            .map(|(account, _)| account.clone())
            .collect()
    }
}

/// The future of a [`Leased`] call: answered in process, or by the wrapped ledger.
pub struct LeaseFuture<F, T> {
    state: State<F, T>,
}

enum State<F, T> {
    Ready(Option<Result<T, LedgerError>>),
    Inner(F),
    Boxed(Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send>>),
}

impl<F: Unpin, T> Unpin for LeaseFuture<F, T> {}

impl<F, T> Future for LeaseFuture<F, T>
where
    F: Future<Output = Result<T, LedgerError>> + Unpin,
{
    type Output = Result<T, LedgerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Ready(answer) => Poll::Ready(answer.take().expect("polled after completion")),
            State::Inner(fut) => Pin::new(fut).poll(cx),
            State::Boxed(fut) => fut.as_mut().poll(cx),
        }
    }
}

fn ready<F, T>(answer: Result<T, LedgerError>) -> LeaseFuture<F, T> {
    LeaseFuture {
        state: State::Ready(Some(answer)),
    }
}

fn pass<F, T>(fut: F) -> LeaseFuture<F, T> {
    LeaseFuture {
        state: State::Inner(fut),
    }
}

fn boxed<F, T>(
    fut: impl Future<Output = Result<T, LedgerError>> + Send + 'static,
) -> LeaseFuture<F, T> {
    LeaseFuture {
        state: State::Boxed(Box::pin(fut)),
    }
}

impl Shared {
    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The route entry of `account` and `route`, made if new (bounded).
    fn entry<'a>(
        accounts: &'a mut HashMap<AccountId, Vec<RouteLease>>,
        account: &AccountId,
        route: Option<&str>,
        now: u64,
    ) -> &'a mut RouteLease {
        if !accounts.contains_key(account) && accounts.len() >= MAX_TRACKED {
            // Forget the accounts without a lease that are the least busy.
            accounts.retain(|_, routes| {
                routes
                    .iter()
                    .any(|r| r.lease.is_some() || r.rate_at(now) > 0)
            });
        }
        let routes = accounts.entry(account.clone()).or_default();
        let at = match routes.iter().position(|r| r.route.as_deref() == route) {
            Some(at) => at,
            None => {
                routes.push(RouteLease::new(route.map(Arc::from), now));
                routes.len() - 1
            }
        };
        &mut routes[at]
    }

    /// Bills `reserve` on a lease, if it can be: the answer, or `None` to go to the ledger.
    fn reserve_locally(&self, reserve: &Reserve) -> Option<ReserveOutcome> {
        let now = self.now();
        let mut accounts = self.accounts.lock();
        // An id this replica billed in process, on any route of the account, answers as
        // the ledger would for it.
        if let Some(answer) = Self::known_local(&accounts, reserve.account(), reserve.hold_id()) {
            return Some(answer);
        }
        let stopping = self.stopping.load(Relaxed);
        let entry = Self::entry(&mut accounts, reserve.account(), reserve.route_label(), now);
        entry.count(reserve.amount(), now);
        if stopping {
            return None;
        }
        if entry.lease.is_none() {
            let busy = entry.rate_at(now) >= self.settings.busy_at;
            if busy && !entry.woke_flusher && now >= entry.cooldown_until {
                // Open the lease now rather than at the next tick.
                entry.woke_flusher = true;
                self.wake.notify_one();
            }
            return None;
        }
        // A request with its own idempotency claim or a floor goes to the ledger: the
        // ledger records the claim in the same step.
        if reserve.idempotency_claim().is_some() || reserve.least_amount().is_some() {
            return None;
        }
        // A time to live the ledger would refuse goes to the ledger, which says so.
        let ttl_ms = super::check_ttl(reserve.hold_ttl()).ok()?;
        let lease = entry.lease.as_mut()?;
        let amount = reserve.amount();
        let flush_ms = self.settings.flush_every.as_millis() as u64;
        let small = amount <= lease.block / SMALL_REQUEST_DIVISOR;
        let lasts = lease.expires_at_ms > now + 2 * flush_ms;
        let within = !lease.draining && (!lease.rotating || amount <= lease.rotation_budget);
        let fits = amount <= lease.unspent();
        if !lease.rotating
            && !lease.woke_flusher
            && lease.unspent() - amount.min(lease.unspent()) < lease.block / 4
        {
            // Running low before the next tick (the rate outgrew the block): refill now,
            // so requests do not fall back to the ledger until the tick.
            lease.woke_flusher = true;
            self.wake.notify_one();
        }
        if !within || !small || !lasts || !fits || amount == 0 {
            return None;
        }
        if lease.rotating {
            lease.rotation_budget -= amount;
        }
        let expires_at_ms = now.saturating_add(ttl_ms);
        lease.pending += amount;
        lease.local.insert(
            reserve.hold_id().clone(),
            LocalHold {
                amount,
                expires_at_ms,
            },
        );
        let mut held = Held::new(amount, lease.shown_available(), expires_at_ms);
        held.credit_limit = lease.credit_limit;
        held.thresholds = lease.thresholds.clone();
        Some(ReserveOutcome::Held(held))
    }

    /// The answer for `id` if it is (or was) a local hold of `account`'s leases: a replayed
    /// hold, or the way it closed.
    fn known_local(
        accounts: &HashMap<AccountId, Vec<RouteLease>>,
        account: &AccountId,
        id: &HoldId,
    ) -> Option<ReserveOutcome> {
        for lease in accounts
            .get(account)?
            .iter()
            .filter_map(|r| r.lease.as_ref())
        {
            if let Some(&(outcome, _)) = lease.closed.get(id) {
                return Some(ReserveOutcome::Closed(outcome));
            }
            if let Some(local) = lease.local.get(id) {
                let mut held =
                    Held::new(local.amount, lease.shown_available(), local.expires_at_ms);
                held.replayed = true;
                held.credit_limit = lease.credit_limit;
                held.thresholds = lease.thresholds.clone();
                return Some(ReserveOutcome::Held(held));
            }
        }
        None
    }

    /// Settles a local hold: the answer, or `None` when `settle`'s hold is not local.
    fn settle_locally(&self, settle: &Settle) -> Option<Settlement> {
        let now = self.now();
        let mut accounts = self.accounts.lock();
        let routes = accounts.get_mut(settle.account())?;
        let lease = routes.iter_mut().find_map(|r| {
            r.lease.as_mut().filter(|l| {
                l.local.contains_key(settle.hold_id()) || l.closed.contains_key(settle.hold_id())
            })
        })?;
        let answer = |lease: &Lease, outcome| {
            let mut s = Settlement::new(outcome);
            s.available = Some(lease.shown_available());
            s.thresholds = lease.thresholds.clone();
            s
        };
        if let Some(&(outcome, _)) = lease.closed.get(settle.hold_id()) {
            let again = match outcome {
                SettleOutcome::Committed => SettleOutcome::AlreadyCommitted,
                SettleOutcome::Refunded => SettleOutcome::AlreadyRefunded,
                other => other,
            };
            return Some(answer(lease, again));
        }
        let local = lease.local.remove(settle.hold_id())?;
        lease.pending -= local.amount;
        let (outcome, committed, clamped) = match settle.decision() {
            SettleDecision::Commit(actual) => (
                SettleOutcome::Committed,
                actual.min(local.amount),
                actual > local.amount,
            ),
            SettleDecision::Refund => (SettleOutcome::Refunded, 0, false),
        };
        lease.spent += committed;
        lease
            .closed
            .insert(settle.hold_id().clone(), (outcome, now));
        let mut s = answer(lease, outcome);
        s.committed = committed;
        s.released = local.amount - committed;
        s.clamped = clamped;
        Some(s)
    }

    /// Remembers the available balance a ledger answer showed (sizing and near-empty).
    fn saw_available(&self, account: &AccountId, route: Option<&str>, available: i64) {
        let now = self.now();
        let mut accounts = self.accounts.lock();
        Self::entry(&mut accounts, account, route, now).last_available = Some(available);
    }

    /// The unspent credits of this replica's leases of `account` (0: none).
    fn unspent(&self, account: &AccountId) -> u64 {
        let accounts = self.accounts.lock();
        accounts
            .get(account)
            .into_iter()
            .flatten()
            .filter_map(|r| r.lease.as_ref())
            .map(Lease::unspent)
            .sum()
    }

    fn next_hold(&self) -> HoldId {
        let seq = self.next_seq.fetch_add(1, Relaxed);
        HoldId::new(format!("lease-{}-{seq}", self.replica)).expect("a valid hold id")
    }
}

/// One lease's rotation, planned under the lock and carried out without it.
struct Rotation {
    account: AccountId,
    route: Option<Arc<str>>,
    old: Option<(HoldId, u64)>,
    spent: u64,
    pending: u64,
    fresh: u64,
    given_back: bool,
    /// Credits local holds may take while this rotation is in flight.
    budget: u64,
    /// Commits of earlier holds to retry, each with its exact cost.
    retries: Vec<(HoldId, u64)>,
    /// Only keep the lease's hold alive (a draining lease with open requests).
    keep_alive: bool,
    /// The id of the next block (kept by the entry until a reserve of it is answered).
    next_id: Option<HoldId>,
}

/// How a rotation ended.
struct Rotated {
    next: Option<(HoldId, Held)>,
    /// The previous hold's cost left the lease's `spent` (committed, or queued to retry).
    moved: u64,
    /// The previous hold is settled or queued: the lease moves to `next`.
    old_done: bool,
    available: Option<i64>,
    retries: Vec<(HoldId, u64)>,
    /// The next block was refused: the lease bills no more and ends once its open
    /// requests are done.
    drain: bool,
    /// The reserve of the next id was answered (held or refused): the id is used up.
    answered: bool,
    /// The lease's hold now expires then (a keep-alive).
    extended_to: Option<u64>,
}

impl<L: LedgerReports> Leased<L> {
    /// Runs [`flush`](Self::flush) every [flush interval](Self::flush_every) on the current
    /// tokio runtime. The task ends when every clone of the wrapper is dropped, or when the
    /// returned handle is aborted (a killed replica: its leases expire in the ledger).
    ///
    /// With leasing [off](Self::enabled) the task ends at once.
    pub fn spawn_flusher(&self) -> tokio::task::JoinHandle<()> {
        if !self.shared.settings.enabled {
            return tokio::spawn(async {});
        }
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        let wake = self.shared.wake.clone();
        let inner = self.inner.clone();
        let every = self.shared.settings.flush_every;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    // An account became busy: lease it now.
                    _ = wake.notified() => {}
                }
                let Some(shared) = weak.upgrade() else { return };
                let leased = Leased {
                    inner: inner.clone(),
                    shared,
                };
                // The pass runs to its end even if this task is aborted (see `pass`).
                if let Err(error) = leased.flush().await {
                    tracing::warn!(%error, "a lease flush failed; the next one retries");
                }
            }
        })
    }

    /// One flush: commits what each lease spent, refills or gives back its block, opens
    /// leases for accounts that became busy, and forgets local holds past their time to
    /// live (their credits go back to the block). Fails with the first error; a lease whose
    /// rotation failed is retried by the next flush (hold ids make the retry idempotent).
    pub async fn flush(&self) -> Result<(), LedgerError> {
        self.pass(false).await
    }

    /// Commits and returns every lease (a graceful stop): no new lease nor local hold from
    /// now on, and the leases shrink to their open requests until those are done. Call it
    /// after the layer's pending settlements drained; it waits for a flush in flight and
    /// gives up after five seconds with [`LedgerError::Timeout`] while requests are still
    /// open (their blocks then expire in the ledger).
    pub async fn shutdown(&self) -> Result<(), LedgerError> {
        const PATIENCE: Duration = Duration::from_secs(5);
        self.shared.stopping.store(true, Relaxed);
        let until = tokio::time::Instant::now() + PATIENCE;
        loop {
            self.pass(true).await?;
            if self.leased_accounts().is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(LedgerError::Timeout(PATIENCE));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One pass, run to its end in a task of its own: a caller that stops waiting (a
    /// timeout, an aborted flusher) cannot cut a rotation between its ledger calls.
    async fn pass(&self, closing: bool) -> Result<(), LedgerError> {
        let this = self.clone();
        match tokio::spawn(async move { this.run_pass(closing).await }).await {
            Ok(done) => done,
            Err(failed) => std::panic::resume_unwind(failed.into_panic()),
        }
    }

    async fn run_pass(&self, closing: bool) -> Result<(), LedgerError> {
        let _one = self.shared.flushing.lock().await;
        let plans = self.plan(closing).await;
        let mut first_error = None;
        for plan in plans {
            let (rotated, error) = self.rotate(&plan).await;
            self.end_rotation(&plan, rotated);
            if let Some(error) = error {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// What each lease does this flush.
    async fn plan(&self, closing: bool) -> Vec<Rotation> {
        let shared = &self.shared;
        let closing = closing || shared.stopping.load(Relaxed);
        let settings = shared.settings;
        let now = shared.now();
        let flush_ms = settings.flush_every.as_millis() as u64;
        // Which leased accounts another replica wants back.
        let mut wanted = Vec::new();
        if let Some(board) = &shared.board {
            for account in self.leased_accounts() {
                if board.is_wanted(&account).await.unwrap_or(false) {
                    wanted.push(account);
                }
            }
        }
        let mut plans = Vec::new();
        let mut accounts = shared.accounts.lock();
        for (account, routes) in accounts.iter_mut() {
            let given_back = wanted.contains(account);
            for entry in routes.iter_mut() {
                entry.woke_flusher = false;
                let busy = entry.rate_at(now) >= settings.busy_at;
                // At most half of what the account has left (other replicas and big
                // requests keep the rest); an account that cannot spare a block fit for
                // its largest request is near-empty and does not lease.
                let spare = entry.last_available.map_or(0, |a| a.max(0) as u64 / 2);
                let target = entry.target_block(&settings, now).min(spare);
                let rich = target >= entry.max_price.saturating_mul(SMALL_REQUEST_DIVISOR);
                match &mut entry.lease {
                    Some(lease) => {
                        lease.woke_flusher = false;
                        // Local holds past their time to live: their credits go back.
                        let mut expired = 0;
                        lease.local.retain(|id, local| {
                            let keep = local.expires_at_ms > now;
                            if !keep {
                                expired += local.amount;
                                lease
                                    .closed
                                    .insert(id.clone(), (SettleOutcome::Expired, now));
                            }
                            keep
                        });
                        lease.pending -= expired;
                        crate::ledger::expired(expired);
                        // A retried settle comes within a call's timeout; one that comes
                        // later reaches the ledger, which answers "unknown" and moves
                        // nothing. Kept longer, a busy lease would hold rate × TTL ids.
                        let keep_for = (2 * flush_ms).max(2_000);
                        lease.closed.retain(|_, (_, at)| *at + keep_for > now);
                        if lease.draining && lease.pending > 0 {
                            // Committed once its open requests are done; meanwhile its
                            // hold is kept alive, so their credits stay held.
                            lease.rotating = true;
                            lease.rotation_budget = 0;
                            plans.push(Rotation {
                                account: account.clone(),
                                route: entry.route.clone(),
                                old: Some((lease.hold.clone(), lease.block)),
                                spent: lease.spent,
                                pending: lease.pending,
                                fresh: 0,
                                given_back,
                                budget: 0,
                                retries: std::mem::take(&mut lease.uncommitted),
                                keep_alive: true,
                                next_id: None,
                            });
                            continue;
                        }
                        let keep_leasing =
                            busy && rich && !given_back && !closing && !lease.draining;
                        if given_back {
                            entry.cooldown_until = now + COOLDOWN_FLUSHES * flush_ms;
                        }
                        let fresh = if keep_leasing { target } else { 0 };
                        lease.rotating = true;
                        lease.rotation_budget = fresh.min(lease.unspent());
                        plans.push(Rotation {
                            account: account.clone(),
                            route: entry.route.clone(),
                            // A lease left with only commits to retry holds no block.
                            old: (lease.block > 0).then(|| (lease.hold.clone(), lease.block)),
                            spent: lease.spent,
                            pending: lease.pending,
                            fresh,
                            given_back,
                            budget: lease.rotation_budget,
                            retries: std::mem::take(&mut lease.uncommitted),
                            keep_alive: false,
                            next_id: Some(
                                entry
                                    .next_id
                                    .get_or_insert_with(|| shared.next_hold())
                                    .clone(),
                            ),
                        });
                    }
                    None => {
                        if busy && rich && !closing && now >= entry.cooldown_until {
                            plans.push(Rotation {
                                account: account.clone(),
                                route: entry.route.clone(),
                                old: None,
                                spent: 0,
                                pending: 0,
                                fresh: target,
                                given_back: false,
                                budget: 0,
                                retries: Vec::new(),
                                keep_alive: false,
                                next_id: Some(
                                    entry
                                        .next_id
                                        .get_or_insert_with(|| shared.next_hold())
                                        .clone(),
                                ),
                            });
                        }
                    }
                }
            }
        }
        plans
    }

    /// Carries out one rotation: retried commits, the next block (so every open local
    /// hold stays covered), then the commit of the previous hold. Never fails half-way
    /// silently: what did not land is in the answer, retried by the next flush.
    async fn rotate(&self, plan: &Rotation) -> (Rotated, Option<LedgerError>) {
        let shared = &self.shared;
        let settings = shared.settings;
        let mut error = None;
        let mut retries = Vec::new();
        for (id, cost) in &plan.retries {
            match self.commit_spent(plan, id, *cost).await {
                Ok(_) => {}
                Err(e) => {
                    error.get_or_insert(e);
                    retries.push((id.clone(), *cost));
                }
            }
        }
        if plan.keep_alive {
            let mut extended_to = None;
            if let Some((old, _)) = &plan.old {
                let extend = Extend::new(plan.account.clone(), old.clone(), settings.lease_ttl);
                match self.inner.extend(extend).await {
                    Ok(Extended::Until(at)) => extended_to = Some(at),
                    // Gone: its usage is charged through a late hold when it commits.
                    Ok(Extended::NotOpen(_)) => {}
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
            }
            let rotated = Rotated {
                next: None,
                moved: 0,
                old_done: false,
                available: None,
                retries,
                drain: true,
                answered: false,
                extended_to,
            };
            return (rotated, error);
        }
        let next_id = plan.next_id.clone().unwrap_or_else(|| shared.next_hold());
        let reserve_next = |amount: u64, least: u64| {
            let mut reserve = Reserve::new(plan.account.clone(), next_id.clone(), amount)
                .ttl(settings.lease_ttl)
                .min_amount(least);
            if let Some(route) = &plan.route {
                reserve = reserve.route(route.clone());
            }
            reserve
        };
        let mut next: Option<(HoldId, Held)> = None;
        let mut refused = false;
        let mut answered = false;
        let want = plan.pending + plan.fresh;
        if want > 0 {
            // A new lease takes its whole block or nothing (a near-empty account never
            // leases); a running one keeps its open requests, and those the rotation may
            // admit, covered.
            let least = if plan.old.is_none() {
                want
            } else {
                (plan.pending + plan.budget).max(1)
            };
            let reserve = reserve_next(want, least);
            let id = reserve.hold_id().clone();
            let answer = self.inner.reserve(reserve).await;
            answered = answer.is_ok();
            match answer {
                Ok(ReserveOutcome::Held(held)) => {
                    next = Some((id, held));
                    // Other replicas refused for want of credits ask for them back.
                    if let Some(board) = &shared.board {
                        if let Err(e) = board.mark_leased(&plan.account, settings.lease_ttl).await {
                            error.get_or_insert(e);
                        }
                    }
                }
                Ok(_) => refused = true,
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        let unchanged = |retries, drain| Rotated {
            next: None,
            moved: 0,
            old_done: false,
            available: None,
            retries,
            drain,
            answered,
            extended_to: None,
        };
        let Some((old, block)) = &plan.old else {
            let rotated = Rotated {
                next,
                moved: 0,
                old_done: true,
                available: None,
                retries,
                drain: false,
                answered,
                extended_to: None,
            };
            return (rotated, error);
        };
        if want > 0 && next.is_none() {
            // The previous hold is committed only once the next one covers the open
            // requests: a commit cannot be taken back, and a hold committed twice keeps
            // the first amount. Refused (the account runs low): stop billing on the lease
            // and commit it once its requests are done. Failed: try again next flush.
            return (unchanged(retries, refused), error);
        }
        let cost = plan.spent.min(*block);
        let available = match self.commit_spent(plan, old, cost).await {
            Ok(settled) => settled.available,
            Err(e) => {
                error.get_or_insert(e);
                // The lease moves on (or ends); the previous hold's commit is retried
                // with this exact cost (idempotent by hold id).
                retries.push((old.clone(), cost));
                // The next block's answer counted the previous block as held; what it
                // had left is the callers' as soon as the commit lands.
                next.as_ref()
                    .map(|(_, held)| held.available.saturating_add((*block - cost) as i64))
            }
        };
        let rotated = Rotated {
            next,
            moved: cost,
            old_done: true,
            available,
            retries,
            drain: false,
            answered,
            extended_to: None,
        };
        (rotated, error)
    }

    /// Commits `cost` spent on the lease hold `hold`. A hold that expired before its commit
    /// landed (a store outage longer than the lease) gave its credits back: they are
    /// charged again through a hold of their own, `<hold>-late` (idempotent by that id), so
    /// what callers were served is never lost to an expiry.
    async fn commit_spent(
        &self,
        plan: &Rotation,
        hold: &HoldId,
        cost: u64,
    ) -> Result<Settlement, LedgerError> {
        let settled = self
            .inner
            .settle(Settle::commit(&plan.account, hold, cost))
            .await?;
        // Expired, or expired so long ago the ledger forgot the id: the block went back.
        let gone = matches!(
            settled.outcome,
            SettleOutcome::Expired | SettleOutcome::Unknown
        );
        if cost == 0 || !gone {
            return Ok(settled);
        }
        // `lease-<12>-<seq>-late` stays well under the 64 bytes of a hold id.
        let late = HoldId::new(format!("{hold}-late")).map_err(|_| LedgerError::InvalidHoldId)?;
        // What the account still affords, down to one credit: the rest is logged as lost.
        // Long-lived: committed at once, but a commit that fails must find it again.
        let mut reserve = Reserve::new(plan.account.clone(), late.clone(), cost)
            .ttl(super::DEFAULT_HOLD_TTL.max(self.shared.settings.lease_ttl))
            .min_amount(1);
        if let Some(route) = &plan.route {
            reserve = reserve.route(route.clone());
        }
        let held = match self.inner.reserve(reserve).await? {
            ReserveOutcome::Held(held) => held.amount,
            _ => 0,
        };
        if held < cost {
            tracing::warn!(
                account = %plan.account,
                lost = cost - held,
                "a lease expired before its usage was committed, and the account cannot pay all of it"
            );
        }
        if held == 0 {
            return Ok(settled);
        }
        self.inner
            .settle(Settle::commit(&plan.account, &late, held))
            .await
    }

    fn end_rotation(&self, plan: &Rotation, rotated: Rotated) {
        let mut accounts = self.shared.accounts.lock();
        let now = self.shared.now();
        let entry = Shared::entry(&mut accounts, &plan.account, plan.route.as_deref(), now);
        let Rotated {
            next,
            moved,
            old_done,
            available,
            retries,
            drain,
            answered,
            extended_to,
        } = rotated;
        if answered {
            entry.next_id = None;
        }
        if let Some(available) = available {
            entry.last_available = Some(available);
        }
        let lease = match (entry.lease.take(), next) {
            (Some(mut lease), _) if !old_done => {
                lease.rotating = false;
                lease.draining |= drain;
                if let Some(at) = extended_to {
                    lease.expires_at_ms = at;
                }
                lease.uncommitted = retries;
                Some(lease)
            }
            (Some(mut lease), Some((id, held))) => {
                lease.hold = id;
                lease.block = held.amount;
                lease.spent -= moved;
                lease.available = available.unwrap_or(held.available);
                lease.credit_limit = held.credit_limit;
                lease.thresholds = held.thresholds;
                lease.expires_at_ms = held.expires_at_ms;
                lease.rotating = false;
                lease.draining = false;
                lease.uncommitted = retries;
                Some(lease)
            }
            (None, Some((id, held))) => Some(Lease {
                hold: id,
                block: held.amount,
                spent: 0,
                pending: 0,
                local: HashMap::default(),
                closed: HashMap::default(),
                available: held.available,
                credit_limit: held.credit_limit,
                thresholds: held.thresholds,
                expires_at_ms: held.expires_at_ms,
                rotating: false,
                rotation_budget: 0,
                woke_flusher: false,
                draining: false,
                uncommitted: retries,
            }),
            (Some(lease), None) => {
                // Given back, idle, stopping, or the account ran low: no lease any more.
                if !retries.is_empty() {
                    // Commits still to retry keep a block-less lease until they land.
                    Some(Lease {
                        block: 0,
                        spent: lease.spent - moved,
                        rotating: false,
                        uncommitted: retries,
                        ..lease
                    })
                } else {
                    None
                }
            }
            (None, None) => None,
        };
        if plan.given_back {
            tracing::debug!(account = %plan.account, "lease given back to a replica that wanted it");
        }
        entry.lease = lease;
    }
}

impl<L: LedgerReports> Ledger for Leased<L> {
    type Future<T: Send + 'static> = LeaseFuture<L::Future<T>, T>;

    fn reserve(&self, reserve: Reserve) -> Self::Future<ReserveOutcome> {
        if !self.shared.settings.enabled {
            return pass(self.inner.reserve(reserve));
        }
        if let Some(outcome) = self.shared.reserve_locally(&reserve) {
            return ready(Ok(outcome));
        }
        let (inner, shared) = (self.inner.clone(), self.shared.clone());
        boxed(async move {
            let account = reserve.account().clone();
            // Shared, not copied: the request path allocates nothing more for it.
            let route = reserve.route.clone();
            // Kept only where a refusal may be retried after a handoff.
            let retry = shared.board.is_some().then(|| reserve.clone());
            match inner.reserve(reserve).await? {
                ReserveOutcome::Held(mut held) => {
                    shared.saw_available(&account, route.as_deref(), held.available);
                    // Shown as a leased request's would be: with this replica's unspent
                    // lease credits (0 when it holds no lease of the account).
                    held.available = held
                        .available
                        .saturating_add(shared.unspent(&account) as i64);
                    Ok(ReserveOutcome::Held(held))
                }
                ReserveOutcome::Insufficient(refused) => {
                    shared.saw_available(&account, route.as_deref(), refused.available);
                    // Other replicas may hold the credits in leases: ask for them back,
                    // and try once more after their next flush.
                    if let (Some(board), Some(retry)) = (&shared.board, retry) {
                        if board.is_leased(&account).await.unwrap_or(false) {
                            let every = shared.settings.flush_every;
                            board.want(&account, every * 3).await?;
                            tokio::time::sleep(every * 2).await;
                            return inner.reserve(retry).await;
                        }
                    }
                    Ok(ReserveOutcome::Insufficient(refused))
                }
                other => Ok(other),
            }
        })
    }

    fn settle(&self, settle: Settle) -> Self::Future<Settlement> {
        if !self.shared.settings.enabled {
            return pass(self.inner.settle(settle));
        }
        match self.shared.settle_locally(&settle) {
            Some(settlement) => ready(Ok(settlement)),
            None if self.shared.unspent(settle.account()) == 0 => pass(self.inner.settle(settle)),
            None => {
                // Shown with this replica's unspent lease credits, as a leased request's.
                let (shared, account) = (self.shared.clone(), settle.account().clone());
                let fut = self.inner.settle(settle);
                boxed(async move {
                    let mut settlement = fut.await?;
                    if let Some(available) = &mut settlement.available {
                        *available = available.saturating_add(shared.unspent(&account) as i64);
                    }
                    Ok(settlement)
                })
            }
        }
    }

    fn extend(&self, extend: Extend) -> Self::Future<Extended> {
        if self.shared.settings.enabled {
            let now = self.shared.now();
            let mut accounts = self.shared.accounts.lock();
            if let Some(routes) = accounts.get_mut(extend.account()) {
                for lease in routes.iter_mut().filter_map(|r| r.lease.as_mut()) {
                    if let Some(local) = lease.local.get_mut(extend.hold_id()) {
                        let Ok(ttl_ms) = super::check_ttl(extend.hold_ttl()) else {
                            return ready(Err(LedgerError::InvalidTtl {
                                ttl: extend.hold_ttl(),
                            }));
                        };
                        local.expires_at_ms = now.saturating_add(ttl_ms);
                        return ready(Ok(Extended::Until(local.expires_at_ms)));
                    }
                    if let Some(&(outcome, _)) = lease.closed.get(extend.hold_id()) {
                        let outcome = match outcome {
                            SettleOutcome::Committed => SettleOutcome::AlreadyCommitted,
                            SettleOutcome::Refunded => SettleOutcome::AlreadyRefunded,
                            other => other,
                        };
                        return ready(Ok(Extended::NotOpen(outcome)));
                    }
                }
            }
        }
        pass(self.inner.extend(extend))
    }

    fn grow(&self, grow: Grow) -> Self::Future<GrowOutcome> {
        if self.shared.settings.enabled {
            let now = self.shared.now();
            let soon = now + 2 * self.shared.settings.flush_every.as_millis() as u64;
            let stopping = self.shared.stopping.load(Relaxed);
            let mut accounts = self.shared.accounts.lock();
            if let Some(routes) = accounts.get_mut(grow.account()) {
                for lease in routes.iter_mut().filter_map(|r| r.lease.as_mut()) {
                    let unspent = lease.unspent();
                    // No raise on a lease that is ending or whose hold may lapse first.
                    let frozen =
                        lease.rotating || lease.draining || stopping || lease.expires_at_ms <= soon;
                    let Some(local) = lease.local.get_mut(grow.hold_id()) else {
                        continue;
                    };
                    if grow.amount() <= local.amount {
                        let (amount, available) = (local.amount, lease.shown_available());
                        return ready(Ok(GrowOutcome::Grown(Grown::new(amount, available))));
                    }
                    let want = grow.amount() - local.amount;
                    let least = grow.least_amount().saturating_sub(local.amount).max(1);
                    let raise = want.min(unspent);
                    if raise < least || frozen {
                        // (Mid-rotation the next block is sized already: no raise.)
                        let refused =
                            Insufficient::new(least, lease.shown_available(), lease.credit_limit);
                        return ready(Ok(GrowOutcome::Insufficient(refused)));
                    }
                    local.amount += raise;
                    let amount = local.amount;
                    lease.pending += raise;
                    let available = lease.shown_available();
                    return ready(Ok(GrowOutcome::Grown(Grown::new(amount, available))));
                }
            }
        }
        pass(self.inner.grow(grow))
    }

    fn store_response(&self, store: StoreResponse) -> Self::Future<bool> {
        pass(self.inner.store_response(store))
    }

    fn lookup_api_key(&self, key: &ApiKeyHash) -> Self::Future<Option<AccountId>> {
        pass(self.inner.lookup_api_key(key))
    }

    fn reports(&self) -> Option<&dyn DynReports> {
        // Quotes and readouts see the leases' unspent credits.
        Some(self)
    }
}

impl Shared {
    /// The ledger's balance as callers see it with this replica's leases: their unspent
    /// credits available, their spent credits committed, only their open local holds held.
    fn shown_balance(&self, account: &AccountId, mut balance: Balance) -> Balance {
        let accounts = self.accounts.lock();
        for lease in accounts
            .get(account)
            .into_iter()
            .flatten()
            .filter_map(|r| r.lease.as_ref())
        {
            balance.available = balance.available.saturating_add(lease.unspent() as i64);
            balance.held = balance
                .held
                .saturating_sub(lease.block)
                .saturating_add(lease.pending);
            balance.committed = balance.committed.saturating_add(lease.spent);
            balance.open_holds = balance
                .open_holds
                .saturating_sub(1)
                .saturating_add(lease.local.len() as u64);
        }
        balance
    }
}

impl<L: LedgerReports> LedgerReports for Leased<L> {
    fn balance(&self, account: &AccountId) -> Self::Future<Balance> {
        if !self.shared.settings.enabled {
            return pass(self.inner.balance(account));
        }
        let shared = self.shared.clone();
        let account = account.clone();
        let fut = self.inner.balance(&account);
        boxed(async move { Ok(shared.shown_balance(&account, fut.await?)) })
    }

    fn usage(&self, account: &AccountId) -> Self::Future<Usage> {
        pass(self.inner.usage(account))
    }

    /// The ledger's trail: a lease's requests appear as one commit per flush.
    fn history(
        &self,
        account: &AccountId,
        cursor: Option<&str>,
        limit: usize,
    ) -> super::BoxLedgerFuture<super::HistoryPage> {
        self.inner.history(account, cursor, limit)
    }
}

impl<L: LedgerReports + LedgerAdmin> LedgerAdmin for Leased<L> {
    fn top_up(&self, top_up: TopUp) -> Self::Future<ToppedUp> {
        pass(self.inner.top_up(top_up))
    }

    fn configure(&self, configure: Configure) -> Self::Future<()> {
        pass(self.inner.configure(configure))
    }

    fn register_api_key(&self, key: &ApiKeyHash, account: &AccountId) -> Self::Future<()> {
        pass(self.inner.register_api_key(key, account))
    }

    fn revoke_api_key(&self, key: &ApiKeyHash) -> Self::Future<bool> {
        pass(self.inner.revoke_api_key(key))
    }
}

impl<L: LedgerReports + super::EventOutbox> super::EventOutbox for Leased<L> {
    fn replica(&self) -> &str {
        self.inner.replica()
    }
    fn claim(&self, lease: Duration, max: usize) -> super::OutboxFuture<Vec<super::CreditEvent>> {
        self.inner.claim(lease, max)
    }
    fn renew(&self, event: &super::CreditEvent, lease: Duration) -> super::OutboxFuture<bool> {
        self.inner.renew(event, lease)
    }
    fn ack(&self, event: &super::CreditEvent) -> super::OutboxFuture<()> {
        self.inner.ack(event)
    }
    fn dead_letter(&self, event: &super::CreditEvent, reason: &str) -> super::OutboxFuture<()> {
        self.inner.dead_letter(event, reason)
    }
    fn dead_letters(&self, account: &AccountId) -> super::OutboxFuture<Vec<super::DeadLetter>> {
        self.inner.dead_letters(account)
    }
    fn requeue(&self, dead: &super::DeadLetter) -> super::OutboxFuture<bool> {
        self.inner.requeue(dead)
    }
    fn pending(&self, account: &AccountId) -> super::OutboxFuture<Vec<super::CreditEvent>> {
        self.inner.pending(account)
    }
}
