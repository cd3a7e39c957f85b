//! Conformance cases of an [`EventOutbox`]: what a ledger that keeps its events until they
//! are delivered must do. Expand [`conformance_outbox_suite!`](crate::conformance_outbox_suite)
//! with a [`Harness`] whose ledger implements [`EventOutbox`].

use std::time::Duration;

use super::{acct, expect_held, expect_insufficient, hold, Harness};
use crate::events::{EventKind, EventOutbox};
use crate::ledger::{Configure, Reserve};
use crate::{AccountSettings, Ledger, LedgerAdmin, TopUp};

/// Expands into one `#[test]` per outbox case, like
/// [`conformance_suite!`](crate::conformance_suite).
#[macro_export]
macro_rules! conformance_outbox_suite {
    ($harness:expr $(,)?) => {
        $crate::conformance_suite!(@cases $harness;
            detected_events_wait_leased_until_acknowledged,
            a_lapsed_lease_is_claimed_once,
            dead_letters_are_kept_with_their_reason,
        );
    };
}

/// Harness ledgers whose events the outbox cases read.
pub trait OutboxHarness: Harness<L: EventOutbox> {}
impl<H: Harness> OutboxHarness for H where H::L: EventOutbox {}

/// An event leased to the detecting replica: no claim takes it while the lease runs;
/// it is listed as pending until acknowledged, then gone.
pub async fn detected_events_wait_leased_until_acknowledged<H: OutboxHarness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let a = acct("acct_outbox");
    l.top_up(TopUp::new(&a, 10, "pay-1")).await.unwrap();
    l.configure(Configure::new(
        &a,
        AccountSettings::new().low_balance_threshold(5),
    ))
    .await
    .unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 6))
            .await
            .unwrap(),
    );
    let s = l.commit(&a, &hold("h1"), 6).await.unwrap();
    assert_eq!(s.events.len(), 1, "{s:?}");
    let event = s.events[0].clone();
    assert_eq!(event.kind, EventKind::BalanceLow);
    assert_eq!(l.pending(&a).await.unwrap(), vec![event.clone()]);
    assert!(
        l.claim(Duration::from_secs(30), 10)
            .await
            .unwrap()
            .is_empty(),
        "leased to the replica that detected it"
    );
    assert!(l.renew(&event, Duration::from_secs(30)).await.unwrap());
    l.ack(&event).await.unwrap();
    assert!(l.pending(&a).await.unwrap().is_empty());
    assert!(
        !l.renew(&event, Duration::from_secs(30)).await.unwrap(),
        "gone"
    );
    l.ack(&event).await.unwrap(); // acknowledging twice is harmless

    // The outbox emptied; the next event is kept under a new receipt, with a new id, and
    // a late acknowledgement of the first cannot remove it.
    let refused = l
        .reserve(Reserve::new(a.clone(), hold("h2"), 100))
        .await
        .unwrap();
    let next = expect_insufficient(refused).events[0].clone();
    assert_ne!((&next.receipt, &next.id), (&event.receipt, &event.id));
    l.ack(&event).await.unwrap();
    assert_eq!(l.pending(&a).await.unwrap(), vec![next]);
}

/// Once its lease lapses an event is claimed, by one claim only, with the same id.
pub async fn a_lapsed_lease_is_claimed_once<H: OutboxHarness>(h: &H) {
    let (l, clock) = h.ledger().await;
    let a = acct("acct_outbox_claim");
    l.top_up(TopUp::new(&a, 1, "pay-1")).await.unwrap();
    let refusal = expect_insufficient(
        l.reserve(Reserve::new(a.clone(), hold("r1"), 2))
            .await
            .unwrap(),
    );
    let event = refusal.events[0].clone();
    assert_eq!(event.kind, EventKind::Depleted);
    clock.advance(Duration::from_secs(31)); // past the default lease
    let claimed = l.claim(Duration::from_secs(10), 10).await.unwrap();
    assert_eq!(claimed, vec![event.clone()], "the same event, the same id");
    assert!(
        l.claim(Duration::from_secs(10), 10)
            .await
            .unwrap()
            .is_empty(),
        "claimed once"
    );
    clock.advance(Duration::from_secs(11));
    assert_eq!(
        l.claim(Duration::from_secs(10), 10).await.unwrap().len(),
        1,
        "lapsed again"
    );
    l.ack(&event).await.unwrap();
    clock.advance(Duration::from_secs(11));
    assert!(l
        .claim(Duration::from_secs(10), 10)
        .await
        .unwrap()
        .is_empty());
}

/// A delivery that gave up is kept, with its reason, and leaves the outbox; requeued, it
/// comes back with the same id.
pub async fn dead_letters_are_kept_with_their_reason<H: OutboxHarness>(h: &H) {
    let (l, clock) = h.ledger().await;
    let a = acct("acct_outbox_dead");
    l.top_up(TopUp::new(&a, 1, "pay-1")).await.unwrap();
    let refusal = expect_insufficient(
        l.reserve(Reserve::new(a.clone(), hold("r1"), 2))
            .await
            .unwrap(),
    );
    let event = refusal.events[0].clone();
    l.dead_letter(&event, "webhook https://example.com: HTTP 500")
        .await
        .unwrap();
    assert!(l.pending(&a).await.unwrap().is_empty());
    let dead = l.dead_letters(&a).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event, event);
    assert_eq!(dead[0].reason, "webhook https://example.com: HTTP 500");
    clock.advance(Duration::from_secs(60));
    assert!(l
        .claim(Duration::from_secs(10), 10)
        .await
        .unwrap()
        .is_empty());

    // Requeued (the receiver was fixed): unleased, the same id, claimed at once.
    assert!(l.requeue(&dead[0]).await.unwrap());
    assert!(!l.requeue(&dead[0]).await.unwrap(), "requeued once");
    assert!(l.dead_letters(&a).await.unwrap().is_empty());
    let claimed = l.claim(Duration::from_secs(10), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, event.id, "the same event, the same id");
    l.ack(&claimed[0]).await.unwrap();
    assert!(l.pending(&a).await.unwrap().is_empty());
}
