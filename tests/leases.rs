//! Credit leases (`ledger::Leased`) on the in-memory ledger and on a real Redis: busy
//! accounts billed in process with no store call, flushes that commit exactly what was
//! spent, a killed replica that loses at most one flush of usage, and the handoff of a
//! lease to a replica that was refused. Each checks conservation against the ledger
//! itself: every credit topped up is available, held or committed.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::redis::RedisServer;
use tower_credits::clock::ManualClock;
use tower_credits::ledger::{
    HoldId, LeaseBoard, Leased, RedisLedger, Reserve, ReserveOutcome, SettleOutcome,
};
use tower_credits::{AccountId, Ledger, LedgerAdmin, LedgerReports, MemoryLedger, TopUp};

fn acct(id: &str) -> AccountId {
    AccountId::new(id).unwrap()
}

/// A ledger for the tests: in memory, or on the test Redis; with the counter of script
/// calls Redis ran (none for memory).
trait Store: LedgerReports + LedgerAdmin {
    fn board(&self) -> Arc<dyn LeaseBoard>;
}

impl Store for MemoryLedger {
    fn board(&self) -> Arc<dyn LeaseBoard> {
        self.lease_board()
    }
}

impl Store for RedisLedger {
    fn board(&self) -> Arc<dyn LeaseBoard> {
        self.lease_board()
    }
}

async fn redis_ledger(server: &RedisServer, clock: &ManualClock) -> RedisLedger {
    RedisLedger::builder()
        .url(server.url())
        .call_timeout(Duration::from_secs(5))
        .test_clock(clock.clone())
        .build()
        .await
        .unwrap()
}

/// Every credit topped up is available, held or committed, in the ledger itself.
async fn conserved<L: LedgerReports>(ledger: &L, account: &AccountId) {
    let b = ledger.balance(account).await.unwrap();
    assert_eq!(
        b.available + b.held as i64 + b.committed as i64,
        b.topped_up as i64,
        "{b:?}"
    );
}

/// `n` requests of `price` each, committed at `cost`, through `ledger`; every one held.
async fn bill<L: Ledger>(ledger: &L, account: &AccountId, n: usize, price: u64, cost: u64) {
    for _ in 0..n {
        let hold = HoldId::generate();
        let outcome = ledger
            .reserve(Reserve::new(account.clone(), hold.clone(), price).route("GET /v1/echo"))
            .await
            .unwrap();
        assert!(matches!(outcome, ReserveOutcome::Held(_)), "{outcome:?}");
        let settled = ledger.commit(account, &hold, cost).await.unwrap();
        assert_eq!(settled.outcome, SettleOutcome::Committed);
        assert_eq!(settled.committed, cost);
    }
}

/// Makes `account` busy on `leased` (10 requests in one second, then the next second
/// starts) and flushes: a lease opens.
async fn make_busy<L: LedgerReports>(leased: &Leased<L>, clock: &ManualClock, account: &AccountId) {
    for _ in 0..10 {
        bill(leased, account, 1, 5, 2).await;
        clock.advance(Duration::from_millis(90));
    }
    clock.advance(Duration::from_millis(200));
    bill(leased, account, 1, 5, 2).await;
    leased.flush().await.unwrap();
    assert_eq!(leased.leased_accounts(), vec![account.clone()], "leased");
}

