//! [`CachedReads`]: free reads (quotes, `GET /v1/credits`, the gRPC readout) answered from a
//! per-account snapshot, so a flood of them costs the store at most one read per account
//! per interval.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::{
    AccountId, Balance, Configure, DynReports, Extend, Extended, Grow, GrowOutcome, Ledger,
    LedgerAdmin, LedgerError, LedgerReports, Reserve, ReserveOutcome, Settle, Settlement,
    StoreResponse, TopUp, ToppedUp, Usage,
};
use crate::api_key::ApiKeyHash;

/// How long a snapshot answers, unless [`CachedReads::interval`] says.
pub const DEFAULT_READ_INTERVAL: Duration = Duration::from_secs(1);

/// Most accounts whose snapshots are kept.
const SNAPSHOT_CAPACITY: usize = 100_000;

/// A ledger whose reports (`balance`, `usage`) are answered from a per-account snapshot at
/// most [`interval`](Self::interval) old (default 1 s), so quotes, `GET /v1/credits` and the
/// gRPC readout — free to callers — cost the store at most one read per account per
/// interval, however many arrive. Billing itself is never cached: `reserve`, `settle`,
/// `extend` and the admin operations go to the wrapped ledger, and each drops the
/// account's snapshots, so a caller always sees the effect of its own last call made
/// through this replica. A call made through another replica shows within the interval.
///
/// Give the same `CachedReads` to the layer and to the readouts.
///
/// ```
/// use std::time::Duration;
/// use tower_credits::ledger::CachedReads;
/// use tower_credits::readout::CreditsReadout;
/// use tower_credits::{CreditLayer, MemoryLedger};
///
/// let ledger = CachedReads::new(MemoryLedger::new()).interval(Duration::from_millis(500));
/// let layer = CreditLayer::new(ledger.clone()); // quotes read the snapshot
/// let readout = CreditsReadout::new(ledger); // so does GET /v1/credits
/// # let _ = (layer, readout);
/// ```
#[derive(Clone)]
pub struct CachedReads<L> {
    inner: L,
    snapshots: Arc<Snapshots>,
    interval: Duration,
}

struct Snapshots {
    balances: quick_cache::sync::Cache<AccountId, (Balance, Instant)>,
    usages: quick_cache::sync::Cache<AccountId, (Usage, Instant)>,
}

impl<L> std::fmt::Debug for CachedReads<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedReads")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl<L> CachedReads<L> {
    /// Wraps `inner`, with snapshots at most [`DEFAULT_READ_INTERVAL`] old.
    pub fn new(inner: L) -> Self {
        Self {
            inner,
            snapshots: Arc::new(Snapshots {
                balances: quick_cache::sync::Cache::new(SNAPSHOT_CAPACITY),
                usages: quick_cache::sync::Cache::new(SNAPSHOT_CAPACITY),
            }),
            interval: DEFAULT_READ_INTERVAL,
        }
    }

    /// How old a snapshot may be (zero: every read goes to the store).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The wrapped ledger.
    pub fn get_ref(&self) -> &L {
        &self.inner
    }

    /// Drops the account's snapshots: this replica is changing its books.
    fn forget(&self, account: &AccountId) {
        self.snapshots.balances.remove(account);
        self.snapshots.usages.remove(account);
    }
}

/// The future of a [`CachedReads`] call: a snapshot answered at once, or the wrapped
/// ledger's future, whose answer may be kept as the new snapshot.
pub struct CachedFuture<F, T> {
    state: Answer<F, T>,
}

/// Keeps an answer as the account's new snapshot.
type Keep<T> = Box<dyn FnOnce(&T) + Send>;

enum Answer<F, T> {
    Ready(Option<Result<T, LedgerError>>),
    Inner(F, Option<Keep<T>>),
}

impl<F, T> Unpin for CachedFuture<F, T> where F: Unpin {}

impl<F, T> Future for CachedFuture<F, T>
where
    F: Future<Output = Result<T, LedgerError>> + Unpin,
{
    type Output = Result<T, LedgerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            Answer::Ready(answer) => Poll::Ready(answer.take().expect("polled after completion")),
            Answer::Inner(fut, keep) => {
                let answer = std::task::ready!(Pin::new(fut).poll(cx));
                if let (Ok(value), Some(keep)) = (&answer, keep.take()) {
                    keep(value);
                }
                Poll::Ready(answer)
            }
        }
    }
}

