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
    audit_cap: usize,
    event_lease: Duration,
    pack_accounts: bool,
    #[cfg(feature = "test-util")]
    test_clock: Option<ManualClock>,
    /// Tests only: keep closed ids this much longer than any call could need.
    #[cfg(feature = "test-util")]
    extra_closed_grace: Duration,
    #[cfg(feature = "redis-tls")]
    tls: Tls,
    /// Tests only: call the scripts with `EVALSHA` even where Redis Functions exist.
    #[cfg(feature = "test-util")]
    evalsha_only: bool,
}

/// The TLS settings of a `rediss://` target (feature `redis-tls`).
#[cfg(feature = "redis-tls")]
#[derive(Default)]
struct Tls {
    /// PEM certificates of the CAs to trust instead of Mozilla's roots.
    ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and private key (mTLS).
    client: Option<(Vec<u8>, Vec<u8>)>,
    /// `#insecure` URLs are allowed.
    allow_insecure: bool,
}

#[cfg(feature = "redis-tls")]
impl Tls {
    /// Certificates to hand to redis-rs, if any were given.
    fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca_pem.is_none() && self.client.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca_pem.clone(),
        })
    }
}

impl fmt::Debug for RedisLedgerBuilder {
    // Addresses are left out: a Redis URL may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            None => "none",
            Some(Target::Url(_)) => "standalone",
            Some(Target::Cluster(_)) => "cluster",
        };
        let mut f = f.debug_struct("RedisLedgerBuilder");
        f.field("target", &target)
            .field("key_prefix", &self.key_prefix)
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_open_holds", &self.max_open_holds);
        // Whether certificates were given, never their contents.
        #[cfg(feature = "redis-tls")]
        f.field("tls_ca", &self.tls.ca_pem.is_some())
            .field("tls_client_cert", &self.tls.client.is_some())
            .field("allow_insecure_tls", &self.tls.allow_insecure);
        f.finish_non_exhaustive()
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
            audit_cap: crate::ledger::audit::DEFAULT_AUDIT_CAP,
            event_lease: crate::ledger::DEFAULT_EVENT_LEASE,
            pack_accounts: true,
            #[cfg(feature = "test-util")]
            test_clock: None,
            #[cfg(feature = "test-util")]
            extra_closed_grace: Duration::ZERO,
            #[cfg(feature = "redis-tls")]
            tls: Tls::default(),
            #[cfg(feature = "test-util")]
            evalsha_only: false,
        }
    }
}

