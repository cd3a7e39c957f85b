//! Accounts packed in one hash field (`RedisLedgerBuilder::pack_accounts`): what the
//! packed form keeps, and the move from the field form to it while replicas of both
//! settings share one Redis. The semantics of either form are the conformance suite's
//! (`tests/conformance_redis.rs`: the default packs; modules `fields` and `fields_evalsha`
//! do not).
//!
//! Every test starts its own `redis-server` (see `tests/support/redis.rs`).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::redis::{RedisServer, PACKED_FIGURES};
use tower_credits::clock::ManualClock;
use tower_credits::events::EventOutbox;
use tower_credits::ledger::{Configure, HoldId, Reserve, ReserveOutcome, SettleOutcome};
use tower_credits::{
    AccountId, AccountSettings, Ledger, LedgerAdmin, LedgerError, LedgerReports, RedisLedger, TopUp,
};

const PATIENT: Duration = Duration::from_secs(5);

/// The fields of the field form: the packed figures but `prune_at` (a packed account's
/// own), and two that older versions wrote. A packed account has none of them.
fn field_form() -> impl Iterator<Item = &'static str> {
    PACKED_FIGURES
        .iter()
        .copied()
        .filter(|figure| !matches!(*figure, "prune_at" | "trail"))
        .chain(["threshold", "warned"])
}

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

/// The account hash's field names, straight from Redis, but its top-up records
/// ([`top_up_fields`]).
fn fields(server: &RedisServer, account: &str) -> BTreeSet<String> {
    hash_fields(server, account)
        .into_iter()
        .filter(|f| !f.starts_with('+'))
        .collect()
}

/// The top-up records a packed account keeps in its own hash: `+<key>`.
fn top_up_fields(server: &RedisServer, account: &str) -> BTreeSet<String> {
    hash_fields(server, account)
        .into_iter()
        .filter(|f| f.starts_with('+'))
        .collect()
}

