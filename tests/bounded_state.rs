//! Bounded state: an account's state grows with its rate × hold TTL, not with its traffic,
//! and falls back to its idle size once the traffic stops.
//!
//! A closed hold id is remembered until no call about it can come (its hold's expiry + the
//! call timeout + 1 s); a refund tombstone of a never-seen id for the longest TTL the
//! ledger reserved with (at least the 60 s default) + call timeout + 1 s. On Redis the
//! `done` key carries a `PEXPIRE` to its latest forget-at time, so an account that sees no
//! more calls loses it whole, by Redis's own clock.
//!
//! Time moves with `ManualClock` (the Redis ledger adds its offset to `TIME`), except for
//! the `PEXPIRE`, which only Redis's clock drives: those checks use short real TTLs and
//! wait with a deadline. No assertion is on wall-clock time.
//!
//! `state_per_account` (ignored) measures the figures of `docs/performance.md`:
//! `cargo test --release --all-features --test bounded_state -- --ignored --nocapture`.

mod support;

#[path = "../benches/support/alloc.rs"]
#[allow(dead_code)]
mod alloc;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::rig::wait_for_async;
use tower_credits::clock::ManualClock;
use tower_credits::ledger::RedisLedger;
use tower_credits::ledger::{HoldId, Reserve, ReserveOutcome, SettleOutcome};
use tower_credits::{AccountId, Ledger, MemoryLedger};
use tower_credits::{LedgerAdmin, LedgerReports, TopUp};

const KEYS: [&str; 6] = ["acct", "holds", "expiry", "done", "usage", "topups"];

fn acct(id: &str) -> AccountId {
    AccountId::new(id).unwrap()
}

fn key(account: &str, suffix: &str) -> String {
    format!("credits:{{{account}}}:{suffix}")
}

/// One billed request that succeeds (reserve + commit) and one that fails (reserve +
/// refund), each with a fresh id and `ttl`.
async fn pair<L: Ledger>(l: &L, a: &AccountId, ttl: Duration) {
    let c = HoldId::generate();
    let r = Reserve::new(a.clone(), c.clone(), 1)
        .ttl(ttl)
        .route("GET /x");
    assert!(matches!(
        l.reserve(r).await.unwrap(),
        ReserveOutcome::Held(_)
    ));
    assert_eq!(
        l.commit(a, &c, 1).await.unwrap().outcome,
        SettleOutcome::Committed
    );
    let f = HoldId::generate();
    let r = Reserve::new(a.clone(), f.clone(), 1).ttl(ttl);
    assert!(matches!(
        l.reserve(r).await.unwrap(),
        ReserveOutcome::Held(_)
    ));
    assert_eq!(
        l.refund(a, &f).await.unwrap().outcome,
        SettleOutcome::Refunded
    );
}

fn zcard(server: &RedisServer, key: &str) -> u64 {
    server.cli(&["ZCARD", key]).parse().unwrap()
}

/// `MEMORY USAGE` of every key of the account (all samples), in bytes.
fn redis_bytes(server: &RedisServer, account: &str) -> u64 {
    KEYS.iter()
        .map(|s| {
            let out = server.cli(&["MEMORY", "USAGE", &key(account, s), "SAMPLES", "0"]);
            out.parse::<u64>().unwrap_or(0) // an absent key answers nil
        })
        .sum()
}

/// `pack`: accounts packed (`pack_accounts`), which prune closed ids at most once a second.
async fn redis_ledger(
    server: &RedisServer,
    clock: &ManualClock,
    timeout: Duration,
    pack: bool,
) -> RedisLedger {
    RedisLedger::builder()
        .url(server.url())
        .call_timeout(timeout)
        .test_clock(clock.clone())
        .pack_accounts(pack)
        .build()
        .await
        .expect("connect to the test redis-server")
}

