//! Reserving: holds, refusals, the bounds on amounts and the credit limit.

use std::time::Duration;

use super::{
    acct, assert_conserved, assert_expires_in, expect_held, expect_insufficient, funded, hold,
    reserve, totals, Harness,
};
use crate::ledger::{Configure, Reserve, ReserveOutcome, SettleOutcome, MAX_AMOUNT};
use crate::{AccountSettings, Ledger, LedgerAdmin, LedgerError, LedgerReports, TopUp};

/// A hold reduces `available` and increases `held`.
pub async fn reserve_holds_credits<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_reserve", 100).await;
    let ttl = Duration::from_secs(60);
    let held = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 30).ttl(ttl))
            .await
            .unwrap(),
    );
    assert_eq!(held.amount, 30);
    assert_eq!(held.available, 70);
    assert_eq!(held.credit_limit, 0);
    assert_eq!(held.thresholds, Vec::<u64>::new());
    assert!(!held.replayed);
    assert_expires_in(held.expires_at_ms, &clock, ttl);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 30, 0, 100, 1));

    let held = expect_held(reserve(&l, &a, &hold("h2"), 20).await);
    assert_eq!((held.amount, held.available), (20, 50));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (50, 50, 0, 100, 2));

    // Everything that is left can be held.
    let held = expect_held(reserve(&l, &a, &hold("h3"), 50).await);
    assert_eq!(held.available, 0);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (0, 100, 0, 100, 3));
}

/// A refused reserve writes nothing and says how much is missing.
pub async fn reserve_insufficient_writes_nothing<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_poor", 10).await;
    let refusal = expect_insufficient(reserve(&l, &a, &hold("h1"), 11).await);
    assert_eq!(
        (refusal.required, refusal.available, refusal.credit_limit),
        (11, 10, 0)
    );
    assert_eq!(refusal.shortfall(), 1);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (10, 0, 0, 10, 0));

    // With a hold out, the refusal reports what is left.
    expect_held(reserve(&l, &a, &hold("h2"), 7).await);
    let refusal = expect_insufficient(reserve(&l, &a, &hold("h3"), 5).await);
    assert_eq!((refusal.required, refusal.available), (5, 3));
    assert_eq!(refusal.shortfall(), 2);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (3, 7, 0, 10, 1));

    // The refused id left no trace: it can hold once there is room.
    l.refund(&a, &hold("h2")).await.unwrap();
    let held = expect_held(reserve(&l, &a, &hold("h1"), 10).await);
    assert!(!held.replayed);
    assert_eq!(held.available, 0);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (0, 10, 0, 10, 1));
}

/// A reserve with a minimum holds what the account can afford, down to the minimum, in one
/// atomic step; below the minimum it is refused for the minimum, writing nothing.
pub async fn an_affordable_hold_takes_what_is_left_down_to_its_minimum<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_range", 30).await;
    // Enough for all of it: the whole amount.
    let held = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 20).min_amount(5))
            .await
            .unwrap(),
    );
    assert_eq!((held.amount, held.available), (20, 10));
    // Not enough for all: what is left, above the minimum.
    let held = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h2"), 50).min_amount(5))
            .await
            .unwrap(),
    );
    assert_eq!((held.amount, held.available), (10, 0));
    // A retry answers the first hold, not a new amount.
    let again = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h2"), 50).min_amount(5))
            .await
            .unwrap(),
    );
    assert_eq!((again.amount, again.replayed), (10, true));
    // Below the minimum: refused for the minimum, nothing written.
    let refusal = expect_insufficient(
        l.reserve(Reserve::new(a.clone(), hold("h3"), 50).min_amount(1))
            .await
            .unwrap(),
    );
    assert_eq!(
        (refusal.required, refusal.available, refusal.shortfall()),
        (1, 0, 1)
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (0, 30, 0, 30, 2));
    // Settling the shrunk hold commits at most what was held.
    let settled = l.commit(&a, &hold("h2"), 50).await.unwrap();
    assert_eq!((settled.committed, settled.clamped), (10, true));
    assert_conserved(&l, &a).await;
}