/// A busy account is billed in process: no script call per request, shown balances that
/// follow each request, and one flush that commits exactly what was spent.
async fn billed_in_process<L: Store>(
    store: L,
    clock: ManualClock,
    calls: impl Fn() -> Option<u64>,
) {
    let a = acct("acct_busy");
    store.top_up(TopUp::new(&a, 10_000, "pay-1")).await.unwrap();
    let leased = Leased::new(store.clone())
        .busy_at(5)
        .block_for(Duration::from_secs(10))
        .clock(clock.clone());
    make_busy(&leased, &clock, &a).await;
    let committed_before = store.balance(&a).await.unwrap().committed;

    let before = calls();
    let shown_before = leased.balance(&a).await.unwrap();
    // 50 requests, 3 credits each, on the lease.
    let mut last_remaining = i64::MAX;
    for _ in 0..50 {
        let hold = HoldId::generate();
        let held = match leased
            .reserve(Reserve::new(a.clone(), hold.clone(), 5).route("GET /v1/echo"))
            .await
            .unwrap()
        {
            ReserveOutcome::Held(held) => held,
            other => panic!("{other:?}"),
        };
        let settled = leased.commit(&a, &hold, 3).await.unwrap();
        assert_eq!(settled.committed, 3);
        assert_eq!(settled.released, 2);
        let remaining = settled.available.unwrap();
        assert!(
            remaining < last_remaining,
            "each request lowers what is shown"
        );
        assert_eq!(
            held.available + 5 - 3,
            remaining,
            "shown: less this cost only"
        );
        last_remaining = remaining;
        // A retried settle answers as the ledger would, and moves nothing.
        let again = leased.commit(&a, &hold, 3).await.unwrap();
        assert_eq!(again.outcome, SettleOutcome::AlreadyCommitted);
        assert_eq!(again.committed, 0);
    }
    if let (Some(before), Some(after)) = (before, calls()) {
        assert_eq!(
            after - before,
            1,
            "only the balance read above reached Redis"
        );
    }
    let shown = leased.balance(&a).await.unwrap();
    assert_eq!(shown.available, shown_before.available - 150);
    assert_eq!(shown.committed, shown_before.committed + 150);
    // The ledger has not seen the 150 yet; the flush commits it, exactly once.
    assert_eq!(store.balance(&a).await.unwrap().committed, committed_before);
    leased.flush().await.unwrap();
    assert_eq!(
        store.balance(&a).await.unwrap().committed,
        committed_before + 150
    );
    leased.flush().await.unwrap();
    assert_eq!(
        store.balance(&a).await.unwrap().committed,
        committed_before + 150,
        "a second flush commits nothing more"
    );
    conserved(&store, &a).await;
    // A graceful stop returns the block.
    leased.shutdown().await.unwrap();
    assert!(leased.leased_accounts().is_empty());
    let b = store.balance(&a).await.unwrap();
    assert_eq!(b.held, 0);
    assert_eq!(b.committed, 11 * 2 + 150);
    conserved(&store, &a).await;
}