// ---------------------------------------------------------------------------------------
// MemoryLedger
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn memory_hot_account_is_bounded_and_returns_to_idle() {
    let clock = ManualClock::new();
    let l = MemoryLedger::builder().clock(clock.clone()).build();
    let a = acct("acct_hot");
    l.top_up(TopUp::new(&a, 1_000_000, "pay-1")).await.unwrap();
    assert_eq!(l.remembered_closed_ids(&a), None, "idle: no hold tables");

    // 1,000 pairs a second (2,000 closed ids a second) for 20 s, TTL 2 s: an id is kept
    // for its TTL + 1 s, so about 6,000 at a time (plus at most one reclaim batch).
    let ttl = Duration::from_secs(2);
    let mut most = 0;
    for i in 0..20_000 {
        pair(&l, &a, ttl).await;
        clock.advance(Duration::from_millis(1));
        if i % 100 == 0 {
            most = most.max(l.remembered_closed_ids(&a).unwrap_or(0));
        }
    }
    println!("memory: at most {most} closed ids remembered over 40,000 closed");
    assert!(
        most >= 5_000,
        "the ids of the last TTL + 1 s are kept: {most}"
    );
    assert!(most <= 6_000 + 64, "bounded by rate × (TTL + 1 s): {most}");

    // A late settle within the window still gets its first answer.
    let last = HoldId::generate();
    let r = Reserve::new(a.clone(), last.clone(), 1).ttl(ttl);
    assert!(matches!(
        l.reserve(r).await.unwrap(),
        ReserveOutcome::Held(_)
    ));
    l.commit(&a, &last, 1).await.unwrap();
    clock.advance(Duration::from_millis(2_999));
    assert_eq!(
        l.commit(&a, &last, 1).await.unwrap().outcome,
        SettleOutcome::AlreadyCommitted
    );

    // Traffic stops; past TTL + 1 s the sweeper (or any call) leaves the idle account.
    clock.advance(Duration::from_millis(1));
    l.sweep_expired();
    assert_eq!(l.remembered_closed_ids(&a), None, "back to the idle size");
    let b = l.balance(&a).await.unwrap();
    assert_eq!((b.held, b.committed, b.open_holds), (0, 20_001, 0));
}

#[tokio::test]
async fn memory_refund_flood_of_unseen_ids_drains() {
    let clock = ManualClock::new();
    let l = MemoryLedger::builder().clock(clock.clone()).build();
    let a = acct("acct_flood");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    // 40 refunds a second of ids never reserved, for 100 s: each tombstone stands 61 s
    // (the 60 s default TTL + 1 s), about 2,440 at a time.
    let mut most = 0;
    for i in 0..4_000 {
        let s = l.refund(&a, &HoldId::generate()).await.unwrap();
        assert_eq!(s.outcome, SettleOutcome::Unknown);
        clock.advance(Duration::from_millis(25));
        if i % 50 == 0 {
            most = most.max(l.remembered_closed_ids(&a).unwrap_or(0));
        }
    }
    println!("memory: at most {most} tombstones remembered over 4,000");
    assert!((2_300..=2_440 + 64).contains(&most), "{most}");
    clock.advance(Duration::from_secs(61));
    l.sweep_expired();
    assert_eq!(l.remembered_closed_ids(&a), None);
}

