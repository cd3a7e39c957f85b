//! The Redis ledger (work in progress: see issue "RedisLedger").

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::*;
use crate::api_key::ApiKeyHash;

/// Balances in Redis, shared by every replica.
#[derive(Clone, Debug)]
pub struct RedisLedger {
    _private: (),
}

/// Builds a [`RedisLedger`].
#[derive(Debug)]
pub struct RedisLedgerBuilder {
    _private: (),
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send>>;

fn not_yet<T: Send + 'static>() -> BoxFuture<T> {
    Box::pin(async {
        Err(LedgerError::Unavailable(
            "RedisLedger is not built yet".into(),
        ))
    })
}

impl Ledger for RedisLedger {
    type Future<T: Send + 'static> = BoxFuture<T>;
    fn reserve(&self, _: Reserve) -> Self::Future<ReserveOutcome> {
        not_yet()
    }
    fn commit(&self, _: &AccountId, _: &HoldId, _: u64) -> Self::Future<Settlement> {
        not_yet()
    }
    fn refund(&self, _: &AccountId, _: &HoldId) -> Self::Future<Settlement> {
        not_yet()
    }
    fn extend(&self, _: &AccountId, _: &HoldId, _: Duration) -> Self::Future<Extended> {
        not_yet()
    }
    fn top_up(&self, _: &AccountId, _: u64, _: &str) -> Self::Future<TopUp> {
        not_yet()
    }
    fn balance(&self, _: &AccountId) -> Self::Future<Balance> {
        not_yet()
    }
    fn usage(&self, _: &AccountId) -> Self::Future<Usage> {
        not_yet()
    }
    fn configure(&self, _: &AccountId, _: AccountSettings) -> Self::Future<()> {
        not_yet()
    }
    fn register_api_key(&self, _: &ApiKeyHash, _: &AccountId) -> Self::Future<()> {
        not_yet()
    }
    fn lookup_api_key(&self, _: &ApiKeyHash) -> Self::Future<Option<AccountId>> {
        not_yet()
    }
    fn revoke_api_key(&self, _: &ApiKeyHash) -> Self::Future<bool> {
        not_yet()
    }
}
