//! [`BoxLedger`]: any ledger behind one type, like tower's `BoxCloneService`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{
    AccountId, Balance, Configure, Extend, Extended, Grow, GrowOutcome, HistoryPage, Ledger,
    LedgerAdmin, LedgerError, LedgerReports, Reserve, ReserveOutcome, Settle, Settlement,
    StoreResponse, TopUp, ToppedUp, Usage,
};
use crate::api_key::ApiKeyHash;

/// The future of a [`BoxLedger`] operation.
pub type BoxLedgerFuture<T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send>>;

/// A ledger whose type is erased: for a ledger chosen at run time among more than
/// [`AnyLedger`](super::AnyLedger) knows, or to keep a ledger's type out of a signature.
/// Each call boxes its future (one allocation); cloning is an `Arc` clone.
///
/// ```
/// use tower_credits::{CreditLayer, MemoryLedger};
/// use tower_credits::ledger::BoxLedger;
///
/// let ledger = BoxLedger::new(MemoryLedger::new());
/// let layer: CreditLayer<BoxLedger> = CreditLayer::new(ledger);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct BoxLedger {
    inner: Arc<dyn Erased>,
}

impl BoxLedger {
    /// Erases `ledger`'s type.
    pub fn new<L>(ledger: L) -> Self
    where
        L: Ledger + LedgerAdmin + LedgerReports,
    {
        Self {
            inner: Arc::new(ledger),
        }
    }
}

impl fmt::Debug for BoxLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxLedger").finish_non_exhaustive()
    }
}

/// Reports of any ledger, behind a reference: what the layer's quotes and readouts use
/// (see [`Ledger::reports`]). Implemented for every [`LedgerReports`].
pub trait DynReports: Send + Sync {
    /// [`LedgerReports::balance`], boxed.
    fn balance_boxed(&self, account: &AccountId) -> BoxLedgerFuture<Balance>;
    /// [`LedgerReports::usage`], boxed.
    fn usage_boxed(&self, account: &AccountId) -> BoxLedgerFuture<Usage>;
}

impl<L: LedgerReports> DynReports for L {
    fn balance_boxed(&self, account: &AccountId) -> BoxLedgerFuture<Balance> {
        Box::pin(LedgerReports::balance(self, account))
    }
    fn usage_boxed(&self, account: &AccountId) -> BoxLedgerFuture<Usage> {
        Box::pin(LedgerReports::usage(self, account))
    }
}

/// The object-safe side of the three ledger traits.
trait Erased: Send + Sync + 'static {
    fn reserve(&self, reserve: Reserve) -> BoxLedgerFuture<ReserveOutcome>;
    fn settle(&self, settle: Settle) -> BoxLedgerFuture<Settlement>;
    fn extend(&self, extend: Extend) -> BoxLedgerFuture<Extended>;
    fn grow(&self, grow: Grow) -> BoxLedgerFuture<GrowOutcome>;
    fn store_response(&self, store: StoreResponse) -> BoxLedgerFuture<bool>;
    fn lookup_api_key(&self, key: &ApiKeyHash) -> BoxLedgerFuture<Option<AccountId>>;
    fn top_up(&self, top_up: TopUp) -> BoxLedgerFuture<ToppedUp>;
    fn configure(&self, configure: Configure) -> BoxLedgerFuture<()>;
    fn register_api_key(&self, key: &ApiKeyHash, account: &AccountId) -> BoxLedgerFuture<()>;
    fn revoke_api_key(&self, key: &ApiKeyHash) -> BoxLedgerFuture<bool>;
    fn balance(&self, account: &AccountId) -> BoxLedgerFuture<Balance>;
    fn usage(&self, account: &AccountId) -> BoxLedgerFuture<Usage>;
    fn history(
        &self,
        account: &AccountId,
        cursor: Option<&str>,
        limit: usize,
    ) -> BoxLedgerFuture<HistoryPage>;
}

