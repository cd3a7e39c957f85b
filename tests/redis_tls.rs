//! `rediss://`: `RedisLedger` over TLS (feature `redis-tls`) on real `redis-server`s that
//! speak only TLS (`--port 0 --tls-port`), with a CA and certificates rcgen makes for the
//! test (see `tests/support/redis.rs`).
//!
//! * The conformance suite over TLS, on one server (`tls-auth-clients no`, the CA given
//!   with `tls_ca_pem`) and on a three-master TLS Cluster (`tls-cluster yes`).
//! * What TLS refuses is a configuration error at `build`, naming the server and the
//!   reason, never an outage: a CA that did not sign the server's certificate, Mozilla's
//!   roots for a private CA, a missing or foreign client certificate where
//!   `tls-auth-clients yes`, `#insecure` without the opt-in, unreadable PEM.
//! * A certificate refused on a reconnect, after `build`, is `Corrupt`, not `Unavailable`.

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use support::redis::{ClientAuth, RedisServer, RedisTlsCluster, RedisTlsServer, TestCa};
use support::rig::{wait_for_async, DEADLINE};
use tower_credits::clock::ManualClock;
use tower_credits::conformance::Harness;
use tower_credits::ledger::{ErrorKind, RedisLedger, RedisLedgerBuilder};
use tower_credits::{AccountId, LedgerAdmin, LedgerError, LedgerReports, TopUp};

/// Call deadline of ledgers in tests that are not about deadlines: the TLS handshake and a
/// busy machine must not fail them.
const PATIENT: Duration = Duration::from_secs(5);

/// One CA for the whole binary.
fn ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(TestCa::generate)
}

/// The server of the conformance suite and of the tests that need no server of their own.
fn server() -> &'static RedisTlsServer {
    static SERVER: OnceLock<RedisTlsServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisTlsServer::start(ca(), ClientAuth::Off))
}

/// The TLS cluster of the cluster conformance suite.
fn cluster() -> &'static RedisTlsCluster {
    static CLUSTER: OnceLock<RedisTlsCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisTlsCluster::start(ca()))
}

/// A fresh key prefix per ledger: `tls<n>`.
fn fresh_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("tls{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn builder(url: String) -> RedisLedgerBuilder {
    RedisLedger::builder()
        .url(url)
        .key_prefix(fresh_prefix())
        .call_timeout(PATIENT)
        .connect_timeout(PATIENT)
}

/// A top-up and a balance read: the connection carries script calls both ways.
async fn round_trip(ledger: &RedisLedger) {
    let account = AccountId::new("acct_tls").unwrap();
    ledger
        .top_up(TopUp::new(&account, 42, "pay-tls"))
        .await
        .expect("top up over TLS");
    let balance = ledger.balance(&account).await.expect("balance over TLS");
    assert_eq!(balance.available, 42);
}

/// The error of a build that must fail, with its message.
async fn refused(builder: RedisLedgerBuilder) -> (LedgerError, String) {
    match builder.build().await {
        Ok(_) => panic!("the build connected, but it should have been refused"),
        Err(e) => {
            let message = e.to_string();
            (e, message)
        }
    }
}

/// A configuration error: not an outage, not retried, naming what it says.
fn assert_configuration_error(error: &LedgerError, message: &str, names: &[&str]) {
    assert!(
        matches!(error, LedgerError::InvalidSetting { .. }),
        "expected a configuration error, got {error:?}"
    );
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{message}");
    assert!(!error.is_unavailable(), "{message}");
    for name in names {
        assert!(message.contains(name), "{message:?} does not say {name:?}");
    }
}

struct TlsHarness;

impl Harness for TlsHarness {
    type L = RedisLedger;

