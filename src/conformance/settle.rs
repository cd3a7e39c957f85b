//! Settling: commits, refunds, replays, expiry and extension of holds.

use std::time::Duration;

use super::{
    acct, assert_conserved, assert_expires_in, expect_held, funded, hold, reserve, totals, Harness,
};
use crate::ledger::{
    Extend, Extended, Reserve, ReserveOutcome, SettleOutcome, Settlement, MAX_HOLD_TTL,
};
use crate::{Ledger, LedgerAdmin, LedgerError, LedgerReports, TopUp};

/// Asserts a settlement that moved nothing and says `outcome`.
#[track_caller]
fn assert_nothing_moved(s: &Settlement, outcome: SettleOutcome) {
    assert_eq!(s.outcome, outcome, "{s:?}");
    assert_eq!((s.committed, s.released, s.clamped), (0, 0, false), "{s:?}");
    assert!(s.events.is_empty(), "{s:?}");
    assert!(!s.outcome.is_applied());
}

/// A commit of less than the hold charges that much and releases the rest.
pub async fn commit_less_than_hold_releases_rest<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_commit", 100).await;
    expect_held(reserve(&l, &a, &hold("h1"), 40).await);
    let s = l.commit(&a, &hold("h1"), 15).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    assert_eq!((s.committed, s.released, s.clamped), (15, 25, false));
    assert_eq!(s.available, Some(85));
    assert!(s.events.is_empty());
    assert!(s.outcome.is_applied());
    assert_eq!(totals(&assert_conserved(&l, &a).await), (85, 0, 15, 100, 0));
}

/// A commit of more than the hold is clamped to the hold.
pub async fn commit_more_than_hold_is_clamped<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_clamp", 100).await;
    expect_held(reserve(&l, &a, &hold("h1"), 40).await);
    let s = l.commit(&a, &hold("h1"), 55).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    assert_eq!((s.committed, s.released, s.clamped), (40, 0, true));
    assert_eq!(s.available, Some(60));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (60, 0, 40, 100, 0));

    // Exactly the hold is not clamped.
    expect_held(reserve(&l, &a, &hold("h2"), 10).await);
    let s = l.commit(&a, &hold("h2"), 10).await.unwrap();
    assert_eq!((s.committed, s.released, s.clamped), (10, 0, false));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (50, 0, 50, 100, 0));
}

/// A refund gives the whole hold back.
pub async fn refund_gives_everything_back<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_refund", 100).await;
    expect_held(reserve(&l, &a, &hold("h1"), 40).await);
    let s = l.refund(&a, &hold("h1")).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Refunded);
    assert_eq!((s.committed, s.released, s.clamped), (0, 40, false));
    assert_eq!(s.available, Some(100));
    assert!(s.outcome.is_applied());
    assert_eq!(totals(&assert_conserved(&l, &a).await), (100, 0, 0, 100, 0));
    assert!(
        l.usage(&a).await.unwrap().by_route.is_empty(),
        "refunds are not usage"
    );
}

/// A second commit of the same hold is `AlreadyCommitted` and moves nothing; so is a
/// refund after the commit and a reserve of the same id.
pub async fn double_commit_moves_nothing<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_double", 100).await;
    expect_held(reserve(&l, &a, &hold("h1"), 40).await);
    assert_eq!(l.commit(&a, &hold("h1"), 10).await.unwrap().committed, 10);
    let s = l.commit(&a, &hold("h1"), 10).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::AlreadyCommitted);
    assert_eq!(s.available, Some(90));
    let s = l.refund(&a, &hold("h1")).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::AlreadyCommitted);
    assert_eq!(
        reserve(&l, &a, &hold("h1"), 40).await,
        ReserveOutcome::Closed(SettleOutcome::AlreadyCommitted)
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (90, 0, 10, 100, 0));
    let usage = l.usage(&a).await.unwrap();
    assert_eq!(
        usage.by_route.get("").map(|u| (u.credits, u.calls)),
        Some((10, 1))
    );
}

/// A commit after a refund is `AlreadyRefunded` and moves nothing.
pub async fn commit_after_refund_is_already_refunded<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_refunded", 100).await;
    expect_held(reserve(&l, &a, &hold("h1"), 40).await);
    l.refund(&a, &hold("h1")).await.unwrap();
    let s = l.commit(&a, &hold("h1"), 40).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::AlreadyRefunded);
    assert_eq!(s.available, Some(100));
    let s = l.refund(&a, &hold("h1")).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::AlreadyRefunded);
    assert_eq!(
        reserve(&l, &a, &hold("h1"), 40).await,
        ReserveOutcome::Closed(SettleOutcome::AlreadyRefunded)
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (100, 0, 0, 100, 0));
}

