//! Balance warnings: `balance.low` thresholds, depletion and a low runway.

use std::time::Duration;

use super::{
    acct, assert_conserved, expect_held, expect_insufficient, funded, hold, reserve, spend, totals,
    under_load, Harness,
};
use crate::events::EventKind;
use crate::ledger::{
    Configure, ErrorKind, Reserve, ReserveOutcome, Settlement, MAX_AMOUNT, MAX_THRESHOLDS,
};
use crate::{
    AccountId, AccountSettings, Ledger, LedgerAdmin, LedgerError, LedgerReports, Threshold, TopUp,
};

/// The `balance.low` thresholds of a settlement's events.
pub fn low_events(s: &Settlement) -> Vec<u64> {
    s.events
        .iter()
        .filter(|e| e.kind == EventKind::BalanceLow)
        .map(|e| e.threshold.expect("balance.low names its threshold"))
        .collect()
}

/// Checks an event's fields against the settlement that detected it.
#[track_caller]
fn assert_event(s: &Settlement, a: &AccountId) {
    for e in &s.events {
        assert_eq!(&e.account, a, "{e:?}");
        assert_eq!(Some(e.available), s.available, "{e:?}");
        assert!(e.id.starts_with("evt_"), "{e:?}");
    }
}

/// A commit that takes `available` below the account's threshold fires `balance.low`
/// exactly once per crossing.
pub async fn low_balance_threshold_crossed_once_per_crossing<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_low", 100).await;
    l.configure(Configure::new(
        &a,
        AccountSettings::new().low_balance_threshold(50),
    ))
    .await
    .unwrap();
    let b = assert_conserved(&l, &a).await;
    assert_eq!(b.thresholds, vec![50]);
    let held = expect_held(reserve(&l, &a, &hold("peek"), 0).await);
    assert_eq!(held.thresholds, vec![50]);
    l.refund(&a, &hold("peek")).await.unwrap();

    let s = spend(&l, &a, "s1", 30).await; // 70: above
    assert_eq!((s.available, low_events(&s)), (Some(70), vec![]));
    assert_eq!(s.thresholds, vec![50]);
    let s = spend(&l, &a, "s2", 20).await; // 50: not below
    assert_eq!((s.available, low_events(&s)), (Some(50), vec![]));
    let s = spend(&l, &a, "s3", 10).await; // 40: crossed
    assert_eq!((s.available, low_events(&s)), (Some(40), vec![50]));
    assert_event(&s, &a);
    let first_id = s.events[0].id.clone();
    let s = spend(&l, &a, "s4", 10).await; // 30: still below, already said
    assert_eq!((s.available, low_events(&s)), (Some(30), vec![]));
    let s = spend(&l, &a, "s5", 0).await;
    assert_eq!((s.available, low_events(&s)), (Some(30), vec![]));

    // A top-up lifts it above; the next commit below is a new crossing, a new event.
    l.top_up(TopUp::new(&a, 100, "pay-2")).await.unwrap(); // 130
    let s = spend(&l, &a, "s6", 70).await; // 60: above
    assert_eq!((s.available, low_events(&s)), (Some(60), vec![]));
    let s = spend(&l, &a, "s7", 20).await; // 40: crossed again
    assert_eq!((s.available, low_events(&s)), (Some(40), vec![50]));
    assert_ne!(s.events[0].id, first_id, "each crossing is its own event");
    let s = spend(&l, &a, "s8", 1).await;
    assert_eq!((s.available, low_events(&s)), (Some(39), vec![]));

    // A refund never fires.
    expect_held(reserve(&l, &a, &hold("r1"), 5).await);
    assert!(l.refund(&a, &hold("r1")).await.unwrap().events.is_empty());
    assert_conserved(&l, &a).await;
}

/// Credits that come back by a refund or an expired hold do not re-arm a threshold: the
/// caller who lets holds lapse gets no second warning for the same fall. A top-up that
/// lifts `available` back to the threshold does; one that leaves it below does not.
pub async fn only_a_top_up_rearms_a_threshold<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_low_rearm", 100).await;
    l.configure(Configure::new(
        &a,
        AccountSettings::new().low_balance_threshold(50),
    ))
    .await
    .unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("stuck"), 40).ttl(Duration::from_secs(10)))
            .await
            .unwrap(),
    ); // 60
    let s = spend(&l, &a, "s1", 30).await; // 30: crossed
    assert_eq!((s.available, low_events(&s)), (Some(30), vec![50]));
    clock.advance(Duration::from_secs(20)); // the stuck hold comes back: 70
    assert_eq!(totals(&assert_conserved(&l, &a).await), (70, 0, 30, 100, 0));
    let s = spend(&l, &a, "s2", 30).await; // 40: below again, but not re-armed
    assert_eq!((s.available, low_events(&s)), (Some(40), vec![]));
    // The same threshold set again (with a new credit limit) re-arms nothing either.
    let same = AccountSettings::new()
        .low_balance_threshold(50)
        .credit_limit(5);
    l.configure(Configure::new(&a, same)).await.unwrap();
    let s = spend(&l, &a, "s2b", 0).await;
    assert_eq!(
        low_events(&s),
        Vec::<u64>::new(),
        "the same crossing, reported once"
    );

    expect_held(reserve(&l, &a, &hold("big"), 30).await); // 10
    let s = l.refund(&a, &hold("big")).await.unwrap(); // 40
    assert!(s.events.is_empty());
    l.top_up(TopUp::new(&a, 5, "pay-small")).await.unwrap(); // 45: still below 50
    let s = spend(&l, &a, "s3", 1).await; // 44
    assert_eq!(
        low_events(&s),
        Vec::<u64>::new(),
        "a top-up that stays below re-arms nothing"
    );
    l.top_up(TopUp::new(&a, 10, "pay-back")).await.unwrap(); // 54: back above
    let s = spend(&l, &a, "s4", 5).await; // 49
    assert_eq!((s.available, low_events(&s)), (Some(49), vec![50]));
    assert_conserved(&l, &a).await;
}

