//! Reconciliation on a real Redis and a real Redis Cluster: books kept under concurrent
//! traffic balance (checked while the traffic runs, too); each kind of corruption, written
//! by hand into Redis, is found and named; the `reconcile` tool exits 0, 1 or 2.
//!
//! These tests read and poke an account's fields, so their ledgers keep the field form
//! (`pack_accounts(false)`); the packed form, the default, is tested by the conformance
//! suite, `tests/redis_packed_accounts.rs` and `tests/chaos_redis.rs`.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::redis::{RedisCluster, RedisServer};
use tower_credits::clock::ManualClock;
use tower_credits::conformance::{acct, hold, Rng};
use tower_credits::ledger::redis::reconcile::{Drift, DEFAULT_STALE_AFTER};
use tower_credits::ledger::{RedisLedger, RedisLedgerBuilder, Reserve};
use tower_credits::{Ledger, LedgerAdmin, TopUp};

async fn ledger(builder: RedisLedgerBuilder) -> RedisLedger {
    builder
        .call_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("connect to the test Redis")
}

/// Traffic on 5 accounts from 16 tasks: reserves, commits, refunds, grows and top-ups.
async fn traffic(l: &RedisLedger, tasks: u64) {
    let accounts: Vec<_> = (0..5).map(|i| acct(&format!("acct_r{i}"))).collect();
    for a in &accounts {
        l.top_up(TopUp::new(a, 1_000, format!("seed-{a}")))
            .await
            .unwrap();
    }
    let workers: Vec<_> = (0..tasks)
        .map(|t| {
            let (l, accounts) = (l.clone(), accounts.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(t + 1);
                for round in 0..25 {
                    let a = &accounts[rng.below(accounts.len() as u64) as usize];
                    let id = hold(&format!("t{t}-r{round}"));
                    let held = l
                        .reserve(Reserve::new(a.clone(), id.clone(), 1 + rng.below(5)).route("/r"))
                        .await
                        .unwrap();
                    if !matches!(held, tower_credits::ledger::ReserveOutcome::Held(_)) {
                        continue;
                    }
                    match rng.below(4) {
                        0 => drop(l.refund(a, &id).await.unwrap()),
                        1 => {
                            l.grow(tower_credits::ledger::Grow::to(a, id.clone(), 8))
                                .await
                                .unwrap();
                            l.commit(a, &id, rng.below(9)).await.unwrap();
                        }
                        2 if round % 5 == 0 => {
                            l.top_up(TopUp::new(a, 3, format!("more-{t}-{round}")))
                                .await
                                .unwrap();
                            l.commit(a, &id, 1).await.unwrap();
                        }
                        _ => drop(l.commit(a, &id, rng.below(6)).await.unwrap()),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

async fn balanced_under_traffic(l: RedisLedger) {
    // Checked while the traffic runs: each account's check is one atomic script.
    let during = {
        let l = l.clone();
        tokio::spawn(async move {
            let mut drifts = Vec::new();
            for _ in 0..3 {
                drifts.extend(l.reconcile_all(DEFAULT_STALE_AFTER, |_| {}).await.unwrap());
            }
            drifts
        })
    };
    traffic(&l, 16).await;
    assert_eq!(during.await.unwrap(), Vec::<Drift>::new());
    let mut last = None;
    let drifts = l
        .reconcile_all(DEFAULT_STALE_AFTER, |p| last = Some(p))
        .await
        .unwrap();
    assert_eq!(drifts, Vec::<Drift>::new());
    let last = last.unwrap();
    assert_eq!((last.checked, last.total, last.drifts), (5, 5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_books_reconcile_clean_under_traffic() {
    let server = RedisServer::start();
    balanced_under_traffic(
        ledger(
            RedisLedger::builder()
                .pack_accounts(false)
                .url(server.url()),
        )
        .await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_books_reconcile_clean_on_a_cluster() {
    let cluster = RedisCluster::start();
    let l = ledger(
        RedisLedger::builder()
            .pack_accounts(false)
            .cluster_urls(cluster.urls()),
    )
    .await;
    balanced_under_traffic(l.clone()).await;
    // A corruption on the cluster is found through the master that owns it.
    cluster.cli(&["HINCRBY", "credits:{acct_r3}:acct", "held", "5"]);
    let drifts = l.reconcile_all(DEFAULT_STALE_AFTER, |_| {}).await.unwrap();
    let checks: BTreeSet<_> = drifts
        .iter()
        .map(|d| (d.account.as_str().to_owned(), d.check.as_str()))
        .collect();
    assert!(
        checks.contains(&("acct_r3".to_owned(), "held")),
        "{drifts:?}"
    );
    assert!(drifts.iter().all(|d| d.account.as_str() == "acct_r3"));
}

/// An account with a hold, a commit and two top-ups, for each corruption to spoil.
async fn books(l: &RedisLedger, name: &str) {
    let a = acct(name);
    l.top_up(TopUp::new(&a, 100, format!("{name}-p1")))
        .await
        .unwrap();
    l.top_up(TopUp::new(&a, 20, format!("{name}-p2")))
        .await
        .unwrap();
    l.reserve(Reserve::new(a.clone(), hold("open"), 10))
        .await
        .unwrap();
    l.reserve(Reserve::new(a.clone(), hold("done"), 10))
        .await
        .unwrap();
    l.commit(&a, &hold("done"), 7).await.unwrap();
}

fn checks(drifts: &[Drift]) -> BTreeSet<&str> {
    drifts.iter().map(|d| d.check.as_str()).collect()
}

/// Each kind of corruption, written by hand, is found and named; a clean account has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_corruption_is_found_and_named() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger(
        RedisLedger::builder()
            .pack_accounts(false)
            .url(server.url())
            .test_clock(clock.clone()),
    )
    .await;
    let names = [
        "c_clean", "c_held", "c_ghost", "c_index", "c_topup", "c_claim", "c_audit", "c_orphan",
        "c_exp",
    ];
    for name in names {
        books(&l, name).await;
    }
    // 5 credits added to `held` with no hold.
    server.cli(&["HINCRBY", "credits:{c_held}:acct", "held", "5"]);
    // A hold (and its credits) with no place in the expiry index.
    server.cli(&["HSET", "credits:{c_ghost}:holds", "ghost", "5"]);
    server.cli(&["HINCRBY", "credits:{c_ghost}:acct", "held", "5"]);
    // An index entry with no hold.
    server.cli(&[
        "ZADD",
        "credits:{c_index}:expiry",
        "99999999999999",
        "phantom",
    ]);
    // Credits from nowhere.
    server.cli(&["HINCRBY", "credits:{c_topup}:acct", "topped_up", "7"]);
    // A payment id whose claim is gone.
    let claim = l.top_up_claim_key("c_claim-p2");
    server.cli(&["DEL", &claim]);
    // An audit entry that does not match the account.
    server.cli(&[
        "EVAL",
        "return redis.call('LPUSH', KEYS[1], \
         cmsgpack.pack({99, 'top_up', 1, '', '', 1, 1, 10, 7, 121}))",
        "1",
        "credits:{c_audit}:log",
    ]);

    // A hold's expiry field left behind by a settle of an older version (no hold with it).
    server.cli(&[
        "HSET",
        "credits:{c_orphan}:holds",
        "gone:exp",
        "99999999999999",
    ]);
    // A hold whose expiry field and index disagree (an extend of an older version).
    server.cli(&["HSET", "credits:{c_exp}:holds", "open:exp", "1"]);

    let expected: [(&str, &[&str]); 9] = [
        ("c_clean", &[]),
        ("c_held", &["held", "audit_held", "audit_available"]),
        (
            "c_ghost",
            &[
                "hold_not_in_expiry_index",
                "expiry_index_size",
                "audit_held",
                "audit_available",
            ],
        ),
        ("c_index", &["expiry_index_size"]),
        (
            "c_topup",
            &["topped_up", "audit_topped_up", "audit_available"],
        ),
        ("c_claim", &["payment_claim"]),
        ("c_audit", &["audit_available", "audit_topped_up"]),
        ("c_orphan", &["orphan_hold_field"]),
        ("c_exp", &["hold_expiry_field"]),
    ];
    for (name, want) in expected {
        let drifts = l.reconcile(&acct(name), DEFAULT_STALE_AFTER).await.unwrap();
        assert_eq!(
            checks(&drifts),
            want.iter().copied().collect(),
            "{name}: {drifts:?}"
        );
    }
    let held = l
        .reconcile(&acct("c_held"), DEFAULT_STALE_AFTER)
        .await
        .unwrap();
    let held = held.iter().find(|d| d.check == "held").unwrap();
    assert_eq!((held.expected.as_str(), held.found.as_str()), ("10", "15"));
    assert_eq!(held.to_string(), "c_held: held is 15, expected 10");

    // A hold past its expiry that no reclaim took, once older than `stale_after`.
    let stale = acct("c_stale");
    l.top_up(TopUp::new(&stale, 10, "c_stale-p1"))
        .await
        .unwrap();
    l.reserve(Reserve::new(stale.clone(), hold("late"), 5).ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(l
        .reconcile(&stale, Duration::from_secs(60))
        .await
        .unwrap()
        .is_empty());
    clock.advance(Duration::from_secs(120));
    let drifts = l.reconcile(&stale, Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        checks(&drifts),
        BTreeSet::from(["stale_hold"]),
        "{drifts:?}"
    );
    // An unknown account has no books to check.
    assert!(l
        .reconcile(&acct("nobody"), DEFAULT_STALE_AFTER)
        .await
        .unwrap()
        .is_empty());
}

/// The command-line tool: 0 when balanced, 1 on drift (naming account and figure), 2 when
/// the ledger cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_tool_exits_by_what_it_found() {
    // `cargo test` builds the examples next to the test binaries.
    let tool = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/reconcile");
    assert!(
        tool.exists(),
        "no {}: `cargo test` builds it with the whole suite (scripts/test does); alone, run \
         `cargo build --example reconcile` first",
        tool.display()
    );
    let server = RedisServer::start();
    let l = ledger(
        RedisLedger::builder()
            .pack_accounts(false)
            .url(server.url()),
    )
    .await;
    books(&l, "t_one").await;
    let run = |args: Vec<String>| {
        let out = std::process::Command::new(&tool)
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(vec![server.url()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("balanced: 1 accounts"), "{out}");

    server.cli(&["HINCRBY", "credits:{t_one}:acct", "held", "5"]);
    let (code, out) = run(vec![server.url()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("t_one: held is 15, expected 10"), "{out}");

    let (code, _) = run(vec!["redis://127.0.0.1:1".into()]);
    assert_eq!(code, Some(2));
}