fn hash_fields(server: &RedisServer, account: &str) -> BTreeSet<String> {
    let out = server.cli(&["HKEYS", &format!("credits:{{{account}}}:acct")]);
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn packed(server: &RedisServer, account: &str) -> bool {
    let f = fields(server, account);
    f.contains("v") && field_form().all(|name| !f.contains(name))
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

/// Every entry of the trail, whole (kind, amount, hold, route, time, totals), newest first.
async fn trail_entries(ledger: &RedisLedger, account: &AccountId) -> Vec<String> {
    let page = ledger.history(account, None, 500).await.unwrap();
    page.entries.iter().map(|e| format!("{e:?}")).collect()
}

/// Which form an account's audit trail is in: "text" (`trail`), "list" (`log`), "both"
/// or "none".
fn trail_form(server: &RedisServer, account: &str) -> &'static str {
    let text = server.cli(&["EXISTS", &format!("credits:{{{account}}}:trail")]) == "1";
    let list = server.cli(&["EXISTS", &format!("credits:{{{account}}}:log")]) == "1";
    match (text, list) {
        (true, false) => "text",
        (false, true) => "list",
        (true, true) => "both",
        (false, false) => "none",
    }
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
    // Its top-up record in its own hash: no `topups` key.
    assert_eq!(
        top_up_fields(&server, "packed_new"),
        ["+pay-1".to_owned()].into()
    );
    assert_eq!(server.cli(&["EXISTS", "credits:{packed_new}:topups"]), "0");
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
    let entries_before = trail_entries(&old, &a).await;
    assert_eq!(trail_form(&server, "moving"), "list");

    // A read by the packing ledger sees the same account and writes nothing.
    same_books(&new.balance(&a).await.unwrap(), &before);
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
    // ... every entry as it was, in the list still (a text trail is for small ones).
    assert_eq!(trail_form(&server, "moving"), "list");
    assert_eq!(trail_entries(&new, &a).await[1..], entries_before[..]);

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

/// Found by review: a packing ledger's first write to an account in fields, a configure
/// back to the default runway horizon, kept the old horizon (the cleared figure was read
/// back from its field when `v` was written).
#[tokio::test]
async fn a_horizon_reset_by_the_move_to_packed_is_kept() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let old = ledger(&server, &clock, false).await;
    let new = ledger(&server, &clock, true).await;
    let a = acct("horizon");
    old.top_up(TopUp::new(&a, 1_000, "pay-1")).await.unwrap();
    old.configure(Configure::new(
        a.clone(),
        AccountSettings::new().runway_horizon(Duration::from_secs(3_600)),
    ))
    .await
    .unwrap();
    new.configure(Configure::new(a.clone(), AccountSettings::new()))
        .await
        .unwrap();
    assert!(packed(&server, "horizon"));
    assert_eq!(
        new.balance(&a).await.unwrap().runway_horizon,
        tower_credits::ledger::DEFAULT_RUNWAY_HORIZON
    );
}

/// Found by review: an event claim that emptied the events due-index entry of an account
/// in fields, made by a packing ledger, kept the old `due_events` in `v`; the next event's
/// index entry was then never written, and its lease could lapse unseen.
#[tokio::test]
async fn the_next_event_after_a_packing_claim_is_entered_in_the_index() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let old = ledger(&server, &clock, false).await;
    let claimer = ledger(&server, &clock, true).await;
    let a = acct("events");
    old.top_up(TopUp::new(&a, 1_000, "pay-1")).await.unwrap();
    old.configure(Configure::new(
        a.clone(),
        AccountSettings::new()
            .low_balance_threshold(800)
            .low_balance_threshold(500),
    ))
    .await
    .unwrap();
    let hold = held(&old, &a, "h1", 300).await;
    let s = old.commit(&a, &hold, 300).await.unwrap();
    assert_eq!(s.events.len(), 1);
    old.ack(&s.events[0]).await.unwrap();
    clock.advance(Duration::from_secs(31));
    // The outbox is empty: the pass takes the account out of the index.
    assert!(claimer
        .claim(Duration::from_secs(30), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(packed(&server, "events"));
    // A second crossing, whose replica then dies before delivering it.
    let hold = held(&old, &a, "h2", 300).await;
    assert_eq!(old.commit(&a, &hold, 300).await.unwrap().events.len(), 1);
    assert!(
        !server
            .cli(&["ZSCORE", "credits:{!due}:events", "events"])
            .trim()
            .is_empty(),
        "the event's lease is in the index"
    );
    clock.advance(Duration::from_secs(31));
    let other = ledger(&server, &clock, true).await;
    assert_eq!(
        other
            .claim(Duration::from_secs(30), 10)
            .await
            .unwrap()
            .len(),
        1,
        "another replica claims the lapsed event"
    );
}

/// Found by review: a `prune_at` written under a later clock (Redis's clock stepped back,
/// say after a failover) stopped every prune of `done` until the clock caught up.
#[tokio::test]
async fn a_packed_account_still_prunes_after_its_clock_steps_back() {
    async fn closed_ids_kept(pack: bool) -> u64 {
        let server = RedisServer::start();
        let (ahead, behind) = (ManualClock::new(), ManualClock::new());
        ahead.advance(Duration::from_secs(3_600));
        let la = ledger(&server, &ahead, pack).await;
        let lb = ledger(&server, &behind, pack).await;
        let a = acct("skew");
        la.top_up(TopUp::new(&a, 1_000_000, "pay-1")).await.unwrap();
        let hold = held(&la, &a, "first", 1).await;
        la.commit(&a, &hold, 1).await.unwrap();
        for batch in 0..6 {
            for i in 0..50 {
                let hold = HoldId::new(format!("b{batch}_{i}")).unwrap();
                let r = Reserve::new(a.clone(), hold.clone(), 1).ttl(Duration::from_millis(1));
                assert!(matches!(
                    lb.reserve(r).await.unwrap(),
                    ReserveOutcome::Held(_)
                ));
                lb.commit(&a, &hold, 1).await.unwrap();
            }
            behind.advance(Duration::from_secs(20));
        }
        server
            .cli(&["ZCARD", "credits:{skew}:done"])
            .trim()
            .parse()
            .unwrap()
    }
    let fields = closed_ids_kept(false).await;
    let packed = closed_ids_kept(true).await;
    // At most the last batch more: those of the prune gap.
    assert!(
        packed <= fields + 50,
        "closed ids kept: {packed} packed, {fields} in fields"
    );
}

/// No script creates an account it does not know, under either setting: every ledger
/// call, and the sweep and every outbox operation called by hand.
#[tokio::test]
async fn no_script_creates_an_unknown_account_under_either_setting() {
    use tower_credits::ledger::{Extend, Grow};
    for pack in [false, true] {
        let server = RedisServer::start();
        let clock = ManualClock::new();
        let l = ledger(&server, &clock, pack).await;
        let a = acct("ghost");
        let h = HoldId::new("h").unwrap();
        let _ = l.balance(&a).await;
        let _ = l.usage(&a).await;
        let _ = l.history(&a, None, 10).await;
        let _ = l.reconcile(&a, Duration::from_secs(60)).await;
        let _ = l.commit(&a, &h, 1).await;
        let _ = l.refund(&a, &h).await;
        let _ = l
            .extend(Extend::new(a.clone(), h.clone(), Duration::from_secs(5)))
            .await;
        let _ = l.grow(Grow::to(a.clone(), h.clone(), 5)).await;
        let _ = l.reserve(Reserve::new(a.clone(), h.clone(), 1)).await;
        let _ = l.pending(&a).await;
        let _ = l.dead_letters(&a).await;
        let name = |script: &str| {
            if pack {
                RedisLedger::packed_function_name(script).unwrap()
            } else {
                RedisLedger::function_library(script).unwrap().1
            }
        };
        let keys: Vec<String> = [
            "acct", "holds", "expiry", "done", "usage", "topups", "outbox", "leases", "dead",
        ]
        .iter()
        .map(|suffix| format!("credits:{{ghost}}:{suffix}"))
        .collect();
        let call = |script: &str, args: &[&str]| {
            let function = name(script);
            let mut cmd = vec!["FCALL", function.as_str(), "9"];
            cmd.extend(keys.iter().map(String::as_str));
            cmd.extend(args);
            server.cli(&cmd)
        };
        call("sweep", &["0", "6000", "0"]);
        for op in [
            "due",
            "claim",
            "pending",
            "dead_letters",
            "requeue",
            "ack",
            "dead",
        ] {
            let entry = if matches!(op, "requeue" | "ack" | "dead") {
                "1-0"
            } else {
                ""
            };
            call(
                "outbox",
                &["0", "6000", op, "r1", "1000", entry, "10", "", "0"],
            );
        }
        let left = server.cli(&["KEYS", "*ghost*"]);
        assert!(left.trim().is_empty(), "pack {pack}: {left}");
    }
}

/// A replica of a version without packed accounts writing to a packed one (packing turned
/// on too early, or a rollback) leaves a field beside `v`: the two settings would then read
/// different balances. Reconciliation names it, under either setting.
#[tokio::test]
async fn reconcile_names_an_account_holding_both_forms() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let packing = ledger(&server, &clock, true).await;
    let plain = ledger(&server, &clock, false).await;
    let a = acct("both");
    packing
        .top_up(TopUp::new(&a, 1_000, "pay-1"))
        .await
        .unwrap();
    for l in [&packing, &plain] {
        let drifts = l.reconcile(&a, Duration::from_secs(60)).await.unwrap();
        assert!(drifts.is_empty(), "{drifts:?}");
    }
    // What such a version's top-up does: it sees no `topped_up`, and adds one; its outbox
    // counts events in a field of its own.
    server.cli(&["HINCRBY", "credits:{both}:acct", "topped_up", "50"]);
    server.cli(&["HINCRBY", "credits:{both}:acct", "events", "1"]);
    for l in [&packing, &plain] {
        let drifts = l.reconcile(&a, Duration::from_secs(60)).await.unwrap();
        let forms: Vec<_> = drifts
            .iter()
            .filter(|d| d.check == "account_forms")
            .collect();
        assert_eq!(forms.len(), 1, "{drifts:?}");
        assert_eq!(forms[0].found, "v beside topped_up,events", "{drifts:?}");
    }
}

/// Found by review: a read of a packed account (a dashboard polling `balance`) wrote `v`
/// each time its prune gap had passed. A read writes nothing, in either form.
#[tokio::test]
async fn reads_of_a_packed_account_write_nothing() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger(&server, &clock, true).await;
    let a = acct("polled");
    l.top_up(TopUp::new(&a, 1_000, "pay-1")).await.unwrap();
    let hold = held(&l, &a, "h1", 10).await;
    l.commit(&a, &hold, 5).await.unwrap();
    let before = server.cli(&["HGET", "credits:{polled}:acct", "v"]);
    server.cli(&["CONFIG", "RESETSTAT"]);
    for _ in 0..5 {
        clock.advance(Duration::from_millis(1_100));
        l.balance(&a).await.unwrap();
        l.usage(&a).await.unwrap();
    }
    let stats = server.cli(&["INFO", "commandstats"]);
    assert!(!stats.contains("cmdstat_hset:"), "{stats}");
    assert_eq!(server.cli(&["HGET", "credits:{polled}:acct", "v"]), before);
}

