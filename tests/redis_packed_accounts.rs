//! Accounts packed in one hash field (`RedisLedgerBuilder::pack_accounts`): what the
//! packed form keeps, and the move from the field form to it while replicas of both
//! settings share one Redis. The semantics of a packing ledger are the conformance suite's
//! (`tests/conformance_redis.rs`, modules `packed` and `packed_evalsha`).
//!
//! Every test starts its own `redis-server` (see `tests/support/redis.rs`).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::redis::RedisServer;
use tower_credits::clock::ManualClock;
use tower_credits::ledger::{Configure, HoldId, Reserve, ReserveOutcome, SettleOutcome};
use tower_credits::{
    AccountId, AccountSettings, Ledger, LedgerAdmin, LedgerReports, RedisLedger, TopUp,
};

const PATIENT: Duration = Duration::from_secs(5);

/// The fields of the field form: a packed account has none of them.
const FIELD_FORM: [&str; 21] = [
    "topped_up",
    "committed",
    "held",
    "credit_limit",
    "threshold",
    "next_expiry",
    "due_holds",
    "audit_seq",
    "rate",
    "rate_at",
    "commits",
    "first_commit_at",
    "done_until",
    "fired",
    "horizon",
    "runway_fired",
    "depleted",
    "last_topup",
    "due_events",
    "events",
    "warned",
];

fn acct(id: &str) -> AccountId {
    AccountId::new(id).unwrap()
}

async fn ledger(server: &RedisServer, clock: &ManualClock, pack: bool) -> RedisLedger {
    RedisLedger::builder()
        .url(server.url())
        .call_timeout(PATIENT)
        .test_clock(clock.clone())
        .pack_accounts(pack)
        .build()
        .await
        .expect("connect to the test redis-server")
}

/// The account hash's field names, straight from Redis.
fn fields(server: &RedisServer, account: &str) -> BTreeSet<String> {
    let out = server.cli(&["HKEYS", &format!("credits:{{{account}}}:acct")]);
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn packed(server: &RedisServer, account: &str) -> bool {
    let f = fields(server, account);
    f.contains("v") && FIELD_FORM.iter().all(|name| !f.contains(*name))
}

fn in_fields(server: &RedisServer, account: &str) -> bool {
    let f = fields(server, account);
    !f.contains("v") && f.contains("topped_up")
}

async fn held(ledger: &RedisLedger, account: &AccountId, id: &str, amount: u64) -> HoldId {
    let hold = HoldId::new(id).unwrap();
    let r = Reserve::new(account.clone(), hold.clone(), amount)
        .ttl(Duration::from_secs(600))
        .route("GET /v1/echo");
    match ledger.reserve(r).await.unwrap() {
        ReserveOutcome::Held(_) => hold,
        other => panic!("expected a hold, got {other:?}"),
    }
}

/// The audit trail's entry numbers, oldest first.
async fn trail(ledger: &RedisLedger, account: &AccountId) -> Vec<u64> {
    let page = ledger.history(account, None, 500).await.unwrap();
    let mut seqs: Vec<u64> = page
        .entries
        .iter()
        .map(|e| e.id.parse().expect("a numeric entry id"))
        .collect();
    seqs.reverse();
    seqs
}

#[tokio::test]
async fn a_packing_ledger_keeps_each_account_in_one_field() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger(&server, &clock, true).await;
    let a = acct("packed_new");
    l.top_up(TopUp::new(&a, 1_000, "pay-1")).await.unwrap();
    assert!(
        packed(&server, "packed_new"),
        "{:?}",
        fields(&server, "packed_new")
    );
    l.configure(Configure::new(
        a.clone(),
        AccountSettings::new()
            .credit_limit(50)
            .low_balance_threshold(400),
    ))
    .await
    .unwrap();
    let hold = held(&l, &a, "h1", 700).await;
    let s = l.commit(&a, &hold, 650).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    assert_eq!(s.events.len(), 1, "the 400 threshold was crossed once");
    assert_eq!(
        fields(&server, "packed_new"),
        BTreeSet::from(["v".to_owned(), "thresholds".to_owned()])
    );
    let b = l.balance(&a).await.unwrap();
    assert_eq!(
        (
            b.available,
            b.held,
            b.committed,
            b.topped_up,
            b.credit_limit
        ),
        (350, 0, 650, 1_000, 50)
    );
    assert_eq!(b.thresholds, vec![400]);
    assert_eq!(trail(&l, &a).await, vec![1, 2, 3]);
}

