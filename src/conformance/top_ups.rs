//! Top-ups: crediting an account once per payment id, and what a refused top-up leaves.

use super::{acct, assert_conserved, expect_held, funded, hold, reserve, totals, Harness};
use crate::ledger::{ErrorKind, MAX_AMOUNT};
use crate::{AccountId, LedgerAdmin, LedgerError, LedgerReports, TopUp};

/// A top-up credits the account, which then shows in its balance.
pub async fn top_up_then_balance<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let a = acct("acct_top_up");
    assert!(matches!(
        l.balance(&a).await,
        Err(LedgerError::UnknownAccount)
    ));

    let t = l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    assert_eq!((t.amount, t.replayed, t.available), (100, false, 100));
    let t = l.top_up(TopUp::new(&a, 25, "pay-2")).await.unwrap();
    assert_eq!((t.amount, t.replayed, t.available), (25, false, 125));

    let b = assert_conserved(&l, &a).await;
    assert_eq!(totals(&b), (125, 0, 0, 125, 0));
    assert_eq!(b.credit_limit, 0);
    assert_eq!(b.thresholds, Vec::<u64>::new());
    assert_eq!(b.runway_secs, None, "nothing spent yet: no runway");
    assert!(l.usage(&a).await.unwrap().by_route.is_empty());
}

/// The same key with the same amount credits once and says it replayed.
pub async fn top_up_replay_is_idempotent<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let a = acct("acct_replay");
    let first = l.top_up(TopUp::new(&a, 100, "pay_123")).await.unwrap();
    assert!(!first.replayed);
    let again = l.top_up(TopUp::new(&a, 100, "pay_123")).await.unwrap();
    assert_eq!(
        (again.amount, again.replayed, again.available),
        (100, true, 100)
    );

    // Still credited once after the balance moved.
    expect_held(reserve(&l, &a, &hold("h1"), 30).await);
    let again = l.top_up(TopUp::new(&a, 100, "pay_123")).await.unwrap();
    assert_eq!((again.amount, again.replayed), (100, true));
    let b = assert_conserved(&l, &a).await;
    assert_eq!(totals(&b), (70, 30, 0, 100, 1));
}

/// The same key with another amount is a typed conflict and changes nothing.
pub async fn top_up_same_key_other_amount_conflicts<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let a = acct("acct_conflict");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    match l.top_up(TopUp::new(&a, 99, "pay-1")).await {
        Err(LedgerError::TopUpConflict {
            first_amount,
            amount,
        }) => assert_eq!((first_amount, amount), (100, 99)),
        other => panic!("expected TopUpConflict, got {other:?}"),
    }
    // The key keeps its first amount.
    assert!(
        l.top_up(TopUp::new(&a, 100, "pay-1"))
            .await
            .unwrap()
            .replayed
    );
    let b = assert_conserved(&l, &a).await;
    assert_eq!(totals(&b), (100, 0, 0, 100, 0));
}

/// The key is another account's, or a panic naming what came instead.
#[track_caller]
fn assert_claimed_by<T: std::fmt::Debug>(r: Result<T, LedgerError>, owner: &AccountId) {
    match r {
        Err(e @ LedgerError::TopUpKeyClaimed { .. }) => {
            assert_eq!(e.kind(), ErrorKind::Conflict);
            let LedgerError::TopUpKeyClaimed { account } = e else {
                unreachable!()
            };
            assert_eq!(&account, owner);
        }
        other => panic!("expected TopUpKeyClaimed by {owner}, got {other:?}"),
    }
}

