//! [`RecordingLedger`]: wraps any ledger and records every operation it is asked for, in
//! order, then forwards it. A ledger decorator on the public API: the three traits, their
//! request structs, and the inner ledger's own futures (nothing boxed).

use std::fmt;
use std::sync::{Arc, Mutex};

use tower_credits::ledger::{
    BoxLedgerFuture, Configure, Extend, Extended, Grow, GrowOutcome, HistoryPage, Reserve,
    ReserveOutcome, Settle, Settlement, StoreResponse, ToppedUp, Usage,
};
use tower_credits::{AccountId, ApiKeyHash, Balance, Ledger, LedgerAdmin, LedgerReports, TopUp};

/// One operation asked of a ledger, with its request.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// [`Ledger::reserve`].
    Reserve(Reserve),
    /// [`Ledger::settle`] (also [`Ledger::commit`] and [`Ledger::refund`]).
    Settle(Settle),
    /// [`Ledger::extend`].
    Extend(Extend),
    /// [`Ledger::grow`].
    Grow(Grow),
    /// [`Ledger::store_response`].
    StoreResponse(StoreResponse),
    /// [`Ledger::lookup_api_key`].
    LookupApiKey(ApiKeyHash),
    /// [`LedgerAdmin::top_up`].
    TopUp(TopUp),
    /// [`LedgerAdmin::configure`].
    Configure(Configure),
    /// [`LedgerAdmin::register_api_key`].
    RegisterApiKey(ApiKeyHash, AccountId),
    /// [`LedgerAdmin::revoke_api_key`].
    RevokeApiKey(ApiKeyHash),
    /// [`LedgerReports::balance`].
    Balance(AccountId),
    /// [`LedgerReports::usage`].
    Usage(AccountId),
}

impl fmt::Display for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reserve(r) => write!(
                f,
                "reserve {} of {} as {}",
                r.amount(),
                r.account(),
                r.hold_id()
            ),
            Self::Settle(s) => write!(
                f,
                "settle {} of {}: {:?}",
                s.hold_id(),
                s.account(),
                s.decision()
            ),
            Self::Extend(e) => write!(
                f,
                "extend {} of {} by {:?}",
                e.hold_id(),
                e.account(),
                e.hold_ttl()
            ),
            Self::Grow(g) => write!(
                f,
                "grow {} of {} to {}",
                g.hold_id(),
                g.account(),
                g.amount()
            ),
            Self::StoreResponse(s) => write!(
                f,
                "store the response of {} of {}",
                s.hold_id(),
                s.account()
            ),
            Self::LookupApiKey(key) => write!(f, "look up API key {key:?}"),
            Self::TopUp(t) => write!(
                f,
                "top up {} with {} ({})",
                t.account(),
                t.amount(),
                t.idempotency_key()
            ),
            Self::Configure(c) => write!(f, "configure {}: {:?}", c.account(), c.settings()),
            Self::RegisterApiKey(key, account) => {
                write!(f, "register API key {key:?} for {account}")
            }
            Self::RevokeApiKey(key) => write!(f, "revoke API key {key:?}"),
            Self::Balance(account) => write!(f, "balance of {account}"),
            Self::Usage(account) => write!(f, "usage of {account}"),
        }
    }
}

/// `L`, with a log of every operation asked of it. Clones share the log.
#[derive(Clone)]
pub struct RecordingLedger<L> {
    inner: L,
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl<L> RecordingLedger<L> {
    /// Records the operations asked of `inner`.
    pub fn new(inner: L) -> Self {
        Self {
            inner,
            log: Arc::default(),
        }
    }

    /// The operations asked so far, oldest first.
    pub fn log(&self) -> Vec<Recorded> {
        self.log.lock().expect("the log lock").clone()
    }

    fn record(&self, op: Recorded) {
        self.log.lock().expect("the log lock").push(op);
    }
}

impl<L: Ledger> Ledger for RecordingLedger<L> {
    type Future<T: Send + 'static> = L::Future<T>;

    fn reserve(&self, reserve: Reserve) -> Self::Future<ReserveOutcome> {
        self.record(Recorded::Reserve(reserve.clone()));
        self.inner.reserve(reserve)
    }

    fn settle(&self, settle: Settle) -> Self::Future<Settlement> {
        self.record(Recorded::Settle(settle.clone()));
        self.inner.settle(settle)
    }

    fn extend(&self, extend: Extend) -> Self::Future<Extended> {
        self.record(Recorded::Extend(extend.clone()));
        self.inner.extend(extend)
    }

    fn grow(&self, grow: Grow) -> Self::Future<GrowOutcome> {
        self.record(Recorded::Grow(grow.clone()));
        self.inner.grow(grow)
    }

    fn store_response(&self, store: StoreResponse) -> Self::Future<bool> {
        self.record(Recorded::StoreResponse(store.clone()));
        self.inner.store_response(store)
    }

    fn lookup_api_key(&self, key: &ApiKeyHash) -> Self::Future<Option<AccountId>> {
        self.record(Recorded::LookupApiKey(*key));
        self.inner.lookup_api_key(key)
    }
}

impl<L: LedgerAdmin> LedgerAdmin for RecordingLedger<L> {
    fn top_up(&self, top_up: TopUp) -> Self::Future<ToppedUp> {
        self.record(Recorded::TopUp(top_up.clone()));
        self.inner.top_up(top_up)
    }

    fn configure(&self, configure: Configure) -> Self::Future<()> {
        self.record(Recorded::Configure(configure.clone()));
        self.inner.configure(configure)
    }

    fn register_api_key(&self, key: &ApiKeyHash, account: &AccountId) -> Self::Future<()> {
        self.record(Recorded::RegisterApiKey(*key, account.clone()));
        self.inner.register_api_key(key, account)
    }

    fn revoke_api_key(&self, key: &ApiKeyHash) -> Self::Future<bool> {
        self.record(Recorded::RevokeApiKey(*key));
        self.inner.revoke_api_key(key)
    }
}

impl<L: LedgerReports> LedgerReports for RecordingLedger<L> {
    fn balance(&self, account: &AccountId) -> Self::Future<Balance> {
        self.record(Recorded::Balance(account.clone()));
        self.inner.balance(account)
    }

    fn usage(&self, account: &AccountId) -> Self::Future<Usage> {
        self.record(Recorded::Usage(account.clone()));
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
