//! One scenario on every ledger: the in-memory ledger, a Redis server and a Redis Cluster
//! (each started once per test binary, on first use; every ledger gets a key prefix of
//! its own, so scenarios sharing a server share no state).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tower_credits::clock::ManualClock;
use tower_credits::ledger::RedisLedger;

use super::redis::{RedisCluster, RedisServer};

fn redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

fn prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("scenario{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A fresh ledger on the binary's Redis server.
pub async fn redis_ledger() -> RedisLedger {
    redis_ledger_on(ManualClock::new()).await
}

/// A fresh ledger on the binary's Redis server, its scripts' time moved by `clock`.
pub async fn redis_ledger_on(clock: ManualClock) -> RedisLedger {
    RedisLedger::builder()
        .url(redis().url())
        .key_prefix(prefix())
        .call_timeout(Duration::from_secs(5))
        .test_clock(clock)
        .build()
        .await
        .expect("connect to the test redis-server")
}

/// A fresh ledger on the binary's Redis Cluster.
pub async fn cluster_ledger() -> RedisLedger {
    cluster_ledger_on(ManualClock::new()).await
}

/// A fresh ledger on the binary's Redis Cluster, its scripts' time moved by `clock`.
pub async fn cluster_ledger_on(clock: ManualClock) -> RedisLedger {
    RedisLedger::builder()
        .cluster_urls(cluster().urls())
        .key_prefix(prefix())
        .call_timeout(Duration::from_secs(5))
        .test_clock(clock)
        .build()
        .await
        .expect("connect to the test cluster")
}

/// A fresh in-memory ledger on `clock`.
pub fn memory_ledger_on(clock: ManualClock) -> tower_credits::MemoryLedger {
    tower_credits::MemoryLedger::builder().clock(clock).build()
}

/// As [`on_every_ledger!`], each scenario taking `(ledger, clock)`: the clock moves the
/// ledger's time.
#[allow(unused_macros)]
macro_rules! on_every_clocked_ledger {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let clock = tower_credits::clock::ManualClock::new();
                    let ledger = crate::support::ledgers::memory_ledger_on(clock.clone());
                    super::$scenario(ledger, clock).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let clock = tower_credits::clock::ManualClock::new();
                    let ledger = crate::support::ledgers::redis_ledger_on(clock.clone()).await;
                    super::$scenario(ledger, clock).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let clock = tower_credits::clock::ManualClock::new();
                    let ledger = crate::support::ledgers::cluster_ledger_on(clock.clone()).await;
                    super::$scenario(ledger, clock).await;
                }
            )*
        }
    };
}

/// Expands each `scenario(ledger)` into three tests, `memory::scenario`,
/// `redis::scenario` and `cluster::scenario`.
#[allow(unused_macros)]
macro_rules! on_every_ledger {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(tower_credits::MemoryLedger::new()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(crate::support::ledgers::redis_ledger().await).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(crate::support::ledgers::cluster_ledger().await).await;
                }
            )*
        }
    };
}