    async fn ledger(&self) -> (RedisLedger, ManualClock) {
        let clock = ManualClock::new();
        let ledger = RedisLedger::builder()
            .url(server().url())
            .tls_ca_pem(ca().ca_pem.clone())
            .key_prefix(fresh_prefix())
            // The suite checks semantics, not latency: a busy machine must not fail it.
            // 4 s: the closed-id grace (timeout + 1 s) is then the model's 5 s.
            .call_timeout(Duration::from_secs(4))
            .connect_timeout(PATIENT)
            .test_clock(clock.clone())
            .build()
            .await
            .expect("connect to the test redis-server over TLS");
        (ledger, clock)
    }
}

struct TlsClusterHarness;

impl Harness for TlsClusterHarness {
    type L = RedisLedger;

    async fn ledger(&self) -> (RedisLedger, ManualClock) {
        let clock = ManualClock::new();
        let ledger = RedisLedger::builder()
            .cluster_urls(cluster().urls())
            .tls_ca_pem(ca().ca_pem.clone())
            .key_prefix(fresh_prefix())
            .call_timeout(Duration::from_secs(4))
            .connect_timeout(PATIENT)
            .test_clock(clock.clone())
            .build()
            .await
            .expect("connect to the test Redis Cluster over TLS");
        (ledger, clock)
    }
}

/// The conformance suite on one TLS server.
mod standalone {
    tower_credits::conformance_suite!(super::TlsHarness);
    tower_credits::conformance_outbox_suite!(super::TlsHarness);
}

/// The conformance suite on a three-master TLS Cluster.
mod cluster {
    tower_credits::conformance_suite!(super::TlsClusterHarness);
    tower_credits::conformance_outbox_suite!(super::TlsClusterHarness);
}

#[tokio::test]
async fn a_ca_that_did_not_sign_the_server_certificate_is_refused_naming_server_and_reason() {
    let (error, message) =
        refused(builder(server().url()).tls_ca_pem(TestCa::unrelated_ca_pem())).await;
    let server = format!("127.0.0.1:{}", server().port());
    assert_configuration_error(&error, &message, &[&server, "UnknownIssuer", "tls_ca_pem"]);
}

#[tokio::test]
async fn mozilla_roots_do_not_trust_a_private_ca() {
    let (error, message) = refused(builder(server().url())).await;
    assert_configuration_error(&error, &message, &["UnknownIssuer"]);
}

#[tokio::test]
async fn a_cluster_with_the_wrong_ca_is_refused_as_a_configuration_error() {
    let urls = cluster().urls();
    let (error, message) = refused(
        RedisLedger::builder()
            .cluster_urls(urls.clone())
            .tls_ca_pem(TestCa::unrelated_ca_pem())
            .call_timeout(PATIENT)
            .connect_timeout(PATIENT),
    )
    .await;
    let first = urls[0].trim_start_matches("rediss://");
    assert_configuration_error(&error, &message, &[first, "UnknownIssuer"]);
}

#[tokio::test]
async fn tls_auth_clients_no_needs_no_client_certificate() {
    let ledger = builder(server().url())
        .tls_ca_pem(ca().ca_pem.clone())
        .build()
        .await
        .expect("connect over TLS without a client certificate");
    round_trip(&ledger).await;
}

#[tokio::test]
async fn mtls_with_a_client_certificate_works() {
    let server = RedisTlsServer::start(ca(), ClientAuth::Required);
    let ledger = builder(server.url())
        .tls_ca_pem(ca().ca_pem.clone())
        .tls_client_cert_pem(ca().client_cert_pem.clone(), ca().client_key_pem.clone())
        .build()
        .await
        .expect("connect with a client certificate");
    round_trip(&ledger).await;
    assert!(
        server.cli(&["CLIENT", "LIST"]).lines().count() >= 2,
        "the ledger's connection is one of the server's clients"
    );
}

#[tokio::test]
async fn mtls_without_a_client_certificate_is_refused() {
    let server = RedisTlsServer::start(ca(), ClientAuth::Required);
    let (error, message) = refused(builder(server.url()).tls_ca_pem(ca().ca_pem.clone())).await;
    let name = format!("127.0.0.1:{}", server.port());
    assert_configuration_error(&error, &message, &[&name, "client certificate"]);
}

