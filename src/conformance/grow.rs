//! Growing a hold: what lets a stream go on past its first hold, and never past the
//! account's credits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{acct, assert_conserved, expect_held, funded, hold, reserve, totals, Harness};
use crate::ledger::{
    AccountSettings, Configure, Grow, GrowOutcome, Grown, Insufficient, Reserve, SettleOutcome,
    MAX_AMOUNT,
};
use crate::{Ledger, LedgerAdmin, LedgerError};

/// The raise, or a panic naming what came instead.
#[track_caller]
fn expect_grown(outcome: GrowOutcome) -> Grown {
    match outcome {
        GrowOutcome::Grown(grown) => grown,
        other => panic!("expected a grown hold, got {other:?}"),
    }
}

/// The refusal, or a panic naming what came instead.
#[track_caller]
fn expect_refused(outcome: GrowOutcome) -> Insufficient {
    match outcome {
        GrowOutcome::Insufficient(refusal) => refusal,
        other => panic!("expected Insufficient, got {other:?}"),
    }
}

/// A grow raises an open hold to its new total; the commit is clamped to the grown hold,
/// not the first one; conservation holds throughout.
pub async fn grow_raises_an_open_hold<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_grow", 100).await;
    expect_held(reserve(&l, &a, &hold("s1"), 10).await);
    let grown = expect_grown(l.grow(Grow::to(&a, hold("s1"), 30)).await.unwrap());
    assert_eq!((grown.amount, grown.available), (30, 70));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 30, 0, 100, 1));

    let s = l.commit(&a, &hold("s1"), 40).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    assert_eq!((s.committed, s.released, s.clamped), (30, 0, true));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 0, 30, 100, 0));
}

/// A grow names the hold's new total, so a retried one (a timeout, a replayed call) holds
/// nothing twice, and a total below the hold changes nothing.
pub async fn a_retried_grow_holds_nothing_twice<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_grow_retry", 100).await;
    expect_held(reserve(&l, &a, &hold("s1"), 10).await);
    for _ in 0..3 {
        let grown = expect_grown(l.grow(Grow::to(&a, hold("s1"), 25)).await.unwrap());
        assert_eq!((grown.amount, grown.available), (25, 75));
    }
    let grown = expect_grown(l.grow(Grow::to(&a, hold("s1"), 5)).await.unwrap());
    assert_eq!((grown.amount, grown.available), (25, 75));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (75, 25, 0, 100, 1));
}

/// A grow the account cannot afford writes nothing and says what it lacks; with a least
/// total it takes what is left, down to that total; an overdraft counts as for a reserve.
pub async fn an_unaffordable_grow_writes_nothing<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_grow_poor", 100).await;
    expect_held(reserve(&l, &a, &hold("s1"), 60).await);

    let refusal = expect_refused(l.grow(Grow::to(&a, hold("s1"), 150)).await.unwrap());
    assert_eq!((refusal.required, refusal.available), (90, 40));
    assert_eq!(refusal.shortfall(), 50);
    let refusal = expect_refused(
        l.grow(Grow::to(&a, hold("s1"), 150).at_least(101))
            .await
            .unwrap(),
    );
    assert_eq!((refusal.required, refusal.available), (41, 40));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (40, 60, 0, 100, 1));

    // What is left, down to the least total.
    let grown = expect_grown(
        l.grow(Grow::to(&a, hold("s1"), 150).at_least(61))
            .await
            .unwrap(),
    );
    assert_eq!((grown.amount, grown.available), (100, 0));
    let refusal = expect_refused(
        l.grow(Grow::to(&a, hold("s1"), 101).at_least(101))
            .await
            .unwrap(),
    );
    assert_eq!((refusal.required, refusal.available), (1, 0));

    // An overdraft allowance is spendable, and no further.
    l.configure(Configure::new(&a, AccountSettings::new().credit_limit(5)))
        .await
        .unwrap();
    let grown = expect_grown(l.grow(Grow::to(&a, hold("s1"), 105)).await.unwrap());
    assert_eq!((grown.amount, grown.available), (105, -5));
    let refusal = expect_refused(l.grow(Grow::to(&a, hold("s1"), 106)).await.unwrap());
    assert_eq!((refusal.available, refusal.credit_limit), (-5, 5));
    assert_eq!(
        totals(&assert_conserved(&l, &a).await),
        (-5, 105, 0, 100, 1)
    );
}

