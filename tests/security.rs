//! API keys exist only as hashes in logs and errors; callers cannot name another account;
//! bad and oversized credentials get clear problem JSON.

mod http_support;
mod support;

use std::cell::Cell;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::Full;
use http_support::*;
use support::rig::{wait_for_async, DEADLINE};
use tower_credits::account::AccountResolver;
use tower_credits::pricing::Pricing;
use tower_credits::{AccountId, ApiKeyHash, CreditLayer, Ledger, MemoryLedger};
use tower_credits::{LedgerAdmin, LedgerReports};

const RAW_KEY: &str = "sk-live-7f3a9c1e5b2d4f60";

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

fn app<L: Ledger>(layer: CreditLayer<L>) -> Router {
    Router::new()
        .route("/v1/echo", get(|| async { "echo" }))
        .layer(layer.pricing(Pricing::new().route("GET /v1/echo", 1)))
}

#[tokio::test(flavor = "current_thread")]
async fn raw_api_keys_never_reach_the_logs() {
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let ledger = MemoryLedger::new();
    account(&ledger, "acct_sec", RAW_KEY, 1).await;
    let server = Server::start(app(CreditLayer::new(ledger.clone()))).await;
    let down = Server::start(app(CreditLayer::new(DownLedger))).await;
    let client = http1();
    let url = server.url("/v1/echo");
    let other_raw = "sk-live-unknown-0000";
    for (url, key) in [
        (&url, RAW_KEY),                  // charged
        (&url, RAW_KEY),                  // refused: 402, one credit only
        (&url, other_raw),                // unknown
        (&down.url("/v1/echo"), RAW_KEY), // ledger down: error logs
    ] {
        send(&client, get_req(url, Some(key))).await;
    }
    let answer = send(&client, get_req(&url, Some(&format!("{RAW_KEY} extra")))).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(!String::from_utf8_lossy(&answer.body).contains(RAW_KEY));

    // Debug output of what the crate hands around carries hashes only.
    let charge_debug = format!("{:?}", ApiKeyHash::of(RAW_KEY));
    assert!(!charge_debug.contains(RAW_KEY));

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("ledger"),
        "the test must capture the crate's logs: {text}"
    );
    assert!(!text.contains(RAW_KEY), "raw key in logs:\n{text}");
    assert!(!text.contains(other_raw), "raw key in logs:\n{text}");
}

#[tokio::test]
async fn a_caller_cannot_name_another_account() {
    let ledger = MemoryLedger::new();
    let attacker = account(&ledger, "acct_attacker", "key-attacker", 10).await;
    let victim = account(&ledger, "acct_victim", "key-victim", 10).await;
    let server = Server::start(app(CreditLayer::new(ledger.clone()))).await;
    for header in [
        "x-account",
        "x-account-id",
        "credits-account",
        "x-forwarded-user",
    ] {
        let req = Request::get(server.url("/v1/echo"))
            .header("authorization", "Bearer key-attacker")
            .header(header, "acct_victim")
            .body(Full::default())
            .unwrap();
        assert_eq!(send(&http1(), req).await.status, StatusCode::OK);
    }
    assert_eq!(available(&ledger, &attacker).await, 6, "the caller paid");
    assert_eq!(
        available(&ledger, &victim).await,
        10,
        "the named account did not"
    );
}