impl<L: LedgerReports> CachedReads<L> {
    fn pass<T: Send + 'static>(fut: L::Future<T>) -> CachedFuture<L::Future<T>, T> {
        CachedFuture {
            state: Answer::Inner(fut, None),
        }
    }
}

impl<L: LedgerReports> Ledger for CachedReads<L> {
    type Future<T: Send + 'static> = CachedFuture<L::Future<T>, T>;
    // Its futures only wrap the inner ledger's.
    const IN_PROCESS: bool = L::IN_PROCESS;

    fn reserve(&self, reserve: Reserve) -> Self::Future<ReserveOutcome> {
        self.forget(reserve.account());
        Self::pass(self.inner.reserve(reserve))
    }

    fn settle(&self, settle: Settle) -> Self::Future<Settlement> {
        self.forget(settle.account());
        Self::pass(self.inner.settle(settle))
    }

    fn extend(&self, extend: Extend) -> Self::Future<Extended> {
        Self::pass(self.inner.extend(extend))
    }

    fn grow(&self, grow: Grow) -> Self::Future<GrowOutcome> {
        self.forget(grow.account());
        Self::pass(self.inner.grow(grow))
    }

    fn store_response(&self, store: StoreResponse) -> Self::Future<bool> {
        Self::pass(self.inner.store_response(store))
    }

    fn lookup_api_key(&self, key: &ApiKeyHash) -> Self::Future<Option<AccountId>> {
        Self::pass(self.inner.lookup_api_key(key))
    }

    fn reports(&self) -> Option<&dyn DynReports> {
        // Quotes read through the snapshots.
        Some(self)
    }
}

/// A snapshot of `account` at most `interval` old.
fn fresh<T: Clone>(
    cache: &quick_cache::sync::Cache<AccountId, (T, Instant)>,
    account: &AccountId,
    interval: Duration,
) -> Option<T> {
    let (value, at) = cache.get(account)?;
    (at.elapsed() < interval).then_some(value)
}

impl<L: LedgerReports> LedgerReports for CachedReads<L> {
    fn balance(&self, account: &AccountId) -> Self::Future<Balance> {
        if let Some(balance) = fresh(&self.snapshots.balances, account, self.interval) {
            return CachedFuture {
                state: Answer::Ready(Some(Ok(balance))),
            };
        }
        let (snapshots, key) = (self.snapshots.clone(), account.clone());
        CachedFuture {
            state: Answer::Inner(
                self.inner.balance(account),
                Some(Box::new(move |balance: &Balance| {
                    snapshots
                        .balances
                        .insert(key, (balance.clone(), Instant::now()));
                })),
            ),
        }
    }

    fn usage(&self, account: &AccountId) -> Self::Future<Usage> {
        if let Some(usage) = fresh(&self.snapshots.usages, account, self.interval) {
            return CachedFuture {
                state: Answer::Ready(Some(Ok(usage))),
            };
        }
        let (snapshots, key) = (self.snapshots.clone(), account.clone());
        CachedFuture {
            state: Answer::Inner(
                self.inner.usage(account),
                Some(Box::new(move |usage: &Usage| {
                    snapshots
                        .usages
                        .insert(key, (usage.clone(), Instant::now()));
                })),
            ),
        }
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

impl<L: LedgerAdmin + LedgerReports> LedgerAdmin for CachedReads<L> {
    fn top_up(&self, top_up: TopUp) -> Self::Future<ToppedUp> {
        self.forget(top_up.account());
        Self::pass(self.inner.top_up(top_up))
    }

    fn configure(&self, configure: Configure) -> Self::Future<()> {
        self.forget(configure.account());
        Self::pass(self.inner.configure(configure))
    }

    fn register_api_key(&self, key: &ApiKeyHash, account: &AccountId) -> Self::Future<()> {
        Self::pass(self.inner.register_api_key(key, account))
    }

    fn revoke_api_key(&self, key: &ApiKeyHash) -> Self::Future<bool> {
        Self::pass(self.inner.revoke_api_key(key))
    }
}
