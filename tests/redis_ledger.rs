//! What only a Redis ledger can get wrong: scripts lost by the server, restarts, a server
//! that stops answering, hostile ids and amounts that must never reach Redis, several
//! replicas racing on one account, and the keys it leaves behind.
//!
//! Every test starts its own `redis-server` (see `tests/support/redis.rs`) and never sleeps
//! except inside a poll with a deadline. The shared semantics are in the conformance suite
//! (`tests/conformance_redis.rs`, `tests/conformance_cluster.rs`).
//!
//! The ledgers here pack accounts (the default); an account's figures are read straight
//! from Redis in either form (`RedisServer::figure`).

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use support::redis::{RedisCluster, RedisOptions, RedisServer};
use support::rig::{wait_for_async, DEADLINE};
use tower_credits::clock::ManualClock;
use tower_credits::ledger::RedisLedger;
use tower_credits::ledger::{Configure, Extend};
use tower_credits::ledger::{HoldId, Reserve, ReserveOutcome, SettleOutcome, MAX_AMOUNT};
use tower_credits::{AccountId, AccountSettings, ApiKeyHash, Ledger, LedgerError};
use tower_credits::{LedgerAdmin, LedgerReports, TopUp};

/// Call deadline of the ledgers of tests that are not about deadlines: generous, so a busy
/// machine (tests run in parallel, `appendfsync always`) does not fail them.
const PATIENT: Duration = Duration::from_secs(5);

fn acct(id: &str) -> AccountId {
    AccountId::new(id).unwrap()
}

fn hold(id: &str) -> HoldId {
    HoldId::new(id).unwrap()
}

async fn ledger(server: &RedisServer) -> RedisLedger {
    RedisLedger::builder()
        .url(server.url())
        .call_timeout(PATIENT)
        .build()
        .await
        .expect("connect to the test redis-server")
}

async fn ledger_on(server: &RedisServer, clock: &ManualClock) -> RedisLedger {
    RedisLedger::builder()
        .url(server.url())
        .call_timeout(PATIENT)
        .test_clock(clock.clone())
        .build()
        .await
        .expect("connect to the test redis-server")
}

/// `ledger_on`, keeping accounts in fields (`pack_accounts(false)`): for the tests of the
/// field form's own behaviour (a field poked by hand, a prune on every settle).
async fn fields_ledger_on(server: &RedisServer, clock: &ManualClock) -> RedisLedger {
    RedisLedger::builder()
        .pack_accounts(false)
        .url(server.url())
        .call_timeout(PATIENT)
        .test_clock(clock.clone())
        .build()
        .await
        .expect("connect to the test redis-server")
}

fn expect_held(outcome: ReserveOutcome) -> tower_credits::ledger::Held {
    match outcome {
        ReserveOutcome::Held(held) => held,
        other => panic!("expected a hold, got {other:?}"),
    }
}

/// How the ledger closed hold `id` (`committed`, `refunded` or `expired`), from the low two
/// bits of its score in the account's `done` set; empty when it is not remembered.
fn closed_how(server: &RedisServer, done: &str, id: &str) -> String {
    let score = server.cli(&["ZSCORE", done, id]);
    if score.is_empty() {
        return String::new();
    }
    let score: u64 = score.parse().unwrap_or_else(|_| panic!("score {score:?}"));
    ["", "committed", "refunded", "expired"][(score % 4) as usize].to_owned()
}

/// A figure of the account, read straight from Redis in either form (0 when absent).
fn acct_field(server: &RedisServer, account: &str, field: &str) -> i64 {
    server.figure(account, field)
}

/// Number of script calls the server has seen (`EVAL`, `EVALSHA`, `FCALL`).
fn script_calls(server: &RedisServer) -> u64 {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_eval") || l.starts_with("cmdstat_fcall"))
        .map(|l| {
            let calls = l.split("calls=").nth(1).expect("calls=");
            calls[..calls.find(',').unwrap()].parse::<u64>().unwrap()
        })
        .sum()
}

// ---------------------------------------------------------------------------------------
// Scripts
// ---------------------------------------------------------------------------------------

/// The names of the Redis Function libraries loaded on the server.
fn libraries(server: &RedisServer) -> Vec<String> {
    let list = server.cli(&["FUNCTION", "LIST"]);
    let lines: Vec<&str> = list.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "library_name")
        .map(|w| w[1].to_owned())
        .collect()
}

/// On Redis 7 the scripts are one Function library, loaded at connect, versioned by name.
/// After `FUNCTION FLUSH` (as after a restart without persistence, or a failover to a node
/// that never got it) the next call is answered `Function not found`: the ledger loads the
/// library again and the caller sees nothing of it.
#[tokio::test]
async fn the_function_library_is_loaded_again_when_the_server_lost_it() {
    let server = RedisServer::start();
    let l = ledger(&server).await;
    assert!(l.uses_functions());
    let loaded = libraries(&server);
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert!(loaded[0].starts_with("tower_credits_"), "{loaded:?}");
    let a = acct("acct_fn");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 10))
            .await
            .unwrap(),
    );
    assert_eq!(
        cached_scripts(&server),
        1,
        "only the top-up key claim is EVALSHA"
    );

    server.cli(&["FUNCTION", "FLUSH"]);
    assert!(libraries(&server).is_empty());
    let s = l.commit(&a, &hold("h1"), 4).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    assert_eq!(libraries(&server), loaded, "the same version, loaded again");
    let b = l.balance(&a).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (96, 0, 4));
}

/// After `SCRIPT FLUSH` (as after a restart without persistence of the script cache), the
/// first `EVALSHA` gets `NOSCRIPT`, and the ledger loads the script and carries on.
#[tokio::test]
async fn scripts_flushed_from_the_server_are_loaded_again() {
    let server = RedisServer::start();
    let l = RedisLedger::builder()
        .url(server.url())
        .call_timeout(PATIENT)
        .evalsha_only()
        .build()
        .await
        .unwrap();
    let a = acct("acct_noscript");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 10))
            .await
            .unwrap(),
    );
    assert!(cached_scripts(&server) >= 2);

    server.cli(&["SCRIPT", "FLUSH"]);
    assert_eq!(cached_scripts(&server), 0);

    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h2"), 10))
            .await
            .unwrap(),
    );
    let s = l.commit(&a, &hold("h1"), 4).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    let b = l.balance(&a).await.unwrap();
    assert_eq!((b.available, b.held, b.committed), (86, 10, 4));
    assert!(
        cached_scripts(&server) >= 3,
        "reserve, settle and balance reloaded"
    );
}

fn cached_scripts(server: &RedisServer) -> u64 {
    let info = server.cli(&["INFO", "memory"]);
    let line = info
        .lines()
        .find(|l| l.starts_with("number_of_cached_scripts:"))
        .expect("number_of_cached_scripts in INFO memory");
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

/// A reserve's `ARGV` every check passes (hold `h1`, 5 credits, 60 s), as reserve.lua
/// reads them.
const GOOD_RESERVE: [&str; 14] = [
    "0",
    "3600000",
    "h1",
    "5",
    "60000",
    "",
    "",
    "",
    "replica-1",
    "30000",
    "",
    "",
    "0",
    "30000",
];

/// The scripts check every argument themselves and refuse a bad one before any write, even
/// from a client that skipped the Rust checks.
#[tokio::test]
async fn scripts_refuse_bad_arguments_before_any_write() {
    let server = RedisServer::start();
    let l = ledger(&server).await;
    let a = acct("acct_lua");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("open"), 10))
            .await
            .unwrap(),
    );

    let keys: Vec<String> = [
        "acct", "holds", "expiry", "done", "usage", "topups", "outbox", "leases", "dead",
    ]
    .iter()
    .map(|s| format!("credits:{{acct_lua}}:{s}"))
    .collect();
    let snapshot = |server: &RedisServer| -> Vec<String> {
        keys.iter()
            .map(|k| server.cli(&["DUMP", k]))
            .chain([server.dbsize().to_string()])
            .collect()
    };
    let before = snapshot(&server);

    // The exact text the ledger loads: the generated prelude, lib.lua, the script.
    let reserve = &RedisLedger::script_source("reserve").expect("reserve script");
    let top_up = &RedisLedger::script_source("top_up").expect("top_up script");
    let good_reserve = GOOD_RESERVE;
    let bad_reserves: Vec<(usize, &str)> = vec![
        (0, "-1"),
        (1, "1e3"),
        (2, "a}b"),
        (2, ""),
        (2, "x".repeat(65).leak()),
        (3, "9007199254740992"),
        (3, "99999999999999999999"),
        (3, "1e3"),
        (3, "0x10"),
        (3, " 5"),
        (3, "-5"),
        (3, "5.5"),
        (3, ""),
        (4, "0"),
        (4, "86400001"),
        (5, "GET /\nx"),
        (5, "\u{85}"),
        (5, "r".repeat(257).leak()),
        (6, "two"),
        (7, "-1"),
        (7, "1e3"),
        (7, "9007199254740992"),
        (8, ""),
        (8, "a b"),
        (8, "{x}"),
        (8, "r".repeat(65).leak()),
        (9, "-1"),
        (9, "86400001"),
        (10, "not-a-digest"),
        (10, "ab".repeat(31).leak()),
        (13, "-1"),
        (13, "1e3"),
    ];
    for (i, bad) in bad_reserves {
        let mut args = good_reserve.to_vec();
        args[i] = bad;
        let err = eval(&server, reserve, &keys, &args).expect_err(&format!("ARGV {i} = {bad:?}"));
        assert!(
            err.contains("tower-credits: invalid argument"),
            "ARGV {i} = {bad:?}: {err}"
        );
    }
    assert_eq!(
        snapshot(&server),
        before,
        "a refused reserve wrote something"
    );
    // The good arguments do hold: the checks are not refusing everything.
    let reply = eval(&server, reserve, &keys, &good_reserve).unwrap();
    assert!(reply.starts_with("held"), "{reply}");
    let s = l.refund(&a, &hold("h1")).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Refunded);

    let before = snapshot(&server);
    for (amount, key) in [
        ("9007199254740992", "k"),
        ("-1", "k"),
        ("1e2", "k"),
        ("5", ""),
        ("5", "has space"),
        ("5", "é"),
    ] {
        let err = eval(&server, top_up, &keys, &["0", "3600000", amount, key])
            .expect_err(&format!("top-up {amount:?} {key:?}"));
        assert!(err.contains("tower-credits: invalid argument"), "{err}");
    }
    assert_eq!(
        snapshot(&server),
        before,
        "a refused top-up wrote something"
    );
}