/// The packed value's order is its format: each figure keeps its place, and a new figure
/// goes at the end (a value written before it then reads it as absent). Pinned here by
/// the figures Redis itself decodes from `v`.
#[tokio::test]
async fn the_packed_value_keeps_each_figure_in_its_place() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger(&server, &clock, true).await;
    let a = acct("places");
    l.top_up(TopUp::new(&a, 1_000, "pay-1")).await.unwrap();
    l.configure(Configure::new(
        a.clone(),
        AccountSettings::new()
            .credit_limit(7)
            .runway_horizon(Duration::from_secs(90)),
    ))
    .await
    .unwrap();
    let hold = held(&l, &a, "h1", 30).await;
    l.commit(&a, &hold, 20).await.unwrap();
    let _open = held(&l, &a, "h2", 4).await;
    let out = server.cli(&[
        "EVAL",
        "local r = {cmsgpack.unpack(redis.call('HGET', KEYS[1], 'v'))} \
         r[1] = tostring(r[1]) \
         for i = 2, #r do r[i] = string.format('%.17g', r[i]) end return r",
        "1",
        "credits:{places}:acct",
    ]);
    let all: Vec<&str> = out.lines().collect();
    assert_eq!(all[0], "false", "the format mark first: {out}");
    let v = &all[1..];
    assert_eq!(v.len(), 21, "{out}");
    // topped_up, committed, held, credit_limit; audit_seq (top-up, reserve, commit,
    // reserve); commits; horizon; runway_fired, depleted; last_topup.
    assert_eq!((v[0], v[1], v[2], v[3]), ("1000", "20", "4", "7"), "{out}");
    assert_eq!(v[6], "4", "audit_seq: {out}");
    assert_eq!(v[9], "1", "commits: {out}");
    assert_eq!(v[13], "90", "horizon: {out}");
    assert_eq!((v[14], v[15]), ("0", "0"), "flags: {out}");
    assert_eq!(v[16], "1000", "last_topup: {out}");
    assert_eq!(v[20], "1", "trail (text): {out}");
}