/// Several thresholds (the quickstart's `demo-poor`: 5 credits, thresholds 100 and 4):
/// each fires once, the `Credits-Warning` threshold is the lowest above the balance.
pub async fn several_thresholds_fire_one_event_each<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_poor", 5).await;
    l.configure(Configure::new(
        &a,
        AccountSettings::new()
            .low_balance_threshold(100)
            .low_balance_threshold(4),
    ))
    .await
    .unwrap();
    assert_eq!(assert_conserved(&l, &a).await.thresholds, vec![100, 4]);
    let s = spend(&l, &a, "s1", 1).await; // 4: below 100 only
    assert_eq!((s.available, low_events(&s)), (Some(4), vec![100]));
    let s = spend(&l, &a, "s2", 1).await; // 3: below 4 now
    assert_eq!((s.available, low_events(&s)), (Some(3), vec![4]));
    for i in 3..=5 {
        let s = spend(&l, &a, &format!("s{i}"), 1).await;
        assert!(s.events.is_empty(), "{s:?}");
    }
    // One top-up past both re-arms both; one commit that falls below both fires both,
    // highest first.
    l.top_up(TopUp::new(&a, 200, "pay-2")).await.unwrap(); // 200
    let s = spend(&l, &a, "s6", 198).await; // 2
    assert_eq!(low_events(&s), vec![100, 4]);
    assert_event(&s, &a);
    assert_ne!(s.events[0].id, s.events[1].id);
    assert_conserved(&l, &a).await;
}

/// A threshold given as a percentage of the last top-up moves with it.
pub async fn a_percentage_threshold_follows_the_last_top_up<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_pct", 1_000).await;
    l.configure(Configure::new(
        &a,
        AccountSettings::new().threshold(Threshold::PercentOfLastTopUp(10)),
    ))
    .await
    .unwrap();
    assert_eq!(assert_conserved(&l, &a).await.thresholds, vec![100]);
    let s = spend(&l, &a, "s1", 899).await; // 101
    assert!(s.events.is_empty());
    let s = spend(&l, &a, "s2", 2).await; // 99
    assert_eq!(low_events(&s), vec![100]);
    l.top_up(TopUp::new(&a, 5_000, "pay-2")).await.unwrap(); // 5 099; threshold 500
    assert_eq!(assert_conserved(&l, &a).await.thresholds, vec![500]);
    let s = spend(&l, &a, "s3", 4_600).await; // 499
    assert_eq!(low_events(&s), vec![500]);
    assert_conserved(&l, &a).await;
}

/// The first refusal for lack of credits fires `balance.depleted`, once until the next
/// top-up; the refusal writes nothing else.
pub async fn depletion_fires_once_until_a_top_up<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_depleted", 10).await;
    let before = assert_conserved(&l, &a).await;
    let refusal = expect_insufficient(reserve(&l, &a, &hold("r1"), 11).await);
    assert_eq!(refusal.events.len(), 1, "{refusal:?}");
    let e = &refusal.events[0];
    assert_eq!(
        (e.kind, &e.account, e.available),
        (EventKind::Depleted, &a, 10)
    );
    assert_eq!((e.threshold, e.runway_secs), (None, None));
    let refusal = expect_insufficient(reserve(&l, &a, &hold("r2"), 11).await);
    assert!(refusal.events.is_empty(), "once until the next top-up");
    assert_eq!(
        assert_conserved(&l, &a).await,
        before,
        "a refusal moves nothing"
    );
    l.top_up(TopUp::new(&a, 1, "pay-2")).await.unwrap();
    expect_held(reserve(&l, &a, &hold("r3"), 11).await);
    let refusal = expect_insufficient(reserve(&l, &a, &hold("r4"), 1).await);
    assert_eq!(refusal.events.len(), 1);
    assert_ne!(refusal.events[0].id, e.id);
    // An unknown account is not depleted: it fires nothing and creates nothing.
    let ghost = acct("acct_ghost");
    assert!(matches!(
        reserve(&l, &ghost, &hold("g"), 1).await,
        ReserveOutcome::UnknownAccount
    ));
    assert!(matches!(
        l.balance(&ghost).await,
        Err(LedgerError::UnknownAccount)
    ));
}

