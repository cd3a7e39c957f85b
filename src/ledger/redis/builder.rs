//! [`RedisLedgerBuilder`]: where the ledger connects and how it behaves.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;

use super::conn::Conn;
use super::keys::is_valid_prefix;
use super::{Inner, RedisLedger};
#[cfg(feature = "test-util")]
use crate::clock::ManualClock;
use crate::ledger::LedgerError;

/// Default prefix of every key: `credits`.
pub const DEFAULT_KEY_PREFIX: &str = "credits";
/// Default deadline of one ledger call: 50 ms.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(50);
/// Default deadline of one connection attempt: 1 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

enum Target {
    Url(String),
    Cluster(Vec<String>),
}

/// Builds a [`RedisLedger`]: start with [`RedisLedger::builder`], name a server with
/// [`url`](Self::url) or a cluster with [`cluster_urls`](Self::cluster_urls), then
/// [`build`](Self::build).
///
/// ```no_run
/// use std::time::Duration;
/// use tower_credits::ledger::RedisLedger;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_credits::LedgerError> {
/// let ledger = RedisLedger::builder()
///     .url("redis://127.0.0.1:6379")
///     .key_prefix("billing")
///     .call_timeout(Duration::from_millis(100))
///     .build()
///     .await?;
/// # let _ = ledger;
/// # Ok(()) }
/// ```
pub struct RedisLedgerBuilder {
    target: Option<Target>,
    key_prefix: String,
    call_timeout: Duration,
    connect_timeout: Duration,
    max_open_holds: Option<u64>,
    event_lease: Duration,
    #[cfg(feature = "test-util")]
    test_clock: Option<ManualClock>,
    /// Tests only: keep closed ids this much longer than any call could need.
    #[cfg(feature = "test-util")]
    extra_closed_grace: Duration,
    /// Tests only: call the scripts with `EVALSHA` even where Redis Functions exist.
    #[cfg(feature = "test-util")]
    evalsha_only: bool,
}

impl fmt::Debug for RedisLedgerBuilder {
    // Addresses are left out: a Redis URL may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            None => "none",
            Some(Target::Url(_)) => "standalone",
            Some(Target::Cluster(_)) => "cluster",
        };
        f.debug_struct("RedisLedgerBuilder")
            .field("target", &target)
            .field("key_prefix", &self.key_prefix)
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_open_holds", &self.max_open_holds)
            .finish_non_exhaustive()
    }
}

impl Default for RedisLedgerBuilder {
    fn default() -> Self {
        Self {
            target: None,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_open_holds: None,
            event_lease: crate::ledger::DEFAULT_EVENT_LEASE,
            #[cfg(feature = "test-util")]
            test_clock: None,
            #[cfg(feature = "test-util")]
            extra_closed_grace: Duration::ZERO,
            #[cfg(feature = "test-util")]
            evalsha_only: false,
        }
    }
}