#[tokio::test]
async fn an_account_in_fields_is_packed_by_its_first_write_and_loses_nothing() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let old = ledger(&server, &clock, false).await;
    let new = ledger(&server, &clock, true).await;
    let a = acct("moving");
    old.top_up(TopUp::new(&a, 10_000, "pay-1")).await.unwrap();
    old.configure(Configure::new(
        a.clone(),
        AccountSettings::new()
            .credit_limit(100)
            .low_balance_threshold(5_000)
            .low_balance_threshold(1_000)
            .runway_horizon(Duration::from_secs(3_600)),
    ))
    .await
    .unwrap();
    // A spend history (the burn rate and commits a runway needs), an open hold and a
    // threshold already fired.
    for i in 0..12 {
        // Over the five minutes a runway needs.
        clock.advance(Duration::from_secs(30));
        let hold = held(&old, &a, &format!("s{i}"), 500).await;
        old.commit(&a, &hold, 450).await.unwrap();
    }
    let open = held(&old, &a, "open", 300).await;
    assert!(in_fields(&server, "moving"));
    let before = old.balance(&a).await.unwrap();
    assert!(before.runway_secs.is_some(), "a runway is known");
    let trail_before = trail(&old, &a).await;

    // A read by the packing ledger sees the same account and writes nothing.
    assert_eq!(new.balance(&a).await.unwrap(), before);
    assert!(in_fields(&server, "moving"), "a read packs nothing");

    // Its first write packs the account, and every figure carries over.
    clock.advance(Duration::from_secs(1));
    let s = new.commit(&a, &open, 200).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    assert_eq!(s.available, Some(before.available + 300 - 200));
    assert!(
        s.events.is_empty(),
        "the 5,000 threshold fired before the move"
    );
    assert!(packed(&server, "moving"), "{:?}", fields(&server, "moving"));
    let after = new.balance(&a).await.unwrap();
    assert_eq!(after.topped_up, before.topped_up);
    assert_eq!(after.committed, before.committed + 200);
    assert_eq!(after.held, 0);
    assert_eq!(after.credit_limit, 100);
    assert_eq!(after.thresholds, before.thresholds);
    assert_eq!(after.runway_horizon, Duration::from_secs(3_600));
    assert!(
        after.runway_secs.is_some(),
        "the spend history carried over"
    );
    // The trail goes on with the next number.
    let trail_after = trail(&new, &a).await;
    assert_eq!(trail_after.len(), trail_before.len() + 1);
    assert_eq!(trail_after[..trail_before.len()], trail_before[..]);
    assert_eq!(
        *trail_after.last().unwrap(),
        trail_before.last().unwrap() + 1
    );

    // The next threshold still fires once, and the ledger that does not pack keeps the
    // account packed.
    let mut fired = 0;
    for i in 0..10 {
        let hold = held(&old, &a, &format!("t{i}"), 400).await;
        fired += old.commit(&a, &hold, 400).await.unwrap().events.len();
    }
    assert_eq!(fired, 1, "balance.low for 1,000, once");
    assert!(packed(&server, "moving"), "{:?}", fields(&server, "moving"));
    let end = old.balance(&a).await.unwrap();
    assert_eq!(end.committed, after.committed + 10 * 400);
    assert_eq!(
        end.available,
        end.topped_up as i64 - end.committed as i64 - end.held as i64
    );
}

#[tokio::test]
async fn a_top_up_of_a_packed_account_rearms_what_fired() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger(&server, &clock, true).await;
    let a = acct("rearm");
    l.top_up(TopUp::new(&a, 1_000, "pay-1")).await.unwrap();
    l.configure(Configure::new(
        a.clone(),
        AccountSettings::new().low_balance_threshold(500),
    ))
    .await
    .unwrap();
    let hold = held(&l, &a, "h1", 600).await;
    assert_eq!(l.commit(&a, &hold, 600).await.unwrap().events.len(), 1);
    let hold = held(&l, &a, "h2", 100).await;
    assert!(l.commit(&a, &hold, 100).await.unwrap().events.is_empty());
    // A refusal fires the depletion event once.
    let r = Reserve::new(a.clone(), HoldId::new("big").unwrap(), 1_000);
    assert!(matches!(
        l.reserve(r.clone()).await.unwrap(),
        ReserveOutcome::Insufficient(_)
    ));
    l.top_up(TopUp::new(&a, 1_000, "pay-2")).await.unwrap();
    // A replayed top-up credits nothing.
    l.top_up(TopUp::new(&a, 1_000, "pay-2")).await.unwrap();
    assert_eq!(l.balance(&a).await.unwrap().available, 1_300);
    let hold = held(&l, &a, "h3", 900).await;
    assert_eq!(
        l.commit(&a, &hold, 900).await.unwrap().events.len(),
        1,
        "the top-up re-armed the 500 threshold"
    );
    assert!(packed(&server, "rearm"));
}

#[tokio::test]
async fn unknown_accounts_stay_unknown_under_a_packing_ledger() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger(&server, &clock, true).await;
    let a = acct("nobody");
    let r = Reserve::new(a.clone(), HoldId::new("h").unwrap(), 1);
    assert!(matches!(
        l.reserve(r).await.unwrap(),
        ReserveOutcome::UnknownAccount
    ));
    let s = l.commit(&a, &HoldId::new("h").unwrap(), 1).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Unknown);
    assert!(l.balance(&a).await.is_err());
    assert_eq!(
        server.cli(&["EXISTS", "credits:{nobody}:acct"]).trim(),
        "0",
        "nothing was created"
    );
}

/// Replicas of both settings racing on one account that starts in fields: every script is
/// atomic, so the move happens once, and no credit is spent twice or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_both_settings_racing_on_one_account_conserve_credits() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let old = ledger(&server, &clock, false).await;
    let new = ledger(&server, &clock, true).await;
    let a = acct("race");
    old.top_up(TopUp::new(&a, 1_000, "pay-1")).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let l = if t % 2 == 0 { old.clone() } else { new.clone() };
            let a = a.clone();
            tokio::spawn(async move {
                let mut spent = 0;
                for i in 0..20 {
                    let hold = HoldId::new(format!("t{t}_{i}")).unwrap();
                    let r = Reserve::new(a.clone(), hold.clone(), 5).ttl(Duration::from_secs(600));
                    if let ReserveOutcome::Held(_) = l.reserve(r).await.unwrap() {
                        spent += l.commit(&a, &hold, 4).await.unwrap().committed;
                    }
                }
                spent
            })
        })
        .collect();
    let mut spent = 0;
    for t in tasks {
        spent += t.await.unwrap();
    }
    let b = new.balance(&a).await.unwrap();
    assert_eq!(b.committed, spent);
    assert_eq!(b.held, 0);
    assert_eq!(b.available, 1_000 - spent as i64);
    assert!(packed(&server, "race"), "{:?}", fields(&server, "race"));
    assert_eq!(trail(&new, &a).await.len() as u64, 1 + 2 * spent / 4);
}