// ---------------------------------------------------------------------------------------
// RedisLedger
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hot_account_is_bounded_and_drops_its_done_key() {
    hot_account_is_bounded(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_hot_account_is_bounded_and_drops_its_done_key() {
    hot_account_is_bounded(true).await;
}

/// Closed ids a packed account may keep past the others: those of its prune gap (1 s).
fn prune_gap_ids(pack: bool, per_sec: u64) -> u64 {
    if pack {
        per_sec
    } else {
        0
    }
}

async fn hot_account_is_bounded(pack: bool) {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    // Grace: call timeout + 1 s = 3 s.
    let l = redis_ledger(&server, &clock, Duration::from_secs(2), pack).await;
    let name = "acct_hot";
    let a = acct(name);
    l.top_up(TopUp::new(&a, 1_000_000, "pay-1")).await.unwrap();
    let ttl = Duration::from_secs(1);

    // Idle size of a used account: one pair, then its ids forgotten.
    pair(&l, &a, ttl).await;
    let done = key(name, "done");
    wait_for_async("the first ids to go", Duration::from_secs(30), || {
        let holds = server.cli(&["EXISTS", &done]) == "0";
        async move { holds.then_some(()) }
    })
    .await;
    let idle = redis_bytes(&server, name);

    // 2 closed ids per 5 ms of the test clock (real time only adds to it) for 15 s,
    // TTL 1 s: an id is kept for TTL + 3 s, so at most about 1,600 at a time.
    let mut most = 0;
    let mut most_bytes = 0;
    for i in 0..3_000 {
        pair(&l, &a, ttl).await;
        clock.advance(Duration::from_millis(5));
        if i % 250 == 249 {
            most = most.max(zcard(&server, &done));
            most_bytes = most_bytes.max(redis_bytes(&server, name));
        }
    }
    println!("redis (packed: {pack}): at most {most} closed ids ({most_bytes} bytes) over 6,000; idle {idle}");
    assert!(
        most <= 1_600 + 64 + prune_gap_ids(pack, 400),
        "bounded by rate × (TTL + grace): {most}"
    );
    // With its last id, give or take the 1 s by which an expiry is pushed at a time.
    let ttl_ms: i64 = server.cli(&["PTTL", &done]).parse().unwrap();
    assert!(
        (1..=4_000 + 1_000).contains(&ttl_ms),
        "done expires with its last id: {ttl_ms}"
    );

    // Traffic stops: no call, no sweep; Redis drops the key by its own clock.
    wait_for_async("the done key to expire", Duration::from_secs(30), || {
        let holds = server.cli(&["EXISTS", &done]) == "0";
        async move { holds.then_some(()) }
    })
    .await;
    for k in ["holds", "expiry"] {
        assert_eq!(server.cli(&["EXISTS", &key(name, k)]), "0", "{k}");
    }
    let after = redis_bytes(&server, name);
    println!("redis (packed: {pack}): {after} bytes after, {idle} idle");
    // The totals grow by a few digits: nothing per request is left.
    assert!(
        after <= idle + 32,
        "back to the idle size: {after} vs {idle}"
    );
    let b = l.balance(&a).await.unwrap();
    assert_eq!((b.held, b.committed, b.open_holds), (0, 3_001, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refund_flood_of_unseen_ids_drains() {
    refund_flood_drains(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_flood_of_unseen_ids_on_a_packed_account_drains() {
    refund_flood_drains(true).await;
}

async fn refund_flood_drains(pack: bool) {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = redis_ledger(&server, &clock, Duration::from_secs(2), pack).await;
    let name = "acct_flood";
    let a = acct(name);
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    let done = key(name, "done");
    // 40 refunds a second (test clock) of ids never reserved, for 100 s: each tombstone
    // stands 63 s (60 s default TTL + 2 s call timeout + 1 s): at most about 2,520.
    let mut most = 0;
    for i in 0..4_000 {
        let s = l.refund(&a, &HoldId::generate()).await.unwrap();
        assert_eq!(s.outcome, SettleOutcome::Unknown);
        clock.advance(Duration::from_millis(25));
        if i % 250 == 249 {
            most = most.max(zcard(&server, &done));
        }
    }
    println!("redis (packed: {pack}): at most {most} tombstones over 4,000");
    assert!(most <= 2_520 + 64 + prune_gap_ids(pack, 40), "{most}");
    // The key goes whole with its last tombstone (63 s of Redis's clock, pushed 1 s at a
    // time)...
    let ttl_ms: i64 = server.cli(&["PTTL", &done]).parse().unwrap();
    assert!((60_000..=63_000 + 1_000).contains(&ttl_ms), "{ttl_ms}");
    // ...and on the account's calls, once the test clock has passed it.
    clock.advance(Duration::from_secs(64));
    let mut calls = 0;
    while server.cli(&["EXISTS", &done]) == "1" {
        l.balance(&a).await.unwrap();
        calls += 1;
        assert!(
            calls <= 100,
            "pruned {} per call at most",
            tower_credits::ledger::RECLAIM_LIMIT
        );
    }
}

// ---------------------------------------------------------------------------------------
// The figures of docs/performance.md, "State per account"
// ---------------------------------------------------------------------------------------

/// Requests per second of the measured run (test clock), its length, and the hold TTL.
const RATE: u64 = 1_000;
const SECS: u64 = 60;
const TTL: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run alone, see the module docs"]
async fn state_per_account() {
    let step = Duration::from_micros(1_000_000 / RATE);
    let requests = RATE * SECS;

    // MemoryLedger: live heap bytes of the whole process, around the run.
    let clock = ManualClock::new();
    let l = MemoryLedger::builder().clock(clock.clone()).build();
    let a = acct("acct_measured");
    let before_account = alloc::live_bytes();
    l.top_up(TopUp::new(&a, u64::MAX >> 12, "pay-1"))
        .await
        .unwrap();
    // Warm: one request (its route's usage entry stays), its id then forgotten.
    let h = HoldId::generate();
    l.reserve(
        Reserve::new(a.clone(), h.clone(), 1)
            .ttl(TTL)
            .route("GET /v1/echo"),
    )
    .await
    .unwrap();
    l.commit(&a, &h, 1).await.unwrap();
    clock.advance(TTL + Duration::from_secs(2));
    l.sweep_expired();
    let idle = alloc::live_bytes() - before_account;
    let mut steady = 0;
    let mut steady_ids = 0;
    for i in 0..requests {
        let h = HoldId::generate();
        l.reserve(
            Reserve::new(a.clone(), h.clone(), 1)
                .ttl(TTL)
                .route("GET /v1/echo"),
        )
        .await
        .unwrap();
        l.commit(&a, &h, 1).await.unwrap();
        clock.advance(step);
        if i >= requests - RATE && i % 100 == 0 {
            steady = steady.max(alloc::live_bytes() - before_account);
            steady_ids = steady_ids.max(l.remembered_closed_ids(&a).unwrap_or(0));
        }
    }
    clock.advance(TTL + Duration::from_secs(2));
    l.sweep_expired();
    let after = alloc::live_bytes() - before_account;
    println!(
        "MemoryLedger, {RATE} req/s for {SECS} s, TTL {TTL:?}: idle {idle} B, steady {steady} B \
         ({steady_ids} closed ids, {:.0} B each), after {after} B",
        (steady - idle) as f64 / steady_ids as f64
    );

    // RedisLedger: MEMORY USAGE of the account's keys, 16 requests in flight.
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let l = RedisLedger::builder()
        .url(server.url())
        .test_clock(clock.clone())
        .call_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let name = "acct_measured";
    let a = acct(name);
    l.top_up(TopUp::new(&a, u64::MAX >> 12, "pay-1"))
        .await
        .unwrap();
    let h = HoldId::generate();
    let r = Reserve::new(a.clone(), h.clone(), 1)
        .ttl(TTL)
        .route("GET /v1/echo");
    l.reserve(r).await.unwrap();
    l.commit(&a, &h, 1).await.unwrap();
    let done = key(name, "done");
    wait_for_async("the warm-up id to go", Duration::from_secs(60), || {
        let holds = server.cli(&["EXISTS", &done]) == "0";
        async move { holds.then_some(()) }
    })
    .await;
    let idle = redis_bytes(&server, name);
    let started = Instant::now();
    let mut steady = 0;
    let mut steady_ids = 0;
    let tasks = 16;
    for round in 0..requests / tasks {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let (l, a) = (l.clone(), a.clone());
            set.spawn(async move {
                let h = HoldId::generate();
                let r = Reserve::new(a.clone(), h.clone(), 1)
                    .ttl(TTL)
                    .route("GET /v1/echo");
                l.reserve(r).await.unwrap();
                l.commit(&a, &h, 1).await.unwrap();
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        clock.advance(step * tasks as u32);
        if round * tasks >= requests - RATE && round % 8 == 0 {
            steady = steady.max(redis_bytes(&server, name));
            steady_ids = steady_ids.max(zcard(&server, &key(name, "done")));
        }
    }
    let real = started.elapsed();
    wait_for_async("the done key to expire", Duration::from_secs(60), || {
        let holds = server.cli(&["EXISTS", &done]) == "0";
        async move { holds.then_some(()) }
    })
    .await;
    let after = redis_bytes(&server, name);
    println!(
        "RedisLedger, {RATE} req/s (test clock; {real:?} of real time added) for {SECS} s, \
         TTL {TTL:?}, call timeout 2 s: idle {idle} B, steady {steady} B ({steady_ids} closed \
         ids, {:.0} B each), after {after} B",
        (steady - idle) as f64 / steady_ids as f64
    );
}
