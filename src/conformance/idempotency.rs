//! Idempotent requests: a keyed reserve claims its key; a retry holds nothing and learns
//! what the first request came to.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{acct, assert_conserved, expect_held, funded, hold, totals, Harness};
use crate::ledger::idempotency::STORE_GRACE;
use crate::ledger::{
    HoldId, IdempotencyClaim, Replay, Reserve, ReserveOutcome, Settle, StoreResponse,
};
use crate::{AccountId, Ledger, LedgerAdmin, TopUp};

fn claim(key: &str, fingerprint: u8) -> IdempotencyClaim {
    IdempotencyClaim::new(key, [fingerprint; 32]).expect("a valid key")
}

async fn keyed<L: Ledger>(
    l: &L,
    a: &AccountId,
    id: &HoldId,
    amount: u64,
    claim: IdempotencyClaim,
) -> ReserveOutcome {
    l.reserve(Reserve::new(a.clone(), id.clone(), amount).idempotency(claim))
        .await
        .unwrap()
}

#[track_caller]
fn expect_replay(outcome: ReserveOutcome) -> Replay {
    match outcome {
        ReserveOutcome::Replay(replay) => replay,
        other => panic!("expected a replay, got {other:?}"),
    }
}

/// The life of a key: claimed by the first reserve; a retry while it runs is in
/// progress, with another request is a reused key; once committed, in progress until its
/// response is stored, then replayed. No retry holds anything.
pub async fn a_keyed_request_is_replayed_once_stored<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_idem", 100).await;
    let first = hold("first");
    let c = claim("order-1", 1);
    expect_held(keyed(&l, &a, &first, 30, c.clone()).await);

    let retry = |id: &'static str, c: IdempotencyClaim| {
        let (l, a) = (l.clone(), a.clone());
        async move { expect_replay(keyed(&l, &a, &hold(id), 30, c).await) }
    };
    assert_eq!(retry("r1", c.clone()).await, Replay::InProgress);
    assert_eq!(retry("r2", claim("order-1", 2)).await, Replay::KeyReused);

    let s = l
        .settle(Settle::commit(&a, &first, 12).idempotency(*c.key()))
        .await
        .unwrap();
    assert_eq!(s.committed, 12);
    assert_eq!(
        retry("r3", c.clone()).await,
        Replay::InProgress,
        "not stored yet"
    );

    let stored = l
        .store_response(StoreResponse::new(
            a.clone(),
            first.clone(),
            *c.key(),
            Bytes::from_static(b"the response"),
        ))
        .await
        .unwrap();
    assert!(stored);
    assert_eq!(
        retry("r4", c.clone()).await,
        Replay::Stored {
            response: Bytes::from_static(b"the response"),
            available: 88
        }
    );
    assert_eq!(retry("r5", claim("order-1", 2)).await, Replay::KeyReused);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (88, 0, 12, 100, 0));
}

/// A refunded request, or one whose hold expired unsettled, charged nothing: its key is
/// free again and the retry runs (and holds).
pub async fn a_refunded_or_expired_request_runs_again<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_idem_again", 100).await;
    let c = claim("order-2", 1);
    expect_held(keyed(&l, &a, &hold("h1"), 10, c.clone()).await);
    l.settle(Settle::refund(&a, hold("h1")).idempotency(*c.key()))
        .await
        .unwrap();
    expect_held(
        l.reserve(
            Reserve::new(a.clone(), hold("h2"), 10)
                .ttl(Duration::from_secs(10))
                .idempotency(c.clone()),
        )
        .await
        .unwrap(),
    );
    clock.advance(Duration::from_secs(11));
    expect_held(keyed(&l, &a, &hold("h3"), 10, c.clone()).await);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (90, 10, 0, 100, 1));
}

/// The crash window: a request committed whose response was never stored (its replica
/// stopped) is in progress for [`STORE_GRACE`], then unavailable, and never runs again.
/// A response too large to store is unavailable at once.
pub async fn a_committed_request_never_runs_again<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_idem_crash", 100).await;
    let c = claim("order-3", 1);
    expect_held(keyed(&l, &a, &hold("h1"), 10, c.clone()).await);
    l.settle(Settle::commit(&a, hold("h1"), 10).idempotency(*c.key()))
        .await
        .unwrap();
    clock.advance(STORE_GRACE + Duration::from_secs(1));
    let replay = expect_replay(keyed(&l, &a, &hold("h2"), 10, c).await);
    assert_eq!(replay, Replay::Unavailable);

    let big = claim("order-4", 1);
    expect_held(keyed(&l, &a, &hold("h3"), 10, big.clone()).await);
    l.settle(Settle::commit(&a, hold("h3"), 10).idempotency(*big.key()))
        .await
        .unwrap();
    let marked = l
        .store_response(StoreResponse::unavailable(
            a.clone(),
            hold("h3"),
            *big.key(),
        ))
        .await
        .unwrap();
    assert!(marked);
    let replay = expect_replay(keyed(&l, &a, &hold("h4"), 10, big).await);
    assert_eq!(replay, Replay::Unavailable);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (80, 0, 20, 100, 0));
}

/// Keys are per account, a record lives its retention and no longer, and a store for a
/// hold that did not make the record changes nothing.
pub async fn keys_are_per_account_and_expire<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_idem_a", 100).await;
    let b = acct("acct_idem_b");
    l.top_up(TopUp::new(&b, 100, "initial-b")).await.unwrap();
    let c = claim("shared-key", 1).retention(Duration::from_secs(60));
    expect_held(keyed(&l, &a, &hold("a1"), 10, c.clone()).await);
    expect_held(keyed(&l, &b, &hold("b1"), 10, c.clone()).await);

    let other = l
        .store_response(StoreResponse::new(
            a.clone(),
            hold("b1"),
            *c.key(),
            Bytes::from_static(b"not mine"),
        ))
        .await
        .unwrap();
    assert!(!other, "a store for another hold's record");

    l.settle(Settle::commit(&a, hold("a1"), 5).idempotency(*c.key()))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(61));
    expect_held(keyed(&l, &a, &hold("a2"), 10, c).await);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (85, 10, 5, 100, 1));
}

/// 8 reserves race with one key: exactly one holds; the others hold nothing and are told
/// the request is in progress.
pub async fn concurrent_duplicates_hold_once<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_idem_race", 100).await;
    let c = Arc::new(claim("order-race", 1));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (l, a, c) = (l.clone(), a.clone(), c.clone());
            tokio::spawn(
                async move { keyed(&l, &a, &hold(&format!("d{i}")), 10, (*c).clone()).await },
            )
        })
        .collect();
    let mut held = 0;
    for task in tasks {
        match task.await.unwrap() {
            ReserveOutcome::Held(_) => held += 1,
            ReserveOutcome::Replay(Replay::InProgress) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(held, 1);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (90, 10, 0, 100, 1));
}