/// A refund of an id never seen says `Unknown` and leaves a tombstone: the reserve that
/// arrives after its own refund never holds.
pub async fn refund_of_unknown_hold_leaves_tombstone<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_tombstone", 50).await;
    let late = hold("late-reserve");
    let s = l.refund(&a, &late).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::Unknown);
    assert_eq!(s.available, Some(50));

    let r = reserve(&l, &a, &late, 10).await;
    assert!(matches!(r, ReserveOutcome::Closed(_)), "{r:?}");
    assert_eq!(totals(&assert_conserved(&l, &a).await), (50, 0, 0, 50, 0));
    // Nothing to commit or extend either.
    let s = l.commit(&a, &late, 10).await.unwrap();
    assert!(!s.outcome.is_applied() && s.committed == 0, "{s:?}");
    assert!(matches!(
        l.extend(Extend::new(&a, &late, Duration::from_secs(60)))
            .await
            .unwrap(),
        Extended::NotOpen(_)
    ));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (50, 0, 0, 50, 0));
}

/// A commit of an id never seen says `Unknown`, moves nothing and leaves no tombstone.
pub async fn commit_of_unknown_hold_moves_nothing<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_unknown_hold", 50).await;
    expect_held(reserve(&l, &a, &hold("other"), 5).await);
    let s = l.commit(&a, &hold("never"), 10).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::Unknown);
    assert_eq!(s.available, Some(45));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (45, 5, 0, 50, 1));
    assert!(l.usage(&a).await.unwrap().by_route.is_empty());
    // A hold belongs to its account: another account cannot settle it.
    let b = acct("acct_stranger");
    l.top_up(TopUp::new(&b, 1, "pay-1")).await.unwrap();
    assert_nothing_moved(
        &l.commit(&b, &hold("other"), 5).await.unwrap(),
        SettleOutcome::Unknown,
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (45, 5, 0, 50, 1));
    // The id is still free to hold.
    assert!(!expect_held(reserve(&l, &a, &hold("never"), 10).await).replayed);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (35, 15, 0, 50, 2));
    assert_conserved(&l, &b).await;
}

/// Settling on an account that does not exist says `Unknown`, without a balance, and
/// creates nothing.
pub async fn settle_on_unknown_account_is_unknown<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let ghost = acct("acct_nobody");
    let s = l.commit(&ghost, &hold("h1"), 5).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::Unknown);
    assert_eq!(s.available, None);
    let s = l.refund(&ghost, &hold("h1")).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::Unknown);
    assert_eq!(s.available, None);
    assert_eq!(
        l.extend(Extend::new(&ghost, hold("h1"), Duration::from_secs(30)))
            .await
            .unwrap(),
        Extended::NotOpen(SettleOutcome::Unknown)
    );
    assert!(matches!(
        l.balance(&ghost).await,
        Err(LedgerError::UnknownAccount)
    ));
}

/// A retried reserve with the same id returns the first answer and holds once.
pub async fn retried_reserve_is_replayed<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_retry", 100).await;
    let first = expect_held(reserve(&l, &a, &hold("h1"), 30).await);
    assert!(!first.replayed);
    let again = expect_held(reserve(&l, &a, &hold("h1"), 30).await);
    assert!(again.replayed);
    assert_eq!((again.amount, again.available), (30, 70));
    assert_eq!(again.expires_at_ms, first.expires_at_ms);
    // Even with another amount, the first hold stands.
    let other = expect_held(reserve(&l, &a, &hold("h1"), 90).await);
    assert_eq!((other.amount, other.replayed), (30, true));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 30, 0, 100, 1));
    // And a replay is answered even when the account could not afford a new hold.
    expect_held(reserve(&l, &a, &hold("h2"), 70).await);
    let again = expect_held(reserve(&l, &a, &hold("h1"), 30).await);
    assert_eq!((again.replayed, again.available), (true, 0));

    let s = l.commit(&a, &hold("h1"), 30).await.unwrap();
    assert_eq!(s.committed, 30);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (0, 70, 30, 100, 1));
}

