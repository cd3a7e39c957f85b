//! API keys: register, look up, move and revoke by hash.

use super::{acct, assert_conserved, Harness};
use crate::ledger::HoldId;
use crate::{ApiKeyHash, Ledger, LedgerAdmin, TopUp};

/// API keys are stored by hash: register, look up, move, revoke.
pub async fn api_keys_register_lookup_revoke<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let (a, b) = (acct("acct_keys_a"), acct("acct_keys_b"));
    l.top_up(TopUp::new(&a, 1, "pay-1")).await.unwrap();
    l.top_up(TopUp::new(&b, 1, "pay-2")).await.unwrap();
    // Raw keys unique to this run, in case the store's key records are shared.
    let raw = format!("sk_test_{}", HoldId::generate());
    let key = ApiKeyHash::of(&raw);
    let stranger = ApiKeyHash::of(&format!("sk_test_{}", HoldId::generate()));

    assert_eq!(l.lookup_api_key(&key).await.unwrap(), None);
    l.register_api_key(&key, &a).await.unwrap();
    assert_eq!(l.lookup_api_key(&key).await.unwrap(), Some(a.clone()));
    assert_eq!(
        l.lookup_api_key(&ApiKeyHash::of(&raw)).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(l.lookup_api_key(&stranger).await.unwrap(), None);

    // Re-registering moves the key.
    l.register_api_key(&key, &b).await.unwrap();
    assert_eq!(l.lookup_api_key(&key).await.unwrap(), Some(b.clone()));

    assert!(l.revoke_api_key(&key).await.unwrap());
    assert_eq!(l.lookup_api_key(&key).await.unwrap(), None);
    assert!(!l.revoke_api_key(&key).await.unwrap());
    assert!(!l.revoke_api_key(&stranger).await.unwrap());
    assert_conserved(&l, &a).await;
    assert_conserved(&l, &b).await;
}