impl RedisLedgerBuilder {
    /// One Redis server, e.g. `redis://127.0.0.1:6379` or `redis://user:pass@host/0`. TLS
    /// (`rediss://`) is not compiled in yet: it will come as a feature of its own.
    /// The ledger keeps one multiplexed connection to it and reconnects when it is lost.
    /// Replaces an earlier [`cluster_urls`](Self::cluster_urls).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.target = Some(Target::Url(url.into()));
        self
    }

    /// Redis Cluster, found through any of these nodes (the client learns the rest).
    /// Every script touches the keys of one account, all under one hash tag, so it runs on
    /// the node that owns that account's slot. Replaces an earlier [`url`](Self::url).
    pub fn cluster_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.target = Some(Target::Cluster(urls.into_iter().map(Into::into).collect()));
        self
    }

    /// The prefix of every key (default `credits`): `<prefix>:{<account>}:acct`, …
    ///
    /// # Panics
    ///
    /// If `prefix` is empty, longer than 64 bytes, or holds anything but printable ASCII
    /// without `{` and `}` (a brace would move the hash tag that keeps an account's keys
    /// in one cluster slot).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        assert!(
            is_valid_prefix(&prefix),
            "invalid Redis key prefix {prefix:?}: use 1 to 64 printable ASCII characters \
             without spaces, `{{` or `}}`"
        );
        self.key_prefix = prefix;
        self
    }

    /// The deadline of every ledger call (default 50 ms); past it the call fails with
    /// [`LedgerError::Timeout`]. A reserve that timed out is refunded by its hold id in the
    /// background (leaving a tombstone if the reserve never ran), so retry with a new id.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The deadline of one connection attempt (default 1 s), also the deadline of
    /// [`build`](Self::build).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The most open holds one account may have; a reserve beyond it answers
    /// [`ReserveOutcome::TooManyHolds`](crate::ReserveOutcome::TooManyHolds) (default: no
    /// limit).
    pub fn max_open_holds(mut self, limit: u64) -> Self {
        self.max_open_holds = Some(limit);
        self
    }

    /// Tests only (feature `test-util`): shifts Redis's clock by how far `clock` has been
    /// [advanced](ManualClock::advance), so a test expires holds without waiting. Every
    /// script adds [`ManualClock::advanced`] to Redis `TIME`.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn test_clock(mut self, clock: ManualClock) -> Self {
        self.test_clock = Some(clock);
        self
    }

    /// Tests only (feature `test-util`): keeps closed hold ids `extra` longer than a call
    /// could need them, so a test can audit how every hold of a long run closed.
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn extra_closed_grace(mut self, extra: Duration) -> Self {
        self.extra_closed_grace = extra;
        self
    }

    /// Tests only (feature `test-util`): calls the scripts with `EVALSHA`, the fallback
    /// below Redis 7.0, even where Redis Functions exist, so both paths can be tested.
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn evalsha_only(mut self) -> Self {
        self.evalsha_only = true;
        self
    }

    /// How long an event this replica detects stays leased to it before another replica's
    /// dispatcher may claim it (default
    /// [`DEFAULT_EVENT_LEASE`](crate::ledger::DEFAULT_EVENT_LEASE)): what a replica that
    /// dies before it delivers costs in delay.
    pub fn event_lease(mut self, lease: Duration) -> Self {
        self.event_lease = lease;
        self
    }

    /// Connects and builds the ledger.
    ///
    /// Fails with [`LedgerError::Unavailable`] when no address was given, the address is
    /// malformed, or the server refuses; with [`LedgerError::Timeout`] when no connection
    /// is made within the [connect timeout](Self::connect_timeout). The scripts are loaded
    /// as one Redis Function library (Redis 7.0 and later; on every master of a cluster),
    /// or, below 7.0, called by SHA and loaded on first use.
    pub async fn build(self) -> Result<RedisLedger, LedgerError> {
        let unavailable = |e: redis::RedisError| LedgerError::Unavailable(Box::new(e));
        let connect = async {
            match self.target {
                None => Err(LedgerError::Unavailable(
                    "no Redis address: call `url` or `cluster_urls` on the builder".into(),
                )),
                Some(Target::Url(ref url)) => {
                    let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
                    let config = ConnectionManagerConfig::new()
                        .set_response_timeout(Some(self.call_timeout))
                        .set_connection_timeout(Some(self.connect_timeout))
                        .set_number_of_retries(2)
                        .set_min_delay(Duration::from_millis(20))
                        .set_max_delay(Duration::from_secs(1));
                    let manager = ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(unavailable)?;
                    Ok(Conn::Standalone(manager))
                }
                Some(Target::Cluster(ref urls)) => {
                    let client = ClusterClientBuilder::new(urls.iter().map(String::as_str))
                        .connection_timeout(self.connect_timeout)
                        .response_timeout(self.call_timeout)
                        .build()
                        .map_err(unavailable)?;
                    let conn = client.get_async_connection().await.map_err(unavailable)?;
                    Ok(Conn::Cluster(conn))
                }
            }
        };
        let conn = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| LedgerError::Timeout(self.connect_timeout))??;
        // The scripts as one Redis Function library where the server has them (7.0+),
        // else EVALSHA: chosen once, here.
        #[cfg(feature = "test-util")]
        let allow_functions = !self.evalsha_only;
        #[cfg(not(feature = "test-util"))]
        let allow_functions = true;
        let scripts = tokio::time::timeout(
            self.connect_timeout,
            super::functions::choose(&conn, allow_functions),
        )
        .await
        .map_err(|_| LedgerError::Timeout(self.connect_timeout))?
        .map_err(unavailable)?;
        #[cfg(feature = "test-util")]
        let extra_grace_ms = self.extra_closed_grace.as_millis() as u64;
        #[cfg(not(feature = "test-util"))]
        let extra_grace_ms = 0;
        // Hash every script now rather than on the first call of each.
        super::scripts::load_all();
        Ok(RedisLedger {
            inner: Arc::new(Inner {
                unanswered: Default::default(),
                conn,
                scripts,
                prefix: self.key_prefix,
                call_timeout: self.call_timeout,
                // Capped so that every forget-at time stays exact in a `done` score.
                closed_grace_ms: (self.call_timeout.as_millis() as u64)
                    .saturating_add(1_000)
                    .saturating_add(extra_grace_ms)
                    .min(crate::ledger::MAX_HOLD_TTL.as_millis() as u64),
                longest_ttl: Default::default(),
                max_open_holds: self.max_open_holds,
                replica: format!("replica-{}", uuid::Uuid::now_v7().simple()),
                event_lease_ms: (self.event_lease.as_millis() as u64)
                    .clamp(1, crate::ledger::MAX_HOLD_TTL.as_millis() as u64),
                #[cfg(feature = "test-util")]
                test_clock: self.test_clock,
            }),
        })
    }
}
