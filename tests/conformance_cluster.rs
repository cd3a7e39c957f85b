//! The ledger conformance suite, run against [`RedisLedger`] on a real three-master Redis
//! Cluster: every script touches one account's keys under one hash tag, so accounts spread
//! over the shards and nothing crosses slots.
//!
//! One cluster for the whole test binary (started on first use, kept in a `static`); every
//! `ledger()` call gets a key prefix of its own, so no two cases share state.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use support::redis::RedisCluster;
use tower_credits::clock::ManualClock;
use tower_credits::conformance::Harness;
use tower_credits::ledger::RedisLedger;

fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

/// A fresh prefix per ledger: `cluster<n>`.
fn fresh_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("cluster{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

struct ClusterHarness;

impl Harness for ClusterHarness {
    type L = RedisLedger;

    async fn ledger(&self) -> (RedisLedger, ManualClock) {
        let clock = ManualClock::new();
        let ledger = RedisLedger::builder()
            .cluster_urls(cluster().urls())
            .key_prefix(fresh_prefix())
            // The suite checks semantics, not latency: a busy machine must not fail it.
            // 4 s: the closed-id grace (timeout + 1 s) is then the model's 5 s.
            .call_timeout(Duration::from_secs(4))
            .test_clock(clock.clone())
            .build()
            .await
            .expect("connect to the test Redis Cluster");
        assert!(
            ledger.uses_functions(),
            "the function library is loaded on every master"
        );
        (ledger, clock)
    }
}

tower_credits::conformance_suite!(ClusterHarness);
tower_credits::conformance_outbox_suite!(ClusterHarness);
