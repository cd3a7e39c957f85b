//! Concurrency and scale: many tasks on one account, many accounts at once.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use super::{acct, assert_conserved, expect_held, funded, hold, totals, under_load, Harness, Rng};
use crate::ledger::{Reserve, ReserveOutcome, SettleOutcome};
use crate::{AccountId, Ledger, LedgerAdmin, LedgerReports, TopUp};

/// 64 tasks race to hold, commit and refund the same 100 credits: nothing is ever
/// double-spent, and conservation holds at the end.
pub async fn concurrent_reserves_never_overshoot<H: Harness>(h: &H) {
    const TASKS: u64 = 64;
    const ROUNDS: u64 = 60;
    const CREDITS: u64 = 100;
    let (l, _clock, a) = funded(h, "acct_race", CREDITS).await;

    // A lower bound of `held + committed`: a hold counts from when its reserve returned
    // until its settle is sent, a commit from when it returned. It must never pass the
    // credits there are.
    let in_use = Arc::new(AtomicI64::new(0));
    let committed = Arc::new(AtomicU64::new(0));
    let holds_granted = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (l, a) = (l.clone(), a.clone());
        let (in_use, committed, holds_granted) =
            (in_use.clone(), committed.clone(), holds_granted.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(task + 1);
            for round in 0..ROUNDS {
                let amount = 1 + rng.below(3);
                let id = hold(&format!("t{task}-r{round}"));
                let outcome = l
                    .reserve(Reserve::new(a.clone(), id.clone(), amount).route("race"))
                    .await
                    .unwrap_or_else(|e| under_load("reserve", e));
                match outcome {
                    ReserveOutcome::Held(held) => {
                        assert!(!held.replayed);
                        assert!(held.available >= 0, "overshoot: {held:?}");
                        holds_granted.fetch_add(1, Ordering::Relaxed);
                        let now = in_use.fetch_add(amount as i64, Ordering::SeqCst) + amount as i64;
                        assert!(
                            now <= CREDITS as i64,
                            "{now} credits in use out of {CREDITS}"
                        );
                        if rng.below(4) == 0 {
                            tokio::task::yield_now().await;
                        }
                        in_use.fetch_sub(amount as i64, Ordering::SeqCst);
                        let s = if rng.below(3) == 0 {
                            let actual = rng.below(amount + 2); // sometimes clamped
                            let s = l
                                .commit(&a, &id, actual)
                                .await
                                .unwrap_or_else(|e| under_load("commit", e));
                            assert_eq!(s.outcome, SettleOutcome::Committed);
                            assert_eq!(s.committed, actual.min(amount));
                            assert_eq!(s.clamped, actual > amount);
                            committed.fetch_add(s.committed, Ordering::SeqCst);
                            in_use.fetch_add(s.committed as i64, Ordering::SeqCst);
                            s
                        } else {
                            let s = l
                                .refund(&a, &id)
                                .await
                                .unwrap_or_else(|e| under_load("refund", e));
                            assert_eq!((s.outcome, s.released), (SettleOutcome::Refunded, amount));
                            s
                        };
                        assert!(s.available.unwrap() >= 0, "overshoot: {s:?}");
                    }
                    ReserveOutcome::Insufficient(refusal) => {
                        assert!(refusal.available >= 0, "overshoot: {refusal:?}");
                        assert!(refusal.available < amount as i64, "{refusal:?}");
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task panicked");
    }

    let committed = committed.load(Ordering::SeqCst);
    assert!(holds_granted.load(Ordering::SeqCst) > 0);
    let b = assert_conserved(&l, &a).await;
    assert_eq!(
        totals(&b),
        ((CREDITS - committed) as i64, 0, committed, CREDITS, 0)
    );
    let usage = l.usage(&a).await.unwrap();
    assert_eq!(
        usage.by_route.get("race").map(|u| u.credits).unwrap_or(0),
        committed
    );
}

/// Fifty accounts with ids from the whole allowed alphabet stay independent (a sharded or
/// clustered store spreads them over shards).
pub async fn many_accounts_are_independent<H: Harness>(h: &H) {
    let (l, _clock) = h.ledger().await;
    let ids: Vec<AccountId> = (0..50)
        .map(|i| match i % 7 {
            0 => acct(&format!("acct_{i}")),
            1 => acct(&format!("user{i}@example.com")),
            2 => acct(&format!("org:{i}:team-{i}")),
            3 => acct(&format!("a+b={i}.x")),
            4 => acct(&format!("{i}")),
            5 => acct(&format!("{}{i}", "Z".repeat(126 - i.to_string().len()))),
            _ => acct(&format!("MiXeD-Case_{i}.:@+=")),
        })
        .collect();
    assert_eq!(
        ids.len(),
        ids.iter().collect::<std::collections::BTreeSet<_>>().len()
    );

    let mut tasks = Vec::new();
    for (i, a) in ids.iter().cloned().enumerate() {
        let l = l.clone();
        let i = i as u64;
        tasks.push(tokio::spawn(async move {
            l.top_up(TopUp::new(&a, 100 + i, format!("pay-{i}")))
                .await
                .unwrap();
            let id = hold("h1");
            expect_held(
                l.reserve(Reserve::new(a.clone(), id.clone(), 10 + i).route("GET /many"))
                    .await
                    .unwrap(),
            );
            l.commit(&a, &id, i).await.unwrap();
            expect_held(
                l.reserve(Reserve::new(a.clone(), hold("open"), 1))
                    .await
                    .unwrap(),
            );
        }));
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
    for (i, a) in ids.iter().enumerate() {
        let i = i as u64;
        let b = assert_conserved(&l, a).await;
        assert_eq!(
            totals(&b),
            ((100 + i - i - 1) as i64, 1, i, 100 + i, 1),
            "account {a}"
        );
        let usage = l.usage(a).await.unwrap();
        let u = usage.by_route["GET /many"];
        assert_eq!((u.credits, u.calls), (i, 1), "account {a}");
    }
}
