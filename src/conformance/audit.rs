//! The audit trail: every move of credits, written with the move, newest first, in pages.

use std::time::Duration;

use super::{assert_conserved, expect_held, funded, hold, Harness};
use crate::ledger::{AuditEntry, AuditKind, Grow, Reserve};
use crate::{Ledger, LedgerReports};

/// Every reserve, grow, commit, refund, expiry and top-up is in the trail with the
/// account's totals after it; each entry's totals follow from the one before by its
/// amount, the newest equal the balance, and paging returns the same entries.
pub async fn the_audit_trail_records_every_move<H: Harness>(h: &H) {
    let (l, clock, a) = funded(h, "acct_audit", 100).await;
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 30).route("GET /x"))
            .await
            .unwrap(),
    );
    l.grow(Grow::to(&a, hold("h1"), 40)).await.unwrap();
    l.commit(&a, &hold("h1"), 25).await.unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h2"), 10))
            .await
            .unwrap(),
    );
    l.refund(&a, &hold("h2")).await.unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h3"), 5).ttl(Duration::from_secs(10)))
            .await
            .unwrap(),
    );
    clock.advance(Duration::from_secs(11));
    let balance = assert_conserved(&l, &a).await; // reclaims h3

    let page = l.history(&a, None, 50).await.unwrap();
    assert_eq!(page.next, None);
    let moves: Vec<(AuditKind, u64, Option<&str>)> = page
        .entries
        .iter()
        .map(|e| (e.kind, e.amount, e.hold_id.as_deref()))
        .collect();
    assert_eq!(
        moves,
        [
            (AuditKind::Expire, 5, Some("h3")),
            (AuditKind::Reserve, 5, Some("h3")),
            (AuditKind::Refund, 10, Some("h2")),
            (AuditKind::Reserve, 10, Some("h2")),
            (AuditKind::Commit, 25, Some("h1")),
            (AuditKind::Grow, 10, Some("h1")),
            (AuditKind::Reserve, 30, Some("h1")),
            (AuditKind::TopUp, 100, None),
        ]
    );
    assert_eq!(page.entries[6].route.as_deref(), Some("GET /x"));
    let newest = &page.entries[0];
    assert_eq!(
        (
            newest.available,
            newest.held,
            newest.committed,
            newest.topped_up
        ),
        (
            balance.available,
            balance.held,
            balance.committed,
            balance.topped_up
        )
    );
    // Each entry chains from the one before it (older) by its own amount.
    for pair in page.entries.windows(2) {
        let (after, before) = (&pair[0], &pair[1]);
        assert_eq!(
            chained(before, after),
            after_totals(after),
            "{after:?} after {before:?}"
        );
        assert!(after.at_ms >= before.at_ms);
    }

    // Pages of 3: the same entries, in order, then no cursor.
    let mut paged: Vec<AuditEntry> = Vec::new();
    let mut cursor = None;
    loop {
        let page = l.history(&a, cursor.as_deref(), 3).await.unwrap();
        assert!(page.entries.len() <= 3);
        paged.extend(page.entries);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, page.entries);
    assert!(l.history(&a, Some("not a cursor"), 3).await.is_err());
    assert!(l.history(&a, None, 0).await.is_err());
    let unknown = l
        .history(&super::acct("acct_audit_none"), None, 10)
        .await
        .unwrap();
    assert!(unknown.entries.is_empty());
}

fn after_totals(e: &AuditEntry) -> (i64, u64, u64, u64) {
    (e.available, e.held, e.committed, e.topped_up)
}

/// The totals `before` leads to by `after`'s move.
fn chained(before: &AuditEntry, after: &AuditEntry) -> (i64, u64, u64, u64) {
    let (available, held, committed, topped_up) = after_totals(before);
    let n = after.amount;
    match after.kind {
        AuditKind::Reserve | AuditKind::Grow => {
            (available - n as i64, held + n, committed, topped_up)
        }
        AuditKind::Refund | AuditKind::Expire => {
            (available + n as i64, held - n, committed, topped_up)
        }
        // A commit charges `n` of its hold and gives the rest back: the hold's size is what
        // `held` dropped by.
        AuditKind::Commit => {
            let released = held - after.held - n;
            (
                available + released as i64,
                after.held,
                committed + n,
                topped_up,
            )
        }
        AuditKind::TopUp => (available + n as i64, held, committed, topped_up + n),
    }
}