/// Many ranged reserves racing on one account hold no more than it has, and every one that
/// was served holds at least its minimum.
pub async fn concurrent_affordable_holds_never_overspend<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_race", 100).await;
    let calls = (0..40).map(|i| {
        let (l, a) = (l.clone(), a.clone());
        tokio::spawn(async move {
            let reserve = Reserve::new(a, hold(&format!("r{i}")), 9).min_amount(3);
            l.reserve(reserve).await.unwrap()
        })
    });
    let mut held = 0;
    for call in calls.collect::<Vec<_>>() {
        match call.await.unwrap() {
            ReserveOutcome::Held(h) => {
                assert!((3..=9).contains(&h.amount), "{h:?}");
                held += h.amount;
            }
            ReserveOutcome::Insufficient(i) => assert_eq!(i.required, 3),
            other => panic!("{other:?}"),
        }
    }
    let b = assert_conserved(&l, &a).await;
    assert_eq!(b.held, held);
    assert!(b.available >= 0 && b.available < 3, "{b:?}");
}

/// A reserve on an account never topped up or configured answers `UnknownAccount` (an
/// outcome, not an error) and creates nothing.
pub async fn reserve_unknown_account_creates_nothing<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let ghost = acct("acct_ghost");
    for amount in [0, 1, 10] {
        let r = l
            .reserve(Reserve::new(ghost.clone(), hold("h1"), amount))
            .await;
        assert!(
            matches!(r, Ok(ReserveOutcome::UnknownAccount)),
            "reserve {amount}: {r:?}"
        );
    }
    assert!(matches!(
        l.balance(&ghost).await,
        Err(LedgerError::UnknownAccount)
    ));
    assert!(matches!(
        l.usage(&ghost).await,
        Err(LedgerError::UnknownAccount)
    ));

    // Once it exists, the same hold id holds: the refusal left no tombstone.
    l.top_up(TopUp::new(&ghost, 10, "pay-1")).await.unwrap();
    let held = expect_held(reserve(&l, &ghost, &hold("h1"), 10).await);
    assert!(!held.replayed);
    assert_eq!(
        totals(&assert_conserved(&l, &ghost).await),
        (0, 10, 0, 10, 1)
    );
}

/// Zero credits can be held and committed; nothing moves but the call is counted.
pub async fn zero_amount_reserve_and_commit<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_zero", 5).await;
    let held = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 0).route("GET /free"))
            .await
            .unwrap(),
    );
    assert_eq!((held.amount, held.available), (0, 5));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (5, 0, 0, 5, 1));
    let s = l.commit(&a, &hold("h1"), 0).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    assert_eq!((s.committed, s.released, s.clamped), (0, 0, false));
    assert_eq!(s.available, Some(5));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (5, 0, 0, 5, 0));
    let usage = l.usage(&a).await.unwrap();
    let free = usage.by_route.get("GET /free").expect("route counted");
    assert_eq!((free.credits, free.calls), (0, 1));

    // A zero hold fits an empty account too; a commit of more is clamped to zero.
    let empty = acct("acct_empty");
    l.top_up(TopUp::new(&empty, 0, "nothing")).await.unwrap();
    expect_held(reserve(&l, &empty, &hold("h2"), 0).await);
    let s = l.commit(&empty, &hold("h2"), 3).await.unwrap();
    assert_eq!(
        (s.outcome, s.committed, s.clamped),
        (SettleOutcome::Committed, 0, true)
    );
    assert_eq!(totals(&assert_conserved(&l, &empty).await), (0, 0, 0, 0, 0));
}