/// A payment id (the idempotency key) credits exactly one account, once: the same key on
/// another account is a typed conflict that credits nothing, whatever the amount; the
/// first account still replays it.
pub async fn a_payment_id_credits_one_account_once<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let (a, b) = (acct("acct_a"), acct("acct_b"));
    let ta = l.top_up(TopUp::new(&a, 100, "pay_1")).await.unwrap();
    assert_eq!((ta.replayed, ta.available), (false, 100));
    // Another account: refused, and the account is not even created.
    for amount in [100, 40] {
        assert_claimed_by(l.top_up(TopUp::new(&b, amount, "pay_1")).await, &a);
    }
    assert!(matches!(
        l.balance(&b).await,
        Err(LedgerError::UnknownAccount)
    ));
    // An existing account is not credited either.
    l.top_up(TopUp::new(&b, 5, "pay_2")).await.unwrap();
    assert_claimed_by(l.top_up(TopUp::new(&b, 100, "pay_1")).await, &a);
    assert_eq!(totals(&assert_conserved(&l, &b).await), (5, 0, 0, 5, 0));
    assert_claimed_by(l.top_up(TopUp::new(&a, 5, "pay_2")).await, &b);

    // The first account replays its key, and a conflict on the amount stays a conflict.
    let again = l.top_up(TopUp::new(&a, 100, "pay_1")).await.unwrap();
    assert_eq!(
        (again.amount, again.replayed, again.available),
        (100, true, 100)
    );
    let conflict = l.top_up(TopUp::new(&a, 99, "pay_1")).await.unwrap_err();
    assert!(
        matches!(
            conflict,
            LedgerError::TopUpConflict {
                first_amount: 100,
                amount: 99
            }
        ),
        "{conflict:?}"
    );
    assert_eq!(conflict.kind(), ErrorKind::Conflict);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (100, 0, 0, 100, 0));
    assert_eq!(totals(&assert_conserved(&l, &b).await), (5, 0, 0, 5, 0));
}

/// A top-up refused after its key was claimed (a total past `MAX_AMOUNT`) gives the key
/// back: it can then be used again, on the same account or another one.
pub async fn a_refused_top_up_frees_its_key<H: Harness>(h: &H) {
    let (l, _clock, full) = funded(h, "acct_full_key", MAX_AMOUNT - 5).await;
    let other = acct("acct_other_key");
    let r = l
        .top_up(TopUp::new(&full, 6, "pay_refused"))
        .await
        .unwrap_err();
    assert!(matches!(r, LedgerError::TotalOutOfRange { .. }), "{r:?}");
    assert_eq!(r.kind(), ErrorKind::InvalidInput);
    // Free on another account...
    let t = l
        .top_up(TopUp::new(&other, 7, "pay_refused"))
        .await
        .unwrap();
    assert_eq!((t.replayed, t.available), (false, 7));
    assert_claimed_by(l.top_up(TopUp::new(&full, 5, "pay_refused")).await, &other);

    // ... and on the same account, with an amount that fits.
    let r = l
        .top_up(TopUp::new(&full, 6, "pay_again"))
        .await
        .unwrap_err();
    assert!(matches!(r, LedgerError::TotalOutOfRange { .. }), "{r:?}");
    let t = l.top_up(TopUp::new(&full, 5, "pay_again")).await.unwrap();
    assert_eq!((t.replayed, t.available), (false, MAX_AMOUNT as i64));
    assert!(
        l.top_up(TopUp::new(&full, 5, "pay_again"))
            .await
            .unwrap()
            .replayed
    );
    assert_claimed_by(l.top_up(TopUp::new(&other, 5, "pay_again")).await, &full);
    assert_eq!(
        totals(&assert_conserved(&l, &full).await),
        (MAX_AMOUNT as i64, 0, 0, MAX_AMOUNT, 0)
    );
    assert_eq!(totals(&assert_conserved(&l, &other).await), (7, 0, 0, 7, 0));
}

/// Eight accounts race to top up with one key: exactly one is credited, once; every other
/// one is told which account holds the key and is not created.
pub async fn concurrent_top_ups_of_one_key_credit_one_account<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let ids: Vec<AccountId> = (0..8).map(|i| acct(&format!("acct_race_{i}"))).collect();
    let tasks: Vec<_> = ids
        .iter()
        .cloned()
        .map(|a| {
            let l = l.clone();
            tokio::spawn(async move { l.top_up(TopUp::new(&a, 10, "pay_race")).await })
        })
        .collect();
    let mut winners = Vec::new();
    let mut owners = Vec::new();
    for (a, task) in ids.iter().zip(tasks) {
        match task.await.expect("task panicked") {
            Ok(t) => {
                assert_eq!((t.amount, t.replayed, t.available), (10, false, 10));
                winners.push(a.clone());
            }
            Err(LedgerError::TopUpKeyClaimed { account }) => owners.push(account),
            Err(e) => panic!("top-up of {a}: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "credited: {winners:?}");
    assert!(owners.iter().all(|o| *o == winners[0]), "{owners:?}");
    for a in &ids {
        if *a == winners[0] {
            assert_eq!(totals(&assert_conserved(&l, a).await), (10, 0, 0, 10, 0));
        } else {
            assert!(matches!(
                l.balance(a).await,
                Err(LedgerError::UnknownAccount)
            ));
        }
    }
}