impl<L: Ledger + LedgerAdmin + LedgerReports> Erased for L {
    fn reserve(&self, reserve: Reserve) -> BoxLedgerFuture<ReserveOutcome> {
        Box::pin(Ledger::reserve(self, reserve))
    }
    fn settle(&self, settle: Settle) -> BoxLedgerFuture<Settlement> {
        Box::pin(Ledger::settle(self, settle))
    }
    fn extend(&self, extend: Extend) -> BoxLedgerFuture<Extended> {
        Box::pin(Ledger::extend(self, extend))
    }
    fn grow(&self, grow: Grow) -> BoxLedgerFuture<GrowOutcome> {
        Box::pin(Ledger::grow(self, grow))
    }
    fn store_response(&self, store: StoreResponse) -> BoxLedgerFuture<bool> {
        Box::pin(Ledger::store_response(self, store))
    }
    fn lookup_api_key(&self, key: &ApiKeyHash) -> BoxLedgerFuture<Option<AccountId>> {
        Box::pin(Ledger::lookup_api_key(self, key))
    }
    fn top_up(&self, top_up: TopUp) -> BoxLedgerFuture<ToppedUp> {
        Box::pin(LedgerAdmin::top_up(self, top_up))
    }
    fn configure(&self, configure: Configure) -> BoxLedgerFuture<()> {
        Box::pin(LedgerAdmin::configure(self, configure))
    }
    fn register_api_key(&self, key: &ApiKeyHash, account: &AccountId) -> BoxLedgerFuture<()> {
        Box::pin(LedgerAdmin::register_api_key(self, key, account))
    }
    fn revoke_api_key(&self, key: &ApiKeyHash) -> BoxLedgerFuture<bool> {
        Box::pin(LedgerAdmin::revoke_api_key(self, key))
    }
    fn balance(&self, account: &AccountId) -> BoxLedgerFuture<Balance> {
        Box::pin(LedgerReports::balance(self, account))
    }
    fn usage(&self, account: &AccountId) -> BoxLedgerFuture<Usage> {
        Box::pin(LedgerReports::usage(self, account))
    }
    fn history(
        &self,
        account: &AccountId,
        cursor: Option<&str>,
        limit: usize,
    ) -> BoxLedgerFuture<HistoryPage> {
        LedgerReports::history(self, account, cursor, limit)
    }
}

impl Ledger for BoxLedger {
    type Future<T: Send + 'static> = BoxLedgerFuture<T>;

    fn reserve(&self, reserve: Reserve) -> Self::Future<ReserveOutcome> {
        self.inner.reserve(reserve)
    }
    fn settle(&self, settle: Settle) -> Self::Future<Settlement> {
        self.inner.settle(settle)
    }
    fn extend(&self, extend: Extend) -> Self::Future<Extended> {
        self.inner.extend(extend)
    }
    fn grow(&self, grow: Grow) -> Self::Future<GrowOutcome> {
        self.inner.grow(grow)
    }
    fn store_response(&self, store: StoreResponse) -> Self::Future<bool> {
        self.inner.store_response(store)
    }
    fn lookup_api_key(&self, key: &ApiKeyHash) -> Self::Future<Option<AccountId>> {
        self.inner.lookup_api_key(key)
    }
    fn reports(&self) -> Option<&dyn DynReports> {
        Some(self)
    }
}

impl LedgerAdmin for BoxLedger {
    fn top_up(&self, top_up: TopUp) -> Self::Future<ToppedUp> {
        self.inner.top_up(top_up)
    }
    fn configure(&self, configure: Configure) -> Self::Future<()> {
        self.inner.configure(configure)
    }
    fn register_api_key(&self, key: &ApiKeyHash, account: &AccountId) -> Self::Future<()> {
        self.inner.register_api_key(key, account)
    }
    fn revoke_api_key(&self, key: &ApiKeyHash) -> Self::Future<bool> {
        self.inner.revoke_api_key(key)
    }
}

impl LedgerReports for BoxLedger {
    fn balance(&self, account: &AccountId) -> Self::Future<Balance> {
        self.inner.balance(account)
    }
    fn usage(&self, account: &AccountId) -> Self::Future<Usage> {
        self.inner.usage(account)
    }
    fn history(
        &self,
        account: &AccountId,
        cursor: Option<&str>,
        limit: usize,
    ) -> BoxLedgerFuture<HistoryPage> {
        self.inner.history(account, cursor, limit)
    }
}