#[tokio::test]
async fn a_busy_account_is_billed_in_process_in_memory() {
    let clock = ManualClock::new();
    let store = MemoryLedger::builder().clock(clock.clone()).build();
    billed_in_process(store, clock, || None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_account_is_billed_in_process_on_redis() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let store = redis_ledger(&server, &clock).await;
    billed_in_process(store, clock, || Some(server.script_calls())).await;
}

/// A replica killed mid-lease (its flusher gone, no shutdown) loses at most what it billed
/// since its last flush; its block expires and the ledger gives it back.
async fn killed_mid_lease<L: Store>(
    store: L,
    clock: ManualClock,
    sweep: impl std::future::Future<Output = ()>,
) {
    let a = acct("acct_killed");
    store.top_up(TopUp::new(&a, 10_000, "pay-1")).await.unwrap();
    let leased = Leased::new(store.clone())
        .busy_at(5)
        .lease_ttl(Duration::from_secs(10))
        .clock(clock.clone());
    make_busy(&leased, &clock, &a).await;
    bill(&leased, &a, 20, 5, 4).await;
    leased.flush().await.unwrap();
    let flushed = store.balance(&a).await.unwrap().committed;
    assert_eq!(flushed, 11 * 2 + 20 * 4);
    // Billed in process, never flushed: the usage a crash loses.
    bill(&leased, &a, 7, 5, 4).await;
    drop(leased);
    clock.advance(Duration::from_secs(11));
    sweep.await;
    let b = store.balance(&a).await.unwrap();
    assert_eq!(b.held, 0, "the block came back: {b:?}");
    assert_eq!(
        b.committed, flushed,
        "lost: the 28 credits since the last flush"
    );
    assert_eq!(b.available, 10_000 - flushed as i64);
    conserved(&store, &a).await;
}

#[tokio::test]
async fn a_killed_replica_loses_at_most_one_flush_in_memory() {
    let clock = ManualClock::new();
    let store = MemoryLedger::builder().clock(clock.clone()).build();
    let sweeper = store.clone();
    killed_mid_lease(store, clock, async move {
        sweeper.sweep_expired();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_loses_at_most_one_flush_on_redis() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let store = redis_ledger(&server, &clock).await;
    let sweeper = store.clone();
    killed_mid_lease(store, clock, async move {
        sweeper.sweep_expired().await.unwrap();
    })
    .await;
}

/// Replica A leases most of an account; replica B is refused a large request only because
/// of A's lease: B marks the account wanted, A gives its block back at its next flush, and
/// B's one retry is held. Without the board B would have answered 402.
async fn handoff<L: Store>(store: L, clock: ManualClock) {
    let a = acct("acct_shared");
    store.top_up(TopUp::new(&a, 1000, "pay-1")).await.unwrap();
    let every = Duration::from_millis(250);
    let replica_a = Leased::new(store.clone())
        .busy_at(5)
        .block_for(Duration::from_secs(4))
        .flush_every(every)
        .board(store.board())
        .clock(clock.clone());
    let replica_b = Leased::new(store.clone())
        .flush_every(every)
        .board(store.board())
        .clock(clock.clone());
    make_busy(&replica_a, &clock, &a).await;
    let leased = store.balance(&a).await.unwrap().held;
    assert!(leased >= 200, "A holds a block: {leased}");
    let flusher = replica_a.spawn_flusher();

    let available = store.balance(&a).await.unwrap().available as u64;
    let big = available + 50;
    let hold = HoldId::generate();
    let outcome = replica_b
        .reserve(Reserve::new(a.clone(), hold.clone(), big))
        .await
        .unwrap();
    assert!(
        matches!(&outcome, ReserveOutcome::Held(h) if h.amount == big),
        "B's retry after A gave back: {outcome:?}"
    );
    assert!(
        replica_a.leased_accounts().is_empty(),
        "A gave its lease back"
    );
    replica_b.commit(&a, &hold, big).await.unwrap();
    flusher.abort();
    conserved(&store, &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_replica_gets_the_lease_back_in_memory() {
    let clock = ManualClock::new();
    let store = MemoryLedger::builder().clock(clock.clone()).build();
    handoff(store, clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_replica_gets_the_lease_back_on_redis() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let store = redis_ledger(&server, &clock).await;
    handoff(store, clock).await;
}

/// Without a board, the refusal is answered at once (no wait), and nothing is wanted.
#[tokio::test]
async fn without_a_board_a_refusal_is_answered_at_once() {
    let clock = ManualClock::new();
    let store = MemoryLedger::builder().clock(clock.clone()).build();
    let a = acct("acct_alone");
    store.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    let leased = Leased::new(store.clone()).clock(clock.clone());
    let outcome = leased
        .reserve(Reserve::new(a.clone(), HoldId::generate(), 500))
        .await
        .unwrap();
    assert!(matches!(outcome, ReserveOutcome::Insufficient(_)));
    assert!(!store.lease_board().is_wanted(&a).await.unwrap());
}

/// An adversarial caller on a leased account: a request priced above a twentieth of the
/// block, one with its own idempotency key, and a commit above its hold are never billed
/// in process beyond what was held; the hold caps the charge, as on the ledger.
#[tokio::test]
async fn a_lease_never_bills_beyond_what_it_holds() {
    let clock = ManualClock::new();
    let store = MemoryLedger::builder().clock(clock.clone()).build();
    let a = acct("acct_greedy");
    store.top_up(TopUp::new(&a, 10_000, "pay-1")).await.unwrap();
    let leased = Leased::new(store.clone()).busy_at(5).clock(clock.clone());
    make_busy(&leased, &clock, &a).await;
    let block = store.balance(&a).await.unwrap().held;
    // A big request goes to the ledger: its own hold appears there.
    let big = HoldId::generate();
    leased
        .reserve(Reserve::new(a.clone(), big.clone(), block / 10))
        .await
        .unwrap();
    assert_eq!(
        store.balance(&a).await.unwrap().open_holds,
        2,
        "lease + big"
    );
    leased.refund(&a, &big).await.unwrap();
    // A commit above a local hold is clamped to it.
    let small = HoldId::generate();
    leased
        .reserve(Reserve::new(a.clone(), small.clone(), 5).route("GET /v1/echo"))
        .await
        .unwrap();
    let settled = leased.commit(&a, &small, 1_000_000).await.unwrap();
    assert_eq!(settled.committed, 5);
    assert!(settled.clamped);
    // Draining the block never overspends it: once it is spent, requests go to the ledger.
    let mut billed = 0;
    for _ in 0..(block / 5 + 10) {
        let hold = HoldId::generate();
        leased
            .reserve(Reserve::new(a.clone(), hold.clone(), 5).route("GET /v1/echo"))
            .await
            .unwrap();
        leased.commit(&a, &hold, 5).await.unwrap();
        billed += 5;
    }
    leased.shutdown().await.unwrap();
    let b = store.balance(&a).await.unwrap();
    assert_eq!(b.held, 0);
    assert_eq!(
        b.committed,
        11 * 2 + 5 + billed,
        "every credit billed, once"
    );
    conserved(&store, &a).await;
}

/// What one replica's callers were served, as their answers said.
#[derive(Default)]
struct Tally {
    /// Credits of commits answered `Committed`.
    served: std::sync::atomic::AtomicU64,
    /// Credits of commits that failed (the store may or may not have them).
    ambiguous: std::sync::atomic::AtomicU64,
}

/// Reserves 3 and commits 2, again and again, until `stop`.
async fn caller<L: Ledger>(
    ledger: L,
    account: AccountId,
    tally: Arc<Tally>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while !stop.load(Relaxed) {
        let hold = HoldId::generate();
        let reserve = Reserve::new(account.clone(), hold.clone(), 3).route("GET /v1/echo");
        match ledger.reserve(reserve).await {
            Ok(ReserveOutcome::Held(_)) => match ledger.commit(&account, &hold, 2).await {
                Ok(s) if s.outcome == SettleOutcome::Committed => {
                    tally.served.fetch_add(s.committed, Relaxed);
                }
                Ok(_) => {}
                Err(_) => {
                    tally.ambiguous.fetch_add(2, Relaxed);
                }
            },
            _ => tokio::task::yield_now().await,
        }
    }
}

/// Two replicas lease one account under load; Redis is paused (flushes and calls time out
/// and are retried); one replica is killed mid-lease. Every credit topped up is still
/// available, held or committed; nothing is committed that was not served, and what was
/// served but not committed is at most what the killed replica had not flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_kills_and_pauses_conserve_every_credit() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use support::rig::{wait_for_async, DEADLINE};

    let server = RedisServer::start();
    let connect = |timeout: Duration| {
        RedisLedger::builder()
            .url(server.url())
            .call_timeout(timeout)
            .build()
    };
    let admin = connect(Duration::from_secs(5)).await.unwrap();
    let a = acct("acct_chaos");
    admin
        .top_up(TopUp::new(&a, 1_000_000, "pay-1"))
        .await
        .unwrap();
    let replica = |ledger: RedisLedger| {
        Leased::new(ledger.clone())
            .board(ledger.lease_board())
            .busy_at(5)
            .flush_every(Duration::from_millis(100))
            .lease_ttl(Duration::from_secs(2))
    };
    let first = replica(connect(Duration::from_millis(250)).await.unwrap());
    let second = replica(connect(Duration::from_millis(250)).await.unwrap());
    let flushers = [first.spawn_flusher(), second.spawn_flusher()];
    let (tally_1, tally_2) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let (stop_1, stop_2) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut callers_1 = Vec::new();
    let mut callers_2 = Vec::new();
    for _ in 0..2 {
        callers_1.push(tokio::spawn(caller(
            first.clone(),
            a.clone(),
            tally_1.clone(),
            stop_1.clone(),
        )));
        callers_2.push(tokio::spawn(caller(
            second.clone(),
            a.clone(),
            tally_2.clone(),
            stop_2.clone(),
        )));
    }
    wait_for_async("both replicas to lease the account", DEADLINE, || {
        let leased = !first.leased_accounts().is_empty() && !second.leased_accounts().is_empty();
        std::future::ready(leased.then_some(()))
    })
    .await;

    // A pause longer than the call deadline: flushes fail and are retried.
    server.pause();
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.resume();
    let after_pause = tally_1.served.load(Relaxed);
    wait_for_async("the first replica to serve again", DEADLINE, || {
        std::future::ready((tally_1.served.load(Relaxed) > after_pause + 100).then_some(()))
    })
    .await;

    // Kill the first replica mid-lease: its callers and flusher stop, nothing is flushed.
    stop_1.store(true, Relaxed);
    for c in callers_1 {
        c.await.unwrap();
    }
    flushers[0].abort();
    let lost = first.unflushed();
    drop(first);

    let before = tally_2.served.load(Relaxed);
    wait_for_async("the second replica to go on", DEADLINE, || {
        std::future::ready((tally_2.served.load(Relaxed) > before + 100).then_some(()))
    })
    .await;
    stop_2.store(true, Relaxed);
    for c in callers_2 {
        c.await.unwrap();
    }
    flushers[1].abort();
    second.shutdown().await.unwrap();
    assert_eq!(second.unflushed(), 0, "a graceful stop commits everything");

    // The killed replica's block expires (2 s) and comes back.
    wait_for_async("every hold to come back", DEADLINE, || {
        let admin = admin.clone();
        let a = a.clone();
        async move {
            admin.sweep_expired().await.unwrap();
            let b = admin.balance(&a).await.unwrap();
            (b.held == 0).then_some(b)
        }
    })
    .await;
    let b = admin.balance(&a).await.unwrap();
    assert_eq!(
        b.available + b.committed as i64,
        b.topped_up as i64,
        "{b:?}"
    );
    eprintln!(
        "first: served {} ambiguous {}; second: served {} ambiguous {}; lost {lost}; {b:?}",
        tally_1.served.load(Relaxed),
        tally_1.ambiguous.load(Relaxed),
        tally_2.served.load(Relaxed),
        tally_2.ambiguous.load(Relaxed),
    );
    let served = tally_1.served.load(Relaxed) + tally_2.served.load(Relaxed);
    let ambiguous = tally_1.ambiguous.load(Relaxed) + tally_2.ambiguous.load(Relaxed);
    assert!(
        b.committed <= served + ambiguous,
        "committed {} > served {served} + ambiguous {ambiguous}: charged twice",
        b.committed
    );
    assert!(
        b.committed + lost >= served,
        "committed {} + lost {lost} < served {served}: more lost than one flush",
        b.committed
    );
}

/// A lease whose hold lapsed before its flush (an outage longer than the lease): the
/// usage billed on it is charged again through a late hold, not lost.
#[tokio::test]
async fn usage_on_a_lapsed_lease_is_charged_late() {
    let clock = ManualClock::new();
    let store = MemoryLedger::builder().clock(clock.clone()).build();
    let a = acct("acct_lapsed");
    store.top_up(TopUp::new(&a, 10_000, "pay-1")).await.unwrap();
    let leased = Leased::new(store.clone()).busy_at(5).clock(clock.clone());
    make_busy(&leased, &clock, &a).await;
    bill(&leased, &a, 10, 5, 4).await;
    // No flush for 30 s: the 10 s lease hold expired in the ledger and its id is forgotten.
    clock.advance(Duration::from_secs(30));
    store.sweep_expired();
    assert_eq!(
        store.balance(&a).await.unwrap().held,
        0,
        "the block went back"
    );
    leased.shutdown().await.unwrap();
    let b = store.balance(&a).await.unwrap();
    assert_eq!(
        b.committed,
        11 * 2 + 10 * 4,
        "the 40 spent on the lapsed lease"
    );
    assert_eq!(b.held, 0);
    conserved(&store, &a).await;
}

/// An account that cannot give its lease a next block drains: no new request is billed on
/// the lease, its hold is kept alive while a request on it is still open (so the credits
/// stay held, not spendable twice), and the request's cost is committed when it ends.
#[tokio::test]
async fn a_draining_lease_keeps_its_hold_until_its_requests_end() {
    let clock = ManualClock::new();
    let store = MemoryLedger::builder().clock(clock.clone()).build();
    let a = acct("acct_drain");
    store.top_up(TopUp::new(&a, 10_000, "pay-1")).await.unwrap();
    let leased = Leased::new(store.clone())
        .busy_at(5)
        .lease_ttl(Duration::from_secs(4))
        .clock(clock.clone());
    make_busy(&leased, &clock, &a).await;
    // A long request stays open on the lease.
    let open = HoldId::generate();
    let held = leased
        .reserve(Reserve::new(a.clone(), open.clone(), 5).route("GET /v1/echo"))
        .await
        .unwrap();
    assert!(matches!(held, ReserveOutcome::Held(_)));
    let block = store.balance(&a).await.unwrap().held;
    // Everything else is spent elsewhere: the next block is refused.
    let rest = store.balance(&a).await.unwrap().available as u64;
    let other = HoldId::generate();
    store
        .reserve(Reserve::new(a.clone(), other.clone(), rest))
        .await
        .unwrap();
    store.commit(&a, &other, rest).await.unwrap();
    leased.flush().await.unwrap();
    // Draining: a new request goes to the ledger (and is refused: nothing is left there).
    let refused = leased
        .reserve(Reserve::new(a.clone(), HoldId::generate(), 5).route("GET /v1/echo"))
        .await
        .unwrap();
    assert!(
        matches!(refused, ReserveOutcome::Insufficient(_)),
        "{refused:?}"
    );
    // Well past the lease's 4 s, its hold is still held: each flush kept it alive.
    for _ in 0..5 {
        clock.advance(Duration::from_secs(2));
        store.sweep_expired();
        leased.flush().await.unwrap();
        assert_eq!(store.balance(&a).await.unwrap().held, block, "kept alive");
    }
    let settled = leased.commit(&a, &open, 5).await.unwrap();
    assert_eq!(settled.outcome, SettleOutcome::Committed);
    leased.flush().await.unwrap();
    assert!(
        leased.leased_accounts().is_empty(),
        "drained, then committed"
    );
    let b = store.balance(&a).await.unwrap();
    assert_eq!(b.held, 0);
    assert_eq!(b.committed, 11 * 2 + rest + 5);
    conserved(&store, &a).await;
}