/// The same books: every figure, and the runway within a second or two (Redis's clock runs
/// on under the test clock's offset, so the burn rate decays a little between reads).
fn same_books(got: &tower_credits::ledger::Balance, want: &tower_credits::ledger::Balance) {
    let (mut g, mut w) = (got.clone(), want.clone());
    let (gr, wr) = (g.runway_secs.take(), w.runway_secs.take());
    assert_eq!(g, w);
    match (gr, wr) {
        (Some(gr), Some(wr)) => assert!(gr.abs_diff(wr) <= 2, "runway {gr} s, was {wr} s"),
        (gr, wr) => assert_eq!(gr, wr, "runway"),
    }
}

/// `rewrite_accounts` moves every account to the ledger's form and back, with nothing else
/// changed: packed by a packing ledger (accounts nobody writes to included), then back in
/// fields by one that does not pack, which a build without packed accounts can read.
#[tokio::test]
async fn rewrite_accounts_packs_every_account_and_unpacks_it_again() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let fields_ledger = ledger(&server, &clock, false).await;
    let packing = ledger(&server, &clock, true).await;
    let names = ["rw_a", "rw_b", "rw_c"];
    let mut before = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let a = acct(name);
        fields_ledger
            .top_up(TopUp::new(&a, 10_000, format!("pay-{name}")))
            .await
            .unwrap();
        fields_ledger
            .configure(Configure::new(
                a.clone(),
                AccountSettings::new()
                    .credit_limit(10 * i as u64)
                    .low_balance_threshold(9_000)
                    .runway_horizon(Duration::from_secs(3_600)),
            ))
            .await
            .unwrap();
        for n in 0..12 {
            clock.advance(Duration::from_secs(30));
            let hold = held(&fields_ledger, &a, &format!("{name}_s{n}"), 200).await;
            fields_ledger.commit(&a, &hold, 150).await.unwrap();
        }
    }
    // Then, with the clock still: an open hold each, and the books as they stand.
    for name in names {
        let a = acct(name);
        held(&fields_ledger, &a, &format!("{name}_open"), 40).await;
        assert!(in_fields(&server, name));
        before.push((
            fields_ledger.balance(&a).await.unwrap(),
            trail_entries(&fields_ledger, &a).await,
        ));
        assert_eq!(trail_form(&server, name), "list");
    }

    assert_eq!(packing.rewrite_accounts().await.unwrap(), 3);
    assert_eq!(packing.rewrite_accounts().await.unwrap(), 0, "nothing left");
    for (name, (balance, audit)) in names.iter().zip(&before) {
        assert!(packed(&server, name), "{:?}", fields(&server, name));
        let a = acct(name);
        same_books(&packing.balance(&a).await.unwrap(), balance);
        assert_eq!(&trail_entries(&packing, &a).await, audit);
        assert_eq!(trail_form(&server, name), "list", "25 entries stay a list");
    }

    assert_eq!(fields_ledger.rewrite_accounts().await.unwrap(), 3);
    assert_eq!(fields_ledger.rewrite_accounts().await.unwrap(), 0);
    for (name, (balance, audit)) in names.iter().zip(&before) {
        assert!(in_fields(&server, name), "{:?}", fields(&server, name));
        let a = acct(name);
        same_books(&fields_ledger.balance(&a).await.unwrap(), balance);
        assert_eq!(&trail_entries(&fields_ledger, &a).await, audit);
        assert_eq!(trail_form(&server, name), "list");
        // What a build without packed accounts reads: the figures, each in its field.
        let key = format!("credits:{{{name}}}:acct");
        assert_eq!(
            server.cli(&["HGET", &key, "topped_up"]),
            balance.topped_up.to_string()
        );
        assert_eq!(
            server.cli(&["HGET", &key, "committed"]),
            balance.committed.to_string()
        );
        assert_eq!(
            server.cli(&["HGET", &key, "held"]),
            balance.held.to_string()
        );
    }
    // The accounts go on in fields: the open hold settles, and the next threshold fires
    // once (9,000 fired before the moves, nothing else is set).
    let a = acct("rw_a");
    let s = fields_ledger
        .commit(&a, &HoldId::new("rw_a_open").unwrap(), 40)
        .await
        .unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    assert!(s.events.is_empty(), "9,000 fired once, before the moves");
    assert!(in_fields(&server, "rw_a"));
    // An unknown account is left unknown.
    assert!(!fields_ledger
        .rewrite_account(&acct("nobody"))
        .await
        .unwrap());
    assert_eq!(server.cli(&["EXISTS", "credits:{nobody}:acct"]), "0");
}