/// An expired hold goes back to `available`; settling it later says `Expired` and moves
/// nothing.
pub async fn expired_hold_returns_and_cannot_settle<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_expiry", 100).await;
    let short = expect_held(
        l.reserve(
            Reserve::new(a.clone(), hold("h1"), 30)
                .ttl(Duration::from_secs(10))
                .route("GET /slow"),
        )
        .await
        .unwrap(),
    );
    assert_expires_in(short.expires_at_ms, &clock, Duration::from_secs(10));
    // A long hold that must survive.
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h2"), 20).ttl(Duration::from_secs(600)))
            .await
            .unwrap(),
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (50, 50, 0, 100, 2));

    clock.advance(Duration::from_secs(11));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (80, 20, 0, 100, 1));

    let s = l.commit(&a, &hold("h1"), 30).await.unwrap();
    assert_nothing_moved(&s, SettleOutcome::Expired);
    assert_eq!(s.available, Some(80));
    assert_nothing_moved(
        &l.refund(&a, &hold("h1")).await.unwrap(),
        SettleOutcome::Expired,
    );
    assert_eq!(
        l.extend(Extend::new(&a, hold("h1"), Duration::from_secs(60)))
            .await
            .unwrap(),
        Extended::NotOpen(SettleOutcome::Expired)
    );
    assert_eq!(
        reserve(&l, &a, &hold("h1"), 30).await,
        ReserveOutcome::Closed(SettleOutcome::Expired)
    );
    assert_eq!(totals(&assert_conserved(&l, &a).await), (80, 20, 0, 100, 1));
    assert!(l.usage(&a).await.unwrap().by_route.is_empty());

    // The long hold is still there.
    let s = l.commit(&a, &hold("h2"), 20).await.unwrap();
    assert_eq!((s.outcome, s.committed), (SettleOutcome::Committed, 20));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (80, 0, 20, 100, 0));
}

/// `extend` keeps a hold alive past its original ttl.
pub async fn extend_keeps_hold_alive<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_extend", 100).await;
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 30).ttl(Duration::from_secs(10)))
            .await
            .unwrap(),
    );
    clock.advance(Duration::from_secs(5));
    match l
        .extend(Extend::new(&a, hold("h1"), Duration::from_secs(20)))
        .await
        .unwrap()
    {
        Extended::Until(at) => assert_expires_in(at, &clock, Duration::from_secs(20)),
        other => panic!("expected Until, got {other:?}"),
    }
    // 15 s after the reserve: past the original 10 s, well within the extension.
    clock.advance(Duration::from_secs(10));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 30, 0, 100, 1));
    let again = expect_held(reserve(&l, &a, &hold("h1"), 30).await);
    assert!(again.replayed);
    let s = l.commit(&a, &hold("h1"), 30).await.unwrap();
    assert_eq!((s.outcome, s.committed), (SettleOutcome::Committed, 30));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 0, 30, 100, 0));

    // The extension too runs out.
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h2"), 30).ttl(Duration::from_secs(10)))
            .await
            .unwrap(),
    );
    assert!(matches!(
        l.extend(Extend::new(&a, hold("h2"), Duration::from_secs(20)))
            .await
            .unwrap(),
        Extended::Until(_)
    ));
    clock.advance(Duration::from_secs(30));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 0, 30, 100, 0));
    assert_nothing_moved(
        &l.commit(&a, &hold("h2"), 30).await.unwrap(),
        SettleOutcome::Expired,
    );
}

/// An extend sets the hold's expiry to now + ttl, which may be sooner than before: the
/// hold then comes back at the new time. (Found by the model test once the Redis scripts
/// learned to skip the expiry index until the earliest expiry they know of.)
pub async fn extend_to_a_shorter_ttl_expires_sooner<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_extend_shorter", 100).await;
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("long"), 30).ttl(Duration::from_secs(25)))
            .await
            .unwrap(),
    );
    // Any later call learns the earliest expiry (25 s) before the extend shortens it.
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 30, 0, 100, 1));
    match l
        .extend(Extend::new(&a, hold("long"), Duration::from_secs(15)))
        .await
        .unwrap()
    {
        Extended::Until(at) => assert_expires_in(at, &clock, Duration::from_secs(15)),
        other => panic!("expected Until, got {other:?}"),
    }
    clock.advance(Duration::from_secs(20));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (100, 0, 0, 100, 0));
    assert_eq!(
        l.commit(&a, &hold("long"), 30).await.unwrap().outcome,
        SettleOutcome::Expired
    );
}