/// `MAX_AMOUNT` is accepted everywhere; one more is `AmountOutOfRange` and writes nothing.
pub async fn max_amount_bounds<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let (big, other) = (acct("acct_big"), acct("acct_other"));
    let t = l.top_up(TopUp::new(&big, MAX_AMOUNT, "max")).await.unwrap();
    assert_eq!(t.available, MAX_AMOUNT as i64);

    let too_big = MAX_AMOUNT + 1;
    let is_out_of_range = |r: &LedgerError| {
        matches!(r, LedgerError::AmountOutOfRange { amount, max }
            if *amount == too_big && *max == MAX_AMOUNT)
    };
    let r = l
        .top_up(TopUp::new(&other, too_big, "too-big"))
        .await
        .unwrap_err();
    assert!(is_out_of_range(&r), "{r:?}");
    assert!(matches!(
        l.balance(&other).await,
        Err(LedgerError::UnknownAccount)
    ));
    let r = l
        .top_up(TopUp::new(&big, u64::MAX, "way-too-big"))
        .await
        .unwrap_err();
    assert!(matches!(r, LedgerError::AmountOutOfRange { .. }), "{r:?}");

    let r = l
        .reserve(Reserve::new(big.clone(), hold("h0"), too_big))
        .await
        .unwrap_err();
    assert!(is_out_of_range(&r), "{r:?}");
    assert_eq!(
        totals(&assert_conserved(&l, &big).await),
        (MAX_AMOUNT as i64, 0, 0, MAX_AMOUNT, 0)
    );

    let held = expect_held(reserve(&l, &big, &hold("h1"), MAX_AMOUNT).await);
    assert_eq!((held.amount, held.available), (MAX_AMOUNT, 0));
    let r = l.commit(&big, &hold("h1"), too_big).await.unwrap_err();
    assert!(is_out_of_range(&r), "{r:?}");
    // The hold is still open after the refused commit.
    assert_eq!(
        totals(&assert_conserved(&l, &big).await),
        (0, MAX_AMOUNT, 0, MAX_AMOUNT, 1)
    );
    let s = l.commit(&big, &hold("h1"), MAX_AMOUNT).await.unwrap();
    assert_eq!(
        (s.outcome, s.committed),
        (SettleOutcome::Committed, MAX_AMOUNT)
    );
    assert_eq!(
        totals(&assert_conserved(&l, &big).await),
        (0, 0, MAX_AMOUNT, MAX_AMOUNT, 0)
    );

    // Settings are amounts too.
    let r = l
        .configure(Configure::new(
            &other,
            AccountSettings::new().credit_limit(too_big),
        ))
        .await
        .unwrap_err();
    assert!(is_out_of_range(&r), "{r:?}");
    assert!(matches!(
        l.balance(&other).await,
        Err(LedgerError::UnknownAccount)
    ));
}

/// A top-up that would push `topped_up` past `MAX_AMOUNT` is refused and changes nothing,
/// not even its idempotency key.
pub async fn top_up_past_max_total_is_refused<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_full", MAX_AMOUNT - 5).await;
    for (amount, key) in [(6, "six"), (MAX_AMOUNT, "max")] {
        match l.top_up(TopUp::new(&a, amount, key)).await {
            Err(LedgerError::TotalOutOfRange { max, .. }) => assert_eq!(max, MAX_AMOUNT),
            other => panic!("expected TotalOutOfRange, got {other:?}"),
        }
    }
    let b = assert_conserved(&l, &a).await;
    assert_eq!(
        totals(&b),
        ((MAX_AMOUNT - 5) as i64, 0, 0, MAX_AMOUNT - 5, 0)
    );

    // The refused key was not recorded: it may now credit another amount.
    let t = l.top_up(TopUp::new(&a, 5, "six")).await.unwrap();
    assert_eq!((t.replayed, t.available), (false, MAX_AMOUNT as i64));
    assert!(matches!(
        l.top_up(TopUp::new(&a, 1, "one-more")).await,
        Err(LedgerError::TotalOutOfRange { .. })
    ));
    assert_eq!(assert_conserved(&l, &a).await.topped_up, MAX_AMOUNT);
}

/// With an overdraft, a reserve that would push `held` past `MAX_AMOUNT` is refused and
/// changes nothing.
pub async fn reserve_past_max_total_is_refused<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_huge", MAX_AMOUNT).await;
    l.configure(Configure::new(
        &a,
        AccountSettings::new().credit_limit(MAX_AMOUNT),
    ))
    .await
    .unwrap();
    expect_held(reserve(&l, &a, &hold("h1"), MAX_AMOUNT).await);
    let r = l.reserve(Reserve::new(a.clone(), hold("h2"), 1)).await;
    assert!(
        matches!(r, Err(LedgerError::TotalOutOfRange { max, .. }) if max == MAX_AMOUNT),
        "{r:?}"
    );
    let b = assert_conserved(&l, &a).await;
    assert_eq!(totals(&b), (0, MAX_AMOUNT, 0, MAX_AMOUNT, 1));
    // The refused id left no trace.
    l.refund(&a, &hold("h1")).await.unwrap();
    assert!(!expect_held(reserve(&l, &a, &hold("h2"), 1).await).replayed);
}