/// A packed value no ledger wrote (garbled bytes, or a value cut short) is `Corrupt`: the
/// call fails and writes nothing, never reads a figure as zero.
#[tokio::test]
async fn a_garbled_packed_value_is_corrupt_and_nothing_is_written() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger(&server, &clock, true).await;
    let a = acct("garbled");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    let key = "credits:{garbled}:acct";
    for bad in [
        // Not MessagePack at all.
        "return redis.call('HSET', KEYS[1], 'v', '\\255\\255\\255')",
        // Three figures where there are twenty.
        "return redis.call('HSET', KEYS[1], 'v', cmsgpack.pack(100, 0, 0))",
    ] {
        server.cli(&["EVAL", bad, "1", key]);
        let v = server.cli(&["HGET", key, "v"]);
        let r = Reserve::new(a.clone(), HoldId::generate(), 1);
        let got = l.reserve(r).await;
        assert!(
            matches!(got, Err(LedgerError::Corrupt(_))),
            "{bad}: {got:?}"
        );
        assert!(matches!(
            l.top_up(TopUp::new(&a, 5, "pay-2")).await,
            Err(LedgerError::Corrupt(_))
        ));
        // Nor does a refund of a hold never seen (a tombstone and a write of `v`).
        let s = l.refund(&a, &HoldId::generate()).await;
        assert!(matches!(s, Err(LedgerError::Corrupt(_))), "{bad}: {s:?}");
        assert_eq!(server.cli(&["HGET", key, "v"]), v, "nothing written");
        assert_eq!(server.cli(&["HLEN", "credits:{garbled}:holds"]), "0");
    }
}

/// Reconciliation finds a packed account's drift as it finds one in fields: here `held`
/// in `v` moved by hand, credits held by no hold.
#[tokio::test]
async fn reconcile_finds_drift_in_a_packed_account() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger(&server, &clock, true).await;
    let a = acct("drifty");
    l.top_up(TopUp::new(&a, 1_000, "pay-1")).await.unwrap();
    held(&l, &a, "h1", 10).await;
    assert!(l
        .reconcile(&a, Duration::from_secs(3_600))
        .await
        .unwrap()
        .is_empty());
    // `held` is the third figure of `v` (its fourth value, after the format mark): 5 more
    // than the open holds.
    server.cli(&[
        "EVAL",
        "local r = {cmsgpack.unpack(redis.call('HGET', KEYS[1], 'v'))} \
         r[4] = r[4] + 5 \
         return redis.call('HSET', KEYS[1], 'v', cmsgpack.pack(unpack(r)))",
        "1",
        "credits:{drifty}:acct",
    ]);
    let drifts = l.reconcile(&a, Duration::from_secs(3_600)).await.unwrap();
    let held_drift = drifts
        .iter()
        .find(|d| d.check == "held")
        .unwrap_or_else(|| panic!("{drifts:?}"));
    assert_eq!(
        (held_drift.expected.as_str(), held_drift.found.as_str()),
        ("10", "15")
    );
}

/// A packed account's trail is text while it has at most four entries (what a funded
/// account never used keeps), and moves to the list with its fifth, every entry kept; a
/// read moves nothing. `rewrite_accounts` makes a small list text (an account funded in
/// fields) and, from a ledger that does not pack, text a list again.
#[tokio::test]
async fn a_small_trail_is_text_and_moves_to_the_list_with_its_fifth_entry() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger(&server, &clock, true).await;
    let fields_ledger = ledger(&server, &clock, false).await;
    let a = acct("small");
    l.top_up(TopUp::new(&a, 1_000, "pay-1")).await.unwrap();
    assert_eq!(trail_form(&server, "small"), "text");
    assert_eq!(server.figure("small", "trail"), 1);
    let hold = held(&l, &a, "s1", 10).await;
    l.commit(&a, &hold, 7).await.unwrap();
    l.balance(&a).await.unwrap();
    assert_eq!(trail_form(&server, "small"), "text", "three entries");
    // What a history, reconcile and a replica that does not pack read from the text.
    let three = trail_entries(&l, &a).await;
    assert_eq!(three.len(), 3);
    assert_eq!(trail_entries(&fields_ledger, &a).await, three);
    assert_eq!(
        l.reconcile(&a, Duration::from_secs(60)).await.unwrap(),
        vec![]
    );
    // The fourth entry (from the replica that does not pack: the account's own form).
    let hold = held(&fields_ledger, &a, "s2", 10).await;
    assert_eq!(trail_form(&server, "small"), "text", "four entries");
    // The fifth moves them.
    l.commit(&a, &hold, 10).await.unwrap();
    assert_eq!(trail_form(&server, "small"), "list");
    assert_eq!(server.figure("small", "trail"), 0);
    let five = trail_entries(&l, &a).await;
    assert_eq!(five.len(), 5);
    assert_eq!(five[2..], three[..], "every entry kept, in order");
    assert_eq!(
        l.reconcile(&a, Duration::from_secs(60)).await.unwrap(),
        vec![]
    );

    // Funded in fields: a one-entry list, made text by the rewrite, and back again.
    let b = acct("small_in_fields");
    fields_ledger
        .top_up(TopUp::new(&b, 500, "pay-2"))
        .await
        .unwrap();
    let one = trail_entries(&fields_ledger, &b).await;
    assert_eq!(trail_form(&server, "small_in_fields"), "list");
    assert_eq!(l.rewrite_accounts().await.unwrap(), 1, "only the small one");
    assert_eq!(trail_form(&server, "small_in_fields"), "text");
    assert_eq!(trail_form(&server, "small"), "list");
    assert_eq!(trail_entries(&l, &b).await, one);
    assert_eq!(l.rewrite_accounts().await.unwrap(), 0, "nothing left");
    assert_eq!(fields_ledger.rewrite_accounts().await.unwrap(), 2);
    assert_eq!(trail_form(&server, "small_in_fields"), "list");
    assert_eq!(trail_entries(&fields_ledger, &b).await, one);
    assert_eq!(trail_entries(&fields_ledger, &a).await, five);
}