/// As a Redis Function a script keeps the argument texts it has checked, by check (a memo
/// that saves a pattern match and a `tonumber` per argument): a bad text is still refused
/// on every call, a text good for one check is checked again for another, and a flood of
/// distinct good texts (past the memo's bound, which drops it whole) changes neither.
#[tokio::test]
async fn a_function_remembers_only_good_arguments_and_only_for_their_own_check() {
    let server = RedisServer::start();
    let l = ledger(&server).await;
    assert!(
        l.uses_functions(),
        "the library is loaded as Redis Functions"
    );
    let a = acct("acct_memo");
    l.top_up(TopUp::new(&a, 1_000_000_000, "pay-1"))
        .await
        .unwrap();
    let (_, function) = RedisLedger::function_library("reserve").expect("reserve function");
    let keys: Vec<String> = [
        "acct", "holds", "expiry", "done", "usage", "topups", "outbox", "leases", "dead",
    ]
    .iter()
    .map(|s| format!("credits:{{acct_memo}}:{s}"))
    .collect();
    let fcall = |args: &[&str]| {
        let mut cli: Vec<&str> = vec!["FCALL", &function, "9"];
        cli.extend(keys.iter().map(String::as_str));
        cli.extend(args);
        server.try_cli(&cli)
    };
    // GOOD_RESERVE with this hold id, amount and TTL, and an audit trail cap.
    let reserve = |id: &'static str, amount: &'static str, ttl: &'static str| {
        let mut args = GOOD_RESERVE.to_vec();
        (args[2], args[3], args[4]) = (id, amount, ttl);
        args.push("100");
        args
    };
    // 86400001 is a good amount, and now remembered as one...
    let held = fcall(&reserve("m1", "86400001", "60000")).unwrap();
    assert!(held.starts_with("held"), "{held}");
    // ...but not as a TTL, whose most is 86400000.
    let err = fcall(&reserve("m2", "5", "86400001")).expect_err("a TTL past a day");
    assert!(err.contains("invalid argument: ttl"), "{err}");

    // Past the memo's bound of 1,024 texts, through the ledger's own calls.
    for amount in 1..=1_100u64 {
        let id = hold(&format!("flood-{amount}"));
        let held = l.reserve(Reserve::new(a.clone(), id.clone(), amount)).await;
        assert!(matches!(held, Ok(ReserveOutcome::Held(_))), "{held:?}");
        l.refund(&a, &id).await.unwrap();
    }
    let before = server.cli(&["DUMP", &keys[0]]);
    for (i, bad) in [
        (3, "1e3"),
        (3, "-5"),
        (4, "0"),
        (0, "-1"),
        (8, "a b"),
        (14, "x"),
    ] {
        let mut args = reserve("m3", "5", "60000");
        args[i] = bad;
        let err = fcall(&args).expect_err(&format!("ARGV {i} = {bad:?}"));
        assert!(
            err.contains("tower-credits: invalid argument"),
            "ARGV {i} = {bad:?}: {err}"
        );
        // And again: a refused text is never remembered as good.
        let err = fcall(&args).expect_err(&format!("ARGV {i} = {bad:?}, twice"));
        assert!(
            err.contains("tower-credits: invalid argument"),
            "ARGV {i} = {bad:?}: {err}"
        );
    }
    assert_eq!(
        server.cli(&["DUMP", &keys[0]]),
        before,
        "a refused reserve wrote"
    );
    let held = fcall(&reserve("m4", "5", "60000")).unwrap();
    assert!(
        held.starts_with("held"),
        "the good texts still hold: {held}"
    );
}

/// `EVAL` through redis-cli.
fn eval(
    server: &RedisServer,
    script: &str,
    keys: &[String],
    args: &[&str],
) -> Result<String, String> {
    let numkeys = keys.len().to_string();
    let mut cli_args: Vec<&str> = vec!["EVAL", script, &numkeys];
    cli_args.extend(keys.iter().map(String::as_str));
    cli_args.extend(args);
    server.try_cli(&cli_args)
}

// ---------------------------------------------------------------------------------------
// Durability and faults
// ---------------------------------------------------------------------------------------

/// With `appendonly yes` and `appendfsync always`, a server killed with SIGKILL and started
/// again keeps every balance, open hold, tombstone and top-up key it acknowledged, and the
/// ledger reconnects on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aof_restart_keeps_balances_and_holds() {
    let mut server = RedisServer::start_with(RedisOptions::aof_always());
    let l = ledger(&server).await;
    let a = acct("acct_durable");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("done"), 30))
            .await
            .unwrap(),
    );
    l.commit(&a, &hold("done"), 10).await.unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("open"), 25))
            .await
            .unwrap(),
    );
    l.refund(&a, &hold("tombstone")).await.unwrap();
    let key = ApiKeyHash::of("sk_durable");
    l.register_api_key(&key, &a).await.unwrap();

    server.restart();
    assert!(server.dir().join("appendonlydir").is_dir());

    let b = wait_for_async("the ledger to reconnect", DEADLINE, || async {
        l.balance(&a).await.ok()
    })
    .await;
    assert_eq!(
        (b.available, b.held, b.committed, b.topped_up, b.open_holds),
        (65, 25, 10, 100, 1)
    );
    // The open hold is still open, the settled one still settled, the tombstone still there.
    let s = l.commit(&a, &hold("open"), 25).await.unwrap();
    assert_eq!((s.outcome, s.committed), (SettleOutcome::Committed, 25));
    let s = l.commit(&a, &hold("done"), 10).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::AlreadyCommitted);
    assert!(matches!(
        l.reserve(Reserve::new(a.clone(), hold("tombstone"), 1))
            .await
            .unwrap(),
        ReserveOutcome::Closed(SettleOutcome::AlreadyRefunded)
    ));
    // The payment id still credits once.
    assert!(
        l.top_up(TopUp::new(&a, 100, "pay-1"))
            .await
            .unwrap()
            .replayed
    );
    assert_eq!(l.lookup_api_key(&key).await.unwrap(), Some(a.clone()));
    let usage = l.usage(&a).await.unwrap();
    assert_eq!(usage.by_route[""].credits, 35);
    let b = l.balance(&a).await.unwrap();
    assert_eq!(
        (b.available, b.held, b.committed, b.topped_up),
        (65, 0, 35, 100)
    );
}

/// A service that held credits and vanished (crashed, killed, partitioned) never settles:
/// its holds come back once their ttl has passed, reclaimed lazily by the account's next
/// call on any replica, at most 64 per call.
#[tokio::test]
async fn holds_of_a_vanished_service_come_back_after_their_ttl() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let a = acct("acct_vanished");
    let survivor = ledger_on(&server, &clock).await;
    survivor
        .top_up(TopUp::new(&a, 1_000, "pay-1"))
        .await
        .unwrap();

    {
        let doomed = ledger_on(&server, &clock).await;
        for i in 0..100 {
            let r = Reserve::new(a.clone(), hold(&format!("lost-{i}")), 3)
                .ttl(Duration::from_secs(30))
                .route("POST /v1/lost");
            expect_held(doomed.reserve(r).await.unwrap());
        }
        // The service is gone without settling anything.
    }
    let b = survivor.balance(&a).await.unwrap();
    assert_eq!((b.available, b.held, b.open_holds), (700, 300, 100));

    clock.advance(Duration::from_secs(20));
    let b = survivor.balance(&a).await.unwrap();
    assert_eq!((b.held, b.open_holds), (300, 100), "not expired yet");

    clock.advance(Duration::from_secs(11));
    // Bounded work: one call reclaims 64, the next the remaining 36.
    let b = survivor.balance(&a).await.unwrap();
    assert_eq!((b.available, b.held, b.open_holds), (892, 108, 36));
    let b = survivor.balance(&a).await.unwrap();
    assert_eq!(
        (b.available, b.held, b.committed, b.open_holds),
        (1_000, 0, 0, 0)
    );

    // A late settle from a replica that survived says the hold expired, and moves nothing.
    let s = survivor.commit(&a, &hold("lost-7"), 3).await.unwrap();
    assert_eq!((s.outcome, s.committed), (SettleOutcome::Expired, 0));
    assert!(survivor.usage(&a).await.unwrap().by_route.is_empty());
}