impl RedisLedgerBuilder {
    /// One Redis server, e.g. `redis://127.0.0.1:6379` or `redis://user:pass@host/0`; over
    /// TLS (feature `redis-tls`), `rediss://user:pass@host:6380`: see
    /// [`tls_ca_pem`](Self::tls_ca_pem) for which certificates are trusted.
    /// The ledger keeps one multiplexed connection to it and reconnects when it is lost.
    /// Replaces an earlier [`cluster_urls`](Self::cluster_urls).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.target = Some(Target::Url(url.into()));
        self
    }

    /// Redis Cluster, found through any of these nodes (the client learns the rest).
    /// Every script touches the keys of one account, all under one hash tag, so it runs on
    /// the node that owns that account's slot. Replaces an earlier [`url`](Self::url).
    ///
    /// With `rediss://` URLs (feature `redis-tls`; all of them, or none) every node is
    /// reached over TLS, with the same certificates: the servers need `tls-cluster yes`,
    /// so that the addresses they announce are their TLS ports.
    pub fn cluster_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.target = Some(Target::Cluster(urls.into_iter().map(Into::into).collect()));
        self
    }

    /// Feature `redis-tls`: trust only the CAs of this PEM (one or more `CERTIFICATE`
    /// blocks) for `rediss://` servers, instead of Mozilla's roots (the `webpki-roots`
    /// crate, built in, so the same on every machine and in an image without a system
    /// certificate store).
    ///
    /// Managed Redis whose certificates chain to a public root (ElastiCache with in-transit
    /// encryption, Azure Cache, Upstash) needs nothing more than the `rediss://` URL. Give
    /// the CA of a private deployment here, or a provider's own CA (Redis Cloud's, Google
    /// Memorystore's server CA). A PEM that cannot be read fails [`build`](Self::build)
    /// with [`LedgerError::InvalidSetting`].
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca_pem = Some(pem.into());
        self
    }

    /// Feature `redis-tls`: present this client certificate to `rediss://` servers that
    /// ask for one (mutual TLS, `tls-auth-clients yes`): `cert_chain_pem` is the
    /// certificate (then any intermediates) and `key_pem` its private key (PKCS#8, PKCS#1
    /// or SEC1), both PEM. A pair that cannot be read fails [`build`](Self::build) with
    /// [`LedgerError::InvalidSetting`]. The key is kept only to connect, never printed.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn tls_client_cert_pem(
        mut self,
        cert_chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client = Some((cert_chain_pem.into(), key_pem.into()));
        self
    }

    /// Feature `redis-tls`: allows URLs ending in `#insecure`, which turn off the check of
    /// the server's certificate: anyone on the path can then read and change every
    /// balance. Without this call, [`build`](Self::build) refuses such a URL with
    /// [`LedgerError::InvalidSetting`]; with it, the first such build of the process logs
    /// a warning. For a test rig only: give a private CA with
    /// [`tls_ca_pem`](Self::tls_ca_pem) instead.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn danger_allow_insecure_tls(mut self) -> Self {
        self.tls.allow_insecure = true;
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
    /// [`ReserveOutcome::TooManyHolds`](crate::ledger::ReserveOutcome::TooManyHolds) (default: no
    /// limit).
    pub fn max_open_holds(mut self, limit: u64) -> Self {
        self.max_open_holds = Some(limit);
        self
    }

    /// How many audit entries each account keeps (default 1,000); 0 keeps no trail. Each
    /// entry is one `LPUSH` of a small MessagePack array in the script that moves the
    /// credits, and an `LTRIM` once the trail is full. A list, not a stream: a stream
    /// reserves a 4 KB node per account, which an idle account would pay for ever.
    ///
    /// # Panics
    ///
    /// Over 10,000,000.
    pub fn audit_cap(mut self, entries: usize) -> Self {
        assert!(
            entries <= 10_000_000,
            "audit_cap({entries}): at most 10,000,000"
        );
        self.audit_cap = entries;
        self
    }

    /// Whether each account's figures are packed in one hash field (`v`, MessagePack)
    /// instead of a field each (default: `true`, packed). A reserve or settle then reads
    /// and writes one field where it named 13 to 17: about a fifth less Redis CPU per call
    /// (see `docs/performance.md`, "Packed accounts").
    ///
    /// Either setting reads and writes both forms: an account is written back in the form
    /// it was found in. The setting decides the form of the accounts this ledger creates,
    /// and `true` packs each account of the field form the first time it writes to it (a
    /// read packs nothing). `false` is for a Redis shared with replicas built before packed
    /// accounts, which read only fields and would see a packed account as unknown: keep it
    /// until every replica has the option. [`reconcile`](super::RedisLedger::reconcile)
    /// names an account a replica without it wrote to after it was packed
    /// (`account_forms`). [`rewrite_accounts`](super::RedisLedger::rewrite_accounts)
    /// writes every account in a ledger's form at once: from a packing ledger, to pack the
    /// accounts nobody writes to; from ledgers that do not pack, to unpack every account
    /// before rolling back to a build without the option (`false` alone keeps a packed
    /// account packed).
    ///
    /// ```
    /// use tower_credits::RedisLedger;
    ///
    /// // Replicas built before packed accounts still share this Redis.
    /// let builder = RedisLedger::builder().pack_accounts(false);
    /// # let _ = builder;
    /// ```
    pub fn pack_accounts(mut self, pack: bool) -> Self {
        self.pack_accounts = pack;
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
    ///
    /// With TLS (feature `redis-tls`), a configuration error fails at once with
    /// [`LedgerError::InvalidSetting`], naming the server and the reason, and is never
    /// reported as an outage: a certificate the server or the client refuses (an unknown
    /// CA, a name or date that does not match, a client certificate missing or refused),
    /// a handshake with something that does not speak TLS, a PEM that cannot be read, an
    /// `#insecure` URL without [`danger_allow_insecure_tls`](Self::danger_allow_insecure_tls),
    /// certificates given for a `redis://` URL. Without the feature, a `rediss://` URL is
    /// refused the same way.
    pub async fn build(self) -> Result<RedisLedger, LedgerError> {
        let urls: &[String] = match &self.target {
            None => &[],
            Some(Target::Url(url)) => std::slice::from_ref(url),
            Some(Target::Cluster(urls)) => urls,
        };
        self.check_tls(urls)?;
        let unavailable = |e: redis::RedisError| LedgerError::Unavailable(Box::new(e));
        let connect = async {
            match self.target {
                None => Err(LedgerError::Unavailable(
                    "no Redis address: call `url` or `cluster_urls` on the builder".into(),
                )),
                Some(Target::Url(ref url)) => {
                    let client = self.client(url)?;
                    // No response timeout of redis-rs's own: every call the ledger makes
                    // runs under its call deadline already (`RedisLedger::deadline`),
                    // which answers a stalled call the same way, and a second timer per
                    // call cost about 1,000 instructions (a redis-rs timeout never makes
                    // the manager reconnect either: it is not a dropped connection).
                    let config = ConnectionManagerConfig::new()
                        .set_response_timeout(None)
                        .set_connection_timeout(Some(self.connect_timeout))
                        .set_number_of_retries(2)
                        .set_min_delay(Duration::from_millis(20))
                        .set_max_delay(Duration::from_secs(1));
                    let manager = ConnectionManager::new_with_config(client.clone(), config)
                        .await
                        .map_err(|e| connect_error(e, &client))?;
                    Ok(Conn::Standalone(manager))
                }
                Some(Target::Cluster(ref urls)) => {
                    #[allow(unused_mut)]
                    let mut builder = ClusterClientBuilder::new(urls.iter().map(String::as_str))
                        .connection_timeout(self.connect_timeout)
                        .response_timeout(self.call_timeout);
                    #[cfg(feature = "redis-tls")]
                    if let Some(certificates) = self.tls.certificates() {
                        builder = builder.certs(certificates);
                    }
                    let client = builder.build().map_err(|e| {
                        if is_tls(urls) {
                            tls_setting(format!("{e}"))
                        } else {
                            unavailable(e)
                        }
                    })?;
                    match client.get_async_connection().await {
                        Ok(conn) => Ok(Conn::Cluster(conn)),
                        // The cluster client keeps only the text of a node's error: ask
                        // the first node alone why, so that a certificate error is
                        // reported as one.
                        Err(e) if is_tls(urls) => Err(self.diagnose(&urls[0], e).await),
                        Err(e) => Err(unavailable(e)),
                    }
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
                audit_cap: self.audit_cap as u64,
                pack_accounts: self.pack_accounts,
                replica: format!("replica-{}", uuid::Uuid::now_v7().simple()),
                event_lease_ms: (self.event_lease.as_millis() as u64)
                    .clamp(1, crate::ledger::MAX_HOLD_TTL.as_millis() as u64),
                #[cfg(feature = "test-util")]
                test_clock: self.test_clock,
            }),
        })
    }

    /// Refuses, before connecting, a TLS setup that cannot work or was not allowed.
    fn check_tls(&self, urls: &[String]) -> Result<(), LedgerError> {
        let tls_count = urls.iter().filter(|url| is_tls_url(url)).count();
        if tls_count == 0 {
            #[cfg(feature = "redis-tls")]
            if self.tls.certificates().is_some() {
                return Err(tls_setting(
                    "TLS certificates were given, but the Redis URL is not `rediss://`".into(),
                ));
            }
            return Ok(());
        }
        if cfg!(not(feature = "redis-tls")) {
            return Err(tls_setting(
                "a `rediss://` URL needs the `redis-tls` feature of tower-credits".into(),
            ));
        }
        if tls_count != urls.len() {
            return Err(tls_setting(
                "the cluster URLs mix `rediss://` and `redis://`: use TLS for every node or none"
                    .into(),
            ));
        }
        #[cfg(feature = "redis-tls")]
        if let Some(pem) = &self.tls.ca_pem {
            use rustls::pki_types::{pem::PemObject, CertificateDer};
            let mut count = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                cert.map_err(|e| tls_setting(format!("the PEM of `tls_ca_pem`: {e}")))?;
                count += 1;
            }
            if count == 0 {
                return Err(tls_setting(
                    "the PEM of `tls_ca_pem` holds no `CERTIFICATE` block".into(),
                ));
            }
        }
        #[cfg(feature = "redis-tls")]
        if let Some((cert, key)) = &self.tls.client {
            use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
            let mut count = 0;
            for cert in CertificateDer::pem_slice_iter(cert) {
                cert.map_err(|e| {
                    tls_setting(format!("the certificate of `tls_client_cert_pem`: {e}"))
                })?;
                count += 1;
            }
            if count == 0 {
                return Err(tls_setting(
                    "the certificate of `tls_client_cert_pem` holds no `CERTIFICATE` block".into(),
                ));
            }
            PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                tls_setting(format!(
                    "the key of `tls_client_cert_pem` (a PKCS#8, PKCS#1 or SEC1 private key, \
                     PEM): {e}"
                ))
            })?;
        }
        if urls.iter().any(|url| is_insecure(url)) {
            #[cfg(feature = "redis-tls")]
            if self.tls.allow_insecure {
                warn_insecure_once();
                return Ok(());
            }
            return Err(tls_setting(
                "`#insecure` turns off the check of the server's certificate; give its CA \
                 with `tls_ca_pem`, or call `danger_allow_insecure_tls` to allow it"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The client of one server: with the TLS certificates if any were given.
    fn client(&self, url: &str) -> Result<redis::Client, LedgerError> {
        #[cfg(feature = "redis-tls")]
        if let Some(certificates) = self.tls.certificates() {
            return redis::Client::build_with_tls(url, certificates)
                .map_err(|e| tls_setting(format!("{e}")));
        }
        redis::Client::open(url).map_err(|e| {
            if is_tls_url(url) {
                tls_setting(format!("{e}"))
            } else {
                LedgerError::Unavailable(Box::new(e))
            }
        })
    }

    /// Why a TLS cluster could not be reached: one connection to its first node, alone.
    /// A TLS refusal from it is a configuration error; anything else, the cluster's own
    /// `error`.
    async fn diagnose(&self, url: &str, error: redis::RedisError) -> LedgerError {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.call_timeout));
        let refused = match self.client(url) {
            Ok(client) => match client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(_) => None,
                Err(e) => match connect_error(e, &client) {
                    e @ LedgerError::InvalidSetting { .. } => Some(e),
                    _ => None,
                },
            },
            Err(e) => Some(e),
        };
        refused.unwrap_or_else(|| LedgerError::Unavailable(Box::new(error)))
    }
}

