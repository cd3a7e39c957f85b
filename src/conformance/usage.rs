//! Usage by route and the runway estimate.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{assert_conserved, expect_held, funded, hold, reserve, spend, totals, Harness};
use crate::ledger::Reserve;
use crate::{Ledger, LedgerAdmin, LedgerReports, TopUp};

/// Commits add up by route (set with `Reserve::route`); refunds and expiries do not count.
pub async fn usage_by_route_accumulates<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_usage", 1_000).await;
    let steps: [(&str, Option<&str>, u64, Option<u64>); 6] = [
        ("h1", Some("GET /a"), 10, Some(7)),
        ("h2", Some("GET /a"), 10, Some(10)),
        ("h3", Some("POST /b"), 5, Some(9)), // clamped to 5
        ("h4", None, 3, Some(2)),
        ("h5", Some("GET /a"), 50, None), // refunded
        ("h6", Some("POST /b"), 4, Some(0)),
    ];
    for (id, route, amount, actual) in steps {
        let mut r = Reserve::new(a.clone(), hold(id), amount);
        if let Some(route) = route {
            r = r.route(route);
        }
        expect_held(l.reserve(r).await.unwrap());
        match actual {
            Some(actual) => assert!(l
                .commit(&a, &hold(id), actual)
                .await
                .unwrap()
                .outcome
                .is_applied()),
            None => assert!(l.refund(&a, &hold(id)).await.unwrap().outcome.is_applied()),
        }
    }
    // An expired hold does not count.
    expect_held(
        l.reserve(
            Reserve::new(a.clone(), hold("h7"), 8)
                .route("GET /c")
                .ttl(Duration::from_secs(10)),
        )
        .await
        .unwrap(),
    );
    clock.advance(Duration::from_secs(20));

    let usage = l.usage(&a).await.unwrap();
    let got: BTreeMap<&str, (u64, u64)> = usage
        .by_route
        .iter()
        .map(|(route, u)| (route.as_str(), (u.credits, u.calls)))
        .collect();
    let want = BTreeMap::from([("GET /a", (17, 2)), ("POST /b", (5, 2)), ("", (2, 1))]);
    assert_eq!(got, want);
    let b = assert_conserved(&l, &a).await;
    assert_eq!(b.committed, 24);
    assert_eq!(totals(&b), (976, 0, 24, 1_000, 0));
}

/// The runway forecast: none before any spend, then `available / burn rate`, growing as the
/// rate decays with idle time.
pub async fn runway_follows_spending<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_runway", 1_000).await;
    let first = expect_held(reserve(&l, &a, &hold("r0"), 0).await);
    assert_eq!(first.runway_secs, None, "nothing spent yet");
    // Nine commits over five minutes and more: not enough history for a runway.
    for i in 0..9 {
        let spent = spend(&l, &a, &format!("s{i}"), 10).await;
        assert_eq!(
            spent.runway_secs, None,
            "commit {i}: no runway from so little"
        );
        clock.advance(Duration::from_secs(40));
    }
    // The tenth, 6 minutes after the first: now there is one. 100 credits spent over six
    // minutes (a one-hour time constant): about 0.026 credit/s, 900 left: about 34,000 s.
    let spent = spend(&l, &a, "s9", 10).await;
    let after = spent
        .runway_secs
        .expect("a runway once the history is long enough");
    assert!((30_000..=38_000).contains(&after), "runway {after}");
    let held = expect_held(reserve(&l, &a, &hold("r2"), 0).await);
    let at_reserve = held.runway_secs.expect("reserve reports the runway");
    assert!(
        (30_000..=38_000).contains(&at_reserve),
        "runway {at_reserve}"
    );
    // A top-up is not spend: it lengthens the runway (more to spend), not the rate.
    l.top_up(TopUp::new(&a, 900, "runway-more")).await.unwrap();
    let topped = l.balance(&a).await.unwrap().runway_secs.expect("still");
    assert!(
        topped > at_reserve * 3 / 2,
        "runway {topped} after a top-up"
    );
    // An idle hour decays the rate (time constant one hour): the balance lasts longer.
    clock.advance(Duration::from_secs(3600));
    let later = l
        .balance(&a)
        .await
        .unwrap()
        .runway_secs
        .expect("still spending");
    assert!(later > topped * 2, "runway {later} after an idle hour");
    assert_conserved(&l, &a).await;
}

/// Ten commits in a burst are not a history: the runway waits until the first of them is
/// five minutes old; top-ups alone never make one.
pub async fn a_runway_needs_history_not_a_burst<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_burst", 1_000).await;
    for i in 0..3 {
        l.top_up(TopUp::new(&a, 100, format!("burst-top-{i}")))
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(600));
    assert_eq!(
        l.balance(&a).await.unwrap().runway_secs,
        None,
        "top-ups are not spend"
    );
    for i in 0..12 {
        let spent = spend(&l, &a, &format!("b{i}"), 5).await;
        assert_eq!(spent.runway_secs, None, "a burst of {i} commits");
    }
    assert_eq!(l.balance(&a).await.unwrap().runway_secs, None);
    clock.advance(Duration::from_secs(301));
    let held = expect_held(reserve(&l, &a, &hold("later"), 0).await);
    assert!(held.runway_secs.is_some(), "the burst is five minutes old");
    assert_conserved(&l, &a).await;
}