/// `available` may go down to `-credit_limit`, not below, and refusals report the limit.
pub async fn overdraft_with_credit_limit<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_overdraft", 10).await;
    l.configure(Configure::new(&a, AccountSettings::new().credit_limit(20)))
        .await
        .unwrap();
    let b = assert_conserved(&l, &a).await;
    assert_eq!((b.available, b.credit_limit), (10, 20));

    let held = expect_held(reserve(&l, &a, &hold("h1"), 25).await);
    assert_eq!((held.available, held.credit_limit), (-15, 20));

    let refusal = expect_insufficient(reserve(&l, &a, &hold("h2"), 6).await);
    assert_eq!(
        (refusal.required, refusal.available, refusal.credit_limit),
        (6, -15, 20)
    );
    assert_eq!(refusal.shortfall(), 1, "6 - (-15 + 20)");

    let held = expect_held(reserve(&l, &a, &hold("h3"), 5).await);
    assert_eq!(held.available, -20);
    expect_held(reserve(&l, &a, &hold("h4"), 0).await);
    let refusal = expect_insufficient(reserve(&l, &a, &hold("h5"), 1).await);
    assert_eq!((refusal.available, refusal.shortfall()), (-20, 1));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (-20, 30, 0, 10, 3));

    for id in ["h1", "h3", "h4"] {
        let s = l.commit(&a, &hold(id), 100).await.unwrap();
        assert_eq!(s.outcome, SettleOutcome::Committed);
    }
    let b = assert_conserved(&l, &a).await;
    assert_eq!(totals(&b), (-20, 0, 30, 10, 0));

    // Lowering the limit below the debt refuses even a zero hold until a top-up.
    l.configure(Configure::new(&a, AccountSettings::new().credit_limit(5)))
        .await
        .unwrap();
    let refusal = expect_insufficient(reserve(&l, &a, &hold("h6"), 0).await);
    assert_eq!((refusal.available, refusal.credit_limit), (-20, 5));
    assert_eq!(refusal.shortfall(), 15);
    l.top_up(TopUp::new(&a, 15, "pay-2")).await.unwrap();
    assert_eq!(
        expect_held(reserve(&l, &a, &hold("h6"), 0).await).available,
        -5
    );

    // `configure` creates an account.
    let fresh = acct("acct_fresh");
    l.configure(Configure::new(
        &fresh,
        AccountSettings::new().credit_limit(5),
    ))
    .await
    .unwrap();
    let b = assert_conserved(&l, &fresh).await;
    assert_eq!((totals(&b), b.credit_limit), ((0, 0, 0, 0, 0), 5));
    assert_eq!(
        expect_held(reserve(&l, &fresh, &hold("h1"), 5).await).available,
        -5
    );
    assert_conserved(&l, &a).await;
    assert_conserved(&l, &fresh).await;
}

/// A ledger that says it answers in process ([`Ledger::IN_PROCESS`]) does: its reserve,
/// extend, grow and settle are ready on their first poll, made and polled on a plain
/// thread (no task, no runtime) with a waker that never wakes, and answer as awaited ones
/// would. (Nothing to check for any other ledger.)
pub async fn an_in_process_ledger_answers_on_the_first_poll<H: Harness>(h: &H) {
    if !H::L::IN_PROCESS {
        return;
    }
    let (l, _clock, a) = funded(h, "acct_in_process", 100).await;
    let answers = std::thread::spawn(move || {
        fn now<T>(mut fut: impl std::future::Future<Output = T> + Unpin) -> T {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::pin::Pin::new(&mut fut).poll(&mut cx) {
                std::task::Poll::Ready(answer) => answer,
                std::task::Poll::Pending => panic!("an in-process ledger left a call pending"),
            }
        }
        let held = now(l.reserve(Reserve::new(a.clone(), hold("h1"), 30)));
        let ttl = Duration::from_secs(60);
        let extended = now(l.extend(crate::ledger::Extend::new(&a, hold("h1"), ttl)));
        let grown = now(l.grow(crate::ledger::Grow::to(&a, hold("h1"), 40)));
        let settled = now(l.settle(crate::ledger::Settle::commit(&a, hold("h1"), 25)));
        (held, extended, grown, settled, l, a)
    })
    .join()
    .expect("polled on a plain thread");
    let (held, extended, grown, settled, l, a) = answers;
    assert_eq!(expect_held(held.unwrap()).amount, 30);
    assert!(matches!(
        extended.unwrap(),
        crate::ledger::Extended::Until(_)
    ));
    assert!(matches!(
        grown.unwrap(),
        crate::ledger::GrowOutcome::Grown(_)
    ));
    let settled = settled.unwrap();
    assert_eq!(
        (settled.outcome, settled.committed),
        (SettleOutcome::Committed, 25)
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (75, 0, 25, 100, 0));
}