/// Closed ids are forgotten once no call about them can come (the hold's expiry + call
/// timeout + 1 s), tombstones of never-seen ids after the longest TTL reserved with + call
/// timeout + 1 s, so `done` does not grow forever; after that the id is free again.
#[tokio::test]
async fn closed_hold_ids_are_forgotten_after_the_retention() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = RedisLedger::builder()
        .url(server.url())
        .call_timeout(PATIENT)
        .test_clock(clock.clone())
        .build()
        .await
        .unwrap();
    let grace = PATIENT + Duration::from_secs(1);
    let a = acct("acct_retention");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 10).ttl(Duration::from_secs(10)))
            .await
            .unwrap(),
    );
    l.commit(&a, &hold("h1"), 10).await.unwrap();
    l.refund(&a, &hold("never-reserved")).await.unwrap();
    let done = "credits:{acct_retention}:done";
    assert_eq!(server.cli(&["ZCARD", done]), "2");
    assert_eq!(closed_how(&server, done, "h1"), "committed");
    assert_eq!(closed_how(&server, done, "never-reserved"), "refunded");

    // Just short of the hold's expiry + grace (the real clock only adds to it).
    clock.advance(Duration::from_secs(10) + grace - Duration::from_secs(1));
    l.balance(&a).await.unwrap();
    assert_eq!(
        server.cli(&["ZCARD", done]),
        "2",
        "a late call may still come"
    );

    clock.advance(Duration::from_secs(2));
    l.balance(&a).await.unwrap();
    assert_eq!(
        server.cli(&["ZCARD", done]),
        "1",
        "the tombstone outlives the hold"
    );
    assert_eq!(closed_how(&server, done, "never-reserved"), "refunded");

    // The tombstone stands for a reserve of the default TTL (60 s), the longest used here.
    clock.advance(Duration::from_secs(50));
    l.balance(&a).await.unwrap();
    assert_eq!(server.cli(&["ZCARD", done]), "0");
    assert!(
        !expect_held(
            l.reserve(Reserve::new(a.clone(), hold("h1"), 10))
                .await
                .unwrap()
        )
        .replayed
    );
}

/// A server that stops answering (SIGSTOP) makes a reserve fail with `Timeout` after the
/// call deadline; once it answers again, the reserve it may still have run is refunded in
/// the background (or its id tombstoned), so no credits stay held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_against_a_paused_server_times_out_and_leaves_no_hold() {
    let server = RedisServer::start();
    // A patient ledger sets up and checks; an impatient one makes the call that times out.
    let patient = ledger(&server).await;
    let timeout = Duration::from_millis(100);
    let l = RedisLedger::builder()
        .url(server.url())
        .call_timeout(timeout)
        .build()
        .await
        .unwrap();
    let a = acct("acct_paused");
    patient.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    // Warm up: the scripts are loaded, so the paused call is the reserve itself.
    let warm = Reserve::new(a.clone(), hold("warm"), 1);
    expect_held(patient.reserve(warm).await.unwrap());
    patient.refund(&a, &hold("warm")).await.unwrap();

    server.pause();
    let lost = hold("lost-in-flight");
    // The server cannot answer, so the only way the call ends is the ledger's own call
    // deadline: `Timeout` carrying exactly the configured deadline (not a connection error,
    // not a reply).
    let r = l.reserve(Reserve::new(a.clone(), lost.clone(), 40)).await;
    assert!(
        matches!(r, Err(LedgerError::Timeout(t)) if t == timeout),
        "{r:?}"
    );
    let r = l.balance(&a).await;
    assert!(r.as_ref().is_err_and(LedgerError::is_unavailable), "{r:?}");
    server.resume();

    // The background refund gets through once the server answers again.
    let done = "credits:{acct_paused}:done";
    let how = wait_for_async(
        "the background refund of the timed-out reserve",
        DEADLINE,
        || async {
            let how = closed_how(&server, done, lost.as_str());
            (!how.is_empty()).then_some(how)
        },
    )
    .await;
    assert_eq!(how, "refunded");
    let b = patient.balance(&a).await.unwrap();
    assert_eq!(
        (b.available, b.held, b.open_holds, b.topped_up),
        (100, 0, 0, 100)
    );
    // A late retry of the same id holds nothing.
    assert!(matches!(
        patient
            .reserve(Reserve::new(a.clone(), lost, 40))
            .await
            .unwrap(),
        ReserveOutcome::Closed(SettleOutcome::AlreadyRefunded)
    ));
}

/// A reserve whose future is dropped while the server has not answered (a client that
/// went away, a caller's own timeout) is refunded in the background too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_reserve_is_refunded() {
    let server = RedisServer::start();
    let l = ledger(&server).await;
    let a = acct("acct_dropped");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("warm"), 1))
            .await
            .unwrap(),
    );
    l.refund(&a, &hold("warm")).await.unwrap();

    server.pause();
    let dropped = hold("dropped");
    let call = l.reserve(Reserve::new(a.clone(), dropped.clone(), 40));
    // The caller gives up long before the ledger's own 5 s deadline, dropping the future.
    let r = tokio::time::timeout(Duration::from_millis(100), call).await;
    assert!(r.is_err(), "{r:?}");
    server.resume();

    let done = "credits:{acct_dropped}:done";
    let how = wait_for_async(
        "the background refund of the dropped reserve",
        DEADLINE,
        || async {
            let how = closed_how(&server, done, dropped.as_str());
            (!how.is_empty()).then_some(how)
        },
    )
    .await;
    assert_eq!(how, "refunded");
    let b = l.balance(&a).await.unwrap();
    assert_eq!((b.available, b.held, b.open_holds), (100, 0, 0));

    // A reserve that answered is not refunded when its future is dropped after.
    let kept = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("kept"), 10))
            .await
            .unwrap(),
    );
    assert_eq!(kept.available, 90);
    let b = l.balance(&a).await.unwrap();
    assert_eq!((b.held, b.open_holds), (10, 1));
}