/// A hold that is not open cannot grow, however it closed; nothing moves.
pub async fn grow_of_a_closed_hold_is_not_open<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_grow_closed", 100).await;
    expect_held(reserve(&l, &a, &hold("c"), 10).await);
    expect_held(reserve(&l, &a, &hold("r"), 10).await);
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("e"), 10).ttl(Duration::from_secs(10)))
            .await
            .unwrap(),
    );
    l.commit(&a, &hold("c"), 4).await.unwrap();
    l.refund(&a, &hold("r")).await.unwrap();
    clock.advance(Duration::from_secs(11));

    let cases = [
        ("c", SettleOutcome::AlreadyCommitted),
        ("r", SettleOutcome::AlreadyRefunded),
        ("e", SettleOutcome::Expired),
        ("never", SettleOutcome::Unknown),
    ];
    for (id, how) in cases {
        let outcome = l.grow(Grow::to(&a, hold(id), 50)).await.unwrap();
        assert_eq!(outcome, GrowOutcome::NotOpen(how), "{id}");
    }
    let ghost = acct("acct_grow_ghost");
    assert_eq!(
        l.grow(Grow::to(&ghost, hold("c"), 50)).await.unwrap(),
        GrowOutcome::NotOpen(SettleOutcome::Unknown)
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (96, 0, 4, 100, 0));
}

/// A total past [`MAX_AMOUNT`] is invalid input; a raise that would take the account's
/// totals past it is refused as out of range; neither writes anything.
pub async fn grow_past_max_total_is_refused<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_grow_max", 100).await;
    expect_held(reserve(&l, &a, &hold("s1"), 10).await);
    let err = l
        .grow(Grow::to(&a, hold("s1"), MAX_AMOUNT + 1))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::AmountOutOfRange { .. }), "{err}");
    // An overdraft as large as it may be: the raise fits the balance, not the totals.
    l.configure(Configure::new(
        &a,
        AccountSettings::new().credit_limit(MAX_AMOUNT),
    ))
    .await
    .unwrap();
    expect_held(reserve(&l, &a, &hold("s2"), 50).await);
    let err = l
        .grow(Grow::to(&a, hold("s1"), MAX_AMOUNT - 20))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::TotalOutOfRange { .. }),
        "{err:?}"
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (40, 60, 0, 100, 2));
}

/// 16 streams on one account each start with a small hold and grow it step by step while
/// the account affords it, metering what they deliver; each commits what it delivered.
/// No grow ever takes the account below zero, every credit is accounted for, and the
/// account is spent to the last credit.
pub async fn concurrent_grows_never_overspend<H: Harness>(h: &H) {
    const STREAMS: u64 = 16;
    const CREDITS: u64 = 500;
    const FIRST: u64 = 5;
    const STEP: u64 = 7;
    let (l, _clock, a) = funded(h, "acct_grow_race", CREDITS).await;
    let delivered = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::new();
    for stream in 0..STREAMS {
        let (l, a, delivered) = (l.clone(), a.clone(), delivered.clone());
        tasks.push(tokio::spawn(async move {
            let id = hold(&format!("stream-{stream}"));
            let held = match l
                .reserve(Reserve::new(a.clone(), id.clone(), FIRST))
                .await
                .unwrap()
            {
                crate::ledger::ReserveOutcome::Held(held) => held.amount,
                crate::ledger::ReserveOutcome::Insufficient(_) => return,
                other => panic!("unexpected {other:?}"),
            };
            // Each round delivers (and meters) all the hold covers, then grows it.
            let mut hold_total = held;
            loop {
                if stream % 3 == 0 {
                    tokio::task::yield_now().await;
                }
                let grow = Grow::to(&a, id.clone(), hold_total + STEP).at_least(hold_total + 1);
                match l.grow(grow).await.unwrap() {
                    GrowOutcome::Grown(grown) => {
                        assert!(grown.available >= 0, "overspent: {grown:?}");
                        assert!(grown.amount > hold_total, "{grown:?} after {hold_total}");
                        hold_total = grown.amount;
                    }
                    GrowOutcome::Insufficient(refusal) => {
                        assert!(refusal.available <= 0, "refused with credits: {refusal:?}");
                        break;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            let s = l.commit(&a, &id, hold_total).await.unwrap();
            assert_eq!((s.committed, s.released), (hold_total, 0));
            delivered.fetch_add(hold_total, Ordering::SeqCst);
        }));
    }
    for task in tasks {
        task.await.expect("a stream panicked");
    }
    let b = assert_conserved(&l, &a).await;
    assert_eq!(totals(&b), (0, 0, CREDITS, CREDITS, 0));
    assert_eq!(delivered.load(Ordering::SeqCst), CREDITS);
}