#[tokio::test]
async fn mtls_with_a_client_certificate_of_another_ca_is_refused() {
    let server = RedisTlsServer::start(ca(), ClientAuth::Required);
    let (cert, key) = TestCa::unrelated_client_pair();
    let (error, message) = refused(
        builder(server.url())
            .tls_ca_pem(ca().ca_pem.clone())
            .tls_client_cert_pem(cert, key),
    )
    .await;
    assert_configuration_error(&error, &message, &["client certificate"]);
}

#[tokio::test]
async fn insecure_is_refused_without_the_opt_in() {
    let url = format!("{}/#insecure", server().url());
    let (error, message) = refused(builder(url)).await;
    assert_configuration_error(
        &error,
        &message,
        &["#insecure", "danger_allow_insecure_tls"],
    );
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The only test of this binary that allows `#insecure`: the warning is once per process.
#[tokio::test(flavor = "current_thread")]
async fn insecure_with_the_opt_in_skips_the_check_and_warns_once() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let url = format!("{}/#insecure", server().url());
    for _ in 0..2 {
        // No CA given: Mozilla's roots would refuse the test CA's certificate.
        let ledger = builder(url.clone())
            .danger_allow_insecure_tls()
            .build()
            .await
            .expect("connect without certificate checks");
        round_trip(&ledger).await;
    }
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("#insecure"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per process, got:\n{log}");
}

#[tokio::test]
async fn certificates_for_a_plain_url_are_refused() {
    let plain = RedisServer::start();
    let (error, message) = refused(
        RedisLedger::builder()
            .url(plain.url())
            .tls_ca_pem(ca().ca_pem.clone()),
    )
    .await;
    assert_configuration_error(&error, &message, &["rediss://"]);
}

#[tokio::test]
async fn a_ca_pem_without_a_certificate_is_refused() {
    let (error, message) =
        refused(builder(server().url()).tls_ca_pem("not a certificate".as_bytes())).await;
    assert_configuration_error(&error, &message, &["tls_ca_pem"]);
}

#[tokio::test]
async fn an_unreadable_client_key_is_refused() {
    let (error, message) = refused(
        builder(server().url())
            .tls_ca_pem(ca().ca_pem.clone())
            .tls_client_cert_pem(ca().client_cert_pem.clone(), "no key here".as_bytes()),
    )
    .await;
    assert_configuration_error(&error, &message, &["key of `tls_client_cert_pem`"]);
}

#[tokio::test]
async fn a_certificate_refused_on_reconnect_is_corrupt_not_an_outage() {
    let server = RedisTlsServer::start(ca(), ClientAuth::Off);
    let ledger = builder(server.url())
        .tls_ca_pem(ca().ca_pem.clone())
        .build()
        .await
        .expect("connect over TLS");
    round_trip(&ledger).await;
    // The server now shows a certificate of another CA, and drops every connection.
    let (cert, key) = TestCa::unrelated_server_pair();
    std::fs::write(server.dir().join("impostor.crt"), cert).unwrap();
    std::fs::write(server.dir().join("impostor.key"), key).unwrap();
    server.cli(&[
        "CONFIG",
        "SET",
        "tls-cert-file",
        "impostor.crt",
        "tls-key-file",
        "impostor.key",
    ]);
    // The new certificate is for new connections: drop the ledger's (skipping our own).
    server.cli_insecure(&["CLIENT", "KILL", "TYPE", "normal"]);
    let account = AccountId::new("acct_tls").unwrap();
    let error = wait_for_async("a call refused by TLS after a reconnect", DEADLINE, || {
        let ledger = ledger.clone();
        let account = account.clone();
        async move {
            match ledger.balance(&account).await {
                Err(e) if e.kind() == ErrorKind::Corrupt => Some(e),
                _ => None,
            }
        }
    })
    .await;
    let message = error.to_string();
    assert!(!error.is_unavailable(), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");
}