/// A server that is gone is `Unavailable` (or `Timeout`), never a hang; building a ledger
/// against nothing fails the same way.
#[tokio::test]
async fn a_dead_server_is_unavailable() {
    let mut server = RedisServer::start();
    let l = ledger(&server).await;
    let a = acct("acct_dead");
    l.top_up(TopUp::new(&a, 10, "pay-1")).await.unwrap();
    let url = server.url();
    server.kill();

    let r = l.balance(&a).await;
    assert!(r.as_ref().is_err_and(LedgerError::is_unavailable), "{r:?}");
    let r = l.reserve(Reserve::new(a.clone(), hold("h1"), 1)).await;
    assert!(r.as_ref().is_err_and(LedgerError::is_unavailable), "{r:?}");

    // Nothing listens on the port any more: the connection is refused, and `build` says
    // so (`Unavailable`) instead of waiting out its connect deadline (`Timeout`).
    let r = RedisLedger::builder()
        .url(url)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .await;
    assert!(matches!(&r, Err(LedgerError::Unavailable(_))), "{r:?}");

    let r = RedisLedger::builder().build().await;
    assert!(
        matches!(&r, Err(LedgerError::Unavailable(e)) if e.to_string().contains("url")),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Input that must never reach Redis
// ---------------------------------------------------------------------------------------

/// Account ids that would break out of the hash tag, or smuggle control characters into
/// keys and logs, are refused by `AccountId::new` with a clear error: no key is written.
#[tokio::test]
async fn hostile_account_ids_are_refused_and_write_nothing() {
    let server = RedisServer::start();
    let _ledger = ledger(&server).await;
    let ten_kb = "a".repeat(10 * 1024);
    for (id, why) in [
        ("acct}{x", "ASCII letters"),
        ("{acct}", "ASCII letters"),
        ("acct}", "ASCII letters"),
        ("", "empty"),
        (ten_kb.as_str(), "longer than 128 bytes"),
        ("acct\r\nDEL *", "ASCII letters"),
        ("acct\u{0}", "ASCII letters"),
        ("acct\u{1b}[31m", "ASCII letters"),
        ("acct x", "ASCII letters"),
        ("ácct", "ASCII letters"),
        ("账户", "ASCII letters"),
        ("acct\u{202e}", "ASCII letters"),
    ] {
        let err = AccountId::new(id).expect_err(&format!("{id:?} accepted"));
        assert!(
            matches!(err, LedgerError::InvalidAccountId { .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with("invalid account id") && message.contains(why),
            "{id:?}: {message}"
        );
    }
    assert_eq!(server.dbsize(), 0);
}

/// Amounts and settings past `MAX_AMOUNT` are refused in Rust, before any script runs;
/// totals are refused by the script without a write, and 2^53 − 1 is stored exactly.
#[tokio::test]
async fn amounts_past_max_are_refused_before_redis() {
    let server = RedisServer::start();
    let l = ledger(&server).await;
    let a = acct("acct_max");
    let too_big = MAX_AMOUNT + 1;
    let out_of_range = |r: &LedgerError| matches!(r, LedgerError::AmountOutOfRange { max, .. } if *max == MAX_AMOUNT);

    for amount in [too_big, u64::MAX] {
        let r = l.top_up(TopUp::new(&a, amount, "pay-1")).await.unwrap_err();
        assert!(out_of_range(&r), "{r:?}");
        let r = l
            .reserve(Reserve::new(a.clone(), hold("h1"), amount))
            .await
            .unwrap_err();
        assert!(out_of_range(&r), "{r:?}");
        let r = l.commit(&a, &hold("h1"), amount).await.unwrap_err();
        assert!(out_of_range(&r), "{r:?}");
        let r = l
            .configure(Configure::new(
                &a,
                AccountSettings::new().credit_limit(amount),
            ))
            .await
            .unwrap_err();
        assert!(out_of_range(&r), "{r:?}");
        let r = l
            .configure(Configure::new(
                &a,
                AccountSettings::new().low_balance_threshold(amount),
            ))
            .await
            .unwrap_err();
        assert!(out_of_range(&r), "{r:?}");
    }
    let r = l
        .reserve(Reserve::new(a.clone(), hold("h1"), 1).ttl(Duration::ZERO))
        .await;
    assert!(matches!(r, Err(LedgerError::InvalidTtl { .. })), "{r:?}");
    let r = l.top_up(TopUp::new(&a, 1, "bad key")).await;
    assert!(
        matches!(r, Err(LedgerError::InvalidIdempotencyKey)),
        "{r:?}"
    );
    assert_eq!(script_calls(&server), 0, "a refused call reached Redis");
    assert_eq!(server.dbsize(), 0);

    // The largest amount is stored exactly (a double would round 2^53 + 1).
    l.top_up(TopUp::new(&a, MAX_AMOUNT, "max")).await.unwrap();
    assert_eq!(
        acct_field(&server, "acct_max", "topped_up"),
        MAX_AMOUNT as i64
    );
    let r = l.top_up(TopUp::new(&a, 1, "one-more")).await.unwrap_err();
    assert!(
        matches!(r, LedgerError::TotalOutOfRange { total, max } if total == too_big && max == MAX_AMOUNT),
        "{r:?}"
    );
    assert_eq!(
        acct_field(&server, "acct_max", "topped_up"),
        MAX_AMOUNT as i64
    );
    // No record in either place a top-up record can be (a packed account's own hash, or
    // `topups`).
    assert_eq!(
        server.cli(&["HEXISTS", "credits:{acct_max}:acct", "+one-more"]),
        "0"
    );
    assert_eq!(
        server.cli(&["HEXISTS", "credits:{acct_max}:topups", "one-more"]),
        "0"
    );
    // Nor is its claim: the key is free again.
    assert_eq!(
        server.cli(&["EXISTS", &l.top_up_claim_key("one-more")]),
        "0"
    );
    let held = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("all"), MAX_AMOUNT))
            .await
            .unwrap(),
    );
    assert_eq!((held.amount, held.available), (MAX_AMOUNT, 0));
    // Written as the exact integer (the scripts spell request-path integers with '%d').
    assert_eq!(
        server.cli(&["HGET", "credits:{acct_max}:holds", "all"]),
        MAX_AMOUNT.to_string()
    );
    let expires: u64 = server
        .cli(&["HGET", "credits:{acct_max}:holds", "all:exp"])
        .parse()
        .expect("the expiry an integer");
    assert_eq!(
        server.cli(&["ZSCORE", "credits:{acct_max}:expiry", "all"]),
        expires.to_string()
    );
    l.commit(&a, &hold("all"), MAX_AMOUNT).await.unwrap();
    assert_eq!(
        server.cli(&["HGET", "credits:{acct_max}:usage", "credits:"]),
        MAX_AMOUNT.to_string()
    );
    assert_eq!(
        acct_field(&server, "acct_max", "committed"),
        MAX_AMOUNT as i64
    );
    assert_eq!(acct_field(&server, "acct_max", "held"), 0);
}

/// Calls on an account that does not exist write nothing at all.
#[tokio::test]
async fn unknown_accounts_create_no_keys() {
    let server = RedisServer::start();
    let l = ledger(&server).await;
    let ghost = acct("acct_ghost");
    let h = hold("h1");
    assert_eq!(
        l.reserve(Reserve::new(ghost.clone(), h.clone(), 1))
            .await
            .unwrap(),
        ReserveOutcome::UnknownAccount
    );
    assert!(matches!(
        l.balance(&ghost).await,
        Err(LedgerError::UnknownAccount)
    ));
    assert!(matches!(
        l.usage(&ghost).await,
        Err(LedgerError::UnknownAccount)
    ));
    assert_eq!(
        l.commit(&ghost, &h, 1).await.unwrap().outcome,
        SettleOutcome::Unknown
    );
    assert_eq!(
        l.refund(&ghost, &h).await.unwrap().outcome,
        SettleOutcome::Unknown
    );
    assert_eq!(
        l.extend(Extend::new(&ghost, &h, Duration::from_secs(5)))
            .await
            .unwrap(),
        tower_credits::ledger::Extended::NotOpen(SettleOutcome::Unknown)
    );
    assert!(script_calls(&server) >= 6, "the scripts did run");
    assert_eq!(server.dbsize(), 0);
}

// ---------------------------------------------------------------------------------------
// Replicas and the data model
// ---------------------------------------------------------------------------------------

/// Four replicas (four `RedisLedger`s, four connections) race on one account: no
/// overshoot, and the stored totals always balance: `topped_up = available + held +
/// committed`, with `held` the sum of the open holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_racing_on_one_account_never_overshoot() {
    const CREDITS: u64 = 300;
    const REPLICAS: usize = 4;
    const TASKS_PER_REPLICA: usize = 8;
    const RESERVES_PER_TASK: usize = 25;
    let server = RedisServer::start();
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(
            RedisLedger::builder()
                .url(server.url())
                .call_timeout(PATIENT)
                .build()
                .await
                .unwrap(),
        );
    }
    let a = acct("acct_race");
    replicas[0]
        .top_up(TopUp::new(&a, CREDITS, "pay-1"))
        .await
        .unwrap();

    // Phase 1: everyone holds as much as they can get.
    let granted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        for t in 0..TASKS_PER_REPLICA {
            let (l, a, granted) = (replica.clone(), a.clone(), granted.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..RESERVES_PER_TASK {
                    let amount = 1 + ((r + t + i) % 5) as u64;
                    let id = hold(&format!("r{r}-t{t}-{i}"));
                    match l
                        .reserve(Reserve::new(a.clone(), id.clone(), amount))
                        .await
                        .unwrap()
                    {
                        ReserveOutcome::Held(held) => {
                            assert!(held.available >= 0, "overshoot: {held:?}");
                            granted.lock().unwrap().push((id, amount));
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
    }
    for task in tasks {
        task.await.unwrap();
    }
    let granted = std::mem::take(&mut *granted.lock().unwrap());
    let held_sum: u64 = granted.iter().map(|(_, amount)| amount).sum();
    assert!(held_sum <= CREDITS, "{held_sum} held out of {CREDITS}");
    assert_stored_totals_balance(&server, &replicas[1], &a).await;
    assert_eq!(acct_field(&server, "acct_race", "held"), held_sum as i64);

    // Phase 2: other replicas settle them, half committed, half refunded, concurrently.
    let mut tasks = Vec::new();
    for (i, (id, amount)) in granted.iter().cloned().enumerate() {
        let (l, a) = (replicas[(i + 1) % REPLICAS].clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let s = if i % 2 == 0 {
                l.commit(&a, &id, amount).await.unwrap()
            } else {
                l.refund(&a, &id).await.unwrap()
            };
            assert!(s.outcome.is_applied(), "{s:?}");
            s.committed
        }));
    }
    let mut committed = 0;
    for task in tasks {
        committed += task.await.unwrap();
    }
    let b = assert_stored_totals_balance(&server, &replicas[2], &a).await;
    assert_eq!(
        (b.available, b.held, b.committed, b.topped_up),
        ((CREDITS - committed) as i64, 0, committed, CREDITS)
    );
}

/// Reads the account hash straight from Redis and checks it against the ledger's balance:
/// `topped_up = available + held + committed`, and `held` = the sum of the open holds.
async fn assert_stored_totals_balance(
    server: &RedisServer,
    l: &RedisLedger,
    a: &AccountId,
) -> tower_credits::Balance {
    let id = a.as_str();
    let topped_up = acct_field(server, id, "topped_up");
    let held = acct_field(server, id, "held");
    let committed = acct_field(server, id, "committed");
    // Field `<hold>` is its amount; `<hold>:exp` and `<hold>:route` ride beside it.
    let holds = server.cli(&["HGETALL", &format!("credits:{{{id}}}:holds")]);
    let fields: Vec<&str> = holds.lines().collect();
    let open: i64 = fields
        .chunks(2)
        .filter(|kv| !kv[0].contains(':'))
        .map(|kv| kv[1].parse::<i64>().unwrap())
        .sum();
    assert_eq!(held, open, "held is not the sum of the open holds");
    let b = l.balance(a).await.unwrap();
    assert_eq!(
        (b.topped_up as i64, b.held as i64, b.committed as i64),
        (topped_up, held, committed)
    );
    assert_eq!(topped_up, b.available + held + committed, "conservation");
    assert!(b.available >= 0, "overshoot: {b:?}");
    b
}

/// The keys are exactly the documented ones, each account's under its hash tag, and the
/// top-up keys never expire.
#[tokio::test]
async fn keys_follow_the_documented_layout() {
    let server = RedisServer::start();
    let l = ledger(&server).await;
    let a = acct("user@example.com");
    l.configure(Configure::new(
        &a,
        AccountSettings::new().low_balance_threshold(5),
    ))
    .await
    .unwrap();
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 10).route("GET /x"))
            .await
            .unwrap(),
    );
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h2"), 10).route("GET /y"))
            .await
            .unwrap(),
    );
    l.commit(&a, &hold("h1"), 3).await.unwrap();
    let key = ApiKeyHash::of("sk_layout");
    l.register_api_key(&key, &a).await.unwrap();

    let keys: BTreeSet<String> = server
        .cli(&["KEYS", "*"])
        .lines()
        .map(str::to_owned)
        .collect();
    let tag = "credits:{user@example.com}";
    // A packed account's audit trail is text (`trail`), and its top-up records are in its
    // own hash (an account in fields keeps the list `log` and the hash `topups`).
    let want: BTreeSet<String> = ["acct", "holds", "expiry", "done", "usage", "trail"]
        .iter()
        .map(|s| format!("{tag}:{s}"))
        .chain([format!("credits:apikey:{}", key.to_hex())])
        .chain([l.top_up_claim_key("pay-1")])
        // The holds due-index: the account entered once, at its first hold's expiry.
        .chain(["credits:{!due}:holds".to_owned()])
        .collect();
    assert_eq!(keys, want);
    // Scored at h1's expiry (the first hold), as the account's hash remembers.
    assert_eq!(
        server.cli(&["ZRANGE", "credits:{!due}:holds", "0", "-1", "WITHSCORES"]),
        format!(
            "user@example.com\n{}",
            server.figure("user@example.com", "due_holds")
        )
    );
    assert_ne!(server.figure("user@example.com", "due_holds"), 0);
    assert_eq!(
        server.cli(&["GET", &l.top_up_claim_key("pay-1")]),
        "user@example.com"
    );
    for k in &keys {
        if k.ends_with(":done") {
            // Closed ids go with the key once the last is due: about the hold's TTL
            // (60 s) + call timeout + 1 s, and never longer than the longest TTL.
            let ttl: i64 = server.cli(&["TTL", k]).parse().unwrap();
            assert!((1..=24 * 3600 + 120).contains(&ttl), "{k} TTL {ttl}");
            continue;
        }
        assert_eq!(server.cli(&["TTL", k]), "-1", "{k} expires");
    }
    assert_eq!(
        server.cli(&["HGET", &format!("{tag}:holds"), "h2:route"]),
        "GET /y"
    );
    assert_eq!(
        closed_how(&server, &format!("{tag}:done"), "h1"),
        "committed"
    );
    // A packed account's top-up record: in its own hash.
    assert_eq!(
        server.cli(&["HGET", &format!("{tag}:acct"), "+pay-1"]),
        "100"
    );
    assert_eq!(
        server.cli(&["HGET", &format!("{tag}:usage"), "credits:GET /x"]),
        "3"
    );
    assert_eq!(
        server.cli(&["GET", &format!("credits:apikey:{}", key.to_hex())]),
        "user@example.com"
    );

    // Another prefix keeps another set of keys.
    let other = RedisLedger::builder()
        .url(server.url())
        .call_timeout(PATIENT)
        .key_prefix("billing")
        .build()
        .await
        .unwrap();
    assert!(matches!(
        other.balance(&a).await,
        Err(LedgerError::UnknownAccount)
    ));
    other.top_up(TopUp::new(&a, 1, "pay-1")).await.unwrap();
    assert_eq!(
        server.cli(&["EXISTS", "billing:{user@example.com}:acct"]),
        "1"
    );
    assert_eq!(other.balance(&a).await.unwrap().topped_up, 1);
    assert_eq!(l.balance(&a).await.unwrap().topped_up, 100);
}