/// Whether every one of `urls` is a TLS URL.
fn is_tls(urls: &[String]) -> bool {
    !urls.is_empty() && urls.iter().all(|url| is_tls_url(url))
}

/// Whether `url` is a TLS URL (`rediss://`).
fn is_tls_url(url: &str) -> bool {
    url.get(..9)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"))
}

/// Whether `url` asks redis-rs to skip the certificate check (`rediss://…#insecure`).
fn is_insecure(url: &str) -> bool {
    url.split_once('#')
        .is_some_and(|(_, fragment)| fragment == "insecure")
}

/// A TLS configuration error.
fn tls_setting(detail: String) -> LedgerError {
    LedgerError::InvalidSetting {
        what: "Redis TLS setup",
        detail,
    }
}

/// A failed connection to the server of `client`: a configuration error naming the server
/// when TLS refused it, else [`LedgerError::Unavailable`].
fn connect_error(error: redis::RedisError, client: &redis::Client) -> LedgerError {
    #[cfg(feature = "redis-tls")]
    if let Some(reason) = super::conn::tls_refusal(&error) {
        // `host:port`, never the password.
        let server = client.get_connection_info().addr();
        return tls_setting(format!("TLS to {server} failed: {reason}"));
    }
    let _ = client;
    LedgerError::Unavailable(Box::new(error))
}

/// Logs, once per process, that a ledger was built without certificate checks.
#[cfg(feature = "redis-tls")]
fn warn_insecure_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "Redis TLS without certificate checks (`#insecure`, allowed by \
             `danger_allow_insecure_tls`): anyone on the path can read and change balances"
        );
    }
}