/// Extending a hold that is no longer open says why.
pub async fn extend_of_settled_hold_is_not_open<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_extend_closed", 100).await;
    let ttl = Duration::from_secs(60);
    expect_held(reserve(&l, &a, &hold("c"), 10).await);
    l.commit(&a, &hold("c"), 5).await.unwrap();
    expect_held(reserve(&l, &a, &hold("r"), 10).await);
    l.refund(&a, &hold("r")).await.unwrap();
    assert_eq!(
        l.extend(Extend::new(&a, hold("c"), ttl)).await.unwrap(),
        Extended::NotOpen(SettleOutcome::AlreadyCommitted)
    );
    assert_eq!(
        l.extend(Extend::new(&a, hold("r"), ttl)).await.unwrap(),
        Extended::NotOpen(SettleOutcome::AlreadyRefunded)
    );
    assert_eq!(
        l.extend(Extend::new(&a, hold("never"), ttl)).await.unwrap(),
        Extended::NotOpen(SettleOutcome::Unknown)
    );
    // Extending an unknown id leaves no tombstone.
    assert!(!expect_held(reserve(&l, &a, &hold("never"), 1).await).replayed);
    assert_eq!(totals(&assert_conserved(&l, &a).await), (94, 1, 5, 100, 1));
}

/// A ttl of zero (or past `MAX_HOLD_TTL`) is refused and holds nothing.
pub async fn invalid_ttl_is_refused<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_ttl", 100).await;
    for ttl in [
        Duration::ZERO,
        Duration::from_micros(999),
        MAX_HOLD_TTL + Duration::from_secs(1),
    ] {
        let r = l
            .reserve(Reserve::new(a.clone(), hold("h1"), 10).ttl(ttl))
            .await;
        assert!(
            matches!(r, Err(LedgerError::InvalidTtl { ttl: got }) if got == ttl),
            "ttl {ttl:?}: {r:?}"
        );
    }
    assert_eq!(totals(&assert_conserved(&l, &a).await), (100, 0, 0, 100, 0));

    expect_held(reserve(&l, &a, &hold("h1"), 10).await);
    let r = l.extend(Extend::new(&a, hold("h1"), Duration::ZERO)).await;
    assert!(matches!(r, Err(LedgerError::InvalidTtl { .. })), "{r:?}");
    // The longest ttl is fine.
    let r = l
        .reserve(Reserve::new(a.clone(), hold("h2"), 10).ttl(MAX_HOLD_TTL))
        .await
        .unwrap();
    expect_held(r);
    assert!(matches!(
        l.extend(Extend::new(&a, hold("h1"), MAX_HOLD_TTL))
            .await
            .unwrap(),
        Extended::Until(_)
    ));
    assert_eq!(totals(&assert_conserved(&l, &a).await), (80, 20, 0, 100, 2));
}

/// Bad idempotency keys and route labels are refused before anything is written.
pub async fn invalid_arguments_write_nothing<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let a = acct("acct_invalid");
    let long_key = "k".repeat(256);
    for key in ["", "has space", "tab\there", "é", long_key.as_str()] {
        let r = l.top_up(TopUp::new(&a, 10, key)).await;
        assert!(
            matches!(r, Err(LedgerError::InvalidIdempotencyKey)),
            "key {key:?}: {r:?}"
        );
    }
    assert!(matches!(
        l.balance(&a).await,
        Err(LedgerError::UnknownAccount)
    ));
    // The longest key and every printable character are fine.
    l.top_up(TopUp::new(&a, 10, "k".repeat(255))).await.unwrap();
    l.top_up(TopUp::new(&a, 10, "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"))
        .await
        .unwrap();

    let long_route = "r".repeat(257);
    for route in ["bad\nroute", "nul\0", long_route.as_str()] {
        let r = l
            .reserve(Reserve::new(a.clone(), hold("h1"), 5).route(route))
            .await;
        assert!(
            matches!(r, Err(LedgerError::InvalidRoute)),
            "route {route:?}: {r:?}"
        );
    }
    assert_eq!(totals(&assert_conserved(&l, &a).await), (20, 0, 0, 20, 0));
    // The refused id is still free.
    let held = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 5).route("GET /ünïcode {ok}"))
            .await
            .unwrap(),
    );
    assert!(!held.replayed);
    l.commit(&a, &hold("h1"), 5).await.unwrap();
    let usage = l.usage(&a).await.unwrap();
    assert_eq!(
        usage.by_route.get("GET /ünïcode {ok}").map(|u| u.credits),
        Some(5)
    );
    assert_conserved(&l, &a).await;
}