/// `max_open_holds` caps the open holds of one account; the refused reserve writes nothing.
#[tokio::test]
async fn max_open_holds_is_enforced() {
    let server = RedisServer::start();
    let l = RedisLedger::builder()
        .url(server.url())
        .call_timeout(PATIENT)
        .max_open_holds(2)
        .build()
        .await
        .unwrap();
    let a = acct("acct_capped");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h1"), 1))
            .await
            .unwrap(),
    );
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("h2"), 1))
            .await
            .unwrap(),
    );
    let r = l.reserve(Reserve::new(a.clone(), hold("h3"), 1)).await;
    assert!(
        matches!(r, Ok(ReserveOutcome::TooManyHolds { limit: 2 })),
        "{r:?}"
    );
    // A replay of an open hold is still answered.
    assert!(
        expect_held(
            l.reserve(Reserve::new(a.clone(), hold("h1"), 1))
                .await
                .unwrap()
        )
        .replayed
    );
    l.refund(&a, &hold("h1")).await.unwrap();
    assert!(
        !expect_held(
            l.reserve(Reserve::new(a.clone(), hold("h3"), 1))
                .await
                .unwrap()
        )
        .replayed
    );
    let b = l.balance(&a).await.unwrap();
    assert_eq!((b.available, b.held, b.open_holds), (98, 2, 2));
}

// ---------------------------------------------------------------------------------------
// The due-indexes: background work found by index, a lost entry repaired by a slow pass
// ---------------------------------------------------------------------------------------

const HOLDS_INDEX: &str = "credits:{!due}:holds";
const EVENTS_INDEX: &str = "credits:{!due}:events";

/// The score of `account` in a due-index, if it has an entry.
fn due_score(server: &RedisServer, index: &str, account: &str) -> Option<u64> {
    let score = server.cli(&["ZSCORE", index, account]);
    (!score.is_empty()).then(|| score.parse().unwrap())
}

/// A reserve enters its account in the holds due-index once per active period (not per
/// request), at its earliest hold's expiry; the sweep finds the account there, reclaims
/// what expired, re-scores the entry while holds stay open, and removes it once none is.
#[tokio::test]
async fn an_expired_hold_is_reclaimed_through_the_holds_index() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger_on(&server, &clock).await;
    let a = acct("acct_indexed");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    assert_eq!(due_score(&server, HOLDS_INDEX, "acct_indexed"), None);
    let r = Reserve::new(a.clone(), hold("short"), 5).ttl(Duration::from_secs(10));
    let short = expect_held(l.reserve(r).await.unwrap());
    assert_eq!(
        due_score(&server, HOLDS_INDEX, "acct_indexed"),
        Some(short.expires_at_ms)
    );
    // A later hold of the same active period writes no entry: the index already looks
    // earlier.
    server.cli(&["ZADD", HOLDS_INDEX, "XX", "1", "acct_indexed"]);
    let r = Reserve::new(a.clone(), hold("long"), 7).ttl(Duration::from_secs(30));
    let long = expect_held(l.reserve(r).await.unwrap());
    assert_eq!(due_score(&server, HOLDS_INDEX, "acct_indexed"), Some(1));
    server.cli(&[
        "ZADD",
        HOLDS_INDEX,
        "XX",
        &short.expires_at_ms.to_string(),
        "acct_indexed",
    ]);

    assert_eq!(l.sweep_expired().await.unwrap(), 0, "nothing due yet");
    clock.advance(Duration::from_secs(11));
    assert_eq!(l.sweep_expired().await.unwrap(), 1);
    assert_eq!(acct_field(&server, "acct_indexed", "held"), 7);
    assert_eq!(
        due_score(&server, HOLDS_INDEX, "acct_indexed"),
        Some(long.expires_at_ms),
        "re-scored at the next open hold's expiry"
    );
    assert_eq!(l.sweep_expired().await.unwrap(), 0, "not due again yet");
    clock.advance(Duration::from_secs(20));
    assert_eq!(l.sweep_expired().await.unwrap(), 1);
    assert_eq!(acct_field(&server, "acct_indexed", "held"), 0);
    assert_eq!(
        due_score(&server, HOLDS_INDEX, "acct_indexed"),
        None,
        "gone"
    );
    assert_eq!(acct_field(&server, "acct_indexed", "due_holds"), 0);

    // The next active period enters it again.
    let r = Reserve::new(a.clone(), hold("again"), 1).ttl(Duration::from_secs(10));
    let again = expect_held(l.reserve(r).await.unwrap());
    assert_eq!(
        due_score(&server, HOLDS_INDEX, "acct_indexed"),
        Some(again.expires_at_ms)
    );
}