/// A text trail that no ledger wrote (garbled bytes) never refuses the call that moves
/// credits: reconcile names it, and the entry that moves the trail to the list keeps the
/// entries before the garbled bytes and drops the rest.
#[tokio::test]
async fn a_garbled_text_trail_never_refuses_a_request() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger(&server, &clock, true).await;
    let a = acct("garbled");
    l.top_up(TopUp::new(&a, 1_000, "pay-1")).await.unwrap();
    server.cli(&["APPEND", "credits:{garbled}:trail", "\u{c1}not msgpack"]);
    let drifts = l.reconcile(&a, Duration::from_secs(60)).await.unwrap();
    assert!(
        drifts.iter().any(|d| d.check == "audit_entry"),
        "{drifts:?}"
    );
    for i in 0..4 {
        let hold = held(&l, &a, &format!("g{i}"), 1).await;
        l.commit(&a, &hold, 1).await.unwrap();
    }
    let b = l.balance(&a).await.unwrap();
    assert_eq!((b.committed, b.held), (4, 0));
    assert_eq!(trail_form(&server, "garbled"), "list");
    assert_eq!(
        l.reconcile(&a, Duration::from_secs(60)).await.unwrap(),
        vec![]
    );
    let ids: Vec<String> = l
        .history(&a, None, 10)
        .await
        .unwrap()
        .entries
        .iter()
        .map(|e| e.id.clone())
        .collect();
    // The entries before the unreadable bytes are kept; those appended after them are
    // not readable (MessagePack has no place to start again).
    assert_eq!(ids, ["9", "8", "7", "6", "5", "1"]);
}

/// A packed account keeps its top-up records in its own hash (`+<key>`); a key too long
/// for a listpack field stays in `topups`. Either way a key credits once: a replay is
/// answered as one, another amount is a conflict, and reconcile sums both places.
#[tokio::test]
async fn a_packed_account_keeps_its_top_up_records_in_its_hash_and_credits_each_key_once() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger(&server, &clock, true).await;
    let a = acct("records");
    let long_key = "k".repeat(64);
    let fits = "f".repeat(63);
    for (key, amount) in [("pay-1", 100), (fits.as_str(), 20), (long_key.as_str(), 7)] {
        let first = l.top_up(TopUp::new(&a, amount, key)).await.unwrap();
        assert!(!first.replayed);
        let again = l.top_up(TopUp::new(&a, amount, key)).await.unwrap();
        assert!(again.replayed, "{key}: a replay");
        assert!(matches!(
            l.top_up(TopUp::new(&a, amount + 1, key)).await,
            Err(LedgerError::TopUpConflict { .. })
        ));
    }
    assert_eq!(l.balance(&a).await.unwrap().topped_up, 127);
    assert_eq!(
        top_up_fields(&server, "records"),
        ["+pay-1".to_owned(), format!("+{fits}")].into()
    );
    assert_eq!(
        server.cli(&["HKEYS", "credits:{records}:topups"]),
        long_key,
        "a 65-byte field would turn the account's hash into a hash table"
    );
    assert_eq!(
        server.cli(&["OBJECT", "ENCODING", "credits:{records}:acct"]),
        "listpack"
    );
    assert_eq!(
        l.reconcile(&a, Duration::from_secs(60)).await.unwrap(),
        vec![]
    );
    // A record lost from either place is drift (the sum, and the claim check's ids).
    server.cli(&["HDEL", "credits:{records}:acct", "+pay-1"]);
    let drifts = l.reconcile(&a, Duration::from_secs(60)).await.unwrap();
    assert!(drifts.iter().any(|d| d.check == "topped_up"), "{drifts:?}");
}