/// 64 commits racing across one threshold fire exactly one event.
pub async fn concurrent_commits_crossing_a_threshold_fire_one_event<H: Harness>(h: &H) {
    const TASKS: u64 = 64;
    let (l, _clock, a) = funded(h, "acct_race_low", 2 * TASKS).await;
    l.configure(Configure::new(
        &a,
        AccountSettings::new().low_balance_threshold(TASKS + TASKS / 2),
    ))
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (l, a) = (l.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let id = hold(&format!("c{task}"));
            expect_held(
                l.reserve(Reserve::new(a.clone(), id.clone(), 1))
                    .await
                    .unwrap_or_else(|e| under_load("reserve", e)),
            );
            let s = l
                .commit(&a, &id, 1)
                .await
                .unwrap_or_else(|e| under_load("commit", e));
            low_events(&s).len()
        }));
    }
    let mut fired = 0;
    for task in tasks {
        fired += task.await.expect("a commit task panicked");
    }
    assert_eq!(fired, 1, "one crossing, one event");
    assert_eq!(assert_conserved(&l, &a).await.available, TASKS as i64);
}

/// `balance.runway_low` fires once, at the first commit whose forecast (with the history
/// rule of the runway: 10 commits, 5 minutes) is below the account's horizon; a top-up
/// re-arms it; a zero horizon never fires.
pub async fn runway_low_fires_once_until_a_top_up<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_runway_low", 100).await;
    let hour = Duration::from_secs(3_600);
    l.configure(Configure::new(
        &a,
        AccountSettings::new().runway_horizon(hour),
    ))
    .await
    .unwrap();
    assert_eq!(assert_conserved(&l, &a).await.runway_horizon, hour);
    let runway_events = |s: &Settlement| -> Vec<u64> {
        s.events
            .iter()
            .filter(|e| e.kind == EventKind::RunwayLow)
            .map(|e| e.runway_secs.expect("runway_low names its runway"))
            .collect()
    };
    // Nine commits over six minutes: not yet a history, no forecast, no event.
    for i in 0..9 {
        let s = spend(&l, &a, &format!("r{i}"), 6).await;
        assert_eq!(runway_events(&s), Vec::<u64>::new(), "commit {i}");
        clock.advance(Duration::from_secs(40));
    }
    // The tenth: 40 left at about 60 credits an hour, well under the hour.
    let s = spend(&l, &a, "r9", 6).await;
    let fired = runway_events(&s);
    assert_eq!(fired.len(), 1, "{s:?}");
    assert!(fired[0] < 3_600, "{fired:?}");
    let forecast = s
        .runway_secs
        .expect("a runway once the history is long enough");
    assert!(
        fired[0].abs_diff(forecast) <= 1,
        "{fired:?} vs the forecast {forecast}"
    );
    let s = spend(&l, &a, "r10", 1).await;
    assert!(runway_events(&s).is_empty(), "once until a top-up");
    // A top-up re-arms it; spending that leaves days of runway fires nothing; falling
    // under the hour again does.
    l.top_up(TopUp::new(&a, 10_000, "pay-2")).await.unwrap();
    let s = spend(&l, &a, "r11", 1).await;
    assert!(runway_events(&s).is_empty(), "{s:?}");
    let s = spend(&l, &a, "r12", 10_030).await;
    assert_eq!(runway_events(&s).len(), 1, "{s:?}");

    // A zero horizon: no runway events at all.
    let (l, clock, b) = funded(h, "acct_runway_off", 100).await;
    l.configure(Configure::new(
        &b,
        AccountSettings::new().runway_horizon(Duration::ZERO),
    ))
    .await
    .unwrap();
    for i in 0..12 {
        let s = spend(&l, &b, &format!("o{i}"), 6).await;
        assert!(runway_events(&s).is_empty(), "{s:?}");
        clock.advance(Duration::from_secs(40));
    }
}

/// Thresholds the ledger cannot keep are refused, and change nothing.
pub async fn invalid_thresholds_are_refused<H: Harness>(h: &H) {
    let (l, _clock, a) = funded(h, "acct_bad_thresholds", 10).await;
    let too_many = (0..=MAX_THRESHOLDS as u64).fold(AccountSettings::new(), |s, t| {
        s.low_balance_threshold(t + 1)
    });
    for settings in [
        too_many,
        AccountSettings::new().threshold(Threshold::PercentOfLastTopUp(0)),
        AccountSettings::new().threshold(Threshold::PercentOfLastTopUp(101)),
        AccountSettings::new().low_balance_threshold(MAX_AMOUNT + 1),
        AccountSettings::new().runway_horizon(Duration::from_secs(400 * 86_400)),
        AccountSettings::new().runway_horizon(Duration::from_millis(1_500)),
    ] {
        let err = l
            .configure(Configure::new(&a, settings.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{settings:?}: {err}");
    }
    assert_eq!(assert_conserved(&l, &a).await.thresholds, Vec::<u64>::new());
}