/// An entry that never landed (here removed by hand, as a `ZADD` lost to a crash or a
/// failover would leave it) hides the account from the index: the sweep does not see it.
/// The spawned sweeper's slow repair pass finds it and gives its holds back; so does
/// `repair_due_index` at once.
#[tokio::test]
async fn a_lost_holds_index_entry_is_repaired_by_the_slow_pass() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger_on(&server, &clock).await;
    let a = acct("acct_lost");
    l.top_up(TopUp::new(&a, 50, "pay-1")).await.unwrap();
    let r = Reserve::new(a.clone(), hold("h1"), 5).ttl(Duration::from_secs(1));
    expect_held(l.reserve(r).await.unwrap());
    server.cli(&["ZREM", HOLDS_INDEX, "acct_lost"]);
    clock.advance(Duration::from_secs(2));
    assert_eq!(l.sweep_expired().await.unwrap(), 0, "the index lost it");
    assert_eq!(acct_field(&server, "acct_lost", "held"), 5);

    let sweeper = l.spawn_sweeper(Duration::from_millis(20));
    wait_for_async("the repair pass to reclaim the hold", DEADLINE, || async {
        (acct_field(&server, "acct_lost", "held") == 0).then_some(())
    })
    .await;
    sweeper.abort();
    assert_eq!(due_score(&server, HOLDS_INDEX, "acct_lost"), None);

    // The explicit full pass: an open hold whose entry was lost is entered again.
    let r = Reserve::new(a.clone(), hold("h2"), 5).ttl(Duration::from_secs(10));
    let h2 = expect_held(l.reserve(r).await.unwrap());
    server.cli(&["ZREM", HOLDS_INDEX, "acct_lost"]);
    assert_eq!(l.repair_due_index().await.unwrap(), 1);
    assert_eq!(
        due_score(&server, HOLDS_INDEX, "acct_lost"),
        Some(h2.expires_at_ms)
    );
}

/// An event enters its account in the events due-index at its lease's end; once the
/// lease lapses a claim finds it there. With the entry lost, the claims' slow repair pass
/// enters it again and a later claim delivers it, with the same id.
#[tokio::test]
async fn an_event_is_claimed_through_the_index_and_a_lost_entry_is_repaired() {
    use tower_credits::events::EventOutbox;
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger_on(&server, &clock).await;
    let a = acct("acct_evidx");
    l.top_up(TopUp::new(&a, 1, "pay-1")).await.unwrap();
    let ReserveOutcome::Insufficient(refusal) = l
        .reserve(Reserve::new(a.clone(), hold("r1"), 2))
        .await
        .unwrap()
    else {
        panic!("not refused")
    };
    let event = refusal.events[0].clone();
    let lease_end =
        event.created_at_ms + tower_credits::ledger::DEFAULT_EVENT_LEASE.as_millis() as u64;
    assert_eq!(
        due_score(&server, EVENTS_INDEX, "acct_evidx"),
        Some(lease_end)
    );

    clock.advance(Duration::from_secs(31));
    let claimed = l.claim(Duration::from_secs(10), 10).await.unwrap();
    assert_eq!(claimed, vec![event.clone()]);
    let rescored = due_score(&server, EVENTS_INDEX, "acct_evidx").unwrap();
    assert!(
        rescored >= event.created_at_ms + 31_000 + 10_000,
        "re-scored at the new lease's end: {rescored}"
    );

    // Lost: no claim sees it through the index, until the repair pass enters it again.
    server.cli(&["ZREM", EVENTS_INDEX, "acct_evidx"]);
    clock.advance(Duration::from_secs(11));
    let again = wait_for_async("a claim after the repair step", DEADLINE, || async {
        let claimed = l.claim(Duration::from_secs(10), 10).await.unwrap();
        (!claimed.is_empty()).then_some(claimed)
    })
    .await;
    assert_eq!(again, vec![event.clone()], "the same event, the same id");
    l.ack(&event).await.unwrap();
    clock.advance(Duration::from_secs(11));
    assert!(l
        .claim(Duration::from_secs(10), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        due_score(&server, EVENTS_INDEX, "acct_evidx"),
        None,
        "an empty outbox leaves the index"
    );
}

// ---------------------------------------------------------------------------------------
// The sweeper: expired holds of accounts that get no more requests
// ---------------------------------------------------------------------------------------

/// An account whose replica held credits and died, and that gets no request since, keeps
/// its expired holds until `sweep_expired` gives them back: at most 64 per account per
/// sweep, unexpired holds of other accounts untouched. Checked on the raw hash: `balance()`
/// would reclaim by itself.
#[tokio::test]
async fn the_sweeper_reclaims_expired_holds_of_idle_accounts() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger_on(&server, &clock).await;
    let idle = acct("acct_idle");
    let live = acct("acct_live");
    l.top_up(TopUp::new(&idle, 1_000, "pay-1")).await.unwrap();
    l.top_up(TopUp::new(&live, 100, "pay-2")).await.unwrap();
    for i in 0..100 {
        let r = Reserve::new(idle.clone(), hold(&format!("idle-{i}")), 3)
            .ttl(Duration::from_secs(10))
            .route("POST /v1/lost");
        expect_held(l.reserve(r).await.unwrap());
    }
    let r = Reserve::new(live.clone(), hold("long"), 7).ttl(Duration::from_secs(60));
    expect_held(l.reserve(r).await.unwrap());
    assert_eq!(acct_field(&server, "acct_idle", "held"), 300);

    assert_eq!(l.sweep_expired().await.unwrap(), 0, "nothing expired yet");
    assert_eq!(acct_field(&server, "acct_idle", "held"), 300);

    clock.advance(Duration::from_secs(11));
    // No request reaches either account: only the sweeps.
    assert_eq!(
        l.sweep_expired().await.unwrap(),
        64,
        "bounded work per account"
    );
    assert_eq!(acct_field(&server, "acct_idle", "held"), 108);
    assert_eq!(l.sweep_expired().await.unwrap(), 36);
    assert_eq!(acct_field(&server, "acct_idle", "held"), 0);
    assert_eq!(acct_field(&server, "acct_idle", "topped_up"), 1_000);
    assert_eq!(acct_field(&server, "acct_idle", "committed"), 0);
    assert_eq!(server.cli(&["EXISTS", "credits:{acct_idle}:expiry"]), "0");
    assert_eq!(server.cli(&["HLEN", "credits:{acct_idle}:holds"]), "0");
    assert_eq!(
        closed_how(&server, "credits:{acct_idle}:done", "idle-7"),
        "expired"
    );
    assert_eq!(acct_field(&server, "acct_live", "held"), 7, "not expired");
    assert_eq!(l.sweep_expired().await.unwrap(), 0);

    // A late settle of a swept hold says so and moves nothing.
    let s = l.commit(&idle, &hold("idle-7"), 3).await.unwrap();
    assert_eq!((s.outcome, s.committed), (SettleOutcome::Expired, 0));
    let b = l.balance(&idle).await.unwrap();
    assert_eq!((b.available, b.held, b.open_holds), (1_000, 0, 0));
}

/// `spawn_sweeper` reclaims in the background without any request to the account, and
/// the task ends once every clone of the ledger is gone.
/// Calls skip the expiry index until `next_expiry`, the account's lower bound of its open
/// holds' expiries, has passed; the sweeper looks whatever it says, so a hold whose writer
/// did not keep the bound (a script of an older version) still comes back.
#[tokio::test]
async fn calls_trust_next_expiry_and_the_sweeper_does_not() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    // The field form: the bound is poked by hand below.
    let l = fields_ledger_on(&server, &clock).await;
    let a = acct("acct_hint");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    let r = Reserve::new(a.clone(), hold("h1"), 3).ttl(Duration::from_secs(10));
    let held = expect_held(l.reserve(r).await.unwrap());
    assert_eq!(
        acct_field(&server, "acct_hint", "next_expiry"),
        held.expires_at_ms as i64,
        "a reserve lowers the bound to its hold's expiry"
    );

    // A bound too high, as a writer that ignores it would leave.
    server.cli(&[
        "HSET",
        "credits:{acct_hint}:acct",
        "next_expiry",
        "9007199254740991",
    ]);
    clock.advance(Duration::from_secs(11));
    let b = l.balance(&a).await.unwrap();
    assert_eq!(
        b.held, 3,
        "a call trusts the bound and skips the expiry index"
    );

    assert_eq!(l.sweep_expired().await.unwrap(), 1);
    let b = l.balance(&a).await.unwrap();
    assert_eq!((b.available, b.held, b.open_holds), (100, 0, 0));
    assert_eq!(
        closed_how(&server, "credits:{acct_hint}:done", "h1"),
        "expired"
    );
}

