//! The ledger conformance suite, run against [`RedisLedger`] on a real `redis-server`.
//!
//! One server for the whole test binary (started on first use, kept in a `static`); every
//! `ledger()` call gets a key prefix of its own, so no two cases share state.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use support::redis::RedisServer;
use tower_credits::clock::ManualClock;
use tower_credits::conformance::Harness;
use tower_credits::ledger::RedisLedger;

fn server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// A fresh prefix per ledger: `conf<n>`.
fn fresh_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("conf{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The scripts as Redis Functions (`FCALL`), the path on Redis 7.0 and later.
struct RedisHarness;

impl Harness for RedisHarness {
    type L = RedisLedger;

    async fn ledger(&self) -> (RedisLedger, ManualClock) {
        let (ledger, clock) = build(RedisLedger::builder()).await;
        assert!(
            ledger.uses_functions(),
            "Redis 7 loads the function library"
        );
        (ledger, clock)
    }
}

/// The scripts by SHA (`EVALSHA`), the fallback below Redis 7.0.
struct EvalshaHarness;

impl Harness for EvalshaHarness {
    type L = RedisLedger;

    async fn ledger(&self) -> (RedisLedger, ManualClock) {
        let (ledger, clock) = build(RedisLedger::builder().evalsha_only()).await;
        assert!(!ledger.uses_functions());
        (ledger, clock)
    }
}

/// Accounts in the field form, a field per figure (`pack_accounts(false)`; the default
/// packs them in one), as Redis Functions.
struct FieldsHarness;

impl Harness for FieldsHarness {
    type L = RedisLedger;

    async fn ledger(&self) -> (RedisLedger, ManualClock) {
        let (ledger, clock) = build(RedisLedger::builder().pack_accounts(false)).await;
        assert!(ledger.uses_functions());
        (ledger, clock)
    }
}

/// Accounts in the field form, the scripts by SHA.
struct FieldsEvalshaHarness;

impl Harness for FieldsEvalshaHarness {
    type L = RedisLedger;

    async fn ledger(&self) -> (RedisLedger, ManualClock) {
        let (ledger, clock) =
            build(RedisLedger::builder().pack_accounts(false).evalsha_only()).await;
        assert!(!ledger.uses_functions());
        (ledger, clock)
    }
}

async fn build(
    builder: tower_credits::ledger::redis::RedisLedgerBuilder,
) -> (RedisLedger, ManualClock) {
    let clock = ManualClock::new();
    let ledger = builder
        .url(server().url())
        .key_prefix(fresh_prefix())
        // The suite checks semantics, not latency: a busy machine must not fail it.
        // 4 s: the closed-id grace (timeout + 1 s) is then the model's 5 s.
        .call_timeout(Duration::from_secs(4))
        .test_clock(clock.clone())
        .build()
        .await
        .expect("connect to the test redis-server");
    (ledger, clock)
}

tower_credits::conformance_suite!(RedisHarness);
tower_credits::conformance_outbox_suite!(RedisHarness);

mod evalsha {
    use super::EvalshaHarness;

    tower_credits::conformance_suite!(EvalshaHarness);
    tower_credits::conformance_outbox_suite!(EvalshaHarness);
}

mod fields {
    use super::FieldsHarness;

    tower_credits::conformance_suite!(FieldsHarness);
    tower_credits::conformance_outbox_suite!(FieldsHarness);
}

mod fields_evalsha {
    use super::FieldsEvalshaHarness;

    tower_credits::conformance_suite!(FieldsEvalshaHarness);
    tower_credits::conformance_outbox_suite!(FieldsEvalshaHarness);
}