#[tokio::test]
async fn trusted_headers_work_only_when_configured_and_stay_inside_their_hash_tag() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_gw", "unused", 10).await;
    let layer = CreditLayer::new(ledger.clone())
        .account_resolver(AccountResolver::trusted_header("x-gateway-account"));
    let server = Server::start(app(layer)).await;
    let named = |value: &str| {
        Request::get(server.url("/v1/echo"))
            .header("x-gateway-account", value)
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(
        send(&http1(), named("acct_gw")).await.status,
        StatusCode::OK
    );
    assert_eq!(available(&ledger, &acct).await, 9);
    for hostile in ["acct_gw}{x", "{acct_gw}", "acct gw", "ácct"] {
        let answer = send(&http1(), named(hostile)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{hostile}");
        assert_eq!(
            answer.json()["detail"],
            "The request names an invalid account."
        );
    }
    assert!(AccountId::new("acct_gw}{x").is_err());
}

#[tokio::test]
async fn an_oversized_key_is_a_clear_401() {
    let ledger = MemoryLedger::new();
    let server = Server::start(app(CreditLayer::new(ledger))).await;
    let answer = send(
        &http1(),
        get_req(&server.url("/v1/echo"), Some(&"k".repeat(10_000))),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        answer.json()["detail"],
        "The API key is longer than 256 bytes."
    );
}

/// The API-key cache lets its entries expire (short TTLs, waited on with a deadline): a
/// revoked key keeps working from the cache, without a ledger lookup, until its entry
/// expires; then it is looked up once and refused. The refusal is cached as unknown until
/// that entry expires too; then the key, registered again meanwhile, is looked up once more
/// and works.
#[tokio::test]
async fn cached_api_keys_expire_and_are_looked_up_again() {
    const KNOWN_TTL: Duration = Duration::from_millis(300);
    const UNKNOWN_TTL: Duration = Duration::from_millis(300);
    let ledger = SwitchLedger::new(MemoryLedger::new());
    let acct = account(&ledger.inner, "acct_ttl", "key-ttl", 1_000).await;
    let hash = ApiKeyHash::of("key-ttl");
    let layer = CreditLayer::new(ledger.clone())
        .account_resolver(AccountResolver::api_key().key_ttl(KNOWN_TTL, UNKNOWN_TTL));
    let server = Server::start(app(layer)).await;
    let client = http1();
    let url = server.url("/v1/echo");
    let status = || async { send(&client, get_req(&url, Some("key-ttl"))).await.status };

    assert_eq!(status().await, StatusCode::OK);
    assert_eq!(ledger.lookups(), 1, "a cache miss is one lookup");

    // Revoked in the ledger: every 200 from now on can only come from the cache (a lookup
    // answers "unknown"). The entry expires, the key is looked up again, once, and refused.
    assert!(ledger.inner.revoke_api_key(&hash).await.unwrap());
    let from_cache = Cell::new(0u64);
    wait_for_async("the cached key to expire", DEADLINE, || async {
        match status().await {
            StatusCode::OK => {
                from_cache.set(from_cache.get() + 1);
                None
            }
            StatusCode::UNAUTHORIZED => Some(()),
            other => panic!("unexpected {other}"),
        }
    })
    .await;
    assert_eq!(
        ledger.lookups(),
        2,
        "one lookup when the entry expired ({} requests served from the cache before)",
        from_cache.get()
    );

    // Registered again: refused from the unknown-key cache, without a lookup, until that
    // entry expires; then looked up once and served.
    ledger.inner.register_api_key(&hash, &acct).await.unwrap();
    let refused_from_cache = Cell::new(0u64);
    wait_for_async("the unknown-key entry to expire", DEADLINE, || async {
        match status().await {
            StatusCode::UNAUTHORIZED => {
                refused_from_cache.set(refused_from_cache.get() + 1);
                None
            }
            StatusCode::OK => Some(()),
            other => panic!("unexpected {other}"),
        }
    })
    .await;
    assert_eq!(
        ledger.lookups(),
        3,
        "one lookup when the unknown entry expired ({} requests refused from the cache \
         before)",
        refused_from_cache.get()
    );
    // Every 200 was billed to the account (settles may still be landing).
    let charged = 1 + from_cache.get() + 1;
    wait_for_async("every 200 billed to the account", DEADLINE, || async {
        let committed = ledger.inner.balance(&acct).await.unwrap().committed;
        assert!(committed <= charged, "{committed} > {charged}");
        (committed == charged).then_some(())
    })
    .await;
}

/// The layer on a ledger that counts its key lookups, with one account of 10 credits whose
/// API key is `key`.
async fn served_with_one_key(name: &str, key: &str) -> (SwitchLedger, AccountId, Server) {
    let ledger = SwitchLedger::new(MemoryLedger::new());
    let victim = account(&ledger.inner, name, key, 10).await;
    let server = Server::start(app(CreditLayer::new(ledger.clone()))).await;
    (ledger, victim, server)
}

#[tokio::test]
async fn a_malformed_key_is_refused_as_malformed_while_its_neighbour_is_cached() {
    // A warm key skips the character check (the cache holds only checked keys): a key
    // with a character no key may hold is still checked, refused as malformed, and never
    // looked up or served, however close it is to a cached one.
    let (ledger, victim, server) = served_with_one_key("acct_warm", "key-warm-1234").await;
    let client = http1();
    let url = server.url("/v1/echo");
    let ok = send(&client, get_req(&url, Some("key-warm-1234"))).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ledger.lookups(), 1);
    for bad in [
        "key-warm-1234;",
        "key-warm,1234",
        "key-warm-1234\"",
        "key-warm-12\\34",
    ] {
        let refused = send(&client, get_req(&url, Some(bad))).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{bad}");
        let body = String::from_utf8_lossy(&refused.body);
        assert!(body.contains("malformed"), "{bad}: {body}");
    }
    assert_eq!(ledger.lookups(), 1, "no malformed key was looked up");
    assert_eq!(
        available(&ledger.inner, &victim).await,
        10 - 1,
        "one request, 1"
    );
}

/// The key cache is indexed by a digest of the key: a key one character off a cached one,
/// a prefix of it or the cached key with a suffix finds nothing there, is looked up in the
/// ledger, and is refused, and the cached key's account pays for none of them.
#[tokio::test]
async fn a_key_near_a_cached_one_is_not_served_from_the_cache() {
    let (ledger, victim, server) = served_with_one_key("acct_cached", "key-cached-1234").await;
    let client = http1();
    let url = server.url("/v1/echo");
    let status = |key: &'static str| {
        let (client, url) = (&client, &url);
        async move { send(client, get_req(url, Some(key))).await.status }
    };
    assert_eq!(status("key-cached-1234").await, StatusCode::OK);
    assert_eq!(ledger.lookups(), 1);
    for near in [
        "key-cached-1235",
        "key-cached-123",
        "key-cached-12345",
        "Key-cached-1234",
    ] {
        assert_eq!(status(near).await, StatusCode::UNAUTHORIZED, "{near}");
    }
    assert_eq!(
        ledger.lookups(),
        1 + 4,
        "each near key was looked up, none served cached"
    );
    assert_eq!(
        status("key-cached-1234").await,
        StatusCode::OK,
        "still cached"
    );
    assert_eq!(ledger.lookups(), 5);
    assert_eq!(
        available(&ledger.inner, &victim).await,
        10 - 2,
        "two requests, 1 each"
    );
}