#[tokio::test]
async fn spawn_sweeper_reclaims_in_the_background_and_ends_with_the_ledger() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger_on(&server, &clock).await;
    let a = acct("acct_swept");
    l.top_up(TopUp::new(&a, 50, "pay-1")).await.unwrap();
    for id in ["h1", "h2"] {
        let r = Reserve::new(a.clone(), hold(id), 20).ttl(Duration::from_secs(1));
        expect_held(l.reserve(r).await.unwrap());
    }
    let sweeper = l.spawn_sweeper(Duration::from_millis(20));
    assert_eq!(acct_field(&server, "acct_swept", "held"), 40);

    clock.advance(Duration::from_secs(2));
    wait_for_async("the sweeper to reclaim both holds", DEADLINE, || async {
        (acct_field(&server, "acct_swept", "held") == 0).then_some(())
    })
    .await;
    assert_eq!(server.cli(&["EXISTS", "credits:{acct_swept}:expiry"]), "0");

    drop(l);
    tokio::time::timeout(DEADLINE, sweeper)
        .await
        .expect("the sweeper ends with the last clone of its ledger")
        .expect("the sweeper did not panic");
}

/// On Redis Cluster the sweep walks every master, each with its own `SCAN` cursor: holds
/// of idle accounts spread over the shards all come back.
#[tokio::test]
async fn the_sweeper_visits_every_master_of_a_cluster() {
    let cluster = RedisCluster::start();
    let clock = ManualClock::new();
    // The field form: `held` is read by hand on each node below.
    let l = RedisLedger::builder()
        .pack_accounts(false)
        .cluster_urls(cluster.urls())
        .call_timeout(PATIENT)
        .test_clock(clock.clone())
        .build()
        .await
        .expect("connect to the test Redis Cluster");
    let names: Vec<String> = (0..8).map(|i| format!("acct_sweep_{i}")).collect();
    for name in &names {
        let a = acct(name);
        l.top_up(TopUp::new(&a, 100, format!("pay-{name}")))
            .await
            .unwrap();
        for i in 0..2 {
            let r = Reserve::new(a.clone(), hold(&format!("h{i}")), 5).ttl(Duration::from_secs(5));
            expect_held(l.reserve(r).await.unwrap());
        }
    }
    let expiry_keys_per_node = || -> Vec<usize> {
        cluster
            .nodes()
            .iter()
            .map(|n| {
                n.cli(&["--scan", "--pattern", "credits:{*}:expiry"])
                    .lines()
                    .count()
            })
            .collect()
    };
    let per_node = expiry_keys_per_node();
    assert_eq!(per_node.iter().sum::<usize>(), names.len());
    assert!(
        per_node.iter().filter(|&&n| n > 0).count() >= 2,
        "the accounts should span several masters: {per_node:?}"
    );
    let held = |name: &str| -> i64 {
        cluster
            .cli(&["HGET", &format!("credits:{{{name}}}:acct"), "held"])
            .parse()
            .unwrap()
    };
    assert!(names.iter().all(|n| held(n) == 10));

    clock.advance(Duration::from_secs(6));
    assert_eq!(l.sweep_expired().await.unwrap(), 16);
    for name in &names {
        assert_eq!(held(name), 0, "{name}");
    }
    assert_eq!(expiry_keys_per_node(), vec![0; 3]);
    assert_eq!(l.sweep_expired().await.unwrap(), 0);
}

/// The test server is really gone once its handle is dropped.
#[test]
fn test_servers_die_with_their_handle() {
    let server = RedisServer::start();
    let pid = server.pid().unwrap().to_string();
    let port = server.port();
    drop(server);
    let alive = std::process::Command::new("kill")
        .args(["-0", &pid])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(!alive, "redis-server {pid} outlived its handle");
    assert!(support::redis::try_cli(port, &["PING"]).is_err());
}

// ---------------------------------------------------------------------------------------
// Top-ups: one account per payment id, healed across a crash
// ---------------------------------------------------------------------------------------

/// A crash between the claim and the top-up (the claim made by hand here) leaves the key
/// claimed and nothing credited: the payment's retry finds the claim its own, credits
/// once, and replays after that; another account still cannot use the key.
#[tokio::test]
async fn a_crash_between_claim_and_top_up_is_healed_by_the_retry() {
    let server = RedisServer::start();
    let l = ledger(&server).await;
    let (a, b) = (acct("acct_crash"), acct("acct_other"));
    let claim = l.top_up_claim_key("pay_crash");
    assert_eq!(server.cli(&["SET", &claim, "acct_crash", "NX"]), "OK");
    assert!(matches!(
        l.balance(&a).await,
        Err(LedgerError::UnknownAccount)
    ));
    let r = l.top_up(TopUp::new(&b, 50, "pay_crash")).await;
    assert!(
        matches!(&r, Err(LedgerError::TopUpKeyClaimed { account }) if *account == a),
        "{r:?}"
    );

    let t = l.top_up(TopUp::new(&a, 50, "pay_crash")).await.unwrap();
    assert_eq!((t.replayed, t.available), (false, 50));
    let t = l.top_up(TopUp::new(&a, 50, "pay_crash")).await.unwrap();
    assert_eq!((t.replayed, t.available), (true, 50));
    assert_eq!(l.balance(&a).await.unwrap().topped_up, 50);
    assert_eq!(server.cli(&["GET", &claim]), "acct_crash");
    assert_eq!(server.cli(&["TTL", &claim]), "-1", "claims never expire");
    assert!(matches!(
        l.balance(&b).await,
        Err(LedgerError::UnknownAccount)
    ));
}

/// A claim that was lost (a failover, or data written before claims existed) while the
/// account kept the key: a replay re-makes the claim; a conflict on the amount keeps it
/// (the key is the account's), so another account still cannot use the key.
#[tokio::test]
async fn a_lost_claim_is_made_again_by_the_replay_or_the_conflict() {
    let server = RedisServer::start();
    let l = ledger(&server).await;
    let (a, b) = (acct("acct_kept"), acct("acct_thief"));
    l.top_up(TopUp::new(&a, 10, "pay_old")).await.unwrap();
    l.top_up(TopUp::new(&a, 20, "pay_older")).await.unwrap();
    for key in ["pay_old", "pay_older"] {
        assert_eq!(server.cli(&["DEL", &l.top_up_claim_key(key)]), "1");
    }
    assert!(
        l.top_up(TopUp::new(&a, 10, "pay_old"))
            .await
            .unwrap()
            .replayed
    );
    assert!(matches!(
        l.top_up(TopUp::new(&a, 99, "pay_older")).await,
        Err(LedgerError::TopUpConflict {
            first_amount: 20,
            amount: 99
        })
    ));
    for key in ["pay_old", "pay_older"] {
        assert_eq!(server.cli(&["GET", &l.top_up_claim_key(key)]), "acct_kept");
        assert!(matches!(
            l.top_up(TopUp::new(&b, 10, key)).await,
            Err(LedgerError::TopUpKeyClaimed { .. })
        ));
    }
    assert_eq!(l.balance(&a).await.unwrap().topped_up, 30);
}

/// The trail keeps its cap: reads return the newest `audit_cap` entries and no more, and
/// the trail is trimmed every 32 entries (so it never holds more than 31 past the cap),
/// not on every request: a packed account's (text up to four entries, then a list).
#[tokio::test]
async fn the_audit_trail_keeps_its_cap_trimmed_every_32_entries() {
    the_trail_keeps_its_cap(true).await;
}

/// The same for an account in fields, whose trail is a list from the first.
#[tokio::test]
async fn the_audit_list_of_an_account_in_fields_keeps_its_cap_trimmed_every_32_entries() {
    the_trail_keeps_its_cap(false).await;
}

async fn the_trail_keeps_its_cap(pack: bool) {
    let server = RedisServer::start();
    let l = RedisLedger::builder()
        .url(server.url())
        .call_timeout(PATIENT)
        .audit_cap(5)
        .pack_accounts(pack)
        .build()
        .await
        .unwrap();
    let a = acct("acct_trail");
    l.top_up(TopUp::new(&a, 1_000, "pay-trail")).await.unwrap();
    let mut most = 0u64;
    for i in 0..40 {
        let h = hold(&format!("trail-{i}"));
        expect_held(
            l.reserve(Reserve::new(a.clone(), h.clone(), 1))
                .await
                .unwrap(),
        );
        l.commit(&a, &h, 1).await.unwrap();
        most = most.max(server.trail_len("acct_trail"));
    }
    // 81 entries: the top-up, then a reserve and a commit each.
    assert_eq!(acct_field(&server, "acct_trail", "audit_seq"), 81);
    assert!(most <= 5 + 31, "the trail held {most} entries");
    assert!(
        most > 5,
        "trimmed on every entry ({most}): the amortized trim is gone"
    );
    let page = l.history(&a, None, 100).await.unwrap();
    let ids: Vec<&str> = page.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["81", "80", "79", "78", "77"]);
    assert_eq!(page.next, None, "nothing older is kept");
    let older = l.history(&a, Some("78"), 100).await.unwrap();
    let ids: Vec<&str> = older.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["77"], "a cursor inside the cap reads up to the cap");
    let (text, list) = (
        server.cli(&["EXISTS", "credits:{acct_trail}:trail"]),
        server.cli(&["EXISTS", "credits:{acct_trail}:log"]),
    );
    // Past four entries a packed account's trail is a list too.
    assert_eq!(
        (text.as_str(), list.as_str()),
        ("0", "1"),
        "a list, no text"
    );
}