/// The adversarial twin of the move: a payment id credited while the account was in
/// fields (its record in `topups`) is still a replay after a packing ledger has written
/// the account, and after `rewrite_accounts` moved its records either way: no key ever
/// credits twice, whichever form or place its record is in.
#[tokio::test]
async fn a_top_up_key_credits_once_across_every_move_of_its_record() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let fields_ledger = ledger(&server, &clock, false).await;
    let packing = ledger(&server, &clock, true).await;
    let a = acct("moved_keys");
    let long_key = "L".repeat(100);
    for (key, amount) in [("old-1", 10), ("old-2", 20), (long_key.as_str(), 5)] {
        fields_ledger
            .top_up(TopUp::new(&a, amount, key))
            .await
            .unwrap();
    }
    assert_eq!(top_up_fields(&server, "moved_keys").len(), 0);
    // Packed by a write; its old records stay in `topups`, and still count.
    let hold = held(&packing, &a, "h1", 5).await;
    packing.commit(&a, &hold, 5).await.unwrap();
    assert!(packed(&server, "moved_keys"));
    let replays = |l: RedisLedger| {
        let (a, long_key) = (a.clone(), long_key.clone());
        async move {
            for (key, amount) in [("old-1", 10), ("old-2", 20), (long_key.as_str(), 5)] {
                let r = l.top_up(TopUp::new(&a, amount, key)).await.unwrap();
                assert!(r.replayed, "{key} credited twice");
            }
        }
    };
    replays(packing.clone()).await;
    replays(fields_ledger.clone()).await;
    packing.top_up(TopUp::new(&a, 40, "new-1")).await.unwrap();
    assert_eq!(
        top_up_fields(&server, "moved_keys"),
        ["+new-1".to_owned()].into()
    );

    // Moved into the hash (the short ones) by the rewrite, then back into `topups`.
    assert_eq!(packing.rewrite_accounts().await.unwrap(), 1);
    assert_eq!(
        top_up_fields(&server, "moved_keys"),
        ["+new-1", "+old-1", "+old-2"].map(str::to_owned).into()
    );
    assert_eq!(
        server.cli(&["HKEYS", "credits:{moved_keys}:topups"]),
        long_key
    );
    assert_eq!(packing.rewrite_accounts().await.unwrap(), 0, "nothing left");
    replays(packing.clone()).await;
    assert!(
        packing
            .top_up(TopUp::new(&a, 40, "new-1"))
            .await
            .unwrap()
            .replayed
    );
    assert_eq!(
        packing
            .reconcile(&a, Duration::from_secs(60))
            .await
            .unwrap(),
        vec![]
    );

    assert_eq!(fields_ledger.rewrite_accounts().await.unwrap(), 1);
    assert!(in_fields(&server, "moved_keys"));
    assert_eq!(top_up_fields(&server, "moved_keys").len(), 0);
    replays(fields_ledger.clone()).await;
    assert!(
        fields_ledger
            .top_up(TopUp::new(&a, 40, "new-1"))
            .await
            .unwrap()
            .replayed
    );
    let b = fields_ledger.balance(&a).await.unwrap();
    assert_eq!(b.topped_up, 10 + 20 + 5 + 40);
    assert_eq!(
        fields_ledger
            .reconcile(&a, Duration::from_secs(60))
            .await
            .unwrap(),
        vec![]
    );
}

/// The packed value starts with its format's mark (`false`): a value of the first format
/// (no mark: figures from the first value, no `trail`) is read, and written back with the
/// mark; a value of a format this build does not know (another mark) is `Corrupt`, and
/// nothing is written. (The build before the mark fails on `false` the same way, by
/// arithmetic on a boolean: it refuses such an account rather than miss its top-up records
/// or text trail.)
#[tokio::test]
async fn a_packed_value_of_another_format_is_refused_and_the_first_format_is_read() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger(&server, &clock, true).await;
    let a = acct("formats");
    l.top_up(TopUp::new(&a, 1_000, "pay-1")).await.unwrap();
    let hold = held(&l, &a, "f1", 10).await;
    l.commit(&a, &hold, 6).await.unwrap();
    let key = "credits:{formats}:acct";
    // As the first packed format wrote it: the figures alone, twenty of them.
    server.cli(&[
        "EVAL",
        "local r = {cmsgpack.unpack(redis.call('HGET', KEYS[1], 'v'))} \
         redis.call('HSET', KEYS[1], 'v', cmsgpack.pack(unpack(r, 2, 21))) return 1",
        "1",
        key,
    ]);
    let b = l.balance(&a).await.unwrap();
    assert_eq!((b.topped_up, b.committed, b.held), (1_000, 6, 0));
    // The next write marks it.
    let hold = held(&l, &a, "f2", 10).await;
    l.commit(&a, &hold, 4).await.unwrap();
    assert_eq!(
        server.cli(&[
            "EVAL",
            "return tostring((cmsgpack.unpack(redis.call('HGET', KEYS[1], 'v'))))",
            "1",
            key
        ]),
        "false"
    );
    assert_eq!(l.balance(&a).await.unwrap().committed, 10);

    // A later format: every call refuses, and nothing is written.
    server.cli(&[
        "EVAL",
        "local r = {cmsgpack.unpack(redis.call('HGET', KEYS[1], 'v'))} \
         r[1] = 'f3' redis.call('HSET', KEYS[1], 'v', cmsgpack.pack(unpack(r))) return 1",
        "1",
        key,
    ]);
    let before = server.cli(&["HGET", key, "v"]);
    assert!(matches!(
        l.top_up(TopUp::new(&a, 5, "pay-2")).await,
        Err(LedgerError::Corrupt(_))
    ));
    assert!(matches!(
        l.reserve(Reserve::new(a.clone(), HoldId::new("f3").unwrap(), 1))
            .await,
        Err(LedgerError::Corrupt(_))
    ));
    assert!(matches!(l.balance(&a).await, Err(LedgerError::Corrupt(_))));
    assert_eq!(server.cli(&["HGET", key, "v"]), before);
    assert_eq!(server.cli(&["HEXISTS", key, "+pay-2"]), "0");
}