/// A reserve does not prune closed ids (its hold's settle does): one still in `done` past
/// its forget-at time reads as forgotten, and before that time it keeps its answer.
#[tokio::test]
async fn a_reserve_reads_a_closed_id_past_its_forget_time_as_forgotten_without_pruning() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger_on(&server, &clock).await;
    let a = acct("acct_forget");
    l.top_up(TopUp::new(&a, 100, "pay-forget")).await.unwrap();
    let h = hold("reused-id");
    let ttl = Duration::from_secs(1);
    expect_held(
        l.reserve(Reserve::new(a.clone(), h.clone(), 5).ttl(ttl))
            .await
            .unwrap(),
    );
    l.commit(&a, &h, 5).await.unwrap();
    let done = "credits:{acct_forget}:done";
    // The adversarial twin first: a retried reserve while the id is remembered holds nothing.
    let again = l
        .reserve(Reserve::new(a.clone(), h.clone(), 5).ttl(ttl))
        .await
        .unwrap();
    assert!(matches!(
        again,
        ReserveOutcome::Closed(SettleOutcome::AlreadyCommitted)
    ));
    // Past the forget-at time (expiry + call timeout + 1 s): still in the set, since no
    // call pruned it, and read as forgotten.
    clock.advance(ttl + PATIENT + Duration::from_secs(2));
    assert_eq!(closed_how(&server, done, "reused-id"), "committed");
    let fresh = expect_held(
        l.reserve(Reserve::new(a.clone(), h.clone(), 5).ttl(ttl))
            .await
            .unwrap(),
    );
    assert!(!fresh.replayed);
    assert_eq!(l.balance(&a).await.unwrap().available, 90);
}

/// A hold reserved before holds kept their expiry beside the amount (no `<id>:exp` field)
/// settles as before: its expiry comes from the index, so its closed id is kept until
/// that expiry + grace, not just the grace.
#[tokio::test]
async fn a_hold_without_its_expiry_field_settles_from_the_index() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = ledger_on(&server, &clock).await;
    let a = acct("acct_oldhold");
    l.top_up(TopUp::new(&a, 100, "pay-oldhold")).await.unwrap();
    let h = hold("old-hold");
    let ttl = Duration::from_secs(60);
    let held = expect_held(
        l.reserve(Reserve::new(a.clone(), h.clone(), 5).ttl(ttl))
            .await
            .unwrap(),
    );
    let holds = "credits:{acct_oldhold}:holds";
    assert_eq!(
        server.cli(&["HGET", holds, "old-hold:exp"]),
        held.expires_at_ms.to_string()
    );
    server.cli(&["HDEL", holds, "old-hold:exp"]);
    let s = l.commit(&a, &h, 5).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    assert_eq!(
        server.cli(&["HLEN", holds]),
        "0",
        "nothing of the hold is left"
    );
    let score: u64 = server
        .cli(&["ZSCORE", "credits:{acct_oldhold}:done", "old-hold"])
        .parse()
        .unwrap();
    let grace = (PATIENT + Duration::from_secs(1)).as_millis() as u64;
    assert_eq!(score / 4, held.expires_at_ms + grace);
}

/// The commands a billed request's two scripts run, counted by Redis itself: busy traffic
/// on one account pushes the `done` key's expiry about once a second, not on every settle,
/// and a reserve neither prunes closed ids nor writes an audit counter of its own.
#[tokio::test]
async fn busy_settles_push_the_done_expiry_once_a_second_not_each_time() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    // The field form: a packed account prunes once a second (tests/bounded_state.rs).
    let l = fields_ledger_on(&server, &clock).await;
    let a = acct("acct_busy");
    l.top_up(TopUp::new(&a, 1_000_000, "pay-busy"))
        .await
        .unwrap();
    let pair = |i: u32| {
        let (l, a) = (l.clone(), a.clone());
        async move {
            let h = hold(&format!("busy-{i}"));
            expect_held(
                l.reserve(Reserve::new(a.clone(), h.clone(), 1))
                    .await
                    .unwrap(),
            );
            l.commit(&a, &h, 1).await.unwrap();
        }
    };
    pair(0).await;
    server.cli(&["CONFIG", "RESETSTAT"]);
    // 200 pairs over 2 s of the test clock (real time only adds to it).
    for i in 1..=200 {
        pair(i).await;
        clock.advance(Duration::from_millis(10));
    }
    let pexpires = server.command_calls(&["pexpire"]);
    assert!(
        (1..=2 * 3 + 2).contains(&pexpires),
        "{pexpires} PEXPIRE for 200 settles over about 2 s"
    );
    assert_eq!(
        server.command_calls(&["zrangebyscore"]),
        200,
        "one prune per settle only"
    );
    // The hold, then one write of the account by each script (the audit counter in it).
    assert_eq!(
        server.command_calls(&["hset"]),
        3 * 200,
        "one account write a script"
    );
}

/// A retried reserve of a hold still open is answered as that hold on every way a fresh
/// one could be refused: at the open-hold limit (which the hold itself fills) and when the
/// balance no longer covers it. The adversarial twin: a fresh id at the limit is refused,
/// and no retry holds twice.
#[tokio::test]
async fn a_retried_reserve_is_the_open_hold_even_where_a_fresh_one_is_refused() {
    let server = RedisServer::start();
    let l = RedisLedger::builder()
        .url(server.url())
        .call_timeout(PATIENT)
        .max_open_holds(1)
        .build()
        .await
        .unwrap();
    let a = acct("acct_retry_limit");
    l.top_up(TopUp::new(&a, 50, "pay-retry-limit"))
        .await
        .unwrap();
    let first = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("r1"), 40))
            .await
            .unwrap(),
    );
    assert!(!first.replayed);
    // At the limit: a fresh id is refused, the retry is the open hold.
    let fresh = l
        .reserve(Reserve::new(a.clone(), hold("r2"), 5))
        .await
        .unwrap();
    assert!(
        matches!(fresh, ReserveOutcome::TooManyHolds { limit: 1 }),
        "{fresh:?}"
    );
    let again = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("r1"), 40))
            .await
            .unwrap(),
    );
    assert!(again.replayed);
    assert_eq!(
        (again.amount, again.expires_at_ms),
        (40, first.expires_at_ms)
    );
    // Beyond the balance (10 left): still the open hold, not a refusal nor a second hold.
    let again = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("r1"), 45))
            .await
            .unwrap(),
    );
    assert_eq!(
        (again.amount, again.replayed, again.available),
        (40, true, 10)
    );
    let b = l.balance(&a).await.unwrap();
    assert_eq!((b.held, b.open_holds, b.available), (40, 1, 10));
    assert_eq!(
        server.cli(&["ZCARD", "credits:{acct_retry_limit}:expiry"]),
        "1"
    );
}

/// A retried reserve is the open hold even when that hold lost its place in the expiry
/// index (a drift `reconcile` reports): it never writes a second amount over the first,
/// which would leave the first's credits held with no hold to give them back.
#[tokio::test]
async fn a_retried_reserve_of_a_hold_missing_from_the_index_is_still_the_hold() {
    let server = RedisServer::start();
    let l = ledger(&server).await;
    let a = acct("acct_unindexed");
    l.top_up(TopUp::new(&a, 200, "pay-unindexed"))
        .await
        .unwrap();
    expect_held(
        l.reserve(Reserve::new(a.clone(), hold("z"), 50))
            .await
            .unwrap(),
    );
    server.cli(&["ZREM", "credits:{acct_unindexed}:expiry", "z"]);
    let again = expect_held(
        l.reserve(Reserve::new(a.clone(), hold("z"), 70))
            .await
            .unwrap(),
    );
    assert_eq!((again.amount, again.replayed), (50, true));
    assert_eq!(acct_field(&server, "acct_unindexed", "held"), 50);
    assert_eq!(
        server.cli(&["ZSCORE", "credits:{acct_unindexed}:expiry", "z"]),
        again.expires_at_ms.to_string(),
        "indexed again at its own expiry"
    );
    let s = l.commit(&a, &hold("z"), 50).await.unwrap();
    assert_eq!(s.outcome, SettleOutcome::Committed);
    let b = l.balance(&a).await.unwrap();
    assert_eq!((b.held, b.committed, b.available), (0, 50, 150));
}