/// An account with thousands of top-up records moves them either way in one rewrite
/// (written a few hundred at a time), and every key still credits once.
#[tokio::test]
async fn rewrite_moves_thousands_of_top_up_records() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let fields_ledger = ledger(&server, &clock, false).await;
    let packing = ledger(&server, &clock, true).await;
    let a = acct("many_keys");
    fields_ledger
        .top_up(TopUp::new(&a, 1, "pay-0"))
        .await
        .unwrap();
    // 4,500 records made straight in `topups` (through the ledger it takes minutes), and
    // `topped_up` to match.
    server.cli(&[
        "EVAL",
        "for i = 1, 4499 do redis.call('HSET', KEYS[2], 'bulk-' .. i, 1) end \
         redis.call('HINCRBY', KEYS[1], 'topped_up', 4499) return 1",
        "2",
        "credits:{many_keys}:acct",
        "credits:{many_keys}:topups",
    ]);
    assert_eq!(packing.rewrite_accounts().await.unwrap(), 1);
    assert_eq!(top_up_fields(&server, "many_keys").len(), 4_500);
    assert_eq!(server.cli(&["EXISTS", "credits:{many_keys}:topups"]), "0");
    assert!(
        packing
            .top_up(TopUp::new(&a, 1, "bulk-4499"))
            .await
            .unwrap()
            .replayed
    );
    // The records sum to `topped_up` (the bulk ones have no claims: not checked here).
    let drifts = packing
        .reconcile(&a, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!drifts.iter().any(|d| d.check == "topped_up"));
    assert_eq!(fields_ledger.rewrite_accounts().await.unwrap(), 1);
    assert_eq!(top_up_fields(&server, "many_keys").len(), 0);
    assert_eq!(server.cli(&["HLEN", "credits:{many_keys}:topups"]), "4500");
    assert!(
        fields_ledger
            .top_up(TopUp::new(&a, 1, "bulk-1"))
            .await
            .unwrap()
            .replayed
    );
    assert_eq!(fields_ledger.balance(&a).await.unwrap().topped_up, 4_500);
}

/// The adversarial twin of the trail's moves: an account whose trail is in both forms at
/// once (a text and a list, as a replica of a build before the format mark could leave
/// one) loses no entry when the rewrite makes it text, or the fifth entry a list: both
/// are merged by entry number.
#[tokio::test]
async fn a_trail_in_both_forms_is_merged_in_order_by_either_move() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger(&server, &clock, true).await;
    // Entry 1 stays text, entry 2 goes to the list, and `v` is of the first format (no
    // mark, so no `trail` figure).
    const SPLIT: &str = "local text = redis.call('GET', KEYS[2]) \
        local second = cmsgpack.unpack_limit(text, 1, 0) \
        redis.call('SET', KEYS[2], string.sub(text, 1, second)) \
        redis.call('LPUSH', KEYS[3], string.sub(text, second + 1)) \
        local r = {cmsgpack.unpack(redis.call('HGET', KEYS[1], 'v'))} \
        redis.call('HSET', KEYS[1], 'v', cmsgpack.pack(unpack(r, 2, 21))) \
        return 1";
    for name in ["both_rewrite", "both_fifth"] {
        let a = acct(name);
        l.top_up(TopUp::new(&a, 100, format!("pay-{name}")))
            .await
            .unwrap();
        let hold = held(&l, &a, &format!("{name}-1"), 10).await;
        let two = trail_entries(&l, &a).await;
        assert_eq!(two.len(), 2);
        server.cli(&[
            "EVAL",
            SPLIT,
            "3",
            &format!("credits:{{{name}}}:acct"),
            &format!("credits:{{{name}}}:trail"),
            &format!("credits:{{{name}}}:log"),
        ]);
        assert_eq!(trail_form(&server, name), "both");
        let drifts = l.reconcile(&a, Duration::from_secs(60)).await.unwrap();
        assert!(
            drifts.iter().any(|d| d.check == "trail_forms"),
            "{drifts:?}"
        );
        if name == "both_rewrite" {
            assert!(l.rewrite_account(&a).await.unwrap());
            assert_eq!(trail_form(&server, name), "text");
            assert_eq!(trail_entries(&l, &a).await, two);
        } else {
            // Entries 3 to 6 go to the list (the account's `trail` figure is not set); the
            // rewrite then merges the text into the list.
            l.commit(&a, &hold, 10).await.unwrap();
            let hold = held(&l, &a, &format!("{name}-2"), 10).await;
            l.commit(&a, &hold, 10).await.unwrap();
            let hold = held(&l, &a, &format!("{name}-3"), 10).await;
            l.commit(&a, &hold, 10).await.unwrap();
            assert_eq!(trail_form(&server, name), "both");
            assert!(l.rewrite_account(&a).await.unwrap());
            assert_eq!(trail_form(&server, name), "list");
            let ids: Vec<u64> = trail(&l, &a).await;
            assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7], "every entry, in order");
            assert_eq!(trail_entries(&l, &a).await[5..], two[..]);
        }
        assert_eq!(
            l.reconcile(&a, Duration::from_secs(60)).await.unwrap(),
            vec![],
            "{name}"
        );
    }
}
